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
  - In check mode nothing is written; the module checks that the backup and disk exist in the
    repository and returns which backup would be restored.
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
    description: Backup id, or C(latest).
    type: str
    default: latest
  force:
    description:
      - Replace an existing target.
      - Without it an existing target fails the task and is left as it is.
    type: bool
    default: false
  repo:
    description: The backup repository folder on the managed host.
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
      description: The backup's content checksum, verified on the restored data.
      type: str
      returned: always
would_restore:
  description: The backup and disk a restore would use (check mode).
  returned: in check mode
  type: dict
  contains:
    backup_id:
      description: The backup.
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
    as_dict,
    call_options,
    error_message,
    require_library,
    virt_rbd_backup,
)


def would_restore(module, params):
    """The backup and disk the restore would use, read from the repository only."""
    try:
        listings = [as_dict(b) for b in virt_rbd_backup.list_backups(repo=params["repo"], domain=params["domain"])]
    except virt_rbd_backup.BackupError as exc:
        module.fail_json(msg=error_message("virt-rbd-backup could not read the repository", exc))
    complete = [b for b in listings if not b.get("error")]
    if params["backup"] in (None, "latest"):
        chosen = complete[-1] if complete else None
    else:
        chosen = next((b for b in complete if b["backup_id"] == params["backup"]), None)
    if chosen is None:
        module.fail_json(
            msg="virt-rbd-backup (check mode): no backup %s of domain %s in %s"
            % (params["backup"], params["domain"], params["repo"])
        )
    targets = [d["target"] for d in chosen.get("disks", [])]
    disk = params["disk"]
    if disk is None and len(targets) == 1:
        disk = targets[0]
    if disk not in targets:
        module.fail_json(
            msg="virt-rbd-backup (check mode): backup %s of domain %s has disks %s; choose one with disk"
            % (chosen["backup_id"], params["domain"], ", ".join(targets))
        )
    target = params["to"]
    if not target.startswith("rbd:") and os.path.lexists(target) and not params["force"]:
        module.fail_json(msg="virt-rbd-backup (check mode): the target %s exists; set force to replace it" % target)
    return dict(backup_id=chosen["backup_id"], disk=disk, target=target)


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
        ),
        supports_check_mode=True,
    )
    require_library(module)
    params = module.params
    if module.check_mode:
        plan = would_restore(module, params)
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
    )
    kwargs = call_options(module, virt_rbd_backup.restore, options, needed=tuple(options))
    try:
        report = as_dict(virt_rbd_backup.restore(params["domain"], **kwargs))
    except virt_rbd_backup.BackupError as exc:
        module.fail_json(msg=error_message("virt-rbd-backup could not restore", exc))
    module.exit_json(
        changed=True,
        report=report,
        msg="restored domain %s disk %s from backup %s to %s, checksum verified"
        % (report["domain"], report["disk"], report["backup_id"], report["target"]),
    )


if __name__ == "__main__":
    main()
