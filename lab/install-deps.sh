#!/usr/bin/env bash
# Installs the Debian packages the lab (lab/lab.sh) and the build need.
#
# Idempotent and quick when everything is already installed: dpkg-query is
# asked first and apt is only run when something is missing. Run as root on
# Debian 12 (bookworm).
#
# Why qemu-utils is handled on its own: the CI image ships a newer qemu-img
# (backports); installing qemu-system-x86 removes it, so Debian's qemu-utils is
# installed again afterwards, pinned to the version of qemu-system-x86.
set -euo pipefail

PACKAGES=(
    ceph-mon ceph-osd ceph-common librbd-dev librados-dev
    libvirt-dev libvirt-daemon-system libvirt-daemon-driver-storage-rbd
    qemu-system-x86 qemu-block-extra qemu-guest-agent qemu-utils
    busybox-static cpio restic e2fsprogs pkg-config zstd
    shellcheck
    # The new-user install test (tests/python/test_install_newuser_lab.py) builds a bare Debian
    # root with it; systemd-analyze checks the shipped units.
    mmdebstrap systemd
    # serve/mount lab tests: nbdinfo --map; mount attaches the FUSE file with losetup (util-linux)
    libnbd-bin
    # The object-store target (lab.sh rgw up): Ceph's S3 gateway; curl signs the bucket creation
    radosgw curl openssl
)

die() { echo "install-deps: error: $*" >&2; exit 1; }
log() { echo "install-deps: $*" >&2; }

[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get install)"
command -v dpkg-query >/dev/null || die "dpkg-query not found: this script is for Debian"

installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

# qemu-utils is right when it is installed, matches qemu-system-x86's version
# (same source package) and qemu-img is on PATH.
qemu_utils_ok() {
    installed qemu-utils && installed qemu-system-x86 || return 1
    local a b
    a=$(dpkg-query -W -f='${Version}' qemu-utils)
    b=$(dpkg-query -W -f='${Version}' qemu-system-x86)
    [[ $a == "$b" ]] && command -v qemu-img >/dev/null
}

python_venv_ok() {
    command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null
}

missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]] && qemu_utils_ok && python_venv_ok; then
    log "all packages already installed"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

log "missing: ${missing[*]:-(none)}"
apt-get update -q || die "apt-get update failed"

if [[ ${#missing[@]} -gt 0 ]]; then
    # Everything but qemu-utils first: qemu-system-x86 may remove a newer one.
    others=()
    for p in "${missing[@]}"; do [[ $p == qemu-utils ]] || others+=("$p"); done
    if [[ ${#others[@]} -gt 0 ]]; then
        apt-get install "${APT_OPTS[@]}" "${others[@]}" \
            || die "apt-get install failed: ${others[*]}"
    fi
fi

if ! qemu_utils_ok; then
    ver=$(dpkg-query -W -f='${Version}' qemu-system-x86)
    log "installing Debian's qemu-utils=$ver (matching qemu-system-x86)"
    apt-get install "${APT_OPTS[@]}" --allow-downgrades \
        "qemu-utils=$ver" || die "apt-get install qemu-utils=$ver failed"
    qemu_utils_ok || die "qemu-img still missing after installing qemu-utils"
fi

if ! python_venv_ok; then
    pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
    pkgs=(python3-venv)
    [[ -n $pyver ]] && pkgs+=("python$pyver-venv")
    log "installing ${pkgs[*]}"
    apt-get install "${APT_OPTS[@]}" python3 "${pkgs[@]}" \
        || die "apt-get install ${pkgs[*]} failed"
    python_venv_ok || die "python3 still lacks a working venv module"
fi

log "done"
