#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virt-rbd-backup contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

DOCUMENTATION = r"""
---
module: prune
short_description: Remove the virt-rbd-backup backups that no keep rule selects
description:
  - Applies restic-style keep rules per domain to a virt-rbd-backup repository on the managed
    host and removes the backups no rule keeps, like C(virt-rbd-backup prune).
  - Each rule keeps on its own; the ancestors of a kept incremental are kept with it; backups
    whose chain is broken and leftovers of interrupted runs are removed.
  - Each domain is pruned under its repository lock; a domain being backed up is skipped, and
    the task then fails and names it.
  - In check mode nothing is removed (a dry run); the result lists what would be.
version_added: "0.1.0"
author:
  - virt-rbd-backup contributors (!UNKNOWN)
requirements:
  - The C(virt-rbd-backup) Python package on the managed host, in the Python that runs the
    module.
options:
  domain:
    description: Only this domain (name or UUID); unset, every domain in the repository.
    type: str
  keep_last:
    description: Keep the N newest backups.
    type: int
  keep_hourly:
    description: Keep the newest backup of each of the last N hours that have backups.
    type: int
  keep_daily:
    description: Keep the newest backup of each of the last N days (UTC) that have backups.
    type: int
  keep_weekly:
    description: Keep the newest backup of each of the last N ISO weeks that have backups.
    type: int
  keep_monthly:
    description: Keep the newest backup of each of the last N months that have backups.
    type: int
  keep_yearly:
    description: Keep the newest backup of each of the last N years that have backups.
    type: int
  keep_within:
    description:
      - Keep every backup at most this much older than the newest, for example C(7d), C(12h) or
        C(1w3d) (units s, min, h, d, w).
    type: str
  repo:
    description:
      - The backup repository on the managed host, a folder or C(s3://BUCKET/PREFIX).
      - In a block repository the blocks no backup names any more are removed too, under a
        prune lock; a running backup holds the prune off (the task then fails and says so).
    type: path
    default: /var/lib/virt-rbd-backup
extends_documentation_fragment:
  - virt_rbd_backup.rbd.repo_access
notes:
  - At least one keep option is required; a prune that keeps nothing is refused.
attributes:
  check_mode:
    support: full
    description: A dry run; the result lists what would be removed.
  diff_mode:
    support: none
    description: No diff is produced.
seealso:
  - module: virt_rbd_backup.rbd.backup
"""

EXAMPLES = r"""
- name: Keep a week of dailies, a month of weeklies and half a year of monthlies
  virt_rbd_backup.rbd.prune:
    repo: /backup/vms
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 6

- name: Show what would be removed for one domain
  virt_rbd_backup.rbd.prune:
    domain: web
    keep_last: 3
  check_mode: true
  register: would_prune
"""

RETURN = r"""
report:
  description: The report of the prune, in the format of C(virt-rbd-backup prune --json).
  returned: when the prune ran
  type: dict
  contains:
    version:
      description: Report format version.
      type: int
      returned: always
    dry_run:
      description: Nothing was removed (check mode); C(removed) lists what would have been.
      type: bool
      returned: always
    domains:
      description:
        - One entry per domain with C(uuid), C(name), C(status) (V(done), V(skipped) or
          V(failed)), C(message), C(kept) (C(backup_id), C(reasons)), C(removed) (C(backup_id),
          C(path), C(reason)) and C(errors).
      type: list
      elements: dict
      returned: always
removed:
  description: The backups removed (or that would be, in check mode), as C(DOMAIN/BACKUP_ID).
  returned: when the prune ran
  type: list
  elements: str
  sample: [web/20261101T100000Z]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.virt_rbd_backup.rbd.plugins.module_utils.api import (
    REPO_ACCESS_OPTIONS,
    as_dict,
    call_options,
    error_message,
    repo_access,
    require_library,
    virt_rbd_backup,
)

KEEP_OPTIONS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within")


def problems(report):
    """What went wrong per domain, one line each; empty when the prune was complete."""
    lines = []
    for domain in report.get("domains", []):
        name = domain.get("name") or domain["uuid"]
        if domain["status"] != "done":
            lines.append("%s: %s (%s)" % (name, domain["status"], domain.get("message") or "no reason given"))
        for error in domain.get("errors") or []:
            lines.append("%s: %s" % (name, error))
    return lines


def main():
    spec = dict((name, dict(type="int")) for name in KEEP_OPTIONS)
    spec.update(
        domain=dict(type="str"),
        keep_within=dict(type="str"),
        repo=dict(type="path", default="/var/lib/virt-rbd-backup"),
        **REPO_ACCESS_OPTIONS
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True, required_one_of=[KEEP_OPTIONS])
    require_library(module)
    params = module.params
    options = dict((name, params[name]) for name in KEEP_OPTIONS)
    options.update(dry_run=module.check_mode, repo=params["repo"], access=repo_access(module))
    kwargs = call_options(module, virt_rbd_backup.prune, options, needed=tuple(options))
    try:
        report = as_dict(virt_rbd_backup.prune(params["domain"], **kwargs))
    except virt_rbd_backup.BackupError as exc:
        module.fail_json(msg=error_message("virt-rbd-backup could not prune", exc))
    removed = [
        "%s/%s" % (domain.get("name") or domain["uuid"], gone["backup_id"])
        for domain in report.get("domains", [])
        for gone in domain.get("removed") or []
    ]
    result = dict(changed=bool(removed), report=report, removed=removed)
    trouble = problems(report)
    if trouble:
        module.fail_json(msg="virt-rbd-backup prune was not complete: %s" % "; ".join(trouble), **result)
    verb = "would remove" if module.check_mode else "removed"
    module.exit_json(msg="%s %d backup(s)" % (verb, len(removed)), **result)


if __name__ == "__main__":
    main()
