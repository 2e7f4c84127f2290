//! Chunker throughput per core, on incompressible and text-like data, for
//! each average size hoard uses: `cargo bench -p hoard-chunker`.

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
                "chunker {kind:>6} avg {:>5} KiB: {:>6.0} MB/s, {chunks} chunks (mean {} KiB)",
                avg >> 10,
                size as f64 / best / 1e6,
                size / chunks / 1024
            );
        }
    }
}
