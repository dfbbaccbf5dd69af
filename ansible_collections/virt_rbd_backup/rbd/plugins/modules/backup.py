#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virt-rbd-backup contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

DOCUMENTATION = r"""
---
module: backup
short_description: Back up libvirt/QEMU domains whose disks live in Ceph RBD
description:
  - Backs up the RBD disks of the selected libvirt domains of the managed host, or of every
    defined domain, into a virt-rbd-backup repository (or restic), like C(virt-rbd-backup backup).
  - Each domain's disks are snapshotted together, inside a guest filesystem freeze when the
    policy allows, and exported in parallel; a disk is stored in full or, when a sound base
    exists, as the blocks changed since its previous backup.
  - A failure of one domain does not stop the others; the task then fails and names every failed
    domain with its error.
  - In check mode nothing is touched (no lock, no snapshot, no freeze, no file, not even the
    repository folder); the module returns the plan, which domains and disks would be backed
    up and whether each disk would be full or incremental, and why.
version_added: "0.1.0"
author:
  - virt-rbd-backup contributors (!UNKNOWN)
requirements:
  - The C(virt-rbd-backup) Python package on the managed host, in the Python that runs the
    module (set C(ansible_python_interpreter) to it, for example its virtualenv's python).
  - libvirt and Ceph reachable from the managed host, as for the command line tool.
options:
  connect:
    description: libvirt URI.
    type: str
    default: qemu:///system
  domains:
    description:
      - Domain names or UUIDs to back up.
      - Empty means every defined domain.
    type: list
    elements: str
    default: []
    aliases: [domain]
  workers:
    description: Domains backed up at once.
    type: int
    default: 4
  queue_depth:
    description: Reads in flight per image.
    type: int
    default: 8
  freeze:
    description:
      - How guest filesystems are frozen around the snapshots, through the QEMU guest agent.
      - V(auto) freezes running guests and, if the agent does not answer, warns and takes
        crash-consistent snapshots.
      - V(required) does the same, but a failed freeze fails the domain.
      - V(off) never freezes.
    type: str
    choices: [auto, required, "off"]
    default: auto
  freeze_mountpoints:
    description: Only these guest mountpoints are frozen; empty means all.
    type: list
    elements: str
    default: []
  consistency:
    description:
      - One instant for all disks of a domain when no freeze gives it.
      - V(auto) takes an RBD group snapshot when all disks of a running domain are in one RBD group.
      - V(group) also puts disks that are in no group into a group per domain (C(virt-rbd-backup-UUID)).
      - V(per-disk) never uses group snapshots.
    type: str
    choices: [auto, group, per-disk]
    default: auto
  repo:
    description:
      - The backup repository on the managed host, a folder, or C(s3://BUCKET/PREFIX) on an
        S3-compatible store (see O(s3_endpoint)).
      - A folder must be empty, new or a virt-rbd-backup repository.
    type: path
    default: /var/lib/virt-rbd-backup
  mode:
    description:
      - V(auto) takes an incremental backup of a disk when its previous backup and snapshot can
        serve as base, otherwise a full one (the reason is a warning).
      - V(full) always takes full backups, starting new chains.
    type: str
    choices: [auto, full]
    default: auto
  full_every:
    description:
      - Take a full backup (a new chain) of a disk every this many backups of it.
      - Unset, only when no incremental is possible.
    type: int
  agent_timeout:
    description:
      - Seconds to wait for the guest agent to answer a freeze or thaw.
      - Unset, the package's default (30).
      - Needs a version of the package that has the option; the task fails and says so otherwise.
    type: int
  freeze_timeout:
    description:
      - Longest a guest may stay frozen, in seconds; past it a watchdog thaws it and the domain
        fails. Counted from before the freeze call, so it must be longer than I(agent_timeout).
      - Unset, the package's default (60).
      - Needs a version of the package that has the option; the task fails and says so otherwise.
    type: int
  ceph_timeout:
    description:
      - Seconds a Ceph monitor or OSD operation may take before the domain fails, so that a hung
        monitor or OSD costs that domain and not the whole run.
      - Unset, the package's default (60).
      - Needs a version of the package that has the option; the task fails and says so otherwise.
    type: int
  compress:
    description:
      - Compress the stored files with zstd, V(zstd) (level 3) or C(zstd:LEVEL) with a level
        from 1 to 19, for example V(zstd:9).
      - A compressed file is the stock format once decompressed (C(zstd -dc FILE)).
      - Unset, the files are stored uncompressed.
      - Needs a version of the package that has the option; the task fails and says so otherwise.
    type: str
  bwlimit:
    description:
      - The most the whole run reads from the cluster, all disks together, in bytes per second.
      - A whole number of bytes, or a string with a binary unit, for example V(200M), V(1.5G) or
        V(512K).
      - Unset, no limit.
      - Needs a version of the package that has the option; the task fails and says so otherwise.
    type: raw
  restic_repo:
    description:
      - Send the disks to this restic repository (C(/srv/restic), C(sftp:...), C(rest:...))
        instead of the repository folder.
      - The value is shown in logs; credentials for the storage belong in restic's own
        environment variables (the task's C(environment) keyword), not in this URL.
      - Needs a version of the package that has the option; the task fails and says so otherwise.
    type: str
  restic_password_file:
    description:
      - File on the managed host holding the restic repository password.
      - Without it and without O(restic_password), restic reads C(RESTIC_PASSWORD*) from the
        environment.
    type: path
  restic_password:
    description:
      - The restic repository password.
      - Never logged and never on a command line; it reaches restic through its environment.
    type: str
extends_documentation_fragment:
  - virt_rbd_backup.rbd.repo_access
notes:
  - Domains with no RBD disk are reported as skipped; that is not a failure.
  - The result is C(changed) when at least one domain was backed up (in check mode, when at
    least one would be).
attributes:
  check_mode:
    support: full
    description: Returns the plan and changes nothing.
  diff_mode:
    support: none
    description: No diff is produced.
seealso:
  - module: virt_rbd_backup.rbd.restore
  - module: virt_rbd_backup.rbd.prune
"""

EXAMPLES = r"""
- name: Back up two domains into a repository
  virt_rbd_backup.rbd.backup:
    domains: [web, db]
    repo: /backup/vms
    freeze: required
  register: backup

- name: Back up every domain, a new chain every 7 backups
  virt_rbd_backup.rbd.backup:
    repo: /backup/vms
    full_every: 7

- name: Back up compressed, reading at most 200 MiB/s, a hung cluster failing a domain after 30 s
  virt_rbd_backup.rbd.backup:
    repo: /backup/vms
    compress: "zstd:5"
    bwlimit: 200M
    ceph_timeout: 30

- name: Show what a backup would do, without doing it
  virt_rbd_backup.rbd.backup:
    domains: [web]
    repo: /backup/vms
  check_mode: true
  register: plan

- name: Back up into restic, the password from the vault
  virt_rbd_backup.rbd.backup:
    restic_repo: /srv/restic
    restic_password: "{{ vault_restic_password }}"

- name: Back up off the host into an encrypted block repository on a RADOS Gateway
  virt_rbd_backup.rbd.backup:
    repo: s3://vm-backups/hv1
    s3_endpoint: https://rgw.backup.example:7443
    s3_region: default
    s3_credentials: /etc/virt-rbd-backup/s3.credentials
    s3_ca_file: /etc/virt-rbd-backup/s3-ca.pem
    repo_key_file: /etc/virt-rbd-backup/repo.key
"""

RETURN = r"""
report:
  description:
    - The report of the run, in the format of C(virt-rbd-backup backup --json).
    - Also returned when the task fails because a domain failed.
  returned: when not in check mode and the run started
  type: dict
  contains:
    version:
      description: Report format version.
      type: int
      returned: always
      sample: 1
    started_at:
      description: Start, Unix seconds.
      type: float
      returned: always
    finished_at:
      description: End, Unix seconds.
      type: float
      returned: always
    domains:
      description:
        - One report per domain, in discovery order, with C(name), C(uuid), C(status)
          (V(succeeded), V(failed) or V(skipped)), C(error), C(warnings), C(backup_id), C(kind),
          C(path), C(consistency), C(freeze) and C(disks) (C(target), C(image), C(size),
          C(kind), C(bytes_read), C(bytes_written), C(snapshot), C(file), C(checksum)).
      type: list
      elements: dict
      returned: always
      sample:
        - name: web
          uuid: 6ae9d4b3-cc93-4692-ab74-34534c96f98a
          status: succeeded
          error: null
          kind: incremental
          backup_id: 20261126T104755.385Z
          path: /backup/vms/6ae9d4b3-cc93-4692-ab74-34534c96f98a/20261126T104755.385Z
          disks:
            - target: vda
              image: rbd/web-root
              kind: incremental
              bytes_written: 6455296
plan:
  description:
    - What the backup would do (check mode); nothing was changed to find it out.
    - With a package that has no C(plan) function, C(kind) of each disk is null and
      C(approximate) is true.
  returned: in check mode
  type: dict
  contains:
    domains:
      description:
        - One entry per domain with C(name), C(uuid), C(active), C(would_freeze),
          C(skipped_disks), C(error) (why the domain would fail) and C(disks).
        - Each disk has C(target), C(image), C(size), C(kind) (V(full) or V(incremental)),
          C(reason) (why full), C(parent_backup) (the base of an incremental) and
          C(estimated_bytes).
      type: list
      elements: dict
      returned: always
      sample:
        - name: web
          active: true
          would_freeze: true
          error: null
          disks:
            - target: vda
              image: rbd/web-root
              kind: incremental
              parent_backup: 20261126T104755.385Z
              estimated_bytes: 8388608
    estimated_bytes:
      description: Bytes the backup would read, in total.
      type: int
      returned: always
failed_domains:
  description: Names of the domains that failed (or would fail, in check mode).
  returned: always
  type: list
  elements: str
  sample: [db]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.virt_rbd_backup.rbd.plugins.module_utils.api import (
    REPO_ACCESS_OPTIONS,
    RESTIC_OPTIONS,
    RESTIC_RULES,
    as_dict,
    call_options,
    error_message,
    require_library,
    repo_access,
    restic_target,
    virt_rbd_backup,
)

# Options that change what a backup does: the task fails when the installed package lacks one
# that the task sets. The others (workers, queue_depth) only change how fast it goes; bwlimit
# is here all the same, since it is set to protect the cluster, which ignoring it would not.
NEEDED = (
    "connect",
    "domains",
    "freeze",
    "freeze_mountpoints",
    "consistency",
    "repo",
    "mode",
    "full_every",
    "agent_timeout",
    "freeze_timeout",
    "ceph_timeout",
    "compress",
    "bwlimit",
    "restic",
    "access",
)

# Options that change a plan; the timeouts and the freeze details do not.
PLAN_NEEDED = ("connect", "domains", "repo", "mode", "full_every", "restic", "access")


def argument_spec():
    return dict(
        connect=dict(type="str", default="qemu:///system"),
        domains=dict(type="list", elements="str", default=[], aliases=["domain"]),
        workers=dict(type="int", default=4),
        queue_depth=dict(type="int", default=8),
        freeze=dict(type="str", choices=["auto", "required", "off"], default="auto"),
        freeze_mountpoints=dict(type="list", elements="str", default=[]),
        consistency=dict(type="str", choices=["auto", "group", "per-disk"], default="auto"),
        repo=dict(type="path", default="/var/lib/virt-rbd-backup"),
        mode=dict(type="str", choices=["auto", "full"], default="auto"),
        full_every=dict(type="int"),
        agent_timeout=dict(type="int"),
        freeze_timeout=dict(type="int"),
        ceph_timeout=dict(type="int"),
        compress=dict(type="str"),
        bwlimit=dict(type="raw"),
        **dict(RESTIC_OPTIONS, **REPO_ACCESS_OPTIONS)
    )


def library_options(module):
    """The package's keyword arguments from the module's parameters (None: package default)."""
    params = module.params
    return dict(
        connect=params["connect"],
        domains=params["domains"],
        workers=params["workers"],
        queue_depth=params["queue_depth"],
        freeze=params["freeze"],
        freeze_mountpoints=params["freeze_mountpoints"],
        consistency=params["consistency"],
        repo=params["repo"],
        mode=params["mode"],
        full_every=params["full_every"],
        agent_timeout=params["agent_timeout"],
        freeze_timeout=params["freeze_timeout"],
        ceph_timeout=params["ceph_timeout"],
        compress=params["compress"],
        bwlimit=params["bwlimit"],
        restic=restic_target(module),
        access=repo_access(module),
    )


def failures_message(prefix, failed, total):
    details = "; ".join("%s: %s" % (name, error or "unknown error") for name, error in failed)
    return "%s: %d of %d domains failed: %s" % (prefix, len(failed), total, details)


def run_backup(module, options):
    try:
        report = virt_rbd_backup.backup(**call_options(module, virt_rbd_backup.backup, options, NEEDED))
    except virt_rbd_backup.BackupError as exc:
        module.fail_json(msg=error_message("virt-rbd-backup could not start the backup", exc), failed_domains=[])
    report_dict = as_dict(report)
    domains = report_dict.get("domains", [])
    for domain in domains:
        for warning in domain.get("warnings") or []:
            module.warn("domain %s: %s" % (domain["name"], warning))
    done = [d for d in domains if d["status"] == "succeeded"]
    failed = [(d["name"], d.get("error")) for d in domains if d["status"] == "failed"]
    result = dict(changed=bool(done), report=report_dict, failed_domains=[name for name, dummy in failed])
    if failed:
        module.fail_json(msg=failures_message("virt-rbd-backup", failed, len(domains)), **result)
    summary = ", ".join("%s (%s)" % (d["name"], d.get("kind") or "backed up") for d in done)
    skipped = [d["name"] for d in domains if d["status"] == "skipped"]
    msg = "backed up %s" % (summary or "no domain")
    if skipped:
        msg += "; skipped (no RBD disk): %s" % ", ".join(skipped)
    module.exit_json(msg=msg, **result)


def listing_plan(module, options):
    """A plan from the domain listing, for a package that has no plan(): which domains and disks,
    not whether full or incremental. Read-only as well.
    """
    kwargs = call_options(module, virt_rbd_backup.list_domains, options)
    domains = []
    for listing in virt_rbd_backup.list_domains(**kwargs):
        listing = as_dict(listing)
        domains.append(
            dict(
                name=listing["name"],
                uuid=listing["uuid"],
                active=listing["active"],
                would_freeze=bool(listing["active"]) and options["freeze"] != "off",
                disks=[
                    dict(
                        target=disk["target"],
                        image="/".join(p for p in (disk["pool"], disk.get("namespace"), disk["image"]) if p),
                        size=None,
                        kind=None,
                        reason=None,
                        parent_backup=None,
                        estimated_bytes=None,
                    )
                    for disk in listing.get("rbd_disks", [])
                ],
                skipped_disks=listing.get("skipped_disks", []),
                error=listing.get("error"),
            )
        )
    return dict(domains=domains, estimated_bytes=None, approximate=True)


def run_plan(module, options):
    plan_function = getattr(virt_rbd_backup, "plan", None)
    try:
        if plan_function is None:
            module.warn(
                "the installed virt-rbd-backup has no plan(): check mode lists the domains and disks "
                "but cannot tell whether a backup would be full or incremental"
            )
            plan = listing_plan(module, options)
        else:
            plan = as_dict(plan_function(**call_options(module, plan_function, options, PLAN_NEEDED)))
    except virt_rbd_backup.BackupError as exc:
        module.fail_json(msg=error_message("virt-rbd-backup could not plan the backup", exc), failed_domains=[])
    domains = plan.get("domains", [])
    would_back_up = [d for d in domains if d.get("disks") and not d.get("error")]
    failed = [(d["name"], d["error"]) for d in domains if d.get("error")]
    result = dict(changed=bool(would_back_up), plan=plan, failed_domains=[name for name, dummy in failed])
    if failed:
        module.fail_json(msg=failures_message("virt-rbd-backup (check mode)", failed, len(domains)), **result)
    summary = ", ".join(
        "%s (%s)" % (d["name"], ", ".join("%s %s" % (disk["target"], disk.get("kind") or "?") for disk in d["disks"]))
        for d in would_back_up
    )
    module.exit_json(msg="would back up %s" % (summary or "no domain"), **result)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        **RESTIC_RULES
    )
    require_library(module)
    options = library_options(module)
    if module.check_mode:
        run_plan(module, options)
    else:
        run_backup(module, options)


if __name__ == "__main__":
    main()
