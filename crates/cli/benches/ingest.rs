//! Server ingest benchmark: several connections upload new 4 MiB chunks
//! to a real `hoard serve` over loopback. Prints MB/s and the server's
//! peak resident memory (VmHWM) for each client count.
//!
//! `cargo bench -p hoard --bench ingest [-- TOTAL_MIB]` (default 2048).
//! The datastore goes into a temporary directory under `HOARD_BENCH_DIR`
//! (default: the system temp dir); point it at a tmpfs such as /dev/shm to
//! measure the server without the disk.
//! Chunks are made unique by a counter in their first bytes and their
//! digests computed before the clock starts, so the client side costs
//! little CPU and the figure is the server's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Instant;

use bytes::Bytes;
use hoard_protocol::{Message, check_frame};
use hoard_types::Digest;

const CHUNK: usize = 4 << 20;
/// Uploads a connection keeps in flight.
const WINDOW: usize = 8;

fn main() {
    let total_mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2048);
    let chunks_total = total_mib * (1 << 20) / CHUNK;
    let where_ = std::env::var("HOARD_BENCH_DIR")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    println!(
        "ingest: {total_mib} MiB of new {} MiB chunks per run, datastore under {where_}",
        CHUNK >> 20
    );
    for clients in [1usize, 2, 4, 8] {
        run(clients, chunks_total / clients);
    }
}

fn chunk_data(base: &mut [u8], client: usize, i: usize) {
    base[..8].copy_from_slice(&(i as u64).to_le_bytes());
    base[8..16].copy_from_slice(&(client as u64).to_le_bytes());
}

fn run(clients: usize, per_client: usize) {
    let dir = match std::env::var_os("HOARD_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let mut server = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--datastore"])
        .arg(dir.path().join("ds"))
        .args(["--listen-v1", "127.0.0.1:0", "--v1-role", "admin"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server");
    // The raw clients below speak version 1 on the plain listener.
    let mut out = BufReader::new(server.stdout.take().expect("stdout"));
    let addr = loop {
        let mut line = String::new();
        out.read_line(&mut line).expect("banner");
        if line.contains("version 1 without TLS") {
            break line
                .split(" on ")
                .nth(1)
                .expect("address")
                .split(' ')
                .next()
                .expect("address")
                .to_string();
        }
    };

    // Per client: a random base buffer and the digests of its variants.
    let bases: Vec<(Vec<u8>, Vec<Digest>)> = (0..clients)
        .map(|c| {
            let mut base: Vec<u8> = (0..CHUNK).map(|_| rand_byte()).collect();
            let digests = (0..per_client)
                .map(|i| {
                    chunk_data(&mut base, c, i);
                    Digest::of(&base)
                })
                .collect();
            (base, digests)
        })
        .collect();

    let start = Instant::now();
    let handles: Vec<_> = bases
        .into_iter()
        .enumerate()
        .map(|(c, (base, digests))| {
            let addr = addr.clone();
            std::thread::spawn(move || upload_all(&addr, c, base, &digests))
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = (clients * per_client * CHUNK) as f64;
    let hwm = peak_rss_kib(server.id());
    println!(
        "clients {clients}: {:.0} MB/s ({:.2} s for {:.0} MiB), server peak RSS {:.1} MiB",
        bytes / secs / 1e6,
        secs,
        bytes / (1 << 20) as f64,
        hwm as f64 / 1024.0
    );
    let _ = server.kill();
    let _ = server.wait();
}

fn upload_all(addr: &str, client: usize, mut base: Vec<u8>, digests: &[Digest]) {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    let mut reader = sock.try_clone().expect("clone");
    expect_packet(&mut reader); // Hello
    let n = digests.len();
    let mut acked = 0;
    for (i, digest) in digests.iter().enumerate() {
        if i >= acked + WINDOW {
            expect_ok(&mut reader);
            acked += 1;
        }
        chunk_data(&mut base, client, i);
        // The head of an UploadChunk is the header and the digest; the data
        // is written straight from the buffer.
        let mut head = bytes::BytesMut::new();
        let length = (6 + 32 + base.len()) as u32;
        head.extend_from_slice(&[1, hoard_protocol::PacketType::UploadChunk.as_u8()]);
        head.extend_from_slice(&length.to_le_bytes());
        head.extend_from_slice(digest.as_bytes());
        sock.write_all(&head).expect("send");
        sock.write_all(&base).expect("send");
    }
    while acked < n {
        expect_ok(&mut reader);
        acked += 1;
    }
}

fn expect_packet(r: &mut TcpStream) -> Message {
    let mut head = [0u8; 6];
    r.read_exact(&mut head).expect("read");
    let h = check_frame(&head).expect("frame").expect("header");
    let mut p = vec![0u8; h.payload_len()];
    r.read_exact(&mut p).expect("read");
    Message::decode(&h, Bytes::from(p)).expect("decode")
}

fn expect_ok(r: &mut TcpStream) {
    match expect_packet(r) {
        Message::Ok => {}
        other => panic!("expected Ok, got {other:?}"),
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn rand_byte() -> u8 {
    rand::random()
}
