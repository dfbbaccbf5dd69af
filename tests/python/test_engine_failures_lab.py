"""Failure paths of the core backup path against the real lab: a wrong Ceph key, a deleted
image, an unresponsive guest agent with `--freeze required`. The failing domain fails alone
with a clear message, the others succeed, the exit status is 1, no snapshot is left behind
and no guest stays frozen."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab_support import (
    FaultRecord,
    agent,
    cli,
    domain_outcome,
    domain_report,
    guest_exec,
    rbd,
    repo_snapshots,
    require_lab,
    run,
    tool_snapshots,
    virsh,
)

pytestmark = pytest.mark.lab

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <auth username='libvirt'><secret type='ceph' uuid='{secret}'/></auth>
      <source protocol='rbd' name='{image}'><host name='127.0.0.1' port='6789'/></source>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


def define(tmp: Path, name: str, image: str, secret: str) -> None:
    xml = tmp / f"{name}.xml"
    xml.write_text(DOMAIN_XML.format(name=name, image=image, secret=secret))
    virsh("define", str(xml))


@pytest.fixture
def broken_domains(tmp_path: Path) -> Iterator[None]:
    """`lab-badkey`: its secret holds a well-formed key that Ceph does not know.
    `lab-gone`: its image does not exist."""
    require_lab()
    import os

    secret_uuid = str(uuid.uuid4())
    secret_xml = tmp_path / "secret.xml"
    secret_xml.write_text(
        f"<secret ephemeral='no' private='no'><uuid>{secret_uuid}</uuid>"
        f"<usage type='ceph'><name>virt-rbd-backup test wrong key</name></usage></secret>"
    )
    virsh("secret-define", str(secret_xml))
    key_file = tmp_path / "key"
    key_file.write_text(run(["ceph-authtool", "--gen-print-key"]).stdout.strip())
    virsh("secret-set-value", secret_uuid, "--file", str(key_file))
    define(tmp_path, "lab-badkey", "rbd/lab-off-a", secret_uuid)
    define(tmp_path, "lab-gone", "rbd/lab-gone-deleted", os.environ["LAB_SECRET_UUID"])
    try:
        yield
    finally:
        for name in ("lab-badkey", "lab-gone"):
            virsh("undefine", name, check=False)
        virsh("secret-undefine", secret_uuid, check=False)


def test_wrong_key_and_deleted_image_fail_alone(fault: FaultRecord, broken_domains: None, tmp_path: Path) -> None:
    before = tool_snapshots("rbd/lab-off-a")
    result = cli(
        "backup",
        "--repo",
        str(tmp_path / "r"),
        "--json",
        "--domain",
        "lab-badkey",
        "--domain",
        "lab-off",
        "--domain",
        "lab-gone",
    )
    fault.injected = "a wrong Ceph key (lab-badkey) and a deleted image (lab-gone) next to a good domain"
    fault.outcome = "; ".join(f"{d}: {domain_outcome(result, d)}" for d in ("lab-badkey", "lab-gone", "lab-off"))
    assert result.returncode == 1, result.stderr
    report = result.json()
    bad = domain_report(report, "lab-badkey")
    assert bad["status"] == "failed"
    assert "client.libvirt" in bad["error"] and "cannot connect" in bad["error"], bad["error"]
    gone = domain_report(report, "lab-gone")
    assert gone["status"] == "failed"
    assert "rbd/lab-gone-deleted" in gone["error"] and "does not exist" in gone["error"], gone["error"]
    ok = domain_report(report, "lab-off")
    assert ok["status"] == "succeeded"
    # lab-off's new base replaced the old one; nothing else was created anywhere.
    after = repo_snapshots("rbd/lab-off-a", tmp_path / "r")
    assert after == [ok["disks"][0]["snapshot"]], (before, after)
    assert rbd("info", "rbd/lab-gone-deleted", check=False).returncode != 0
    # Failed domains leave nothing in the repository that looks like a backup.
    failed_dirs = [p for p in (tmp_path / "r").glob("*/*") if p.is_dir()]
    assert all(str(p).startswith(ok["path"]) for p in failed_dirs), failed_dirs
    fault.measure(tmp_path / "r", ["rbd/lab-off-a"])
    assert fault.leaks == 0


def test_failed_domain_prints_the_original_failure_line(broken_domains: None, tmp_path: Path) -> None:
    result = cli("backup", "--repo", str(tmp_path / "r"), "--domain", "lab-gone")
    assert result.returncode == 1
    # It names the domain by UUID and name (the original's named the UUID), then the cause.
    uuid_ = virsh("domuuid", "lab-gone").stdout.strip()
    assert any(
        line.startswith(f"Backup failed: domain {uuid_} (lab-gone): ") and "lab-gone-deleted" in line
        for line in result.stdout.splitlines()
    ), result.stdout
    legacy = cli("backup", "--repo", str(tmp_path / "r"), "--domain", "lab-gone", "--legacy-exit-status")
    assert legacy.returncode == 0, legacy.stdout + legacy.stderr
    assert any(line.startswith(f"Backup failed: domain {uuid_} (lab-gone): ") for line in legacy.stdout.splitlines())


def test_unresponsive_agent_with_freeze_required_fails_and_leaves_guest_thawed(
    tmp_path: Path, fault: FaultRecord
) -> None:
    require_lab()
    before = {img: tool_snapshots(img) for img in ("rbd/lab-guest-a", "rbd/lab-guest-b")}
    # Stop the agent for 15 s from inside the guest (it resumes by itself); the tool waits 5 s for it.
    guest_exec(
        "lab-guest",
        "p=$(pidof qemu-ga); (sleep 0.5; kill -STOP $p; sleep 15; kill -CONT $p) >/dev/null 2>&1 &",
    )
    try:
        time.sleep(1.5)
        started = time.monotonic()
        result = cli(
            "backup",
            "--repo",
            str(tmp_path / "r"),
            "--json",
            "--freeze",
            "required",
            "--agent-timeout",
            "5",
            "--domain",
            "lab-guest",
        )
        elapsed = time.monotonic() - started
        fault.injected = "guest agent SIGSTOPped in the guest, --freeze required --agent-timeout 5"
        fault.outcome = f"after {elapsed:.0f} s: {domain_outcome(result, 'lab-guest')}"
        assert result.returncode == 1, result.stdout + result.stderr
        dom = domain_report(result.json(), "lab-guest")
        assert dom["status"] == "failed"
        assert "freeze" in dom["error"].lower(), dom["error"]
        assert elapsed < 60, f"the failed freeze took {elapsed:.0f} s"
        # No snapshot was created or leaked.
        assert {img: tool_snapshots(img) for img in before} == before
        fault.measure(tmp_path / "r", list(before))
        assert fault.leaks == 0
    finally:
        # Whatever happened, wait until the agent is back, so later tests find it answering.
        deadline = time.monotonic() + 40
        status = None
        while time.monotonic() < deadline:
            try:
                status = agent("lab-guest", "guest-fsfreeze-status")
                break
            except (AssertionError, subprocess.TimeoutExpired):
                time.sleep(1)
    assert status == "thawed"
