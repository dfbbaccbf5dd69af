"""The original tool's scripting API (python/virt_rbd_backup/compat/) without the lab: record
shapes, the redacted secret, the lines printed, and what process_backup and run_parallel ask
of the core (which is replaced by stand-ins here; test_compat_lab.py runs the real one).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import virt_rbd_backup
from virt_rbd_backup import BackupReport, DomainListing, ResticTarget, UsageError
from virt_rbd_backup.compat import config, main, virt

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
    images = virt.VirtConnection("qemu:///system").list_virtrbd_images()
    assert libvirt["connects"] == ["qemu:///system"]
    # One list per domain with RBD disks; a domain without any has no (empty) list.
    assert [[image.name for image in domain] for domain in images] == [["web1-a", "web1-b"]]
    image = images[0][0]
    assert virt.VirtRBDImage._fields == ("domain", "name", "pool", "username", "secret", "snapshot_name")
    assert isinstance(image, tuple)
    domain, name, pool, username, _secret, snapshot_name = image
    assert (name, pool, username) == ("web1-a", "rbd", "libvirt")
    assert (domain.name(), domain.UUIDString(), domain.isActive()) == ("web1", UUID_WEB, 1)
    assert str(domain) == "web1"
    assert re.fullmatch(r"virt-rbd-backup-restic-\d{8}T\d{6}\.\d{3}Z", snapshot_name)
    # A namespaced image: pool/namespace, so that f"{pool}/{name}" is its rbd spec; no <auth>: no user.
    assert (images[0][1].pool, images[0][1].username) == ("rbd/tenant", "")
    # The original's lines for the disks it leaves out, as it listed them.
    assert capsys.readouterr().out.splitlines() == [
        "Ignoring non-network disk for domain: web1",
        "Ignoring non-network disk for domain: local1",
    ]


def test_secret_is_redacted_and_the_key_never_read_by_default(libvirt: dict[str, Any]) -> None:
    image = virt.VirtConnection().list_virtrbd_images()[0][0]
    assert image.secret == virt.REDACTED
    assert libvirt["key_calls"] == []
    assert virt.REDACTED in repr(image)


def test_revealed_secret_is_there_but_not_in_the_repr(libvirt: dict[str, Any]) -> None:
    images = virt.VirtConnection("qemu:///system", reveal_secrets=True).list_virtrbd_images()
    image = images[0][0]
    assert image.secret == KEY
    assert KEY not in repr(image)
    assert KEY not in repr(images)
    assert KEY not in str(image)
    assert libvirt["key_calls"] == [("qemu:///system", "web1", "libvirt", "5e3c0b1a-7a2d-4f6e-9c41-0b5ac0ffee01", None)]
    # The disk without <auth> has no key to read.
    assert images[0][1].secret == virt.REDACTED


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


def test_process_backup_backs_up_the_domain_into_the_configured_restic(
    original_config: Path, core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    images = virt.VirtConnection().list_virtrbd_images()
    capsys.readouterr()
    core["domains"] = [domain_report("web1", UUID_WEB, "succeeded")]
    assert main.process_backup(images[0]) == (True, "No error occurred")
    assert core["calls"] == [
        {
            "connect": "qemu:///system",
            "domains": [UUID_WEB],
            "workers": 1,
            "restic": ResticTarget(repository="/srv/restic", password_file="/etc/restic.key"),
        }
    ]
    # The Processing line while it works; the outcome is the return value.
    assert capsys.readouterr().out == f"Processing 2 images for domain {UUID_WEB}\n"


def test_process_backup_returns_the_failure(original_config: Path, core: dict[str, Any]) -> None:
    images = virt.VirtConnection().list_virtrbd_images()
    core["domains"] = [domain_report("web1", UUID_WEB, "failed", "restic backup of web1-a.img failed (exit status: 1)")]
    assert main.process_backup(images[0]) == (False, "restic backup of web1-a.img failed (exit status: 1)")


def test_process_backup_returns_an_error_that_stops_the_run(original_config: Path, core: dict[str, Any]) -> None:
    images = virt.VirtConnection().list_virtrbd_images()
    core["raise"] = UsageError("invalid option: the restic password file /etc/restic.key does not exist")
    ok, message = main.process_backup(images[0])
    assert not ok
    assert "/etc/restic.key does not exist" in message


def test_process_backup_refuses_part_of_a_domain(original_config: Path, core: dict[str, Any]) -> None:
    images = virt.VirtConnection().list_virtrbd_images()
    ok, message = main.process_backup(images[0][:1])
    assert not ok
    assert "rbd/tenant/web1-b" in message
    assert core["calls"] == [], "nothing was backed up"


def test_process_backup_refuses_images_of_several_domains(original_config: Path, core: dict[str, Any]) -> None:
    image = virt.VirtConnection().list_virtrbd_images()[0][0]
    other = image._replace(domain=virt.Domain("db1", UUID_LOCAL, True))
    assert main.process_backup([image, other]) == (False, "process_backup takes the images of one domain, not of 2")


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
    assert main.run_parallel() == [(True, "No error occurred"), (False, "cannot freeze")]
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
        "Backup failed: cannot freeze",
    ]


def test_the_package_layout_is_importable_as_scripts_wrote_it() -> None:
    from virt_rbd_backup.compat import config as c
    from virt_rbd_backup.compat import main as m
    from virt_rbd_backup.compat import virt as v

    assert callable(v.VirtConnection)
    assert callable(m.process_backup)
    assert callable(m.run_parallel)
    assert callable(c.load)
