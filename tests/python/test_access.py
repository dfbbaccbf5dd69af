"""The pure parts of python/virt_rbd_backup/access.py: reading the kernel's mount table, which
`umount` trusts (rather than `stat`, which fails on a FUSE mount whose server died)."""

from __future__ import annotations

from virt_rbd_backup.access import MountEntry, parse_mountinfo

# Lines as the kernel writes them (proc(5)): a dead FUSE mount, the loop device's ext2 on a
# mount point with a space (escaped \040), and a line without the separator that is skipped.
MOUNTINFO = (
    "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n"
    "530 22 0:61 / /run/virt-rbd-backup/mounts/0123456789abcdef/fuse ro,nosuid,nodev,noexec,relatime "
    "shared:300 - fuse.virt-rbd-backup virt-rbd-backup:vda ro,user_id=0,group_id=0\n"
    "541 22 7:3 / /tmp/a\\040b/mnt ro,nosuid,nodev,noexec,relatime shared:310 - ext2 /dev/loop3p1 ro\n"
    "garbage line\n"
)


def test_mountinfo_lists_each_mount_with_its_type_and_source() -> None:
    assert parse_mountinfo(MOUNTINFO) == [
        MountEntry("/", "ext4", "/dev/nvme0n1p2"),
        MountEntry("/run/virt-rbd-backup/mounts/0123456789abcdef/fuse", "fuse.virt-rbd-backup", "virt-rbd-backup:vda"),
        MountEntry("/tmp/a b/mnt", "ext2", "/dev/loop3p1"),
    ]


def test_mountinfo_optional_fields_do_not_shift_the_type() -> None:
    line = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 propagate_from:2 - ext3 /dev/root rw,errors=continue"
    assert parse_mountinfo(line) == [MountEntry("/mnt2", "ext3", "/dev/root")]
