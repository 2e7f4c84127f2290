//! Snapshot lifecycle on a real directory: create, lock, finish, list,
//! reopen, and what a failed or abandoned file leaves behind.

use hoard_datastore::*;
use hoard_types::{Digest, FileName, SnapshotPath};

/// No writer registration: these tests run no GC.
const T0: FsTime = FsTime(0);

fn snap(s: &str) -> SnapshotPath {
    s.parse().unwrap()
}

fn name(s: &str) -> FileName {
    FileName::new(s).unwrap()
}

fn store_chunk(ds: &Datastore, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    ds.chunks().insert(&d, data, T0).unwrap();
    d
}

#[test]
fn fixed_file_round_trip_and_listing() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(&dir.path().join("ds")).unwrap();
    let a = store_chunk(&ds, &[1u8; 4096]);
    let b = store_chunk(&ds, &[2u8; 100]);
    let p = snap("vm/100/2019-04-23T12:23:36Z");
    let mut w = ds.begin_snapshot(&p, true).unwrap();
    let mut f = w
        .start_file(&name("d.img"), FileKind::Fixed, true, 4196, 4096)
        .unwrap();
    assert_eq!(f.rel_path(), "vm/100/2019-04-23T12:23:36Z/d.img.fidx");
    // Wrong size for the slot.
    assert!(matches!(
        f.add_fixed(ds.chunks(), 0, &b, T0),
        Err(Error::SlotSize { .. })
    ));
    assert!(matches!(
        f.add_fixed(ds.chunks(), 0, &Digest([9; 32]), T0),
        Err(Error::ChunkMissing(_))
    ));
    f.add_fixed(ds.chunks(), 1, &b, T0).unwrap();
    f.add_fixed(ds.chunks(), 0, &a, T0).unwrap();
    // Not visible before it is finished.
    assert!(matches!(
        ds.open_index(f.rel_path()),
        Err(Error::IndexNotFound(_))
    ));
    let rel = f.rel_path().to_string();
    let m = f.finish().unwrap();
    w.record(m).unwrap();
    assert_eq!(w.close().unwrap(), SnapshotState::Complete);

    let r = ds.open_index(&rel).unwrap();
    r.verify_checksum().unwrap();
    assert_eq!(r.digests(0, 2).unwrap(), vec![a, b]);
    let list = ds.list_snapshots().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].manifest.files[0].file_size, 4196);
    assert!(list[0].manifest.files[0].raw);

    // Reopening works; EXCL refuses; a finished name cannot be rewritten.
    let ds = Datastore::open(&dir.path().join("ds")).unwrap();
    assert!(matches!(
        ds.begin_snapshot(&p, true),
        Err(Error::SnapshotExists(_))
    ));
    let mut w = ds.begin_snapshot(&p, false).unwrap();
    assert!(matches!(
        w.start_file(&name("d.img"), FileKind::Fixed, true, 1, 4096),
        Err(Error::FileExists { .. })
    ));
    assert_eq!(w.close().unwrap(), SnapshotState::Complete);
}

#[test]
fn second_writer_is_busy_and_lock_dies_with_writer() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(dir.path()).unwrap();
    let p = snap("ct/7/2020-01-01T00:00:00Z");
    let w = ds.begin_snapshot(&p, false).unwrap();
    assert!(matches!(
        ds.begin_snapshot(&p, false),
        Err(Error::SnapshotBusy(_))
    ));
    drop(w);
    ds.begin_snapshot(&p, false).unwrap();
}

#[test]
fn abandoned_file_makes_snapshot_incomplete_and_empty_snapshot_vanishes() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(dir.path()).unwrap();
    let c = store_chunk(&ds, b"0123456789");
    let p = snap("host/h/2021-05-05T05:05:05Z");

    // Only a failed file: the snapshot is removed again.
    let mut w = ds.begin_snapshot(&p, true).unwrap();
    let f = w
        .start_file(&name("x"), FileKind::Fixed, true, 4096, 4096)
        .unwrap();
    assert!(matches!(f.finish(), Err(Error::SlotMissing(0))));
    w.abandon("x.fidx");
    w.close().unwrap();
    assert!(!ds.snapshot_dir(&p).exists());
    assert!(ds.list_snapshots().unwrap().is_empty());

    // One good file, one abandoned: incomplete.
    let mut w = ds.begin_snapshot(&p, true).unwrap();
    let mut f = w
        .start_file(&name("root"), FileKind::Dynamic, false, 0, 0)
        .unwrap();
    f.add_dynamic(ds.chunks(), 0, &c, T0).unwrap();
    assert!(matches!(
        f.add_dynamic(ds.chunks(), 5, &c, T0),
        Err(Error::DynamicOffset { .. })
    ));
    f.add_dynamic(ds.chunks(), 10, &c, T0).unwrap();
    let m = f.finish().unwrap();
    assert_eq!(m.file_size, 20);
    w.record(m).unwrap();
    let g = w
        .start_file(&name("other"), FileKind::Dynamic, false, 0, 0)
        .unwrap();
    assert!(matches!(
        w.start_file(&name("other"), FileKind::Dynamic, false, 0, 0),
        Err(Error::FileBusy { .. })
    ));
    drop(g);
    w.abandon("other.didx");
    assert_eq!(w.close().unwrap(), SnapshotState::Incomplete);
    let m = ds.load_manifest(&p).unwrap();
    assert_eq!(m.state, SnapshotState::Incomplete);
    assert_eq!(m.files.len(), 1);
    // No temp files remain.
    assert_eq!(
        std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(),
        0
    );
}

#[test]
fn refuses_foreign_directory_and_bad_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious"), b"x").unwrap();
    assert!(matches!(
        Datastore::open_or_create(dir.path()),
        Err(Error::NotADatastore(_))
    ));
    let ds = Datastore::open_or_create(&dir.path().join("ds")).unwrap();
    for bad in [
        "../precious",
        "vm/100/2019-04-23T12:23:36Z/../../../../precious",
        "/etc/passwd",
        "vm/100/2019-04-23T12:23:36Z/manifest.json",
        "",
        "vm/100/2019-04-23T12:23:36Z/",
    ] {
        assert!(
            matches!(ds.open_index(bad), Err(Error::IndexNotFound(_))),
            "{bad}"
        );
    }
}
