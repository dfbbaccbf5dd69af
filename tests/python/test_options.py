"""Each public function's options are written once, in its signature: the CLI's options, the
configuration keys and the core's options are derived from it (issue 17)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

import virt_rbd_backup
from virt_rbd_backup import cli


def _keyword_only(function: Any) -> list[str]:
    return [n for n, p in inspect.signature(function).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def test_every_backup_argument_has_its_command_line_option_with_the_signatures_default() -> None:
    args = cli.parse_args(["backup"])
    signature = inspect.signature(virt_rbd_backup.backup)
    for name in _keyword_only(virt_rbd_backup.backup):
        if name in cli._API_ONLY or name == "restic":
            continue
        default = signature.parameters[name].default
        assert getattr(args, name) == (list(default) if isinstance(default, tuple) else default), name


@pytest.mark.parametrize(
    ("function", "argv"),
    [
        (virt_rbd_backup.restore, ["restore", "web1", "--to", "/tmp/x.raw"]),
        (virt_rbd_backup.restore_define, ["restore", "web1", "--define", "copy"]),
        (virt_rbd_backup.verify, ["verify"]),
        (virt_rbd_backup.prune, ["prune", "--keep-last", "1"]),
    ],
    ids=["restore", "restore-define", "verify", "prune"],
)
def test_the_cli_gives_every_keyword_argument_of_the_api_function(function: Any, argv: list[str]) -> None:
    args = cli.parse_args(argv)
    given = {"restic": None} if "restic" in _keyword_only(function) else {}
    if function is virt_rbd_backup.restore_define:
        given["name"] = args.define
    assert sorted(cli._api_options(function, args, **given)) == sorted(_keyword_only(function))


def test_an_option_the_function_does_not_take_is_a_bug_not_ignored() -> None:
    args = cli.parse_args(["verify"])
    with pytest.raises(TypeError, match="takes no colour"):
        cli._api_options(virt_rbd_backup.verify, args, colour="blue")


def test_configuration_settings_follow_the_api_signatures() -> None:
    access = set(cli._REPO_ACCESS_OPTIONS)
    assert (
        cli._CONFIG_SETTINGS["restore"]
        == {
            "connect",
            "repo",
            "restic_repo",
            "restic_password_file",
            "restic_binary",
        }
        | access
    )
    assert access == {"layout", "repo_key_file", "s3_endpoint", "s3_region", "s3_credentials", "s3_ca_file"}
    assert cli._CONFIG_SETTINGS["verify"] == {"connect", "repo"} | access
    assert cli._CONFIG_SETTINGS["prune"] == {"repo"} | access | {
        f"keep_{k}" for k in ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within")
    }
    assert access <= cli._CONFIG_SETTINGS["backup"] and access <= cli._CONFIG_SETTINGS["list"]
    assert {"workers", "queue_depth", "compress", "metrics_file", "restic_repo"} <= cli._CONFIG_SETTINGS["backup"]
    assert "domain" not in cli._CONFIG_SETTINGS["restore"] and "force" not in cli._CONFIG_SETTINGS["restore"]


@pytest.mark.parametrize(
    "call",
    [
        lambda repo: virt_rbd_backup.restore("web1", to="/tmp/x.raw", repo=repo, ceph_conf="/etc/ceph/ceph.conf"),
        lambda repo: virt_rbd_backup.restore_define("web1", name="copy", repo=repo, ceph_user="backup"),
        lambda repo: virt_rbd_backup.verify("web1", repo=repo, source=True, ceph_conf="/c"),
        lambda repo: virt_rbd_backup.prune("web1", keep_within="7d", repo=repo),
    ],
    ids=["restore", "restore-define", "verify", "prune"],
)
def test_the_core_accepts_the_options_each_function_builds(call: Any, tmp_path: Path) -> None:
    # Past option parsing, the core finds no repository: the options were accepted as built.
    with pytest.raises(virt_rbd_backup.RepositoryError, match="no repository"):
        call(tmp_path / "none")
