#!/usr/bin/env bash
# Everything a fresh Debian 12 machine needs before virt-rbd-backup can run, as root:
# Debian packages, a Python venv with the build and test tools, the release build of the
# package installed into that venv, and the lab (Ceph + libvirt + guests) brought up.
#
# Idempotent and cached: the venv (VRB_VENV), the cargo build (CARGO_TARGET_DIR) and the
# lab's kernel download live outside the checkout, so a second run or a fresh clone in CI
# rebuilds only what changed.
#
# Usage: scripts/setup.sh [--no-lab]
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

export VRB_VENV=${VRB_VENV:-/opt/virt-rbd-backup/venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/virt-rbd-backup/cargo-target}
with_lab=1
[[ ${1:-} == --no-lab ]] && with_lab=0

log() { printf '\n== %s\n' "$*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs Debian packages and starts the lab's daemons)"

log "Debian packages"
bash lab/install-deps.sh

log "Rust toolchain"
if ! command -v cargo >/dev/null; then
    [[ -x $HOME/.cargo/bin/cargo ]] && export PATH=$HOME/.cargo/bin:$PATH
fi
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain >= 1.85 (rustup) first; Debian 12's rustc is too old for pyo3 0.30"
cargo --version

log "Python venv $VRB_VENV"
if [[ ! -x $VRB_VENV/bin/python ]]; then
    mkdir -p "$(dirname "$VRB_VENV")"
    python3 -m venv "$VRB_VENV"
fi
"$VRB_VENV/bin/python" -m pip install -q --upgrade pip
"$VRB_VENV/bin/python" -m pip install -q -r requirements-dev.txt

log "Build and install the wheel (release, cached in $CARGO_TARGET_DIR)"
mkdir -p "$CARGO_TARGET_DIR"
export PATH=$VRB_VENV/bin:$PATH
make --no-print-directory build PYTHON="$VRB_VENV/bin/python"
"$VRB_VENV/bin/virt-rbd-backup" --help >/dev/null
# The console script on the usual PATH, as a pip install on a hypervisor would give.
ln -sf "$VRB_VENV/bin/virt-rbd-backup" /usr/local/bin/virt-rbd-backup

if [[ $with_lab -eq 1 ]]; then
    log "Lab (Ceph + libvirt + guests)"
    bash lab/lab.sh up
fi
