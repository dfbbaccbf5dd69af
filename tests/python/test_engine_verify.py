"""Verify (src/engine/verify.rs) through the installed wheel, without the lab: an empty
repository, a backup folder whose manifest is damaged, and what cannot be verified, with the
CLI's lines and exit statuses. Verifying real backups is a lab test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import virt_rbd_backup
from virt_rbd_backup import cli

UUID = "0b5ac0ff-ee01-4f6e-9c41-5e3c0b1a7a2d"
BACKUP_ID = "20261126T100000.000Z"


@pytest.fixture
def damaged_repo(empty_repo: Path) -> Path:
    """The repository with one backup folder whose manifest is not JSON."""
    folder = empty_repo / UUID / BACKUP_ID
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{truncated")
    return empty_repo


def test_empty_repository_verifies(empty_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = virt_rbd_backup.verify(repo=empty_repo)
    assert report.ok
    assert report.checked == ()
    assert cli.main(["verify", "--repo", str(empty_repo)]) == 0
    assert capsys.readouterr().out == "OK: 0 backups verified\n"


def test_damaged_manifest_is_a_problem_naming_the_backup(damaged_repo: Path) -> None:
    report = virt_rbd_backup.verify(repo=damaged_repo)
    assert not report.ok
    (problem,) = report.problems
    assert problem.backup_id == BACKUP_ID
    assert problem.disk == ""
    assert str(damaged_repo / UUID / BACKUP_ID / "manifest.json") in problem.message


def test_cli_prints_one_corrupt_line_and_exits_1(damaged_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", "--repo", str(damaged_repo)]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"CORRUPT backup {BACKUP_ID}: unusable manifest ")
    assert cli.main(["verify", "--json", "--repo", str(damaged_repo)]) == 1
    assert json.loads(capsys.readouterr().out)["problems"][0]["backup_id"] == BACKUP_ID


def test_unknown_domain_cannot_be_verified(empty_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="web9"):
        virt_rbd_backup.verify("web9", repo=empty_repo)
    assert cli.main(["verify", "web9", "--repo", str(empty_repo)]) == 2
    assert "web9" in capsys.readouterr().err


def test_folder_that_is_no_repository_cannot_be_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "somebody-elses-file").write_text("x")
    with pytest.raises(virt_rbd_backup.RepositoryError):
        virt_rbd_backup.verify(repo=tmp_path)
    assert cli.main(["verify", "--repo", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_source_of_an_empty_repository_compares_nothing(empty_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No backup, so no cluster to ask: the options reach the engine and nothing is compared.
    report = virt_rbd_backup.verify(repo=empty_repo, source=True, ceph_conf="/nonexistent/ceph.conf")
    assert report.ok
    assert report.source_checked == ()
    assert cli.main(["verify", "--source", "--json", "--repo", str(empty_repo)]) == 0
    assert json.loads(capsys.readouterr().out)["source_checked"] == []


def test_ceph_options_without_source_are_a_usage_error(empty_repo: Path) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="source"):
        virt_rbd_backup.verify(repo=empty_repo, ceph_user="backup")
