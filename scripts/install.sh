#!/usr/bin/env bash
# Installs virt-rbd-backup on a production hypervisor (Debian 12, as root): only what the tool
# needs, never the lab's Ceph daemons, QEMU or test tools.
#
#   scripts/install.sh --wheel dist/virt_rbd_backup-VERSION-cp311-abi3-linux_x86_64.whl [--systemd] [--restic]
#       a wheel built once for the fleet (`make wheel` on a build host): installs the run-time
#       libraries (librbd1, librados2, libvirt0), libvirt-clients (virsh, for the thaw
#       watchdog), python3-venv, and the wheel into a venv.
#   scripts/install.sh [--systemd] [--restic]
#       from this checkout: also the build packages (a C toolchain, pkg-config, the -dev
#       packages of librbd, librados and libvirt) and a Rust toolchain >= 1.85 on PATH (rustup);
#       builds the wheel and installs it.
#
# Options:
#   --venv DIR    the venv (default /opt/virt-rbd-backup/venv). Debian's Python is
#                 "externally managed" (PEP 668): the tool lives in a venv of its own, and
#                 /usr/local/bin/virt-rbd-backup links to its console script.
#   --systemd     install the units and timers (backup daily, prune daily, verify weekly) into
#                 /etc/systemd/system, /etc/virt-rbd-backup/config.toml from the example if there
#                 is none (mode 0600), and enable the timers when systemd runs.
#   --restic      also install restic (for restic targets).
#   --no-apt      install no Debian package (they are there already, or come from elsewhere).
#
# Idempotent: a second run changes nothing but the wheel it installs again.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=/opt/virt-rbd-backup/venv
wheel=
systemd=0
restic=0
apt=1

die() { echo "install: error: $*" >&2; exit 2; }
log() { echo "install: $*" >&2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --wheel) wheel=${2:?--wheel needs a file}; shift 2 ;;
        --venv) venv=${2:?--venv needs a folder}; shift 2 ;;
        --systemd) systemd=1; shift ;;
        --restic) restic=1; shift ;;
        --no-apt) apt=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "run as root (it installs Debian packages and /usr/local/bin/virt-rbd-backup)"
[[ -z $wheel || -f $wheel ]] || die "no such wheel: $wheel"

# What the tool needs at run time: the libraries the extension links (the wheel bundles none:
# they must match the host's Ceph and libvirt), virsh for the thaw watchdog, a venv.
RUNTIME=(librbd1 librados2 libvirt0 libvirt-clients python3 python3-venv)
# What a build from source needs on top.
BUILD=(build-essential pkg-config librbd-dev librados-dev libvirt-dev python3-dev)

packages=("${RUNTIME[@]}")
[[ -z $wheel ]] && packages+=("${BUILD[@]}")
[[ $restic -eq 1 ]] && packages+=(restic)

if [[ $apt -eq 1 ]]; then
    missing=()
    for p in "${packages[@]}"; do
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) == installed ]] || missing+=("$p")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi

if [[ -z $wheel ]]; then
    command -v cargo >/dev/null || { [[ -x $HOME/.cargo/bin/cargo ]] && export PATH=$HOME/.cargo/bin:$PATH; }
    command -v cargo >/dev/null || die "cargo not found: a build from source needs Rust >= 1.85 (rustup), or give --wheel"
    build_venv=$(mktemp -d)
    trap 'rm -rf "$build_venv"' EXIT
    log "building the wheel (release) in $here"
    python3 -m venv "$build_venv"
    "$build_venv/bin/pip" install -q 'maturin>=1.9,<2'
    (cd "$here" && "$build_venv/bin/maturin" build --release --out "$build_venv/dist")
    wheel=$(ls "$build_venv"/dist/virt_rbd_backup-*.whl)
fi

if [[ ! -x $venv/bin/python ]]; then
    log "creating the venv $venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
fi
log "installing $(basename "$wheel") into $venv"
# The package has no Python dependencies: nothing is fetched from an index.
"$venv/bin/pip" install -q --no-index --no-deps --force-reinstall "$wheel"
ln -sf "$venv/bin/virt-rbd-backup" /usr/local/bin/virt-rbd-backup
/usr/local/bin/virt-rbd-backup --version

if [[ $systemd -eq 1 ]]; then
    # The units and the example configuration ship inside the package (contrib/ links to them),
    # so they always match the version installed.
    package=$("$venv/bin/python" -c 'import os, virt_rbd_backup; print(os.path.dirname(virt_rbd_backup.__file__))')
    units=(virt-rbd-backup.service virt-rbd-backup.timer
           virt-rbd-backup-prune.service virt-rbd-backup-prune.timer
           virt-rbd-backup-verify.service virt-rbd-backup-verify.timer)
    for unit in "${units[@]}"; do
        install -m 0644 "$package/systemd/$unit" "/etc/systemd/system/$unit"
    done
    install -d -m 0700 /etc/virt-rbd-backup
    if [[ ! -e /etc/virt-rbd-backup/config.toml ]]; then
        install -m 0600 "$package/config.toml.example" /etc/virt-rbd-backup/config.toml
        log "wrote /etc/virt-rbd-backup/config.toml (every setting at its default): edit it"
    fi
    if [[ -d /run/systemd/system ]]; then
        systemctl daemon-reload
        timers=(virt-rbd-backup.timer virt-rbd-backup-verify.timer)
        # prune refuses to run without a keep rule: its timer would fail the unit every day.
        if grep -qE '^[[:space:]]*keep_[a-z]+[[:space:]]*=' /etc/virt-rbd-backup/config.toml; then
            timers+=(virt-rbd-backup-prune.timer)
        else
            log "no keep_* rule in /etc/virt-rbd-backup/config.toml: set one, then systemctl enable --now virt-rbd-backup-prune.timer"
        fi
        systemctl enable --now "${timers[@]}"
    else
        log "systemd is not running here: units installed, timers not enabled"
    fi
fi
log "done"
