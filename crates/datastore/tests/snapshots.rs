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

/// A complete snapshot `p` with one dynamic file `f` of chunk `c`.
fn write_one_file(ds: &Datastore, p: &SnapshotPath, c: &Digest) {
    let mut w = ds.begin_snapshot(p).unwrap();
    let mut f = w
        .start_file(&name("f"), FileKind::Dynamic, false, 0, 0)
        .unwrap();
    f.add_dynamic(ds.chunks(), 0, c, T0).unwrap();
    w.record(f.finish().unwrap()).unwrap();
    w.close().unwrap();
}

#[test]
fn fixed_file_round_trip_and_listing() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(&dir.path().join("ds")).unwrap();
    let a = store_chunk(&ds, &[1u8; 4096]);
    let b = store_chunk(&ds, &[2u8; 100]);
    let p = snap("vm/100/2019-04-23T12:23:36Z");
    let mut w = ds.begin_snapshot(&p).unwrap();
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
    // A finished name cannot be rewritten.
    assert!(matches!(
        w.start_file(&name("d.img"), FileKind::Fixed, true, 1, 4096),
        Err(Error::FileExists { .. })
    ));
    assert_eq!(w.close().unwrap(), SnapshotState::Complete);

    let r = ds.open_index(&rel).unwrap();
    r.verify_checksum().unwrap();
    assert_eq!(r.digests(0, 2).unwrap(), vec![a, b]);
    let list = ds.list_snapshots().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].manifest.files[0].file_size, 4196);
    assert!(list[0].manifest.files[0].raw);

    // Reopening works; a finished snapshot is immutable.
    let ds = Datastore::open(&dir.path().join("ds")).unwrap();
    assert!(matches!(
        ds.begin_snapshot(&p),
        Err(Error::SnapshotExists(_))
    ));
    assert_eq!(ds.load_manifest(&p).unwrap().state, SnapshotState::Complete);
}

#[test]
fn second_writer_is_busy_and_lock_dies_with_writer() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(dir.path()).unwrap();
    let p = snap("ct/7/2020-01-01T00:00:00Z");
    let w = ds.begin_snapshot(&p).unwrap();
    assert!(matches!(ds.begin_snapshot(&p), Err(Error::SnapshotBusy(_))));
    drop(w);
    // The writer is gone: the snapshot is no longer busy, and still not
    // writable again.
    assert!(!ds.writer_active(&p).unwrap());
    assert!(matches!(
        ds.begin_snapshot(&p),
        Err(Error::SnapshotExists(_))
    ));
}

#[test]
fn snapshot_times_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(dir.path()).unwrap();
    let c = store_chunk(&ds, b"abc");
    let finish = |p: &SnapshotPath| write_one_file(&ds, p, &c);
    finish(&snap("vm/1/2024-01-01T00:00:00Z"));
    for older in ["2023-12-31T23:59:59Z", "2020-01-01T00:00:00Z"] {
        let p = snap(&format!("vm/1/{older}"));
        assert!(matches!(
            ds.begin_snapshot(&p),
            Err(Error::SnapshotNotNewer { .. })
        ));
        // The refused snapshot leaves nothing behind.
        assert!(!ds.snapshot_dir(&p).exists());
    }
    // Another group is not held back; a newer time is fine.
    finish(&snap("vm/2/2020-01-01T00:00:00Z"));
    finish(&snap("vm/1/2024-01-01T00:00:01Z"));
    // Far in the future: refused; within the allowed skew: fine.
    let now = hoard_types::SnapshotTime::now().epoch();
    let far = hoard_types::SnapshotTime::from_epoch(now + MAX_CLOCK_SKEW_SECS + 120).unwrap();
    let p = snap(&format!("vm/1/{far}"));
    assert!(matches!(
        ds.begin_snapshot(&p),
        Err(Error::SnapshotInFuture { .. })
    ));
    assert!(!ds.snapshot_dir(&p).exists());
    let near = hoard_types::SnapshotTime::from_epoch(now + 60).unwrap();
    finish(&snap(&format!("vm/1/{near}")));
    assert_eq!(ds.list_snapshots().unwrap().len(), 4);
}

#[test]
fn groups_have_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(dir.path()).unwrap();
    let g: hoard_types::BackupGroup = "vm/5".parse().unwrap();
    assert!(!ds.group_exists(&g).unwrap());
    assert_eq!(ds.group_owner(&g).unwrap(), None);
    ds.claim_group(&g, "alice").unwrap();
    ds.claim_group(&g, "alice").unwrap();
    assert!(matches!(
        ds.claim_group(&g, "mallory"),
        Err(Error::Owner { .. })
    ));
    assert_eq!(ds.group_owner(&g).unwrap().as_deref(), Some("alice"));
    ds.set_group_owner(&g, "bob").unwrap();
    assert_eq!(ds.group_owner(&g).unwrap().as_deref(), Some("bob"));
    assert!(ds.group_exists(&g).unwrap());
}

#[test]
fn symlinks_planted_in_the_datastore_are_refused() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(&dir.path().join("ds")).unwrap();
    let c = store_chunk(&ds, b"abc");
    let p = snap("vm/1/2024-01-01T00:00:00Z");
    write_one_file(&ds, &p, &c);
    let root = dir.path().join("ds");
    let rel = "vm/1/2024-01-01T00:00:00Z/f.didx";
    ds.open_index(rel).unwrap();

    // The index replaced by a link to a file outside.
    let index = root.join(rel);
    std::fs::rename(&index, outside.path().join("f.didx")).unwrap();
    symlink(outside.path().join("f.didx"), &index).unwrap();
    let err = ds.open_index(rel).unwrap_err().to_string();
    assert!(err.contains("opening index"), "{err}");
    std::fs::remove_file(&index).unwrap();
    std::fs::rename(outside.path().join("f.didx"), &index).unwrap();
    ds.open_index(rel).unwrap();

    // The group directory moved outside and linked back: every way in is
    // refused, and nothing is created outside.
    let group = root.join("vm/1");
    std::fs::rename(&group, outside.path().join("g")).unwrap();
    symlink(outside.path().join("g"), &group).unwrap();
    assert!(matches!(ds.open_index(rel), Err(Error::Symlink(_))));
    assert!(matches!(ds.load_manifest(&p), Err(Error::Symlink(_))));
    assert!(matches!(ds.pin_snapshot(&p), Err(Error::Symlink(_))));
    let later = snap("vm/1/2025-01-01T00:00:00Z");
    assert!(matches!(ds.begin_snapshot(&later), Err(Error::Symlink(_))));
    assert!(!outside.path().join("g/2025-01-01T00:00:00Z").exists());
    assert!(matches!(
        ds.claim_group(&"vm/1".parse().unwrap(), "x"),
        Err(Error::Symlink(_))
    ));
    // Listing skips the linked group rather than following it.
    assert!(ds.list_snapshots().unwrap().is_empty());

    // A chunk file replaced by a link.
    let chunk = ds.chunks().chunk_path(&c);
    std::fs::remove_file(&chunk).unwrap();
    symlink("/etc/passwd", &chunk).unwrap();
    let err = ds.chunks().load(&c).unwrap_err().to_string();
    assert!(
        !err.contains("root:"),
        "nothing of the target is shown: {err}"
    );
}

#[test]
fn abandoned_file_makes_snapshot_incomplete_and_empty_snapshot_vanishes() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(dir.path()).unwrap();
    let c = store_chunk(&ds, b"0123456789");
    let p = snap("host/h/2021-05-05T05:05:05Z");

    // Only a failed file: the snapshot is removed again.
    let mut w = ds.begin_snapshot(&p).unwrap();
    let f = w
        .start_file(&name("x"), FileKind::Fixed, true, 4096, 4096)
        .unwrap();
    assert!(matches!(f.finish(), Err(Error::SlotMissing(0))));
    w.abandon("x.fidx");
    w.close().unwrap();
    assert!(!ds.snapshot_dir(&p).exists());
    assert!(ds.list_snapshots().unwrap().is_empty());

    // One good file, one abandoned: incomplete.
    let mut w = ds.begin_snapshot(&p).unwrap();
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
    assert_eq!(temp_files(dir.path()), 0);
}

/// Temp files under `.tmp/`, loose or in processes' directories (their
/// `lock` files aside).
fn temp_files(root: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(root.join(".tmp")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += std::fs::read_dir(e.path())
                .unwrap()
                .filter(|f| f.as_ref().unwrap().file_name() != "lock")
                .count();
        } else {
            n += 1;
        }
    }
    n
}

#[test]
fn snapshots_of_a_dead_writer_are_shown_and_settled_truthfully() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(dir.path()).unwrap();
    let c = store_chunk(&ds, b"0123456789");
    let with_file = snap("host/a/2021-05-05T05:05:05Z");
    let empty = snap("host/b/2021-05-05T05:05:05Z");
    let alive = snap("host/c/2021-05-05T05:05:05Z");

    // A writer that dies (dropped unclosed: its lock goes, its manifest
    // still says writing) after one finished file and one started...
    let mut w = ds.begin_snapshot(&with_file).unwrap();
    let mut f = w
        .start_file(&name("root"), FileKind::Dynamic, false, 0, 0)
        .unwrap();
    f.add_dynamic(ds.chunks(), 0, &c, T0).unwrap();
    w.record(f.finish().unwrap()).unwrap();
    let _started = w
        .start_file(&name("other"), FileKind::Dynamic, false, 0, 0)
        .unwrap();
    drop(_started);
    drop(w);
    // ...one that dies before finishing any...
    drop(ds.begin_snapshot(&empty).unwrap());
    // ...and one that lives.
    let live = ds.begin_snapshot(&alive).unwrap();
    for p in [&with_file, &empty, &alive] {
        assert_eq!(ds.load_manifest(p).unwrap().state, SnapshotState::Writing);
    }

    // Listings show the truth before anything is written.
    let shown = ds.list_snapshots_where(|_| true, |_, _| {}).unwrap();
    let states: Vec<_> = shown
        .iter()
        .map(|s| (s.path.to_string(), s.manifest.state))
        .collect();
    assert_eq!(
        states,
        [
            (with_file.to_string(), SnapshotState::Incomplete),
            (alive.to_string(), SnapshotState::Writing),
        ]
    );

    let r = ds.recover().unwrap();
    assert_eq!(r.snapshots_incomplete, [with_file.to_string()]);
    assert_eq!(r.snapshots_removed, [empty.to_string()]);
    let m = ds.load_manifest(&with_file).unwrap();
    assert_eq!(m.state, SnapshotState::Incomplete);
    assert_eq!(m.files.len(), 1);
    assert!(!ds.snapshot_dir(&empty).exists());
    assert!(!dir.path().join("host/b").exists());
    assert_eq!(
        ds.load_manifest(&alive).unwrap().state,
        SnapshotState::Writing
    );
    // Settled once: a second pass finds nothing.
    assert!(ds.recover().unwrap().is_empty());
    drop(live);
}

#[test]
fn temp_files_of_dead_processes_go_and_those_of_live_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(dir.path()).unwrap();
    let tmp = dir.path().join(".tmp");
    // What a killed process leaves: its directory, an unlocked lock, a
    // half-written chunk; and one killed while setting its directory up.
    std::fs::create_dir(tmp.join("proc.00000000000000aa")).unwrap();
    std::fs::write(tmp.join("proc.00000000000000aa/lock"), b"").unwrap();
    std::fs::write(tmp.join("proc.00000000000000aa/chunk.1"), b"half").unwrap();
    std::fs::write(tmp.join("proc.00000000000000aa/index.2"), b"half").unwrap();
    // A live process: another open datastore, with a file in its
    // directory (its temp files are not visible from here, so one is
    // planted beside its lock).
    let other = Datastore::open(dir.path()).unwrap();
    let live: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("proc.")
        })
        .collect();
    assert_eq!(live.len(), 3, "{live:?}");
    for p in &live {
        if !p.ends_with("proc.00000000000000aa") {
            std::fs::write(p.join("chunk.live"), b"in flight").unwrap();
        }
    }
    let r = ds.recover().unwrap();
    assert_eq!(r.temp_files_removed, 2);
    assert!(!tmp.join("proc.00000000000000aa").exists());
    assert_eq!(temp_files(dir.path()), 2, "the live ones stay");
    // A process's directory goes with it.
    for p in &live {
        let _ = std::fs::remove_file(p.join("chunk.live"));
    }
    drop(other);
    drop(ds);
    let names: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(names.is_empty(), "{names:?}");
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

#[test]
fn a_snapshot_holds_a_bounded_number_of_files() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(dir.path()).unwrap();
    let mut w = ds
        .begin_snapshot(&snap("vm/1/2024-01-01T00:00:00Z"))
        .unwrap();
    for i in 0..MAX_FILES_PER_SNAPSHOT {
        let f = w
            .start_file(&name(&format!("f{i}")), FileKind::Dynamic, false, 0, 0)
            .unwrap();
        drop(f);
        w.abandon(&format!("f{i}.didx"));
    }
    assert!(matches!(
        w.start_file(&name("one-more"), FileKind::Dynamic, false, 0, 0),
        Err(Error::TooManyFiles { .. })
    ));
}

#[test]
fn a_datastore_whose_chunk_directories_are_links_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    Datastore::open_or_create(&root).unwrap();
    let prefix = root.join(".chunks/7f");
    std::fs::remove_dir(&prefix).unwrap();
    std::os::unix::fs::symlink(outside.path(), &prefix).unwrap();
    assert!(matches!(Datastore::open(&root), Err(Error::Symlink(_))));
    std::fs::remove_file(&prefix).unwrap();
    std::fs::create_dir(&prefix).unwrap();
    std::fs::rename(root.join(".tmp"), outside.path().join("tmp")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("tmp"), root.join(".tmp")).unwrap();
    assert!(matches!(Datastore::open(&root), Err(Error::Symlink(_))));
}
