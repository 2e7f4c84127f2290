//! Image backups read from NBD exports served by a real `qemu-nbd`
//! (Debian's `qemu-utils`), over TCP and a Unix socket, raw and qcow2.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, hoard, noise, restores_disk_img, stderr};
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
    restores_disk_img(&server, b, &data);
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
    restores_disk_img(&server, snap, &data);
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

/// `raw` converted to qcow2 in `dir`.
fn qcow_of(raw: &Path, dir: &Path) -> PathBuf {
    let qcow = dir.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&qcow));
    qcow
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
    let qcow = qcow_of(&raw, dir.path());
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
    restores_disk_img(
        &server,
        r["snapshot"].as_str().unwrap(),
        &raw_of(&qcow, dir.path()),
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
    restores_disk_img(
        &server,
        r["snapshot"].as_str().unwrap(),
        &raw_of(&qcow, dir.path()),
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
    restores_disk_img(&server, r["snapshot"].as_str().unwrap(), &grown);
}

/// A qemu-storage-daemon holding a qcow2 disk, driven over QMP as an
/// operator's script drives a running VM's QEMU (docs/vm-backup.md).
struct Qsd {
    child: Child,
    qmp: std::io::BufReader<std::os::unix::net::UnixStream>,
    nbd_sock: PathBuf,
}

impl Qsd {
    fn start(qcow: &Path, dir: &Path) -> Qsd {
        let qmp_sock = dir.join("qmp.sock");
        let nbd_sock = dir.join("qsd-nbd.sock");
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={}",
                qcow.display()
            ))
            .args(["--blockdev", "driver=qcow2,node-name=disk0,file=file0"])
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd_sock.display()))
            .arg("--chardev")
            .arg(format!(
                "socket,id=qmp,path={},server=on,wait=off",
                qmp_sock.display()
            ))
            .args(["--monitor", "chardev=qmp"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-storage-daemon (Debian qemu-utils) is needed");
        let deadline = Instant::now() + Duration::from_secs(10);
        let sock = loop {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&qmp_sock) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut q = Qsd {
            child,
            qmp: std::io::BufReader::new(sock),
            nbd_sock,
        };
        q.line(); // the greeting
        q.cmd("qmp_capabilities", serde_json::json!({}));
        q
    }

    fn line(&mut self) -> Value {
        use std::io::BufRead;
        let mut l = String::new();
        self.qmp.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("QMP said {l:?}: {e}"))
    }

    /// Runs a QMP command; panics with QEMU's message if it fails.
    fn cmd(&mut self, execute: &str, arguments: Value) -> Value {
        use std::io::Write;
        let msg = serde_json::json!({ "execute": execute, "arguments": arguments });
        writeln!(self.qmp.get_mut(), "{msg}").unwrap();
        loop {
            let v = self.line();
            if v.get("event").is_some() {
                continue;
            }
            assert!(v.get("error").is_none(), "{execute}: {v}");
            return v["return"].clone();
        }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.nbd_sock.display())
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes through an NBD export, as a guest's writes reach its disk.
fn guest_write(uri: &str, pattern: u8, offset: u64, len: u64) {
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c"])
        .arg(format!("write -P {pattern} {offset} {len}"))
        .arg(uri));
}

/// The fleecing point of docs/vm-backup.md, in one transaction: the old
/// bitmap (if any) frozen, bitmap `new` started, and a copy-before-write
/// job that keeps the disk's old blocks in a temporary overlay, which is
/// exported read-only as `fleece` (with the frozen bitmap).
fn fleece(q: &mut Qsd, dir: &Path, old: Option<&str>, new: &str) {
    let tmp = dir.join("fleece.qcow2");
    let _ = std::fs::remove_file(&tmp);
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2"])
        .arg(&tmp)
        .arg((8u64 << 20).to_string()));
    q.cmd(
        "blockdev-add",
        serde_json::json!({
            "driver": "qcow2", "node-name": "tmp0", "backing": "disk0",
            "file": { "driver": "file", "filename": tmp.to_str().unwrap() }
        }),
    );
    let mut actions = vec![serde_json::json!({
        "type": "block-dirty-bitmap-add",
        "data": { "node": "disk0", "name": new, "persistent": true }
    })];
    if let Some(old) = old {
        actions.push(serde_json::json!({
            "type": "block-dirty-bitmap-disable",
            "data": { "node": "disk0", "name": old }
        }));
    }
    actions.push(serde_json::json!({
        "type": "blockdev-backup",
        "data": { "job-id": "fleece", "device": "disk0", "target": "tmp0", "sync": "none" }
    }));
    q.cmd("transaction", serde_json::json!({ "actions": actions }));
    let mut export = serde_json::json!({
        "type": "nbd", "id": "fleece", "node-name": "tmp0", "name": "fleece", "writable": false
    });
    if let Some(old) = old {
        export["bitmaps"] = serde_json::json!([old]);
    }
    q.cmd("block-export-add", export);
}

/// After the backup: the fleecing export, job and overlay go, and the
/// frozen bitmap, now in the backup, too.
fn unfleece(q: &mut Qsd, old: Option<&str>) {
    q.cmd("block-export-del", serde_json::json!({ "id": "fleece" }));
    q.cmd(
        "block-job-cancel",
        serde_json::json!({ "device": "fleece", "force": true }),
    );
    // The job ends asynchronously; the overlay can go once it has.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !q
        .cmd("query-block-jobs", serde_json::json!({}))
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the fleecing job did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    q.cmd("blockdev-del", serde_json::json!({ "node-name": "tmp0" }));
    if let Some(old) = old {
        q.cmd(
            "block-dirty-bitmap-remove",
            serde_json::json!({ "node": "disk0", "name": old }),
        );
    }
}

#[test]
fn a_running_disk_is_backed_up_as_it_was_at_the_fleecing_point() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = make_image(dir.path());
    let qcow = qcow_of(&raw, dir.path());
    let mut q = Qsd::start(&qcow, dir.path());
    // The "guest": a writable export of the disk, attached before the
    // fleecing point as a VM's drive is.
    q.cmd(
        "block-export-add",
        serde_json::json!({ "type": "nbd", "id": "active", "node-name": "disk0", "name": "active", "writable": true }),
    );
    let active = q.uri("active");
    const MIB: u64 = 1 << 20;

    // Written before the first fleecing point: in the backup.
    guest_write(&active, 0x11, 0, 4096);
    let expected = {
        let mut d = std::fs::read(&raw).unwrap();
        d[..4096].fill(0x11);
        d
    };
    fleece(&mut q, dir.path(), None, "b1");
    // Written after it: not in this backup.
    guest_write(&active, 0x22, 2 * MIB, 64 * 1024);
    let r = backup(&server, "20", &format!("{}&new-bitmap=b1", q.uri("fleece")));
    unfleece(&mut q, None);
    restores_disk_img(&server, r["snapshot"].as_str().unwrap(), &expected);

    // The next cycle reads bitmap b1: the chunk written after the first
    // point (chunk 2) and one written now (chunk 6), nothing else.
    guest_write(&active, 0x33, 6 * MIB, 4096);
    let mut expected = expected;
    expected[(2 * MIB) as usize..(2 * MIB + 64 * 1024) as usize].fill(0x22);
    expected[(6 * MIB) as usize..(6 * MIB + 4096) as usize].fill(0x33);
    fleece(&mut q, dir.path(), Some("b1"), "b2");
    guest_write(&active, 0x44, 7 * MIB, 4096);
    let r = backup(
        &server,
        "20",
        &format!("{}&bitmap=b1&new-bitmap=b2", q.uri("fleece")),
    );
    unfleece(&mut q, Some("b1"));
    let img = &r["images"][0];
    assert_eq!(img["bitmap"], "b1", "{img}");
    assert_eq!(img["bytes_read"], 2 * MIB, "{img}");
    restores_disk_img(&server, r["snapshot"].as_str().unwrap(), &expected);
}

#[test]
fn a_reused_bitmap_name_never_reaches_past_a_later_backup() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = make_image(dir.path());
    let qcow = qcow_of(&raw, dir.path());
    add_bitmap(&qcow, "b");
    let nbd = export(&qcow, dir.path(), Some("b"));
    // Two backups both say they started bitmap "b" (a retried run that
    // reused the name); the later one then fails verification.
    backup(&server, "30", &format!("{}&new-bitmap=b", nbd.uri));
    let later = backup(&server, "30", &format!("{}&new-bitmap=b", nbd.uri));
    let snap = later["snapshot"].as_str().unwrap();
    let manifest = server.datastore().join(snap).join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["verification"] = serde_json::json!({ "state": "failed", "time": 1 });
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    // The earlier one carries the same record, and is the newest sound
    // base: it is refused all the same, because a later backup exists.
    let r = backup(&server, "30", &format!("{}&bitmap=b", nbd.uri));
    let img = &r["images"][0];
    let why = img["bitmap_refused"].as_str().unwrap();
    assert!(why.contains("a later backup"), "{img}");
    assert_eq!(img["bytes_read"], 5 << 20);
    // And --reread turns the bitmap off.
    let spec = format!("disk.img={}&bitmap=b", nbd.uri);
    let out = hoard(
        &server.addr,
        &[
            "backup",
            "--type",
            "vm",
            "--id",
            "30",
            "--time",
            "999999",
            "--reread",
            "--chunk-size",
            "1M",
            "--output-format",
            "json",
            &spec,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let why = r["images"][0]["bitmap_refused"].as_str().unwrap();
    assert!(why.contains("--reread"), "{r}");
}
