#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: set everything up (packages,
# venv, release build, lab), then lint, Rust unit tests, Python unit tests and the tests
# against the real lab. `.ci/run` calls exactly this.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup.sh
export VRB_VENV=${VRB_VENV:-/opt/virt-rbd-backup/venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/virt-rbd-backup/cargo-target}
export PATH=$VRB_VENV/bin:$HOME/.cargo/bin:$PATH
PY=$VRB_VENV/bin/python

printf '\n== Lint\n'
make --no-print-directory lint PYTHON="$PY"

eval "$(bash lab/lab.sh env)"
export VRB_LAB=1

printf '\n== Rust tests (unit, and integration against the lab)\n'
cargo test

printf '\n== Python tests (unit and lab)\n'
# --fault-report: the table of tests/faults.sh, from the fault tests this run includes.
# PYTEST_ARGS: extra arguments, split on whitespace.
read -ra pytest_args <<<"${PYTEST_ARGS:-}"
"$PY" -m pytest tests/python -v -rs --fault-report "${pytest_args[@]}"
