"""Installing as a new user would, on a machine without the lab: a fresh Debian 12 root
(mmdebstrap, nothing but apt) gets the wheel through the README's production path
(`scripts/install.sh --wheel ... --systemd`), which installs only the documented run-time
packages. Then, inside that root: `--help`, `--version`, `plan` and one backup of a lab
domain, reaching Ceph over the network and libvirt over its socket, as a hypervisor would.

The base root is cached (`/var/cache/virt-rbd-backup/newuser-bookworm.tar`); the packages
`install.sh` installs come from Debian's archive on each run, as they would for a new user.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab_support import file_sha256, rbd, rbd_export_sha256, repo_snapshots, require_lab

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VRB_CACHE", "/var/cache/virt-rbd-backup"))
BASE = CACHE / "newuser-bookworm.tar"


def wheel() -> Path:
    wheels = sorted((ROOT / "dist").glob("virt_rbd_backup-*.whl"))
    assert wheels, "no wheel in dist/: `make wheel` (scripts/setup.sh builds one)"
    return wheels[-1]


def base_root() -> Path:
    """A minimal Debian 12 with apt and nothing else, made once."""
    if not BASE.exists():
        if shutil.which("mmdebstrap") is None:
            pytest.fail("mmdebstrap is not installed (lab/install-deps.sh installs it)")
        tmp = BASE.with_suffix(".tmp.tar")
        subprocess.run(["mmdebstrap", "--variant=apt", "--quiet", "bookworm", str(tmp)], check=True, timeout=900)
        tmp.rename(BASE)
    return BASE


@contextlib.contextmanager
def fresh_root(where: Path) -> Iterator[Path]:
    """The base root unpacked under `where`, with /proc, /dev, DNS and the host's libvirt socket."""
    root = where / "root"
    root.mkdir()
    with tarfile.open(base_root()) as tar:
        tar.extractall(root, filter="fully_trusted")
    mounts: list[Path] = []
    try:
        for source, target, fstype in (
            ("proc", "proc", "proc"),
            ("/dev", "dev", None),
            ("/run/libvirt", "run/libvirt", None),
        ):
            path = root / target
            path.mkdir(parents=True, exist_ok=True)
            if fstype:
                subprocess.run(["mount", "-t", fstype, source, str(path)], check=True)
            else:
                subprocess.run(["mount", "--bind", source, str(path)], check=True)
            mounts.append(path)
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        yield root
    finally:
        for path in reversed(mounts):
            subprocess.run(["umount", "-l", str(path)], check=False)


def in_root(root: Path, command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    return subprocess.run(
        ["chroot", str(root), "/bin/bash", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def test_a_new_user_installs_the_wheel_and_backs_up_without_the_lab(tmp_path: Path) -> None:
    require_lab()
    built = wheel()
    with fresh_root(tmp_path) as root:
        # The script and the wheel, nothing else of the checkout: the units come with the wheel.
        src = root / "root/src"
        shutil.copytree(ROOT / "scripts", src / "scripts")
        (src / "dist").mkdir()
        shutil.copy(built, src / "dist")

        nothing_yet = in_root(root, "command -v virsh || dpkg-query -W librbd1")
        assert nothing_yet.returncode != 0, f"the base root must not have the run-time packages: {nothing_yet.stdout}"

        install = in_root(root, f"bash /root/src/scripts/install.sh --wheel /root/src/dist/{built.name} --systemd")
        assert install.returncode == 0, install.stdout + install.stderr

        # Only what the tool needs: no Ceph daemon or CLI, no QEMU, no compiler.
        for absent in ("ceph-mon", "ceph-osd", "rbd", "ceph", "qemu-system-x86_64", "qemu-img", "cc", "cargo"):
            found = in_root(root, f"command -v {absent}")
            assert found.returncode != 0, f"{absent} was installed: {found.stdout}"
        assert (root / "etc/virt-rbd-backup/config.toml").stat().st_mode & 0o777 == 0o600
        assert (root / "etc/systemd/system/virt-rbd-backup-verify.timer").exists()

        assert in_root(root, "virt-rbd-backup --help").returncode == 0
        version = in_root(root, "virt-rbd-backup --version")
        assert version.returncode == 0 and "librbd 1." in version.stdout, version.stdout + version.stderr

        plan = in_root(root, "virt-rbd-backup plan --domain lab-off --repo /srv/backups --json")
        assert plan.returncode == 0, plan.stderr
        planned = json.loads(plan.stdout)["domains"]
        assert [d["name"] for d in planned] == ["lab-off"]

        repo = root / "srv/backups"
        try:
            backup = in_root(root, "virt-rbd-backup backup --domain lab-off --repo /srv/backups --json")
            assert backup.returncode == 0, backup.stderr
            (dom,) = json.loads(backup.stdout)["domains"]
            assert dom["status"] == "succeeded", dom
            disk = dom["disks"][0]
            # The stored image is exactly Ceph's own export of the snapshot it was read from.
            stored = repo / dom["uuid"] / dom["backup_id"] / disk["file"]
            assert file_sha256(stored) == rbd_export_sha256(f"rbd/lab-off-a@{disk['snapshot']}")
            verify = in_root(root, "virt-rbd-backup verify --repo /srv/backups")
            assert verify.returncode == 0, verify.stdout + verify.stderr
        finally:
            # The backup's base snapshot belongs to a repository that goes away with the root.
            if (repo / "virt-rbd-backup-repo.json").exists():
                for snapshot in repo_snapshots("rbd/lab-off-a", repo):
                    rbd("snap", "rm", f"rbd/lab-off-a@{snapshot}")
