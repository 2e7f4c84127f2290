#!/usr/bin/env bash
# nbd_bitmap.sh: incremental backups of the shared dataset's 2 GiB image
# from a qemu-nbd export, with its dirty bitmap and without, after the
# scattered and after the clustered mutation: time and bytes read.
#
# The image is converted to qcow2 with a persistent bitmap b1; a first
# backup records that b1 starts there (new-bitmap=b1). The mutation's
# writes are replayed through QEMU's block layer (qemu-io, same 4 KiB
# blocks as gen_dataset.py's, with a fill pattern), so b1 marks them.
# Then two incrementals of the same export: one reads b1, one reads all.
#
# Needs qemu-utils and python3; builds hoard with --release.
# Usage: bench/nbd_bitmap.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/hoard_server.sh
cargo build --release -q -p hoard
hoard=$PWD/target/release/hoard
gen=$PWD/../shared/bench/gen_dataset.py
work=$(mktemp -d "${1:-/tmp}/nbd-bitmap.XXXXXX")
python3 "$gen" create "$work/pristine" 2>/dev/null

nbd_pid=
start_hoard_server "$hoard" "$work/server"
# (start_hoard_server set its own EXIT trap: this one replaces it.)
trap 'kill $hoard_server_pid $nbd_pid 2>/dev/null || true; rm -rf "$work"' EXIT
serve() { # serve QCOW: qemu-nbd on $work/nbd.sock with bitmap b1
    [ -n "$nbd_pid" ] && kill "$nbd_pid" 2>/dev/null && wait "$nbd_pid" 2>/dev/null || true
    rm -f "$work/nbd.sock"
    qemu-nbd --read-only --persistent --shared=4 --format=qcow2 --export-name=disk \
        --bitmap=b1 --socket="$work/nbd.sock" "$1" >/dev/null 2>&1 &
    nbd_pid=$!
    for _ in $(seq 100); do [ -S "$work/nbd.sock" ] && break; sleep 0.1; done
}
uri="nbd+unix:///disk?socket=$work/nbd.sock"
backup() { # backup ID TIME EXTRA-QUERY -> "seconds bytes_read"
    local start end out
    start=$(date +%s.%N)
    out=$("$hoard" backup --type vm --id "$1" --time "$2" -q --output-format json \
        "drive-scsi0.img=$uri$3")
    end=$(date +%s.%N)
    echo "$(echo "$end - $start" | bc) $(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["bytes_read"])')"
}

echo "style      backup            seconds   bytes read"
for style in scattered clustered; do
    dir=$work/$style
    mkdir -p "$dir"
    cp --sparse=always "$work/pristine/image.raw" "$dir/image.raw"
    cp -a "$work/pristine/tree" "$dir/tree"
    qemu-img convert -f raw -O qcow2 "$dir/image.raw" "$dir/disk.qcow2"
    qemu-img bitmap --add --enable "$dir/disk.qcow2" b1
    serve "$dir/disk.qcow2"
    backup "${style}1" 1000 "&new-bitmap=b1" >/dev/null
    backup "${style}2" 1000 "" >/dev/null
    kill "$nbd_pid"; wait "$nbd_pid" 2>/dev/null || true; nbd_pid=
    # The mutation, on the raw copy; its changed blocks replayed on the
    # qcow2 through qemu-io.
    python3 "$gen" mutate "$dir" --image-style "$style" 2>/dev/null
    python3 - "$work/pristine/image.raw" "$dir/image.raw" >"$dir/writes" <<'EOF'
import sys
a, b = open(sys.argv[1], "rb"), open(sys.argv[2], "rb")
off = 0
while True:
    x, y = a.read(1 << 20), b.read(1 << 20)
    if not x:
        break
    for i in range(0, len(x), 4096):
        if x[i:i + 4096] != y[i:i + 4096]:
            print("write -P %d %d 4096" % (1 + (off + i) // 4096 % 250, off + i))
    off += len(x)
EOF
    qemu-io -f qcow2 "$dir/disk.qcow2" <"$dir/writes" >/dev/null
    serve "$dir/disk.qcow2"
    # Without first: any cost of the first read after the writes (page
    # cache) falls on it, not on the bitmap.
    read -r s2 r2 < <(backup "${style}2" 2000 "")
    read -r s1 r1 < <(backup "${style}1" 2000 "&bitmap=b1")
    printf "%-10s with bitmap    %8.2f %12d\n" "$style" "$s1" "$r1"
    printf "%-10s without        %8.2f %12d\n" "$style" "$s2" "$r2"
    printf "%-10s (%d blocks written)\n" "$style" "$(wc -l <"$dir/writes")"
done
