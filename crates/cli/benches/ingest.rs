//! Server ingest benchmark: several connections upload new 4 MiB chunks
//! to a real `hoard serve` over loopback, then download them again.
//! Prints MB/s both ways and the server's peak resident memory (VmHWM)
//! for each client count, once over plain TCP (protocol version 1 on
//! `--listen-v1`) and once over TLS (version 2 on the main listener):
//! the difference is the cost of TLS on ingest and on restore. Then, over
//! TLS, compressible text chunks twice: sent as plain data (the server
//! hashes and compresses them, as for a version 1 client) and sent
//! encoded (feature ENCODED_CHUNKS: compressed by the client, zstd level
//! 1; the server decompresses and hashes them to check the digest). The
//! encoded chunks are made before the clock starts.
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
use hoard_protocol::{DigestList, Features, Message, Secret, check_frame};
use hoard_types::Digest;

/// A client connection: plain TCP or TLS over it.
trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Plain,
    Tls,
    /// TLS, text chunks as plain data.
    TlsText,
    /// TLS, text chunks encoded by the client.
    TlsEncoded,
}

#[derive(Clone)]
struct Target {
    plain: String,
    tls: String,
    fingerprint: String,
    token: String,
}

impl Target {
    fn connect(&self, t: Transport) -> Box<dyn Io> {
        match t {
            Transport::Plain => {
                let sock = TcpStream::connect(&self.plain).expect("connect");
                sock.set_nodelay(true).expect("nodelay");
                let mut io: Box<dyn Io> = Box::new(sock);
                expect_packet(&mut io); // Hello
                io
            }
            Transport::Tls | Transport::TlsText | Transport::TlsEncoded => {
                let sock = TcpStream::connect(&self.tls).expect("connect");
                sock.set_nodelay(true).expect("nodelay");
                let trust = hoard_transport::tls::Trust::Pinned(
                    self.fingerprint.parse().expect("fingerprint"),
                );
                let (config, _) = hoard_transport::tls::client_config(&trust).expect("tls");
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let conn = rustls::ClientConnection::new(config, name).expect("tls");
                let mut io: Box<dyn Io> = Box::new(rustls::StreamOwned::new(conn, sock));
                expect_packet(&mut io); // Hello
                let features = if t == Transport::TlsEncoded {
                    Features(Features::EXTENSIONS.0 | Features::ENCODED_CHUNKS.0)
                } else {
                    Features::EXTENSIONS
                };
                let auth = Message::Authenticate {
                    features,
                    token: Secret(self.token.clone()),
                };
                io.write_all(&auth.encode(0)).expect("send");
                expect_ok(&mut io);
                io
            }
        }
    }
}

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
    for transport in [Transport::Plain, Transport::Tls] {
        for clients in [1usize, 2, 4, 8] {
            run(transport, clients, chunks_total / clients);
        }
    }
    for transport in [Transport::TlsText, Transport::TlsEncoded] {
        for clients in [1usize, 2] {
            run(transport, clients, chunks_total / clients);
        }
    }
}

/// Log-like text: compresses about 4x at zstd level 1, as the dataset's
/// text zones do.
fn text_chunk() -> Vec<u8> {
    let words = [
        "backup", "chunk", "index", "server", "client", "WARN", "INFO", "id=",
    ];
    let mut out = Vec::with_capacity(CHUNK);
    let mut i = 0u64;
    while out.len() < CHUNK {
        let w = words[(rand_byte() as usize) % words.len()];
        out.extend_from_slice(format!("{i} {w} {} ", rand_byte()).as_bytes());
        if i.is_multiple_of(12) {
            out.push(b'\n');
        }
        i += 1;
    }
    out.truncate(CHUNK);
    out
}

fn chunk_data(base: &mut [u8], client: usize, i: usize) {
    base[..8].copy_from_slice(&(i as u64).to_le_bytes());
    base[8..16].copy_from_slice(&(client as u64).to_le_bytes());
}

fn run(transport: Transport, clients: usize, per_client: usize) {
    let dir = match std::env::var_os("HOARD_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let state = dir.path().join("state");
    let token = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["token", "create", "bench", "--role", "admin", "--state-dir"])
        .arg(&state)
        .output()
        .expect("token");
    let token = String::from_utf8(token.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let mut server = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--datastore"])
        .arg(dir.path().join("ds"))
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen-v1", "127.0.0.1:0", "--v1-role", "admin"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server");
    let mut out = BufReader::new(server.stdout.take().expect("stdout"));
    let (mut plain, mut fingerprint) = (String::new(), String::new());
    let tls = loop {
        let mut line = String::new();
        out.read_line(&mut line).expect("banner");
        let last = line.trim().rsplit(' ').next().expect("word").to_string();
        if line.contains("version 1 without TLS") {
            let after = line.split(" on ").nth(1).expect("address");
            plain = after.split(' ').next().expect("address").to_string();
        } else if line.contains("fingerprint") {
            fingerprint = last;
        } else if line.contains("serving") {
            break last;
        }
    };
    let target = Target {
        plain,
        tls,
        fingerprint,
        token,
    };

    // Per client: a random (or text) base buffer and the digests of its
    // variants.
    let text = matches!(transport, Transport::TlsText | Transport::TlsEncoded);
    let bases: Vec<(Vec<u8>, Vec<Digest>)> = (0..clients)
        .map(|c| {
            let mut base: Vec<u8> = if text {
                text_chunk()
            } else {
                (0..CHUNK).map(|_| rand_byte()).collect()
            };
            let digests = (0..per_client)
                .map(|i| {
                    chunk_data(&mut base, c, i);
                    Digest::of(&base)
                })
                .collect();
            (base, digests)
        })
        .collect();

    let all_digests: Vec<Vec<Digest>> = bases.iter().map(|(_, d)| d.clone()).collect();
    // Encoded mode: every chunk's file bytes, made before the clock.
    let encoded: Vec<Option<Vec<Vec<u8>>>> = bases
        .iter()
        .enumerate()
        .map(|(c, (base, digests))| {
            (transport == Transport::TlsEncoded).then(|| {
                let mut b = base.clone();
                (0..digests.len())
                    .map(|i| {
                        chunk_data(&mut b, c, i);
                        hoard_codec::blob::encode_plain(&b, hoard_codec::Compression::Zstd(1))
                    })
                    .collect()
            })
        })
        .collect();
    let start = Instant::now();
    let handles: Vec<_> = bases
        .into_iter()
        .zip(encoded)
        .enumerate()
        .map(|(c, ((base, digests), enc))| {
            let target = target.clone();
            std::thread::spawn(move || {
                upload_all(&target, transport, c, base, &digests, enc.as_deref())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = (clients * per_client * CHUNK) as f64;
    let hwm = peak_rss_kib(server.id());
    let start = Instant::now();
    let handles: Vec<_> = all_digests
        .into_iter()
        .map(|digests| {
            let target = target.clone();
            std::thread::spawn(move || download_all(&target, transport, &digests))
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    let down_secs = start.elapsed().as_secs_f64();
    let name = match transport {
        Transport::Plain => "plain",
        Transport::Tls => "TLS  ",
        Transport::TlsText => "TLS text, server compresses",
        Transport::TlsEncoded => "TLS text, client compressed",
    };
    println!(
        "{name} clients {clients}: ingest {:.0} MB/s ({:.2} s for {:.0} MiB), download {:.0} MB/s, server peak RSS {:.1} MiB",
        bytes / secs / 1e6,
        secs,
        bytes / (1 << 20) as f64,
        bytes / down_secs / 1e6,
        hwm as f64 / 1024.0
    );
    let _ = server.kill();
    let _ = server.wait();
}

fn upload_all(
    target: &Target,
    transport: Transport,
    client: usize,
    mut base: Vec<u8>,
    digests: &[Digest],
    encoded: Option<&[Vec<u8>]>,
) {
    let mut sock = target.connect(transport);
    let n = digests.len();
    let mut acked = 0;
    for (i, digest) in digests.iter().enumerate() {
        if i >= acked + WINDOW {
            expect_ok(&mut sock);
            acked += 1;
        }
        chunk_data(&mut base, client, i);
        let body: &[u8] = match encoded {
            Some(blobs) => &blobs[i],
            None => &base,
        };
        // The head of an UploadChunk is the header and the digest; the data
        // is written straight from the buffer.
        let mut head = bytes::BytesMut::new();
        let length = (6 + 32 + body.len()) as u32;
        head.extend_from_slice(&[1, hoard_protocol::PacketType::UploadChunk.as_u8()]);
        head.extend_from_slice(&length.to_le_bytes());
        head.extend_from_slice(digest.as_bytes());
        sock.write_all(&head).expect("send");
        sock.write_all(body).expect("send");
    }
    while acked < n {
        expect_ok(&mut sock);
        acked += 1;
    }
}

/// Downloads `digests` in one request and reads every chunk back.
fn download_all(target: &Target, transport: Transport, digests: &[Digest]) {
    let mut sock = target.connect(transport);
    let req = Message::DownloadChunks(DigestList::from_digests(digests));
    // (An encoded session downloads chunk files as stored.)
    sock.write_all(&req.encode(2)).expect("send");
    for d in digests {
        match expect_packet(&mut sock) {
            Message::Chunk { digest, data, .. }
                if digest == *d && (data.len() == CHUNK || transport == Transport::TlsEncoded) => {}
            other => panic!("expected chunk {d}, got {:?}", other.packet_type()),
        }
    }
}

fn expect_packet(r: &mut Box<dyn Io>) -> Message {
    let mut head = [0u8; 6];
    r.read_exact(&mut head).expect("read");
    let h = check_frame(&head).expect("frame").expect("header");
    let mut p = vec![0u8; h.payload_len()];
    r.read_exact(&mut p).expect("read");
    Message::decode(&h, Bytes::from(p)).expect("decode")
}

fn expect_ok(r: &mut Box<dyn Io>) {
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
