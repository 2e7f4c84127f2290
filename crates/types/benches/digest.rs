//! SHA-256 throughput of `Digest::of` on 4 MiB buffers: the ceiling of
//! server ingest and verify. `cargo bench -p hoard-types --bench digest`.

use std::time::Instant;

use hoard_types::Digest;

fn main() {
    let data: Vec<u8> = (0..4usize << 20)
        .map(|i| (i * 7 + i / 4093) as u8)
        .collect();
    let rounds = 256;
    let start = Instant::now();
    let mut x = 0u8;
    for _ in 0..rounds {
        x ^= Digest::of(&data).0[0];
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sha256: {:.0} MB/s on one core ({x})",
        (rounds * data.len()) as f64 / secs / 1e6
    );
}
