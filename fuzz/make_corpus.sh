#!/usr/bin/env bash
# make_corpus.sh: rewrites the committed seed corpora fuzz/seeds/TARGET/
# of snapshot_entry, archive, chunk_decode, delta_decode, nbd_reply,
# key_file, index_file and manifest (decode_packet and http_request keep theirs). CI's fuzz run
# (.ci/run) starts every target from its seeds.
#
# The seeds are small valid and near-valid inputs, laid out as each
# target's top comment says (index_file and chunk_decode start with a
# flag byte, archive with the data stream's length). They come from:
#   - examples/make_corpus.rs, which encodes them with the project's own
#     writers (index writers, Manifest::encode, seal::make, MetaWriter,
#     blob and key file encoders), with fixed keys, ids and times;
#   - the format fixtures in crates/cli/tests/fixtures, written by earlier
#     releases: the first snapshot's manifest and index files and the
#     three smallest chunks of datastore-plain and datastore-encrypted,
#     and key.json.
# Deterministic: running it again writes the same files, so a diff after
# a run means a format changed. Needs cargo and tar; run from anywhere.
set -euo pipefail
cd "$(dirname "$0")"

fixtures=../crates/cli/tests/fixtures
for target in snapshot_entry archive chunk_decode delta_decode nbd_reply key_file index_file manifest; do
    rm -rf "seeds/$target"
    mkdir -p "seeds/$target"
done

cargo run --quiet --example make_corpus -- seeds

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# with_flag FLAG FILE OUT: OUT is the byte FLAG (octal) followed by FILE.
with_flag() {
    { printf "\\$1"; cat "$2"; } >"$3"
}
for kind in plain encrypted; do
    mkdir "$tmp/$kind"
    tar -xzf "$fixtures/datastore-$kind.tar.gz" -C "$tmp/$kind"
    snap="$tmp/$kind/ds/vm/1/2026-11-01T00:00:00Z"
    cp "$snap/manifest.json" "seeds/manifest/fixture-$kind"
    cp "$snap/manifest.json" "seeds/snapshot_entry/fixture-$kind"
    with_flag 000 "$snap/disk.img.fidx" "seeds/index_file/fixture-$kind-disk.img.fidx"
    with_flag 001 "$snap/root.hmeta.didx" "seeds/index_file/fixture-$kind-root.hmeta.didx"
    with_flag 001 "$snap/root.hdata.didx" "seeds/index_file/fixture-$kind-root.hdata.didx"
    # Flag 0 decodes a chunk as stored; flag 1 gives an encrypted one the
    # fuzz key's id, so decryption gets as far as the GCM tag.
    flag=000
    [ "$kind" = encrypted ] && flag=001
    find "$tmp/$kind/ds/.chunks" -type f -printf '%s %p\n' | LC_ALL=C sort -n | head -3 |
        while read -r _ path; do
            with_flag "$flag" "$path" "seeds/chunk_decode/fixture-$kind-$(basename "$path" | cut -c1-12)"
        done
done
cp "$fixtures/key.json" seeds/key_file/fixture-key.json

for target in snapshot_entry archive chunk_decode delta_decode nbd_reply key_file index_file manifest; do
    echo "seeds/$target: $(ls "seeds/$target" | wc -l) files, $(du -sk "seeds/$target" | cut -f1) KiB"
done
