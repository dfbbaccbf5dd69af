#!/usr/bin/env bash
# The throwaway test lab: a single-node Ceph cluster (one mon, one memstore
# OSD, cephx on), libvirtd, and small guests whose disks live in RBD. Tests,
# the demo and the benchmarks run against it.
#
#   lab.sh up      build the lab, or complete/repair it (idempotent)
#   lab.sh down    remove everything the lab made and stop its processes
#   lab.sh status  show what runs; exit 0 only when the lab is fully up
#   lab.sh env     print `export` lines for tests: eval "$(lab/lab.sh env)"
#   lab.sh disk-osd up [GIB] | down
#                  add (remove) osd.1, a BlueStore OSD on a sparse file of GIB
#                  GiB (default 40) in $LAB_DIR, serving only pool rbd-disk:
#                  for benchmarks at sizes memstore cannot hold (bench/run.py
#                  --disk). Tests never use it.
#   lab.sh rgw up | down
#                  start (remove) a RADOS Gateway (S3) on the lab cluster:
#                  http://127.0.0.1:7480 and https://127.0.0.1:7443 (lab CA),
#                  user vrb-lab, bucket vrb-lab, keys in $LAB_DIR/s3.credentials
#                  (see `lab.sh env` for the LAB_S3_* settings).
#
# Everything lives in $LAB_DIR (default /var/lib/virt-rbd-backup-lab), except
# the downloaded kernel package, cached in $LAB_CACHE so CI re-runs need no
# download. Set LAB_GUEST4=1 for a fourth guest with four RBD disks, LAB_RGW=0
# for a lab without the RADOS Gateway (the S3 tests need it).
#
# Guests: lab-guest (running; rbd/lab-guest-a on vda -> /mnt/a, rbd/lab-guest-b
# on vdb -> /mnt/b, local qcow2 on vdc, unformatted), lab-off (shut off; rbd
# disk with an ext2 filesystem), lab-local (shut off; only a local qcow2 disk),
# lab-guest4 (optional, running, rbd disks vda..vdd -> /mnt/a../mnt/d). Each RBD
# filesystem holds hello.txt ("hello from IMAGE"), random.bin (1 MiB) and
# random.bin.sha256. Guests boot Debian's cloud kernel with an initramfs of
# our own (busybox + qemu-ga); see TESTENV.md for why each piece is there.
set -Eeuo pipefail
shopt -s inherit_errexit

LAB_DIR=${LAB_DIR:-/var/lib/virt-rbd-backup-lab}
LAB_CACHE=${LAB_CACHE:-/var/cache/virt-rbd-backup-lab}
LAB_GUEST4=${LAB_GUEST4:-0}
LAB_RGW=${LAB_RGW:-1}
LAB_AGENT_TIMEOUT=${LAB_AGENT_TIMEOUT:-60}

LAB_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
URI=qemu:///system
MON_HOST=127.0.0.1:6789
POOL=rbd
CEPH_USER=libvirt
# Fixed so tests and docs can name it; usage name is unique to the lab.
SECRET_UUID=5e3c0b1a-7a2d-4f6e-9c41-0b5ac0ffee01
SECRET_USAGE="virt-rbd-backup-lab client.$CEPH_USER"
OSD_BYTES=$((6 * 1024 * 1024 * 1024))
GUEST_MEM_MIB=256
DOMAINS=(lab-guest lab-off lab-local lab-guest4)

MARKER=$LAB_DIR/.virt-rbd-backup-lab
CONF=$LAB_DIR/ceph.conf
ADMIN_KEYRING=$LAB_DIR/ceph.client.admin.keyring
CEPH_DIR=$LAB_DIR/ceph
RUN=$LAB_DIR/run
LOGS=$LAB_DIR/log
GUEST_DIR=$LAB_DIR/guest
DISKS=$LAB_DIR/disks

# ---------------------------------------------------------------- helpers

START_MS=$(($(date +%s%N) / 1000000))
# Log lines carry the seconds since the script started: CI logs show where
# time goes.
log() {
    local d=$(($(date +%s%N) / 1000000 - START_MS))
    printf 'lab: [%3d.%01ds] %s\n' $((d / 1000)) $((d % 1000 / 100)) "$*" >&2
}
die() { printf 'lab: error: %s\n' "$*" >&2; exit 1; }
trap 'printf "lab: failed (exit %s) at line %s: %s\n" "$?" "$LINENO" "$BASH_COMMAND" >&2' ERR

# prints_line LINE CMD...: CMD succeeds and one line of its output is LINE.
# Not `CMD | grep -qx LINE`: grep exits at the first match, CMD may then die of
# SIGPIPE while still writing, and pipefail turns that into a failure (seen
# with `busybox --list`).
prints_line() {
    local line=$1 out
    shift
    out=$("$@") || return 1
    grep -qxF -- "$line" <<<"$out"
}

# quiet CMD...: run CMD, show its output only when it fails.
quiet() {
    local out
    out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; die "failed: $*"; }
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs_since() { local d=$(($(now_ms) - $1)); printf '%d.%01d' $((d / 1000)) $((d % 1000 / 100)); }

# wait_until TIMEOUT_S WHAT CMD...: poll CMD every 0.2 s; die after TIMEOUT_S.
wait_until() {
    local timeout=$1 what=$2; shift 2
    local deadline=$(($(now_ms) + timeout * 1000))
    until "$@" >/dev/null 2>&1; do
        if (($(now_ms) > deadline)); then
            die "timed out after ${timeout}s waiting for $what"
        fi
        sleep 0.2
    done
}

ceph_() { timeout 30 ceph --conf "$CONF" --connect-timeout 10 "$@"; }
rbd_() { timeout 300 rbd --conf "$CONF" "$@"; }
virsh_() { timeout 60 virsh -q -c "$URI" "$@"; }

# pid_matches PID NAME [CMDLINE-SUBSTRING]: PID is a live NAME process whose
# command line contains the substring (guards against reused pids).
pid_matches() {
    local pid=$1 name=$2 sub=${3:-} comm="" cmdline=""
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    read -r comm 2>/dev/null <"/proc/$pid/comm" || return 1
    [[ $comm == "$name" ]] || return 1
    [[ -z $sub ]] && return 0
    read -r -d '' cmdline 2>/dev/null < <(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || true
    [[ $cmdline == *"$sub"* ]]
}

# stop_pids GRACE_S PID:NAME:SIGNAL...: signal all at once (they stop in
# parallel), wait up to GRACE_S for them to go, then SIGKILL the rest.
stop_pids() {
    local grace=$1 e pid name sig i left; shift
    for e in "$@"; do
        IFS=: read -r pid name sig <<<"$e"
        pid_matches "$pid" "$name" || continue
        log "stopping $name (pid $pid, SIG$sig)"
        kill "-$sig" "$pid" 2>/dev/null || true
    done
    for ((i = 0; ; i++)); do
        left=()
        for e in "$@"; do
            IFS=: read -r pid name sig <<<"$e"
            if pid_matches "$pid" "$name"; then left+=("$e"); fi
        done
        ((${#left[@]} > 0)) || return 0
        if ((i == grace * 10)); then
            for e in "${left[@]}"; do
                IFS=: read -r pid name sig <<<"$e"
                log "$name (pid $pid) did not stop after ${grace}s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            done
        elif ((i > grace * 10 + 50)); then
            die "still running after SIGKILL: ${left[*]}"
        fi
        sleep 0.1
    done
}

# Processes of NAME whose command line contains SUB (lab daemons without a
# pid file, e.g. after a crash), as pids.
pids_of() {
    local name=$1 sub=$2 p
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        if pid_matches "$p" "$name" "$sub"; then echo "$p"; fi
    done
    return 0
}

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

need_tools() {
    local t missing=()
    for t in ceph ceph-mon ceph-osd ceph-authtool monmaptool rbd virsh libvirtd virtlogd \
        qemu-system-x86_64 qemu-img qemu-ga mke2fs cpio gzip dpkg-deb apt-get apt-cache python3; do
        command -v "$t" >/dev/null || missing+=("$t")
    done
    [[ -x /bin/busybox ]] && prints_line insmod /bin/busybox --list || missing+=(busybox-static)
    ((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (run lab/install-deps.sh as root)"
}

check_lab_dir_path() {
    [[ $LAB_DIR == /* && $LAB_DIR != / ]] || die "LAB_DIR must be an absolute path other than /: '$LAB_DIR'"
    [[ $LAB_DIR != *[[:space:]]* ]] || die "LAB_DIR must not contain spaces: '$LAB_DIR'"
}

# QEMU runs as libvirt-qemu and must reach files in $LAB_DIR: every parent
# must be world-traversable (TESTENV.md, "Permissions").
check_traversable() {
    local d=$LAB_DIR
    while [[ $d != / ]]; do
        d=$(dirname "$d")
        [[ $(stat -c %A "$d") == ?????????[xt] ]] ||
            die "$d is not world-traversable (mode $(stat -c %a "$d")); QEMU (user libvirt-qemu) could not reach $LAB_DIR; choose another LAB_DIR"
    done
}

init_lab_dir() {
    check_lab_dir_path
    if [[ -d $LAB_DIR && ! -e $MARKER ]] && [[ -n $(ls -A "$LAB_DIR") ]]; then
        die "$LAB_DIR exists, is not empty and is not a lab directory (no $MARKER); refusing to use it"
    fi
    mkdir -p "$LAB_DIR"
    chmod 0755 "$LAB_DIR"
    check_traversable
    touch "$MARKER"
    mkdir -p "$RUN" "$LOGS" "$CEPH_DIR" "$GUEST_DIR" "$DISKS"
    chmod 0700 "$RUN" "$CEPH_DIR"
}

# ------------------------------------------------------------------- ceph

mon_pid() { cat "$RUN/mon.a.pid" 2>/dev/null || true; }
osd_pid() { cat "$RUN/osd.0.pid" 2>/dev/null || true; }

ceph_mon_answers() { ceph_ mon stat; }
# osd_up ID: osd.ID is up in the osdmap (whatever other OSDs there are).
osd_up() { ceph_ osd dump -f json | python3 -c '
import json, sys
sys.exit(not any(o["osd"] == int(sys.argv[1]) and o["up"] for o in json.load(sys.stdin)["osds"]))' "$1"; }
ceph_osd_up() { osd_up 0; }

# osd_add ID [CEPH-OSD-OPTION...]: create osd.ID (it must get that id), its
# key, its store, start it and wait until it is up. Options override the
# [osd] section of the lab's ceph.conf (osd.0 takes it as it is).
osd_add() {
    local id=$1 uuid got
    shift
    local opts=(--conf "$CONF" -i "$id" "$@")
    uuid=$(cat /proc/sys/kernel/random/uuid)
    got=$(ceph_ osd new "$uuid")
    [[ $got == "$id" ]] || die "expected osd id $id, got '$got'"
    mkdir -p "$CEPH_DIR/osd-$id"
    ( umask 077; ceph-authtool --create-keyring "$CEPH_DIR/osd-$id/keyring" --gen-key -n "osd.$id" >/dev/null )
    quiet ceph_ auth add "osd.$id" osd 'allow *' mon 'allow profile osd' -i "$CEPH_DIR/osd-$id/keyring"
    ceph-osd "${opts[@]}" --mkfs --osd-uuid "$uuid" >"$LOGS/osd-$id-mkfs.log" 2>&1 ||
        die "ceph-osd --mkfs of osd.$id failed, see $LOGS/osd-$id-mkfs.log and $LOGS/osd.$id.log"
    # 9>&-: daemons must not inherit the lab lock (see lab_lock).
    ceph-osd "${opts[@]}" >>"$LOGS/osd-$id-start.log" 2>&1 9>&- ||
        die "osd.$id failed to start, see $LOGS/osd.$id.log"
    wait_until 60 "osd.$id to be up (see $LOGS/osd.$id.log)" osd_up "$id"
}
ceph_healthy() {
    [[ -e $CONF ]] || return 1
    pid_matches "$(mon_pid)" ceph-mon "$CONF" || return 1
    pid_matches "$(osd_pid)" ceph-osd "$CONF" || return 1
    ceph_osd_up 2>/dev/null || return 1
    prints_line "$POOL" ceph_ osd pool ls 2>/dev/null
}

write_ceph_conf() {
    local fsid=$1
    cat >"$CONF" <<EOF
# virt-rbd-backup lab: single-node cluster, written by lab/lab.sh.
[global]
fsid = $fsid
mon host = $MON_HOST
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
ms bind ipv6 = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
# The lab's mon listens on v1 only (127.0.0.1:6789), and its disk may be fuller
# than the default 30 % warning threshold: neither is worth a HEALTH_WARN.
mon warn on msgr2 not enabled = false
mon data avail warn = 5
osd crush chooseleaf type = 0
osd max object name len = 256
osd max object namespace len = 64
run dir = $RUN
# paxos_propose_interval stays at its default: it sets snapshot latency,
# which freeze-window measurements must see as in production.

[mon]
mon data = $CEPH_DIR/mon-\$id
keyring = $CEPH_DIR/mon-\$id/keyring
log file = $LOGS/\$name.log
mon cluster log file = $LOGS/ceph.log
pid file = $RUN/\$name.pid
admin socket = $RUN/\$name.asok

[osd]
osd data = $CEPH_DIR/osd-\$id
keyring = $CEPH_DIR/osd-\$id/keyring
osd objectstore = memstore
memstore device bytes = $OSD_BYTES
log file = $LOGS/\$name.log
pid file = $RUN/\$name.pid
admin socket = $RUN/\$name.asok

[client]
keyring = $LAB_DIR/ceph.\$name.keyring
EOF
}

ceph_up() {
    local t0 fsid
    t0=$(now_ms)
    fsid=$(cat /proc/sys/kernel/random/uuid)
    write_ceph_conf "$fsid"

    ( umask 077
      ceph-authtool --create-keyring "$CEPH_DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
      ceph-authtool --create-keyring "$ADMIN_KEYRING" --gen-key -n client.admin \
          --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
      ceph-authtool "$CEPH_DIR/mon.keyring" --import-keyring "$ADMIN_KEYRING" >/dev/null
    )
    monmaptool --create --add a "$MON_HOST" --fsid "$fsid" "$CEPH_DIR/monmap" >/dev/null
    ceph-mon --conf "$CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap" --keyring "$CEPH_DIR/mon.keyring" \
        >"$LOGS/mon-mkfs.log" 2>&1 || die "ceph-mon --mkfs failed, see $LOGS/mon-mkfs.log"
    # 9>&-: daemons must not inherit the lab lock (see lab_lock).
    ceph-mon --conf "$CONF" -i a >>"$LOGS/mon-start.log" 2>&1 9>&- || die "ceph-mon failed to start, see $LOGS/mon.a.log"
    wait_until 30 "the monitor on $MON_HOST (see $LOGS/mon.a.log)" ceph_mon_answers

    osd_add 0

    quiet ceph_ osd pool create "$POOL" 32 32
    timeout 60 rbd --conf "$CONF" pool init "$POOL" || die "rbd pool init $POOL timed out or failed (PGs not active?), see $LOGS/"
    ( umask 077
      quiet ceph_ auth get-or-create "client.$CEPH_USER" mon 'profile rbd' osd "profile rbd pool=$POOL" \
          -o "$LAB_DIR/ceph.client.$CEPH_USER.keyring"
    )
    log "ceph cluster up in $(secs_since "$t0") s (mon $MON_HOST, osd.0 memstore $((OSD_BYTES >> 30)) GiB, pool $POOL)"
}

# Lab ceph daemons as PID:NAME:SIGNAL for stop_pids. SIGKILL for the OSD on
# purpose: on SIGTERM memstore writes all its data to disk, and the lab
# throws that data away anyway.
ceph_daemons() {
    local pid
    {
        for pid in $(rgw_pid) $(pids_of radosgw "$CONF"); do echo "$pid:radosgw:TERM"; done
        for pid in $(osd_pid) $(pids_of ceph-osd "$CONF"); do echo "$pid:ceph-osd:KILL"; done
        for pid in $(mon_pid) $(pids_of ceph-mon "$CONF"); do echo "$pid:ceph-mon:TERM"; done
    } | sort -u
}

# ---------------------------------------------------------------- libvirt

virsh_answers() { virsh_ version; }

pidfile_live() { pid_matches "$(cat "/run/$1.pid" 2>/dev/null || true)" "$1"; }

# start_daemon NAME: start NAME -d unless it runs; remember that the lab
# started it, so that `down` stops only what the lab started.
start_daemon() {
    local name=$1 pid
    pid=$(cat "/run/$name.pid" 2>/dev/null || true)
    if pid_matches "$pid" "$name" || pgrep -x "$name" >/dev/null; then
        return 0
    fi
    log "starting $name -d (log $LOGS/$name.log)"
    (cd / && LIBVIRT_LOG_OUTPUTS="3:file:$LOGS/$name.log" "$name" -d 9>&-) ||
        die "$name -d failed, see $LOGS/$name.log"
    # A stale pid file from a killed daemon may be there: wait for a live pid.
    wait_until 10 "$name to write /run/$name.pid" pidfile_live "$name"
    pid=$(cat "/run/$name.pid")
    echo "$pid" >"$RUN/$name.lab-started"
}

libvirt_start() {
    start_daemon virtlogd
    # A libvirtd run by an init system (or by hand) answers already.
    virsh_answers >/dev/null 2>&1 || start_daemon libvirtd
}

# A freshly started libvirtd needs several seconds before it answers here
# (driver and capability probing): start it early, wait for it late.
libvirt_wait() {
    wait_until 60 "libvirtd to answer on $URI (see $LOGS/libvirtd.log)" virsh_answers
}

libvirt_up() {
    libvirt_start
    libvirt_wait
}

# libvirtd and virtlogd as PID:NAME:SIGNAL, if the lab started them.
libvirt_daemons() {
    local name pid
    for name in libvirtd virtlogd; do
        pid=$(cat "$RUN/$name.lab-started" 2>/dev/null || true)
        if [[ -n $pid ]]; then echo "$pid:$name:TERM"; fi
    done
}

secret_up() {
    if ! virsh_ secret-dumpxml "$SECRET_UUID" >/dev/null 2>&1; then
        cat >"$RUN/secret.xml" <<EOF
<secret ephemeral='no' private='no'>
  <uuid>$SECRET_UUID</uuid>
  <usage type='ceph'><name>$SECRET_USAGE</name></usage>
</secret>
EOF
        virsh_ secret-define "$RUN/secret.xml" >/dev/null || die "virsh secret-define failed"
    fi
    # Through a 0600 file: the key never appears on a command line.
    local key
    key=$(ceph_ auth print-key "client.$CEPH_USER")
    ( umask 077; printf '%s' "$key" >"$RUN/secret.b64" )
    virsh_ secret-set-value "$SECRET_UUID" --file "$RUN/secret.b64" >/dev/null ||
        { rm -f "$RUN/secret.b64"; die "virsh secret-set-value failed"; }
    rm -f "$RUN/secret.b64"
}

domain_exists() { virsh_ dominfo "$1" >/dev/null 2>&1; }
domain_state() { virsh_ domstate "$1" 2>/dev/null | head -n1 || true; }

domain_remove() {
    local d=$1
    domain_exists "$d" || return 0
    if [[ $(domain_state "$d") != "shut off" ]]; then
        virsh_ destroy "$d" >/dev/null 2>&1 || true
    fi
    virsh_ undefine "$d" >/dev/null || die "virsh undefine $d failed"
    log "removed domain $d"
}

# Tests and benchmarks name their scratch domains and images vrb-*. A run
# killed before its cleanup (CI timeout, a stopped session) leaves them behind,
# and a leftover domain whose image died with the memstore OSD then fails every
# later whole-host backup. `up` removes them: nothing else uses that prefix.
scratch_domains() { virsh_ list --all --name 2>/dev/null | grep '^vrb-' || true; }
scratch_images() { rbd_ ls "$POOL" 2>/dev/null | grep '^vrb-' || true; }

sweep_scratch() {
    local d img
    for d in $(scratch_domains); do
        if [[ $(domain_state "$d") != "shut off" ]]; then
            virsh_ destroy "$d" >/dev/null 2>&1 || true
        fi
        # A transient domain is gone once destroyed; a persistent one is undefined.
        if domain_exists "$d"; then
            virsh_ undefine "$d" >/dev/null || die "virsh undefine $d (a leftover test domain) failed"
        fi
        log "removed leftover test domain $d"
    done
    for img in $(scratch_images); do
        rbd_remove "$img"
        log "removed leftover test image $POOL/$img"
    done
}

# --------------------------------------------------------------- guest boot

# The versioned package that linux-image-cloud-amd64 depends on, e.g.
# linux-image-6.1.0-56-cloud-amd64; empty when apt knows none.
kernel_package() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}

# Prints the path of the cached kernel .deb, downloading it if needed.
kernel_deb() {
    local pkg deb tmp debs
    shopt -s nullglob
    mkdir -p "$LAB_CACHE"
    pkg=$(kernel_package)
    if [[ -n $pkg ]]; then
        debs=("$LAB_CACHE/${pkg}"_*.deb)
        deb=""; ((${#debs[@]} == 0)) || deb=${debs[-1]}
        if [[ -z $deb ]]; then
            log "downloading $pkg into $LAB_CACHE"
            tmp=$(mktemp -d "$LAB_CACHE/.download.XXXXXX")
            chmod 0755 "$tmp"
            id _apt >/dev/null 2>&1 && chown _apt "$tmp"
            (cd "$tmp" && timeout 300 apt-get download -q "$pkg") >&2 || { rm -rf "$tmp"; die "apt-get download $pkg failed"; }
            debs=("$tmp"/*.deb)
            deb=${debs[0]:-}
            [[ -n $deb ]] || { rm -rf "$tmp"; die "apt-get download $pkg produced no .deb"; }
            mv "$deb" "$LAB_CACHE/"
            rm -rf "$tmp"
            deb=$LAB_CACHE/$(basename "$deb")
            # Keep only the current kernel in the cache.
            find "$LAB_CACHE" -maxdepth 1 -name 'linux-image-*.deb' ! -name "$(basename "$deb")" -delete
        fi
    else
        debs=("$LAB_CACHE"/linux-image-*-cloud-amd64_*.deb)
        deb=""; ((${#debs[@]} == 0)) || deb=${debs[-1]}
        [[ -n $deb ]] || die "apt does not know linux-image-cloud-amd64 and $LAB_CACHE has no kernel package (run apt-get update)"
        log "apt does not know linux-image-cloud-amd64; using cached $(basename "$deb")"
    fi
    echo "$deb"
}

# The guest's /init: mounts the filesystems named by lab_mounts= on the
# kernel command line (vdX -> /mnt/X) and keeps qemu-ga running. qemu-ga logs
# to the console with -v, so freezes and thaws show up with timestamps.
write_init() {
    cat <<'EOF'
#!/bin/sh
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /tmp
echo "lab-init: loading virtio modules"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console; do
    insmod /lib/modules/$m.ko || echo "lab-init: insmod $m failed"
done
mounts=
for arg in $(cat /proc/cmdline); do
    case $arg in lab_mounts=*) mounts=${arg#lab_mounts=} ;; esac
done
for dev in $(echo "$mounts" | tr , ' '); do
    dir=/mnt/${dev#vd}
    mkdir -p "$dir"
    i=0
    while [ ! -b "/dev/$dev" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    if mount -t ext2 "/dev/$dev" "$dir"; then
        echo "lab-init: mounted /dev/$dev on $dir"
    else
        echo "lab-init: FAILED to mount /dev/$dev on $dir"
    fi
done
port=
i=0
while [ -z "$port" ] && [ $i -lt 200 ]; do
    for p in /sys/class/virtio-ports/vport*; do
        [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
    done
    [ -n "$port" ] && [ -c "$port" ] || { port=; sleep 0.05; i=$((i + 1)); }
done
[ -n "$port" ] || echo "lab-init: no virtio port named org.qemu.guest_agent.0"
while true; do
    echo "lab-init: starting qemu-ga on $port"
    qemu-ga -m virtio-serial -p "$port" -l /dev/console -v -t /run -f /run/qemu-ga.pid
    echo "lab-init: qemu-ga exited with $?, restarting"
    sleep 1
done
EOF
}

# Identifies the guest boot files' inputs; part of every domain's XML, so a
# changed /init or kernel makes `up` recreate the domains.
# Computed once per run (apt-cache takes most of a second).
BOOT_ID=""
boot_id() {
    [[ -n $BOOT_ID ]] || BOOT_ID=$({ write_init; kernel_package; } | sha256sum | cut -c1-16)
    echo "$BOOT_ID"
}

# Builds $GUEST_DIR/vmlinuz and $GUEST_DIR/initrd.img (skipped when current).
guest_boot_build() {
    local id deb x root m ko lib
    id=$(boot_id)
    if [[ -s $GUEST_DIR/vmlinuz && -s $GUEST_DIR/initrd.img && $(cat "$GUEST_DIR/boot-id" 2>/dev/null) == "$id" ]]; then
        return 0
    fi
    deb=$(kernel_deb)
    x=$GUEST_DIR/kernel.x
    rm -rf "$x" "$GUEST_DIR/initramfs"
    dpkg-deb -x "$deb" "$x"
    local kernels=("$x"/boot/vmlinuz-*)
    [[ ${#kernels[@]} -gt 0 ]] || die "no boot/vmlinuz-* in $(basename "$deb")"
    cp "${kernels[0]}" "$GUEST_DIR/vmlinuz.new"

    root=$GUEST_DIR/initramfs
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,mnt,etc,lib/modules}
    mkdir -p "$root/var"
    ln -s ../run "$root/var/run"
    cp /bin/busybox "$root/bin/busybox"
    for m in $(/bin/busybox --list); do
        [[ -e $root/bin/$m || $m == busybox ]] || ln -s busybox "$root/bin/$m"
    done
    for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console; do
        ko=$(find "$x" -path '*/kernel/drivers/*' \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) | head -n1)
        [[ -n $ko ]] || die "module $m not found in $(basename "$deb")"
        case $ko in
            *.xz) xz -dc "$ko" >"$root/lib/modules/$m.ko" ;;
            *.zst) zstd -qdc "$ko" >"$root/lib/modules/$m.ko" ;;
            *) cp "$ko" "$root/lib/modules/$m.ko" ;;
        esac
    done
    cp "$(command -v qemu-ga)" "$root/sbin/qemu-ga"
    for lib in $(ldd "$(command -v qemu-ga)" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
        cp -L --parents "$lib" "$root/"
    done
    write_init >"$root/init"
    chmod 0755 "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$GUEST_DIR/initrd.img.new"
    chmod 0644 "$GUEST_DIR/vmlinuz.new" "$GUEST_DIR/initrd.img.new"
    mv -f "$GUEST_DIR/vmlinuz.new" "$GUEST_DIR/vmlinuz"
    mv -f "$GUEST_DIR/initrd.img.new" "$GUEST_DIR/initrd.img"
    echo "$id" >"$GUEST_DIR/boot-id"
    rm -rf "$x" "$root"
    log "guest kernel and initramfs built from $(basename "$deb")"
}

# ------------------------------------------------------------ guest disks

# make_fs_image NAME SIZE_MIB OUT: ext2 image with hello.txt, random.bin and
# its checksum.
make_fs_image() {
    local name=$1 size=$2 out=$3 d
    d=$(mktemp -d "$LAB_DIR/tmp.XXXXXX")
    echo "hello from $name" >"$d/hello.txt"
    head -c 1048576 /dev/urandom >"$d/random.bin"
    (cd "$d" && sha256sum random.bin >random.bin.sha256)
    rm -f "$out"
    # 4 KiB blocks: few block groups, so the metadata touches few RBD objects.
    quiet mke2fs -q -F -t ext2 -b 4096 -L "${name:0:16}" -d "$d" "$out" "${size}M"
    rm -rf "$d"
}

# rbd_fs_image NAME SIZE_MIB: (re)create rbd/NAME holding an ext2 filesystem.
rbd_fs_image() {
    local name=$1 size=$2 img=$LAB_DIR/$1.img
    rbd_remove "$name"
    make_fs_image "$name" "$size" "$img"
    # rbd import skips zeroed blocks: the image stays sparse.
    rbd_ import --no-progress "$img" "$POOL/$name" || die "rbd import $POOL/$name failed"
    rm -f "$img"
}

rbd_remove() {
    local name=$1
    rbd_ info "$POOL/$name" >/dev/null 2>&1 || return 0
    rbd_ snap purge --no-progress "$POOL/$name" >/dev/null 2>&1 || true
    rbd_ rm --no-progress "$POOL/$name" >/dev/null || die "rbd rm $POOL/$name failed (still open by a guest?)"
}

# ---------------------------------------------------------------- domains

rbd_disk_xml() {
    cat <<EOF
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback' discard='unmap'/>
      <auth username='$CEPH_USER'><secret type='ceph' uuid='$SECRET_UUID'/></auth>
      <source protocol='rbd' name='$POOL/$1'><host name='127.0.0.1' port='6789'/></source>
      <target dev='$2' bus='virtio'/>
    </disk>
EOF
}

file_disk_xml() {
    cat <<EOF
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='$1'/>
      <target dev='$2' bus='virtio'/>
    </disk>
EOF
}

# domain_xml NAME MOUNTS DISK-XML: MOUNTS is the guest's lab_mounts= value.
domain_xml() {
    local name=$1 mounts=$2 disks=$3
    cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <description>virt-rbd-backup lab guest (lab/lab.sh), boot id $(boot_id)</description>
  <memory unit='MiB'>$GUEST_MEM_MIB</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$GUEST_DIR/vmlinuz</kernel>
    <initrd>$GUEST_DIR/initrd.img</initrd>
    <cmdline>console=ttyS0 lab_mounts=$mounts</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
$disks
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='$LAB_DIR/$name.console.log'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# ensure_domain NAME STATE MOUNTS SPEC...: make domain NAME exist with the
# disks in SPEC (rbd:IMAGE:SIZE_MIB:DEV, blank:FILE:SIZE_MIB:DEV or
# fs:FILE:SIZE_MIB:DEV) and be in STATE (running|off). A domain whose XML or
# disks differ from what this script makes is recreated with fresh disks.
# When it starts the domain, records the start time (ms) in $RUN/NAME.started.
ensure_domain() {
    local name=$1 want=$2 mounts=$3; shift 3
    local spec kind obj size dev disks="" ok=1 xml images
    images=$(rbd_ ls "$POOL" 2>/dev/null || true)
    for spec in "$@"; do
        IFS=: read -r kind obj size dev <<<"$spec"
        case $kind in
            rbd) disks+=$(rbd_disk_xml "$obj" "$dev")$'\n'; grep -qx "$obj" <<<"$images" || ok=0 ;;
            blank|fs) disks+=$(file_disk_xml "$DISKS/$obj" "$dev")$'\n'; [[ -e $DISKS/$obj ]] || ok=0 ;;
        esac
    done
    xml=$(domain_xml "$name" "$mounts" "${disks%$'\n'}")
    domain_exists "$name" || ok=0
    [[ $ok == 1 && $(cat "$RUN/$name.xml" 2>/dev/null) == "$xml" ]] || ok=0

    if [[ $ok == 0 ]]; then
        domain_remove "$name"
        for spec in "$@"; do
            IFS=: read -r kind obj size dev <<<"$spec"
            case $kind in
                rbd) rbd_fs_image "$obj" "$size" ;;
                blank) rm -f "$DISKS/$obj"; qemu-img create -q -f qcow2 "$DISKS/$obj" "${size}M" ;;
                fs) make_fs_image "${obj%.*}" "$size" "$DISKS/$obj.raw"
                    rm -f "$DISKS/$obj"
                    qemu-img convert -q -f raw -O qcow2 "$DISKS/$obj.raw" "$DISKS/$obj"
                    rm -f "$DISKS/$obj.raw" ;;
            esac
        done
        printf '%s\n' "$xml" >"$RUN/$name.xml"
        virsh_ define "$RUN/$name.xml" >/dev/null || die "virsh define $name failed (XML in $RUN/$name.xml)"
        log "defined domain $name"
    fi

    local state
    state=$(domain_state "$name")
    case $want in
        running)
            if [[ $state != running ]]; then
                [[ $state == "shut off" ]] || virsh_ destroy "$name" >/dev/null 2>&1 || true
                now_ms >"$RUN/$name.started"
                virsh_ start "$name" >/dev/null || die "virsh start $name failed (see /var/log/libvirt/qemu/$name.log)"
                log "started domain $name"
            fi ;;
        off)
            [[ $state == "shut off" ]] || { virsh_ destroy "$name" >/dev/null; log "stopped domain $name"; } ;;
    esac
}

agent_ping() { virsh_ qemu-agent-command --timeout 2 "$1" '{"execute":"guest-ping"}'; }

# wait_guest NAME MOUNTPOINT...: wait for the agent and the mounts.
wait_guest() {
    local name=$1 t0 deadline mp checks=""; shift
    t0=$(cat "$RUN/$name.started" 2>/dev/null || true)
    rm -f "$RUN/$name.started"
    deadline=$(($(now_ms) + LAB_AGENT_TIMEOUT * 1000))
    until agent_ping "$name" >/dev/null 2>&1; do
        if [[ $(domain_state "$name") != running ]]; then
            tail -n 20 "$LAB_DIR/$name.console.log" >&2 2>/dev/null || true
            die "$name stopped while waiting for its agent (console: $LAB_DIR/$name.console.log)"
        fi
        if (($(now_ms) > deadline)); then
            tail -n 20 "$LAB_DIR/$name.console.log" >&2 2>/dev/null || true
            die "timed out after ${LAB_AGENT_TIMEOUT}s waiting for $name's guest agent (console: $LAB_DIR/$name.console.log)"
        fi
        sleep 0.1
    done
    if [[ -n $t0 ]]; then log "$name: guest agent answered $(secs_since "$t0") s after domain start"; fi
    # A test that died between freeze and thaw leaves the guest frozen, and a
    # frozen agent refuses guest-exec.
    local status
    status=$(virsh_ qemu-agent-command "$name" '{"execute":"guest-fsfreeze-status"}' 2>/dev/null || true)
    if [[ $status == *frozen* ]]; then
        log "$name: filesystems were frozen, thawing"
        virsh_ domfsthaw "$name" >/dev/null
    fi
    for mp in "$@"; do checks+="grep -q ' $mp ' /proc/mounts && "; done
    checks+="true"
    wait_until 20 "$name to mount $*" "$LAB_SRC/guest-exec.sh" --timeout 5 "$name" "$checks"
}

# ------------------------------------------------------------------ commands

cmd_up() {
    local t0 build_pid
    need_root
    need_tools
    check_lab_dir_path
    t0=$(now_ms)
    BOOT_ID=$(boot_id)

    if [[ -e $MARKER ]] && ceph_healthy; then
        log "ceph cluster already up, reusing it"
        init_lab_dir
        guest_boot_build >>"$LOGS/guest-build.log" 2>&1 &
        build_pid=$!
        libvirt_up
    else
        if [[ -e $MARKER ]] || lab_defined_in_libvirt; then
            log "incomplete lab found: removing it first"
            cmd_down
        fi
        if (exec 3<>/dev/tcp/127.0.0.1/6789) 2>/dev/null; then
            die "something already listens on $MON_HOST (another Ceph monitor?); the lab needs that port"
        fi
        init_lab_dir
        # Kernel download/unpack and initramfs run while the cluster starts.
        guest_boot_build >>"$LOGS/guest-build.log" 2>&1 &
        build_pid=$!
        libvirt_start
        ceph_up
        libvirt_wait
    fi
    # Not `guest_boot_build || die`: errexit is off inside a function run as
    # the left side of ||, a background job keeps it on.
    wait "$build_pid" || { tail -n 5 "$LOGS/guest-build.log" >&2; die "guest boot build failed, see $LOGS/guest-build.log"; }
    secret_up
    sweep_scratch

    ensure_domain lab-guest running vda,vdb \
        rbd:lab-guest-a:256:vda rbd:lab-guest-b:512:vdb blank:lab-guest-c.qcow2:128:vdc
    if [[ $LAB_GUEST4 == 1 ]]; then
        ensure_domain lab-guest4 running vda,vdb,vdc,vdd \
            rbd:lab-guest4-a:256:vda rbd:lab-guest4-b:256:vdb rbd:lab-guest4-c:256:vdc rbd:lab-guest4-d:256:vdd
    fi
    ensure_domain lab-off off vda rbd:lab-off-a:256:vda
    ensure_domain lab-local off vda fs:lab-local-a.qcow2:128:vda

    if [[ $LAB_RGW == 1 ]]; then cmd_rgw_up; fi
    wait_guest lab-guest /mnt/a /mnt/b
    if [[ $LAB_GUEST4 == 1 ]]; then
        wait_guest lab-guest4 /mnt/a /mnt/b /mnt/c /mnt/d
    fi
    log "lab up in $(secs_since "$t0") s; eval \"\$($LAB_SRC/lab.sh env)\" for its settings"
}

# True when libvirt holds lab domains or the lab secret (also with the work
# dir gone): seen through libvirt's config files, so libvirtd need not run.
lab_defined_in_libvirt() {
    local d
    for d in "${DOMAINS[@]}"; do [[ -e /etc/libvirt/qemu/$d.xml ]] && return 0; done
    [[ -e /etc/libvirt/secrets/$SECRET_UUID.xml ]]
}

cmd_down() {
    local d pid
    need_root
    check_lab_dir_path
    if [[ -d $LAB_DIR && ! -e $MARKER && -n $(ls -A "$LAB_DIR" 2>/dev/null) ]]; then
        die "$LAB_DIR is not a lab directory (no $MARKER); refusing to touch it"
    fi
    if lab_defined_in_libvirt; then
        if ! virsh_answers >/dev/null 2>&1; then
            mkdir -p "$RUN" "$LOGS"
            touch "$MARKER"
            libvirt_up
        fi
        # Destroy in parallel: each QEMU takes a second or two to close its
        # RBD images.
        local destroying=()
        for d in "${DOMAINS[@]}"; do
            if domain_exists "$d" && [[ $(domain_state "$d") != "shut off" ]]; then
                virsh_ destroy "$d" >/dev/null 2>&1 &
                destroying+=($!)
            fi
        done
        for pid in "${destroying[@]}"; do wait "$pid" || true; done
        for d in "${DOMAINS[@]}"; do domain_remove "$d"; done
        if virsh_ secret-dumpxml "$SECRET_UUID" >/dev/null 2>&1; then
            virsh_ secret-undefine "$SECRET_UUID" >/dev/null
            log "removed secret $SECRET_UUID"
        fi
    fi
    # QEMU processes of lab domains that libvirt no longer knows (none expected).
    for d in "${DOMAINS[@]}"; do
        for pid in $(pids_of qemu-system-x86 "guest=$d,"); do stop_pids 5 "$pid:qemu-system-x86:TERM"; done
    done
    # shellcheck disable=SC2046 # one word per daemon
    stop_pids 15 $(ceph_daemons) $(libvirt_daemons)
    rm -f "$RUN"/*.lab-started
    if [[ -e $MARKER ]]; then
        rm -rf "$LAB_DIR"
        log "removed $LAB_DIR"
    fi
    local left
    # The lab's own daemons are gone (stop_pids made sure); clients that still
    # name the lab's config are someone else's, so only warn about them.
    left=$(pgrep -af -- "$CONF|guest=lab-" || true)
    if [[ -n $left ]]; then
        printf '%s\n' "$left" >&2
        log "warning: processes above still name the lab (clients of the removed cluster?)"
    fi
    log "lab is down"
}

cmd_status() {
    local ok=0 line d state want pid
    report() { # report ok|FAIL TEXT
        printf '%-4s %s\n' "$1" "$2"
        [[ $1 == ok ]] || ok=1
    }
    if [[ -e $MARKER ]]; then report ok "work dir $LAB_DIR"; else report FAIL "work dir $LAB_DIR (missing)"; fi
    pid=$(mon_pid)
    if pid_matches "$pid" ceph-mon "$CONF"; then report ok "ceph-mon a (pid $pid) on $MON_HOST"; else report FAIL "ceph-mon not running"; fi
    pid=$(osd_pid)
    if pid_matches "$pid" ceph-osd "$CONF"; then report ok "ceph-osd 0 (pid $pid)"; else report FAIL "ceph-osd not running"; fi
    # Short timeouts: status must answer quickly even when the cluster hangs.
    if [[ -e $CONF ]] && pid_matches "$pid" ceph-osd "$CONF" &&
        line=$(timeout 10 ceph --conf "$CONF" --connect-timeout 5 osd stat 2>/dev/null) &&
        ceph_osd_up; then
        report ok "osdmap: $line"
        if prints_line "$POOL" timeout 10 ceph --conf "$CONF" --connect-timeout 5 osd pool ls 2>/dev/null; then
            report ok "pool $POOL: images $(timeout 10 rbd --conf "$CONF" ls "$POOL" 2>/dev/null | tr '\n' ' ')"
        else
            report FAIL "pool $POOL missing"
        fi
    else
        report FAIL "cluster does not answer or osd.0 is down"
    fi
    # Optional (lab.sh disk-osd up): reported, never required.
    pid=$(disk_osd_pid)
    if [[ -n $pid ]]; then
        if pid_matches "$pid" ceph-osd "$CONF"; then
            report ok "ceph-osd $DISK_OSD_ID (pid $pid, BlueStore, pool $DISK_POOL)"
        else
            # Not a FAIL: tests never use it.
            printf '%-4s %s\n' warn "ceph-osd $DISK_OSD_ID (disk-osd) not running: lab.sh disk-osd down, then up"
        fi
    fi
    # Part of the lab unless LAB_RGW=0.
    pid=$(rgw_pid)
    if [[ -n $pid || $LAB_RGW == 1 ]]; then
        if pid_matches "$pid" radosgw "$CONF" && rgw_answers; then
            report ok "radosgw (pid $pid) on 127.0.0.1:$RGW_PORT and :$RGW_TLS_PORT, bucket $RGW_BUCKET"
        else
            report FAIL "radosgw not running or not answering: lab.sh rgw up"
        fi
    fi
    for d in virtlogd libvirtd; do
        pid=$(cat "/run/$d.pid" 2>/dev/null || true)
        if pid_matches "$pid" "$d"; then
            report ok "$d (pid $pid$([[ -e $RUN/$d.lab-started ]] && echo ", started by the lab"))"
        else
            report FAIL "$d not running"
        fi
    done
    if ! virsh_answers >/dev/null 2>&1; then
        report FAIL "libvirt does not answer on $URI"
        return 1
    fi
    if virsh_ secret-dumpxml "$SECRET_UUID" >/dev/null 2>&1; then
        report ok "libvirt secret $SECRET_UUID (ceph, client.$CEPH_USER)"
    else
        report FAIL "libvirt secret $SECRET_UUID missing"
    fi
    for d in "${DOMAINS[@]}"; do
        case $d in lab-guest | lab-guest4) want=running ;; *) want="shut off" ;; esac
        if ! domain_exists "$d"; then
            [[ $d == lab-guest4 && $LAB_GUEST4 != 1 ]] && continue
            report FAIL "domain $d not defined"
            continue
        fi
        state=$(domain_state "$d")
        if [[ $state != "$want" ]]; then
            report FAIL "domain $d: $state (want $want)"
        elif [[ $want != running ]]; then
            report ok "domain $d: $state"
        elif agent_ping "$d" >/dev/null 2>&1; then
            report ok "domain $d: running, agent answers"
        else
            report FAIL "domain $d: running, agent does not answer"
        fi
    done
    return $ok
}

# ---------------------------------------------------------------- disk-backed OSD

DISK_OSD_ID=1
DISK_OSD_GIB=40
DISK_POOL=rbd-disk
DISK_OSD_DIR=$CEPH_DIR/osd-$DISK_OSD_ID
DISK_OSD_BLOCK=$LAB_DIR/disk-osd.block

lab_ceph_up() {
    if [[ ! -e $MARKER ]] || ! ceph_healthy; then die "the lab is not up (bash lab/lab.sh up)"; fi
}

disk_osd_pid() { cat "$RUN/osd.$DISK_OSD_ID.pid" 2>/dev/null || true; }

# The caps of the lab's client: every pool the lab serves images from.
client_caps() {
    local caps="profile rbd pool=$POOL"
    if prints_line "$DISK_POOL" ceph_ osd pool ls; then caps+=", profile rbd pool=$DISK_POOL"; fi
    quiet ceph_ auth caps "client.$CEPH_USER" mon 'profile rbd' osd "$caps"
}

# BlueStore on a sparse file: reads and writes go through the kernel to the
# machine's disk (BlueStore opens its block file O_DIRECT), as on a real OSD;
# memstore answers from RAM and holds only what the lab's RAM allows. Its own
# CRUSH root and rule keep pool rbd on osd.0 and pool rbd-disk on osd.1 alone.
cmd_disk_osd_up() {
    local gib=$1 t0 free_gib
    t0=$(now_ms)
    [[ $gib =~ ^[0-9]+$ && $gib -ge 4 ]] || die "disk-osd size must be a whole number of GiB >= 4, not '$gib'"
    lab_ceph_up
    if pid_matches "$(disk_osd_pid)" ceph-osd "$CONF" && osd_up "$DISK_OSD_ID" 2>/dev/null; then
        log "osd.$DISK_OSD_ID already up, pool $DISK_POOL"
        return 0
    fi
    if [[ -e $DISK_OSD_DIR ]]; then
        die "osd.$DISK_OSD_ID exists but is not running; remove it first: lab.sh disk-osd down"
    fi
    free_gib=$(($(df --output=avail -B1G "$LAB_DIR" | tail -n1)))
    # The file starts sparse but fills up to its full size as the benchmark
    # writes, deletes and writes again (BlueStore neither punches holes in it
    # nor reuses freed space compactly): it must fit, with room to spare.
    ((free_gib >= gib + 8)) ||
        die "$free_gib GiB free under $LAB_DIR: not enough for a $gib GiB OSD file plus 8 GiB spare (lab.sh disk-osd up GIB)"
    local opts=(
        --osd-objectstore bluestore
        --bluestore-block-path "$DISK_OSD_BLOCK" --bluestore-block-size "${gib}G" --bluestore-block-create true
        # Keep it out of the default CRUSH root (osd.0's), placed by hand below.
        --osd-crush-update-on-start false
        # A small, fixed cache: the host's page cache is bypassed, and the
        # benchmark should read from the disk, not from OSD memory.
        --osd-memory-target 1G --bluestore-cache-autotune false --bluestore-cache-size 256M
    )
    osd_add "$DISK_OSD_ID" "${opts[@]}"
    quiet ceph_ osd crush add-bucket disk-root root
    quiet ceph_ osd crush add-bucket disk-host host
    quiet ceph_ osd crush move disk-host root=disk-root
    quiet ceph_ osd crush add "osd.$DISK_OSD_ID" 1.0 host=disk-host
    quiet ceph_ osd crush rule create-replicated disk-rule disk-root osd
    quiet ceph_ osd pool create "$DISK_POOL" 32 32 replicated disk-rule
    timeout 120 rbd --conf "$CONF" pool init "$DISK_POOL" ||
        die "rbd pool init $DISK_POOL timed out or failed (PGs not active?), see $LOGS/osd.$DISK_OSD_ID.log"
    client_caps
    log "osd.$DISK_OSD_ID (BlueStore, ${gib} GiB sparse file $DISK_OSD_BLOCK) up in $(secs_since "$t0") s, pool $DISK_POOL"
}

cmd_disk_osd_down() {
    lab_ceph_up
    if prints_line "$DISK_POOL" ceph_ osd pool ls; then
        quiet ceph_ tell mon.\* injectargs --mon-allow-pool-delete=true
        quiet ceph_ osd pool rm "$DISK_POOL" "$DISK_POOL" --yes-i-really-really-mean-it
        quiet ceph_ tell mon.\* injectargs --mon-allow-pool-delete=false
    fi
    client_caps
    local pid
    pid=$(disk_osd_pid)
    if pid_matches "$pid" ceph-osd "$CONF"; then stop_pids 15 "$pid:ceph-osd:TERM"; fi
    if prints_line "$DISK_OSD_ID" ceph_ osd ls; then
        # Not `osd purge`: without a ceph-mgr (the lab runs none) it hangs.
        quiet ceph_ osd down "$DISK_OSD_ID"
        quiet ceph_ osd crush remove "osd.$DISK_OSD_ID"
        quiet ceph_ auth del "osd.$DISK_OSD_ID"
        quiet ceph_ osd rm "$DISK_OSD_ID"
    fi
    if prints_line disk-rule ceph_ osd crush rule ls; then quiet ceph_ osd crush rule rm disk-rule; fi
    # Host first: a bucket is removed only when empty.
    local bucket
    for bucket in disk-host disk-root; do
        if ceph_ osd crush ls "$bucket" >/dev/null 2>&1; then quiet ceph_ osd crush rm "$bucket"; fi
    done
    rm -rf "$DISK_OSD_DIR" "$DISK_OSD_BLOCK" "$RUN/osd.$DISK_OSD_ID.pid" "$RUN/osd.$DISK_OSD_ID.asok"
    log "osd.$DISK_OSD_ID and pool $DISK_POOL removed"
}

# ---------------------------------------------------------------- RADOS Gateway (S3)

# The object-store target of issue 18: Ceph's own S3 gateway on the lab
# cluster, plain HTTP on RGW_PORT and HTTPS (a lab CA in $LAB_DIR/s3-ca.pem)
# on RGW_TLS_PORT, one user and one bucket. Its pools get 8 PGs each, made
# before the gateway starts: with the default 32 the seven RGW pools and pool
# rbd would pass the monitor's 250 PGs per OSD on the lab's single OSD.
RGW_NAME=client.rgw.lab
RGW_PORT=7480
RGW_TLS_PORT=7443
RGW_USER=vrb-lab
RGW_BUCKET=vrb-lab
RGW_DIR=$CEPH_DIR/rgw
RGW_KEYRING=$CEPH_DIR/rgw.keyring
S3_CREDENTIALS=$LAB_DIR/s3.credentials
S3_CA=$LAB_DIR/s3-ca.pem
RGW_POOLS=(.rgw.root default.rgw.control default.rgw.meta default.rgw.log
    default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec)

rgw_pid() { cat "$RUN/rgw.lab.pid" 2>/dev/null || true; }
rgw_running() { pid_matches "$(rgw_pid)" radosgw "$CONF"; }
rgw_answers() { curl -sf -o /dev/null "http://127.0.0.1:$RGW_PORT/"; }

# A CA and a server certificate for 127.0.0.1 and localhost, so clients are
# tested with a CA file (never with verification off).
rgw_tls_files() {
    [[ -s $RGW_DIR/server.pem && -s $S3_CA ]] && return 0
    ( umask 077
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=virt-rbd-backup lab CA" \
          -keyout "$RGW_DIR/ca.key" -out "$S3_CA" 2>/dev/null
      openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
          -keyout "$RGW_DIR/server.key" -out "$RGW_DIR/server.csr" 2>/dev/null
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$RGW_DIR/server.ext"
      openssl x509 -req -in "$RGW_DIR/server.csr" -CA "$S3_CA" -CAkey "$RGW_DIR/ca.key" -CAcreateserial \
          -days 3650 -extfile "$RGW_DIR/server.ext" -out "$RGW_DIR/server.crt" 2>/dev/null
      cat "$RGW_DIR/server.crt" "$RGW_DIR/server.key" >"$RGW_DIR/server.pem"
    ) || die "could not make the lab's S3 TLS certificate (openssl)"
    chmod 0644 "$S3_CA"
}

# The gateway's section of ceph.conf, appended once (ceph.conf is the lab's).
rgw_conf() {
    grep -qx "\[$RGW_NAME\]" "$CONF" && return 0
    cat >>"$CONF" <<EOF

[$RGW_NAME]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT ssl_endpoint=127.0.0.1:$RGW_TLS_PORT ssl_certificate=$RGW_DIR/server.pem
rgw data = $RGW_DIR
keyring = $RGW_KEYRING
log file = $LOGS/rgw.lab.log
pid file = $RUN/rgw.lab.pid
admin socket = $RUN/rgw.lab.asok
EOF
}

# Writes the user's keys as an AWS shared credentials file (0600): the form
# the tool and the AWS tools read, and never a command line.
rgw_user() {
    [[ -s $S3_CREDENTIALS ]] && return 0
    local json
    json=$(timeout 60 radosgw-admin --conf "$CONF" -n client.admin user info --uid="$RGW_USER" 2>/dev/null ||
        timeout 60 radosgw-admin --conf "$CONF" -n client.admin user create --uid="$RGW_USER" \
            --display-name="virt-rbd-backup lab" 2>>"$LOGS/rgw-admin.log") ||
        die "radosgw-admin user create failed, see $LOGS/rgw-admin.log"
    ( umask 077
      python3 -c 'import json, sys
key = json.load(sys.stdin)["keys"][0]
print("[default]")
print("aws_access_key_id = " + key["access_key"])
print("aws_secret_access_key = " + key["secret_key"])' <<<"$json" >"$S3_CREDENTIALS"
    ) || die "could not read the keys of S3 user $RGW_USER"
}

# curl with the user's keys passed in a config on a pipe, not on its command line.
s3_curl() {
    local ak sk
    ak=$(sed -n 's/^aws_access_key_id = //p' "$S3_CREDENTIALS")
    sk=$(sed -n 's/^aws_secret_access_key = //p' "$S3_CREDENTIALS")
    # RGW checks x-amz-content-sha256, which curl 7.88 does not send by itself.
    curl -sS --aws-sigv4 "aws:amz:default:s3" -K <(printf 'user = "%s:%s"\n' "$ak" "$sk") \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}

rgw_bucket() {
    local code
    code=$(s3_curl -o /dev/null -w '%{http_code}' -I "http://127.0.0.1:$RGW_PORT/$RGW_BUCKET") || true
    [[ $code == 200 ]] && return 0
    s3_curl -f -X PUT -o /dev/null "http://127.0.0.1:$RGW_PORT/$RGW_BUCKET" ||
        die "could not create bucket $RGW_BUCKET on the lab's gateway, see $LOGS/rgw.lab.log"
}

cmd_rgw_up() {
    local t0 p
    t0=$(now_ms)
    lab_ceph_up
    command -v radosgw >/dev/null || die "radosgw not installed (bash lab/install-deps.sh)"
    mkdir -p "$RGW_DIR"
    if ! rgw_running; then
        for p in "${RGW_POOLS[@]}"; do
            if ! prints_line "$p" ceph_ osd pool ls; then
                quiet ceph_ osd pool create "$p" 8 8
                quiet ceph_ osd pool application enable "$p" rgw
            fi
        done
        if [[ ! -s $RGW_KEYRING ]]; then
            ( umask 077
              quiet ceph_ auth get-or-create "$RGW_NAME" mon 'allow rw' osd 'allow rwx' -o "$RGW_KEYRING"
            )
        fi
        rgw_tls_files
        rgw_conf
        # 9>&-: daemons must not inherit the lab lock (see lab_lock).
        radosgw --conf "$CONF" -n "$RGW_NAME" >>"$LOGS/rgw-start.log" 2>&1 9>&- ||
            die "radosgw failed to start, see $LOGS/rgw.lab.log"
    fi
    wait_until 60 "the RADOS Gateway on 127.0.0.1:$RGW_PORT (see $LOGS/rgw.lab.log)" rgw_answers
    rgw_user
    rgw_bucket
    log "RADOS Gateway up in $(secs_since "$t0") s: http://127.0.0.1:$RGW_PORT, https://127.0.0.1:$RGW_TLS_PORT (CA $S3_CA), bucket $RGW_BUCKET, keys in $S3_CREDENTIALS"
}

cmd_rgw_down() {
    local pid p
    lab_ceph_up
    pid=$(rgw_pid)
    if pid_matches "$pid" radosgw "$CONF"; then stop_pids 15 "$pid:radosgw:TERM"; fi
    quiet ceph_ tell mon.\* injectargs --mon-allow-pool-delete=true
    for p in "${RGW_POOLS[@]}"; do
        if prints_line "$p" ceph_ osd pool ls; then quiet ceph_ osd pool rm "$p" "$p" --yes-i-really-really-mean-it; fi
    done
    quiet ceph_ tell mon.\* injectargs --mon-allow-pool-delete=false
    if ceph_ auth get "$RGW_NAME" >/dev/null 2>&1; then quiet ceph_ auth del "$RGW_NAME"; fi
    # The gateway's ceph.conf section stays: harmless without the daemon.
    rm -rf "$RGW_DIR" "$RGW_KEYRING" "$S3_CREDENTIALS" "$S3_CA" "$RUN/rgw.lab.pid" "$RUN/rgw.lab.asok"
    log "RADOS Gateway, its pools, user and bucket removed"
}

cmd_env() {
    local v
    for v in \
        "LAB_DIR=$LAB_DIR" \
        "CEPH_CONF=$CONF" \
        "LAB_CEPH_KEYRING=$ADMIN_KEYRING" \
        "LAB_CEPH_POOL=$POOL" \
        "LAB_CEPH_USER=$CEPH_USER" \
        "LAB_MON_HOST=$MON_HOST" \
        "LAB_LIBVIRT_URI=$URI" \
        "LAB_SECRET_UUID=$SECRET_UUID" \
        "LAB_GUEST_EXEC=$LAB_SRC/guest-exec.sh" \
        "LAB_GUEST_CONSOLE_LOG=$LAB_DIR/lab-guest.console.log" \
        "LAB_GUEST4_CONSOLE_LOG=$LAB_DIR/lab-guest4.console.log" \
        "LAB_OFF_CONSOLE_LOG=$LAB_DIR/lab-off.console.log" \
        "LAB_LOCAL_CONSOLE_LOG=$LAB_DIR/lab-local.console.log" \
        "LAB_DISK_OSD_BLOCK=$DISK_OSD_BLOCK" \
        "LAB_S3_ENDPOINT=http://127.0.0.1:$RGW_PORT" \
        "LAB_S3_TLS_ENDPOINT=https://127.0.0.1:$RGW_TLS_PORT" \
        "LAB_S3_CA=$S3_CA" \
        "LAB_S3_BUCKET=$RGW_BUCKET" \
        "LAB_S3_REGION=default" \
        "LAB_S3_CREDENTIALS=$S3_CREDENTIALS"; do
        printf 'export %s=%q\n' "${v%%=*}" "${v#*=}"
    done
}

usage() {
    sed -n '2,/^set -Eeuo/p' "${BASH_SOURCE[0]}" | sed -e '/^set /d' -e 's/^# \{0,1\}//'
    exit 2
}

# One lab per machine (fixed mon port and domain names): up and down take a
# lock, kept in the cache folder because down removes the work dir.
lab_lock() {
    mkdir -p "$LAB_CACHE"
    exec 9>"$LAB_CACHE/lab.lock"
    flock -w 600 9 || die "another lab.sh up/down still runs after 600s (lock $LAB_CACHE/lab.lock)"
}

case ${1:-} in
    up) need_root; lab_lock; cmd_up ;;
    down) need_root; lab_lock; cmd_down ;;
    status) cmd_status || exit 1 ;;
    env) cmd_env ;;
    disk-osd)
        need_root; lab_lock
        case ${2:-} in
            up) cmd_disk_osd_up "${3:-$DISK_OSD_GIB}" ;;
            down) cmd_disk_osd_down ;;
            *) usage ;;
        esac ;;
    rgw)
        need_root; lab_lock
        case ${2:-} in
            up) cmd_rgw_up ;;
            down) cmd_rgw_down ;;
            *) usage ;;
        esac ;;
    -h|--help|help) usage ;;
    *) usage ;;
esac
