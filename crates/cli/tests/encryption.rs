//! Client-side compression and encryption end to end: the real `hoard`
//! binary against a real server on loopback. Keys are made with `hoard
//! key`; tampering is done to the datastore's files the way a hostile
//! server (or its disk) could.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Server, client_env, stderr, walk};
use hoard_codec::blob::{self, BlobHeader, HEADER_SIZE};
use hoard_protocol::{Features, Message, Secret};
use serde_json::Value;

const MARKER: &[u8] = b"HOARD-PLAINTEXT-MARKER-7f3a";

/// Runs `hoard` against `server` with extra environment.
fn run(server: &Server, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoard"))
        .envs(client_env(&server.addr))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

fn json(out: Output) -> Value {
    serde_json::from_slice(&ok(out).stdout).unwrap()
}

/// A new unprotected key file; returns its path and fingerprint.
fn new_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = ok(Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["key", "create", "--no-passphrase"])
        .arg(&path)
        .output()
        .unwrap());
    let fp = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (path, fp)
}

/// Data that compresses, with the marker in it.
fn text_with_marker(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("line {i} seed {seed} of some log text; ").as_bytes());
        if i.is_multiple_of(97) {
            out.extend_from_slice(MARKER);
        }
        i += 1;
    }
    out.truncate(len);
    out
}

/// An image (compressible text and noise, with the marker) and a tree
/// whose file contents and names hold the marker.
fn sources(dir: &Path) -> (PathBuf, PathBuf) {
    let img = dir.join("disk.img");
    let mut data = text_with_marker(3 << 20, 1);
    data.extend(common::noise(2 << 20, 9));
    data.extend(vec![0u8; 1 << 20]);
    std::fs::write(&img, &data).unwrap();
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), text_with_marker(300_000, 2)).unwrap();
    std::fs::write(tree.join("sub/b.bin"), common::noise(200_000, 3)).unwrap();
    let name = format!("{}.txt", String::from_utf8_lossy(MARKER));
    std::fs::write(tree.join("sub").join(name), b"named by the marker").unwrap();
    (img, tree)
}

fn backup(
    server: &Server,
    env: &[(&str, &str)],
    time: &str,
    extra: &[&str],
    img: &Path,
    tree: &Path,
) -> Value {
    let img_spec = format!("disk.img={}", img.display());
    let tree_spec = format!("root={}", tree.display());
    let mut args = vec![
        "backup",
        "--type",
        "vm",
        "--id",
        "1",
        "--time",
        time,
        "--output-format",
        "json",
        "-q",
    ];
    args.extend_from_slice(extra);
    args.push(&img_spec);
    args.push(&tree_spec);
    json(run(server, env, &args))
}

fn restore_both(server: &Server, env: &[(&str, &str)], snap: &str, out: &Path) -> (Output, Output) {
    let img = out.join("disk.img");
    let tree = out.join("tree");
    let a = run(
        server,
        env,
        &["restore", snap, "disk.img", img.to_str().unwrap(), "-q"],
    );
    let b = run(
        server,
        env,
        &["restore", snap, "root", tree.to_str().unwrap(), "-q"],
    );
    (a, b)
}

fn same_files(a: &Path, b: &Path) {
    for rel in ["a.txt", "sub/b.bin"] {
        assert_eq!(
            std::fs::read(a.join(rel)).unwrap(),
            std::fs::read(b.join(rel)).unwrap(),
            "{rel}"
        );
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The chunk files of a datastore.
fn chunk_files(ds: &Path) -> Vec<PathBuf> {
    walk(&ds.join(".chunks"))
        .into_iter()
        .filter(|p| {
            p.is_file()
                && p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.strip_suffix(".e").unwrap_or(&n).len() == 64
                })
        })
        .collect()
}

fn magic_of(p: &Path) -> [u8; 8] {
    let raw = std::fs::read(p).unwrap();
    raw[..8].try_into().unwrap()
}

fn snapshot_dir(ds: &Path, snap: &str) -> PathBuf {
    ds.join(snap)
}

/// The digests of an index file (fixed: 32-byte entries; dynamic: end
/// offset then digest).
fn index_digests(path: &Path) -> Vec<String> {
    let raw = std::fs::read(path).unwrap();
    let entry = if path.extension().unwrap() == "fidx" {
        32
    } else {
        40
    };
    raw[128..]
        .chunks_exact(entry)
        .map(|e| hex::encode(&e[entry - 32..]))
        .collect()
}

fn chunk_path(ds: &Path, digest: &str) -> PathBuf {
    ds.join(".chunks").join(&digest[..2]).join(digest)
}

/// Where an encrypted chunk lives: its own name, apart from plain ones.
fn encrypted_chunk_path(ds: &Path, digest: &str) -> PathBuf {
    ds.join(".chunks")
        .join(&digest[..2])
        .join(format!("{digest}.e"))
}

/// Flips a byte of a stored chunk's payload and fixes its CRC, as a
/// hostile server would: only the client's own checks can notice.
fn tamper_chunk(path: &Path, at_from_end: usize) {
    let mut raw = std::fs::read(path).unwrap();
    let n = raw.len();
    raw[n - at_from_end] ^= 0x40;
    let h = BlobHeader::decode(&raw, n as u64).unwrap();
    let fixed = BlobHeader::new(h.encoding, h.raw_size, &raw[HEADER_SIZE..]);
    raw[..HEADER_SIZE].copy_from_slice(&fixed.encode());
    std::fs::write(path, raw).unwrap();
}

#[test]
fn encrypted_backups_round_trip_and_leave_no_plaintext() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (key, fp) = new_key(work.path(), "key.json");
    let key_s = key.to_str().unwrap();
    let env = [("HOARD_KEY", key_s)];
    let (img, tree) = sources(work.path());

    let first = backup(&server, &env, "2026-11-01T00:00:00Z", &[], &img, &tree);
    assert_eq!(first["key"], fp.as_str());
    let img_report = &first["images"][0];
    assert!(img_report["chunks_uploaded"].as_u64().unwrap() > 0);
    // Compressed: the text chunks shrink.
    assert!(
        img_report["bytes_sent"].as_u64().unwrap() < img_report["bytes_uploaded"].as_u64().unwrap(),
        "{img_report}"
    );

    // Every chunk is encrypted and no byte of the marker is anywhere.
    let ds = server.datastore();
    let chunks = chunk_files(&ds);
    assert!(!chunks.is_empty());
    for c in &chunks {
        assert_eq!(&magic_of(c), b"hoardCE1", "{}", c.display());
    }
    for f in walk(&ds) {
        if f.is_file() {
            let raw = std::fs::read(&f).unwrap();
            assert!(!contains(&raw, MARKER), "plaintext in {}", f.display());
        }
    }
    // The manifest carries the seal, naming the key.
    let manifest = std::fs::read_to_string(
        snapshot_dir(&ds, "vm/1/2026-11-01T00:00:00Z").join("manifest.json"),
    )
    .unwrap();
    assert!(manifest.contains("\"seal\""), "{manifest}");
    assert!(manifest.contains(&fp), "{manifest}");

    // Full restores, a listing and a single file.
    let out = tempfile::tempdir().unwrap();
    let (a, b) = restore_both(&server, &env, "vm/1/2026-11-01T00:00:00Z", out.path());
    ok(a);
    ok(b);
    assert_eq!(
        std::fs::read(out.path().join("disk.img")).unwrap(),
        std::fs::read(&img).unwrap()
    );
    same_files(&tree, &out.path().join("tree"));
    let ls = ok(run(
        &server,
        &env,
        &["ls", "vm/1/2026-11-01T00:00:00Z", "root", "sub"],
    ));
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.contains("b.bin") && ls.contains(&String::from_utf8_lossy(MARKER).to_string()),
        "{ls}"
    );
    let one = out.path().join("one.txt");
    ok(run(
        &server,
        &env,
        &[
            "restore",
            "vm/1/2026-11-01T00:00:00Z",
            "root",
            one.to_str().unwrap(),
            "--path",
            "a.txt",
            "-q",
        ],
    ));
    assert_eq!(
        std::fs::read(&one).unwrap(),
        std::fs::read(tree.join("a.txt")).unwrap()
    );

    // Incremental: the sealed snapshot is the base; nothing new is sent.
    let second = backup(&server, &env, "2026-11-02T00:00:00Z", &[], &img, &tree);
    assert_eq!(
        second["images"][0]["base"],
        "vm/1/2026-11-01T00:00:00Z/disk.img.fidx"
    );
    assert_eq!(second["images"][0]["unchanged"], true);
    assert_eq!(second["trees"][0]["files_unchanged"], 3);
    assert_eq!(second["trees"][0]["data"]["chunks_uploaded"], 0);
    let out2 = tempfile::tempdir().unwrap();
    let (a, b) = restore_both(&server, &env, "vm/1/2026-11-02T00:00:00Z", out2.path());
    ok(a);
    ok(b);
    same_files(&tree, &out2.path().join("tree"));

    // The server's verify checks what it can and says so.
    let v = common::maintenance_json(&ds, &["verify"]);
    assert_eq!(v["chunks_encrypted"], v["chunks_checked"], "{v}");
    assert!(v["chunks_encrypted"].as_u64().unwrap() > 0);
}

#[test]
fn compression_is_chosen_by_the_client() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (img, tree) = sources(work.path());
    let none = backup(
        &server,
        &[],
        "2026-11-01T00:00:00Z",
        &["--compress", "none"],
        &img,
        &tree,
    );
    let r = &none["images"][0];
    assert_eq!(
        r["bytes_sent"].as_u64().unwrap(),
        r["bytes_uploaded"].as_u64().unwrap() + 16 * r["chunks_uploaded"].as_u64().unwrap()
    );
    let ds = server.datastore();
    for c in chunk_files(&ds) {
        assert_eq!(&magic_of(&c), b"hoardCR1", "{}", c.display());
    }
    let out = tempfile::tempdir().unwrap();
    let (a, b) = restore_both(&server, &[], "vm/1/2026-11-01T00:00:00Z", out.path());
    ok(a);
    ok(b);
    assert_eq!(
        std::fs::read(out.path().join("disk.img")).unwrap(),
        std::fs::read(&img).unwrap()
    );
    same_files(&tree, &out.path().join("tree"));

    // Another group, compressed at level 3: the text is stored zstd, the
    // noise raw.
    let server = Server::start();
    let z = backup(
        &server,
        &[],
        "2026-11-01T00:00:00Z",
        &["--compress", "zstd:3"],
        &img,
        &tree,
    );
    let r = &z["images"][0];
    assert!(
        r["bytes_sent"].as_u64().unwrap() < r["bytes_uploaded"].as_u64().unwrap() / 2,
        "{r}"
    );
    let magics: Vec<[u8; 8]> = chunk_files(&server.datastore())
        .iter()
        .map(|c| magic_of(c))
        .collect();
    assert!(magics.contains(b"hoardCZ1") && magics.contains(b"hoardCR1"));
    let out = tempfile::tempdir().unwrap();
    let (a, b) = restore_both(&server, &[], "vm/1/2026-11-01T00:00:00Z", out.path());
    ok(a);
    ok(b);
    assert_eq!(
        std::fs::read(out.path().join("disk.img")).unwrap(),
        std::fs::read(&img).unwrap()
    );

    let bad = run(
        &server,
        &[],
        &[
            "backup",
            "--type",
            "vm",
            "--id",
            "2",
            "--compress",
            "lz4",
            "x=/dev/null",
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("lz4"), "{}", stderr(&bad));
}

#[test]
fn a_missing_or_wrong_key_is_named() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (key, fp) = new_key(work.path(), "key.json");
    let (other, other_fp) = new_key(work.path(), "other.json");
    let (img, tree) = sources(work.path());
    backup(
        &server,
        &[("HOARD_KEY", key.to_str().unwrap())],
        "2026-11-01T00:00:00Z",
        &[],
        &img,
        &tree,
    );
    let snap = "vm/1/2026-11-01T00:00:00Z";
    let out = tempfile::tempdir().unwrap();

    let (a, b) = restore_both(&server, &[], snap, out.path());
    for o in [&a, &b] {
        assert_eq!(o.status.code(), Some(11), "{}", stderr(o));
        assert!(
            stderr(o).contains(&fp) && stderr(o).contains("no key"),
            "{}",
            stderr(o)
        );
    }
    let wrong = [("HOARD_KEY", other.to_str().unwrap())];
    let (a, b) = restore_both(&server, &wrong, snap, out.path());
    for o in [&a, &b] {
        assert_eq!(o.status.code(), Some(11), "{}", stderr(o));
        assert!(
            stderr(o).contains(&fp) && stderr(o).contains(&other_fp),
            "{}",
            stderr(o)
        );
    }
    let ls = run(&server, &wrong, &["ls", snap, "root"]);
    assert_eq!(ls.status.code(), Some(11), "{}", stderr(&ls));
    // Nothing was written.
    assert!(!out.path().join("disk.img").exists() && !out.path().join("tree").exists());

    // The listing says which key a snapshot needs.
    let list = json(run(&server, &[], &["snapshots", "--output-format", "json"]));
    assert_eq!(list[0]["encryption"]["key"], fp.as_str());
    assert_eq!(list[0]["encryption"]["seal"], "no key");

    // A plain backup never builds on the encrypted snapshot, and an
    // encrypted one with another key neither.
    let plain = backup(&server, &[], "2026-11-02T00:00:00Z", &[], &img, &tree);
    assert!(plain["images"][0]["base"].is_null(), "{plain}");
    assert!(plain["trees"][0]["base"].is_null(), "{plain}");
    let enc = backup(&server, &wrong, "2026-11-03T00:00:00Z", &[], &img, &tree);
    assert!(enc["images"][0]["base"].is_null(), "{enc}");
    // And the encrypted backup with the first key builds on its own.
    let again = backup(
        &server,
        &[("HOARD_KEY", key.to_str().unwrap())],
        "2026-11-04T00:00:00Z",
        &[],
        &img,
        &tree,
    );
    assert_eq!(
        again["images"][0]["base"],
        "vm/1/2026-11-01T00:00:00Z/disk.img.fidx"
    );
}

#[test]
fn passphrase_protected_keys() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("key.json");
    let made = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .env("HOARD_KEY_PASSPHRASE", "correct horse")
        .args(["key", "create"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !std::fs::read_to_string(&key)
            .unwrap()
            .contains("\"kdf\":null")
    );
    // An existing key file is never replaced.
    let again = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["key", "create", "--no-passphrase"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));

    let (img, tree) = sources(work.path());
    let k = key.to_str().unwrap();
    let good = [("HOARD_KEY", k), ("HOARD_KEY_PASSPHRASE", "correct horse")];
    backup(&server, &good, "2026-11-01T00:00:00Z", &[], &img, &tree);
    let bad = [("HOARD_KEY", k), ("HOARD_KEY_PASSPHRASE", "wrong")];
    let out = tempfile::tempdir().unwrap();
    let (a, _) = restore_both(&server, &bad, "vm/1/2026-11-01T00:00:00Z", out.path());
    assert_eq!(a.status.code(), Some(11), "{}", stderr(&a));
    assert!(stderr(&a).contains("wrong passphrase"), "{}", stderr(&a));
    let none = run(
        &server,
        &[("HOARD_KEY", k)],
        &["restore", "vm/1/2026-11-01T00:00:00Z", "disk.img", "-"],
    );
    assert_eq!(none.status.code(), Some(11), "{}", stderr(&none));
    let (a, _) = restore_both(&server, &good, "vm/1/2026-11-01T00:00:00Z", out.path());
    ok(a);
}

#[test]
fn tampering_is_detected() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (key, _) = new_key(work.path(), "key.json");
    let env = [("HOARD_KEY", key.to_str().unwrap())];
    let (img, tree) = sources(work.path());
    let ds = server.datastore();
    let mut time = 1u32;
    let mut fresh = |server: &Server| {
        time += 1;
        let t = format!("2026-11-{time:02}T00:00:00Z");
        // --reread and a new group each time: every chunk is this
        // snapshot's own.
        backup(server, &env, &t, &["--reread"], &img, &tree);
        format!("vm/1/{t}")
    };
    let expect_damage = |o: &Output, needle: &str| {
        assert_eq!(o.status.code(), Some(8), "{}", stderr(o));
        assert!(stderr(o).contains(needle), "{}", stderr(o));
    };

    // A chunk of the image, its CRC made to match.
    let snap = fresh(&server);
    let dir = snapshot_dir(&ds, &snap);
    let digests = index_digests(&dir.join("disk.img.fidx"));
    tamper_chunk(&encrypted_chunk_path(&ds, &digests[0]), 20);
    let out = tempfile::tempdir().unwrap();
    let r = run(
        &server,
        &env,
        &[
            "restore",
            &snap,
            "disk.img",
            out.path().join("i").to_str().unwrap(),
        ],
    );
    expect_damage(&r, "fails authentication");
    assert!(!out.path().join("i").exists());

    // An archive entry: a chunk of the metadata stream.
    let server = Server::start();
    let ds = server.datastore();
    let snap = fresh(&server);
    let dir = snapshot_dir(&ds, &snap);
    let meta = index_digests(&dir.join("root.hmeta.didx"));
    tamper_chunk(&encrypted_chunk_path(&ds, &meta[0]), 30);
    let r = run(&server, &env, &["ls", &snap, "root"]);
    expect_damage(&r, "fails authentication");

    // An index swapped for another, with its header checksum and the
    // manifest's entry updated to match: the seal still names the old.
    let server = Server::start();
    let ds = server.datastore();
    let snap = fresh(&server);
    let dir = snapshot_dir(&ds, &snap);
    let idx = dir.join("disk.img.fidx");
    let mut raw = std::fs::read(&idx).unwrap();
    let (a, b) = (128, 160);
    let first: Vec<u8> = raw[a..a + 32].to_vec();
    let second: Vec<u8> = raw[b..b + 32].to_vec();
    raw[a..a + 32].copy_from_slice(&second);
    raw[b..b + 32].copy_from_slice(&first);
    use sha2::Digest as _;
    let csum: [u8; 32] = sha2::Sha256::digest(&raw[128..]).into();
    raw[48..80].copy_from_slice(&csum);
    std::fs::write(&idx, &raw).unwrap();
    let mpath = dir.join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        if f["name"] == "disk.img.fidx" {
            f["index_csum"] = Value::String(hex::encode(csum));
        }
    }
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let r = run(&server, &env, &["restore", &snap, "disk.img", "-"]);
    expect_damage(&r, "differs from the sealed");

    // The manifest: a file dropped, then the seal's MAC changed.
    let good = fresh(&server);
    let snap = fresh(&server);
    let mpath = snapshot_dir(&ds, &snap).join("manifest.json");
    let orig = std::fs::read_to_string(&mpath).unwrap();
    let mut m: Value = serde_json::from_str(&orig).unwrap();
    m["files"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != "root.hdata.didx");
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let r = run(&server, &env, &["restore", &snap, "disk.img", "-"]);
    expect_damage(&r, "names 3 files, the manifest 2");
    let mut m: Value = serde_json::from_str(&orig).unwrap();
    let mac = m["seal"]["mac"].as_str().unwrap().to_string();
    let flipped = format!(
        "{}{}",
        if mac.starts_with('0') { "1" } else { "0" },
        &mac[1..]
    );
    m["seal"]["mac"] = Value::String(flipped);
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let r = run(&server, &env, &["restore", &snap, "disk.img", "-"]);
    expect_damage(&r, "the manifest was altered");
    let list = json(run(
        &server,
        &env,
        &["snapshots", "--output-format", "json"],
    ));
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["snapshot"] == snap.as_str())
        .unwrap();
    assert!(
        entry["encryption"]["seal"]
            .as_str()
            .unwrap()
            .starts_with("broken"),
        "{entry}"
    );
    // A tampered snapshot is never a base: the next backup builds on the
    // newest snapshot whose seal holds (the one before it).
    let next = backup(&server, &env, "2026-11-28T00:00:00Z", &[], &img, &tree);
    assert_eq!(
        next["images"][0]["base"],
        format!("{good}/disk.img.fidx").as_str()
    );
}

#[test]
fn paper_keys_and_master_key_recovery() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (key, fp) = new_key(work.path(), "key.json");
    let hoard_cmd = || Command::new(env!("CARGO_BIN_EXE_hoard"));

    // The paper copy reads back into the same key.
    let paper = ok(hoard_cmd()
        .args(["key", "paperkey"])
        .arg(&key)
        .output()
        .unwrap());
    let text = String::from_utf8(paper.stdout).unwrap();
    assert!(text.contains(&fp), "{text}");
    let paper_file = work.path().join("paper.txt");
    std::fs::write(&paper_file, &text).unwrap();
    let back = work.path().join("back.json");
    ok(hoard_cmd()
        .args(["key", "import-paper"])
        .arg(&paper_file)
        .arg(&back)
        .output()
        .unwrap());
    let info = ok(hoard_cmd()
        .args(["key", "info"])
        .arg(&back)
        .output()
        .unwrap());
    assert!(String::from_utf8_lossy(&info.stdout).contains(&fp));
    // An existing key file is never replaced.
    let again = hoard_cmd()
        .args(["key", "import-paper"])
        .arg(&paper_file)
        .arg(&back)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    // A typo is found, with its line.
    let typo: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("3:") {
                let at = l.find(':').unwrap() + 3;
                let c = if &l[at..at + 1] == "0" { "1" } else { "0" };
                format!("{}{c}{}\n", &l[..at], &l[at + 1..])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(typo, text);
    let typo_file = work.path().join("typo.txt");
    std::fs::write(&typo_file, &typo).unwrap();
    let bad = hoard_cmd()
        .args(["key", "import-paper"])
        .arg(&typo_file)
        .arg(work.path().join("x.json"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("line"), "{}", stderr(&bad));

    // A master key pair; a backup made with its public half.
    let master = work.path().join("master");
    let made = hoard_cmd()
        .env("HOARD_MASTER_PASSPHRASE", "master pass")
        .args(["key", "create-master"])
        .arg(&master)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let again = hoard_cmd()
        .env("HOARD_MASTER_PASSPHRASE", "master pass")
        .args(["key", "create-master"])
        .arg(&master)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    let (img, tree) = sources(work.path());
    let pubkey = work.path().join("master.pub");
    let env = [
        ("HOARD_KEY", key.to_str().unwrap()),
        ("HOARD_MASTER_PUBKEY", pubkey.to_str().unwrap()),
    ];
    backup(&server, &env, "2026-11-01T00:00:00Z", &[], &img, &tree);
    // The key is lost; the master key recovers it from the snapshot.
    std::fs::remove_file(&key).unwrap();
    let recovered = work.path().join("recovered.json");
    let master_key = work.path().join("master.key");
    let recover = |expect: Option<&str>, out: &Path, pass: &str| {
        let mut args = vec![
            "key",
            "recover",
            "vm/1/2026-11-01T00:00:00Z",
            "--master",
            master_key.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--no-passphrase",
        ];
        if let Some(e) = expect {
            args.extend(["--expect", e]);
        }
        run(&server, &[("HOARD_MASTER_PASSPHRASE", pass)], &args)
    };
    // The server chose the recovery copy: without the expected
    // fingerprint (and no terminal to confirm on) nothing is written, and
    // another key's copy is refused.
    let r = recover(None, &recovered, "master pass");
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    let r = recover(
        Some("0000:0000:0000:0000:0000:0000:0000:0000"),
        &recovered,
        "master pass",
    );
    assert_eq!(r.status.code(), Some(11), "{}", stderr(&r));
    assert!(stderr(&r).contains("not the expected"), "{}", stderr(&r));
    assert!(!recovered.exists());
    let r = recover(Some(&fp), &recovered, "master pass");
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), fp);
    let out = tempfile::tempdir().unwrap();
    let (a, b) = restore_both(
        &server,
        &[("HOARD_KEY", recovered.to_str().unwrap())],
        "vm/1/2026-11-01T00:00:00Z",
        out.path(),
    );
    ok(a);
    ok(b);
    assert_eq!(
        std::fs::read(out.path().join("disk.img")).unwrap(),
        std::fs::read(&img).unwrap()
    );
    // The wrong master passphrase.
    let r = recover(Some(&fp), &work.path().join("r2.json"), "nope");
    assert_eq!(r.status.code(), Some(11), "{}", stderr(&r));
}

/// Sends UploadChunk of `data` (a chunk file's bytes) under `digest`.
fn upload_blob(
    c: &mut common::Conn,
    stream: u8,
    digest: hoard_types::Digest,
    data: impl Into<bytes::Bytes>,
) {
    c.send(
        stream,
        &Message::UploadChunk {
            digest,
            data: data.into(),
        },
    );
}

/// Sends a SealSnapshot with an empty body for vm/1/2026-11-01T00:00:00Z.
fn send_empty_seal(c: &mut common::Conn, stream: u8) {
    c.send(
        stream,
        &Message::SealSnapshot {
            snapshot: "vm/1/2026-11-01T00:00:00Z".into(),
            mac: [0; 32],
            body: "{}".into(),
        },
    );
}

/// A raw version 2 connection asking for `features`.
fn connect_with(server: &Server, features: Features) -> common::Conn {
    let mut c = common::Conn::connect_tls(&server.addr, &server.fingerprint, &[b"hoard/2"]);
    match c.recv() {
        (
            0,
            Message::Hello {
                features: offered, ..
            },
        ) => {
            assert!(
                offered.contains(Features::ENCODED_CHUNKS)
                    && offered.contains(Features::ENCRYPTION)
            );
        }
        other => panic!("expected Hello, got {other:?}"),
    }
    c.send(
        0,
        &Message::Authenticate {
            features,
            token: Secret(server.token.clone()),
        },
    );
    match c.recv() {
        (0, Message::Ok) => c,
        other => panic!("authentication failed: {other:?}"),
    }
}

#[test]
fn encoded_uploads_are_checked_by_the_server() {
    let server = Server::start();
    let data = b"some chunk data that is plain".repeat(100);
    let digest = hoard_types::Digest::of(&data);
    let plain_blob = blob::encode_raw(&data);
    let data_plain = data.clone();
    let key = hoard_codec::Key::from_secret(&[5u8; 32]);
    let enc_blob = key.encrypt(
        hoard_codec::Kind::Chunk,
        &data,
        hoard_codec::Compression::default(),
    );

    // Without the encryption feature, an encrypted chunk is refused.
    let mut c = connect_with(
        &server,
        Features(Features::EXTENSIONS.0 | Features::ENCODED_CHUNKS.0),
    );
    c.send(
        1,
        &Message::UploadChunk {
            digest: key.digest(hoard_codec::Kind::Chunk, &data),
            data: enc_blob.clone().into(),
        },
    );
    c.expect_error(1, "did not negotiate encryption");
    // A plain blob whose data does not hash to the digest.
    upload_blob(
        &mut c,
        2,
        hoard_types::Digest::of(b"other"),
        plain_blob.clone(),
    );
    c.expect_error(2, "digest");
    // A blob with a broken CRC.
    let mut broken = plain_blob.clone();
    let n = broken.len();
    broken[n - 1] ^= 1;
    upload_blob(&mut c, 3, digest, broken);
    c.expect_error(3, "CRC");
    // SealSnapshot needs the encryption feature.
    send_empty_seal(&mut c, 4);
    c.expect_error(4, "encryption feature");
    drop(c);

    // With it: an encrypted blob under the digest of plain data is stored
    // under its own name, apart from plain chunks: it neither blocks nor
    // reveals the plain chunk, whose upload goes on as if it were absent.
    // A plain chunk is refused in the encrypting session.
    let mut c = connect_with(&server, Features::SUPPORTED);
    upload_blob(&mut c, 1, digest, enc_blob);
    c.expect_ok(1);
    let path = chunk_path(&server.datastore(), &digest.to_hex());
    let epath = encrypted_chunk_path(&server.datastore(), &digest.to_hex());
    assert_eq!(&magic_of(&epath), b"hoardCE1");
    assert!(!path.exists());
    upload_blob(&mut c, 2, digest, plain_blob.clone());
    c.expect_error(2, "an unencrypted chunk, in an encrypting session");
    // SealSnapshot for a snapshot this connection does not write.
    send_empty_seal(&mut c, 3);
    c.expect_error(3, "does not write");
    let mut p = connect_with(
        &server,
        Features(Features::EXTENSIONS.0 | Features::ENCODED_CHUNKS.0),
    );
    upload_blob(&mut p, 1, digest, plain_blob);
    p.expect_ok(1);
    assert_eq!(&magic_of(&path), b"hoardCR1");
    assert_eq!(&magic_of(&epath), b"hoardCE1");
    // Knowing a stored chunk's digest is not enough to pass an upload
    // for it: the data is checked even though the chunk exists.
    upload_blob(&mut p, 3, digest, blob::encode_raw(b"not the data"));
    p.expect_error(3, "digest");
    // The plain session downloads the plain data.
    p.send(
        2,
        &Message::DownloadChunks(hoard_protocol::DigestList::from_digests([&digest])),
    );
    match p.recv() {
        (2, Message::Chunk { data, .. }) => {
            assert_eq!(blob::decode_plain(&digest, &data).unwrap(), data_plain)
        }
        other => panic!("expected the chunk, got {other:?}"),
    }
}

#[test]
fn a_key_reads_only_snapshots_sealed_with_it() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (key, _) = new_key(work.path(), "key.json");
    let env = [("HOARD_KEY", key.to_str().unwrap())];
    let (img, tree) = sources(work.path());
    backup(&server, &[], "2026-11-01T00:00:00Z", &[], &img, &tree);
    backup(&server, &env, "2026-11-02T00:00:00Z", &[], &img, &tree);
    backup(&server, &[], "2026-11-03T00:00:00Z", &[], &img, &tree);

    // "latest" with the key is the newest snapshot sealed with it, not
    // the newer plain one.
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("img");
    let r = json(run(
        &server,
        &env,
        &[
            "restore",
            "vm/1/latest",
            "disk.img",
            target.to_str().unwrap(),
            "--output-format",
            "json",
            "-q",
        ],
    ));
    assert_eq!(r["snapshot"], "vm/1/2026-11-02T00:00:00Z");
    // A plain snapshot is not read with a key: a server could put one in
    // place of an encrypted one.
    let r = run(
        &server,
        &env,
        &["restore", "vm/1/2026-11-01T00:00:00Z", "disk.img", "-"],
    );
    assert_eq!(r.status.code(), Some(11), "{}", stderr(&r));
    assert!(stderr(&r).contains("not encrypted"), "{}", stderr(&r));
    // Nor is an encrypted one whose seal was removed, with or without
    // the key: the manifest says an encrypting client wrote it.
    let mpath =
        snapshot_dir(&server.datastore(), "vm/1/2026-11-02T00:00:00Z").join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    assert_eq!(m["encrypted"], true);
    m.as_object_mut().unwrap().remove("seal");
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    for e in [&env[..], &[]] {
        let r = run(
            &server,
            e,
            &["restore", "vm/1/2026-11-02T00:00:00Z", "disk.img", "-"],
        );
        assert_eq!(r.status.code(), Some(8), "{}", stderr(&r));
        assert!(stderr(&r).contains("has no seal"), "{}", stderr(&r));
    }
    // And with the flag removed too, a client without the key still
    // never takes its encrypted chunks for plain data: they are not
    // under plain names.
    m.as_object_mut().unwrap().remove("encrypted");
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let r = run(
        &server,
        &[],
        &["restore", "vm/1/2026-11-02T00:00:00Z", "disk.img", "-"],
    );
    assert_eq!(r.status.code(), Some(5), "{}", stderr(&r));
    assert!(stderr(&r).contains("is encrypted"), "{}", stderr(&r));
}

#[test]
fn an_encrypting_session_cannot_mix_chunk_kinds_and_must_seal() {
    let server = Server::start();
    let key = hoard_codec::Key::from_secret(&[9u8; 32]);
    let data = common::noise(10_000, 4);
    let kd = key.digest(hoard_codec::Kind::Chunk, &data);
    let blob = key.encrypt(
        hoard_codec::Kind::Chunk,
        &data,
        hoard_codec::Compression::default(),
    );
    let t = common::T0;

    // A file of encrypted chunks, and the connection ends without a seal:
    // the snapshot is not complete.
    let mut c = connect_with(&server, Features::SUPPORTED);
    upload_blob(&mut c, 1, kd, blob);
    c.expect_ok(1);
    c.send(
        2,
        &common::create(
            hoard_types::BackupType::Vm,
            "1",
            t,
            0x01,
            "disk.img",
            16384,
            data.len() as u64,
        ),
    );
    common::expect_created(&mut c, 2);
    c.send(2, &common::fixed(&[(0, kd)]));
    c.send(2, &Message::BackupFinished);
    c.expect_ok(2);
    // A plain chunk is refused in this session, and one stored by a
    // plain session cannot go into this encrypted snapshot.
    let plain = common::noise(10_000, 5);
    let pd = hoard_types::Digest::of(&plain);
    upload_blob(&mut c, 3, pd, blob::encode_raw(&plain));
    c.expect_error(3, "an unencrypted chunk, in an encrypting session");
    let mut p = connect_with(
        &server,
        Features(Features::EXTENSIONS.0 | Features::ENCODED_CHUNKS.0),
    );
    upload_blob(&mut p, 1, pd, blob::encode_raw(&plain));
    p.expect_ok(1);
    drop(p);
    c.send(
        4,
        &common::create(
            hoard_types::BackupType::Vm,
            "1",
            t,
            0x01,
            "other.img",
            16384,
            plain.len() as u64,
        ),
    );
    common::expect_created(&mut c, 4);
    c.send(4, &common::fixed(&[(0, pd)]));
    c.expect_error(4, "is not in the chunk store");
    // An encrypted chunk with the digest of stored plain data is stored
    // under its own name, just as if the plain one did not exist.
    c.send(
        5,
        &Message::UploadChunk {
            digest: pd,
            data: key
                .encrypt(
                    hoard_codec::Kind::Chunk,
                    &data,
                    hoard_codec::Compression::None,
                )
                .into(),
        },
    );
    c.expect_ok(5);
    let pd_path = chunk_path(&server.datastore(), &pd.to_hex());
    assert_eq!(&magic_of(&pd_path), b"hoardCR1");
    assert!(encrypted_chunk_path(&server.datastore(), &pd.to_hex()).exists());
    drop(c);
    // The server closes the connection's snapshots once it is gone.
    let mpath = server
        .datastore()
        .join("vm/1/2019-04-23T12:23:36Z/manifest.json");
    let mut m = Value::Null;
    for _ in 0..100 {
        m = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
        if m["state"] != "writing" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(m["state"], "incomplete", "{m}");

    // A plain session cannot reference the encrypted chunk.
    let mut c = connect_with(
        &server,
        Features(Features::EXTENSIONS.0 | Features::ENCODED_CHUNKS.0),
    );
    c.send(
        1,
        &common::create(
            hoard_types::BackupType::Vm,
            "1",
            t + 10,
            0x01,
            "disk.img",
            16384,
            data.len() as u64,
        ),
    );
    common::expect_created(&mut c, 1);
    c.send(1, &common::fixed(&[(0, kd)]));
    c.expect_error(1, "is encrypted");
}

#[test]
fn gc_keeps_and_removes_encrypted_chunks_like_plain_ones() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (key, _) = new_key(work.path(), "key.json");
    let env = [("HOARD_KEY", key.to_str().unwrap())];
    let (img, tree) = sources(work.path());
    backup(&server, &env, "2026-11-01T00:00:00Z", &[], &img, &tree);
    let plain_img = work.path().join("plain.img");
    std::fs::write(&plain_img, common::noise(300_000, 77)).unwrap();
    let spec = format!("disk.img={}", plain_img.display());
    ok(run(
        &server,
        &[],
        &["backup", "--type", "vm", "--id", "2", "-q", &spec],
    ));
    let ds = server.datastore();
    let gc = || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        common::maintenance_json(&ds, &["gc", "--grace", "0"])
    };
    let encrypted = || {
        chunk_files(&ds)
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(".e"))
            .count()
    };
    let before = encrypted();
    assert!(before > 0);
    // Everything is referenced: GC keeps both classes.
    let g = gc();
    assert_eq!(g["removed_chunks"], 0, "{g}");
    assert_eq!(encrypted(), before);
    let out = tempfile::tempdir().unwrap();
    let (a, b) = restore_both(&server, &env, "vm/1/2026-11-01T00:00:00Z", out.path());
    ok(a);
    ok(b);
    // The encrypted snapshot gone, its chunks go; the plain ones stay.
    std::fs::remove_dir_all(snapshot_dir(&ds, "vm/1/2026-11-01T00:00:00Z")).unwrap();
    let g = gc();
    assert_eq!(g["removed_chunks"].as_u64().unwrap(), before as u64, "{g}");
    assert_eq!(encrypted(), 0);
    let target = out.path().join("plain.img");
    ok(run(
        &server,
        &[],
        &[
            "restore",
            "vm/2/latest",
            "disk.img",
            target.to_str().unwrap(),
            "-q",
        ],
    ));
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&plain_img).unwrap()
    );
}
