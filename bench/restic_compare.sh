#!/usr/bin/env bash
# The tree steps of `cargo bench -p hoard --bench e2e`, done by restic on
# the same generated dataset and disk, for reference numbers measured
# beside hoard's (restic is not a dependency: `apt-get install restic`).
#
#   bench/restic_compare.sh [DIR]     (default: a new directory in /tmp)
#
# Prints seconds per step and the repository's size on disk after each
# backup. Same order as the e2e benchmark: first backup, unchanged
# backup, mutation (gen_dataset.py mutate), backup, full restore,
# single-file restore.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gen="$here/../../shared/bench/gen_dataset.py"
dir=${1:-$(mktemp -d /tmp/restic-compare.XXXXXX)}
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$dir/repo"
[ -d "$dir/data/tree" ] || python3 "$gen" create "$dir/data" 2>/dev/null
restic init -q
step() {
    local name=$1; shift
    sync
    local t0=$(date +%s.%N)
    "$@" >/dev/null
    local t1=$(date +%s.%N)
    printf '%-28s %6.2f s' "$name" "$(echo "$t1 - $t0" | bc)"
    if [ "${name#restic: restore}" = "$name" ]; then
        printf '   repository %7.1f MiB' "$(du -s --block-size=1 "$RESTIC_REPOSITORY" | awk '{print $1 / 1048576}')"
    fi
    echo
}
cd "$dir/data"
step "restic: first backup" restic backup -q tree
step "restic: unchanged" restic backup -q tree
python3 "$gen" mutate "$dir/data" 2>/dev/null
step "restic: after 2% mutation" restic backup -q tree
rm -rf "$dir/restored"
step "restic: restore, full" restic restore -q latest --target "$dir/restored"
rm -rf "$dir/one"
step "restic: restore, one file" restic restore -q latest --target "$dir/one" --include "$dir/data/tree/big/L010.log"
