"""The Ansible collection virt_rbd_backup.rbd, run by the real ansible-core against the lab.

The collection is built and installed with ansible-galaxy from the checkout, the way an operator
installs it, and each task runs in a real `ansible-playbook` on localhost, with the module in
the Python of this test (which has virt_rbd_backup). What a task did is checked against
independent truths: `rbd snap ls`, the files in the repository, `rbd export`, the CLI's
listing. `ansible-test sanity` runs on the collection at the end.

Needs ansible-core (`pip install 'ansible-core>=2.16'`); skipped without it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab_support import (
    ROOT,
    cli,
    domain_report,
    domain_uuid,
    file_sha256,
    rbd,
    rbd_export_sha256,
    repo_snapshots,
    require_lab,
    run,
    scratch_domain,
    tool_snapshots_removed_after,
)
from virt_rbd_backup import config

pytestmark = pytest.mark.lab

COLLECTION = ROOT / "ansible_collections" / "virt_rbd_backup" / "rbd"
IMAGES = ("rbd/lab-off-a", "rbd/lab-guest-a", "rbd/lab-guest-b")
NEEDS_ANSIBLE = "needs ansible-core in the test's Python or on PATH: pip install 'ansible-core>=2.16'"


def ansible_tool(name: str) -> str | None:
    """The ansible-core command `name`, preferably the one installed beside this Python."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


@dataclass
class Ansible:
    """ansible-playbook with the collection installed from a built tarball, in a scratch folder."""

    playbook: str
    collections: Path
    work: Path
    runs: int = 0

    def env(self) -> dict[str, str]:
        config = self.work / "ansible.cfg"
        config.touch()
        return {
            **os.environ,
            "ANSIBLE_CONFIG": str(config),
            "ANSIBLE_HOME": str(self.work / "home"),
            "ANSIBLE_COLLECTIONS_PATH": str(self.collections),
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_LOCAL_TEMP": str(self.work / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(self.work / "tmp"),
        }

    def play(
        self,
        tasks: list[tuple[str, dict[str, Any]]],
        *,
        check: bool = False,
        python: str = sys.executable,
        verbosity: int = 0,
    ) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess[str]]:
        """Runs the modules `tasks` (name without the collection, arguments) in one playbook on
        localhost, `--check` if asked, and returns each task's registered result (a failing task
        is allowed to fail: the result says it did) and the finished ansible-playbook."""
        self.runs += 1
        results = self.work / f"results-{self.runs}"
        results.mkdir()
        steps: list[dict[str, Any]] = []
        for index, (module, args) in enumerate(tasks):
            steps.append(
                {
                    "name": f"task {index}: {module}",
                    f"virt_rbd_backup.rbd.{module}": args,
                    "register": f"result_{index}",
                    "ignore_errors": True,
                }
            )
            steps.append(
                {
                    "name": f"save the result of task {index}",
                    "ansible.builtin.copy": {
                        "content": f"{{{{ result_{index} | to_json }}}}",
                        "dest": str(results / f"{index}.json"),
                    },
                    "check_mode": False,
                }
            )
        # JSON is YAML: no YAML library needed to write a playbook.
        playbook = self.work / f"playbook-{self.runs}.yml"
        playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": steps}], indent=1))
        args = [self.playbook, "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={python}"]
        args += ["--check"] if check else []
        args += ["-" + "v" * verbosity] if verbosity else []
        proc = run([*args, str(playbook)], check=False, timeout=300, cwd=self.work, env=self.env())
        assert proc.returncode == 0, f"ansible-playbook failed\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        return [json.loads((results / f"{i}.json").read_text()) for i in range(len(tasks))], proc

    def task(self, module: str, args: dict[str, Any], *, check: bool = False) -> dict[str, Any]:
        """Runs one module task; returns its result."""
        results, _ = self.play([(module, args)], check=check)
        return results[0]


@pytest.fixture(scope="module")
def ansible(tmp_path_factory: pytest.TempPathFactory) -> Ansible:
    """Builds the collection from the checkout with ansible-galaxy and installs the tarball."""
    require_lab()
    playbook, galaxy = ansible_tool("ansible-playbook"), ansible_tool("ansible-galaxy")
    if playbook is None or galaxy is None:
        pytest.skip(NEEDS_ANSIBLE)
    work = tmp_path_factory.mktemp("ansible")
    (work / "tmp").mkdir()
    ansible = Ansible(playbook=playbook, collections=work / "collections", work=work)
    env = ansible.env()
    run([galaxy, "collection", "build", str(COLLECTION), "--output-path", str(work / "dist")], cwd=work, env=env)
    (tarball,) = (work / "dist").glob("virt_rbd_backup-rbd-*.tar.gz")
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "plugins/modules/backup.py" in names
    assert not [n for n in names if n.startswith("tests/output")], names
    run([galaxy, "collection", "install", str(tarball), "-p", str(ansible.collections)], cwd=work, env=env)
    assert (ansible.collections / "ansible_collections/virt_rbd_backup/rbd/plugins/modules/backup.py").is_file()
    return ansible


def connect() -> str:
    return os.environ.get("LAB_LIBVIRT_URI", "qemu:///system")


@dataclass
class BackedUp:
    repo: Path
    result: dict[str, Any]


@pytest.fixture(scope="module")
def backed_up(ansible: Ansible, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackedUp]:
    """One backup task: lab-off (an RBD disk) and lab-local (none) into a new repository."""
    repo = tmp_path_factory.mktemp("ansible-repo") / "repo"
    result = ansible.task("backup", {"connect": connect(), "domains": ["lab-off", "lab-local"], "repo": str(repo)})
    yield BackedUp(repo=repo, result=result)
    remove_snapshots(repo)


def remove_snapshots(repo: Path) -> None:
    """Removes the incremental bases that repository `repo` keeps in Ceph (it is thrown away)."""
    if (repo / "virt-rbd-backup-repo.json").is_file():
        for image in IMAGES:
            for name in repo_snapshots(image, repo):
                rbd("snap", "rm", f"{image}@{name}")


def snapshots(repo: Path) -> dict[str, list[str]]:
    """The snapshots of repository `repo` on each of the lab's RBD images, as `rbd snap ls` sees
    them. Snapshots are named by repository id, so other runs on the lab do not show here."""
    return {image: repo_snapshots(image, repo) for image in IMAGES}


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under path, with size and mtime (ns); empty if path does not exist."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in [path, *path.rglob("*")]}


def test_backup_task_writes_a_backup_and_reports_changed(backed_up: BackedUp) -> None:
    result = backed_up.result
    assert not result.get("failed"), result
    assert result["changed"] is True
    assert result["failed_domains"] == []
    lab_off = domain_report(result["report"], "lab-off")
    assert lab_off["status"] == "succeeded"
    assert lab_off["kind"] == "full"
    assert domain_report(result["report"], "lab-local")["status"] == "skipped"
    # The repository holds exactly that backup, with its manifest, as the CLI lists it.
    folder = backed_up.repo / domain_uuid("lab-off") / lab_off["backup_id"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["domain"]["name"], manifest["backup_id"], manifest["kind"]) == (
        "lab-off",
        lab_off["backup_id"],
        "full",
    )
    assert (folder / "vda.raw").is_file()
    listed = cli("list", "--repo", str(backed_up.repo), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(b["domain"], b["backup_id"]) for b in listed.json()] == [("lab-off", lab_off["backup_id"])]
    # The snapshot exported is still in Ceph (it is the base of the next incremental).
    assert snapshots(backed_up.repo)["rbd/lab-off-a"] == [lab_off["disks"][0]["snapshot"]]


def test_check_mode_reports_the_plan_and_changes_nothing(ansible: Ansible, backed_up: BackedUp) -> None:
    missing_repo = backed_up.repo.parent / "never-created"
    before = (snapshots(backed_up.repo), tree(backed_up.repo))
    domains = ["lab-off", "lab-guest", "lab-local"]
    (existing, new), _ = ansible.play(
        [
            ("backup", {"connect": connect(), "domains": domains, "repo": str(backed_up.repo)}),
            ("backup", {"connect": connect(), "domains": ["lab-off"], "repo": str(missing_repo), "mode": "full"}),
        ],
        check=True,
    )
    # Nothing changed: no snapshot of the repository on any image, not a byte in it, and no new
    # repository (whose id any snapshot of the second task would have had to carry).
    assert (snapshots(backed_up.repo), tree(backed_up.repo)) == before
    assert not missing_repo.exists()
    assert "report" not in existing
    assert not existing.get("failed"), existing
    assert existing["changed"] is True, "check mode must say that a backup would change something"
    plan = existing["plan"]
    if plan.get("approximate"):
        pytest.skip("the installed virt_rbd_backup has no plan(): nothing changed, full/incremental not checked")
    by_name = {d["name"]: d for d in plan["domains"]}
    assert sorted(by_name) == sorted(domains)
    base = backed_up.result["report"]["domains"][0]
    assert base["name"] == "lab-off"
    (off_disk,) = by_name["lab-off"]["disks"]
    assert (off_disk["target"], off_disk["image"], off_disk["kind"]) == ("vda", "rbd/lab-off-a", "incremental")
    assert off_disk["parent_backup"] == base["backup_id"]
    assert by_name["lab-off"]["would_freeze"] is False
    guest = by_name["lab-guest"]
    assert sorted((d["image"], d["kind"]) for d in guest["disks"]) == [
        ("rbd/lab-guest-a", "full"),
        ("rbd/lab-guest-b", "full"),
    ]
    assert guest["would_freeze"] is True
    assert by_name["lab-local"]["disks"] == []
    assert "lab-off (vda incremental)" in existing["msg"]
    # With a repository that does not exist yet, and mode full: a full backup.
    assert [d["kind"] for d in new["plan"]["domains"][0]["disks"]] == ["full"]


def test_a_failed_domain_fails_the_task_and_names_it(ansible: Ansible, backed_up: BackedUp) -> None:
    uuid = domain_uuid("lab-off")
    before = tree(backed_up.repo / uuid)
    # Another run holds lab-off's lock: the core fails that domain and goes on with the others.
    fd = os.open(backed_up.repo / uuid / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = ansible.task(
            "backup", {"connect": connect(), "domains": ["lab-off", "lab-local"], "repo": str(backed_up.repo)}
        )
    finally:
        os.close(fd)
    assert result["failed"] is True
    assert result["changed"] is False
    assert result["failed_domains"] == ["lab-off"]
    assert result["msg"].startswith("virt-rbd-backup: 1 of 2 domains failed: lab-off: another virt-rbd-backup run"), (
        result["msg"]
    )
    assert "lock" in result["msg"]
    assert domain_report(result["report"], "lab-off")["status"] == "failed"
    assert domain_report(result["report"], "lab-local")["status"] == "skipped"
    assert tree(backed_up.repo / uuid) == before


def test_a_domain_that_does_not_exist_fails_the_task(ansible: Ansible, tmp_path: Path) -> None:
    for check in (False, True):
        result = ansible.task(
            "backup", {"connect": connect(), "domains": ["no-such-domain"], "repo": str(tmp_path / "r")}, check=check
        )
        assert result["failed"] is True
        assert result["changed"] is False
        assert 'LibvirtError: no libvirt domain named or with UUID "no-such-domain"' in result["msg"], result["msg"]


def test_without_the_package_the_task_says_which_library_is_missing(ansible: Ansible, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    run([sys.executable, "-m", "venv", "--without-pip", str(bare)])
    python = str(bare / "bin" / "python")
    assert run([python, "-c", "import virt_rbd_backup"], check=False).returncode != 0
    (result,), _ = ansible.play([("backup", {"repo": str(tmp_path / "r")})], python=python)
    assert result["failed"] is True
    assert "Failed to import the required Python library (virt-rbd-backup)" in result["msg"], result["msg"]
    assert not (tmp_path / "r").exists()


def test_restic_password_reaches_restic_and_is_never_shown(ansible: Ansible, tmp_path: Path) -> None:
    restic = shutil.which("restic")
    if restic is None:
        pytest.skip("needs restic (Debian package restic)")
    secret = "pw-" + os.urandom(8).hex()
    repository = str(tmp_path / "restic")
    restic_env = {**os.environ, "RESTIC_REPOSITORY": repository, "RESTIC_PASSWORD": secret}
    run([restic, "init"], env=restic_env)
    args = {"connect": connect(), "domains": ["lab-off"], "restic_repo": repository, "restic_password": secret}
    (result,), proc = ansible.play([("backup", args)], verbosity=3)
    assert secret not in proc.stdout + proc.stderr
    assert secret not in json.dumps(result)
    # -vvv shows the module's arguments: the password among them only as Ansible's placeholder.
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in proc.stdout
    assert not result.get("failed"), result
    assert domain_report(result["report"], "lab-off")["status"] == "succeeded"
    # The password reached restic (through the environment): the snapshot is there.
    everything = json.loads(run([restic, "snapshots", "--json"], env=restic_env).stdout)
    listed = [s for s in everything if "virt-rbd-backup-seal" not in s["tags"]]
    assert len(listed) == 1 and len(everything) == 2, everything
    assert any("lab-off" in tag for tag in listed[0]["tags"]), listed[0]["tags"]
    # And back from restic, the password again only through the environment.
    target = tmp_path / "lab-off-vda.raw"
    restore = {"domain": "lab-off", "to": str(target), "restic_repo": repository, "restic_password": secret}
    would = ansible.task("restore", restore, check=True)
    assert not would.get("failed"), would
    assert would["would_restore"] == {"backup_id": listed[0]["id"], "disk": "vda", "target": str(target)}
    assert not target.exists()
    (done,), proc = ansible.play([("restore", restore)], verbosity=3)
    assert secret not in proc.stdout + proc.stderr
    assert not done.get("failed"), done
    # lab-off is shut off: its image is what was backed up.
    assert file_sha256(target) == rbd_export_sha256("rbd/lab-off-a")


def test_restore_task_reproduces_the_disk(ansible: Ansible, backed_up: BackedUp, tmp_path: Path) -> None:
    lab_off = domain_report(backed_up.result["report"], "lab-off")
    target = tmp_path / "lab-off-vda.raw"
    args = {"domain": "lab-off", "to": str(target), "repo": str(backed_up.repo)}
    would = ansible.task("restore", args, check=True)
    assert not would.get("failed"), would
    assert would["would_restore"] == {"backup_id": lab_off["backup_id"], "disk": "vda", "target": str(target)}
    assert not target.exists()
    done = ansible.task("restore", args)
    assert not done.get("failed"), done
    assert done["changed"] is True
    assert done["report"]["backup_id"] == lab_off["backup_id"]
    snapshot = lab_off["disks"][0]["snapshot"]
    assert file_sha256(target) == rbd_export_sha256(f"rbd/lab-off-a@{snapshot}")
    again = ansible.task("restore", args)
    assert again["failed"] is True
    assert "force" in again["msg"], again["msg"]


@pytest.fixture
def two_full_backups(ansible: Ansible, tmp_path: Path) -> Iterator[Path]:
    repo = tmp_path / "repo"
    args = {"connect": connect(), "domains": ["lab-off"], "repo": str(repo), "mode": "full"}
    results, _ = ansible.play([("backup", args), ("backup", args)])
    assert [r["changed"] for r in results] == [True, True], results
    yield repo
    remove_snapshots(repo)


def test_prune_in_check_mode_removes_nothing_then_prunes(ansible: Ansible, two_full_backups: Path) -> None:
    repo = two_full_backups
    folder = repo / domain_uuid("lab-off")
    backups = sorted(p.name for p in folder.iterdir() if p.is_dir() and re.match(r"\d{8}T", p.name))
    assert len(backups) == 2, backups
    before = tree(repo)
    would = ansible.task("prune", {"repo": str(repo), "keep_last": 1}, check=True)
    assert not would.get("failed"), would
    assert would["changed"] is True
    assert would["report"]["dry_run"] is True
    assert would["removed"] == [f"lab-off/{backups[0]}"]
    assert tree(repo) == before
    done = ansible.task("prune", {"repo": str(repo), "keep_last": 1})
    assert done["changed"] is True
    assert done["removed"] == [f"lab-off/{backups[0]}"]
    assert not (folder / backups[0]).exists()
    assert (folder / backups[1] / "manifest.json").is_file()
    refused = ansible.task("prune", {"repo": str(repo)})
    assert refused["failed"] is True
    assert "one of the following is required: keep_last" in refused["msg"], refused["msg"]


def test_the_modules_back_up_restore_and_prune_an_s3_block_repository(ansible: Ansible, tmp_path: Path) -> None:
    """backup, restore and prune tasks on an encrypted s3:// repository of the lab's gateway."""
    access = {
        "s3_endpoint": os.environ["LAB_S3_TLS_ENDPOINT"],
        "s3_region": os.environ["LAB_S3_REGION"],
        "s3_credentials": os.environ["LAB_S3_CREDENTIALS"],
        "s3_ca_file": os.environ["LAB_S3_CA"],
        "repo_key_file": str(tmp_path / "repo.key"),
    }
    repo = f"s3://{os.environ['LAB_S3_BUCKET']}/ansible-{uuid.uuid4().hex[:8]}"
    args = {"connect": connect(), "domains": ["lab-off"], "repo": repo, "mode": "full", **access}
    with tool_snapshots_removed_after(["rbd/lab-off-a"]):
        s3_tasks(ansible, args, repo, access, tmp_path)


def s3_tasks(ansible: Ansible, args: dict[str, Any], repo: str, access: dict[str, str], tmp_path: Path) -> None:
    results, _ = ansible.play([("backup", args), ("backup", args)])
    assert [r.get("failed", False) for r in results] == [False, False], results
    second = domain_report(results[1]["report"], "lab-off")
    assert (tmp_path / "repo.key").stat().st_mode & 0o777 == 0o600
    target = tmp_path / "lab-off-vda.raw"
    done = ansible.task("restore", {"domain": "lab-off", "to": str(target), "repo": repo, **access})
    assert not done.get("failed"), done
    assert done["report"]["backup_id"] == second["backup_id"]
    snapshot = second["disks"][0]["snapshot"]
    assert file_sha256(target) == rbd_export_sha256(f"rbd/lab-off-a@{snapshot}")
    would = ansible.task("prune", {"repo": repo, "keep_last": 1, **access}, check=True)
    assert not would.get("failed") and would["report"]["dry_run"] is True, would
    pruned = ansible.task("prune", {"repo": repo, "keep_last": 1, **access})
    assert not pruned.get("failed"), pruned
    assert len(pruned["removed"]) == 1 and pruned["report"]["blocks"] is not None


def test_mount_task_is_idempotent_and_check_mode_changes_nothing(
    ansible: Ansible, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount module on a scratch domain's backup: mounted twice changes once, the file in the
    backup reads through it, unmounted twice changes once, and check mode mounts and unmounts
    nothing (the kernel's mount table and `losetup --list` say so)."""
    runtime = tmp_path / "run"
    monkeypatch.setenv("VIRT_RBD_BACKUP_RUNTIME_DIR", str(runtime))  # the module's process inherits it
    repo = tmp_path / "repo"
    mountpoint = tmp_path / "mnt"
    with scratch_domain(tmp_path, running=False, prefix="vrb-ans") as dom:
        backed = cli("backup", "--repo", str(repo), "--domain", dom.name, "--json")
        assert backed.returncode == 0, backed.stderr
        backup_id = domain_report(backed.json(), dom.name)["backup_id"]
        args = {"domain": dom.name, "disk": "vda", "mountpoint": str(mountpoint), "repo": str(repo)}
        would = ansible.task("mount", args, check=True)
        assert not would.get("failed") and would["changed"] is True, would
        assert not mountpoint.exists() and not mounted_under(tmp_path)
        results, _ = ansible.play([("mount", args), ("mount", args)])
        try:
            assert [r.get("failed", False) for r in results] == [False, False], results
            assert [r["changed"] for r in results] == [True, False], results
            shown = results[0]["mount"]
            assert shown["backup_id"] == backup_id and shown["fs_type"] == "ext2", shown
            assert results[1]["mount"] == shown
            assert str(mountpoint) in mounted_under(tmp_path)  # and the FUSE folder, under runtime
            assert (mountpoint / "random.bin").stat().st_size == 20 * 1024 * 1024
            other = ansible.task("mount", {**args, "backup": "20000101T000000Z"})
            assert other["failed"] is True and "unmount it first" in other["msg"], other
            would = ansible.task("mount", {"mountpoint": str(mountpoint), "state": "unmounted"}, check=True)
            assert not would.get("failed") and would["changed"] is True, would
            assert str(mountpoint) in mounted_under(tmp_path)
        finally:
            unmount = {"mountpoint": str(mountpoint), "state": "unmounted"}
            results, _ = ansible.play([("mount", unmount), ("mount", unmount)])
        assert [r.get("failed", False) for r in results] == [False, False], results
        assert [r["changed"] for r in results] == [True, False], results
        assert any(step.startswith("stopped the serving process") for step in results[0]["undone"]), results[0]
        assert mounted_under(tmp_path) == []
        assert shown["loop_device"] not in run(["losetup", "--list"]).stdout
        assert list((runtime / "mounts").iterdir()) == []


def mounted_under(path: Path) -> list[str]:
    """The mount points in the kernel's table at or below `path`."""
    points = [line.split(" ")[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


# The role virt_rbd_backup.rbd.hypervisor, against localhost with every path it writes moved
# into a scratch folder (the packages it installs are already on the lab machine: apt reports
# them unchanged).

RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def play_role(ansible: Ansible, role_vars: dict[str, Any], *, check: bool = False) -> tuple[int, str]:
    """Runs the role once; returns the recap's `changed` count and the output."""
    ansible.runs += 1
    playbook = ansible.work / f"role-{ansible.runs}.yml"
    play = {
        "hosts": "localhost",
        "gather_facts": False,
        "roles": [{"role": "virt_rbd_backup.rbd.hypervisor", "vars": role_vars}],
    }
    playbook.write_text(json.dumps([play], indent=1))
    # The system Python, as on a new host: the apt module needs its python3-apt.
    args = [ansible.playbook, "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=/usr/bin/python3"]
    proc = run(
        [*args, *(["--check"] if check else []), str(playbook)],
        check=False,
        timeout=600,
        cwd=ansible.work,
        env=ansible.env(),
    )
    output = proc.stdout + proc.stderr
    recap = RECAP.search(proc.stdout)
    assert proc.returncode == 0 and recap, output
    assert (recap.group(3), recap.group(4)) == ("0", "0"), output
    return int(recap.group(2)), output


REPO_KEY = "virt-rbd-backup key v1\nQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\n"
"""A key file's text (a test key: 32 bytes of 'A')."""


def test_hypervisor_role_installs_idempotently_and_check_mode_changes_nothing(ansible: Ansible, tmp_path: Path) -> None:
    wheels = sorted((ROOT / "dist").glob("virt_rbd_backup-*.whl"))
    assert wheels, "no wheel in dist/: make wheel"
    (tmp_path / "bin").mkdir()
    (tmp_path / "systemd").mkdir()
    password = "correct horse battery staple"
    role_vars = {
        "virt_rbd_backup_wheel": str(wheels[-1]),
        "virt_rbd_backup_venv": str(tmp_path / "venv"),
        "virt_rbd_backup_wheel_dir": str(tmp_path / "wheels"),
        "virt_rbd_backup_bin_link": str(tmp_path / "bin/virt-rbd-backup"),
        "virt_rbd_backup_config_dir": str(tmp_path / "etc"),
        "virt_rbd_backup_systemd_dir": str(tmp_path / "systemd"),
        "virt_rbd_backup_config": {
            "domains": ["web1", "db1"],
            "workers": 3,
            "freeze": "required",
            "keep_daily": 7,
            "keep_within": "2d",
            "metrics_file": "/var/lib/prometheus/node-exporter/virt-rbd-backup.prom",
            "restic": {"repository": "/srv/restic"},
        },
        "virt_rbd_backup_restic_password": password,
        "virt_rbd_backup_s3_access_key_id": "VRBTESTKEYID",
        "virt_rbd_backup_s3_secret_access_key": "s3-secret-never-logged",
        "virt_rbd_backup_repo_key": REPO_KEY,
    }

    # Check mode on a new host: reports changes, makes none.
    changed, output = play_role(ansible, role_vars, check=True)
    assert changed > 0
    assert not (tmp_path / "venv").exists() and not (tmp_path / "etc").exists()
    assert not list((tmp_path / "systemd").iterdir()) and not list((tmp_path / "bin").iterdir())

    changed, output = play_role(ansible, role_vars)
    assert changed > 0
    assert password not in output, "the password must never be logged"
    assert "systemd does not run on this host" in output
    version = run([str(tmp_path / "bin/virt-rbd-backup"), "--version"])
    assert version.stdout.startswith("virt-rbd-backup "), version.stdout
    config_file = tmp_path / "etc/config.toml"
    assert config_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "etc").stat().st_mode & 0o777 == 0o700
    secret = tmp_path / "etc/restic.pass"
    assert secret.stat().st_mode & 0o777 == 0o600 and secret.read_text() == password + "\n"
    # The file the role wrote is one the tool reads, with the values given.
    settings = config.load_toml_config(config_file).settings()
    assert settings["domains"] == ["web1", "db1"] and settings["workers"] == 3 and settings["freeze"] == "required"
    assert (settings["keep_daily"], settings["keep_within"]) == (7, 2 * 86400)
    assert (settings["restic_repo"], settings["restic_password_file"]) == ("/srv/restic", str(secret))
    # The block repository's secrets: files of their own (0600), named in the configuration.
    s3 = tmp_path / "etc/s3.credentials"
    key = tmp_path / "etc/repo.key"
    assert (settings["s3_credentials"], settings["repo_key_file"]) == (str(s3), str(key))
    assert s3.stat().st_mode & 0o777 == 0o600 and key.stat().st_mode & 0o777 == 0o600
    assert "aws_secret_access_key = s3-secret-never-logged" in s3.read_text()
    assert key.read_text() == REPO_KEY.strip() + "\n"
    assert "s3-secret-never-logged" not in output and REPO_KEY.splitlines()[1] not in output
    package = Path(
        run(
            [str(tmp_path / "venv/bin/python"), "-c", "import virt_rbd_backup; print(virt_rbd_backup.__file__)"]
        ).stdout.strip()
    ).parent
    units = sorted(p.name for p in (tmp_path / "systemd").iterdir())
    assert units == sorted(p.name for p in (package / "systemd").iterdir())
    for name in units:
        assert (tmp_path / "systemd" / name).read_bytes() == (ROOT / "contrib/systemd" / name).read_bytes()

    # Idempotent: a second run and a check-mode run change nothing.
    assert play_role(ansible, role_vars)[0] == 0
    assert play_role(ansible, role_vars, check=True)[0] == 0


# ansible-test sanity: every test of ansible-core's list, each in the virtualenv ansible-test
# makes for it (cached in VRB_ANSIBLE_TEST_HOME, so only the first run installs anything).
SANITY_SKIPPED: tuple[str, ...] = ()
"""Sanity tests not run. None at present: pslint and shellcheck find no PowerShell or shell
file in the collection, and changelog has no changelog configuration, so they pass at once."""

PIP_BOOTSTRAP = '''\
"""Stands in for ansible-test's get-pip script, which is fetched from a host other than PyPI:
the pip that Python bundles (ensurepip), then the requested packages from PyPI."""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
'''


def test_ansible_test_sanity_passes() -> None:
    ansible_test = ansible_tool("ansible-test")
    if ansible_test is None:
        pytest.skip(NEEDS_ANSIBLE)
    home = Path(os.environ.get("VRB_ANSIBLE_TEST_HOME", Path.home() / ".cache/virt-rbd-backup/ansible-test-home"))
    home.mkdir(parents=True, exist_ok=True)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    args = [ansible_test, "sanity", "--color", "no", "--untracked", "--python", python, "--requirements"]
    args += [f"--skip-test={name}" for name in SANITY_SKIPPED]
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = run(args, check=False, timeout=600, cwd=COLLECTION, env=env)
    bootstrap = re.search(r"can be manually downloaded and saved to: (\S+)", proc.stdout + proc.stderr)
    if proc.returncode != 0 and bootstrap:
        Path(bootstrap.group(1)).write_text(PIP_BOOTSTRAP)
        proc = run(args, check=False, timeout=600, cwd=COLLECTION, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    ran = re.findall(r'Running sanity test "([\w-]+)"', output)
    for essential in ("ansible-doc", "compile", "import", "pep8", "pylint", "validate-modules", "yamllint"):
        assert essential in ran, (essential, ran)
