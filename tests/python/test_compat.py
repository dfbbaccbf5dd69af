"""The original tool's scripting API (python/virt_rbd_backup/compat/) without the lab: record
shapes, the redacted secret, the lines printed, and what process_backup and run_parallel ask
of the core (which is replaced by stand-ins here; test_compat_lab.py runs the real one).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import pickle
import queue
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

import virt_rbd_backup
from virt_rbd_backup import BackupReport, DomainListing, ResticTarget, UsageError
from virt_rbd_backup.compat import ceph, config, main, virt
from virt_rbd_backup.compat.output import restic

UUID_WEB = "6695eb01-f6a4-8304-79aa-97f2502e193f"
UUID_LOCAL = "0b5ac0ff-ee01-4f6e-9c41-5e3c0b1a7a2d"
KEY = "AQBzc2VjcmV0LWtleS1vZi10aGUtbGFiLXVzZXI9PQ=="


def listing(name: str, uuid: str, disks: list[dict[str, Any]], skipped: list[dict[str, Any]]) -> DomainListing:
    return DomainListing.from_dict(
        {"name": name, "uuid": uuid, "active": True, "rbd_disks": disks, "skipped_disks": skipped}
    )


def rbd(target: str, image: str, namespace: str | None = None, auth: bool = True) -> dict[str, Any]:
    return {
        "target": target,
        "pool": "rbd",
        "namespace": namespace,
        "image": image,
        "auth": {"username": "libvirt", "secret_uuid": "5e3c0b1a-7a2d-4f6e-9c41-0b5ac0ffee01"} if auth else None,
    }


LISTINGS = [
    listing(
        "web1",
        UUID_WEB,
        [rbd("vda", "web1-a"), rbd("vdb", "web1-b", namespace="tenant", auth=False)],
        [{"target": "hdc", "reason": "not_network"}],
    ),
    listing("local1", UUID_LOCAL, [], [{"target": "vda", "reason": "not_network"}]),
]


@pytest.fixture
def libvirt(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace discovery and the key lookup; `state["key_calls"]` records each key read."""
    state: dict[str, Any] = {"key_calls": [], "connects": []}

    def list_domains(*, connect: str, domains: list[str] | None = None) -> list[DomainListing]:
        state["connects"].append(connect)
        return [entry for entry in LISTINGS if not domains or entry.uuid in domains]

    def ceph_key(*args: Any) -> str:
        state["key_calls"].append(args)
        return KEY

    monkeypatch.setattr(virt, "_list_domains", list_domains)
    monkeypatch.setattr(main, "list_domains", list_domains)
    monkeypatch.setattr(virt_rbd_backup._native, "ceph_key", ceph_key)
    return state


def test_records_have_the_originals_shape(libvirt: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    connection = virt.VirtConnection("qemu:///system")
    connection.open()
    images = connection.list_virtrbd_images()
    assert libvirt["connects"][-1] == "qemu:///system"
    # One flat list, a record per RBD disk, as the original returned.
    assert [(image.domain, image.name) for image in images] == [(UUID_WEB, "web1-a"), (UUID_WEB, "web1-b")]
    assert [f.name for f in dataclasses.fields(virt.VirtRBDImage)] == [
        "domain",
        "name",
        "pool",
        "username",
        "secret",
        "snapshot_name",
    ]
    image = images[0]
    assert (image.pool, image.username, image.snapshot_name) == ("rbd", "libvirt", "")
    # snapshot_name is settable, as the original's main.py sets it.
    image.snapshot_name = "web1-a-backup-1"
    assert image.snapshot_name == "web1-a-backup-1"
    # A namespaced image: pool/namespace, so that f"{pool}/{name}" is its rbd spec; no <auth>: no user.
    assert (images[1].pool, images[1].username) == ("rbd/tenant", "")
    # The original's lines for the disks it leaves out, as it listed them.
    assert capsys.readouterr().out.splitlines() == [
        "Ignoring non-network disk for domain: web1",
        "Ignoring non-network disk for domain: local1",
    ]


def test_a_closed_connection_raises_the_originals_exception(libvirt: dict[str, Any]) -> None:
    connection = virt.VirtConnection("qemu:///system")
    with pytest.raises(virt.LibvirtConnectionException, match="invalid connection"):
        connection.list_virtrbd_images()
    with pytest.raises(virt.LibvirtConnectionException, match="invalid connection"):
        connection.lookupByUUIDString(UUID_WEB)
    connection.open()
    connection.close()
    assert connection.conn is None
    with pytest.raises(virt.LibvirtConnectionException):
        connection.listAllDomains(0)


def test_the_proxy_answers_the_libvirt_calls_of_the_originals_main(libvirt: dict[str, Any]) -> None:
    connection = virt.VirtConnection("qemu:///system")
    connection.open()
    domain = connection.lookupByUUIDString(UUID_WEB)
    assert (domain.name(), domain.UUIDString(), domain.isActive()) == ("web1", UUID_WEB, 1)
    assert [d.name() for d in connection.listAllDomains(0)] == ["web1", "local1"]
    assert connection.getURI() == "qemu:///system"
    with pytest.raises(virt_rbd_backup.LibvirtError, match="no domain"):
        connection.lookupByName("nope")
    # What the stand-in does not offer is named, not silently wrong.
    with pytest.raises(AttributeError, match="offers only"):
        connection.defineXML("<domain/>")


def test_secret_is_redacted_and_the_key_never_read_by_default(libvirt: dict[str, Any]) -> None:
    connection = virt.VirtConnection()
    connection.open()
    image, namespaced = connection.list_virtrbd_images()
    assert isinstance(image.secret, bytes)
    assert image.secret == virt.REDACTED
    assert libvirt["key_calls"] == []
    assert isinstance(image.secret, virt.RedactedSecret)
    # It remembers where the key is, for CephConnection to read it in the core.
    assert (image.secret.uri, image.secret.domain, image.secret.username, image.secret.secret_uuid) == (
        "qemu:///system",
        "web1",
        "libvirt",
        "5e3c0b1a-7a2d-4f6e-9c41-0b5ac0ffee01",
    )
    assert image.secret.in_libvirt
    assert not namespaced.secret.in_libvirt, "no <auth>: the keyring of ceph.conf applies"
    # Records go to the original's worker processes through a multiprocessing queue.
    copy = pickle.loads(pickle.dumps(image))
    assert copy == image
    assert isinstance(copy.secret, virt.RedactedSecret)
    assert copy.secret.secret_uuid == image.secret.secret_uuid


def test_revealed_secret_is_the_raw_key_but_not_in_the_repr(libvirt: dict[str, Any]) -> None:
    connection = virt.VirtConnection("qemu:///system", reveal_secrets=True)
    connection.open()
    images = connection.list_virtrbd_images()
    image = images[0]
    # As the original's: the libvirt secret's value, the raw bytes of the base64 key.
    assert image.secret == base64.b64decode(KEY)
    assert not isinstance(image.secret, virt.RedactedSecret)
    for text in (repr(image), repr(images), str(image)):
        assert KEY not in text
        assert repr(image.secret) not in text
    assert libvirt["key_calls"] == [("qemu:///system", "web1", "libvirt", "5e3c0b1a-7a2d-4f6e-9c41-0b5ac0ffee01", None)]
    # The disk without <auth> has no key to read.
    assert isinstance(images[1].secret, virt.RedactedSecret)


def test_domains_compare_by_uuid() -> None:
    assert virt.Domain("a", UUID_WEB, True) == virt.Domain("renamed", UUID_WEB, False)
    assert len({virt.Domain("a", UUID_WEB, True), virt.Domain("b", UUID_WEB, True)}) == 1
    assert virt.Domain("a", UUID_WEB, False).isActive() == 0


def test_snapshot_name_comes_from_the_core() -> None:
    # 2026-11-26T09:52:43.007Z, as the core names backup ids.
    assert virt_rbd_backup._native.snapshot_name("restic", 1795686763.007) == (
        "virt-rbd-backup-restic-20261126T095243.007Z"
    )
    with pytest.raises(UsageError):
        virt_rbd_backup._native.snapshot_name("restic", float("nan"))


# -------------------------------------------------------------------------- config

ORIGINAL = """
NUMBER_OF_PROCESSES = 2
LIBVIRT_CONNECTION = "qemu:///system"
TARGET_REPO = "/srv/restic"
TARGET_KEYFILE = "/etc/restic.key"
"""


@pytest.fixture
def original_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.py"
    path.write_text(ORIGINAL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "_loaded", None)
    return path


def test_config_reads_the_originals_config_py_from_the_current_directory(original_config: Path) -> None:
    assert config.NUMBER_OF_PROCESSES == 2
    assert config.TARGET_REPO == "/srv/restic"
    assert config.TARGET_KEYFILE == "/etc/restic.key"
    assert config.path() == original_config
    assert config.restic_target() == ResticTarget(repository="/srv/restic", password_file="/etc/restic.key")


def test_config_defaults_for_names_the_file_leaves_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_loaded", None)
    path = tmp_path / "elsewhere.py"
    path.write_text('TARGET_REPO = "/srv/restic"\n')
    config.load(path)
    assert (config.NUMBER_OF_PROCESSES, config.LIBVIRT_CONNECTION, config.TARGET_KEYFILE) == (
        4,
        "qemu:///system",
        None,
    )


def test_config_without_a_file_is_an_error_saying_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "_loaded", None)
    monkeypatch.setattr("sys.argv", [""])
    with pytest.raises(UsageError, match=re.escape(str(tmp_path / "config.py"))):
        _ = config.TARGET_REPO


def test_config_has_only_the_originals_names(original_config: Path) -> None:
    with pytest.raises(AttributeError):
        _ = config.DOMAINS  # type: ignore[attr-defined]


# -------------------------------------------------------------------------- main


def domain_report(name: str, uuid: str, status: str, error: str | None = None) -> dict[str, Any]:
    return {"name": name, "uuid": uuid, "status": status, "error": error}


@pytest.fixture
def core(monkeypatch: pytest.MonkeyPatch, libvirt: dict[str, Any]) -> dict[str, Any]:
    """Replace the backup: `state["calls"]` records its options, `state["domains"]` is the report's."""
    state: dict[str, Any] = {"calls": [], "domains": []}

    def backup(**options: Any) -> BackupReport:
        on_event = options.pop("on_event")
        state["calls"].append(options)
        for d in state["domains"]:
            if d["status"] != "skipped":
                on_event({"event": "domain_started", "domain": d["name"], "uuid": d["uuid"], "images": 2})
            on_event({"event": "domain_finished", "report": d})
        if isinstance(state.get("raise"), BaseException):
            raise state["raise"]
        return BackupReport.from_dict(
            {"version": 1, "started_at": 0.0, "finished_at": 1.0, "domains": state["domains"]}
        )

    monkeypatch.setattr(main, "backup", backup)
    return state


def records() -> list[virt.VirtRBDImage]:
    connection = virt.VirtConnection()
    connection.open()
    return connection.list_virtrbd_images()


def test_process_backup_backs_up_the_domain_into_the_configured_restic(
    original_config: Path, core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    images = records()
    capsys.readouterr()
    core["domains"] = [domain_report("web1", UUID_WEB, "succeeded")]
    assert main.process_backup(images) == (True, f"No error occurred for domain {UUID_WEB}")
    assert core["calls"] == [
        {
            "connect": "qemu:///system",
            "domains": [UUID_WEB],
            "workers": 1,
            "restic": ResticTarget(repository="/srv/restic", password_file="/etc/restic.key"),
        }
    ]
    # The original's process_backup printed nothing; its worker printed the Processing line.
    assert capsys.readouterr().out == ""


def test_worker_prints_the_processing_line_and_puts_each_result(
    original_config: Path, core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    images = records()
    capsys.readouterr()
    core["domains"] = [domain_report("web1", UUID_WEB, "succeeded")]
    tasks: queue.Queue[Any] = queue.Queue()
    done: queue.Queue[Any] = queue.Queue()
    tasks.put(images)
    tasks.put(None)
    main.worker(tasks, done)  # type: ignore[arg-type]
    assert done.get_nowait() == (True, f"No error occurred for domain {UUID_WEB}")
    assert capsys.readouterr().out == f"Processing 2 images for domain {UUID_WEB}\n"


def test_process_backup_returns_the_failure_naming_the_domain(original_config: Path, core: dict[str, Any]) -> None:
    core["domains"] = [domain_report("web1", UUID_WEB, "failed", "restic backup of web1-a.img failed (exit status: 1)")]
    assert main.process_backup(records()) == (
        False,
        f"domain {UUID_WEB} (web1): restic backup of web1-a.img failed (exit status: 1)",
    )


def test_process_backup_returns_an_error_that_stops_the_run(original_config: Path, core: dict[str, Any]) -> None:
    core["raise"] = UsageError("invalid option: the restic password file /etc/restic.key does not exist")
    ok, message = main.process_backup(records())
    assert not ok
    assert message.startswith(f"domain {UUID_WEB} (web1): ")
    assert "/etc/restic.key does not exist" in message


def test_process_backup_refuses_part_of_a_domain(original_config: Path, core: dict[str, Any]) -> None:
    ok, message = main.process_backup(records()[:1])
    assert not ok
    assert "rbd/tenant/web1-b" in message
    assert core["calls"] == [], "nothing was backed up"


def test_process_backup_refuses_images_of_several_domains(original_config: Path, core: dict[str, Any]) -> None:
    image = records()[0]
    other = dataclasses.replace(image, domain=UUID_LOCAL)
    ok, message = main.process_backup([image, other])
    assert not ok
    assert message.startswith("process_backup takes the images of one domain, not of 2")
    assert core["calls"] == []


def test_process_backup_of_nothing_succeeds(core: dict[str, Any]) -> None:
    assert main.process_backup([]) == (True, "No error occurred")
    assert core["calls"] == []


def test_run_parallel_backs_up_everything_with_the_originals_lines(
    original_config: Path, core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    core["domains"] = [
        domain_report("web1", UUID_WEB, "succeeded"),
        domain_report("local1", UUID_LOCAL, "skipped"),
        domain_report("db1", "u-db1", "failed", "cannot freeze"),
    ]
    assert main.run_parallel() == [
        (True, f"No error occurred for domain {UUID_WEB}"),
        (False, "domain u-db1 (db1): cannot freeze"),
    ]
    assert core["calls"] == [
        {
            "connect": "qemu:///system",
            "workers": 2,
            "restic": ResticTarget(repository="/srv/restic", password_file="/etc/restic.key"),
        }
    ]
    assert capsys.readouterr().out.splitlines() == [
        f"Processing 2 images for domain {UUID_WEB}",
        f"Backup successful: No error occurred for domain {UUID_WEB}",
        "Processing 2 images for domain u-db1",
        "Backup failed: domain u-db1 (db1): cannot freeze",
    ]


def test_the_package_layout_is_importable_as_scripts_wrote_it() -> None:
    from virt_rbd_backup.compat import config as c
    from virt_rbd_backup.compat import main as m
    from virt_rbd_backup.compat import virt as v

    assert callable(v.VirtConnection)
    assert callable(m.process_backup)
    assert callable(m.run_parallel)
    assert callable(c.load)


# -------------------------------------------------------------------------- ceph, output.restic


class FakeSession:
    """Stands in for _native.CephSession: records the calls the compat layer makes."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, user: str, **kwargs: Any) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.protected: set[str] = set()
        FakeSession.made.append({"user": user, **kwargs, "session": self})

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> Any:
            self.calls.append((name, *args))
            if name == "protect_snapshot":
                self.protected.add(args[0])
            if name == "snapshot_is_protected":
                return args[0] in self.protected
            if name == "size":
                return 10
            if name == "stream_to_restic":
                if args[0]["repository"].startswith("rest:"):
                    raise virt_rbd_backup.ResticError("restic backup of x.img failed (exit status: 1): Fatal")
                return "4f1c2a9e"
            return None

        return call


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> type[FakeSession]:
    FakeSession.made = []
    monkeypatch.setattr(ceph, "CephSession", FakeSession)
    return FakeSession


def test_ceph_connection_keeps_the_originals_state_rules(session: type[FakeSession]) -> None:
    conn = ceph.CephConnection("libvirt", b"\x01\x02")
    with pytest.raises(ceph.CephConnectionException, match="Not connected to cluster"):
        conn.open_pool("rbd")
    conn.connect()
    with pytest.raises(ceph.CephConnectionException, match="No pool opened"):
        conn.open_image("a")
    conn.open_pool("rbd")
    with pytest.raises(ceph.CephConnectionException, match="No image opened"):
        conn.create_snapshot("s")
    conn.close()
    assert (conn.cluster, conn.ioctx, conn.image) == (None, None, None)
    with pytest.raises(TypeError, match="key must be bytes"):
        ceph.CephConnection("libvirt", "AQB...")  # type: ignore[arg-type]


def test_ceph_connection_runs_the_originals_main_sequence(
    session: type[FakeSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    armed: list[int] = []
    monkeypatch.setattr(ceph, "_arm_cleanup", lambda: armed.append(1))
    conn = ceph.CephConnection("libvirt", b"\x01\x02")
    conn.connect()
    assert session.made[0]["key"] == b"\x01\x02"
    assert session.made[0]["libvirt_secret"] is None
    conn.pool_exists("rbd/tenant")
    conn.open_pool("rbd/tenant")
    conn.open_image("web1-b")
    conn.create_snapshot("web1-b-backup-1", protected=True)
    conn.close_image()
    conn.open_image("web1-b", snapshot="web1-b-backup-1", read_only=True)
    assert conn.image is not None
    assert conn.image.size() == 10
    assert (
        restic.backup("/srv/restic", "/etc/restic.key", conn.image, filename="web1-b.img", progress=True) == "4f1c2a9e"
    )
    conn.close_image()
    conn.open_image("web1-b")
    conn.remove_snapshot("web1-b-backup-1", force_protected=True)
    calls = session.made[0]["session"].calls
    assert calls == [
        ("pool_exists", "rbd"),
        ("open_pool", "rbd", "tenant"),
        ("open_image", "web1-b", None, False),
        ("create_snapshot", "web1-b-backup-1", False),
        ("protect_snapshot", "web1-b-backup-1"),
        ("close_image",),
        ("open_image", "web1-b", "web1-b-backup-1", True),
        ("size",),
        ("stream_to_restic", {"repository": "/srv/restic", "password_file": "/etc/restic.key"}, "web1-b.img"),
        ("close_image",),
        ("open_image", "web1-b", None, False),
        ("snapshot_is_protected", "web1-b-backup-1"),
        ("unprotect_snapshot", "web1-b-backup-1"),
        ("remove_snapshot", "web1-b-backup-1"),
    ]
    assert armed == [1], "a created snapshot arms the clean-up at exit"
    # An image handle of a closed image refuses, rather than reading another image.
    image = conn.image
    conn.close_image()
    with pytest.raises(ceph.CephConnectionException, match="image closed"):
        image.size()  # type: ignore[union-attr]


def test_a_redacted_secret_has_the_core_read_the_key(session: type[FakeSession]) -> None:
    secret = virt.RedactedSecret("qemu:///system", "web1", "libvirt", "5e3c0b1a-7a2d-4f6e-9c41-0b5ac0ffee01", None)
    ceph.CephConnection("libvirt", secret).connect()
    assert session.made[0]["key"] is None
    assert session.made[0]["libvirt_secret"] == ("qemu:///system", "web1", "5e3c0b1a-7a2d-4f6e-9c41-0b5ac0ffee01", None)
    # No <auth>: neither a key nor a secret, the keyring of the configuration.
    ceph.CephConnection("admin", virt.RedactedSecret("qemu:///system", "web1", "", None, None)).connect()
    assert (session.made[1]["key"], session.made[1]["libvirt_secret"]) == (None, None)
    assert "AQB" not in repr(ceph.CephConnection("libvirt", b"AQB-raw"))


def test_restic_backup_wraps_failures_in_the_originals_exception_without_credentials(
    session: type[FakeSession],
) -> None:
    conn = ceph.CephConnection("libvirt", None)
    conn.connect()
    conn.open_pool("rbd")
    conn.open_image("a", snapshot="s", read_only=True)
    with pytest.raises(restic.BackupException) as raised:
        restic.backup("rest:https://user:hunter2@backup.example/repo", None, conn.image, filename="a.img")
    assert "hunter2" not in str(raised.value)
    assert "rest:https://backup.example/repo" in str(raised.value)
    assert "Fatal" in str(raised.value)
    with pytest.raises(TypeError, match="CephConnection"):
        restic.backup("/srv/restic", None, object(), filename="a.img")  # type: ignore[arg-type]


def test_leftover_clean_up_is_armed_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[Any] = []
    monkeypatch.setattr(ceph, "_cleanup_pid", None)
    monkeypatch.setattr(ceph.atexit, "register", registered.append)
    monkeypatch.setattr(ceph.multiprocessing.util, "Finalize", lambda obj, fn, exitpriority: registered.append(fn))
    ceph._arm_cleanup()
    ceph._arm_cleanup()
    assert registered == [ceph.remove_leftovers, ceph.remove_leftovers]
    # A forked child inherits the flag with its parent's pid, and arms its own.
    monkeypatch.setattr(ceph, "_cleanup_pid", os.getpid() + 1)
    ceph._arm_cleanup()
    assert len(registered) == 4


def test_leftover_clean_up_says_what_it_did(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        ceph,
        "remove_leftover_snapshots",
        lambda: [
            {"snapshot": "rbd/a@s1", "outcome": "removed", "error": None},
            {"snapshot": "rbd/b@s2", "outcome": "already_gone", "error": None},
            {"snapshot": "rbd/c@s3", "outcome": "failed", "error": "rbd_snap_unprotect failed"},
        ],
    )
    ceph.remove_leftovers()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert "removed snapshot rbd/a@s1" in err[0]
    assert "could not remove snapshot rbd/c@s3" in err[1] and "rbd_snap_unprotect failed" in err[1]
