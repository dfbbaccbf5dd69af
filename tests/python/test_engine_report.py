"""The report and listing dataclasses (python/virt_rbd_backup/report.py) against the JSON the
engine writes (src/engine/report.rs, listing.rs, restore.rs, verify.rs, prune.rs,
plan_report.rs, restic.rs, src/libvirt/domain_xml.rs).

The field lists are compared with the Rust source itself, so a field added on either side
without the other fails here rather than silently vanishing from reports.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from virt_rbd_backup import (
    BackupDiskListing,
    BackupListing,
    BackupPlan,
    BackupReport,
    DefineReport,
    DiskReport,
    DomainListing,
    DomainPruneReport,
    DomainReport,
    FreezeReport,
    KeptBackup,
    MonitorHost,
    PlannedDisk,
    PlannedDomain,
    PruneReport,
    RbdAuth,
    RbdDisk,
    RemovedBackup,
    ResticSnapshot,
    ResticTarget,
    RestoreReport,
    SkippedDisk,
    VerifyProblem,
    VerifyReport,
    cli,
    report,
)

SRC = Path(__file__).resolve().parents[2] / "src"

# Python dataclass -> (Rust file, Rust struct) it mirrors.
MIRRORS: dict[type, tuple[str, str]] = {
    BackupReport: ("engine/report.rs", "BackupReport"),
    DomainReport: ("engine/report.rs", "DomainReport"),
    DiskReport: ("engine/report.rs", "DiskReport"),
    FreezeReport: ("repo/manifest.rs", "FreezeReport"),
    DomainListing: ("engine/listing.rs", "DomainListing"),
    SkippedDisk: ("engine/discovery.rs", "SkippedDisk"),
    BackupListing: ("engine/listing.rs", "BackupListing"),
    BackupDiskListing: ("engine/listing.rs", "BackupDiskListing"),
    RbdDisk: ("libvirt/domain_xml.rs", "RbdDiskSpec"),
    MonitorHost: ("libvirt/domain_xml.rs", "MonitorHost"),
    RbdAuth: ("libvirt/domain_xml.rs", "RbdAuth"),
    RestoreReport: ("engine/restore.rs", "RestoreReport"),
    DefineReport: ("engine/restore.rs", "DefineReport"),
    VerifyReport: ("engine/verify.rs", "VerifyReport"),
    VerifyProblem: ("engine/verify.rs", "VerifyProblem"),
    PruneReport: ("engine/prune.rs", "PruneReport"),
    DomainPruneReport: ("engine/prune.rs", "DomainPruneReport"),
    KeptBackup: ("engine/prune.rs", "KeptBackup"),
    RemovedBackup: ("engine/prune.rs", "RemovedBackup"),
    BackupPlan: ("engine/plan_report.rs", "BackupPlan"),
    PlannedDomain: ("engine/plan_report.rs", "PlannedDomain"),
    PlannedDisk: ("engine/plan_report.rs", "PlannedDisk"),
    ResticSnapshot: ("engine/restic.rs", "ResticSnapshot"),
    # An input, not a report: what the Python API sends as `restic`.
    ResticTarget: ("engine/restic.rs", "ResticTarget"),
}

# Python Literal alias -> (Rust file, Rust enum) whose snake_case variants it lists.
ENUM_MIRRORS: dict[str, tuple[str, str]] = {
    "SkipReason": ("libvirt/domain_xml.rs", "SkipReason"),
    "PruneStatus": ("engine/prune.rs", "PruneStatus"),
    "DomainStatus": ("engine/report.rs", "DomainStatus"),
    "Consistency": ("repo/manifest.rs", "Consistency"),
}


def rust_fields(file: str, struct: str) -> list[str]:
    """The serialized field names of a plain Rust struct (public fields, no serde renames)."""
    text = (SRC / file).read_text()
    match = re.search(rf"pub struct {struct} \{{(.*?)\n\}}", text, re.S)
    assert match, f"struct {struct} not found in src/{file}"
    body = match.group(1)
    for attribute in ("serde(rename", "serde(skip", "serde(flatten"):
        assert attribute not in body, f"{struct} uses {attribute}: teach this test serde attributes"
    return re.findall(r"^\s*pub (\w+):", body, re.M)


@pytest.mark.parametrize("cls", list(MIRRORS), ids=lambda c: c.__name__)
def test_dataclass_fields_are_the_rust_struct_fields_in_order(cls: type) -> None:
    # In order too, so that to_dict() writes keys in the order serde does.
    file, struct = MIRRORS[cls]
    assert [f.name for f in dataclasses.fields(cls)] == rust_fields(file, struct)


def rust_unit_variants(file: str, enum: str) -> list[str]:
    """The serialized names of a unit-variant enum with ``rename_all = "snake_case"``."""
    text = (SRC / file).read_text()
    match = re.search(rf'#\[serde\(rename_all = "snake_case"\)\]\s*pub enum {enum} \{{(.*?)\n\}}', text, re.S)
    assert match, f"snake_case enum {enum} not found in src/{file}"
    body = re.sub(r"^\s*(///|//|#\[).*$", "", match.group(1), flags=re.M)
    names = re.findall(r"^\s*([A-Z]\w*)\s*,?\s*$", body, re.M)
    return [re.sub(r"(?<!^)([A-Z])", r"_\1", n).lower() for n in names]


@pytest.mark.parametrize("alias", list(ENUM_MIRRORS))
def test_literal_aliases_list_the_rust_enum_variants(alias: str) -> None:
    file, enum = ENUM_MIRRORS[alias]
    assert list(typing.get_args(getattr(report, alias))) == rust_unit_variants(file, enum)


@pytest.mark.parametrize("reason", typing.get_args(report.SkipReason))
def test_every_skip_reason_has_its_own_line_and_listing_text(reason: str) -> None:
    line = cli.format_event({"event": "disk_skipped", "domain": "web1", "target": "vdb", "reason": reason})
    assert line is not None
    assert line[1].startswith("Ignoring ")
    assert reason not in line[1], "falls back to the generic line for unknown reasons"
    listing = DomainListing.from_dict(
        {"name": "web1", "uuid": "u", "active": False, "skipped_disks": [{"target": "vdb", "reason": reason}]}
    )
    assert reason not in cli.format_listing(listing)[1]


# A report as serde writes it: every field, struct order, both kinds of domain outcome.
REPORT_JSON = """
{
  "version": 1,
  "started_at": 1764150000.25,
  "finished_at": 1764150042.5,
  "domains": [
    {
      "name": "web1",
      "uuid": "6695eb01-f6a4-8304-79aa-97f2502e193f",
      "status": "succeeded",
      "error": null,
      "skip_reason": null,
      "warnings": ["guest agent did not answer; snapshots are crash-consistent"],
      "backup_id": "20251126T100000Z",
      "kind": "incremental",
      "path": "/srv/backups/6695eb01/20251126T100000Z",
      "consistency": "frozen",
      "freeze": {
        "attempted": true,
        "frozen_filesystems": 2,
        "window_ms": 812.5,
        "frozen_at": 1764150001.0,
        "thawed_at": 1764150001.8125
      },
      "disks": [
        {
          "target": "vda",
          "image": "rbd/web1-root",
          "size": 10737418240,
          "kind": "incremental",
          "bytes_read": 2147483648,
          "bytes_written": 2000000000,
          "snapshot": "virt-rbd-backup-20251126T100000Z",
          "snapshot_timestamp": 1764150001.5,
          "file": "vda.raw",
          "checksum": "blake3-4m:00ff",
          "seconds": 12.5,
          "snapshot_create_ms": 41.5
        }
      ],
      "seconds": 40.0
    },
    {
      "name": "db1",
      "uuid": "0b5ac0ff-ee01-4f6e-9c41-5e3c0b1a7a2d",
      "status": "failed",
      "error": "rbd_open failed for rbd/db1: No such file or directory (errno 2)",
      "skip_reason": null,
      "warnings": [],
      "backup_id": null,
      "kind": null,
      "path": null,
      "consistency": null,
      "freeze": {
        "attempted": false,
        "frozen_filesystems": 0,
        "window_ms": null,
        "frozen_at": null,
        "thawed_at": null
      },
      "disks": [],
      "seconds": 0.5
    }
  ]
}
"""


def test_report_round_trips_through_the_dataclasses() -> None:
    data = json.loads(REPORT_JSON)
    report = BackupReport.from_dict(data)
    assert report.to_dict() == data
    # Same text, same key order: to_dict is a faithful --json document.
    assert json.dumps(report.to_dict()) == json.dumps(data)


def test_report_fields_are_typed_values() -> None:
    report = BackupReport.from_dict(json.loads(REPORT_JSON))
    web1, db1 = report.domains
    assert web1.status == "succeeded"
    assert web1.freeze.window_ms == 812.5
    assert web1.disks[0].size == 10 * 1024**3
    assert web1.warnings == ("guest agent did not answer; snapshots are crash-consistent",)
    assert db1.error is not None
    assert db1.error.startswith("rbd_open failed")
    assert report.any_failed
    assert (report.count("succeeded"), report.count("failed"), report.count("skipped")) == (1, 1, 0)


def test_dataclasses_are_frozen() -> None:
    report = BackupReport.from_dict(json.loads(REPORT_JSON))
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.version = 2  # type: ignore[misc]


def test_any_failed_is_false_when_nothing_failed() -> None:
    data: dict[str, Any] = json.loads(REPORT_JSON)
    data["domains"] = [d for d in data["domains"] if d["status"] != "failed"]
    assert not BackupReport.from_dict(data).any_failed


def test_fields_a_newer_core_adds_are_ignored() -> None:
    data: dict[str, Any] = json.loads(REPORT_JSON)
    data["new_top_level_field"] = 1
    data["domains"][0]["disks"][0]["new_disk_field"] = "x"
    report = BackupReport.from_dict(data)
    assert report.domains[0].disks[0].target == "vda"


LISTING_JSON = """
[
  {
    "name": "web1",
    "uuid": "6695eb01-f6a4-8304-79aa-97f2502e193f",
    "active": true,
    "rbd_disks": [
      {
        "target": "vda",
        "pool": "rbd",
        "namespace": "tenant",
        "image": "web1-root",
        "hosts": [{"name": "10.0.0.1", "port": 6789}, {"name": "::1", "port": null}],
        "config_file": null,
        "auth": {"username": "libvirt", "secret_uuid": "5e3c0b1a-7a2d-4f6e-9c41-0b5ac0ffee01", "secret_usage": null},
        "device": "disk",
        "readonly": false
      }
    ],
    "skipped_disks": [{"target": "hdc", "reason": "not_network"}, {"target": null, "reason": "not_rbd"}],
    "error": null
  }
]
"""


def test_domain_listing_round_trips() -> None:
    data = json.loads(LISTING_JSON)
    listings = [DomainListing.from_dict(d) for d in data]
    assert [listing.to_dict() for listing in listings] == data
    disk = listings[0].rbd_disks[0]
    assert disk.spec == "rbd/tenant/web1-root"
    assert disk.hosts[1] == MonitorHost(name="::1", port=None)
    assert listings[0].skipped_disks[1] == SkippedDisk(target=None, reason="not_rbd")


BACKUP_LISTING_JSON = """
[
  {
    "domain": "web1",
    "uuid": "6695eb01-f6a4-8304-79aa-97f2502e193f",
    "backup_id": "20251126T100000Z",
    "kind": "full",
    "path": "/srv/backups/6695eb01/20251126T100000Z",
    "completed_at": 1764150042.5,
    "consistency": "shut_off",
    "disks": [
      {"target": "vda", "image": "rbd/web1-root", "size": 1048576, "bytes_written": 4096,
       "file": "vda.raw", "checksum": "blake3-4m:00ff", "kind": "full", "chain_position": 0}
    ],
    "error": null,
    "parent": null,
    "sequence": null
  },
  {
    "domain": "web1",
    "uuid": "6695eb01-f6a4-8304-79aa-97f2502e193f",
    "backup_id": "20251127T100000Z",
    "kind": "incremental",
    "path": "/srv/backups/6695eb01/20251127T100000Z",
    "completed_at": 1764236442.5,
    "consistency": "frozen",
    "disks": [
      {"target": "vda", "image": "rbd/web1-root", "size": 1048576, "bytes_written": 130,
       "file": "vda.rbdiff", "checksum": "blake3-4m:00fe", "kind": "incremental", "chain_position": 1}
    ],
    "error": null,
    "parent": "20251126T100000Z",
    "sequence": 1
  }
]
"""


def test_backup_listing_round_trips() -> None:
    data = json.loads(BACKUP_LISTING_JSON)
    assert [BackupListing.from_dict(b).to_dict() for b in data] == data


RESTORE_JSON = """
{
  "domain": "web1",
  "backup_id": "20251127T100000.000Z",
  "disk": "vda",
  "chain": ["20251126T100000.000Z", "20251127T100000.000Z"],
  "target": "rbd:rbd/tenant/web1-restored",
  "size": 10737418240,
  "bytes_written": 2147483648,
  "checksum": "blake3-4m:00ff",
  "seconds": 12.25,
  "warnings": ["the restore is in place, but the image it replaced was kept as rbd/web1-restored.virt-rbd-backup-replaced"],
  "skipped": []
}
"""


def test_restore_report_round_trips() -> None:
    data = json.loads(RESTORE_JSON)
    r = RestoreReport.from_dict(data)
    assert r.chain == ("20251126T100000.000Z", "20251127T100000.000Z")
    assert json.dumps(r.to_dict()) == json.dumps(data)


DEFINE_JSON = """
{
  "name": "web1-copy",
  "uuid": "3b1f9b7e-8c43-4b71-9a5d-0c2d7f1e6a10",
  "disks": [
    {"domain": "web1", "backup_id": "20251127T100000.000Z", "disk": "vda",
     "chain": ["20251126T100000.000Z", "20251127T100000.000Z"], "target": "rbd:rbd/web1-copy-vda",
     "size": 10737418240, "bytes_written": 2147483648, "checksum": "blake3-4m:00ff", "seconds": 12.25,
     "warnings": [], "skipped": []}
  ],
  "dropped_disks": ["vdc"]
}
"""


def test_define_report_round_trips() -> None:
    data = json.loads(DEFINE_JSON)
    r = DefineReport.from_dict(data)
    assert r.disks[0].target == "rbd:rbd/web1-copy-vda"
    assert r.dropped_disks == ("vdc",)
    assert json.dumps(r.to_dict()) == json.dumps(data)
    assert cli.exit_status(r) == 0


VERIFY_JSON = """
{
  "checked": [["web1", "20251126T100000.000Z"], ["web1", "20251127T100000.000Z"]],
  "problems": [
    {"backup_id": "20251127T100000.000Z", "disk": "vda", "message": "vda.diff is corrupt at offset 512: checksum mismatch"},
    {"backup_id": "20251128T100000.000Z", "disk": "", "message": "unusable manifest manifest.json: EOF"}
  ],
  "source_checked": [["20251127T100000.000Z", "vda"]]
}
"""


def test_verify_report_round_trips() -> None:
    data = json.loads(VERIFY_JSON)
    r = VerifyReport.from_dict(data)
    # serde writes the (domain, backup id) tuples as two-element arrays.
    assert r.checked[0] == ("web1", "20251126T100000.000Z")
    assert not r.ok
    assert json.dumps(r.to_dict()) == json.dumps(data)
    assert VerifyReport.from_dict({"checked": data["checked"], "problems": []}).ok


PRUNE_JSON = """
{
  "version": 1,
  "dry_run": true,
  "domains": [
    {
      "uuid": "6695eb01-f6a4-8304-79aa-97f2502e193f",
      "name": "web1",
      "status": "done",
      "message": null,
      "kept": [{"backup_id": "20251127T100000.000Z", "reasons": ["keep-last", "keep-daily"]}],
      "removed": [
        {"backup_id": "20251126T100000.000Z", "path": "/srv/b/6695eb01/20251126T100000.000Z",
         "reason": "not selected by any keep option"}
      ],
      "errors": []
    },
    {
      "uuid": "0b5ac0ff-ee01-4f6e-9c41-5e3c0b1a7a2d",
      "name": null,
      "status": "skipped",
      "message": "another virt-rbd-backup run is backing up domain db1",
      "kept": [],
      "removed": [],
      "errors": []
    }
  ],
  "blocks": null
}
"""


def test_prune_report_round_trips() -> None:
    data = json.loads(PRUNE_JSON)
    r = PruneReport.from_dict(data)
    assert r.dry_run
    assert r.domains[0].kept[0].reasons == ("keep-last", "keep-daily")
    assert r.domains[1].display_name == "0b5ac0ff-ee01-4f6e-9c41-5e3c0b1a7a2d"
    assert r.has_problems
    assert json.dumps(r.to_dict()) == json.dumps(data)
    data["domains"] = data["domains"][:1]
    assert not PruneReport.from_dict(data).has_problems


PLAN_JSON = """
{
  "domains": [
    {
      "name": "web1",
      "uuid": "6695eb01-f6a4-8304-79aa-97f2502e193f",
      "active": true,
      "would_freeze": true,
      "disks": [
        {"target": "vda", "image": "rbd/web1-root", "size": 10737418240, "kind": "incremental", "reason": null,
         "parent_backup": "20251126T100000.000Z", "estimated_bytes": 41943040},
        {"target": "vdb", "image": "rbd/web1-data", "size": 1073741824, "kind": "full",
         "reason": "the base snapshot virt-rbd-backup-x is gone", "parent_backup": null, "estimated_bytes": 8388608}
      ],
      "skipped_disks": [{"target": "hdc", "reason": "not_network"}],
      "error": null
    },
    {
      "name": "db1",
      "uuid": "0b5ac0ff-ee01-4f6e-9c41-5e3c0b1a7a2d",
      "active": false,
      "would_freeze": false,
      "disks": [],
      "skipped_disks": [],
      "error": "rbd_open failed for rbd/db1: No such file or directory (errno 2)"
    }
  ],
  "estimated_bytes": 50331648
}
"""


def test_plan_round_trips() -> None:
    data = json.loads(PLAN_JSON)
    plan = BackupPlan.from_dict(data)
    assert json.dumps(plan.to_dict()) == json.dumps(data)
    assert plan.domains[0].disks[0].kind == "incremental"
    assert plan.domains[0].skipped_disks == (SkippedDisk(target="hdc", reason="not_network"),)
    assert plan.has_errors
    assert not BackupPlan.from_dict({**data, "domains": data["domains"][:1]}).has_errors


RESTIC_LISTING_JSON = """
[
  {"id": "4f1c2a9e0b5ac0ffee015e3c0b1a7a2d4f1c2a9e0b5ac0ffee015e3c0b1a7a2d", "time": "2026-11-26T10:34:00.123+01:00",
   "host": "hv1", "domain_uuid": "6695eb01-f6a4-8304-79aa-97f2502e193f", "domain": "web1", "disk": "vda",
   "file": "web1-root.img", "complete": true, "size": 10737418240,
   "checksum": "blake3-4m:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", "seal": "5ea1"},
  {"id": "bb22", "time": "2026-11-27T10:34:00.123+01:00",
   "host": "hv1", "domain_uuid": "6695eb01-f6a4-8304-79aa-97f2502e193f", "domain": "web1", "disk": "vda",
   "file": "web1-root.img", "complete": false, "size": null, "checksum": null, "seal": null}
]
"""


def test_restic_listing_round_trips() -> None:
    data = json.loads(RESTIC_LISTING_JSON)
    assert [ResticSnapshot.from_dict(s).to_dict() for s in data] == data


def test_restic_listing_marks_incomplete_snapshots() -> None:
    complete, incomplete = (ResticSnapshot.from_dict(s) for s in json.loads(RESTIC_LISTING_JSON))
    assert cli.format_restic_listing(complete).endswith(" web1-root.img")
    assert cli.format_restic_listing(incomplete).endswith(" web1-root.img INCOMPLETE (no seal)")


def test_restic_target_is_the_cores_json_shape() -> None:
    target = ResticTarget(repository="/srv/restic", password_file="/etc/pw")
    assert target.to_dict() == {"repository": "/srv/restic", "password_file": "/etc/pw", "binary": "restic"}
