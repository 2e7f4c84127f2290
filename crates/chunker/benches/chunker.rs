//! Chunker throughput per core, on incompressible and text-like data, for
//! each average size hoard uses: `cargo bench -p hoard-chunker`.
//!
//! Beside it, for the choice of algorithm, a classic rolling hash
//! (Buzhash over a 64-byte window, as casync and borg use, cut where the
//! low bits are zero, the same minimum skip and maximum): it needs the
//! byte leaving the window as well as the one entering, and a rotation,
//! where the gear hash needs one shift and one add.

use std::time::Instant;

use hoard_chunker::{Params, chunk_lengths};

fn noise(n: usize) -> Vec<u8> {
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn text(n: usize) -> Vec<u8> {
    let words = [
        "INFO", "backup", "chunk", "index", "the", "server", "id=", "snapshot", "of", "and",
    ];
    let mut s = 7u64;
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(s >> 60) as usize % words.len()].as_bytes());
        out.push(if (s >> 20).is_multiple_of(9) {
            b'\n'
        } else {
            b' '
        });
    }
    out.truncate(n);
    out
}

/// Buzhash chunk lengths with min/avg/max like hoard's (reference only).
fn buzhash_lengths(data: &[u8], avg: usize) -> usize {
    const WINDOW: usize = 64;
    let table: Vec<u32> = (0..256u32)
        .map(|i| {
            let mut z = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z ^= z >> 31;
            z = z.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            (z >> 32) as u32
        })
        .collect();
    let (min, max, mask) = (avg / 4, avg * 4, (avg as u32) - 1);
    let mut chunks = 0;
    let mut start = 0;
    while start < data.len() {
        let end = (start + max).min(data.len());
        let mut cut = end;
        let from = start + min.saturating_sub(WINDOW);
        if from + WINDOW < end {
            let mut h = 0u32;
            for &b in &data[from..from + WINDOW] {
                h = h.rotate_left(1) ^ table[b as usize];
            }
            for i in from + WINDOW..end {
                h = h.rotate_left(1)
                    ^ table[data[i - WINDOW] as usize].rotate_left(WINDOW as u32)
                    ^ table[data[i] as usize];
                if h & mask == 0 {
                    cut = i + 1;
                    break;
                }
            }
        }
        chunks += 1;
        start = cut;
    }
    chunks
}

fn main() {
    let size = 512 << 20;
    for (kind, data) in [("random", noise(size)), ("text", text(size))] {
        for avg in [64 << 10, 1 << 20] {
            let params = Params::new(avg).unwrap();
            let mut best = f64::MAX;
            let mut chunks = 0;
            for _ in 0..3 {
                let t = Instant::now();
                chunks = chunk_lengths(params, &data).len();
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "fastcdc {kind:>6} avg {:>5} KiB: {:>6.0} MB/s, {chunks} chunks (mean {} KiB)",
                avg >> 10,
                size as f64 / best / 1e6,
                size / chunks / 1024
            );
            let t = Instant::now();
            let n = buzhash_lengths(&data, avg);
            println!(
                "buzhash {kind:>6} avg {:>5} KiB: {:>6.0} MB/s, {n} chunks (reference)",
                avg >> 10,
                size as f64 / t.elapsed().as_secs_f64() / 1e6,
            );
        }
    }
}
