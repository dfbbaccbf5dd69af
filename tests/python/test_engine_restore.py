"""Restore (src/engine/restore.rs) through the installed wheel, without the lab: the target
syntax (``RestoreTarget``'s ``FromStr``, reached through the binding) and how the CLI reports what
the engine refuses before it touches anything. Restores of real backups are lab tests
(test_engine_incremental_lab.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import virt_rbd_backup
from virt_rbd_backup import cli

SYNTAX = "expected rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE"
BAD_TARGETS = ["rbd:", "rbd:pool", "rbd:pool/", "rbd:/image", "rbd:pool//image", "rbd:a/b/c/d"]


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_bad_rbd_target_is_a_usage_error_naming_it(target: str, tmp_path: Path) -> None:
    repo = tmp_path / "never-created"
    with pytest.raises(virt_rbd_backup.UsageError) as info:
        virt_rbd_backup.restore("web1", to=target, repo=repo)
    assert str(info.value) == f'invalid restore target: bad RBD target "{target}": {SYNTAX}'
    # Refused before anything was touched.
    assert not repo.exists()


def test_empty_target_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="the restore target is empty"):
        virt_rbd_backup.restore("web1", to="", repo=tmp_path)


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_cli_bad_target_exits_2_with_the_syntax(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["restore", "web1", "--to", target, "--repo", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f'error: invalid restore target: bad RBD target "{target}": {SYNTAX}\n'


@pytest.mark.parametrize("target", ["rbd:rbd/web1-root", "rbd:rbd/tenant/web1-root", "/srv/restore/vda.raw"])
def test_good_targets_pass_to_the_engine(target: str, empty_repo: Path) -> None:
    # The engine gets as far as looking for the domain's backups; an unknown domain is the
    # operator's input, so a usage error (exit 2), as for prune.
    with pytest.raises(virt_rbd_backup.UsageError, match="web1"):
        virt_rbd_backup.restore("web1", to=target, repo=empty_repo)


def test_a_path_object_is_always_a_file(empty_repo: Path) -> None:
    # As a string "rbd:x" would be a bad RBD target; as a path it is a file named so.
    with pytest.raises(virt_rbd_backup.UsageError, match="web1"):
        virt_rbd_backup.restore("web1", to=Path("rbd:x"), repo=empty_repo)


def test_cli_restore_of_a_domain_without_backups_exits_2(
    empty_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "never-written.raw"
    assert cli.main(["restore", "web1", "--to", str(target), "--repo", str(empty_repo)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert "web1" in captured.err
    assert not target.exists()


# restore --define (restore_define): what the engine refuses before it touches Ceph or libvirt.


@pytest.mark.parametrize("name", ["", ".hidden", "web/1", "a b", "x" * 65])
def test_a_name_that_cannot_name_a_domain_and_its_images_is_a_usage_error(name: str, tmp_path: Path) -> None:
    repo = tmp_path / "never-created"
    with pytest.raises(virt_rbd_backup.UsageError, match="cannot name the new domain"):
        virt_rbd_backup.restore_define("web1", name=name, repo=repo, connect="test:///default")
    assert not repo.exists()


def test_define_of_a_domain_without_backups_exits_2(empty_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="web1"):
        virt_rbd_backup.restore_define("web1", name="web1-copy", repo=empty_repo, connect="test:///default")
    argv = ["restore", "web1", "--define", "web1-copy", "--repo", str(empty_repo), "--connect", "test:///default"]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "web1" in captured.err
