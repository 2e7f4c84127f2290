//! File-tree backups end to end: the real `hoard` binary against a real
//! server on loopback. Trees are built by the tests; metadata that needs
//! privileges (owners, device nodes, capabilities) is covered when the
//! tests run as root, as CI does.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    Server, T0, client_env, create, dynamic, expect_created, hoard, noise, stderr, upload,
};
use hoard_archive::format::payload_header;
use hoard_archive::{Entry, Kind, MetaWriter, Timestamp, Xattr};
use hoard_protocol::{BackupFlags, Message};
use hoard_types::BackupType;
use serde_json::Value;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn backup(server: &Server, id: &str, time: &str, specs: &[String], extra: &[&str]) -> Value {
    let mut args = vec![
        "backup",
        "--type",
        "host",
        "--id",
        id,
        "--time",
        time,
        "--output-format",
        "json",
        "-q",
    ];
    args.extend_from_slice(extra);
    args.extend(specs.iter().map(|s| s.as_str()));
    let out = hoard(&server.addr, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn restore(server: &Server, snap: &str, target: &Path, extra: &[&str]) -> Value {
    let t = target.to_str().unwrap();
    let mut args = vec!["restore", snap, "root", t, "--output-format", "json", "-q"];
    args.extend_from_slice(extra);
    let out = hoard(&server.addr, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// A POSIX ACL as the kernel stores it in `system.posix_acl_access`:
/// version 2, then (tag u16, perm u16, id u32) entries sorted by tag.
fn acl_with_user(uid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 6, uid),
        (0x04, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// `security.capability` v2 granting CAP_NET_BIND_SERVICE, effective.
fn cap_net_bind() -> Vec<u8> {
    let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
    for word in [1u32 << 10, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

/// A tree with every kind of entry and metadata the test may create.
fn build_full_tree(root: &Path) {
    let p = |s: &str| root.join(s);
    std::fs::create_dir_all(p("etc/nginx/sites")).unwrap();
    std::fs::create_dir_all(p("var/empty")).unwrap();
    std::fs::create_dir_all(p("home/u/.cache")).unwrap();
    std::fs::write(p("etc/hostname"), b"web1\n").unwrap();
    std::fs::write(p("etc/empty"), b"").unwrap();
    std::fs::write(p("etc/nginx/nginx.conf"), noise(200_000, 1)).unwrap();
    std::fs::write(p("home/u/big.bin"), noise(3 << 20, 2)).unwrap();
    std::fs::write(p("home/u/name with spaces ü"), b"unicode").unwrap();
    std::fs::write(p("home/u/.cache/x"), b"cached").unwrap();
    // Hard links: three names, two directories.
    std::fs::hard_link(p("etc/hostname"), p("etc/hostname.link")).unwrap();
    std::fs::hard_link(p("etc/hostname"), p("home/u/hostname")).unwrap();
    // Symlinks: relative, absolute, dangling.
    std::os::unix::fs::symlink("../hostname", p("etc/nginx/rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", p("etc/abs")).unwrap();
    std::os::unix::fs::symlink("no/such/target", p("etc/dangling")).unwrap();
    // Special files.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p("var/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    let sock = std::os::unix::net::UnixListener::bind(p("var/sock")).unwrap();
    drop(sock);
    // A sparse file: 8 MiB with two 4 KiB islands.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(p("var/sparse.img")).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&noise(4096, 3), 1 << 20).unwrap();
        f.write_all_at(&noise(4096, 4), (8 << 20) - 4096).unwrap();
    }
    // Modes, including setuid, setgid and sticky.
    let chmod = |s: &str, m: u32| {
        std::fs::set_permissions(p(s), std::fs::Permissions::from_mode(m)).unwrap()
    };
    chmod("etc/nginx/nginx.conf", 0o600);
    chmod("home/u/big.bin", 0o4755);
    chmod("var/empty", 0o1777);
    chmod("home/u", 0o2750);
    // Extended attributes and an ACL.
    set_xattr(&p("etc/hostname"), "user.origin", b"dhcp");
    set_xattr(&p("etc/nginx"), "user.comment", &[0, 1, 2, 255]);
    set_xattr(
        &p("etc/nginx/nginx.conf"),
        "system.posix_acl_access",
        &acl_with_user(1234),
    );
    if is_root() {
        let dev = |s: &str, ft, rdev| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p(s),
                ft,
                rustix::fs::Mode::from_raw_mode(0o660),
                rdev,
            )
            .unwrap()
        };
        dev(
            "var/null",
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::makedev(1, 3),
        );
        dev(
            "var/loop9",
            rustix::fs::FileType::BlockDevice,
            rustix::fs::makedev(7, 9),
        );
        let chown = |s: &str, u: u32, g: u32| {
            rustix::fs::chownat(
                rustix::fs::CWD,
                p(s),
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap()
        };
        chown("home/u", 1000, 1000);
        chown("home/u/big.bin", 1000, 100);
        chown("etc/abs", 1001, 1002);
        chown("var/fifo", 33, 33);
        // Set after chown, which would clear them.
        chmod("home/u/big.bin", 0o4755);
        set_xattr(&p("home/u/big.bin"), "security.capability", &cap_net_bind());
    }
    // Times with nanoseconds, directories last (their entries changed them).
    for (i, e) in walk_all(root).iter().rev().enumerate() {
        set_mtime(e, 1_600_000_000 + i as i64 * 1000, 123_456_789 + i as i64);
    }
}

/// Every path below `root`, parents first.
fn walk_all(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// What a comparison of two trees looks at, per path.
#[derive(Debug, PartialEq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path (in walk order) sharing this inode.
    link: PathBuf,
}

fn describe(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut first_of: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut paths = walk_all(root);
    paths.insert(0, root.to_path_buf());
    for p in paths {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() {
            "char"
        } else {
            "block"
        };
        let mut xattrs = BTreeMap::new();
        let mut names = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(&p, &mut names[..]).unwrap();
        for name in names[..n].split(|&c| c == 0).filter(|n| !n.is_empty()) {
            let name = std::str::from_utf8(name).unwrap().to_string();
            let mut v = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(&p, name.as_str(), &mut v[..]).unwrap();
            v.truncate(len);
            xattrs.insert(name, v);
        }
        let link = first_of
            .entry(m.ino())
            .or_insert_with(|| rel.clone())
            .clone();
        out.insert(
            rel,
            Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec()),
                size: if ft.is_dir() { 0 } else { m.len() },
                content: ft.is_file().then(|| std::fs::read(&p).unwrap()),
                target: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                rdev: m.rdev(),
                xattrs,
                link,
            },
        );
    }
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (x, y) = (describe(a), describe(b));
    assert_eq!(
        x.keys().collect::<Vec<_>>(),
        y.keys().collect::<Vec<_>>(),
        "the same paths"
    );
    for (path, node) in &x {
        assert_eq!(Some(node), y.get(path), "{}", path.display());
    }
}

#[test]
fn every_file_type_and_metadata_kind_round_trips() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_full_tree(&src);
    let r = backup(
        &server,
        "web1",
        "2026-01-01T00:00:00Z",
        &[format!("root={}", src.display())],
        &["--chunk-size", "64K"],
    );
    let tree = &r["trees"][0];
    assert_eq!(tree["skipped"], 0, "{r}");
    assert!(tree["base"].is_null());
    let out = dir.path().join("out");
    let rr = restore(&server, "host/web1/2026-01-01T00:00:00Z", &out, &[]);
    assert_eq!(rr["failed"], 0, "{rr}");
    assert_same_tree(&src, &out);
    // Holes stay holes.
    let sparse = std::fs::metadata(out.join("var/sparse.img")).unwrap();
    assert_eq!(sparse.len(), 8 << 20);
    assert!(
        sparse.blocks() * 512 <= 64 << 10,
        "{} blocks",
        sparse.blocks()
    );
    if is_root() {
        let m = std::fs::symlink_metadata(out.join("var/null")).unwrap();
        assert!(m.file_type().is_char_device());
    }

    // Listing: entries with sizes, modes and times.
    let out = hoard(
        &server.addr,
        &[
            "ls",
            "host/web1/latest",
            "root",
            "etc",
            "--output-format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let l: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "abs",
            "dangling",
            "empty",
            "hostname",
            "hostname.link",
            "nginx"
        ]
    );
    let abs = &l["entries"][0];
    assert_eq!(abs["kind"], "symlink");
    assert_eq!(abs["target"], "/etc/passwd");
    assert_eq!(l["entries"][4]["kind"], "hardlink");
    assert_eq!(l["entries"][3]["size"], 5);
    assert_eq!(l["entries"][5]["mode"], "drwxr-xr-x");
    let text = hoard(&server.addr, &["ls", "host/web1/latest", "root", "home/u"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("-rwsr-xr-x") && l.ends_with(" big.bin")),
        "{text}"
    );
    assert!(text.contains(" 3145728 "), "{text}");
    // `hoard snapshots` shows the archive as one tree.
    let out = hoard(&server.addr, &["snapshots"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("root/ (tree)"), "{text}");
    assert!(!text.contains("root.hmeta"), "{text}");
    // A path that is not there.
    let out = hoard(
        &server.addr,
        &["ls", "host/web1/latest", "root", "etc/nope"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("etc/nope"), "{}", stderr(&out));
}

/// `dirs` directories below `root`, each with `files` files: names and
/// contents from `dir` and `file` (given the directory and file numbers).
fn populate(
    root: &Path,
    dirs: usize,
    files: usize,
    dir: impl Fn(usize) -> String,
    file: impl Fn(usize, usize) -> (String, Vec<u8>),
) {
    for d in 0..dirs {
        let sub = root.join(dir(d));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..files {
            let (name, content) = file(d, f);
            std::fs::write(sub.join(name), content).unwrap();
        }
    }
}

#[test]
fn unchanged_tree_reads_and_uploads_nothing() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    populate(
        &src,
        20,
        50,
        |d| format!("d{d:02}"),
        |d, f| (format!("f{f}"), noise(100 + f * 37, (d * 100 + f) as u64)),
    );
    std::fs::write(src.join("large"), noise(2 << 20, 9)).unwrap();
    let spec = [format!("root={}", src.display())];
    let first = backup(&server, "h", "2026-01-01T00:00:00Z", &spec, &[]);
    assert_eq!(first["trees"][0]["files"], 1001);
    assert!(first["trees"][0]["bytes_read"].as_u64().unwrap() > 2 << 20);
    let second = backup(&server, "h", "2026-01-02T00:00:00Z", &spec, &[]);
    let t = &second["trees"][0];
    assert_eq!(t["base"], "host/h/2026-01-01T00:00:00Z/root");
    assert_eq!(t["bytes_read"], 0, "no file content read: {t}");
    assert_eq!(t["files_read"], 0);
    assert_eq!(t["files_unchanged"], 1001);
    assert_eq!(t["meta"]["chunks_uploaded"], 0, "{t}");
    assert_eq!(t["data"]["chunks_uploaded"], 0, "{t}");
    // The same chunks as before: the archive is byte-identical.
    assert_eq!(t["data"]["size"], first["trees"][0]["data"]["size"]);
    assert_eq!(t["meta"]["size"], first["trees"][0]["meta"]["size"]);
    // --reread reads everything and still uploads nothing.
    let third = backup(&server, "h", "2026-01-03T00:00:00Z", &spec, &["--reread"]);
    let t = &third["trees"][0];
    assert_eq!(t["files_read"], 1001);
    assert_eq!(t["data"]["chunks_uploaded"], 0, "{t}");
    assert_eq!(t["meta"]["chunks_uploaded"], 0, "{t}");
    let out = dir.path().join("out");
    restore(&server, "host/h/2026-01-02T00:00:00Z", &out, &[]);
    assert_same_tree(&src, &out);
}

#[test]
fn an_edit_in_a_large_file_uploads_few_chunks() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a-small"), b"before").unwrap();
    let mut big = noise(8 << 20, 5);
    std::fs::write(src.join("big"), &big).unwrap();
    std::fs::write(src.join("z-small"), b"after").unwrap();
    let spec = [format!("root={}", src.display())];
    let first = backup(
        &server,
        "h",
        "2026-01-01T00:00:00Z",
        &spec,
        &["--chunk-size", "64K"],
    );
    let chunks = first["trees"][0]["data"]["chunks"].as_u64().unwrap();
    assert!(chunks > 80, "{chunks} chunks");
    // Insert 1000 bytes in the middle: the file's length changes, so
    // every later byte moves.
    big.splice(4 << 20..4 << 20, noise(1000, 6));
    std::fs::write(src.join("big"), &big).unwrap();
    let second = backup(
        &server,
        "h",
        "2026-01-02T00:00:00Z",
        &spec,
        &["--chunk-size", "64K"],
    );
    let t = &second["trees"][0];
    assert_eq!(t["files_read"], 1, "{t}");
    let uploaded = t["data"]["chunks_uploaded"].as_u64().unwrap();
    assert!(
        (1..=6).contains(&uploaded),
        "{uploaded} of {chunks} chunks uploaded: {t}"
    );
    assert!(
        t["data"]["bytes_uploaded"].as_u64().unwrap() < 1 << 20,
        "{t}"
    );
    let out = dir.path().join("out");
    restore(&server, "host/h/latest", &out, &[]);
    assert_eq!(std::fs::read(out.join("big")).unwrap(), big);
}

/// Ten incrementals of a tree of `dirs` × `per_dir` files of random
/// sizes from `sizes` (log-uniform, in powers of two), 256 KiB chunks.
/// Between runs 1% of the files are rewritten, 1% deleted and as many
/// added: reused chunks hold parts of them. Checks the last archive's
/// data stream is at most 1.25x its files' bytes and a full restore
/// downloads at most 1.15x; returns the files reused without reading
/// and all files, over the ten incrementals.
fn churn(dirs: usize, per_dir: usize, sizes: std::ops::Range<f64>) -> (u64, u64) {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut rng = StdRng::seed_from_u64(7);
    let mut files: Vec<PathBuf> = Vec::new();
    let mut seed = 0u64;
    let mut write = |path: &Path, rng: &mut StdRng| {
        seed += 1;
        let len = 2f64.powf(rng.random_range(sizes.clone())) as usize;
        std::fs::write(path, noise(len, seed)).unwrap();
    };
    for d in 0..dirs {
        std::fs::create_dir_all(src.join(format!("d{d:02}"))).unwrap();
        for f in 0..per_dir {
            let p = src.join(format!("d{d:02}/f{f:03}"));
            write(&p, &mut rng);
            files.push(p);
        }
    }
    let spec = [format!("root={}", src.display())];
    let mut next_name = 1000;
    let mut last = Value::Null;
    let (mut unchanged, mut reread, mut total, mut read_bytes) = (0, 0, 0, 0);
    for run in 0..11 {
        if run > 0 {
            for _ in 0..files.len() / 100 {
                let i = rng.random_range(0..files.len());
                write(&files[i].clone(), &mut rng);
            }
            for _ in 0..files.len() / 100 {
                let i = rng.random_range(0..files.len());
                std::fs::remove_file(files.swap_remove(i)).unwrap();
                let d = rng.random_range(0..dirs);
                next_name += 1;
                let p = src.join(format!("d{d:02}/f{next_name}"));
                write(&p, &mut rng);
                files.push(p);
            }
        }
        let time = format!("2026-01-01T00:{run:02}:00Z");
        last = backup(&server, "churn", &time, &spec, &["--chunk-size", "256K"]);
        let t = &last["trees"][0];
        if run > 0 {
            unchanged += t["files_unchanged"].as_u64().unwrap();
            reread += t["files_reread"].as_u64().unwrap();
            total += t["files"].as_u64().unwrap();
            read_bytes += t["bytes_read"].as_u64().unwrap();
        }
    }
    let t = &last["trees"][0];
    let tree = t["bytes_total"].as_u64().unwrap() as f64;
    let stream = t["data"]["size"].as_u64().unwrap() as f64;
    eprintln!(
        "tree {tree}, stream {stream} ({:.3}x), padding {}, {unchanged} of {total} files reused, {reread} read again, {read_bytes} bytes read",
        stream / tree,
        t["padding_bytes"]
    );
    assert!(stream <= 1.25 * tree, "{t}");
    let target = dir.path().join("restored");
    let rr = restore(&server, "host/churn/2026-01-01T00:10:00Z", &target, &[]);
    let got = rr["data_bytes_downloaded"].as_u64().unwrap() as f64;
    eprintln!("restore downloaded {got} ({:.3}x)", got / tree);
    assert!(got <= 1.15 * tree, "{rr}");
    assert_same_tree(&src, &target);
    (unchanged, total)
}

#[test]
fn incrementals_of_small_files_carry_bounded_padding() {
    // 2,560 files of 256 B … 16 KiB, about 20 to a chunk: nearly every
    // chunk holds a changed file after a run. Unbounded, the stream grew
    // to 5x the tree in ten runs. Here files are read again instead.
    churn(40, 64, 8.0..14.0);
}

#[test]
fn incrementals_of_a_mixed_tree_carry_bounded_padding_and_read_little() {
    // 600 files of 256 B … 1 MiB: most files small, most bytes in large
    // ones (about 70 MiB). Unbounded, the stream grew to 1.2x.
    let (unchanged, total) = churn(30, 20, 8.0..20.0);
    // Most files are still not read.
    assert!(unchanged * 10 >= total * 8, "{unchanged} of {total}");
}

#[test]
fn partial_restores_read_only_the_chunks_they_need() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // 4 directories of 5 files of 512 KiB, and many small files so that
    // the metadata stream spans several chunks.
    populate(
        &src,
        4,
        5,
        |d| format!("d{d}"),
        |d, f| (format!("f{f}"), noise(512 << 10, (d * 10 + f) as u64)),
    );
    populate(
        &src,
        30,
        60,
        |d| format!("many/m{d:02}"),
        |_, f| (format!("file-with-a-longish-name-{f:03}"), vec![f as u8]),
    );
    let spec = [format!("root={}", src.display())];
    let r = backup(
        &server,
        "h",
        "2026-01-01T00:00:00Z",
        &spec,
        &["--chunk-size", "16K"],
    );
    let data_chunks = r["trees"][0]["data"]["chunks"].as_u64().unwrap();
    let meta_chunks = r["trees"][0]["meta"]["chunks"].as_u64().unwrap();
    let data_size = r["trees"][0]["data"]["size"].as_u64().unwrap();
    assert!(data_chunks > 300 && meta_chunks >= 8, "{r}");
    // Chunks are 4 KiB … 64 KiB: a payload of n bytes spans at most
    // n / 4 KiB + 2 of them, and reading one table at most 3 metadata
    // chunks plus the trailer's.
    let snap = "host/h/2026-01-01T00:00:00Z";

    let one = dir.path().join("one");
    let rr = restore(&server, snap, &one, &["--path", "d2/f3"]);
    assert_eq!(std::fs::read(&one).unwrap(), noise(512 << 10, 23));
    let got = rr["data_bytes_downloaded"].as_u64().unwrap();
    assert!(
        (512 << 10..=(512 << 10) + (128 << 10)).contains(&got),
        "{rr}"
    );
    assert!(
        rr["data_chunks_downloaded"].as_u64().unwrap() * 10 < data_chunks,
        "{rr}"
    );
    assert!(rr["meta_chunks_downloaded"].as_u64().unwrap() <= 6, "{rr}");

    let sub = dir.path().join("sub");
    let rr = restore(&server, snap, &sub, &["--path", "d1"]);
    for f in 0..5 {
        assert_eq!(
            std::fs::read(sub.join(format!("f{f}"))).unwrap(),
            noise(512 << 10, 10 + f)
        );
    }
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 5);
    let got = rr["data_bytes_downloaded"].as_u64().unwrap();
    assert!(
        (5 * (512 << 10)..=5 * (512 << 10) + (128 << 10)).contains(&got),
        "{rr}"
    );
    assert!(got * 3 < data_size, "{rr}");

    let out = hoard(
        &server.addr,
        &["ls", snap, "root", "many/m07", "--output-format", "json"],
    );
    let l: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(l["entries"].as_array().unwrap().len(), 60);
    let read = l["meta_chunks_downloaded"].as_u64().unwrap();
    assert!(read <= 6 && read < meta_chunks, "{read} of {meta_chunks}");
}

#[test]
fn hard_links_out_of_a_partial_restore_are_one_copy_linked() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for d in ["a", "b"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    let big = noise(1 << 20, 5);
    std::fs::write(src.join("a/f"), &big).unwrap();
    std::fs::write(src.join("a/small"), b"tiny").unwrap();
    for l in ["l1", "l2", "l3"] {
        std::fs::hard_link(src.join("a/f"), src.join("b").join(l)).unwrap();
    }
    std::fs::hard_link(src.join("a/small"), src.join("b/s1")).unwrap();
    std::fs::hard_link(src.join("a/small"), src.join("b/s2")).unwrap();
    let spec = [format!("root={}", src.display())];
    backup(&server, "h", "2026-01-01T00:00:00Z", &spec, &[]);
    let snap = "host/h/2026-01-01T00:00:00Z";

    // b alone: its links' target is outside, so the first of each
    // becomes a copy and the others link to it; the data comes once.
    let sub = dir.path().join("sub");
    let rr = restore(&server, snap, &sub, &["--path", "b"]);
    let ino = |p: &str| std::fs::metadata(sub.join(p)).unwrap();
    assert_eq!(std::fs::read(sub.join("l3")).unwrap(), big);
    assert_eq!(std::fs::read(sub.join("s2")).unwrap(), b"tiny");
    assert_eq!(ino("l1").ino(), ino("l3").ino());
    assert_eq!(ino("l1").nlink(), 3);
    assert_eq!(ino("s1").ino(), ino("s2").ino());
    let got = rr["data_bytes_downloaded"].as_u64().unwrap();
    assert!(got < 2 * big.len() as u64, "{rr}");

    // The whole tree: one inode for a/f and its three links.
    let all = dir.path().join("all");
    restore(&server, snap, &all, &[]);
    let m = std::fs::metadata(all.join("b/l2")).unwrap();
    assert_eq!(m.ino(), std::fs::metadata(all.join("a/f")).unwrap().ino());
    assert_eq!(m.nlink(), 4);
}

#[test]
fn excludes_caches_and_other_file_systems() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for d in ["keep/sub", "build/out", "cache", "mnt", "logs"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    for f in [
        "keep/a.txt",
        "keep/a.tmp",
        "keep/sub/b.tmp",
        "build/out/bin",
        "cache/blob",
        "logs/x.log",
        "top.tmp",
    ] {
        std::fs::write(src.join(f), f).unwrap();
    }
    std::fs::write(
        src.join("cache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
    )
    .unwrap();
    // A tmpfs mounted inside the tree, in a private mount namespace.
    let bin = env!("CARGO_BIN_EXE_hoard");
    let script = format!(
        "mount -t tmpfs tmpfs '{m}' && echo inner > '{m}/inner' && \
         '{bin}' backup --type host --id ex --time 2026-01-01T00:00:00Z -q --output-format json \
           --exclude '*.tmp' --exclude '/build/' --exclude '!keep/sub/b.tmp' root='{s}' && \
         '{bin}' backup --type host --id ex --time 2026-01-02T00:00:00Z -q --all-file-systems root='{s}'",
        m = src.join("mnt").display(),
        s = src.display(),
    );
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .envs(client_env(&server.addr))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["trees"][0]["excluded"], 4,
        "a.tmp, top.tmp, build/, cache/blob: {r}"
    );
    let ls = |time: &str, path: &str| -> Vec<String> {
        let out = hoard(
            &server.addr,
            &[
                "ls",
                &format!("host/ex/{time}"),
                "root",
                path,
                "--output-format",
                "json",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let l: Value = serde_json::from_slice(&out.stdout).unwrap();
        l["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    let t1 = "2026-01-01T00:00:00Z";
    assert_eq!(ls(t1, ""), ["cache", "keep", "logs", "mnt"]);
    assert_eq!(ls(t1, "keep"), ["a.txt", "sub"]);
    // Re-included by the negation.
    assert_eq!(ls(t1, "keep/sub"), ["b.tmp"]);
    // A cache directory keeps its tag only.
    assert_eq!(ls(t1, "cache"), ["CACHEDIR.TAG"]);
    // The mount point is kept, empty.
    assert!(ls(t1, "mnt").is_empty());
    assert_eq!(ls("2026-01-02T00:00:00Z", "mnt"), ["inner"]);
}

#[test]
fn unreadable_entries_are_reported_and_skipped() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("closed")).unwrap();
    std::fs::write(src.join("open.txt"), b"fine").unwrap();
    std::fs::write(src.join("secret"), b"no").unwrap();
    std::fs::write(src.join("closed/inner"), b"no").unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(src.join("closed"), std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads everything: run the client as an unprivileged user (an
    // unmapped user namespace has no rights over the files).
    let mut cmd = if is_root() {
        let mut c = Command::new("unshare");
        c.args(["--user", env!("CARGO_BIN_EXE_hoard")]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_hoard"))
    };
    let out = cmd
        .args([
            "backup",
            "--type",
            "host",
            "--id",
            "u",
            "--output-format",
            "json",
            &format!("root={}", src.display()),
        ])
        .envs(client_env(&server.addr))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["trees"][0]["skipped"], 2, "{r}");
    assert!(
        err.contains("secret") && err.contains("Permission denied"),
        "{err}"
    );
    assert!(err.contains("closed"), "{err}");
    assert!(err.contains("2 entries skipped"), "{err}");
    assert_eq!(r["trees"][0]["files"], 1);
}

/// Uploads `meta` and `data` as archive `root` of snapshot `host/evil/T0`
/// through the raw protocol, as a hostile client could.
fn upload_archive(server: &Server, meta: &[u8], data: &[u8]) {
    let mut c = server.connect();
    let flags = BackupFlags::EXCL | BackupFlags::DYNAMIC_CHUNKS;
    for (stream, name, bytes) in [(1u8, "root.hmeta", meta), (2, "root.hdata", data)] {
        c.send(
            stream,
            &create(BackupType::Host, "evil", T0, flags, name, 65536, 0),
        );
        expect_created(&mut c, stream);
        if !bytes.is_empty() {
            let d = upload(&mut c, stream, bytes);
            c.send(stream, &dynamic(&[(0, d)]));
        }
        c.send(stream, &Message::BackupFinished);
        c.expect_ok(stream);
    }
}

fn entry(name: &[u8], kind: Kind, size: u64) -> Entry {
    Entry {
        name: name.to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: Timestamp { sec: 0, nsec: 0 },
        ctime_ns: 0,
        inode: 0,
        size,
        xattrs: Vec::<Xattr>::new(),
    }
}

/// A metadata stream whose root holds `entries`, with `tables` (each a
/// directory's entries, by name) laid out first and referred to by the
/// root under those names.
fn meta_stream(tables: &[(&[u8], Vec<Entry>)], mut root: Vec<Entry>, data_len: u64) -> Vec<u8> {
    let (mut w, head) = MetaWriter::start();
    let mut out = head.to_vec();
    for (name, entries) in tables {
        let (t, kind) = w.table(entries);
        out.extend_from_slice(&t);
        root.push(entry(name, kind, 0));
    }
    root.sort_by(|a, b| a.name.cmp(&b.name));
    let (t, kind) = w.table(&root);
    out.extend_from_slice(&t);
    out.extend_from_slice(&w.finish(&entry(b"", kind, data_len)));
    out
}

fn refused(server: &Server, dir: &Path, needle: &str) {
    let target = dir.join("target");
    let out = hoard(
        &server.addr,
        &[
            "restore",
            &format!("host/evil/{}", "2019-04-23T12:23:36Z"),
            "root",
            target.to_str().unwrap(),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    // Nothing escaped: the directory beside the target is untouched.
    let outside: Vec<_> = std::fs::read_dir(dir.join("outside")).unwrap().collect();
    assert!(
        outside.is_empty(),
        "something was written outside the target"
    );
    assert!(!dir.join("escaped").exists());
}

#[test]
fn hostile_archives_are_refused() {
    let file = |name: &[u8]| {
        entry(
            name,
            Kind::File {
                payload: 0,
                payload_len: 19,
                sparse: false,
            },
            3,
        )
    };
    let data = [payload_header(3).as_slice(), b"bad"].concat();
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "dot-dot name",
            meta_stream(&[], vec![file(b"..")], 19),
            data.clone(),
            "not allowed",
        ),
        (
            "name with a slash",
            meta_stream(&[], vec![file(b"../escaped")], 19),
            data.clone(),
            "not allowed",
        ),
        (
            "hard link out of the tree",
            meta_stream(
                &[],
                vec![entry(
                    b"l",
                    Kind::Hardlink {
                        target: b"../../etc/passwd".to_vec(),
                        payload: 0,
                        payload_len: 19,
                        sparse: false,
                    },
                    3,
                )],
                19,
            ),
            data.clone(),
            "not allowed",
        ),
        (
            "symlink used as a directory by a hard link",
            {
                let mut esc = entry(
                    b"esc",
                    Kind::Symlink {
                        target: b"../outside".to_vec(),
                    },
                    0,
                );
                esc.size = 10;
                meta_stream(
                    &[],
                    vec![
                        esc,
                        entry(
                            b"z",
                            Kind::Hardlink {
                                target: b"esc/victim".to_vec(),
                                payload: 0,
                                payload_len: 19,
                                sparse: false,
                            },
                            3,
                        ),
                    ],
                    19,
                )
            },
            data.clone(),
            "refused",
        ),
        (
            "symlink and directory under one name",
            {
                let mut d = entry(
                    b"d",
                    Kind::Symlink {
                        target: b"../outside".to_vec(),
                    },
                    0,
                );
                d.size = 10;
                meta_stream(&[(b"d", vec![file(b"victim")])], vec![d], 19)
            },
            data.clone(),
            "names repeat",
        ),
        (
            "truncated metadata stream",
            {
                let m = meta_stream(&[], vec![file(b"a")], 19);
                m[..m.len() - 5].to_vec()
            },
            data.clone(),
            "trailer",
        ),
        (
            "payload length that lies",
            meta_stream(
                &[],
                vec![entry(
                    b"a",
                    Kind::File {
                        payload: 0,
                        payload_len: 1 << 40,
                        sparse: false,
                    },
                    (1 << 40) - 16,
                )],
                19,
            ),
            data.clone(),
            "beyond the data stream",
        ),
        (
            "payload header that lies",
            meta_stream(&[], vec![file(b"a")], 19),
            [payload_header(2).as_slice(), b"bad"].concat(),
            "payload header says 2 bytes",
        ),
        (
            "directory table that claims a later table",
            {
                let mut m = meta_stream(&[(b"d", vec![file(b"x")])], vec![], 19);
                // The root's table is last: point its only entry at it.
                let (mut w, _) = MetaWriter::start();
                let (t, _) = w.table(&[file(b"x")]);
                let first_table_len = t.len() as u64;
                let needle = 16u64.to_le_bytes();
                let len = first_table_len.to_le_bytes();
                let pos = m
                    .windows(16)
                    .rposition(|w| w[..8] == needle && w[8..] == len)
                    .unwrap();
                let self_at = (16 + first_table_len).to_le_bytes();
                m[pos..pos + 8].copy_from_slice(&self_at);
                m
            },
            data.clone(),
            "does not lie before its parent",
        ),
        (
            "one payload for two files",
            meta_stream(&[], vec![file(b"a"), file(b"b")], 19),
            data.clone(),
            "a payload is referenced once",
        ),
        (
            "one directory table for two directories",
            {
                let (mut w, _) = MetaWriter::start();
                let (t, shared) = w.table(&[file(b"x")]);
                assert_eq!(
                    shared,
                    Kind::Dir {
                        table: 16,
                        table_len: t.len() as u64
                    }
                );
                meta_stream(
                    &[(b"d", vec![file(b"x")])],
                    vec![entry(b"e", shared, 0)],
                    19,
                )
            },
            data.clone(),
            "a table is referenced once",
        ),
        (
            "a table bomb: each level's two directories share the table below",
            {
                // 11 levels: 2,047 directories and 1,024 files from 11
                // tables of two entries each.
                let (mut w, head) = MetaWriter::start();
                let mut out = head.to_vec();
                let (t, mut below) = w.table(&[file(b"f")]);
                out.extend_from_slice(&t);
                for _ in 0..10 {
                    let (t, kind) =
                        w.table(&[entry(b"a", below.clone(), 0), entry(b"b", below, 0)]);
                    out.extend_from_slice(&t);
                    below = kind;
                }
                out.extend_from_slice(&w.finish(&entry(b"", below, 19)));
                out
            },
            data.clone(),
            "a table is referenced once",
        ),
    ];
    for (what, meta, data, needle) in cases {
        let server = Server::start();
        upload_archive(&server, &meta, &data);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        eprintln!("case: {what}");
        refused(&server, dir.path(), needle);
    }
}

#[test]
fn restore_refuses_a_non_empty_target_and_names_the_archive() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    backup(
        &server,
        "h",
        "2026-01-01T00:00:00Z",
        &[format!("root={}", src.display())],
        &[],
    );
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("mine"), b"keep").unwrap();
    let out = hoard(
        &server.addr,
        &["restore", "host/h/latest", "root", busy.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(std::fs::read(busy.join("mine")).unwrap(), b"keep");
    // A single file onto an existing one needs --overwrite.
    let out = hoard(
        &server.addr,
        &[
            "restore",
            "host/h/latest",
            "root",
            busy.join("mine").to_str().unwrap(),
            "--path",
            "f",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let out = hoard(
        &server.addr,
        &[
            "restore",
            "host/h/latest",
            "root",
            busy.join("mine").to_str().unwrap(),
            "--path",
            "f",
            "--overwrite",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(busy.join("mine")).unwrap(), b"x");
    let out = hoard(
        &server.addr,
        &["restore", "host/h/latest", "nope", "/tmp/x"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[test]
fn a_damaged_base_is_read_around() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    populate(
        &src,
        30,
        60,
        |d| format!("m{d:02}"),
        |d, f| {
            (
                format!("file-with-a-longish-name-{f:03}"),
                vec![d as u8, f as u8],
            )
        },
    );
    let spec = [format!("root={}", src.display())];
    let extra = ["--chunk-size", "16K"];
    let first = backup(&server, "h", "2026-01-01T00:00:00Z", &spec, &extra);
    assert!(
        first["trees"][0]["meta"]["chunks"].as_u64().unwrap() >= 4,
        "{first}"
    );
    // Lose a chunk of the metadata stream: first one in the middle (the
    // walk meets it in a directory), then the first one (opening the
    // archive meets it).
    let ds = hoard_datastore::Datastore::open(&server.datastore()).unwrap();
    let rounds = [
        ("2026-01-01T00:00:00Z", 1, "2026-01-02T00:00:00Z"),
        ("2026-01-02T00:00:00Z", 0, "2026-01-03T00:00:00Z"),
    ];
    for (base, chunk, time) in rounds {
        let index = ds
            .open_index(&format!("host/h/{base}/root.hmeta.didx"))
            .unwrap();
        let lost = index.digests(chunk, 1).unwrap()[0];
        common::stored::lose(&ds, &lost);
        let out = hoard(
            &server.addr,
            &[
                "backup",
                "--type",
                "host",
                "--id",
                "h",
                "--time",
                time,
                "--output-format",
                "json",
                "--chunk-size",
                "16K",
                &spec[0],
            ],
        );
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("cannot be read"), "{err}");
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(r["trees"][0]["files_read"].as_u64().unwrap() > 0, "{r}");
        // The new snapshot holds everything it needs.
        let restored = dir.path().join(format!("out-{chunk}"));
        restore(&server, &format!("host/h/{time}"), &restored, &[]);
        assert_same_tree(&src, &restored);
    }
}

#[test]
fn a_full_disk_fails_a_tree_backup_with_the_servers_error() {
    // The data stream fills the disk while the walker still runs (the
    // metadata stream is then left unfinished: that is not the error to
    // report), and a metadata stream of incompressible names fills it.
    let cases: [(&str, usize, usize); 2] = [("3m", 40, 1 << 20), ("1m", 12000, 0)];
    for (size, files, file_len) in cases {
        let server = Server::start_on_small_disk(size);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir(&root).unwrap();
        for i in 0..files {
            let name: String = noise(200, i as u64)
                .iter()
                .map(|b| char::from(b'a' + b % 26))
                .collect();
            std::fs::write(root.join(name), noise(file_len, i as u64)).unwrap();
        }
        let spec = format!("t.hmeta={}", root.display());
        let out = hoard(
            &server.addr,
            &["backup", "--type", "host", "--id", "full", "-q", &spec],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{size}, {files} files: {err}");
        assert!(err.contains("No space left"), "{err}");
        assert!(!err.contains("stopped before its end"), "{err}");
    }
}
