//! Disk-image chunks kept as deltas of the previous backup's chunk in the
//! same slot: round trips after scattered, clustered and full rewrites,
//! chains and their bound, GC keeping bases that only deltas reference,
//! verify and quarantine of a damaged base, and healing by the next
//! upload. On a real directory, through the datastore's API.

use std::collections::HashSet;
use std::time::Duration;

use hoard_datastore::gc::{GcOptions, collect_garbage};
use hoard_datastore::verify::{VerifyOptions, verify};
use hoard_datastore::*;
use hoard_types::{Digest, FileName, SnapshotPath};

const CHUNK: usize = 256 * 1024;
const CHUNKS: usize = 6;

/// Pseudo-random, incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
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

struct Store {
    _dir: tempfile::TempDir,
    ds: Datastore,
    reg: Option<WriterRegistration>,
}

fn store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open_or_create(&dir.path().join("ds")).unwrap();
    let reg = ds.register_writer().unwrap();
    Store {
        _dir: dir,
        ds,
        reg: Some(reg),
    }
}

fn snap(n: u32) -> SnapshotPath {
    format!("vm/100/2026-01-{:02}T00:00:00Z", n)
        .parse()
        .unwrap()
}

impl Store {
    /// Backs up `image` as snapshot `n` the way the server does: stores
    /// its chunks, fills the index, finishes it with deltas against the
    /// previous backup. Returns the delta counts.
    fn backup(&self, n: u32, image: &[u8]) -> Option<DeltaCounts> {
        let since = self.reg.as_ref().map_or(FsTime(0), |r| r.start());
        let mut new = HashSet::new();
        let mut w = self.ds.begin_snapshot(&snap(n)).unwrap();
        let mut f = w
            .start_file(
                &FileName::new("disk.img").unwrap(),
                FileKind::Fixed,
                true,
                image.len() as u64,
                CHUNK as u32,
            )
            .unwrap();
        for (i, c) in image.chunks(CHUNK).enumerate() {
            let d = Digest::of(c);
            if self.ds.chunks().insert(&d, c, since).unwrap() == Inserted::New {
                new.insert(d);
            }
            f.add_fixed(self.ds.chunks(), i as u64, &d, since).unwrap();
        }
        let (m, counts) = f
            .finish_with_deltas(self.ds.chunks(), &|d| new.contains(d))
            .unwrap();
        w.record(m).unwrap();
        w.close().unwrap();
        counts
    }

    /// Reads snapshot `n`'s image back through the chunk store, checking
    /// every chunk's digest as a client does.
    fn restore(&self, n: u32) -> Vec<u8> {
        let IndexReader::Fixed(r) = self
            .ds
            .open_index(&format!("{}/disk.img.fidx", snap(n)))
            .unwrap()
        else {
            panic!("a fixed index")
        };
        let mut out = Vec::new();
        for d in r.digests(0, r.chunk_count() as usize).unwrap() {
            let data = self.ds.chunks().load(&d).unwrap();
            assert_eq!(Digest::of(&data), d);
            // What an encoded session downloads decodes to the same.
            let blob = self.ds.chunks().load_blob(&d, ChunkClass::Plain).unwrap();
            assert_eq!(hoard_codec::blob::decode_plain(&d, &blob).unwrap(), data);
            out.extend_from_slice(&data);
        }
        out
    }

    fn digests(&self, image: &[u8]) -> Vec<Digest> {
        image.chunks(CHUNK).map(Digest::of).collect()
    }

    fn gc(&self) -> gc::GcReport {
        collect_garbage(
            &self.ds,
            &GcOptions {
                grace: Duration::ZERO,
                threads: 2,
            },
            &|_| {},
        )
        .unwrap()
    }
}

fn first_image() -> Vec<u8> {
    let mut img = noise(1, CHUNKS * CHUNK);
    // A zero region, as disks have.
    img[4 * CHUNK..5 * CHUNK].fill(0);
    img
}

/// Overwrites `n` 4 KiB blocks spread over the image.
fn scatter(img: &mut [u8], seed: u64, n: usize) {
    let blocks = img.len() / 4096;
    let pick = noise(seed, n * 8);
    for (i, b) in pick.chunks(8).enumerate() {
        let at = (u64::from_le_bytes(b.try_into().unwrap()) as usize % blocks) * 4096;
        img[at..at + 4096].copy_from_slice(&noise(seed * 1000 + i as u64, 4096));
    }
}

#[test]
fn scattered_writes_are_stored_as_deltas_and_read_back() {
    let s = store();
    let mut img = first_image();
    assert_eq!(
        s.backup(1, &img),
        None,
        "nothing to compare a first backup with"
    );
    let marker = || std::fs::read_to_string(s.ds.root().join(".hoard-datastore")).unwrap();
    assert_eq!(
        marker(),
        "hoard-datastore 2\n",
        "no delta yet: still version 2"
    );
    let before = s.digests(&img);
    scatter(&mut img, 2, 12);
    let c = s.backup(2, &img).unwrap();
    let after = s.digests(&img);
    let changed: Vec<usize> = (0..CHUNKS).filter(|&i| before[i] != after[i]).collect();
    assert!(changed.len() >= 4, "{changed:?}");
    // Every changed chunk but the formerly empty one (whose whole file
    // is no larger than a delta) is a delta now.
    assert!(c.stored >= changed.len() as u64 - 1, "{c:?}");
    assert!(c.delta_bytes * 10 < c.whole_bytes, "{c:?}");
    for &i in &changed {
        if s.ds.chunks().is_delta(&after[i]) {
            assert!(!s.ds.chunks().chunk_path(&after[i]).exists());
        }
    }
    // Bases stay whole; both backups read back exactly.
    for d in &before {
        assert!(!s.ds.chunks().is_delta(d));
    }
    assert_eq!(s.restore(2), img);
    assert_eq!(s.restore(1), first_image());
    // Version 3 from the first delta on, which an older hoard refuses;
    // this one opens it.
    assert_eq!(marker(), "hoard-datastore 3\n");
    Datastore::open(s.ds.root()).unwrap();
    // Verify rebuilds every delta and finds all well.
    let r = verify(&s.ds, &|_| true, &VerifyOptions::default(), &|_| {}).unwrap();
    assert_eq!(r.failed(), 0, "{r:?}");
}

#[test]
fn clustered_and_full_rewrites() {
    let s = store();
    let mut img = first_image();
    s.backup(1, &img);
    // Clustered: 20 blocks in one chunk.
    let at = CHUNK + 8192;
    img[at..at + 20 * 4096].copy_from_slice(&noise(77, 20 * 4096));
    let c = s.backup(2, &img).unwrap();
    assert_eq!((c.tried, c.stored), (1, 1), "{c:?}");
    assert_eq!(s.restore(2), img);
    // Rewritten whole: no delta is worth it.
    let img3 = noise(99, CHUNKS * CHUNK);
    let c = s.backup(3, &img3).unwrap();
    assert_eq!(c.stored, 0, "{c:?}");
    assert_eq!(c.tried, CHUNKS as u64);
    assert_eq!(s.restore(3), img3);
    assert_eq!(s.restore(2), img);
}

#[test]
fn chains_grow_by_one_link_per_backup_and_stay_bounded() {
    let s = store();
    let mut img = noise(5, 2 * CHUNK);
    let mut images = vec![img.clone()];
    s.backup(1, &img);
    for round in 2..=(MAX_CHAIN as u32 + 4) {
        // One block in each chunk.
        for c in 0..2 {
            let at = c * CHUNK + (round as usize % 60) * 4096;
            img[at..at + 4096].copy_from_slice(&noise(round as u64 * 10 + c as u64, 4096));
        }
        let counts = s.backup(round, &img).unwrap();
        assert_eq!(counts.stored, 2, "round {round}: {counts:?}");
        images.push(img.clone());
    }
    // Every link holds one block, however old the chain: the store grows
    // by the changed data, not by everything since the first backup. Once
    // a chain is MAX_CHAIN links long, the next delta is made against its
    // root: one per chunk here, holding every block changed since.
    let deltas: Vec<u64> = walk_deltas(&s);
    let big = deltas.iter().filter(|&&len| len > 8 * 1024).count();
    assert_eq!(big, 2, "{deltas:?}");
    assert!(
        deltas
            .iter()
            .all(|&len| len < (MAX_CHAIN as u64 + 2) * 4096),
        "{deltas:?}"
    );
    let longest = images
        .last()
        .unwrap()
        .chunks(CHUNK)
        .map(|c| chain_len(&s, &Digest::of(c)))
        .max();
    assert!(longest.unwrap() <= MAX_CHAIN, "{longest:?}");
    for (i, want) in images.iter().enumerate() {
        assert_eq!(&s.restore(i as u32 + 1), want, "snapshot {}", i + 1);
    }
}

/// Links below a chunk: 0 for a whole one.
fn chain_len(s: &Store, d: &Digest) -> usize {
    let mut n = 0;
    let mut cur = *d;
    while s.ds.chunks().is_delta(&cur) {
        let file = std::fs::read(s.ds.chunks().delta_path(&cur)).unwrap();
        cur = delta::decode_head(&file).unwrap().base;
        n += 1;
    }
    n
}

/// Sizes of every delta file in the store.
fn walk_deltas(s: &Store) -> Vec<u64> {
    let mut out = Vec::new();
    for p in std::fs::read_dir(s.ds.chunks().base()).unwrap() {
        for f in std::fs::read_dir(p.unwrap().path()).unwrap() {
            let f = f.unwrap();
            if f.file_name().to_string_lossy().ends_with(DELTA_SUFFIX) {
                out.push(f.metadata().unwrap().len());
            }
        }
    }
    out
}

#[test]
fn a_base_referenced_only_through_deltas_survives_gc() {
    let mut s = store();
    let mut img = first_image();
    s.backup(1, &img);
    let bases = s.digests(&img);
    scatter(&mut img, 3, 12);
    s.backup(2, &img);
    let middle = s.digests(&img);
    scatter(&mut img, 4, 12);
    s.backup(3, &img);
    // Chunks only the first backup had, gone with it: an image with one
    // chunk rewritten whole.
    let mut lone = first_image();
    lone[..CHUNK].copy_from_slice(&noise(42, CHUNK));
    s.backup(4, &lone);
    for n in [1, 2, 4] {
        assert_eq!(s.ds.remove_snapshot(&snap(n)).unwrap(), Removal::Removed);
    }
    // No writer holds anything back: GC decides by its marks alone.
    s.reg = None;
    std::thread::sleep(Duration::from_millis(50));
    let report = s.gc();
    assert_eq!(report.missing_chunks, 0, "{report:?}");
    assert!(report.removed_chunks >= 1, "GC removed nothing: {report:?}");
    assert!(!s.ds.chunks().contains(&Digest::of(&lone[..CHUNK])));
    // The chains of the third backup hold its first two backups' chunks.
    assert_eq!(s.restore(3), img);
    let linked = bases
        .iter()
        .chain(&middle)
        .filter(|d| s.ds.chunks().contains(d))
        .count();
    assert!(linked >= CHUNKS, "{linked} links kept");
    let r = verify(&s.ds, &|_| true, &VerifyOptions::default(), &|_| {}).unwrap();
    assert_eq!(r.failed(), 0, "{r:?}");
}

#[test]
fn a_damaged_base_fails_its_dependents_and_the_next_upload_heals() {
    let s = store();
    let img1 = first_image();
    s.backup(1, &img1);
    let mut img2 = img1.clone();
    // One block in chunk 0: its delta's base is chunk 0 of backup 1.
    img2[10 * 4096..11 * 4096].copy_from_slice(&noise(8, 4096));
    assert_eq!(s.backup(2, &img2).unwrap().stored, 1);
    let base = Digest::of(&img1[..CHUNK]);
    let delta = Digest::of(&img2[..CHUNK]);
    assert!(s.ds.chunks().is_delta(&delta));
    // Bit rot in the base.
    let path = s.ds.chunks().chunk_path(&base);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5000] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    // Reading the delta fails cleanly, naming the base.
    let e = s.ds.chunks().load(&delta).unwrap_err().to_string();
    assert!(e.contains(&base.to_string()), "{e}");
    // Verify fails both snapshots and names every file that depends on
    // the base, and moves the damaged base aside.
    let r = verify(&s.ds, &|_| true, &VerifyOptions::default(), &|_| {}).unwrap();
    assert_eq!(r.failed(), 2, "{r:?}");
    let users = |d: &Digest| -> Vec<String> {
        r.bad_chunks
            .iter()
            .filter(|b| b.digest == d.to_hex())
            .flat_map(|b| b.used_by.clone())
            .collect()
    };
    assert_eq!(users(&base), vec![format!("{}/disk.img.fidx", snap(1))]);
    let through = r
        .bad_chunks
        .iter()
        .find(|b| b.digest == delta.to_hex())
        .expect("the delta is reported");
    assert!(through.problem.contains(&base.to_string()), "{through:?}");
    assert_eq!(through.used_by, vec![format!("{}/disk.img.fidx", snap(2))]);
    assert!(!path.exists(), "the damaged base was moved aside");
    // The delta's chain is broken: an upload of its data stores it whole
    // again, and backup 2 reads back.
    assert_eq!(
        s.ds.chunks()
            .insert(&delta, &img2[..CHUNK], FsTime(0))
            .unwrap(),
        Inserted::New
    );
    assert_eq!(s.restore(2), img2);
    // So does a reference: a chunk whose chain is broken is missing.
    let mut img3 = img2.clone();
    img3[3 * CHUNK..3 * CHUNK + 4096].copy_from_slice(&noise(9, 4096));
    s.backup(3, &img3);
    assert_eq!(s.restore(3), img3);
}

#[test]
fn a_chunk_that_comes_back_never_closes_a_cycle() {
    let s = store();
    let img1 = noise(11, 2 * CHUNK);
    s.backup(1, &img1);
    let mut img2 = img1.clone();
    img2[4096..8192].copy_from_slice(&noise(12, 4096));
    assert_eq!(s.backup(2, &img2).unwrap().stored, 1);
    // The disk goes back to what it was: chunk 0 of backup 1 is there
    // whole, and is not made a delta of its own delta.
    assert_eq!(s.backup(3, &img1).unwrap().tried, 0);
    let a = Digest::of(&img1[..CHUNK]);
    let b = Digest::of(&img2[..CHUNK]);
    assert_eq!(
        s.ds.chunks().make_delta(&a, &b).unwrap(),
        DeltaMade::Skipped("no usable base")
    );
    assert!(!s.ds.chunks().is_delta(&a));
    for (n, img) in [(1, &img1), (2, &img2), (3, &img1)] {
        assert_eq!(&s.restore(n), img);
    }
}

#[test]
fn an_encrypted_chunk_of_the_same_name_never_hides_a_delta() {
    let s = store();
    let img1 = first_image();
    s.backup(1, &img1);
    let mut img2 = img1.clone();
    img2[10 * 4096..11 * 4096].copy_from_slice(&noise(8, 4096));
    s.backup(2, &img2);
    let delta = Digest::of(&img2[..CHUNK]);
    assert!(s.ds.chunks().is_delta(&delta));
    // Another tenant's encrypted session names an encrypted chunk so.
    let key = hoard_codec::Key::from_secret(&[3u8; 32]);
    let enc = key.encrypt(
        hoard_codec::Kind::Chunk,
        b"other",
        hoard_codec::Compression::None,
    );
    s.ds.chunks()
        .insert_blob(&delta, &enc, ChunkClass::Encrypted, FsTime(0))
        .unwrap();
    assert_eq!(s.restore(2), img2);
    assert_eq!(
        s.ds.chunks()
            .reference(&delta, FsTime(0), ChunkClass::Plain)
            .unwrap(),
        CHUNK as u64
    );
    let r = verify(&s.ds, &|_| true, &VerifyOptions::default(), &|_| {}).unwrap();
    assert_eq!(r.failed(), 0, "{r:?}");
}

#[test]
fn a_delta_with_a_damaged_header_is_stored_whole_again_and_gc_goes_on() {
    let mut s = store();
    let img1 = first_image();
    s.backup(1, &img1);
    let mut img2 = img1.clone();
    img2[10 * 4096..11 * 4096].copy_from_slice(&noise(8, 4096));
    img2[CHUNK + 4096..CHUNK + 8192].copy_from_slice(&noise(9, 4096));
    s.backup(2, &img2);
    let damage = |d: &Digest| {
        let path = s.ds.chunks().delta_path(d);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        path
    };
    // An upload of a chunk whose delta is damaged stores it whole again,
    // before any verify ran.
    let d1 = Digest::of(&img2[CHUNK..2 * CHUNK]);
    damage(&d1);
    assert_eq!(
        s.ds.chunks()
            .insert(&d1, &img2[CHUNK..2 * CHUNK], FsTime(0))
            .unwrap(),
        Inserted::New
    );
    // GC does not stop at a damaged delta: it keeps the file and counts
    // it missing.
    let d0 = Digest::of(&img2[..CHUNK]);
    let path = damage(&d0);
    s.reg = None;
    let report = s.gc();
    assert_eq!(report.missing_chunks, 1, "{report:?}");
    assert!(path.exists());
    // Verify moves it aside; the next upload stores it whole.
    let r = verify(&s.ds, &|_| true, &VerifyOptions::default(), &|_| {}).unwrap();
    assert_eq!(r.failed(), 1, "{r:?}");
    assert!(!path.exists(), "moved aside");
    assert_eq!(
        s.ds.chunks()
            .insert(&d0, &img2[..CHUNK], FsTime(0))
            .unwrap(),
        Inserted::New
    );
    assert_eq!(s.restore(2), img2);
}

#[test]
fn a_delta_that_rebuilds_wrong_data_is_found_and_set_aside() {
    let s = store();
    let img1 = first_image();
    s.backup(1, &img1);
    let mut img2 = img1.clone();
    img2[10 * 4096..11 * 4096].copy_from_slice(&noise(8, 4096));
    s.backup(2, &img2);
    let d = Digest::of(&img2[..CHUNK]);
    // Its block data altered and its CRC made to match: every file of
    // the chain checks, and the rebuilt data is wrong.
    let path = s.ds.chunks().delta_path(&d);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let crc = crc32fast::hash(&bytes[12..]);
    bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let r = verify(&s.ds, &|_| true, &VerifyOptions::default(), &|_| {}).unwrap();
    assert_eq!(r.failed(), 1, "{r:?}");
    let bad = &r.bad_chunks[0];
    assert_eq!(bad.digest, d.to_hex());
    assert!(bad.problem.contains("hash"), "{bad:?}");
    assert!(bad.moved_to.is_some(), "{bad:?}");
    assert!(!path.exists());
    assert_eq!(
        s.ds.chunks().insert(&d, &img2[..CHUNK], FsTime(0)).unwrap(),
        Inserted::New
    );
    assert_eq!(s.restore(2), img2);
}

#[test]
fn verify_blames_the_lowest_link_that_rebuilds_wrong_data() {
    let s = store();
    let img1 = first_image();
    s.backup(1, &img1);
    let mut img2 = img1.clone();
    img2[10 * 4096..11 * 4096].copy_from_slice(&noise(8, 4096));
    s.backup(2, &img2);
    let mut img3 = img2.clone();
    img3[20 * 4096..21 * 4096].copy_from_slice(&noise(9, 4096));
    s.backup(3, &img3);
    let (middle, top) = (Digest::of(&img2[..CHUNK]), Digest::of(&img3[..CHUNK]));
    assert!(s.ds.chunks().is_delta(&middle) && s.ds.chunks().is_delta(&top));
    // The middle link's data altered, its CRC made to match.
    let path = s.ds.chunks().delta_path(&middle);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let crc = crc32fast::hash(&bytes[12..]);
    bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    // Only verify the newest snapshot: its chunk fails, and the middle
    // link is what goes aside; the top delta stays.
    let newest = snap(3);
    let r = verify(&s.ds, &|p| *p == newest, &VerifyOptions::default(), &|_| {}).unwrap();
    assert_eq!(r.failed(), 1, "{r:?}");
    assert!(!path.exists(), "the middle link was moved aside");
    assert!(s.ds.chunks().delta_path(&top).exists());
    // Both heal by storing their data again.
    for (d, data) in [(middle, &img2[..CHUNK]), (top, &img3[..CHUNK])] {
        s.ds.chunks().insert(&d, data, FsTime(0)).unwrap();
    }
    assert_eq!(s.restore(3), img3);
    assert_eq!(s.restore(2), img2);
}
