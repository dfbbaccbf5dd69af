#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virt-rbd-backup contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

DOCUMENTATION = r"""
---
module: mount
short_description: Mount the filesystem of a disk of a virt-rbd-backup backup read-only, or unmount it
description:
  - Mounts the filesystem of one disk of a backup read-only on the managed host without restoring
    it, like C(virt-rbd-backup mount), or undoes such a mount, like C(virt-rbd-backup umount).
  - The disk is a file in a FUSE filesystem served by a background process of the package (each
    4 MiB block checked against the backup's checksums as it is read), attached read-only to a
    loop device; the filesystem on it (or on the chosen partition) is mounted read-only
    (ext3/4 without journal replay, xfs with norecovery).
  - Idempotent. V(mounted) changes nothing when the mount point already shows that domain's
    disk (and that backup, when O(backup) names one). V(unmounted) changes nothing when nothing
    of virt-rbd-backup is mounted there; it also undoes a mount whose serving process was
    killed.
  - In check mode nothing is mounted, unmounted or created; the result says whether it would be.
version_added: "0.1.0"
author:
  - virt-rbd-backup contributors (!UNKNOWN)
requirements:
  - The C(virt-rbd-backup) Python package on the managed host, in the Python that runs the
    module.
  - Root on the managed host, C(/dev/fuse), loop devices, C(losetup), C(blkid) and C(mount).
options:
  state:
    description:
      - V(mounted) mounts the backup's disk at O(mountpoint), V(unmounted) undoes it.
    type: str
    choices: [mounted, unmounted]
    default: mounted
  mountpoint:
    description: The folder to mount on; created (mode 0755) when it does not exist.
    type: path
    required: true
  domain:
    description:
      - Domain name or UUID, as the repository knows it. Required with O(state=mounted).
      - An existing mount is compared by the domain's name (a UUID given here does not match it).
    type: str
  disk:
    description: The disk, for example C(vda); may be left out when the backup has one disk.
    type: str
  backup:
    description:
      - Backup id, or C(latest).
      - With C(latest), a mount point that already shows a backup of the domain's disk is left
        as it is, even if a newer backup was made since; unmount it first to move to the newer one.
    type: str
    default: latest
  partition:
    description:
      - Mount partition N (default the whole disk if it holds a filesystem, else the first
        partition that does).
    type: int
  repo:
    description: The backup repository on the managed host, a folder or C(s3://BUCKET/PREFIX).
    type: path
    default: /var/lib/virt-rbd-backup
extends_documentation_fragment:
  - virt_rbd_backup.rbd.repo_access
notes:
  - A mount point that shows another backup, disk or domain fails the task; unmount it first.
  - The mount lasts until unmounted (or a reboot); its state is kept in
    C($VIRT_RBD_BACKUP_RUNTIME_DIR/mounts), by default C(/run/virt-rbd-backup/mounts).
attributes:
  check_mode:
    support: full
    description: Says whether the mount point would be mounted or unmounted; changes nothing.
  diff_mode:
    support: none
    description: No diff is produced.
seealso:
  - module: virt_rbd_backup.rbd.restore
"""

EXAMPLES = r"""
- name: Show the latest backup of web's vda under /mnt/web-backup
  virt_rbd_backup.rbd.mount:
    domain: web
    disk: vda
    mountpoint: /mnt/web-backup
    repo: /backup/vms

- name: Undo it
  virt_rbd_backup.rbd.mount:
    mountpoint: /mnt/web-backup
    state: unmounted
"""

RETURN = r"""
mount:
  description: The mount as virt-rbd-backup records it (none when nothing is mounted).
  returned: always
  type: dict
  contains:
    mountpoint:
      description: The mount point (a real path).
      type: str
      returned: always
    domain:
      description: The domain.
      type: str
      returned: always
    disk:
      description: The disk.
      type: str
      returned: always
    backup_id:
      description: The backup mounted.
      type: str
      returned: always
    fs_type:
      description: The filesystem type (blkid).
      type: str
      returned: always
    device:
      description: The loop device (or its partition) that holds the filesystem.
      type: str
      returned: always
    loop_device:
      description: The loop device.
      type: str
      returned: always
    pid:
      description: The process that serves the disk's FUSE file.
      type: int
      returned: always
undone:
  description:
    - What the unmount did, in order (with O(state=unmounted), or before mounting again where
      the process serving an earlier mount was killed).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.virt_rbd_backup.rbd.plugins.module_utils.api import (
    LIBRARY,
    REPO_ACCESS_OPTIONS,
    as_dict,
    error_message,
    library_version,
    repo_access,
    require_library,
    virt_rbd_backup,
)


def shown(state):
    """The parts of a MountState the task returns."""
    if state is None:
        return None
    fields = ("mountpoint", "domain", "disk", "backup_id", "fs_type", "device", "loop_device", "pid")
    data = as_dict(state)
    return dict((name, data.get(name)) for name in fields)


def same_backup(params, state):
    """Whether the mounted ``state`` is what the task asks for."""
    if params["domain"] != state.domain:
        return False
    if params["disk"] is not None and params["disk"] != state.disk:
        return False
    return params["backup"] in (None, "latest") or params["backup"] == state.backup_id


def unmount(module, mountpoint, undone):
    try:
        undone.extend(virt_rbd_backup.umount(mountpoint).undone)
    except virt_rbd_backup.BackupError as exc:
        module.fail_json(msg=error_message("virt-rbd-backup could not unmount %s" % mountpoint, exc), undone=undone)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["mounted", "unmounted"], default="mounted"),
            mountpoint=dict(type="path", required=True),
            domain=dict(type="str"),
            disk=dict(type="str"),
            backup=dict(type="str", default="latest"),
            partition=dict(type="int"),
            repo=dict(type="path", default="/var/lib/virt-rbd-backup"),
            **REPO_ACCESS_OPTIONS
        ),
        required_if=[("state", "mounted", ("domain",))],
        supports_check_mode=True,
    )
    require_library(module)
    if not hasattr(virt_rbd_backup, "mount_status"):
        module.fail_json(
            msg="the installed %s %s cannot mount backups; upgrade it on the managed host"
            % (LIBRARY, library_version() or "(unknown version)")
        )
    params = module.params
    mountpoint = os.path.realpath(params["mountpoint"])
    current = virt_rbd_backup.mount_status(mountpoint)
    undone = []
    if params["state"] == "unmounted":
        if current is None:
            msg = "nothing of virt-rbd-backup is mounted at %s" % mountpoint
            module.exit_json(changed=False, mount=None, undone=undone, msg=msg)
        if not module.check_mode:
            unmount(module, mountpoint, undone)
        verb = "would unmount" if module.check_mode else "unmounted"
        module.exit_json(changed=True, mount=shown(current), undone=undone, msg="%s %s" % (verb, mountpoint))
    if current is not None and current.ready:
        if same_backup(params, current):
            module.exit_json(
                changed=False,
                mount=shown(current),
                undone=undone,
                msg="%s already shows disk %s of backup %s of %s"
                % (mountpoint, current.disk, current.backup_id, current.domain),
            )
        module.fail_json(
            msg="%s shows disk %s of backup %s of %s, not what the task asks for; unmount it first (state: unmounted)"
            % (mountpoint, current.disk, current.backup_id, current.domain),
            mount=shown(current),
        )
    if module.check_mode:
        module.exit_json(changed=True, mount=None, undone=undone, msg="would mount %s" % mountpoint)
    if current is not None:
        unmount(module, mountpoint, undone)  # its serving process is gone: undo what it left
    if not os.path.isdir(mountpoint):
        os.makedirs(mountpoint, 0o755)
    try:
        state = virt_rbd_backup.mount(
            repo=params["repo"],
            domain=params["domain"],
            mountpoint=mountpoint,
            disk=params["disk"],
            backup=None if params["backup"] == "latest" else params["backup"],
            partition=params["partition"],
            access=repo_access(module),
        )
    except virt_rbd_backup.BackupError as exc:
        module.fail_json(msg=error_message("virt-rbd-backup could not mount", exc), undone=undone)
    module.exit_json(
        changed=True,
        mount=shown(state),
        undone=undone,
        msg="mounted %s of disk %s of backup %s of %s read-only at %s"
        % (state.fs_type, state.disk, state.backup_id, state.domain, mountpoint),
    )


if __name__ == "__main__":
    main()
