"""Several hypervisors on one Ceph cluster (issue 15): the cluster-side lock on each image
(`src/engine/cluster_lock.rs`), a domain shut off here but running elsewhere, images shared by
two domains, and a repository folder shared by two hosts.

The second host is played by a second process of its own (a second `virt-rbd-backup` run, or a
python3-rbd client holding an image open as a QEMU elsewhere would), never by a mock. What a
second process on this machine cannot be is a second machine: it has the same machine id, so
where the tool tells "this host" from "another" (a dead process of this host has its lock broken
at once) the tests say which case they play. Scratch images and domains are named
`vrb-multihost-*` and removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab_support import (
    FaultRecord,
    cli,
    domain_outcome,
    domain_report,
    domain_uuid,
    domain_xml,
    make_image,
    rbd_json,
    remove_image,
    repo_snapshots,
    require_lab,
    virsh,
    wait_for,
)

pytestmark = pytest.mark.lab


BACKUP = (sys.executable, "-m", "virt_rbd_backup", "backup")


def start_backup(repo: Path, domain: str, pause: str) -> subprocess.Popen[bytes]:
    """A full backup of `domain` into `repo` as a process of its own, paused at `pause`
    (`PHASE:SECONDS`, the engine's test hook)."""
    return subprocess.Popen(
        [*BACKUP, "--mode", "full", "--repo", str(repo), "--json", "--domain", domain],
        env=dict(os.environ, VIRT_RBD_BACKUP_TEST_PAUSE=pause),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def cli_env(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virt_rbd_backup", *args],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def partials(repo: Path, domain: str) -> list[str]:
    folder = repo / domain_uuid(domain)
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".partial-")) if folder.exists() else []


def complete_backups(repo: Path, domain: str) -> list[str]:
    folder = repo / domain_uuid(domain)
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def snapshots(image: str) -> list[str]:
    return sorted(s["name"] for s in rbd_json("snap", "ls", image))


@contextmanager
def scratch_domains(tmp_path: Path, disks: Mapping[str, list[str]]) -> Iterator[dict[str, str]]:
    """Shut-off domains of our own: `disks` maps a short name to the short names of its images
    (an image listed for two domains is shared by them). Yields short name -> libvirt name;
    images are `rbd/<prefix>-<short>`. Everything is removed at the end."""
    require_lab()
    prefix = f"vrb-multihost-{uuid.uuid4().hex[:8]}"
    names = {short: f"{prefix}-{short}" for short in disks}
    images = sorted({image for shorts in disks.values() for image in shorts})
    try:
        for image in images:
            make_image(f"rbd/{prefix}-{image}", tmp_path, size_mib=32, data_mib=8)
        for short, shorts in disks.items():
            xml = tmp_path / f"{names[short]}.xml"
            xml.write_text(domain_xml(names[short], [f"rbd/{prefix}-{i}" for i in shorts], running=False))
            virsh("define", str(xml))
        yield names
    finally:
        for name in names.values():
            virsh("undefine", name, check=False)
        for image in images:
            remove_image(f"rbd/{prefix}-{image}")


def test_two_hosts_backing_up_one_domain_into_two_repositories_exclude_each_other(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """Host A backs up the domain into its repository; host B (a second process, a second
    repository, so no folder lock is shared) starts meanwhile: B skips the domain with a line
    naming A's run, touches nothing, and A completes. B's next run backs it up."""
    repo_a, repo_b = tmp_path / "repo-a", tmp_path / "repo-b"
    with scratch_domains(tmp_path, {"vm": ["disk"]}) as names:
        dom = names["vm"]
        image = f"rbd/{dom.removesuffix('-vm')}-disk"
        first = start_backup(repo_a, dom, "exported:15")
        try:
            wait_for(lambda: bool(partials(repo_a, dom)), 60, "host A's run to start writing")
            second = cli("backup", "--repo", str(repo_b), "--json", "--domain", dom)
            fault.injected = "a second host backs up the same domain into another repository meanwhile"
            assert first.poll() is None, "host A's run ended before host B's run was judged"
            assert second.returncode == 0, second.stderr
            report = domain_report(second.json(), dom)
            assert report["status"] == "skipped", report
            reason = report["skip_reason"] or ""
            assert reason.startswith(f"Skipping domain {dom} ({domain_uuid(dom)}): image {image}"), reason
            assert f"(pid {first.pid})" in reason, reason
            assert "client." in reason, reason
            # B took no snapshot and wrote no backup.
            assert repo_snapshots(image, repo_b) == []
            assert not (repo_b / domain_uuid(dom)).exists() or not complete_backups(repo_b, dom)
            assert first.wait(timeout=120) == 0
        finally:
            first.kill()
            first.wait()
        again = cli("backup", "--repo", str(repo_b), "--json", "--domain", dom)
        assert again.returncode == 0, again.stderr
        assert domain_report(again.json(), dom)["status"] == "succeeded"
        fault.outcome = f"host A exit {first.returncode}; host B {domain_outcome(second, dom)}; B's next run {domain_outcome(again, dom)}"
        for repo in (repo_a, repo_b):
            assert len(complete_backups(repo, dom)) == 1
            fault.measure(repo, [image])
            assert fault.leaks == 0
            assert fault.data_lost is not None and fault.data_lost.startswith("none"), fault.data_lost


HOLD_OPEN = """
import os, sys, rados, rbd
cluster = rados.Rados(conffile=os.environ["CEPH_CONF"])
cluster.connect()
pool, name = sys.argv[1].split("/", 1)
ioctx = cluster.open_ioctx(pool)
image = rbd.Image(ioctx, name)   # read-write: watches the header, as a QEMU does
print("open", flush=True)
sys.stdin.read()
image.close()
ioctx.close()
cluster.shutdown()
"""


def test_a_domain_shut_off_here_but_open_elsewhere_is_skipped(tmp_path: Path, fault: FaultRecord) -> None:
    """The domain is shut off on this host, but another client (a python3-rbd process with the
    image open for writing, as QEMU on another host after a migration) has its image open: the
    run skips it with a line (exit 0), takes no snapshot; once the client is gone it is backed up."""
    repo = tmp_path / "repo"
    with scratch_domains(tmp_path, {"vm": ["a", "b"]}) as names:
        dom = names["vm"]
        stem = dom.removesuffix("-vm")
        images = [f"rbd/{stem}-a", f"rbd/{stem}-b"]
        holder = subprocess.Popen(
            ["/usr/bin/python3", "-c", HOLD_OPEN, images[1]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
            result = cli("backup", "--repo", str(repo), "--json", "--domain", dom)
            fault.injected = "domain shut off here, one of its images open for writing by another client"
            assert result.returncode == 0, result.stderr
            report = domain_report(result.json(), dom)
            assert report["status"] == "skipped", report
            assert report["consistency"] is None
            line = report["skip_reason"] or ""
            assert line.startswith(
                f"Skipping domain {dom} ({domain_uuid(dom)}): shut off here but its image {images[1]} "
                "is open by another client (client."
            ), line
            assert line.endswith("running on another host?"), line
            # The same line is what the CLI prints.
            text = cli("backup", "--repo", str(repo), "--domain", dom)
            assert text.returncode == 0
            assert line in text.stdout.splitlines(), text.stdout
            for image in images:
                assert repo_snapshots(image, repo) == []
        finally:
            if holder.stdin is not None:
                holder.stdin.close()
            holder.wait(timeout=60)
        wait_for(lambda: not rbd_json("status", images[1])["watchers"], 60, "the client to close the image")
        after = cli("backup", "--repo", str(repo), "--json", "--domain", dom)
        assert after.returncode == 0, after.stderr
        assert domain_report(after.json(), dom)["consistency"] == "shut_off"
        fault.outcome = f"{domain_outcome(result, dom)}; after the client closed it: {domain_outcome(after, dom)}"
        fault.measure(repo, images)
        assert fault.leaks == 0
        assert fault.data_lost is not None and fault.data_lost.startswith("none"), fault.data_lost


def test_two_domains_sharing_an_image_keep_each_others_base(tmp_path: Path, fault: FaultRecord) -> None:
    """Domains A and B both have image `shared` (a shareable disk) and one image of their own.
    Backing up A, then B, then A again into one repository must leave B's base on `shared`
    (before the fix, A's second run removed it as its own leftover), and B's next backup is an
    incremental from it. Both in one run (two workers) wait for each other's lock on `shared`."""
    repo = tmp_path / "repo"
    with scratch_domains(tmp_path, {"a": ["shared", "own-a"], "b": ["shared", "own-b"]}) as names:
        a, b = names["a"], names["b"]
        stem = a.removesuffix("-a")
        shared = f"rbd/{stem}-shared"

        def back_up(*domains: str) -> dict[str, dict[str, object]]:
            args = [arg for d in domains for arg in ("--domain", d)]
            result = cli("backup", "--repo", str(repo), "--json", "--workers", "2", *args)
            assert result.returncode == 0, result.stderr
            reports = {d: domain_report(result.json(), d) for d in domains}
            for d, report in reports.items():
                assert report["status"] == "succeeded", (d, report)
            return reports

        a1 = back_up(a)[a]
        b1 = back_up(b)[b]
        b_base = b1["disks"][0]["snapshot"]  # type: ignore[index]
        a1_snap = a1["disks"][0]["snapshot"]  # type: ignore[index]
        a2 = back_up(a)[a]
        fault.injected = "two domains with one shared image, backed up in turn into one repository"
        on_shared = snapshots(shared)
        assert b_base in on_shared, f"B's base {b_base} was removed: {on_shared}"
        assert a1_snap not in on_shared, "A's previous base should be gone"
        assert a2["disks"][0]["snapshot"] in on_shared  # type: ignore[index]
        assert domain_uuid(b) in b_base and domain_uuid(a) in a1_snap
        b2 = back_up(b)[b]
        assert b2["kind"] == "incremental", b2
        # Both at once: each waits for the other's lock on the shared image, none is skipped.
        both = back_up(a, b)
        assert all(r["kind"] == "incremental" for r in both.values()), both
        on_shared = snapshots(shared)
        assert sorted(on_shared) == sorted(r["disks"][0]["snapshot"] for r in both.values())  # type: ignore[index]
        fault.outcome = "B's base survived A's runs; B incremental from it; A and B in one run both incremental"
        fault.measure(repo, [shared, f"rbd/{stem}-own-a", f"rbd/{stem}-own-b"])
        assert fault.leaks == 0
        assert fault.data_lost is not None and fault.data_lost.startswith("none"), fault.data_lost


def test_a_second_host_on_a_shared_folder_does_not_remove_an_in_flight_partial(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """NFS: a repository folder mounted on two hosts, where flock is not shared between them
    (`local_lock=flock`, NFSv3 without lockd). Simulated by a second process started with the
    test hook VIRT_RBD_BACKUP_TEST_UNSHARED_FOLDER_LOCK (it does not take the folder lock, as a
    host whose flock is local would get it). Host A is paused with its `.partial-*` complete but
    not committed; host B's run on the same folder and domain must leave that partial alone (it
    is skipped on the cluster lock before it looks at partials), and A then commits."""
    repo = tmp_path / "repo"
    unshared = {"VIRT_RBD_BACKUP_TEST_UNSHARED_FOLDER_LOCK": "1"}
    with scratch_domains(tmp_path, {"vm": ["disk"]}) as names:
        dom = names["vm"]
        image = f"rbd/{dom.removesuffix('-vm')}-disk"
        first = start_backup(repo, dom, "committing:15")
        try:
            wait_for(lambda: bool(partials(repo, dom)), 60, "host A's partial folder")
            wait_for(
                lambda: any((repo / domain_uuid(dom) / p).glob("*.blocks") for p in partials(repo, dom)),
                60,
                "host A's disk files",
            )
            in_flight = partials(repo, dom)
            second = cli_env(unshared, "backup", "--repo", str(repo), "--json", "--domain", dom)
            fault.injected = "a second host (no shared flock) backs up the same domain into the same folder meanwhile"
            assert first.poll() is None, "host A's run ended before host B's run was judged"
            assert second.returncode == 0, second.stderr
            report = domain_report(json.loads(second.stdout), dom)
            assert report["status"] == "skipped", report
            assert partials(repo, dom) == in_flight, "host B removed host A's in-flight partial"
            assert first.wait(timeout=120) == 0
        finally:
            first.kill()
            first.wait()
        assert len(complete_backups(repo, dom)) == 1
        assert partials(repo, dom) == []
        fault.outcome = (
            f"host B exit {second.returncode}, skipped; partial kept; host A exit {first.returncode}, committed"
        )
        fault.measure(repo, [image])
        assert fault.leaks == 0
        assert fault.data_lost is not None and fault.data_lost.startswith("none"), fault.data_lost


def test_a_partial_of_a_dead_run_is_removed_by_the_next_run_of_another_process(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """The other side of the previous test: host A's run is killed (SIGKILL) with its partial
    written and its cluster lock held. The next run (a second process) finds the
    lock held by a process of this machine that is gone, breaks it (the dead process's watch on
    the image, which lingers until the OSD times it out, is then not "another client"), removes
    the dead partial and backs up. A dead run of another machine is the same once its lease
    (60 s) has run out; that wait is not tested here."""
    repo = tmp_path / "repo"
    with scratch_domains(tmp_path, {"vm": ["disk"]}) as names:
        dom = names["vm"]
        image = f"rbd/{dom.removesuffix('-vm')}-disk"
        first = start_backup(repo, dom, "committing:60")
        try:
            wait_for(
                lambda: any((repo / domain_uuid(dom) / p).glob("*.blocks") for p in partials(repo, dom)),
                60,
                "host A's disk files",
            )
        finally:
            first.kill()
            first.wait()
        fault.injected = "SIGKILL of a run holding the cluster lock, with its partial written"
        dead = partials(repo, dom)
        assert dead
        result = cli("backup", "--repo", str(repo), "--json", "--domain", dom)
        assert result.returncode == 0, result.stderr
        report = domain_report(result.json(), dom)
        assert report["status"] == "succeeded", report
        assert any("interrupted run" in w for w in report["warnings"]), report["warnings"]
        assert partials(repo, dom) == []
        fault.outcome = f"next run exit {result.returncode}, succeeded, dead partial removed"
        fault.measure(repo, [image])
        assert fault.leaks == 0
