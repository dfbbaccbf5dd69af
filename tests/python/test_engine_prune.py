"""Prune (src/engine/prune.rs) through the installed wheel, without the lab: keep options across
the boundary, the refusal to keep nothing, and a dry run against a real run on a folder that is
no backup, checked on the file system. Retention rules themselves are Rust unit tests
(src/plan/retention.rs); pruning real backup chains is a lab test.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

import virt_rbd_backup
from virt_rbd_backup import cli

UUID = "0b5ac0ff-ee01-4f6e-9c41-5e3c0b1a7a2d"
BACKUP_ID = "20261126T100000.000Z"


@pytest.fixture
def damaged_folder(empty_repo: Path) -> Path:
    """A folder named like a backup whose manifest is damaged: prune quarantines it, never removes it."""
    folder = empty_repo / UUID / BACKUP_ID
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{truncated")
    return folder


@pytest.mark.parametrize("keep", [{}, {"keep_daily": 0}, {"keep_within": "0d"}], ids=["none", "zero", "zero-within"])
def test_keeping_nothing_is_refused(keep: dict[str, object], empty_repo: Path) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="no keep option"):
        virt_rbd_backup.prune(repo=empty_repo, **keep)  # type: ignore[arg-type]


def test_cli_without_keep_option_exits_2_naming_the_options(
    empty_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["prune", "--repo", str(empty_repo)]) == 2
    err = capsys.readouterr().err
    assert "no keep option" in err
    assert "--keep-last" in err
    assert "--keep-within" in err


@pytest.mark.parametrize("within", [86400, datetime.timedelta(days=1), "1d"], ids=["seconds", "timedelta", "text"])
def test_keep_within_forms(within: int | datetime.timedelta | str, empty_repo: Path) -> None:
    report = virt_rbd_backup.prune(keep_within=within, repo=empty_repo)
    assert report.domains == ()
    assert not report.has_problems


def test_domain_without_backups_is_a_usage_error(empty_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="web9"):
        virt_rbd_backup.prune("web9", keep_last=1, repo=empty_repo)
    assert cli.main(["prune", "web9", "--keep-last", "1", "--repo", str(empty_repo)]) == 2


def test_dry_run_quarantines_nothing_and_says_it_would(
    damaged_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(damaged_folder.parents[1])
    assert cli.main(["prune", "--keep-last", "1", "--dry-run", "--repo", repo]) == 1
    keep, error = capsys.readouterr().out.splitlines()
    assert keep == f"keep {UUID} {BACKUP_ID}: its manifest cannot be read"
    assert error.startswith(f"error {UUID}: unusable manifest {damaged_folder / 'manifest.json'}")
    assert f"would be quarantined as {damaged_folder.parent / ('.quarantine-' + BACKUP_ID)}" in error
    assert damaged_folder.is_dir()


def test_prune_quarantines_a_damaged_folder_and_list_and_verify_report_it(damaged_folder: Path) -> None:
    repo = damaged_folder.parents[1]
    partial = damaged_folder.parent / ".partial-20261126T110000.000Z"
    partial.mkdir()
    report = virt_rbd_backup.prune(keep_last=1, repo=repo)
    (domain,) = report.domains
    assert (domain.uuid, domain.status) == (UUID, "done")
    assert [r.backup_id for r in domain.removed] == ["20261126T110000.000Z"]
    assert not partial.exists()
    quarantined = damaged_folder.parent / f".quarantine-{BACKUP_ID}"
    assert not damaged_folder.exists()
    assert (quarantined / "manifest.json").read_text() == "{truncated"
    assert [k.backup_id for k in domain.kept] == [BACKUP_ID]
    (error,) = domain.errors
    assert f"quarantined as {quarantined}" in error
    assert report.has_problems

    (listed,) = virt_rbd_backup.list_backups(repo=repo)
    assert (listed.backup_id, listed.path) == (BACKUP_ID, str(quarantined))
    assert listed.error is not None and listed.error.startswith(f"quarantined by prune in {quarantined}")
    verified = virt_rbd_backup.verify(repo=repo)
    assert [p.backup_id for p in verified.problems] == [BACKUP_ID]
    assert "quarantined by prune" in verified.problems[0].message

    # The next prune keeps it and says so again; nothing is removed.
    again = virt_rbd_backup.prune(keep_last=1, repo=repo)
    assert again.domains[0].removed == ()
    assert "is quarantined" in again.domains[0].errors[0]
    assert quarantined.is_dir()
