#!/usr/bin/env bash
# Ten incrementals of the generated dataset's tree as it changes
# (gen_dataset.py mutate, about 2% of the files per round): how long the
# data stream grows against the tree (dead bytes carried in reused
# chunks), how many unchanged files are read again to bound that, and
# what a full restore of the last snapshot downloads.
#
#   bench/tree_churn.sh [DIR] [HOARD_BINARY]   (default: a new directory
#                                                in /tmp, target/release/hoard)
#
# Prints one line per backup and the restore's line. CHUNK_SIZE=256K
# backs up with that average chunk size instead of the default. A second binary
# (an older build) run on a copy of the same DIR gives the figures before
# a change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gen="$here/../../shared/bench/gen_dataset.py"
dir=${1:-$(mktemp -d /tmp/tree-churn.XXXXXX)}
hoard=${2:-"$here/../target/release/hoard"}
[ -d "$dir/data/tree" ] || python3 "$gen" create "$dir/data" 2>/dev/null
# The mutations are applied to a copy, so DIR can be reused.
rm -rf "$dir/work" "$dir/hoard"
cp -a "$dir/data" "$dir/work"
. "$here/hoard_server.sh"
start_hoard_server "$hoard" "$dir/hoard"

for round in $(seq 0 10); do
    [ "$round" -gt 0 ] && python3 "$gen" mutate "$dir/work" --round "$round" >/dev/null 2>&1
    sync
    t0=$(date +%s.%N)
    "$hoard" backup -q --type host --id churn --time "2026-01-01T00:$(printf %02d "$round"):00Z" \
        ${CHUNK_SIZE:+--chunk-size "$CHUNK_SIZE"} \
        --output-format json root="$dir/work/tree" >"$dir/hoard/report.json"
    secs=$(echo "$(date +%s.%N) - $t0" | bc)
    python3 - "$round" "$dir/hoard/report.json" "$secs" <<'EOF'
import json, sys
t = json.load(open(sys.argv[2]))["trees"][0]
secs = float(sys.argv[3])
tree, stream = t["bytes_total"], t["data"]["size"]
print(f"backup {sys.argv[1]:>2} {secs:5.2f} s: tree {tree / 2**20:7.1f} MiB, stream {stream / 2**20:7.1f} MiB"
      f" ({stream / tree:.3f}x), files {t['files']}, reused unread {t['files_unchanged']},"
      f" read again {t.get('files_reread', 0)}, read {t['bytes_read'] / 2**20:.1f} MiB,"
      f" uploaded {t['data']['bytes_uploaded'] / 2**20:.1f} MiB")
EOF
done
rm -rf "$dir/restored"
"$hoard" restore -q host/churn/latest root "$dir/restored" --output-format json >"$dir/hoard/restore.json"
python3 - "$dir/hoard/restore.json" "$dir/hoard/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
tree = json.load(open(sys.argv[2]))["trees"][0]["bytes_total"]
got = r["data_bytes_downloaded"]
print(f"full restore: downloaded {got / 2**20:.1f} MiB for {tree / 2**20:.1f} MiB of files ({got / tree:.3f}x)")
EOF
