//! A datastore on object storage, through the in-memory twin of S3 (the
//! CLI's integration tests run the same against SeaweedFS): chunks in
//! the bucket, metadata mirrored, stubs as GC's marks, the cache's
//! bound, the in-use marker, and a directory rebuilt from its bucket.

use std::sync::Arc;
use std::time::Duration;

use hoard_datastore::gc::{GcOptions, collect_garbage};
use hoard_datastore::storage::{MemStorage, Storage};
use hoard_datastore::*;
use hoard_types::{Digest, FileName, SnapshotPath};

fn snap(s: &str) -> SnapshotPath {
    s.parse().unwrap()
}

fn open(dir: &std::path::Path, storage: &Arc<MemStorage>, cache: u64) -> Datastore {
    let mut o = ObjectOptions::new(storage.clone() as Arc<dyn Storage>);
    o.cache_bytes = cache;
    Datastore::open_or_create_with(dir, Backend::Storage(o)).unwrap()
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A complete snapshot `p` with one fixed file of `chunks` (4 KiB each).
fn write(ds: &Datastore, p: &SnapshotPath, chunks: &[Vec<u8>]) -> Vec<Digest> {
    let reg = ds.register_writer().unwrap();
    let mut w = ds.begin_snapshot(p).unwrap();
    let size = chunks.iter().map(|c| c.len() as u64).sum();
    let mut f = w
        .start_file(
            &FileName::new("disk").unwrap(),
            FileKind::Fixed,
            true,
            size,
            4096,
        )
        .unwrap();
    let mut digests = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let d = Digest::of(c);
        ds.chunks().insert(&d, c, reg.start()).unwrap();
        f.add_fixed(ds.chunks(), i as u64, &d, reg.start()).unwrap();
        digests.push(d);
    }
    w.record(f.finish().unwrap()).unwrap();
    assert_eq!(w.close().unwrap(), SnapshotState::Complete);
    digests
}

fn keys(s: &MemStorage, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    s.list(prefix, &mut |o| {
        out.push(o.key);
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .unwrap();
    out
}

#[test]
fn chunks_and_metadata_live_in_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    let chunks: Vec<Vec<u8>> = (0..3).map(|i| noise(4096, i)).collect();
    let p = snap("vm/1/2020-01-01T00:00:00Z");
    let digests = write(&ds, &p, &chunks);
    assert_eq!(keys(&s, "chunks/").len(), 3);
    assert_eq!(
        keys(&s, "snapshots/"),
        vec![
            "snapshots/vm/1/2020-01-01T00:00:00Z/disk.fidx".to_string(),
            "snapshots/vm/1/2020-01-01T00:00:00Z/manifest.json".to_string(),
        ]
    );
    // The bucket's copies are the directory's files.
    let local = std::fs::read(ds.snapshot_dir(&p).join("manifest.json")).unwrap();
    assert_eq!(
        s.get("snapshots/vm/1/2020-01-01T00:00:00Z/manifest.json")
            .unwrap(),
        local
    );
    // Chunks read back through the cache, and without it.
    assert_eq!(ds.chunks().load(&digests[1]).unwrap(), chunks[1]);
    for e in std::fs::read_dir(dir.path().join("ds/.cache")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    assert_eq!(ds.chunks().load(&digests[2]).unwrap(), chunks[2]);
    assert_eq!(ds.chunks().raw_size(&digests[0]).unwrap(), 4096);
}

#[test]
fn an_unchanged_backup_sends_a_handful_of_requests() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    let chunks: Vec<Vec<u8>> = (0..64).map(|i| noise(4096, i)).collect();
    write(&ds, &snap("vm/1/2020-01-01T00:00:00Z"), &chunks);
    let before = s.requests();
    // The same data again: every chunk exists (its stub says so).
    write(&ds, &snap("vm/1/2020-01-02T00:00:00Z"), &chunks);
    let spent = s.requests().since(&before);
    // The lease checked as the snapshot begins, the index, and the
    // manifest (twice: file recorded, closed). No chunk is looked at.
    assert!(spent.total() <= 4, "{spent:?}");
    assert_eq!((spent.get, spent.head + spent.list), (1, 0), "{spent:?}");
}

#[test]
fn gc_marks_by_stub_and_deletes_unreferenced_objects() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    let (a, b) = (noise(4096, 1), noise(4096, 2));
    let old = snap("vm/1/2020-01-01T00:00:00Z");
    let digests = write(&ds, &old, &[a.clone(), b.clone()]);
    write(
        &ds,
        &snap("vm/1/2020-01-02T00:00:00Z"),
        std::slice::from_ref(&a),
    );
    assert_eq!(ds.remove_snapshot(&old).unwrap(), Removal::Removed);
    assert!(keys(&s, "snapshots/vm/1/2020-01-01T00:00:00Z/").is_empty());
    std::thread::sleep(Duration::from_millis(20));
    let opts = GcOptions {
        grace: Duration::ZERO,
        threads: 2,
    };
    let r = collect_garbage(&ds, &opts, &|_| {}).unwrap();
    assert_eq!((r.removed_chunks, r.kept_chunks), (1, 1), "{r:?}");
    assert!(s.head(&chunk_key(&digests[1])).is_err(), "b is gone");
    assert!(s.head(&chunk_key(&digests[0])).is_ok(), "a stays");
    assert!(!ds.chunks().path_of(&digests[1], ChunkClass::Plain).exists());
    // The bucket's clock plays no part: a freshly written orphan without
    // a stub goes too.
    let orphan = noise(4096, 9);
    let od = Digest::of(&orphan);
    s.put(&chunk_key(&od), encode(&orphan).into()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let r = collect_garbage(&ds, &opts, &|_| {}).unwrap();
    assert_eq!((r.removed_chunks, r.kept_chunks), (1, 1), "{r:?}");
    assert!(s.head(&chunk_key(&od)).is_err());
}

fn chunk_key(d: &Digest) -> String {
    format!("chunks/{}/{}", &d.to_hex()[..2], d.to_hex())
}

fn encode(data: &[u8]) -> Vec<u8> {
    hoard_codec::blob::encode_raw(data)
}

#[test]
fn a_lost_object_is_stored_again_by_the_next_upload() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    let a = noise(4096, 1);
    let d = write(
        &ds,
        &snap("vm/1/2020-01-01T00:00:00Z"),
        std::slice::from_ref(&a),
    )[0];
    s.delete(&[chunk_key(&d)]).unwrap();
    std::fs::remove_dir_all(dir.path().join("ds/.cache")).unwrap();
    std::fs::create_dir(dir.path().join("ds/.cache")).unwrap();
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    // Verify finds it missing and drops the stub that trusted it.
    let r = verify::verify(&ds, &|_| true, &verify::VerifyOptions::default(), &|_| {}).unwrap();
    assert_eq!(r.failed(), 1, "{r:?}");
    assert!(!ds.chunks().path_of(&d, ChunkClass::Plain).exists());
    // So the next backup holding the data uploads it again.
    write(
        &ds,
        &snap("vm/1/2020-01-02T00:00:00Z"),
        std::slice::from_ref(&a),
    );
    assert!(s.head(&chunk_key(&d)).is_ok());
}

#[test]
fn the_cache_stays_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let ds = open(&dir.path().join("ds"), &s, 64 << 10);
    let chunks: Vec<Vec<u8>> = (0..64).map(|i| noise(4096, i)).collect();
    let digests = write(&ds, &snap("vm/1/2020-01-01T00:00:00Z"), &chunks);
    let on_disk = |d: &std::path::Path| -> u64 {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    assert!(ds.chunks().cached_bytes().unwrap() <= 64 << 10);
    assert!(on_disk(&dir.path().join("ds/.cache")) <= 64 << 10);
    for (d, c) in digests.iter().zip(&chunks) {
        assert_eq!(&ds.chunks().load(d).unwrap(), c);
    }
    assert!(on_disk(&dir.path().join("ds/.cache")) <= 64 << 10);
}

#[test]
fn a_lost_directory_is_rebuilt_from_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    let chunks: Vec<Vec<u8>> = (0..4).map(|i| noise(4096, i)).collect();
    let p = snap("vm/1/2020-01-01T00:00:00Z");
    let digests = write(&ds, &p, &chunks);
    ds.claim_group(&p.group, "alice").unwrap();
    drop(ds);
    // Another directory: the bucket is in use by the first.
    let other = dir.path().join("other");
    let mut o = ObjectOptions::new(s.clone() as Arc<dyn Storage>);
    let refused = Datastore::open_or_create_with(&other, Backend::Storage(o.clone()));
    let e = refused.unwrap_err();
    assert!(matches!(e, Error::InUse { .. }), "{e}");
    assert!(e.to_string().contains("--take-over"), "{e}");
    // Taken over: the snapshots come back, and restore reads.
    o.take_over = true;
    let ds = Datastore::open_or_create_with(&other, Backend::Storage(o)).unwrap();
    let list = ds.list_snapshots().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].manifest.state, SnapshotState::Complete);
    assert_eq!(ds.group_owner(&p.group).unwrap().as_deref(), Some("alice"));
    let r = ds.open_index(&format!("{p}/disk.fidx")).unwrap();
    assert_eq!(r.digests(0, 4).unwrap(), digests);
    for (d, c) in digests.iter().zip(&chunks) {
        assert_eq!(&ds.chunks().load(d).unwrap(), c);
    }
    // GC marks from the pulled indexes and removes nothing referenced.
    let opts = GcOptions {
        grace: Duration::ZERO,
        threads: 1,
    };
    let g = collect_garbage(&ds, &opts, &|_| {}).unwrap();
    assert_eq!(
        (g.removed_chunks, g.kept_chunks, g.missing_chunks),
        (0, 4, 0)
    );
    // The first directory is now the one refused.
    let mut first = ObjectOptions::new(s.clone() as Arc<dyn Storage>);
    first.cache_bytes = 1 << 20;
    assert!(matches!(
        Datastore::open_or_create_with(&dir.path().join("ds"), Backend::Storage(first)),
        Err(Error::InUse { .. })
    ));
}

#[test]
fn a_failing_bucket_fails_the_write_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    let a = noise(4096, 1);
    let p = snap("vm/1/2020-01-01T00:00:00Z");
    write(&ds, &p, std::slice::from_ref(&a));
    s.set_offline(true);
    let b = noise(4096, 2);
    let reg = ds.register_writer().unwrap();
    let e = ds
        .chunks()
        .insert(&Digest::of(&b), &b, reg.start())
        .unwrap_err();
    assert!(matches!(e, Error::Storage(_)), "{e}");
    assert!(e.to_string().contains("offline"), "{e}");
    // No stub claims the chunk that was never stored.
    assert!(
        !ds.chunks()
            .path_of(&Digest::of(&b), ChunkClass::Plain)
            .exists()
    );
    // Verify of what is there: an unreadable chunk, not a bad one.
    let r = verify::verify(&ds, &|_| true, &verify::VerifyOptions::default(), &|_| {}).unwrap();
    assert!(r.bad_chunks.iter().all(|c| c.moved_to.is_none()), "{r:?}");
    s.set_offline(false);
    assert!(ds.chunks().insert(&Digest::of(&b), &b, reg.start()).is_ok());
    let r = verify::verify(&ds, &|_| true, &verify::VerifyOptions::default(), &|_| {}).unwrap();
    assert_eq!(r.failed(), 0, "{r:?}");
}

#[test]
fn verify_moves_only_a_chunk_found_damaged_again_and_never_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    let (a, b) = (noise(4096, 1), noise(4096, 2));
    let d = write(&ds, &snap("vm/1/2020-01-01T00:00:00Z"), &[a, b]);
    // An intact chunk is not moved, whatever a first read said.
    assert_eq!(
        ds.chunks().quarantine(&d[0], ChunkClass::Plain).unwrap(),
        None
    );
    // Nor while the bucket fails: that confirms nothing.
    s.set_offline(true);
    assert!(ds.chunks().quarantine(&d[0], ChunkClass::Plain).is_err());
    s.set_offline(false);
    assert!(s.head(&chunk_key(&d[0])).is_ok());
    // A damaged chunk that vanishes before it is moved: nothing to move,
    // and no wait on the lock the quarantine itself holds.
    let mut raw = s.get(&chunk_key(&d[1])).unwrap().to_vec();
    raw[40] ^= 1;
    s.put(&chunk_key(&d[1]), raw.clone().into()).unwrap();
    s.delete(&[chunk_key(&d[1])]).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let ds2 = ds.clone();
    let d1 = d[1];
    std::thread::spawn(move || {
        let _ = tx.send(
            ds2.chunks()
                .quarantine(&d1, ChunkClass::Plain)
                .map_err(|e| e.to_string()),
        );
    });
    let r = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("quarantine hung");
    assert_eq!(r.unwrap(), None);
    // A damaged chunk that is there is moved to bad/.
    s.put(&chunk_key(&d[1]), raw.into()).unwrap();
    let moved = ds
        .chunks()
        .quarantine(&d[1], ChunkClass::Plain)
        .unwrap()
        .unwrap();
    assert!(moved.contains(" bad/"), "{moved}");
    assert!(s.head(&chunk_key(&d[1])).is_err());
    assert_eq!(keys(&s, "bad/").len(), 1);
}

#[test]
fn a_copied_or_stale_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let first = dir.path().join("ds");
    let ds = open(&first, &s, 1 << 20);
    ds.start_serving().unwrap();
    write(&ds, &snap("vm/1/2020-01-01T00:00:00Z"), &[noise(4096, 1)]);
    // A copy of the directory (a restored VM, an rsync to move it).
    let copy = dir.path().join("copy");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&first)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    // The original server starts again: the copy's lease is old now.
    ds.start_serving().unwrap();
    let o = ObjectOptions::new(s.clone() as Arc<dyn Storage>);
    let e = Datastore::open_or_create_with(&copy, Backend::Storage(o)).unwrap_err();
    assert!(e.to_string().contains("--take-over"), "{e}");
    // And a handle that saw the lease renewed by another process (the
    // copy, started first) can neither begin a snapshot nor collect.
    let copy2 = dir.path().join("copy2");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&first)
            .arg(&copy2)
            .status()
            .unwrap()
            .success()
    );
    let o = ObjectOptions::new(s.clone() as Arc<dyn Storage>);
    let other = Datastore::open_or_create_with(&copy2, Backend::Storage(o)).unwrap();
    other.start_serving().unwrap();
    assert!(
        ds.begin_snapshot(&snap("vm/1/2020-01-02T00:00:00Z"))
            .is_err()
    );
    let opts = GcOptions {
        grace: Duration::ZERO,
        threads: 1,
    };
    assert!(collect_garbage(&ds, &opts, &|_| {}).is_err());
}

#[test]
fn any_file_name_is_mirrored_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    let p = snap("vm/1/2020-01-01T00:00:00Z");
    let c = noise(100, 1);
    let reg = ds.register_writer().unwrap();
    let d = Digest::of(&c);
    ds.chunks().insert(&d, &c, reg.start()).unwrap();
    let mut w = ds.begin_snapshot(&p).unwrap();
    for name in ["system disk", "données", ".hidden"] {
        let mut f = w
            .start_file(
                &FileName::new(name).unwrap(),
                FileKind::Dynamic,
                false,
                0,
                0,
            )
            .unwrap();
        f.add_dynamic(ds.chunks(), 0, &d, reg.start()).unwrap();
        w.record(f.finish().unwrap()).unwrap();
    }
    assert_eq!(w.close().unwrap(), SnapshotState::Complete);
    let mut o = ObjectOptions::new(s.clone() as Arc<dyn Storage>);
    o.take_over = true;
    let rebuilt =
        Datastore::open_or_create_with(&dir.path().join("new"), Backend::Storage(o)).unwrap();
    let m = rebuilt.load_manifest(&p).unwrap();
    assert_eq!(m.files.len(), 3);
    for f in &m.files {
        let r = rebuilt.open_index(&format!("{p}/{}", f.name)).unwrap();
        r.verify_checksum().unwrap();
    }
}

#[test]
fn a_bucket_with_data_but_no_marker_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    write(&ds, &snap("vm/1/2020-01-01T00:00:00Z"), &[noise(4096, 1)]);
    s.delete(&["hoard-datastore".into()]).unwrap();
    let mut o = ObjectOptions::new(s.clone() as Arc<dyn Storage>);
    o.take_over = true;
    let e =
        Datastore::open_or_create_with(&dir.path().join("new"), Backend::Storage(o)).unwrap_err();
    assert!(e.to_string().contains("no hoard-datastore marker"), "{e}");
    assert_eq!(keys(&s, "chunks/").len(), 1, "nothing deleted");
}

#[test]
fn gc_leaves_misplaced_objects_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(MemStorage::new());
    let ds = open(&dir.path().join("ds"), &s, 1 << 20);
    let c = noise(4096, 1);
    let d = write(
        &ds,
        &snap("vm/1/2020-01-01T00:00:00Z"),
        std::slice::from_ref(&c),
    )[0];
    // The same name under another prefix's directory, and a nested key.
    let other = if d.0[0] == 0 { "01" } else { "00" };
    let misplaced = format!("chunks/{other}/{}", d.to_hex());
    let nested = format!("chunks/{}/x/{}", &d.to_hex()[..2], d.to_hex());
    s.put(&misplaced, vec![1].into()).unwrap();
    s.put(&nested, vec![1].into()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let opts = GcOptions {
        grace: Duration::ZERO,
        threads: 2,
    };
    let r = collect_garbage(&ds, &opts, &|_| {}).unwrap();
    assert_eq!(r.removed_chunks, 0, "{r:?}");
    for k in [misplaced, nested, chunk_key(&d)] {
        assert!(s.head(&k).is_ok(), "{k}");
    }
}
