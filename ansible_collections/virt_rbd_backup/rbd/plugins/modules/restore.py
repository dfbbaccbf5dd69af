#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virt-rbd-backup contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

DOCUMENTATION = r"""
---
module: restore
short_description: Restore a disk of a virt-rbd-backup backup into a file or an RBD image
description:
  - Restores one disk of a backup into a sparse raw file or an RBD image on the managed host,
    like C(virt-rbd-backup restore).
  - The backup's chain (its full backup, then each incremental) is replayed, every stored file
    checked against its checksum, and the result compared with the backup's content checksum
    before it is renamed into place; a failure leaves no partial target.
  - It can also restore from a restic repository that the backup module wrote to
    (O(restic_repo)); restic checks its own data as it reads.
  - In check mode nothing is written; the module checks that the backup and disk exist in the
    repository (or restic) and returns which backup would be restored.
version_added: "0.1.0"
author:
  - virt-rbd-backup contributors (!UNKNOWN)
requirements:
  - The C(virt-rbd-backup) Python package on the managed host, in the Python that runs the
    module.
options:
  domain:
    description: Domain name or UUID, as the repository knows it (the domain may be gone from libvirt).
    type: str
    required: true
  to:
    description:
      - Where to restore to, in the command line syntax, C(rbd:POOL/IMAGE),
        C(rbd:POOL/NAMESPACE/IMAGE) or a file path (C(./rbd:x) for a file named so).
    type: str
    required: true
  disk:
    description: The disk, for example C(vda); may be left out when the backup has one disk.
    type: str
  backup:
    description:
      - Backup id, or C(latest).
      - With O(restic_repo), a restic snapshot id (a prefix will do) or C(latest).
    type: str
    default: latest
  force:
    description:
      - Replace an existing target.
      - Without it an existing target fails the task and is left as it is.
    type: bool
    default: false
  repo:
    description: The backup repository on the managed host, a folder or C(s3://BUCKET/PREFIX).
    type: path
    default: /var/lib/virt-rbd-backup
  ceph_conf:
    description:
      - For an RBD target, connect with this ceph.conf (and the keyring it names) instead of the
        monitors and libvirt secret of the domain's saved XML.
    type: path
  ceph_user:
    description: The Ceph user with O(ceph_conf) (the package's default is C(admin)).
    type: str
  connect:
    description: libvirt URI, to read the domain's Ceph key when no O(ceph_conf) is given.
    type: str
    default: qemu:///system
  restic_repo:
    description:
      - Restore from this restic repository instead of O(repo).
      - An RBD target then needs O(ceph_conf) (restic keeps no domain XML).
      - Needs a version of the package that has restic; the task fails and says so otherwise.
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
  - A restore always writes its target, so the result is C(changed) whenever it succeeds.
attributes:
  check_mode:
    support: full
    description: Checks that the backup exists and writes nothing.
  diff_mode:
    support: none
    description: No diff is produced.
seealso:
  - module: virt_rbd_backup.rbd.backup
"""

EXAMPLES = r"""
- name: Restore the latest backup of web's vda into a new RBD image
  virt_rbd_backup.rbd.restore:
    domain: web
    disk: vda
    to: rbd:rbd/web-vda-restored
    repo: /backup/vms

- name: Restore a given backup into a file, replacing it
  virt_rbd_backup.rbd.restore:
    domain: web
    disk: vdb
    backup: 20261126T095243.007Z
    to: /srv/restore/web-vdb.raw
    force: true
"""

RETURN = r"""
report:
  description: The report of the restore, in the format of C(virt-rbd-backup restore --json).
  returned: success, when not in check mode
  type: dict
  contains:
    domain:
      description: Domain name at backup time.
      type: str
      returned: always
    backup_id:
      description: The backup restored.
      type: str
      returned: always
    disk:
      description: The disk.
      type: str
      returned: always
    chain:
      description: The backups replayed, the full one first.
      type: list
      elements: str
      returned: always
    target:
      description: Where it went.
      type: str
      returned: always
    size:
      description: Image size in bytes.
      type: int
      returned: always
    bytes_written:
      description: Bytes of data written (holes are not written).
      type: int
      returned: always
    checksum:
      description: The backup's content checksum, verified on the restored data (empty for restic).
      type: str
      returned: always
would_restore:
  description: The backup and disk a restore would use (check mode).
  returned: in check mode
  type: dict
  contains:
    backup_id:
      description: The backup (with restic, the restic snapshot id).
      type: str
      returned: always
    disk:
      description: The disk.
      type: str
      returned: always
    target:
      description: The target.
      type: str
      returned: always
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.virt_rbd_backup.rbd.plugins.module_utils.api import (
    REPO_ACCESS_OPTIONS,
    RESTIC_OPTIONS,
    RESTIC_RULES,
    as_dict,
    call_options,
    error_message,
    repo_access,
    require_library,
    restic_target,
    virt_rbd_backup,
)


def choose(module, params, candidates, id_matches):
    """The backup to restore among ``candidates`` (oldest first); fails the task if none fits."""
    if params["backup"] in (None, "latest"):
        chosen = candidates[-1] if candidates else None
    else:
        chosen = next((c for c in reversed(candidates) if id_matches(c)), None)
    if chosen is None:
        module.fail_json(
            msg="virt-rbd-backup (check mode): no backup %s of domain %s%s"
            % (params["backup"], params["domain"], " with disk %s" % params["disk"] if params["disk"] else "")
        )
    return chosen


def would_restore(module, params, restic):
    """The backup and disk the restore would use, read from the repository (or restic) only."""
    if restic is not None:
        return would_restore_restic(module, params, restic)
    try:
        kwargs = call_options(module, virt_rbd_backup.list_backups, dict(access=repo_access(module)), needed=("access",))
        listings = [
            as_dict(b) for b in virt_rbd_backup.list_backups(repo=params["repo"], domain=params["domain"], **kwargs)
        ]
    except virt_rbd_backup.BackupError as exc:
        module.fail_json(msg=error_message("virt-rbd-backup could not read the repository", exc))
    complete = [b for b in listings if not b.get("error")]
    chosen = choose(module, params, complete, lambda b: b["backup_id"] == params["backup"])
    targets = [d["target"] for d in chosen.get("disks", [])]
    disk = params["disk"]
    if disk is None and len(targets) == 1:
        disk = targets[0]
    if disk not in targets:
        module.fail_json(
            msg="virt-rbd-backup (check mode): backup %s of domain %s has disks %s; choose one with disk"
            % (chosen["backup_id"], params["domain"], ", ".join(targets))
        )
    return dict(backup_id=chosen["backup_id"], disk=disk, target=checked_target(module, params))


def would_restore_restic(module, params, restic):
    """The restic snapshot the restore would use: each of them holds one disk of one domain."""
    if not hasattr(virt_rbd_backup, "list_restic"):
        module.fail_json(msg="the installed virt-rbd-backup cannot list restic snapshots; upgrade it")
    try:
        snapshots = [as_dict(s) for s in virt_rbd_backup.list_restic(restic, domain=params["domain"])]
    except virt_rbd_backup.BackupError as exc:
        module.fail_json(msg=error_message("virt-rbd-backup could not list the restic snapshots", exc))
    disks = sorted(set(s["disk"] for s in snapshots))
    disk = params["disk"]
    if disk is None and len(disks) == 1:
        disk = disks[0]
    if disk is None:
        module.fail_json(
            msg="virt-rbd-backup (check mode): domain %s has disks %s in restic; choose one with disk"
            % (params["domain"], ", ".join(disks))
        )
    # Only sealed snapshots are restored (an older virt-rbd-backup lists no `complete`).
    of_disk = [s for s in snapshots if s["disk"] == disk and s.get("complete", True)]
    chosen = choose(module, params, of_disk, lambda s: s["id"].startswith(params["backup"]))
    return dict(backup_id=chosen["id"], disk=disk, target=checked_target(module, params))


def checked_target(module, params):
    """The target, after checking that a file target would not be refused for existing."""
    target = params["to"]
    if not target.startswith("rbd:") and os.path.lexists(target) and not params["force"]:
        module.fail_json(msg="virt-rbd-backup (check mode): the target %s exists; set force to replace it" % target)
    return target


def main():
    module = AnsibleModule(
        argument_spec=dict(
            domain=dict(type="str", required=True),
            to=dict(type="str", required=True),
            disk=dict(type="str"),
            backup=dict(type="str", default="latest"),
            force=dict(type="bool", default=False),
            repo=dict(type="path", default="/var/lib/virt-rbd-backup"),
            ceph_conf=dict(type="path"),
            ceph_user=dict(type="str"),
            connect=dict(type="str", default="qemu:///system"),
            **dict(RESTIC_OPTIONS, **REPO_ACCESS_OPTIONS)
        ),
        supports_check_mode=True,
        **RESTIC_RULES
    )
    require_library(module)
    params = module.params
    restic = restic_target(module)
    if module.check_mode:
        plan = would_restore(module, params, restic)
        module.exit_json(
            changed=True,
            would_restore=plan,
            msg="would restore domain %s disk %s from backup %s to %s"
            % (params["domain"], plan["disk"], plan["backup_id"], plan["target"]),
        )
    options = dict(
        to=params["to"],
        disk=params["disk"],
        backup=params["backup"],
        force=params["force"],
        repo=params["repo"],
        ceph_conf=params["ceph_conf"],
        ceph_user=params["ceph_user"],
        connect=params["connect"],
        restic=restic,
        access=repo_access(module),
    )
    kwargs = call_options(module, virt_rbd_backup.restore, options, needed=tuple(options))
    try:
        report = as_dict(virt_rbd_backup.restore(params["domain"], **kwargs))
    except virt_rbd_backup.BackupError as exc:
        module.fail_json(msg=error_message("virt-rbd-backup could not restore", exc))
    module.exit_json(
        changed=True,
        report=report,
        msg="restored domain %s disk %s from backup %s to %s%s"
        % (
            report["domain"],
            report["disk"],
            report["backup_id"],
            report["target"],
            ", checksum verified" if report.get("checksum") else "",
        ),
    )


if __name__ == "__main__":
    main()
