#!/usr/bin/env bash
# Runs a shell command inside a lab guest through the QEMU guest agent
# (guest-exec with capture-output, then guest-exec-status until it exits).
# Prints the command's stdout and stderr and exits with its exit code, so
# tests can write and check data in a guest:
#
#   lab/guest-exec.sh lab-guest 'echo x > /mnt/a/f && sync'
#   lab/guest-exec.sh --stdin lab-guest 'cat > /mnt/b/in.bin' < small.bin
#
# Options: --timeout S (default $GUEST_EXEC_TIMEOUT or 60; exit 124 when the
# command runs longer), --stdin (send this script's stdin as the command's
# input; it travels on virsh's command line, so keep it under ~64 KiB).
# Uses $LAB_LIBVIRT_URI (default qemu:///system).
set -euo pipefail

URI=${LAB_LIBVIRT_URI:-qemu:///system}
TIMEOUT=${GUEST_EXEC_TIMEOUT:-60}
STDIN=0

die() { printf 'guest-exec: error: %s\n' "$*" >&2; exit 125; }
usage() { echo "usage: $0 [--timeout S] [--stdin] DOMAIN 'shell command'" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --timeout) [[ $# -ge 2 ]] || usage; TIMEOUT=$2; shift 2 ;;
        --stdin) STDIN=1; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) usage ;;
        *) break ;;
    esac
done
[[ $# -eq 2 ]] || usage
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds, got '$TIMEOUT'"
DOMAIN=$1
COMMAND=$2

agent() { timeout 30 virsh -q -c "$URI" qemu-agent-command --timeout 10 "$DOMAIN" "$1"; }

input=""
if [[ $STDIN == 1 ]]; then
    input=$(base64 -w0)
fi

request=$(python3 - "$COMMAND" "$input" <<'EOF'
import json, sys
args = {"path": "/bin/sh", "arg": ["-c", sys.argv[1]], "capture-output": True}
if sys.argv[2]:
    args["input-data"] = sys.argv[2]
print(json.dumps({"execute": "guest-exec", "arguments": args}))
EOF
)
reply=$(agent "$request") || die "guest-exec failed on $DOMAIN (is the domain running and its agent up?)"
pid=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["return"]["pid"])' <<<"$reply") ||
    die "unexpected guest-exec reply: $reply"

deadline=$(($(date +%s%N) / 1000000 + TIMEOUT * 1000))
delay=0.02
while :; do
    status=$(agent "{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":$pid}}") ||
        die "guest-exec-status failed on $DOMAIN"
    [[ $status =~ \"exited\":\ *true ]] && break
    if (($(date +%s%N) / 1000000 > deadline)); then
        printf 'guest-exec: command still running in %s after %ss (guest pid %s)\n' "$DOMAIN" "$TIMEOUT" "$pid" >&2
        exit 124
    fi
    sleep "$delay"
    case $delay in 0.02) delay=0.05 ;; 0.05) delay=0.1 ;; 0.1) delay=0.2 ;; esac
done

# Writes out-data to stdout and err-data to stderr (bytes as they are) and
# exits with the command's code, or 128+signal when a signal ended it.
exec python3 -c '
import base64, json, sys
r = json.loads(sys.argv[1])["return"]
sys.stdout.flush()
sys.stdout.buffer.write(base64.b64decode(r.get("out-data", "")))
sys.stdout.buffer.flush()
sys.stderr.buffer.write(base64.b64decode(r.get("err-data", "")))
sys.stderr.buffer.flush()
if r.get("out-truncated") or r.get("err-truncated"):
    print("guest-exec: output was truncated by the agent", file=sys.stderr)
if "signal" in r:
    sys.exit(128 + r["signal"])
sys.exit(r.get("exitcode", 0))
' "$status"
