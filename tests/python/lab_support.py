"""Helpers for tests against the real lab (lab/lab.sh): Ceph's own tools, libvirt's virsh,
the guest agent, and the CLI run as a separate process, the way an operator runs it.

Nothing here imitates Ceph or libvirt: every helper runs the real tool.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "lab"
BLOCK = 4 * 1024 * 1024


def require_lab() -> None:
    """Skips unless the lab is up (scripts/test.sh sets VRB_LAB=1 after `lab.sh up`)."""
    if os.environ.get("VRB_LAB") != "1":
        pytest.skip("needs the lab: run scripts/test.sh, or `lab/lab.sh up` and VRB_LAB=1")
    if "CEPH_CONF" not in os.environ:
        pytest.fail('VRB_LAB=1 but CEPH_CONF is not set: eval "$(lab/lab.sh env)" first')


def run(args: Sequence[str], check: bool = True, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def rbd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["rbd", "--conf", os.environ["CEPH_CONF"], *args], check=check)


def rbd_json(*args: str) -> Any:
    return json.loads(rbd(*args, "--format", "json").stdout)


def tool_snapshots(image: str) -> list[str]:
    """Names of virt-rbd-backup's snapshots of pool/image, as `rbd snap ls` sees them."""
    return sorted(s["name"] for s in rbd_json("snap", "ls", image) if s["name"].startswith("virt-rbd-backup-"))


LAB_IMAGES = ("rbd/lab-guest-a", "rbd/lab-guest-b", "rbd/lab-off-a")
"""The images of the shared lab domains that tests back up."""


@contextmanager
def tool_snapshots_removed_after(images: Sequence[str] = LAB_IMAGES) -> Iterator[None]:
    """Removes, at the end, every snapshot of this tool on `images` that was not there at the
    start: the incremental bases the test's repositories keep (repositories a test throws away,
    such as an S3 prefix, cannot remove them themselves). Lab tests run one at a time under the
    lab lock, so nothing else adds snapshots meanwhile."""
    before = {image: set(tool_snapshots(image)) for image in images}
    try:
        yield
    finally:
        for image in images:
            for snap in set(tool_snapshots(image)) - before[image]:
                rbd("snap", "rm", "--no-progress", f"{image}@{snap}", check=False)


def repo_snapshots(image: str, repo: Path) -> list[str]:
    """The snapshots of pool/image that belong to repository `repo` (named by its id)."""
    repo_id = json.loads((repo / "virt-rbd-backup-repo.json").read_text())["id"]
    return [s for s in tool_snapshots(image) if s.startswith(f"virt-rbd-backup-{repo_id}-")]


def rbd_export_sha256(spec: str) -> str:
    """SHA-256 of `rbd export SPEC -`: Ceph's own C++ exporter as the independent truth."""
    proc = subprocess.Popen(
        ["rbd", "--conf", os.environ["CEPH_CONF"], "export", "--no-progress", spec, "-"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    digest = hashlib.sha256()
    while chunk := proc.stdout.read(1 << 20):
        digest.update(chunk)
    assert proc.wait() == 0, f"rbd export {spec} failed"
    return digest.hexdigest()


def blake3_4m(path: Path) -> str:
    """The content checksum, recomputed from its documented definition (plan::blocks): BLAKE3
    over the BLAKE3 hashes of the file's 4 MiB blocks."""
    import blake3  # the lab's test dependency; unit tests do not need it

    size = path.stat().st_size
    table = bytearray()
    with path.open("rb") as f:
        for _ in range(-(-size // BLOCK)):
            table += blake3.blake3(f.read(BLOCK)).digest()
    return "blake3-4m:" + blake3.blake3(bytes(table)).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["virsh", "-c", os.environ.get("LAB_LIBVIRT_URI", "qemu:///system"), *args], check=check)


def agent(domain: str, command: str) -> Any:
    out = virsh("qemu-agent-command", domain, json.dumps({"execute": command})).stdout
    return json.loads(out)["return"]


def guest_exec(domain: str, shell: str) -> str:
    """Runs a shell command inside the guest through the agent; returns its stdout."""
    return run(["bash", str(LAB / "guest-exec.sh"), domain, shell]).stdout


def domain_uuid(domain: str) -> str:
    return virsh("domuuid", domain).stdout.strip()


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def cli(*args: str, timeout: float = 600) -> CliRun:
    """Runs `python -m virt_rbd_backup ARGS` as its own process, like an operator would."""
    proc = run([sys.executable, "-m", "virt_rbd_backup", *args], check=False, timeout=timeout)
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def backup_command(repo: Path, domain: str, *extra: str) -> list[str]:
    """A full backup of `domain` into `repo` with a JSON report (a full always reads, so it
    reaches every phase of the test hook VIRT_RBD_BACKUP_TEST_PAUSE)."""
    return [
        sys.executable,
        "-m",
        "virt_rbd_backup",
        "backup",
        "--mode",
        "full",
        "--repo",
        str(repo),
        "--json",
        "--domain",
        domain,
        *extra,
    ]


def domain_report(report: dict[str, Any], name: str) -> dict[str, Any]:
    for d in report["domains"]:
        if d["name"] == name:
            return d  # type: ignore[no-any-return]
    raise AssertionError(f"domain {name} not in report: {[d['name'] for d in report['domains']]}")


def domain_outcome(result: CliRun, name: str) -> str:
    """The run's exit status and the domain's status (and error), as a fault report shows them."""
    try:
        dom = domain_report(result.json(), name)
    except (ValueError, AssertionError):
        return f"exit {result.returncode}: {(result.stderr.strip().splitlines() or [''])[-1]}"
    text = f"exit {result.returncode}, {dom['status']}"
    return f"{text}: {dom['error']}" if dom.get("error") else text


@dataclass
class FaultRecord:
    """What one fault test injected and what it measured, for the fault report
    (`pytest --fault-report`, tests/faults.sh). Tests fill it through the `fault` fixture."""

    injected: str = ""
    outcome: str = ""
    leaks: int | None = None
    data_lost: str | None = None
    frozen: int | None = None

    def measure(self, repo: Path, images: Sequence[str]) -> None:
        """Leaks: snapshots of repository `repo` on `images` (as `rbd snap ls` lists them) that are
        not the recorded snapshot of a complete backup (read from the manifests). Data lost: whether
        every complete backup of `repo` still verifies (`verify` re-reads every stored byte).
        Frozen: running lab guests whose agent says their filesystems are frozen."""
        self.frozen = len(frozen_guests())
        recorded: set[str] = set()
        manifests = list(repo.glob("*/*/manifest.json"))
        for manifest in manifests:
            for disk in json.loads(manifest.read_text())["disks"]:
                recorded.add(f"{disk['pool']}/{disk['image']}@{disk['snapshot']['name']}")
        self.leaks = sum(1 for image in images for s in repo_snapshots(image, repo) if f"{image}@{s}" not in recorded)
        if not manifests:
            self.data_lost = "none (no backup to lose)"
            return
        verified = cli("verify", "--repo", str(repo))
        self.data_lost = (
            f"none ({len(manifests)} backups verify)"
            if verified.returncode == 0
            else f"verify exit {verified.returncode}: {verified.stdout.strip()[-200:]}"
        )


# --------------------------------------------------------------------------------------------
# Scratch domains: tests that damage, resize or rewrite disks make their own (names
# `vrb-fault-*`) and remove them at the end, so the shared lab's guests are never touched.

MIB = 1024 * 1024


@dataclass
class ScratchDomain:
    name: str
    images: list[str]  # pool/image, in disk order (vda, vdb)


def make_image(image: str, tmp: Path, size_mib: int = 64, data_mib: int = 20) -> None:
    """rbd `image`: an ext2 filesystem holding `data_mib` MiB of random data (several 4 MiB blocks
    to read after the pause), imported sparse."""
    root = tmp / f"{image.replace('/', '_')}.d"
    root.mkdir()
    (root / "random.bin").write_bytes(os.urandom(data_mib * MIB))
    raw = tmp / f"{image.replace('/', '_')}.raw"
    run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "4096", "-d", str(root), str(raw), f"{size_mib}M"])
    rbd("import", "--no-progress", str(raw), image)
    raw.unlink()


def domain_xml(name: str, images: list[str], running: bool) -> str:
    disks = "".join(
        f"""
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback'/>
      <auth username='{os.environ.get("LAB_CEPH_USER", "libvirt")}'><secret type='ceph' uuid='{os.environ["LAB_SECRET_UUID"]}'/></auth>
      <source protocol='rbd' name='{image}'><host name='127.0.0.1' port='6789'/></source>
      <target dev='vd{"ab"[i]}' bus='virtio'/>
    </disk>"""
        for i, image in enumerate(images)
    )
    guest = Path(os.environ.get("LAB_DIR", "/var/lib/virt-rbd-backup-lab")) / "guest"
    # The lab's guest kernel and initramfs (lab/lab.sh): mounts vda and vdb, runs the agent.
    boot = (
        f"<kernel>{guest}/vmlinuz</kernel><initrd>{guest}/initrd.img</initrd>"
        "<cmdline>console=ttyS0 lab_mounts=vda,vdb</cmdline>"
        if running
        else ""
    )
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <description>virt-rbd-backup fault test scratch domain ({__name__})</description>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>{disks}
    <controller type='usb' model='none'/>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def remove_image(image: str) -> None:
    """Removes `image` and its snapshots; waits (bounded) for watchers of a just-destroyed guest."""
    deadline = time.monotonic() + 60
    while rbd("info", image, check=False).returncode == 0:
        rbd("snap", "purge", "--no-progress", image, check=False)
        if rbd("rm", "--no-progress", image, check=False).returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)


@contextmanager
def scratch_domain(tmp_path: Path, running: bool, prefix: str = "vrb-fault") -> Iterator[ScratchDomain]:
    """A domain of our own with two RBD disks, running (the lab's guest kernel, agent answering)
    or shut off; removed with its images at the end. Named `PREFIX-<random>`."""
    require_lab()
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    images = [f"rbd/{name}-a", f"rbd/{name}-b"]
    xml = tmp_path / f"{name}.xml"
    try:
        for image in images:
            make_image(image, tmp_path)
        xml.write_text(domain_xml(name, images, running))
        virsh("define", str(xml))
        if running:
            virsh("start", name)
            wait_for(lambda: agent_answers(name), 90, f"{name}'s guest agent")
        yield ScratchDomain(name, images)
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        for image in images:
            remove_image(image)


def frozen_guests() -> list[str]:
    """The running domains whose guest agent reports frozen filesystems."""
    names = virsh("list", "--name", "--state-running").stdout.split()
    frozen = []
    for name in names:
        try:
            if agent(name, "guest-fsfreeze-status") == "frozen":
                frozen.append(name)
        except (AssertionError, subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError, KeyError):
            continue  # no agent: nothing it can have frozen
    return frozen


def agent_answers(name: str) -> bool:
    try:
        agent(name, "guest-ping")
        return True
    except (AssertionError, subprocess.TimeoutExpired):
        return False


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
