//! The dangerous interleavings of GC with backups and prune, made
//! deterministic: a real server process writes, the test drives it with
//! raw packets, and runs GC in this process through the library, doing
//! the other side's steps inside GC's progress events (which fire between
//! its phases). Server and GC share nothing but the datastore's files and
//! locks, as `hoard serve` and `hoard gc` do.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::*;
use hoard_datastore::gc::{GcEvent, GcOptions, GcReport, collect_garbage};
use hoard_datastore::prune::{KeepPolicy, Reason, prune};
use hoard_datastore::{Datastore, Removal};
use hoard_protocol::Message;
use hoard_types::{BackupType, Digest, SnapshotPath, SnapshotTime};
use jiff::tz::TimeZone;

const CS: u32 = 4096;

/// GC with no grace period, so that anything unprotected goes now.
fn gc(ds: &Datastore, hook: &(dyn Fn(&GcEvent) + Sync)) -> GcReport {
    let opts = GcOptions {
        grace: Duration::ZERO,
        threads: 2,
    };
    collect_garbage(ds, &opts, hook).unwrap()
}

/// File-system timestamps are coarse (a few ms): steps whose order GC
/// must tell apart are this far apart.
fn tick() {
    std::thread::sleep(Duration::from_millis(50));
}

fn chunk(seed: u8) -> Vec<u8> {
    pattern(CS as usize, seed)
}

/// A complete one-file snapshot `vm/1/time` of `chunks`, on its own
/// connection, closed before returning.
fn snapshot(server: &Server, time: u64, chunks: &[Vec<u8>]) -> SnapshotPath {
    snapshot_of(server, time, CS, chunks)
}

/// [`snapshot`] with chunks of `cs` bytes.
fn snapshot_of(server: &Server, time: u64, cs: u32, chunks: &[Vec<u8>]) -> SnapshotPath {
    let mut c = server.connect();
    let size = chunks.iter().map(Vec::len).sum::<usize>() as u64;
    c.send(
        1,
        &create(BackupType::Vm, "1", time, 0x01, "disk", cs, size),
    );
    let path = expect_created(&mut c, 1);
    let mut entries = Vec::new();
    for (i, data) in chunks.iter().enumerate() {
        entries.push((i as u64, upload(&mut c, 1, data)));
    }
    c.send(1, &fixed(&entries));
    c.send(1, &Message::BackupFinished);
    c.expect_ok(1);
    close(c);
    path.rsplit_once('/').unwrap().0.parse().unwrap()
}

/// Half-closes and waits for the server to close: its snapshots are
/// closed and its locks released by then.
fn close(mut c: Conn) {
    c.sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed());
}

fn stamp(t: u64) -> String {
    SnapshotTime::from_epoch(t).unwrap().to_string()
}

fn exists(ds: &Datastore, d: &Digest) -> bool {
    stored::exists(ds, d)
}

fn keep_last(n: u32) -> KeepPolicy {
    KeepPolicy {
        last: n,
        ..KeepPolicy::default()
    }
}

fn reason_of(ds: &Datastore, snap: &SnapshotPath, dry_run: bool) -> Reason {
    prune(ds, &keep_last(1), &|_| true, dry_run, &TimeZone::UTC)
        .unwrap()
        .into_iter()
        .find(|d| d.snapshot == snap.to_string())
        .unwrap()
        .reason
}

#[test]
fn a_base_reused_by_a_running_backup_survives_gc_and_a_prune_during_gc() {
    let server = Server::start();
    let ds = Datastore::open(&server.datastore()).unwrap();
    let (a, b, d) = (chunk(1), chunk(2), chunk(3));
    let base = snapshot(&server, T0, &[a.clone(), b.clone()]);
    // A newer snapshot, so that keep-last 1 does not keep the base.
    snapshot(&server, T0 + 100, std::slice::from_ref(&d));

    // The backup reads its base's digests (which pins the base) and
    // opens its file, but references nothing yet.
    let mut w = server.connect();
    let known = hash_list(&mut w, 2, &format!("{base}/disk.fidx"));
    assert_eq!(known, vec![Digest::of(&a), Digest::of(&b)]);
    w.send(
        1,
        &create(
            BackupType::Vm,
            "1",
            T0 + 200,
            0x01,
            "disk",
            CS,
            2 * CS as u64,
        ),
    );
    expect_created(&mut w, 1);

    let w = Mutex::new(w);
    let report = gc(&ds, &|e| match e {
        // Snapshots are listed; a prune now would remove the base before
        // GC marks it (the 2025 race). The pin keeps it.
        GcEvent::Listed { .. } => {
            assert_eq!(reason_of(&ds, &base, false), Reason::InUse);
            assert_eq!(ds.remove_snapshot(&base).unwrap(), Removal::InUse);
        }
        // Marked, not yet swept: the backup now references the base's
        // chunks without uploading them.
        GcEvent::Marked => {
            let mut w = w.lock().unwrap();
            w.send(1, &fixed(&[(0, Digest::of(&a)), (1, Digest::of(&b))]));
            w.send(1, &Message::BackupFinished);
            w.expect_ok(1);
        }
        _ => {}
    });
    assert_eq!(report.removed_chunks, 0, "{report:?}");
    close(w.into_inner().unwrap());
    assert!(exists(&ds, &Digest::of(&a)) && exists(&ds, &Digest::of(&b)));

    // The backup is over: now keep-last 1 keeps only the new snapshot
    // and prune takes the other two. GC frees d, and keeps the base's
    // chunks, which the new snapshot references.
    assert_eq!(reason_of(&ds, &base, false), Reason::Expired);
    assert!(ds.load_manifest(&base).is_err());
    let report = gc(&ds, &|_| {});
    assert_eq!(report.removed_chunks, 1, "{report:?}");
    assert!(!exists(&ds, &Digest::of(&d)));
    let mut r = server.connect();
    let new = format!("vm/1/{}/disk.fidx", stamp(T0 + 200));
    let digests = hash_list(&mut r, 1, &new);
    assert_eq!(download(&mut r, 2, &digests), [a, b].concat());
}

#[test]
fn a_chunk_of_a_base_pruned_during_gc_survives_if_a_backup_uploads_it_again() {
    let server = Server::start();
    let ds = Datastore::open(&server.datastore()).unwrap();
    let (a, b) = (chunk(1), chunk(2));
    let base = snapshot(&server, T0, &[a.clone(), b.clone()]);
    tick();

    let writer = Mutex::new(None);
    let report = gc(&ds, &|e| {
        if let GcEvent::Listed { .. } = e {
            // Pruned after listing, before marking: GC never marks a or b.
            assert_eq!(ds.remove_snapshot(&base).unwrap(), Removal::Removed);
            // A backup that looks for the base now cannot have it.
            let mut late = server.connect();
            late.send(
                1,
                &Message::GetHashList {
                    path: format!("{base}/disk.fidx"),
                },
            );
            late.expect_error(1, "not a finished index");
            // A new backup has `a` again; the server already has it, so
            // it is not written, but stamped for this writer. The backup
            // references it only after the sweep.
            let mut w = server.connect();
            w.send(
                1,
                &create(BackupType::Vm, "1", T0 + 100, 0x01, "disk", CS, CS as u64),
            );
            expect_created(&mut w, 1);
            upload(&mut w, 1, &a);
            *writer.lock().unwrap() = Some(w);
        }
    });
    let mut w = writer.into_inner().unwrap().unwrap();
    w.send(1, &fixed(&[(0, Digest::of(&a))]));
    w.send(1, &Message::BackupFinished);
    w.expect_ok(1);
    close(w);
    assert_eq!(report.vanished_indexes, 1, "{report:?}");
    assert_eq!(report.removed_chunks, 1, "only b goes: {report:?}");
    assert!(exists(&ds, &Digest::of(&a)));
    assert!(!exists(&ds, &Digest::of(&b)));
    let mut r = server.connect();
    let digests = hash_list(&mut r, 1, &format!("vm/1/{}/disk.fidx", stamp(T0 + 100)));
    assert_eq!(download(&mut r, 2, &digests), a);
}

#[test]
fn a_chunk_uploaded_before_gc_and_referenced_after_it_survives_a_frozen_writer() {
    let server = Server::start();
    let ds = Datastore::open(&server.datastore()).unwrap();
    let (x, y) = (chunk(1), chunk(2));
    // x becomes garbage: its only snapshot is pruned.
    let old = snapshot(&server, T0, std::slice::from_ref(&x));
    assert_eq!(ds.remove_snapshot(&old).unwrap(), Removal::Removed);
    tick();

    // The writer uploads y, which no snapshot references yet...
    let mut w = server.connect();
    w.send(
        1,
        &create(BackupType::Vm, "1", T0 + 100, 0x01, "disk", CS, CS as u64),
    );
    expect_created(&mut w, 1);
    let dy = upload(&mut w, 1, &y);
    tick();
    // ...and then the whole server freezes, locks and all.
    let pid = server.child.id() as i32;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let report = gc(&ds, &|_| {});
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);

    assert!(report.oldest_writer.is_some(), "{report:?}");
    assert_eq!(report.removed_chunks, 1, "x goes, y stays: {report:?}");
    assert!(!exists(&ds, &Digest::of(&x)));
    assert!(exists(&ds, &dy));
    w.send(1, &fixed(&[(0, dy)]));
    w.send(1, &Message::BackupFinished);
    w.expect_ok(1);
    close(w);
    let mut r = server.connect();
    let digests = hash_list(&mut r, 1, &format!("vm/1/{}/disk.fidx", stamp(T0 + 100)));
    assert_eq!(download(&mut r, 2, &digests), y);
}

#[test]
fn a_writer_that_died_holds_nothing_back() {
    let mut server = Server::start();
    let ds = Datastore::open(&server.datastore()).unwrap();
    let mut w = server.connect();
    w.send(
        1,
        &create(BackupType::Vm, "1", T0, 0x01, "disk", CS, CS as u64),
    );
    expect_created(&mut w, 1);
    let dz = upload(&mut w, 1, &chunk(9));
    let writers = server.datastore().join(".locks/writers");
    assert_eq!(std::fs::read_dir(&writers).unwrap().count(), 1);
    // SIGKILL: the registration file stays, its lock does not.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    tick();
    let report = gc(&ds, &|_| {});
    assert_eq!(report.oldest_writer, None);
    assert_eq!(report.removed_chunks, 1, "{report:?}");
    assert!(!exists(&ds, &dz));
    assert_eq!(std::fs::read_dir(&writers).unwrap().count(), 0);
}

#[test]
fn one_gc_runs_at_a_time_and_its_lock_goes_with_it() {
    let server = Server::start();
    let ds = Datastore::open(&server.datastore()).unwrap();
    let started = Mutex::new(false);
    gc(&ds, &|e| {
        if let GcEvent::Started { .. } = e {
            *started.lock().unwrap() = true;
            // A second GC is refused while this one runs, with exit 5
            // from the command line.
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoard"))
                .args(["gc", "--datastore"])
                .arg(server.datastore())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
            assert!(stderr(&out).contains("another garbage collection is running"));
        }
    });
    assert!(*started.lock().unwrap());
    // The lock went with the GC.
    gc(&ds, &|_| {});
}

#[test]
fn a_killed_servers_unfinished_snapshots_are_settled_on_restart_and_by_gc() {
    let server = Server::start();
    let root = server.datastore();
    let ds = Datastore::open(&root).unwrap();
    // vm/1: one file finished, a second started; vm/2: a file started.
    let mut a = server.connect();
    a.send(
        1,
        &create(BackupType::Vm, "1", T0, 0x01, "disk", CS, CS as u64),
    );
    expect_created(&mut a, 1);
    let data = chunk(1);
    let d = upload(&mut a, 1, &data);
    a.send(1, &fixed(&[(0, d)]));
    a.send(1, &Message::BackupFinished);
    a.expect_ok(1);
    a.send(
        2,
        &create(BackupType::Vm, "1", T0, 0x01, "more", CS, CS as u64),
    );
    expect_created(&mut a, 2);
    let mut b = server.connect();
    b.send(
        1,
        &create(BackupType::Vm, "2", T0, 0x01, "disk", CS, CS as u64),
    );
    expect_created(&mut b, 1);
    let one: SnapshotPath = format!("vm/1/{}", stamp(T0)).parse().unwrap();
    let two: SnapshotPath = format!("vm/2/{}", stamp(T0)).parse().unwrap();

    // What a killed process leaves in `.tmp/`.
    let dead = root.join(".tmp/proc.00000000000000dd");
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("chunk.0000000000000001"), b"half").unwrap();

    // GC beside the live writers: it settles nothing of theirs.
    let report = gc(&ds, &|_| {});
    assert!(report.snapshots_made_incomplete.is_empty(), "{report:?}");
    assert!(report.snapshots_removed_empty.is_empty(), "{report:?}");
    assert_eq!(report.temp_files_removed, 1, "{report:?}");
    let listed = hoard(&server.addr, &["snapshots", "--output-format", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "writing")
    );

    // The server dies; the manifests still say writing.
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("chunk.0000000000000002"), b"half").unwrap();
    let server = server.kill_and_restart();
    assert_eq!(
        server.temp_files(),
        0,
        "dead processes' temp files go on start"
    );
    let m = ds.load_manifest(&one).unwrap();
    assert_eq!(m.state, hoard_datastore::SnapshotState::Incomplete);
    assert_eq!(m.files.len(), 1);
    assert!(!ds.snapshot_dir(&two).exists());
    let listed = hoard(&server.addr, &["snapshots", "--output-format", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["state"], "incomplete");
    // Its finished file restores; the next backup of each group works.
    let mut r = server.connect();
    let digests = hash_list(&mut r, 1, &format!("{one}/disk.fidx"));
    assert_eq!(download(&mut r, 2, &digests), data);
    snapshot(&server, T0 + 10, &[chunk(2)]);
    let mut c = server.connect();
    c.send(
        1,
        &create(BackupType::Vm, "2", T0 + 10, 0x01, "disk", CS, 0),
    );
    expect_created(&mut c, 1);
    c.send(1, &fixed(&[]));
    c.send(1, &Message::BackupFinished);
    c.expect_ok(1);
    close(c);

    // A writer that dies while the server lives (its connection drops
    // mid-file): the server closes the snapshot itself.
    let mut w = server.connect();
    w.send(
        1,
        &create(BackupType::Vm, "1", T0 + 20, 0x01, "disk", CS, CS as u64),
    );
    expect_created(&mut w, 1);
    close(w);
    let three: SnapshotPath = format!("vm/1/{}", stamp(T0 + 20)).parse().unwrap();
    assert!(!ds.snapshot_dir(&three).exists());
}

// Deltas (docs/maintenance.md, "Deltas"): a chunk kept as a delta is
// live with its whole chain. These chunks are large and incompressible,
// so that a changed one is worth a delta.

const DCS: u32 = 64 * 1024;

/// Chunk `i` of the base image, and the same with one 4 KiB block
/// changed.
fn big(i: u64) -> Vec<u8> {
    noise(DCS as usize, 100 + i)
}

fn edited(i: u64) -> Vec<u8> {
    let mut c = big(i);
    c[8192..12288].copy_from_slice(&noise(4096, 900 + i));
    c
}

/// Whether `d` is kept as a delta; on object storage, where chunks stay
/// whole, the tests check that everything still holds without deltas.
fn is_delta(ds: &Datastore, d: &Digest) -> bool {
    ds.chunks().is_delta(d) || on_s3()
}

/// Opens a backup of `vm/1` at `time` with two big slots, references
/// nothing yet.
fn open_big(server: &Server, time: u64) -> Conn {
    let mut w = server.connect();
    w.send(
        1,
        &create(BackupType::Vm, "1", time, 0x01, "disk", DCS, 2 * DCS as u64),
    );
    expect_created(&mut w, 1);
    w
}

/// Uploads `slot0` (slot 1 keeps the base's chunk 1) and finishes.
fn finish_big(w: &mut Conn, slot0: &[u8]) {
    let d0 = upload(w, 1, slot0);
    w.send(1, &fixed(&[(0, d0), (1, Digest::of(&big(1)))]));
    w.send(1, &Message::BackupFinished);
    w.expect_ok(1);
}

#[test]
fn a_base_whose_snapshot_is_pruned_during_gc_survives_as_a_new_deltas_base() {
    let server = Server::start();
    let ds = Datastore::open(&server.datastore()).unwrap();
    let base = snapshot_of(&server, T0, DCS, &[big(0), big(1)]);
    tick();
    // The next backup of the disk started before GC (its previous image,
    // the base, is chosen as it opens the file).
    let w = Mutex::new(open_big(&server, T0 + 100));
    let report = gc(&ds, &|e| match e {
        // Listed, then pruned: GC never marks the base's chunks.
        GcEvent::Listed { .. } => {
            assert_eq!(ds.remove_snapshot(&base).unwrap(), Removal::Removed);
        }
        // Marked, not swept: the backup finishes, and its changed chunk
        // becomes a delta of the base's chunk 0, which only that delta
        // references now.
        GcEvent::Marked => finish_big(&mut w.lock().unwrap(), &edited(0)),
        _ => {}
    });
    close(w.into_inner().unwrap());
    // On object storage chunks stay whole, and the base is garbage.
    let garbage = u64::from(on_s3());
    assert_eq!(report.removed_chunks, garbage, "{report:?}");
    let new = Digest::of(&edited(0));
    assert!(is_delta(&ds, &new), "the changed chunk is a delta");
    assert!(
        exists(&ds, &Digest::of(&big(0))) || on_s3(),
        "its base survived"
    );

    // Later GCs keep the base through the delta alone.
    tick();
    let report = gc(&ds, &|_| {});
    assert_eq!(
        (report.removed_chunks, report.missing_chunks),
        (0, 0),
        "{report:?}"
    );
    let mut r = server.connect();
    let digests = hash_list(&mut r, 1, &format!("vm/1/{}/disk.fidx", stamp(T0 + 100)));
    assert_eq!(download(&mut r, 2, &digests), [edited(0), big(1)].concat());
}

#[test]
fn no_delta_is_made_against_a_base_gc_removed() {
    let server = Server::start();
    let ds = Datastore::open(&server.datastore()).unwrap();
    let base = snapshot_of(&server, T0, DCS, &[big(0), big(1)]);
    tick();
    let w = Mutex::new(open_big(&server, T0 + 100));
    let report = gc(&ds, &|e| match e {
        GcEvent::Listed { .. } => {
            assert_eq!(ds.remove_snapshot(&base).unwrap(), Removal::Removed);
        }
        // Swept: the base's chunks are gone (the backup had referenced
        // none of them yet). Then the backup finishes: chunk 1 is gone,
        // so it uploads it again, and nothing is made against chunk 0.
        GcEvent::Swept => {
            let mut w = w.lock().unwrap();
            upload(&mut w, 1, &big(1));
            finish_big(&mut w, &edited(0));
        }
        _ => {}
    });
    close(w.into_inner().unwrap());
    assert_eq!(report.removed_chunks, 2, "{report:?}");
    assert!(!exists(&ds, &Digest::of(&big(0))));
    assert!(
        !ds.chunks().is_delta(&Digest::of(&edited(0))),
        "stored whole"
    );
    let mut r = server.connect();
    let digests = hash_list(&mut r, 1, &format!("vm/1/{}/disk.fidx", stamp(T0 + 100)));
    assert_eq!(download(&mut r, 2, &digests), [edited(0), big(1)].concat());
}

#[test]
fn a_chain_is_kept_whole_when_its_middle_snapshot_goes() {
    let server = Server::start();
    let ds = Datastore::open(&server.datastore()).unwrap();
    let first = snapshot_of(&server, T0, DCS, &[big(0), big(1)]);
    let mut w = open_big(&server, T0 + 100);
    finish_big(&mut w, &edited(0));
    close(w);
    // A third backup changes another block of chunk 0: a second link.
    let mut third = edited(0);
    third[40_000..44_096].copy_from_slice(&noise(4096, 7));
    let mut w = open_big(&server, T0 + 200);
    finish_big(&mut w, &third);
    close(w);
    let middle: SnapshotPath = format!("vm/1/{}", stamp(T0 + 100)).parse().unwrap();
    for s in [&first, &middle] {
        assert_eq!(ds.remove_snapshot(s).unwrap(), Removal::Removed);
    }
    tick();
    let report = gc(&ds, &|_| {});
    // On object storage the first two versions of chunk 0 are garbage.
    let garbage = 2 * u64::from(on_s3());
    assert_eq!(
        (report.removed_chunks, report.missing_chunks),
        (garbage, 0),
        "{report:?}"
    );
    for d in [Digest::of(&edited(0)), Digest::of(&third)] {
        assert!(is_delta(&ds, &d));
    }
    let mut r = server.connect();
    let digests = hash_list(&mut r, 1, &format!("vm/1/{}/disk.fidx", stamp(T0 + 200)));
    assert_eq!(download(&mut r, 2, &digests), [third, big(1)].concat());
}
