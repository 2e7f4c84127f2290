//! GC and verify at scale: `cargo bench -p hoard --bench maintenance`.
//!
//! - GC: a datastore of one million chunks (64 bytes each, written
//!   directly, without the per-chunk fsync of a real upload, to keep the
//!   setup short), half of them referenced by one snapshot. Prints the
//!   time of a GC that removes the other half, then of one that removes
//!   nothing, and the process's peak RSS.
//! - Verify: 1 GiB in 4 MiB chunks, one snapshot; prints MB/s (hot page
//!   cache: the chunks were just written).
//!
//! `HOARD_BENCH_DIR` picks where the datastores go (default: a temp dir
//! under /tmp); `HOARD_BENCH_CHUNKS` the chunk count (default 1,000,000).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hoard_datastore::gc::{GcOptions, collect_garbage};
use hoard_datastore::verify::{VerifyOptions, verify};
use hoard_datastore::{BlobHeader, CHUNK_HEADER_SIZE, Datastore, FileKind};
use hoard_types::{Digest, FileName, SnapshotPath};

fn peak_rss_mib() -> f64 {
    // SAFETY: rusage is plain C data (integers and timevals), for which
    // all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own; RUSAGE_SELF is valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

fn bench_gc(base: &Path, chunks: u64) {
    let ds = Datastore::open_or_create(&base.join("gc")).unwrap();
    let t = Instant::now();
    let mut digests = Vec::with_capacity(chunks as usize / 2);
    for i in 0..chunks {
        let mut data = [0u8; 64];
        data[..8].copy_from_slice(&i.to_le_bytes());
        let d = Digest::of(&data);
        let f = std::fs::File::create(ds.chunks().chunk_path(&d)).unwrap();
        f.write_all_at(&BlobHeader::raw(&data).encode(), 0).unwrap();
        f.write_all_at(&data, CHUNK_HEADER_SIZE as u64).unwrap();
        if i % 2 == 0 {
            digests.push(d);
        }
    }
    let reg = ds.register_writer().unwrap();
    let snap: SnapshotPath = "ct/bench/2026-01-01T00:00:00Z".parse().unwrap();
    let mut w = ds.begin_snapshot(&snap).unwrap();
    let mut f = w
        .start_file(
            &FileName::new("root").unwrap(),
            FileKind::Dynamic,
            false,
            0,
            0,
        )
        .unwrap();
    for (i, d) in digests.iter().enumerate() {
        f.add_dynamic(ds.chunks(), i as u64 * 64, d, reg.start())
            .unwrap();
    }
    w.record(f.finish().unwrap()).unwrap();
    w.close().unwrap();
    drop(reg);
    drop(digests);
    println!(
        "gc setup: {chunks} chunks, {} referenced, in {:.1} s",
        chunks / 2,
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(50));
    let opts = GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    };
    for round in ["removes half", "removes nothing"] {
        let t = Instant::now();
        let r = collect_garbage(&ds, &opts, &|_| {}).unwrap();
        println!(
            "gc ({round}): {:.2} s; marked {} references, removed {} chunks, kept {}",
            t.elapsed().as_secs_f64(),
            r.references,
            r.removed_chunks,
            r.kept_chunks
        );
    }
    println!("peak RSS of this process: {:.0} MiB", peak_rss_mib());
}

fn bench_verify(base: &Path) {
    let ds = Datastore::open_or_create(&base.join("verify")).unwrap();
    let reg = ds.register_writer().unwrap();
    let snap: SnapshotPath = "vm/bench/2026-01-01T00:00:00Z".parse().unwrap();
    let mut w = ds.begin_snapshot(&snap).unwrap();
    const CS: usize = 4 << 20;
    const N: u64 = 256;
    let mut f = w
        .start_file(
            &FileName::new("disk").unwrap(),
            FileKind::Fixed,
            true,
            N * CS as u64,
            CS as u32,
        )
        .unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = vec![0u8; CS];
    for i in 0..N {
        for word in data.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let d = Digest::of(&data);
        ds.chunks().insert(&d, &data, reg.start()).unwrap();
        f.add_fixed(ds.chunks(), i, &d, reg.start()).unwrap();
    }
    w.record(f.finish().unwrap()).unwrap();
    w.close().unwrap();
    drop(reg);
    for _ in 0..3 {
        let t = Instant::now();
        let r = verify(&ds, &|_| true, &VerifyOptions::default(), &|_| {}).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(r.failed(), 0);
        println!(
            "verify: {} MiB in {:.2} s = {:.0} MB/s ({} threads)",
            r.bytes_checked >> 20,
            secs,
            r.bytes_checked as f64 / 1e6 / secs,
            VerifyOptions::default().threads
        );
    }
}

fn main() {
    let chunks: u64 = std::env::var("HOARD_BENCH_CHUNKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = match std::env::var_os("HOARD_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .unwrap();
    bench_verify(tmp.path());
    bench_gc(tmp.path(), chunks);
}
