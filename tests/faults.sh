#!/usr/bin/env bash
# The fault report (issue 6): runs every fault-injection test against the lab (kills at each
# phase, concurrent runs, full target, hung monitor, libvirtd gone, wrong key, deleted image,
# unresponsive agent, guest destroyed, snapshot removed and image resized mid-backup; restore
# targets appearing mid-restore, --force replacement, a bad write under the restore check, block
# devices, restore --define refusing host passthrough and cleaning up after a failed disk; a
# second host on the same domain, image or folder; systemd killing the run's cgroup, SIGTERM,
# SIGHUP; restic runs killed; the clock stepped back, a truncated manifest mid-chain, a block
# table replaced by a link or FIFO; on an S3 block repository a wrong key, an endpoint that is
# down, deleted and flipped blocks, a run killed mid-upload; a mount whose serving process was
# SIGKILLed, undone by umount; a flipped byte in a full or an incremental of a chain; a live
# restore whose copy meets a damaged backup block) and
# prints a table: case, test result, what was injected, outcome, leaked snapshots, data lost. Every
# column comes from what the test measured (the `fault` fixture in tests/python/conftest.py).
#
#   bash tests/faults.sh [PYTEST-ARGS...]     e.g. -k destroyed, -x
#
# The lab must be up (bash lab/lab.sh up). Python: $PYTHON, else the venv of scripts/setup.sh.
# scripts/test.sh does not call this: its one pytest run includes these tests and prints the
# same table (--fault-report), so CI runs each fault test once.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PY=${PYTHON:-${VRB_VENV:-/opt/virt-rbd-backup/venv}/bin/python}
bash lab/lab.sh status >/dev/null || { echo "faults.sh: the lab is not up: bash lab/lab.sh up" >&2; exit 1; }
eval "$(bash lab/lab.sh env)"
export VRB_LAB=1
exec "$PY" -m pytest --fault-report -v -rs "$@" \
    tests/python/test_engine_faults_lab.py \
    tests/python/test_engine_cluster_faults_lab.py \
    tests/python/test_engine_failures_lab.py \
    tests/python/test_engine_midrun_faults_lab.py \
    tests/python/test_engine_stop_faults_lab.py \
    tests/python/test_engine_restore_targets_lab.py \
    tests/python/test_engine_restore_check_lab.py \
    tests/python/test_restic_faults_lab.py \
    tests/python/test_engine_multihost_lab.py \
    tests/python/test_repo_trust_lab.py \
    tests/python/test_engine_incremental_lab.py \
    tests/python/test_compat_original_lab.py \
    tests/python/test_serve_lab.py \
    tests/python/test_mount_faults_lab.py \
    tests/python/test_live_restore_lab.py \
    tests/python/test_block_repo_lab.py
