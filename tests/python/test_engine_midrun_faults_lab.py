"""Faults injected while a backup runs, after its snapshots exist: the guest destroyed, our
snapshot removed (`rbd snap rm`, `rbd snap purge`), the image grown or shrunk. The run is paused
by its test hook (`VIRT_RBD_BACKUP_TEST_PAUSE=exporting:SECONDS`: after the first block of the
first disk was read, with one read in flight at a time so the rest is read after the fault),
the fault is injected, and the run goes on.

What is right: the snapshots are the backup's point in time, so a destroyed guest or a resized
image head does not matter (the backup completes and equals `rbd export` of its snapshots); a
removed snapshot does (reads at a removed snapshot are not guaranteed to return its data), so the
domain fails, naming the image and the snapshot. Either way: an honest exit status, no leaked
snapshot (`rbd snap ls`), no partial backup visible, older backups still verify, and the next run
succeeds, incrementally where its base survived.

These tests make their own images and domains (names `vrb-fault-*`) and remove them at the end:
the shared lab's guests are never touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab_support import (
    CliRun,
    FaultRecord,
    ScratchDomain,
    cli,
    domain_outcome,
    domain_report,
    file_sha256,
    rbd,
    rbd_export_sha256,
    rbd_json,
    repo_snapshots,
    run,
    scratch_domain,
    virsh,
    wait_for,
)

pytestmark = pytest.mark.lab

MIB = 1024 * 1024
# Long enough for any injection below (each takes about a second on the lab), short enough to
# keep the tests quick; a test fails if its injection outlasted the pause.
PAUSE = 8
# Every run of these tests must end within this bound (the lab backs these images up in seconds).
RUN_TIMEOUT = 180


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[ScratchDomain]:
    with scratch_domain(tmp_path, running=False) as domain:
        yield domain


@pytest.fixture
def running_scratch(tmp_path: Path) -> Iterator[ScratchDomain]:
    with scratch_domain(tmp_path, running=True) as domain:
        yield domain


class PausedBackup:
    """`virt-rbd-backup backup --json` of one domain, as its own process, paused at `phase`."""

    def __init__(
        self, tmp: Path, repo: Path, domain: str, phase: str = "exporting", extra: tuple[str, ...] = ()
    ) -> None:
        self.out = (tmp / "paused.out").open("w+")
        self.err_path = tmp / "paused.err"
        self.err = self.err_path.open("w+")
        env = dict(os.environ, VIRT_RBD_BACKUP_TEST_PAUSE=f"{phase}:{PAUSE}")
        args = ["backup", "--json", "--queue-depth", "1", "--domain", domain, "--repo", str(repo), *extra]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "virt_rbd_backup", *args],
            env=env,
            stdout=self.out,
            stderr=self.err,
        )
        self.paused_at = 0.0

    def wait_paused(self) -> None:
        wait_for(lambda: "pausing" in self.err_path.read_text() or self.proc.poll() is not None, 90, "the pause")
        assert self.proc.poll() is None, f"the run ended before its pause: {self.err_path.read_text()}"
        self.paused_at = time.monotonic()

    def finish(self) -> CliRun:
        injected_within = time.monotonic() - self.paused_at
        assert injected_within < PAUSE - 1, f"the injection took {injected_within:.1f} s, longer than the pause"
        try:
            self.proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the backup did not end within {RUN_TIMEOUT} s") from None
        self.out.seek(0)
        self.err.seek(0)
        return CliRun(self.proc.returncode, self.out.read(), self.err.read())


def dirty(image: str) -> None:
    """Rewrites the first 16 MiB of `image`: the next incremental has several blocks to read."""
    rbd("bench", "--io-type", "write", "--io-size", "4M", "--io-total", "16M", "--io-pattern", "seq", image)


def backup(repo: Path, domain: str) -> CliRun:
    return cli("backup", "--repo", str(repo), "--json", "--domain", domain, timeout=RUN_TIMEOUT)


def partials(repo: Path) -> list[Path]:
    return list(repo.glob("*/.partial-*"))


def listed_backups(repo: Path) -> list[str]:
    result = cli("list", "--repo", str(repo), "--json")
    assert result.returncode == 0, result.stderr
    return sorted(b["backup_id"] for b in json.loads(result.stdout))


def assert_restores_to_its_snapshots(repo: Path, dom: dict[str, Any], tmp: Path) -> None:
    """Each disk of backup `dom` (a domain report) restored through its chain equals Ceph's own
    `rbd export` of the snapshot it was taken from."""
    for disk in dom["disks"]:
        out = tmp / f"{dom['backup_id']}-{disk['target']}.raw"
        restored = cli(
            "restore",
            dom["name"],
            "--repo",
            str(repo),
            "--backup",
            dom["backup_id"],
            "--disk",
            disk["target"],
            "--to",
            str(out),
            timeout=RUN_TIMEOUT,
        )
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert out.stat().st_size == disk["size"]
        assert file_sha256(out) == rbd_export_sha256(f"{disk['image']}@{disk['snapshot']}"), disk
        out.unlink()


def test_guest_destroyed_mid_export_completes_the_backup_of_its_snapshots(
    fault: FaultRecord, running_scratch: ScratchDomain, tmp_path: Path
) -> None:
    scratch = running_scratch
    repo = tmp_path / "repo"
    paused = PausedBackup(tmp_path, repo, scratch.name)
    paused.wait_paused()
    virsh("destroy", scratch.name)
    fault.injected = "virsh destroy of the running guest after its frozen snapshots, mid-export"
    result = paused.finish()
    fault.outcome = domain_outcome(result, scratch.name)

    # The snapshots were taken (frozen) before the guest went: the backup of them completes.
    assert result.returncode == 0, result.stdout + result.stderr
    dom = domain_report(result.json(), scratch.name)
    assert dom["status"] == "succeeded", dom
    assert dom["consistency"] == "frozen", dom
    assert "shut off" in virsh("domstate", scratch.name).stdout
    assert_restores_to_its_snapshots(repo, dom, tmp_path)
    for image, disk in zip(scratch.images, dom["disks"], strict=True):
        assert repo_snapshots(image, repo) == [disk["snapshot"]]
    assert not partials(repo)
    assert listed_backups(repo) == [dom["backup_id"]]

    # The next run (the domain is shut off now) is an incremental on that base.
    again = backup(repo, scratch.name)
    assert again.returncode == 0, again.stdout + again.stderr
    next_dom = domain_report(again.json(), scratch.name)
    assert next_dom["kind"] == "incremental", next_dom
    assert next_dom["consistency"] == "shut_off"
    fault.measure(repo, scratch.images)
    assert fault.leaks == 0
    assert fault.data_lost is not None and fault.data_lost.startswith("none"), fault.data_lost


# Regression: a guest destroyed while frozen failed the domain with "cannot thaw ... domain is not
# running; ... thaw by hand with `virsh domfsthaw`", sending the operator to thaw a guest that is gone.
def test_guest_destroyed_while_frozen_fails_saying_it_stopped_not_asking_to_thaw_it(
    fault: FaultRecord, running_scratch: ScratchDomain, tmp_path: Path
) -> None:
    scratch = running_scratch
    repo = tmp_path / "repo"
    paused = PausedBackup(tmp_path, repo, scratch.name, phase="frozen")
    paused.wait_paused()
    virsh("destroy", scratch.name)
    fault.injected = "virsh destroy of the running guest while frozen, before its snapshots"
    result = paused.finish()
    fault.outcome = domain_outcome(result, scratch.name)

    # The guest did not live to be thawed after the snapshots: the run fails and says why.
    assert result.returncode == 1, result.stdout + result.stderr
    dom = domain_report(result.json(), scratch.name)
    assert dom["status"] == "failed"
    assert f"domain {scratch.name} stopped" in dom["error"] and "run the backup again" in dom["error"], dom
    assert "domfsthaw" not in dom["error"], dom["error"]
    assert {image: repo_snapshots(image, repo) for image in scratch.images} == {image: [] for image in scratch.images}
    assert not partials(repo)
    assert listed_backups(repo) == []

    # The next run backs the shut-off domain up.
    again = backup(repo, scratch.name)
    assert again.returncode == 0, again.stdout + again.stderr
    next_dom = domain_report(again.json(), scratch.name)
    assert next_dom["consistency"] == "shut_off"
    assert_restores_to_its_snapshots(repo, next_dom, tmp_path)
    fault.measure(repo, scratch.images)
    assert fault.leaks == 0
    assert fault.data_lost is not None and fault.data_lost.startswith("none"), fault.data_lost


# Regression: a snapshot removed while it was read was committed as a good backup (exit 0), read
# from whatever the OSDs still returned for the removed snapshot.
@pytest.mark.parametrize(
    ("command", "disk"),
    [
        ("rm", 0),  # our snapshot of the disk being read
        ("purge", 1),  # every snapshot of the disk read next, the base of the next incremental too
    ],
)
def test_snapshot_removed_mid_export_fails_instead_of_committing_a_backup_read_from_it(
    fault: FaultRecord, scratch: ScratchDomain, tmp_path: Path, command: str, disk: int
) -> None:
    repo = tmp_path / "repo"
    first = backup(repo, scratch.name)
    assert first.returncode == 0, first.stdout + first.stderr
    base = domain_report(first.json(), scratch.name)
    bases = {image: repo_snapshots(image, repo) for image in scratch.images}
    target = scratch.images[disk]
    for image in scratch.images:
        dirty(image)

    paused = PausedBackup(tmp_path, repo, scratch.name)
    paused.wait_paused()
    ours = [s for s in repo_snapshots(target, repo) if s not in bases[target]]
    assert len(ours) == 1, ours
    if command == "rm":
        rbd("snap", "rm", "--no-progress", f"{target}@{ours[0]}")
    else:
        rbd("snap", "purge", "--no-progress", target)
    fault.injected = f"rbd snap {command} {'of our new snapshot' if command == 'rm' else 'of every snapshot'} of disk {'ab'[disk]} mid-export"
    result = paused.finish()
    fault.outcome = domain_outcome(result, scratch.name)

    assert result.returncode == 1, result.stdout + result.stderr
    dom = domain_report(result.json(), scratch.name)
    assert dom["status"] == "failed"
    assert f"{target}@{ours[0]}" in dom["error"] and "was removed while this backup read it" in dom["error"], dom
    assert "run the backup again" in dom["error"]
    # Nothing of the failed run is left: no snapshot (the other disk's new one was removed too),
    # no partial folder; the list shows the first backup only.
    expected = dict(bases)
    if command == "purge":
        expected[target] = []
    assert {image: repo_snapshots(image, repo) for image in scratch.images} == expected
    assert not partials(repo)
    assert listed_backups(repo) == [base["backup_id"]]

    # The next run succeeds: incremental where the base snapshot survived, full where it was purged.
    again = backup(repo, scratch.name)
    assert again.returncode == 0, again.stdout + again.stderr
    next_dom = domain_report(again.json(), scratch.name)
    kinds = [d["kind"] for d in next_dom["disks"]]
    assert kinds == ["incremental", "incremental" if command == "rm" else "full"], next_dom
    if command == "purge":
        assert any("full backup instead of incremental" in w for w in next_dom["warnings"]), next_dom["warnings"]
    assert_restores_to_its_snapshots(repo, next_dom, tmp_path)
    fault.measure(repo, scratch.images)
    assert fault.leaks == 0
    assert fault.data_lost is not None and fault.data_lost.startswith("none"), fault.data_lost


@pytest.mark.parametrize("new_size_mib", [96, 40], ids=["grow", "shrink"])
def test_image_resized_mid_export_backs_up_the_snapshot_and_the_next_incremental_follows(
    fault: FaultRecord, scratch: ScratchDomain, tmp_path: Path, new_size_mib: int
) -> None:
    repo = tmp_path / "repo"
    first = backup(repo, scratch.name)
    assert first.returncode == 0, first.stdout + first.stderr
    image = scratch.images[0]
    old_size = rbd_json("info", image)["size"]
    dirty(image)

    paused = PausedBackup(tmp_path, repo, scratch.name)
    paused.wait_paused()
    rbd(
        "resize",
        "--no-progress",
        "--size",
        f"{new_size_mib}M",
        *(["--allow-shrink"] if new_size_mib * MIB < old_size else []),
        image,
    )
    fault.injected = f"rbd resize of disk a from {old_size // MIB} to {new_size_mib} MiB mid-export"
    result = paused.finish()
    fault.outcome = domain_outcome(result, scratch.name)

    # The snapshot did not change: the backup completes with the size and content it had.
    assert result.returncode == 0, result.stdout + result.stderr
    dom = domain_report(result.json(), scratch.name)
    assert dom["status"] == "succeeded", dom
    assert dom["disks"][0]["size"] == old_size
    assert_restores_to_its_snapshots(repo, dom, tmp_path)
    assert rbd_json("info", image)["size"] == new_size_mib * MIB

    # New data all over the resized image, then the next run: an incremental across the resize
    # that restores to exactly `rbd export` of its snapshot.
    rbd("bench", "--io-type", "write", "--io-size", "4K", "--io-total", "2M", "--io-pattern", "rand", image)
    again = backup(repo, scratch.name)
    assert again.returncode == 0, again.stdout + again.stderr
    next_dom = domain_report(again.json(), scratch.name)
    assert [d["kind"] for d in next_dom["disks"]] == ["incremental", "incremental"], next_dom
    assert next_dom["disks"][0]["size"] == new_size_mib * MIB
    assert_restores_to_its_snapshots(repo, next_dom, tmp_path)
    assert not partials(repo)
    fault.measure(repo, scratch.images)
    assert fault.leaks == 0
    assert fault.data_lost is not None and fault.data_lost.startswith("none"), fault.data_lost


def ceph(*args: str) -> None:
    run(["ceph", "--conf", os.environ["CEPH_CONF"], *args])


def test_osd_io_paused_mid_export_fails_the_domain_in_bounded_time(
    fault: FaultRecord, scratch: ScratchDomain, tmp_path: Path
) -> None:
    """A hung OSD without touching the lab's only OSD (its data lives in its memory): the cluster
    flags `pauserd,pausewr` (`ceph osd pause`) hold every client read and write, as an OSD that
    stopped answering would. The run must fail after --ceph-timeout, not hang; the snapshot it
    could not remove meanwhile is removed by the next run."""
    repo = tmp_path / "repo"
    paused = PausedBackup(tmp_path, repo, scratch.name, extra=("--ceph-timeout", "5", "--mode", "full"))
    paused.wait_paused()
    ceph("osd", "pause")
    try:
        started = time.monotonic()
        result = paused.finish()
        elapsed = time.monotonic() - started
    finally:
        ceph("osd", "unpause")
    fault.injected = "OSD reads and writes paused (`ceph osd pause`) mid-export, --ceph-timeout 5"
    fault.outcome = f"after {elapsed:.0f} s: {domain_outcome(result, scratch.name)}"
    assert result.returncode == 1, result.stdout + result.stderr
    dom = domain_report(result.json(), scratch.name)
    assert dom["status"] == "failed"
    assert "timed out" in dom["error"].lower(), dom["error"]
    # Bounded, not one timeout: the read, the removal of the new snapshot, the image's close and
    # the release of the cluster lock each wait up to --ceph-timeout (52 s before the lock, 64 s
    # with it, on the lab). A hang would never end.
    assert elapsed < 90, elapsed
    assert partials(repo) == []
    assert listed_backups(repo) == []

    again = backup(repo, scratch.name)
    assert again.returncode == 0, again.stdout + again.stderr
    fault.measure(repo, scratch.images)
    assert fault.leaks == 0
