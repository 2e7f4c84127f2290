//! A tree laid out by the writer reads back through the random-access
//! reader; arbitrary bytes never make the decoders panic.

use hoard_archive::format::{decode_root, decode_table, payload_header};
use hoard_archive::{Archive, ArchiveError, Entry, Kind, MetaWriter, Timestamp, Xattr};
use proptest::prelude::*;

fn entry(name: &str, kind: Kind, size: u64) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: Timestamp { sec: 1, nsec: 2 },
        ctime_ns: 3,
        inode: 4,
        size,
        xattrs: Vec::new(),
    }
}

/// root/{a.txt, sub/{b.bin}} with a data stream of two payloads.
fn build() -> (Vec<u8>, u64) {
    let (mut w, head) = MetaWriter::start();
    let mut meta = head.to_vec();
    let data_len = 2 * 16 + 5 + 7;
    let (t, sub_kind) = w.table(&[entry(
        "b.bin",
        Kind::File {
            payload: 21,
            payload_len: 23,
            sparse: false,
        },
        7,
    )]);
    meta.extend_from_slice(&t);
    let (t, root_kind) = w.table(&[
        entry(
            "a.txt",
            Kind::File {
                payload: 0,
                payload_len: 21,
                sparse: false,
            },
            5,
        ),
        entry("sub", sub_kind, 0),
    ]);
    meta.extend_from_slice(&t);
    let mut root = entry("", root_kind, data_len);
    root.xattrs.push(Xattr {
        name: b"user.root".to_vec(),
        value: b"yes".to_vec(),
    });
    meta.extend_from_slice(&w.finish(&root));
    (meta, data_len)
}

#[test]
fn lookup_and_listing() {
    let (meta, data_len) = build();
    let mut a = Archive::open(meta, data_len).unwrap();
    assert_eq!(a.root().xattrs.len(), 1);
    let root = a.root().clone();
    let names: Vec<_> = a
        .read_dir(&root)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec![b"a.txt".to_vec(), b"sub".to_vec()]);
    assert_eq!(a.lookup("sub/b.bin").unwrap().size, 7);
    assert_eq!(a.lookup("/sub/").unwrap().name, b"sub");
    assert!(matches!(a.lookup("sub/nope"), Err(ArchiveError::NotFound(p)) if p == "sub/nope"));
    assert!(matches!(
        a.lookup("a.txt/x"),
        Err(ArchiveError::NotADirectory(_))
    ));
    assert_eq!(payload_header(5).len(), 16);
}

#[test]
fn truncated_or_mismatched_streams_are_refused() {
    let (meta, data_len) = build();
    for cut in 0..meta.len() {
        assert!(
            Archive::open(meta[..cut].to_vec(), data_len).is_err(),
            "cut at {cut}"
        );
    }
    assert!(Archive::open(meta.clone(), data_len + 1).is_err());
    // A file pointing beyond the data stream is refused when listed.
    let (mut w, head) = MetaWriter::start();
    let mut m = head.to_vec();
    let (t, k) = w.table(&[entry(
        "x",
        Kind::File {
            payload: 1 << 40,
            payload_len: 16,
            sparse: false,
        },
        0,
    )]);
    m.extend_from_slice(&t);
    m.extend_from_slice(&w.finish(&entry("", k, 0)));
    let mut a = Archive::open(m, 0).unwrap();
    let root = a.root().clone();
    assert!(a.read_dir(&root).is_err());
}

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), at in any::<u64>()) {
        let _ = decode_table(&bytes, at);
        let _ = decode_root(&bytes);
        let _ = Archive::open(bytes.clone(), 0);
    }

    #[test]
    fn entries_round_trip(
        names in proptest::collection::btree_set("[a-zA-Z0-9._-]{1,40}", 1..20),
        mode in 0u32..0o7777,
        uid in any::<u32>(),
        sec in any::<i64>(),
        nsec in 0u32..1_000_000_000,
        xv in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let names: Vec<_> = names.into_iter().filter(|n| n != "." && n != "..").collect();
        let entries: Vec<Entry> = names.iter().enumerate().map(|(i, n)| {
            let kind = match i % 4 {
                0 => Kind::File { payload: i as u64, payload_len: 16 + i as u64, sparse: false },
                1 => Kind::Symlink { target: b"../x".to_vec() },
                2 => Kind::Fifo,
                _ => Kind::CharDev { rdev: i as u64 },
            };
            let size = match i % 4 { 0 => i as u64, 1 => 4, _ => 0 };
            Entry {
                name: n.as_bytes().to_vec(), kind, mode, uid, gid: uid ^ 1,
                mtime: Timestamp { sec, nsec }, ctime_ns: sec, inode: uid as u64, size,
                xattrs: vec![Xattr { name: b"user.p".to_vec(), value: xv.clone() }],
            }
        }).collect();
        let (mut w, _) = MetaWriter::start();
        let (bytes, _) = w.table(&entries);
        prop_assert_eq!(decode_table(&bytes, u64::MAX).unwrap(), entries);
    }
}
