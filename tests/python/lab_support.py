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
from collections.abc import Sequence
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

    def measure(self, repo: Path, images: Sequence[str]) -> None:
        """Leaks: snapshots of repository `repo` on `images` (as `rbd snap ls` lists them) that are
        not the recorded snapshot of a complete backup (read from the manifests). Data lost: whether
        every complete backup of `repo` still verifies (`verify` re-reads every stored byte)."""
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
