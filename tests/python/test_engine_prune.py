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
    """A folder named like a backup whose manifest is damaged: not a backup, so prune removes it."""
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


def test_dry_run_removes_nothing_and_says_would_remove(
    damaged_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(damaged_folder.parents[1])
    assert cli.main(["prune", "--keep-last", "1", "--dry-run", "--repo", repo]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"would remove {UUID} {BACKUP_ID}: damaged manifest")
    assert damaged_folder.is_dir()


def test_prune_removes_what_it_reports(damaged_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = virt_rbd_backup.prune(keep_last=1, repo=damaged_folder.parents[1])
    (domain,) = report.domains
    assert (domain.uuid, domain.status) == (UUID, "done")
    assert [r.backup_id for r in domain.removed] == [BACKUP_ID]
    assert domain.removed[0].path == str(damaged_folder)
    assert not damaged_folder.exists()
    assert not report.has_problems
