"""node_exporter textfile metrics (python/virt_rbd_backup/metrics.py) and ``--metrics-file``.

The text is checked line by line against the exposition format (HELP and TYPE before the
samples, escaped label values), and the write against what the textfile collector needs: the
old file or the new one, never half of one, readable by another user.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from virt_rbd_backup import BackupReport, cli, config
from virt_rbd_backup.metrics import read_last_success, render_metrics, write_metrics

NOW = 1764150100.0


def domain(name: str, status: str, *, seconds: float = 2.5, window_ms: float | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "uuid": f"uuid-{name}",
        "status": status,
        "error": "boom" if status == "failed" else None,
        "freeze": {"attempted": window_ms is not None, "window_ms": window_ms},
        "disks": [
            {"target": "vda", "image": f"rbd/{name}-a", "size": 100, "bytes_read": 4096, "snapshot": "s"},
            {"target": "vdb", "image": f"rbd/{name}-b", "size": 100, "bytes_read": 8192, "snapshot": "s"},
        ]
        if status == "succeeded"
        else [],
        "seconds": seconds,
    }


def report(*domains: dict[str, Any]) -> BackupReport:
    return BackupReport.from_dict(
        {"version": 1, "started_at": 1764150000.0, "finished_at": 1764150042.5, "domains": list(domains)}
    )


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value of every sample line."""
    result = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            result[key] = float(value)
    return result


def test_a_run_renders_every_metric_with_help_and_type() -> None:
    text = render_metrics(
        report(domain("web1", "succeeded", window_ms=85.0), domain("db1", "failed"), domain("local", "skipped")),
        now=NOW,
    )
    got = samples(text)
    assert got["virt_rbd_backup_last_run_timestamp_seconds"] == 1764150042.5
    assert got["virt_rbd_backup_last_run_success"] == 0
    assert got['virt_rbd_backup_last_success_timestamp_seconds{domain="web1"}'] == 1764150042.5
    assert 'virt_rbd_backup_last_success_timestamp_seconds{domain="db1"}' not in got
    assert got['virt_rbd_backup_duration_seconds{domain="db1"}'] == 2.5
    assert got['virt_rbd_backup_bytes_read{domain="web1"}'] == 12288
    assert got['virt_rbd_backup_domain_status{domain="web1",status="succeeded"}'] == 1
    assert got['virt_rbd_backup_domain_status{domain="web1",status="failed"}'] == 0
    assert got['virt_rbd_backup_domain_status{domain="db1",status="failed"}'] == 1
    assert got['virt_rbd_backup_domain_status{domain="local",status="skipped"}'] == 1
    assert got['virt_rbd_backup_freeze_window_seconds{domain="web1"}'] == 0.085
    assert 'virt_rbd_backup_freeze_window_seconds{domain="db1"}' not in got

    # Every metric: HELP, then TYPE gauge, then only its own samples.
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = line.split()[2]
        elif line.startswith("# TYPE "):
            assert line == f"# TYPE {current} gauge"
        else:
            assert re.match(rf"^{current}(\{{.*\}})? \S+$", line), line
    assert text.endswith("\n")


def test_a_run_without_failure_is_a_success() -> None:
    assert (
        samples(render_metrics(report(domain("web1", "succeeded")), now=NOW))["virt_rbd_backup_last_run_success"] == 1
    )


def test_label_values_are_escaped_and_read_back(tmp_path: Path) -> None:
    name = 'we"b\\1\nx'
    text = render_metrics(report(domain(name, "succeeded")), now=NOW)
    # Backslash, quote and newline escaped as the exposition format says; one sample per line.
    assert 'virt_rbd_backup_duration_seconds{domain="we\\"b\\\\1\\nx"} 2.5' in text.splitlines()
    path = tmp_path / "vrb.prom"
    write_metrics(path, report(domain(name, "succeeded")), now=NOW)
    assert read_last_success(path) == {name: 1764150042.5}


def test_a_failed_domain_keeps_its_last_success_from_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "vrb.prom"
    write_metrics(path, report(domain("web1", "succeeded"), domain('db"1', "succeeded")), now=NOW)
    first = read_last_success(path)
    assert first == {"web1": 1764150042.5, 'db"1': 1764150042.5}

    later = BackupReport.from_dict(
        {**report(domain("web1", "succeeded"), domain('db"1', "failed")).to_dict(), "finished_at": 1764236442.0}
    )
    write_metrics(path, later, now=NOW)
    assert read_last_success(path) == {"web1": 1764236442.0, 'db"1': 1764150042.5}


def test_domains_gone_from_the_report_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "vrb.prom"
    write_metrics(path, report(domain("web1", "succeeded"), domain("old", "succeeded")), now=NOW)
    write_metrics(path, report(domain("web1", "failed")), now=NOW)
    assert read_last_success(path) == {"web1": 1764150042.5}


def test_a_run_that_could_not_start_keeps_every_last_success(tmp_path: Path) -> None:
    path = tmp_path / "vrb.prom"
    write_metrics(path, report(domain("web1", "succeeded")), now=NOW)
    write_metrics(path, None, now=NOW)
    got = samples(path.read_text())
    assert got["virt_rbd_backup_last_run_timestamp_seconds"] == NOW
    assert got["virt_rbd_backup_last_run_success"] == 0
    assert got['virt_rbd_backup_last_success_timestamp_seconds{domain="web1"}'] == 1764150042.5
    assert not any(key.startswith("virt_rbd_backup_domain_status") for key in got)


def test_a_damaged_previous_file_carries_nothing_over() -> None:
    assert read_last_success("/nonexistent/vrb.prom") == {}


def test_unparsable_lines_of_the_previous_file_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "vrb.prom"
    path.write_text(
        'virt_rbd_backup_last_success_timestamp_seconds{domain="a"} 12\n'
        'virt_rbd_backup_last_success_timestamp_seconds{domain="b"} soon\n'
        'virt_rbd_backup_last_success_timestamp_seconds{domain="c"} NaN\n'
        "garbage\n"
    )
    assert read_last_success(path) == {"a": 12.0}


def test_the_file_is_replaced_by_rename_and_readable_by_the_collector(tmp_path: Path) -> None:
    path = tmp_path / "vrb.prom"
    path.write_text("old\n")
    old_inode = path.stat().st_ino
    # Someone holding the old file open keeps reading the old content: it was replaced, not rewritten.
    with path.open() as reader:
        write_metrics(path, report(domain("web1", "succeeded")), now=NOW)
        assert reader.read() == "old\n"
    assert path.stat().st_ino != old_inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vrb.prom"], "no temporary file left"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vrb.prom"
    path.write_text("old\n")

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        write_metrics(path, report(domain("web1", "succeeded")), now=NOW)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vrb.prom"]


def test_the_temporary_name_is_not_one_the_collector_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names: list[str] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        names.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write_metrics(tmp_path / "vrb.prom", None, now=NOW)
    assert len(names) == 1
    assert not names[0].endswith(".prom")


# -------------------------------------------------------------------------- --metrics-file


@pytest.fixture
def fake_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "none.toml")
    monkeypatch.chdir(tmp_path)
    state: dict[str, Any] = {"result": report(domain("web1", "succeeded")).to_dict()}

    def backup_json(**options: Any) -> dict[str, Any]:
        if isinstance(state["result"], BaseException):
            raise state["result"]
        return state["result"]  # type: ignore[no-any-return]

    monkeypatch.setattr(cli, "_backup_json", backup_json)
    return state


def test_backup_writes_the_metrics_file(fake_core: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "vrb.prom"
    assert cli.main(["--metrics-file", str(path)]) == 0
    assert samples(path.read_text())['virt_rbd_backup_domain_status{domain="web1",status="succeeded"}'] == 1


def test_a_run_that_cannot_start_still_writes_the_metrics(fake_core: dict[str, Any], tmp_path: Path) -> None:
    import virt_rbd_backup

    path = tmp_path / "vrb.prom"
    fake_core["result"] = virt_rbd_backup.LibvirtError("cannot connect")
    assert cli.main(["--metrics-file", str(path)]) == 2
    assert samples(path.read_text())["virt_rbd_backup_last_run_success"] == 0


def test_a_metrics_file_that_cannot_be_written_fails_the_run(
    fake_core: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing-folder" / "vrb.prom"
    assert cli.main(["--metrics-file", str(path)]) == 1
    assert f"error: cannot write the metrics file {path}" in capsys.readouterr().err


def test_a_dry_run_writes_no_metrics(
    fake_core: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_plan_json", lambda **options: {"domains": [], "estimated_bytes": 0})
    path = tmp_path / "vrb.prom"
    assert cli.main(["--dry-run", "--metrics-file", str(path)]) == 0
    assert not path.exists()


def test_per_disk_series_consistency_and_build_info() -> None:
    web = domain("web1", "succeeded", window_ms=85.0)
    web["consistency"] = "crash_consistent_per_disk"
    web["disks"][0].update(kind="incremental", bytes_written=1024)
    web["disks"][1].update(kind="full", bytes_written=8192)
    versions = {"virt_rbd_backup": "0.1.0", "librbd": "1.16.0", "librados": "3.0.0", "libvirt": "9.0.0"}
    got = samples(render_metrics(report(web), now=NOW, versions=versions))
    assert got['virt_rbd_backup_read_bytes{domain="web1"}'] == 12288
    assert got['virt_rbd_backup_bytes_read{domain="web1"}'] == 12288, "the old name stays for one version"
    assert got['virt_rbd_backup_disk_read_bytes{domain="web1",disk="vda",kind="incremental"}'] == 4096
    assert got['virt_rbd_backup_disk_stored_bytes{domain="web1",disk="vdb",kind="full"}'] == 8192
    # A fallback from a freeze to crash-consistent snapshots is alertable.
    assert got['virt_rbd_backup_domain_consistency{domain="web1",consistency="frozen"}'] == 0
    assert got['virt_rbd_backup_domain_consistency{domain="web1",consistency="crash_consistent_per_disk"}'] == 1
    assert got['virt_rbd_backup_build_info{version="0.1.0",librbd="1.16.0",librados="3.0.0",libvirt="9.0.0"}'] == 1


def test_backup_metrics_carry_the_loaded_library_versions(fake_core: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "vrb.prom"
    assert cli.main(["--metrics-file", str(path)]) == 0
    (info,) = [line for line in path.read_text().splitlines() if line.startswith("virt_rbd_backup_build_info{")]
    assert re.match(
        r'^virt_rbd_backup_build_info\{version="[^"]+",librbd="1\.\d+\.\d+",librados="\d+\.\d+\.\d+",libvirt="\d+\.\d+\.\d+"\} 1$',
        info,
    ), info


def test_prune_and_verify_write_their_own_metrics(empty_repo: Path, tmp_path: Path) -> None:
    prune_file, verify_file = tmp_path / "prune.prom", tmp_path / "verify.prom"
    assert cli.main(["prune", "--repo", str(empty_repo), "--keep-last", "3", "--metrics-file", str(prune_file)]) == 0
    got = samples(prune_file.read_text())
    assert got["virt_rbd_backup_prune_last_run_success"] == 1
    assert got["virt_rbd_backup_prune_last_run_timestamp_seconds"] > NOW
    assert cli.main(["verify", "--repo", str(empty_repo), "--metrics-file", str(verify_file)]) == 0
    got = samples(verify_file.read_text())
    assert (got["virt_rbd_backup_verify_last_run_success"], got["virt_rbd_backup_verify_problems"]) == (1, 0)


def test_prune_and_verify_that_cannot_run_say_so_in_their_metrics(tmp_path: Path) -> None:
    prune_file, verify_file = tmp_path / "prune.prom", tmp_path / "verify.prom"
    missing = str(tmp_path / "no-repo")
    assert cli.main(["prune", "--repo", missing, "--keep-last", "3", "--metrics-file", str(prune_file)]) != 0
    assert samples(prune_file.read_text())["virt_rbd_backup_prune_last_run_success"] == 0
    assert cli.main(["verify", "--repo", missing, "--metrics-file", str(verify_file)]) != 0
    assert samples(verify_file.read_text())["virt_rbd_backup_verify_last_run_success"] == 0


def test_a_dry_run_prune_writes_no_metrics(empty_repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "prune.prom"
    assert (
        cli.main(["prune", "--repo", str(empty_repo), "--keep-last", "3", "--dry-run", "--metrics-file", str(path)])
        == 0
    )
    assert not path.exists()


def test_prune_metrics_count_kept_and_removed_per_domain() -> None:
    from virt_rbd_backup import PruneReport
    from virt_rbd_backup.metrics import render_prune_metrics

    pruned = PruneReport.from_dict(
        {
            "version": 1,
            "domains": [
                {
                    "uuid": "u1",
                    "name": "web1",
                    "status": "done",
                    "kept": [{"backup_id": "a"}, {"backup_id": "b"}],
                    "removed": [{"backup_id": "c", "path": "/r/c", "reason": "no rule"}],
                }
            ],
        }
    )
    got = samples(render_prune_metrics(pruned, now=NOW))
    assert got['virt_rbd_backup_prune_kept_backups{domain="web1"}'] == 2
    assert got['virt_rbd_backup_prune_removed_backups{domain="web1"}'] == 1
    assert got["virt_rbd_backup_prune_last_run_timestamp_seconds"] == NOW


# -------------------------------------------------------------------------- --on-failure


def test_on_failure_gets_the_json_report_of_a_run_with_a_failed_domain(
    fake_core: dict[str, Any], tmp_path: Path
) -> None:
    got = tmp_path / "hook.json"
    fake_core["result"] = report(domain("web1", "succeeded"), domain("db1", "failed")).to_dict()
    assert cli.main(["--on-failure", f"cat > {got}"]) == 1
    sent = json.loads(got.read_text())
    assert [(d["name"], d["status"]) for d in sent["domains"]] == [("web1", "succeeded"), ("db1", "failed")]


def test_on_failure_is_not_run_when_every_domain_succeeded(fake_core: dict[str, Any], tmp_path: Path) -> None:
    got = tmp_path / "hook.json"
    assert cli.main(["--on-failure", f"cat > {got}"]) == 0
    assert not got.exists()


def test_on_failure_hears_of_a_run_that_could_not_start(fake_core: dict[str, Any], tmp_path: Path) -> None:
    import virt_rbd_backup

    got = tmp_path / "hook.json"
    fake_core["result"] = virt_rbd_backup.LibvirtError("cannot connect to libvirt at qemu:///system")
    assert cli.main(["--on-failure", f"cat > {got}"]) == 2
    sent = json.loads(got.read_text())
    assert sent["domains"] == [] and "cannot connect" in sent["error"]


def test_a_failing_on_failure_command_is_reported_and_the_status_stays(
    fake_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_core["result"] = report(domain("db1", "failed")).to_dict()
    assert cli.main(["--on-failure", "exit 7"]) == 1
    assert "the --on-failure command exited with status 7" in capsys.readouterr().err


def test_on_failure_comes_from_the_configuration_file(fake_core: dict[str, Any], tmp_path: Path) -> None:
    got = tmp_path / "hook.json"
    conf = tmp_path / "c.toml"
    conf.write_text(f'on_failure = "cat > {got}"\nkeep_daily = 7\nkeep_within = "3d"\n')
    fake_core["result"] = report(domain("db1", "failed")).to_dict()
    assert cli.main(["--config", str(conf)]) == 1
    assert json.loads(got.read_text())["domains"][0]["name"] == "db1"
    loaded = config.load_toml_config(conf)
    assert (loaded.keep_daily, loaded.keep_within) == (7, 3 * 86400)
