#!/usr/bin/env bash
# The main job end to end on a fresh Debian 12 machine, as root: set everything up, back up
# every domain of the lab into a repository, then list what was written.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
repo=${VRB_DEMO_REPO:-/var/lib/virt-rbd-backup-demo}
printf '\n== Backup of all lab domains into %s\n' "$repo"
status=0
virt-rbd-backup backup --repo "$repo" || status=$?
printf '\n== What the repository holds\n'
virt-rbd-backup list --repo "$repo"
exit $status
