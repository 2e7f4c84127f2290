//! The image client end to end: the real `hoard` binary backs up to and
//! restores from a real server on a loopback port.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, hoard, stderr};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;

const K64: usize = 64 * 1024;

/// Runs a backup that must succeed; returns its JSON report.
fn backup(server: &Server, time: &str, extra: &[&str], images: &[(&str, &Path)]) -> Value {
    backup_via(&server.addr, time, extra, images).0
}

/// [`backup`] against any address; also returns what went to stderr.
fn backup_via(addr: &str, time: &str, extra: &[&str], images: &[(&str, &Path)]) -> (Value, String) {
    let specs: Vec<String> = images
        .iter()
        .map(|(n, p)| format!("{n}={}", p.display()))
        .collect();
    let mut args = vec![
        "backup",
        "--type",
        "vm",
        "--id",
        "100",
        "--time",
        time,
        "--chunk-size",
        "64K",
        "--output-format",
        "json",
    ];
    args.extend_from_slice(extra);
    args.extend(specs.iter().map(String::as_str));
    let out = hoard(addr, &args);
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("backup vm/100/"),
        "no summary line: {}",
        stderr(&out)
    );
    (serde_json::from_slice(&out.stdout).unwrap(), stderr(&out))
}

fn image<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no image {name} in {report}"))
}

fn restore(server: &Server, snapshot: &str, name: &str, target: &Path) -> Value {
    let out = hoard(
        &server.addr,
        &[
            "restore",
            snapshot,
            name,
            target.to_str().unwrap(),
            "--output-format",
            "json",
        ],
    );
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A file of `size` bytes: random data except for the zero ranges, which
/// are holes.
fn make_image(path: &Path, size: usize, seed: u64, holes: &[(usize, usize)]) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size];
    rng.fill(&mut data[..]);
    for &(start, len) in holes {
        data[start..start + len].fill(0);
    }
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size as u64).unwrap();
    // Write only the non-hole blocks so the zero ranges stay holes.
    for (i, block) in data.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            f.write_all_at(block, (i * 4096) as u64).unwrap();
        }
    }
    data
}

fn manifest_path(server: &Server, snapshot: &str) -> PathBuf {
    server.datastore().join(snapshot).join("manifest.json")
}

fn edit_manifest(server: &Server, snapshot: &str, edit: impl FnOnce(&mut Value)) {
    let path = manifest_path(server, snapshot);
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn multi_image_snapshot_round_trips_byte_exact() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.raw"),
        dir.path().join("b.raw"),
        dir.path().join("c.raw"),
    );
    // Not a multiple of the chunk size, with a 512 KiB hole; empty; an
    // exact multiple.
    let a_data = make_image(&a, 2 * 1024 * 1024 + 123, 1, &[(256 * 1024, 512 * 1024)]);
    let b_data = make_image(&b, 0, 2, &[]);
    let c_data = make_image(&c, 4 * K64, 3, &[]);
    let r = backup(
        &server,
        "2026-11-24T10:00:00Z",
        &[],
        &[("disk-a.img", &a), ("disk-b.img", &b), ("disk-c.img", &c)],
    );
    assert_eq!(r["snapshot"], "vm/100/2026-11-24T10:00:00Z");
    assert_eq!(image(&r, "disk-a.img")["chunks"], 33);
    assert_eq!(image(&r, "disk-a.img")["chunks_zero"], 8);
    assert_eq!(image(&r, "disk-b.img")["chunks"], 0);
    assert_eq!(image(&r, "disk-c.img")["chunks_uploaded"], 4);

    let out = hoard(&server.addr, &["snapshots", "--output-format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let snap = &list.as_array().unwrap()[0];
    assert_eq!(snap["snapshot"], "vm/100/2026-11-24T10:00:00Z");
    assert_eq!(snap["state"], "complete");
    let mut files: Vec<(String, u64)> = snap["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["size"].as_u64().unwrap(),
            )
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            ("disk-a.img".to_string(), a_data.len() as u64),
            ("disk-b.img".to_string(), 0),
            ("disk-c.img".to_string(), c_data.len() as u64),
        ]
    );
    let text = hoard(&server.addr, &["snapshots", "--type", "vm", "--id", "100"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("disk-c.img"));

    for (name, data) in [
        ("disk-a.img", &a_data),
        ("disk-b.img", &b_data),
        ("disk-c.img", &c_data),
    ] {
        let target = dir.path().join(format!("{name}.restored"));
        let rr = restore(&server, "vm/100/2026-11-24T10:00:00Z", name, &target);
        assert_eq!(rr["size"], data.len());
        assert_eq!(&std::fs::read(&target).unwrap(), data, "{name}");
    }
    // The hole came back as a hole: less is allocated than the size.
    let meta = std::fs::metadata(dir.path().join("disk-a.img.restored")).unwrap();
    assert!(
        meta.blocks() * 512 <= meta.len() - 512 * 1024 + 8192,
        "{} bytes allocated for {}",
        meta.blocks() * 512,
        meta.len()
    );
    // No temporary file is left next to the targets.
    let stray: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("hoard-restore"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn unchanged_second_backup_uploads_nothing() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    let data = make_image(&a, 40 * K64 + 7, 4, &[(0, 3 * K64)]);
    let first = backup(&server, "1000", &[], &[("d.img", &a)]);
    assert_eq!(image(&first, "d.img")["chunks_uploaded"], 39); // 3 zero chunks, one upload
    assert!(image(&first, "d.img")["base"].is_null());

    // Unchanged: the previous index is reused without reading the file.
    let second = backup(&server, "2000", &[], &[("d.img", &a)]);
    let i = image(&second, "d.img");
    assert_eq!(i["unchanged"], true);
    assert_eq!(i["bytes_read"], 0);
    assert_eq!(i["chunks_uploaded"], 0);
    assert_eq!(i["base"], "vm/100/1970-01-01T00:16:40Z/d.img.fidx");

    // Read anyway: every chunk is found on the server.
    let third = backup(&server, "3000", &["--reread"], &[("d.img", &a)]);
    let i = image(&third, "d.img");
    assert_eq!(i["unchanged"], false);
    // Everything but the hole.
    assert_eq!(i["bytes_read"], data.len() - 3 * K64);
    assert_eq!(i["chunks_uploaded"], 0);
    assert_eq!(i["chunks_reused"], 41);

    // The index made by the shortcut restores the same bytes.
    let target = dir.path().join("out");
    restore(&server, "vm/100/1970-01-01T00:33:20Z", "d.img", &target);
    assert_eq!(std::fs::read(&target).unwrap(), data);

    // The source attributes are recorded in the manifest.
    let m: Value = serde_json::from_slice(
        &std::fs::read(manifest_path(&server, "vm/100/1970-01-01T00:50:00Z")).unwrap(),
    )
    .unwrap();
    let meta = std::fs::metadata(&a).unwrap();
    assert_eq!(m["files"][0]["source"]["inode"], meta.ino());
}

#[test]
fn changed_blocks_upload_only_their_chunks() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    let mut data = make_image(&a, 32 * K64, 5, &[]);
    backup(&server, "1000", &[], &[("d.img", &a)]);
    // Three small writes in chunks 2, 17 and 31 (two in chunk 17).
    let f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
    for off in [2 * K64 + 100, 17 * K64, 17 * K64 + 5000, 32 * K64 - 10] {
        let patch = [0xa5u8; 10];
        f.write_all_at(&patch, off as u64).unwrap();
        data[off..off + 10].copy_from_slice(&patch);
    }
    drop(f);
    let r = backup(&server, "2000", &[], &[("d.img", &a)]);
    let i = image(&r, "d.img");
    assert_eq!(i["unchanged"], false);
    assert_eq!(i["chunks_uploaded"], 3);
    assert_eq!(i["bytes_uploaded"], 3 * K64);
    assert_eq!(i["chunks_reused"], 29);
    let target = dir.path().join("out");
    restore(&server, "vm/100/latest", "d.img", &target);
    assert_eq!(std::fs::read(&target).unwrap(), data);
}

#[test]
fn zero_chunks_are_uploaded_once_and_restore_sparse() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    make_image(&a, 10 * K64 + 1000, 6, &[(0, 10 * K64 + 1000)]);
    // Zeros that are written out, not holes: found by scanning.
    std::fs::write(&b, vec![0u8; 6 * K64]).unwrap();
    let r = backup(&server, "1000", &[], &[("a.img", &a), ("b.img", &b)]);
    // One full-size zero chunk and one 1000-byte one, for both images:
    // stored once each. The two images upload concurrently, and two
    // streams that meet a new chunk at the same moment may both send it
    // (client/src/known.rs): the full-size one at most twice.
    let uploaded = image(&r, "a.img")["chunks_uploaded"].as_u64().unwrap()
        + image(&r, "b.img")["chunks_uploaded"].as_u64().unwrap();
    assert!((2..=3).contains(&uploaded), "{uploaded} uploads");
    let ds = hoard_datastore::Datastore::open(&server.datastore()).unwrap();
    assert_eq!(common::stored::digests(&ds).len(), 2);
    assert_eq!(image(&r, "a.img")["chunks_zero"], 11);
    assert_eq!(image(&r, "b.img")["chunks_zero"], 6);
    let target = dir.path().join("out");
    let rr = restore(&server, "vm/100/latest", "b.img", &target);
    assert_eq!(rr["chunks_downloaded"], 0);
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(meta.len(), 6 * K64 as u64);
    assert_eq!(meta.blocks(), 0, "an all-zero image restores as one hole");
    assert!(std::fs::read(&target).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn restore_to_stdout() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    let data = make_image(&a, 9 * K64 + 17, 7, &[(K64, 2 * K64)]);
    backup(&server, "1000", &[], &[("d.img", &a)]);
    let out = hoard(&server.addr, &["restore", "vm/100/latest", "d.img", "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, data);
    assert!(stderr(&out).contains("restore vm/100/1970-01-01T00:16:40Z/d.img to -"));
}

#[test]
fn a_closed_output_pipe_ends_a_command_quietly() {
    // `hoard snapshots | head -1`: the reader is gone before the output.
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    make_image(&a, 64 * K64, 7, &[]);
    backup(&server, "1000", &[], &[("d.img", &a)]);
    let commands: [&[&str]; 3] = [
        &["snapshots"],
        &["snapshots", "--output-format", "json"],
        &["restore", "vm/100/latest", "d.img", "-"],
    ];
    for args in commands {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hoard"))
            .envs(common::client_env(&server.addr))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        if args[0] == "snapshots" {
            assert!(err.is_empty(), "{args:?}: {err}");
        }
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert!(out.status.success(), "{args:?}: {err}");
    }
}

#[test]
fn base_is_never_incomplete_or_damaged() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    make_image(&a, 8 * K64, 8, &[]);
    backup(&server, "1000", &[], &[("d.img", &a)]);
    backup(&server, "2000", &[], &[("d.img", &a)]);
    let t2 = "vm/100/1970-01-01T00:33:20Z";
    edit_manifest(&server, t2, |m| {
        m["verification"] = serde_json::json!({"state": "failed", "time": 2500});
    });
    let r = backup(&server, "3000", &[], &[("d.img", &a)]);
    assert_eq!(
        image(&r, "d.img")["base"],
        "vm/100/1970-01-01T00:16:40Z/d.img.fidx",
        "a snapshot that failed verification is not a base"
    );
    let t3 = "vm/100/1970-01-01T00:50:00Z";
    edit_manifest(&server, t3, |m| m["state"] = "incomplete".into());
    let r = backup(&server, "4000", &[], &[("d.img", &a)]);
    assert_eq!(
        image(&r, "d.img")["base"],
        "vm/100/1970-01-01T00:16:40Z/d.img.fidx",
        "an incomplete snapshot is not a base"
    );
    // And a snapshot with a failed verification is shown as damaged.
    let out = hoard(&server.addr, &["snapshots"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(t2) && l.contains("damaged")),
        "{text}"
    );
}

/// Runs `args`, expects exit `code` and a message containing `needle`.
fn fails(addr: &str, args: &[&str], code: i32, needle: &str) {
    let out = hoard(addr, args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    // Usage errors come from the argument parser, with a hint line.
    if code != 2 {
        assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
    }
}

#[test]
fn every_failure_names_the_thing_and_its_exit_code() {
    let server = Server::start();
    let addr = server.addr.as_str();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    make_image(&a, 4 * K64, 9, &[]);
    let spec = format!("d.img={}", a.display());
    let snap = "vm/100/1970-01-01T00:16:40Z";
    backup(&server, "1000", &[], &[("d.img", &a)]);

    // 3: server unreachable.
    fails("127.0.0.1:1", &["snapshots"], 3, "127.0.0.1:1");
    fails(
        "127.0.0.1:1",
        &["backup", "--type", "vm", "--id", "1", &spec],
        3,
        "cannot connect",
    );
    // 4: snapshot or file not found.
    let out = dir.path().join("out");
    let out_s = out.to_str().unwrap();
    fails(
        addr,
        &["restore", "vm/100/2020-01-01T00:00:00Z", "d.img", out_s],
        4,
        "vm/100/2020-01-01T00:00:00Z",
    );
    fails(addr, &["restore", snap, "nope.img", out_s], 4, "nope.img");
    fails(
        addr,
        &["restore", "vm/999/latest", "d.img", out_s],
        4,
        "vm/999",
    );
    assert!(!out.exists());
    // 5: the server refuses (the snapshot exists already).
    fails(
        addr,
        &[
            "backup", "--type", "vm", "--id", "100", "--time", "1000", &spec,
        ],
        5,
        "exists",
    );
    // 6: source unreadable: missing, neither a file nor a device (a
    // directory is a tree, tested in tree_client.rs).
    let missing = dir.path().join("missing.raw");
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    fails(
        addr,
        &[
            "backup",
            "--type",
            "vm",
            "--id",
            "100",
            &format!("d.img={}", missing.display()),
        ],
        6,
        missing.to_str().unwrap(),
    );
    fails(
        addr,
        &[
            "backup",
            "--type",
            "vm",
            "--id",
            "100",
            &format!("d.img={}", fifo.display()),
        ],
        6,
        "is neither a regular file nor a block device",
    );
    // 7: target not writable: no such directory; an existing file.
    let nodir = dir.path().join("no/such/dir/out");
    fails(
        addr,
        &["restore", snap, "d.img", nodir.to_str().unwrap()],
        7,
        nodir.to_str().unwrap(),
    );
    std::fs::write(&out, b"keep me").unwrap();
    fails(addr, &["restore", snap, "d.img", out_s], 7, "--overwrite");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let ok = hoard(
        addr,
        &["restore", snap, "d.img", out_s, "--overwrite", "--quiet"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&a).unwrap());
    assert!(
        ok.stderr.is_empty(),
        "--quiet prints nothing: {}",
        stderr(&ok)
    );
    // 2: bad command line.
    fails(
        addr,
        &[
            "backup",
            "--type",
            "vm",
            "--id",
            "100",
            "--chunk-size",
            "3M",
            &spec,
        ],
        2,
        "power of two",
    );
    fails(
        addr,
        &["backup", "--type", "vm", "--id", "../x", &spec],
        2,
        "../x",
    );
    fails(addr, &["restore", "vm/100", "d.img", out_s], 2, "vm/100");

    // None of this changed the datastore: still one complete snapshot.
    let list = hoard(addr, &["snapshots", "--output-format", "json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["state"], "complete");
}

#[test]
fn server_error_mid_backup_fails_cleanly() {
    // A 3 MiB file system cannot take 4 MiB of incompressible chunks.
    let server = Server::start_on_small_disk("3m");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    make_image(&a, 64 * K64, 10, &[]);
    let spec = format!("d.img={}", a.display());
    let out = hoard(
        &server.addr,
        &[
            "backup",
            "--type",
            "vm",
            "--id",
            "1",
            "--chunk-size",
            "64K",
            &spec,
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
}

/// Runs `hoard ARGS --output-format json --datastore DS` inside the mount
/// namespace of the small-disk server `server` (its file system is only
/// visible there).
fn maintenance_in(server: &Server, ds: &str, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .args([
            "--target",
            &server.child.id().to_string(),
            "--user",
            "--mount",
        ])
        .args(["--preserve-credentials", env!("CARGO_BIN_EXE_hoard")])
        .args(args)
        .args(["--output-format", "json", "--datastore", ds])
        .output()
        .unwrap()
}

#[test]
fn gc_and_verify_on_a_full_disk_fail_cleanly_and_lose_nothing() {
    let server = Server::start_on_small_disk("4m");
    let ds = format!("{}/mnt/ds", server.dir.path().display());
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    let first = make_image(&a, 16 * K64, 1, &[]);
    backup(&server, "1000", &[], &[("d.img", &a)]);
    // A second backup fills the disk and fails; its chunks stay behind.
    make_image(&a, 64 * K64, 2, &[]);
    let spec = format!("d.img={}", a.display());
    let args = [
        "backup",
        "--type",
        "vm",
        "--id",
        "100",
        "--time",
        "2000",
        "--chunk-size",
        "64K",
        &spec,
    ];
    let out = hoard(&server.addr, &args);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    // The server removes the failed snapshot when the connection ends;
    // then a file takes what is left.
    let in_ns = |script: &str| {
        Command::new("nsenter")
            .args([
                "--target",
                &server.child.id().to_string(),
                "--user",
                "--mount",
            ])
            .args(["--preserve-credentials", "sh", "-c", script])
            .status()
            .unwrap()
            .success()
    };
    let failed = format!("{ds}/vm/100/1970-01-01T00:33:20Z");
    let mut waited = 0;
    while in_ns(&format!("test -e {failed}")) {
        assert!(waited < 100, "the failed snapshot stays");
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
    }
    let fill = Command::new("nsenter")
        .args([
            "--target",
            &server.child.id().to_string(),
            "--user",
            "--mount",
        ])
        .args(["--preserve-credentials", "sh", "-c"])
        .arg(format!("cat /dev/zero > {ds}/../filler"))
        .output()
        .unwrap();
    assert!(!fill.status.success(), "the disk should be full");

    // Verify checks everything but cannot record its result: it says so.
    let out = maintenance_in(&server, &ds, &["verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["findings"].as_array().unwrap().is_empty(), "{v}");
    let verdict = &v["snapshots"][0];
    assert_eq!(verdict["result"], "ok", "{v}");
    assert_eq!(verdict["recorded"], false, "{v}");
    assert!(
        verdict["reason"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{v}"
    );
    // GC needs no space and frees the failed backup's chunks.
    let out = maintenance_in(&server, &ds, &["gc", "--grace", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(gc["removed_chunks"].as_u64().unwrap() > 0, "{gc}");
    // Nothing was lost: the snapshot restores, and with the space back
    // verify records its result and the next backup works.
    let target = dir.path().join("restored.img");
    restore(&server, "vm/100/1970-01-01T00:16:40Z", "d.img", &target);
    assert!(std::fs::read(&target).unwrap() == first);
    let rm = Command::new("nsenter")
        .args([
            "--target",
            &server.child.id().to_string(),
            "--user",
            "--mount",
        ])
        .args(["--preserve-credentials", "rm"])
        .arg(format!("{ds}/../filler"))
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
    let out = maintenance_in(&server, &ds, &["verify"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["snapshots"][0]["recorded"], true, "{v}");
    make_image(&a, 16 * K64, 3, &[]);
    backup(&server, "3000", &[], &[("d.img", &a)]);
}

#[test]
fn damaged_chunk_fails_the_restore_and_leaves_no_target() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    make_image(&a, 4 * K64, 11, &[]);
    backup(&server, "1000", &[], &[("d.img", &a)]);
    // Flip a bit in the payload of one stored chunk.
    let ds = hoard_datastore::Datastore::open(&server.datastore()).unwrap();
    let chunk = common::stored::digests(&ds)[0];
    common::stored::damage(&ds, &chunk);
    let target = dir.path().join("out");
    let out = hoard(
        &server.addr,
        &[
            "restore",
            "vm/100/latest",
            "d.img",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let name = chunk.to_hex();
    assert!(
        stderr(&out).contains(&name[..16]),
        "names the chunk: {}",
        stderr(&out)
    );
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the image"
    );
}

/// A loop device over a file, detached when dropped. Needs root and
/// losetup (util-linux), which CI has.
struct Loop {
    dev: String,
    _file: tempfile::NamedTempFile,
}

impl Loop {
    fn new(size: u64) -> Loop {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file.path())
            .output()
            .expect("losetup (util-linux) is needed for block device tests");
        assert!(out.status.success(), "losetup: {}", stderr(&out));
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Loop { dev, _file: file }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn block_devices_back_up_and_restore() {
    let server = Server::start();
    let src = Loop::new(16 * K64 as u64);
    let mut rng = StdRng::seed_from_u64(12);
    let mut data = vec![0u8; 16 * K64];
    rng.fill(&mut data[3 * K64..9 * K64 + 100]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src.dev)
        .unwrap()
        .write_all_at(&data, 0)
        .unwrap();
    let dev = Path::new(&src.dev);
    let first = backup(&server, "1000", &[], &[("d.img", dev)]);
    assert_eq!(image(&first, "d.img")["size"], data.len());
    assert_eq!(image(&first, "d.img")["chunks_uploaded"], 8); // 7 data + 1 zero
    // A device has no trustworthy mtime: it is always read, and nothing
    // new is uploaded.
    let second = backup(&server, "2000", &[], &[("d.img", dev)]);
    let i = image(&second, "d.img");
    assert_eq!(i["unchanged"], false);
    assert_eq!(i["bytes_read"], data.len());
    assert_eq!(i["chunks_uploaded"], 0);

    // Restore onto a device full of other data: zero chunks are written
    // as zeros, not skipped.
    let dst = Loop::new(20 * K64 as u64);
    let mut junk = vec![0u8; 20 * K64];
    rng.fill(&mut junk[..]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&dst.dev)
        .unwrap()
        .write_all_at(&junk, 0)
        .unwrap();
    restore(&server, "vm/100/latest", "d.img", Path::new(&dst.dev));
    let mut back = vec![0u8; 16 * K64];
    std::fs::File::open(&dst.dev)
        .unwrap()
        .read_exact_at(&mut back, 0)
        .unwrap();
    assert_eq!(back, data);
    // A device smaller than the image is refused before anything is
    // written.
    let small = Loop::new(8 * K64 as u64);
    fails(
        &server.addr,
        &["restore", "vm/100/latest", "d.img", &small.dev],
        7,
        "the device has",
    );
}
