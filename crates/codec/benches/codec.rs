//! Throughput per core of each step of a chunk's encoding, on data like
//! the benchmark dataset (/work/shared/bench/gen_dataset.py: 60% random,
//! 40% log-like text that zstd shrinks about 4x; its zeros are left out,
//! the client skips them before any of this), in chunks of 1 to 4 MiB:
//! `cargo bench -p hoard-codec --bench codec`. The numbers, and the
//! choice of default zstd level made from them, are in docs/encryption.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use hoard_codec::keyfile::Argon2Params;
use hoard_codec::{ChunkCodec, Compression, Key, KeyFile, Kind};
use hoard_types::Digest;
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

const MIB: usize = 1 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random(r: &mut Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        out.extend_from_slice(&r.next().to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Log lines like the dataset's: level, two of 512 templates of 5 to 14
/// words, then `id=` 20 and `t=` 12 random hex digits.
fn text(r: &mut Rng, n: usize) -> Vec<u8> {
    const VOCAB: &str = "the of and to in is was for on that with as by at from this be are \
        or an it which have not has were but also been their its one other new first all more \
        after two they into over time can some between most may during only where about would \
        such these used many when than request response client server backup chunk index \
        snapshot store datastore verify prune garbage collect upload download";
    const LEVELS: [&str; 5] = ["INFO", "WARN", "DEBUG", "ERROR", "TRACE"];
    let mut t = Rng(12345);
    let mut vocab: Vec<String> = VOCAB.split_whitespace().map(String::from).collect();
    let prefixes = ["srv", "db", "job", "user", "host", "node", "disk", "task"];
    for i in 0..200 {
        vocab.push(format!("{}{i}", prefixes[t.below(prefixes.len())]));
    }
    let templates: Vec<String> = (0..512)
        .map(|_| {
            let words = 5 + t.below(10);
            (0..words)
                .map(|_| vocab[t.below(vocab.len())].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut out = Vec::with_capacity(n + 256);
    while out.len() < n {
        let hexd = hex::encode(random(r, 16));
        let line = format!(
            "{} {} {} id={} t={}\n",
            LEVELS[r.below(5)],
            templates[r.below(512)],
            templates[r.below(512)],
            &hexd[..20],
            &hexd[20..32]
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(n);
    out
}

/// 64 MiB: regions of 6 MiB random and 4 MiB text, cut into chunks of 1
/// to 4 MiB that do not line up with the regions.
fn dataset() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut r = Rng(42);
    let mut data = Vec::with_capacity(64 * MIB + 10 * MIB);
    while data.len() < 64 * MIB {
        data.extend(random(&mut r, 6 * MIB));
        data.extend(text(&mut r, 4 * MIB));
    }
    data.truncate(64 * MIB);
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = (MIB + r.below(3 * MIB)).min(data.len() - at);
        chunks.push(data[at..at + len].to_vec());
        at += len;
    }
    let text_chunks = (0..16).map(|_| text(&mut r, 2 * MIB)).collect();
    (chunks, text_chunks)
}

fn total(chunks: &[Vec<u8>]) -> usize {
    chunks.iter().map(Vec::len).sum()
}

/// Best of three runs of `f` over all chunks; MB/s of plain input.
fn rate(chunks: &[Vec<u8>], mut f: impl FnMut(usize, &[u8])) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for (i, c) in chunks.iter().enumerate() {
            f(i, c);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    total(chunks) as f64 / best / 1e6
}

fn line(what: &str, mbs: f64, extra: &str) {
    println!("{what:<44} {mbs:>8.0} MB/s {extra}");
}

fn compression(name: &str, chunks: &[Vec<u8>]) {
    for level in [-1, 1, 3] {
        let c = Compression::Zstd(level);
        let mut stored = vec![0usize; chunks.len()];
        let mbs = rate(chunks, |i, d| {
            stored[i] = c.compress(d).map_or(d.len(), |z| z.len());
        });
        let ratio = total(chunks) as f64 / stored.iter().sum::<usize>() as f64;
        line(
            &format!("zstd {level:>2} compress ({name})"),
            mbs,
            &format!("ratio {ratio:.2}"),
        );
    }
    let frames: Vec<Option<Vec<u8>>> = chunks
        .iter()
        .map(|d| Compression::Zstd(1).compress(d))
        .collect();
    let mbs = rate(chunks, |i, d| {
        if let Some(z) = &frames[i] {
            black_box(zstd::bulk::decompress(z, d.len()).unwrap());
        }
    });
    line(
        &format!("zstd decompress, level 1 frames ({name})"),
        mbs,
        "(raw chunks: free)",
    );
}

fn aead(name: &str, alg: &'static ring::aead::Algorithm, chunks: &[Vec<u8>]) {
    let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32]).unwrap());
    let mut bufs: Vec<Vec<u8>> = chunks.to_vec();
    let mut tags = vec![[0u8; 16]; chunks.len()];
    let mbs = rate(chunks, |i, _| {
        let nonce = Nonce::assume_unique_for_key([i as u8; 12]);
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::empty(), &mut bufs[i])
            .unwrap();
        tags[i].copy_from_slice(tag.as_ref());
    });
    line(&format!("{name} encrypt"), mbs, "");
    let sealed: Vec<Vec<u8>> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut b = c.clone();
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([i as u8; 12]),
                    Aad::empty(),
                    &mut b,
                )
                .unwrap();
            b.extend_from_slice(tag.as_ref());
            b
        })
        .collect();
    let mut work: Vec<Vec<u8>> = sealed.clone();
    let mbs = rate(chunks, |i, _| {
        work[i].copy_from_slice(&sealed[i]);
        let nonce = Nonce::assume_unique_for_key([i as u8; 12]);
        black_box(
            key.open_in_place(nonce, Aad::empty(), &mut work[i])
                .unwrap(),
        );
    });
    line(&format!("{name} decrypt (incl. a copy)"), mbs, "");
}

fn codec(name: &str, codec: &ChunkCodec, chunks: &[Vec<u8>]) {
    let mut blobs: Vec<(Digest, Vec<u8>)> = vec![(Digest([0; 32]), Vec::new()); chunks.len()];
    let mbs = rate(chunks, |i, d| {
        blobs[i] = (codec.digest(Kind::Chunk, d), codec.encode(Kind::Chunk, d));
    });
    let stored: usize = blobs.iter().map(|(_, b)| b.len()).sum();
    line(
        &format!("{name}: digest + encode"),
        mbs,
        &format!(
            "stored {:.1}%",
            100.0 * stored as f64 / total(chunks) as f64
        ),
    );
    let mbs = rate(chunks, |i, _| {
        black_box(codec.decode(Kind::Chunk, &blobs[i].0, &blobs[i].1).unwrap());
    });
    line(&format!("{name}: decode (+ digest check)"), mbs, "");
}

fn main() {
    let (chunks, text_chunks) = dataset();
    println!(
        "{} chunks, {} MiB (60% random, 40% text); text-only set {} MiB; one thread",
        chunks.len(),
        total(&chunks) >> 20,
        total(&text_chunks) >> 20
    );
    let key = Arc::new(Key::from_secret(&[9; 32]));
    line(
        "SHA-256 (Digest::of)",
        rate(&chunks, |_, d| {
            black_box(Digest::of(d));
        }),
        "",
    );
    line(
        "BLAKE3 keyed digest (Key::digest)",
        rate(&chunks, |_, d| {
            black_box(key.digest(Kind::Chunk, d));
        }),
        "",
    );
    compression("mix", &chunks);
    compression("text", &text_chunks);
    aead("AES-256-GCM", &AES_256_GCM, &chunks);
    aead("ChaCha20-Poly1305", &CHACHA20_POLY1305, &chunks);
    for level in [-1, 1, 3] {
        let c = Compression::Zstd(level);
        codec(
            &format!("plain codec, zstd {level}"),
            &ChunkCodec::plain(c),
            &chunks,
        );
        codec(
            &format!("encrypted codec, zstd {level}"),
            &ChunkCodec::encrypted(key.clone(), c),
            &chunks,
        );
    }
    codec(
        "encrypted codec, no compression",
        &ChunkCodec::encrypted(key.clone(), Compression::None),
        &chunks,
    );
    let t = Instant::now();
    let file = KeyFile::create(&key, Some("passphrase"), Argon2Params::DEFAULT).unwrap();
    let create = t.elapsed();
    let t = Instant::now();
    file.unlock(Some("passphrase")).unwrap();
    println!(
        "Argon2id m=64 MiB t=3 p=1: create {:.0} ms, unlock {:.0} ms",
        create.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
}
