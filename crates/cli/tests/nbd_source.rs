//! Image backups read from NBD exports served by a real `qemu-nbd`
//! (Debian's `qemu-utils`), over TCP and a Unix socket, raw and qcow2.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, hoard, noise, stderr};
use hoard_datastore::{Datastore, IndexReader};
use hoard_types::Digest;
use serde_json::Value;

/// A `qemu-nbd` serving one image read-only, stopped when dropped.
struct QemuNbd {
    child: Child,
    uri: String,
}

impl QemuNbd {
    fn start(image: &Path, format: &str, listen: &[String], uri: String) -> QemuNbd {
        let child = Command::new("qemu-nbd")
            .args([
                "--read-only",
                "--persistent",
                "--shared=4",
                "--export-name=disk",
            ])
            .arg(format!("--format={format}"))
            .args(listen)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-nbd (Debian qemu-utils) is needed for the NBD tests");
        let q = QemuNbd { child, uri };
        q.wait_ready();
        q
    }

    /// Over TCP on a free loopback port.
    fn tcp(image: &Path, format: &str) -> QemuNbd {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = vec!["--bind=127.0.0.1".to_string(), format!("--port={port}")];
        QemuNbd::start(
            image,
            format,
            &listen,
            format!("nbd://127.0.0.1:{port}/disk"),
        )
    }

    /// Over a Unix socket in `dir`.
    fn unix(image: &Path, format: &str, dir: &Path) -> QemuNbd {
        let sock = dir.join("nbd.sock");
        let listen = vec![format!("--socket={}", sock.display())];
        let uri = format!("nbd+unix:///disk?socket={}", sock.display());
        QemuNbd::start(image, format, &listen, uri)
    }

    fn wait_ready(&self) {
        let parsed = hoard_nbd::NbdUri::parse(&self.uri).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(c) = hoard_nbd::Client::connect(&parsed) {
                c.disconnect();
                return;
            }
            assert!(Instant::now() < deadline, "qemu-nbd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An 8 MiB raw image: random data, text, and a 3 MiB hole.
fn make_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut data = noise(8 << 20, 21);
    for (i, b) in data[(1 << 20)..(2 << 20)].iter_mut().enumerate() {
        *b = b"hoard nbd text "[i % 15];
    }
    data[(4 << 20)..(7 << 20)].fill(0);
    let path = dir.join("disk.raw");
    std::fs::write(&path, &data).unwrap();
    // The zeros as a real hole.
    let out = Command::new("fallocate")
        .args(["--punch-hole", "--offset", "4194304", "--length", "3145728"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(out.success());
    (path, data)
}

/// Backs up `source` as image disk.img of vm/`id`, at the next of
/// increasing snapshot times (two backups of a test may fall in one
/// second).
fn backup(server: &Server, id: &str, source: &str) -> Value {
    static TIME: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);
    let time = TIME
        .fetch_add(1000, std::sync::atomic::Ordering::Relaxed)
        .to_string();
    let spec = format!("disk.img={source}");
    let out = hoard(
        &server.addr,
        &[
            "backup",
            "--type",
            "vm",
            "--id",
            id,
            "--time",
            &time,
            "--chunk-size",
            "1M",
            "--output-format",
            "json",
            &spec,
        ],
    );
    assert!(
        out.status.success(),
        "backup of {source} failed: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn digests(server: &Server, snapshot: &str) -> Vec<Digest> {
    let ds = Datastore::open(&server.datastore()).unwrap();
    match ds.open_index(&format!("{snapshot}/disk.img.fidx")).unwrap() {
        IndexReader::Fixed(r) => r.digests(0, r.chunk_count() as usize).unwrap(),
        IndexReader::Dynamic(_) => panic!("an image has a fixed index"),
    }
}

fn restores(server: &Server, snapshot: &str, want: &[u8], dir: &Path) {
    let target = dir.join("restored");
    let _ = std::fs::remove_file(&target);
    let out = hoard(
        &server.addr,
        &["restore", snapshot, "disk.img", target.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&target).unwrap() == want,
        "{snapshot} differs"
    );
}

#[test]
fn a_backup_from_nbd_equals_one_of_the_file_and_skips_its_holes() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (image, data) = make_image(dir.path());
    let from_file = backup(&server, "1", image.to_str().unwrap());
    let nbd = QemuNbd::tcp(&image, "raw");
    let from_nbd = backup(&server, "2", &nbd.uri);
    let (a, b) = (
        from_file["snapshot"].as_str().unwrap(),
        from_nbd["snapshot"].as_str().unwrap(),
    );
    assert_eq!(digests(&server, a), digests(&server, b), "same chunks");
    let img = &from_nbd["images"][0];
    assert_eq!(img["size"], 8 << 20);
    assert_eq!(img["source"], nbd.uri.as_str());
    // base:allocation: the 3 MiB hole is not read.
    assert_eq!(img["bytes_read"], 5 << 20, "{img}");
    assert_eq!(img["chunks_zero"], 3, "{img}");
    restores(&server, b, &data, dir.path());
}

#[test]
fn a_qcow2_image_over_a_unix_socket() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = make_image(dir.path());
    let qcow = dir.path().join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .unwrap();
    assert!(st.success());
    let nbd = QemuNbd::unix(&qcow, "qcow2", dir.path());
    let r = backup(&server, "3", &nbd.uri);
    let snap = r["snapshot"].as_str().unwrap();
    restores(&server, snap, &data, dir.path());
    // An unchanged second backup from the export uploads nothing.
    let again = backup(&server, "3", &nbd.uri);
    assert_eq!(again["images"][0]["chunks_uploaded"], 0, "{again}");
}

#[test]
fn unreachable_and_unknown_exports_fail_with_a_clear_error() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = make_image(dir.path());
    let nbd = QemuNbd::unix(&image, "raw", dir.path());
    let sock = dir.path().join("nbd.sock");
    let cases = [
        (
            format!("nbd+unix:///nope?socket={}", sock.display()),
            "unknown export",
        ),
        (
            format!(
                "nbd+unix:///disk?socket={}",
                dir.path().join("gone.sock").display()
            ),
            "cannot reach the NBD server",
        ),
        ("nbds://127.0.0.1/disk".to_string(), "TLS is not supported"),
        ("nbd+unix:///disk".to_string(), "needs ?socket=PATH"),
    ];
    for (uri, needle) in cases {
        let spec = format!("disk.img={uri}");
        let out = hoard(
            &server.addr,
            &["backup", "--type", "vm", "--id", "4", &spec],
        );
        assert_eq!(out.status.code(), Some(6), "{uri}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{uri}: {}", stderr(&out));
    }
    drop(nbd);
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
}

/// The image's content now, as raw bytes (through qemu-img).
fn raw_of(qcow: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("now.raw");
    let _ = std::fs::remove_file(&raw);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(qcow)
        .arg(&raw));
    std::fs::read(&raw).unwrap()
}

fn add_bitmap(qcow: &Path, name: &str) {
    run(Command::new("qemu-img")
        .args(["bitmap", "--add", "--enable"])
        .arg(qcow)
        .arg(name));
}

/// Writes `len` bytes of `pattern` at `offset` through QEMU's block
/// layer, which marks the image's enabled bitmaps dirty.
fn qemu_write(qcow: &Path, pattern: u8, offset: u64, len: u64) {
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P {pattern} {offset} {len}"))
        .arg(qcow));
}

/// A qemu-nbd on `qcow`'s Unix socket, exporting dirty bitmap `bitmap`.
fn export(qcow: &Path, dir: &Path, bitmap: Option<&str>) -> QemuNbd {
    let sock = dir.join("nbd.sock");
    let _ = std::fs::remove_file(&sock);
    let mut listen = vec![format!("--socket={}", sock.display())];
    if let Some(b) = bitmap {
        listen.push(format!("--bitmap={b}"));
    }
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    QemuNbd::start(qcow, "qcow2", &listen, uri)
}

#[test]
fn a_dirty_bitmap_reads_only_what_was_written_and_every_doubt_reads_all() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = make_image(dir.path());
    let qcow = dir.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow));
    const MIB: u64 = 1 << 20;
    let data_bytes = 5 * MIB; // the image less its 3 MiB hole

    // Backup 1 starts bitmap b1. Asking to read through b1 already is
    // refused: there is no base to take unwritten chunks from.
    add_bitmap(&qcow, "b1");
    let nbd = export(&qcow, dir.path(), Some("b1"));
    let r = backup(
        &server,
        "9",
        &format!("{}&bitmap=b1&new-bitmap=b1", nbd.uri),
    );
    let img = &r["images"][0];
    assert!(
        img["bitmap_refused"]
            .as_str()
            .unwrap()
            .contains("no complete"),
        "{img}"
    );
    assert_eq!(img["bytes_read"], data_bytes);
    drop(nbd);

    // Writes in chunk 1 and chunk 5 (inside what was the hole).
    qemu_write(&qcow, 0x55, MIB + 4096, 4096);
    qemu_write(&qcow, 0x66, 5 * MIB, 64 * 1024);

    // Backup 2 reads b1: the two written chunks only; it starts b2.
    add_bitmap(&qcow, "b2");
    let nbd = export(&qcow, dir.path(), Some("b1"));
    let r = backup(
        &server,
        "9",
        &format!("{}&bitmap=b1&new-bitmap=b2", nbd.uri),
    );
    let img = &r["images"][0];
    assert_eq!(img["bitmap"], "b1", "{img}");
    assert_eq!(img["bytes_read"], 2 * MIB, "{img}");
    assert_eq!(img["chunks_uploaded"], 2, "{img}");
    restores(
        &server,
        r["snapshot"].as_str().unwrap(),
        &raw_of(&qcow, dir.path()),
        dir.path(),
    );
    drop(nbd);

    // Refused, each with its reason, and everything read instead: b1 was
    // not started at the base (backup 2 started b2) ...
    qemu_write(&qcow, 0x77, 2 * MIB, 4096);
    add_bitmap(&qcow, "b3");
    let nbd = export(&qcow, dir.path(), Some("b1"));
    let r = backup(
        &server,
        "9",
        &format!("{}&bitmap=b1&new-bitmap=b3", nbd.uri),
    );
    let img = &r["images"][0];
    assert!(
        img["bitmap_refused"]
            .as_str()
            .unwrap()
            .contains("not started at the base"),
        "{img}"
    );
    assert_eq!(img["bytes_read"], data_bytes + MIB);
    restores(
        &server,
        r["snapshot"].as_str().unwrap(),
        &raw_of(&qcow, dir.path()),
        dir.path(),
    );
    drop(nbd);

    // ... the export does not offer b3 ...
    let nbd = export(&qcow, dir.path(), None);
    let r = backup(&server, "9", &format!("{}&bitmap=b3", nbd.uri));
    let img = &r["images"][0];
    assert!(
        img["bitmap_refused"]
            .as_str()
            .unwrap()
            .contains("offers no dirty bitmap b3"),
        "{img}"
    );
    drop(nbd);

    // ... and the disk changed size.
    let bigger = dir.path().join("bigger.raw");
    let mut grown = raw_of(&qcow, dir.path());
    grown.extend_from_slice(&vec![9u8; MIB as usize]);
    std::fs::write(&bigger, &grown).unwrap();
    let nbd = QemuNbd::unix(&bigger, "raw", dir.path());
    let r = backup(&server, "9", &format!("{}&bitmap=b3", nbd.uri));
    let img = &r["images"][0];
    assert!(
        img["bitmap_refused"]
            .as_str()
            .unwrap()
            .contains("bytes, its base"),
        "{img}"
    );
    restores(&server, r["snapshot"].as_str().unwrap(), &grown, dir.path());
}
