#!/usr/bin/env bash
# First backups of the generated dataset by bupstash (Rust, encrypts on
# the client) and by hoard encrypted, in one run on the same data and
# disk, for reference numbers side by side (bupstash is not a dependency:
# `apt-get install libsodium-dev && cargo install bupstash --locked`).
#
#   bench/bupstash_compare.sh [DIR]     (default: a new directory in /tmp)
#
# Needs `cargo build --release` first (target/release/hoard). Prints
# seconds per step and the repository's or datastore's size on disk
# after it. Steps, each after `sync`: first tree backup, then first image
# backup, into one repository (bupstash) or datastore (hoard).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gen="$here/../../shared/bench/gen_dataset.py"
hoard="$here/../target/release/hoard"
dir=${1:-$(mktemp -d /tmp/bupstash-compare.XXXXXX)}
[ -d "$dir/data/tree" ] || python3 "$gen" create "$dir/data" 2>/dev/null

size() { du -s --block-size=1 "$1" | awk '{printf "%.1f MiB", $1 / 1048576}'; }
step() {
    local name=$1 store=$2; shift 2
    sync
    local t0=$(date +%s.%N)
    "$@" >/dev/null
    local t1=$(date +%s.%N)
    printf '%-32s %6.2f s   store %s\n' "$name" "$(echo "$t1 - $t0" | bc)" "$(size "$store")"
}

# bupstash: its own key, repository on the same disk.
export BUPSTASH_REPOSITORY="$dir/bupstash-repo" BUPSTASH_KEY="$dir/bupstash.key"
rm -rf "$BUPSTASH_REPOSITORY" "$BUPSTASH_KEY" "$dir/bupstash-cache"
export XDG_CACHE_HOME="$dir/bupstash-cache"
bupstash init >/dev/null
bupstash new-key -o "$BUPSTASH_KEY"
cd "$dir/data"
step "bupstash: first tree backup" "$BUPSTASH_REPOSITORY" bupstash put tree
step "bupstash: first image backup" "$BUPSTASH_REPOSITORY" bupstash put image.raw

# hoard: a server on a fresh datastore, an unprotected key.
rm -rf "$dir/hoard"
mkdir -p "$dir/hoard"
"$hoard" key create --no-passphrase "$dir/hoard/key.json" >/dev/null 2>&1
. "$here/hoard_server.sh"
start_hoard_server "$hoard" "$dir/hoard"
export HOARD_KEY="$dir/hoard/key.json"
step "hoard: first tree backup" "$dir/hoard/ds" "$hoard" backup -q --type host --id tree root=tree
step "hoard: first image backup" "$dir/hoard/ds" "$hoard" backup -q --type vm --id img image.raw=image.raw
