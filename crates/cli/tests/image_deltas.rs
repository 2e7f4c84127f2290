//! Disk images whose changed chunks the server keeps as deltas, end to
//! end: the real `hoard` binary (and a raw version 1 client) against a
//! real server. Scattered, clustered and full rewrites round-trip and
//! grow the store by what changed; a damaged base fails every snapshot
//! that depends on it, a restore of one fails cleanly, and the next
//! backup heals.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use hoard_datastore::{DELTA_SUFFIX, Datastore};
use hoard_protocol::Message;
use hoard_types::{BackupType, Digest};
use serde_json::Value;

const CHUNK: usize = 256 * 1024;
const SIZE: usize = 32 * CHUNK;

fn backup(server: &Server, time: &str, image: &Path) -> Value {
    let spec = format!("disk.img={}", image.display());
    let out = hoard(
        &server.addr,
        &[
            "backup",
            "--type",
            "vm",
            "--id",
            "7",
            "--time",
            time,
            "--chunk-size",
            "256K",
            "--output-format",
            "json",
            &spec,
        ],
    );
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

/// The bytes of every chunk file (whole and delta), and how many deltas.
fn stored(server: &Server) -> (u64, usize) {
    let mut bytes = 0;
    let mut deltas = 0;
    for f in walk(&server.datastore().join(".chunks")) {
        bytes += std::fs::metadata(&f).unwrap().len();
        deltas += usize::from(f.to_string_lossy().ends_with(DELTA_SUFFIX));
    }
    (bytes, deltas)
}

fn verify_json(server: &Server, snapshot: Option<&str>) -> (i32, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoard"));
    cmd.args(["verify", "--output-format", "json", "--datastore"])
        .arg(server.datastore());
    if let Some(s) = snapshot {
        cmd.arg(s);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

/// Overwrites 4 KiB blocks at `blocks` (block numbers) with new data.
fn overwrite(img: &mut [u8], blocks: &[usize], seed: u64) {
    for (i, &b) in blocks.iter().enumerate() {
        img[b * 4096..(b + 1) * 4096].copy_from_slice(&noise(4096, seed + i as u64));
    }
}

#[test]
fn scattered_clustered_and_full_rewrites_round_trip_and_store_what_changed() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let mut img = noise(SIZE, 1);
    write(&path, &img);
    backup(&server, "1000", &path);
    let (first, none) = stored(&server);
    assert_eq!(none, 0);
    let mut versions = vec![("1000", img.clone())];

    // Scattered: one block in each of 32 chunks.
    let scattered: Vec<usize> = (0..32).map(|c| c * 64 + (c * 7) % 64).collect();
    overwrite(&mut img, &scattered, 100);
    write(&path, &img);
    let report = backup(&server, "2000", &path);
    assert_eq!(report["images"][0]["chunks_uploaded"], 32, "{report}");
    let (after, deltas) = stored(&server);
    assert_eq!(deltas, 32);
    // 32 blocks of 4 KiB changed: the store grows by about that, not by
    // 32 chunks of 256 KiB.
    let growth = after - first;
    assert!(growth < 32 * 4096 + 32 * 1024, "grew {growth} bytes");
    versions.push(("2000", img.clone()));

    // Clustered: 24 blocks in one 96 KiB stretch across two chunks.
    let clustered: Vec<usize> = (52..76).collect();
    overwrite(&mut img, &clustered, 200);
    write(&path, &img);
    backup(&server, "3000", &path);
    let (after2, _) = stored(&server);
    assert!(
        after2 - after < 24 * 4096 + 8 * 1024,
        "grew {}",
        after2 - after
    );
    versions.push(("3000", img.clone()));

    // Rewritten whole: every chunk is stored whole again.
    img = noise(SIZE, 2);
    write(&path, &img);
    backup(&server, "4000", &path);
    let (after3, deltas3) = stored(&server);
    assert!(after3 - after2 >= SIZE as u64, "grew {}", after3 - after2);
    assert_eq!(deltas3, 34, "no new delta");
    versions.push(("4000", img.clone()));

    for (time, want) in &versions {
        let snap = hoard_types::SnapshotTime::from_epoch(time.parse().unwrap()).unwrap();
        restores_disk_img(&server, &format!("vm/7/{snap}"), want);
    }
    let (code, report) = verify_json(&server, None);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["chunks_checked"], 32 + 32 + 2 + 32);
}

#[test]
fn a_damaged_base_fails_every_dependent_snapshot_and_the_next_backup_heals() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let one = noise(SIZE, 3);
    write(&path, &one);
    backup(&server, "1000", &path);
    let mut two = one.clone();
    overwrite(&mut two, &[10], 300);
    write(&path, &two);
    backup(&server, "2000", &path);
    let base = Digest::of(&one[..CHUNK]);
    let delta = Digest::of(&two[..CHUNK]);
    let ds = Datastore::open(&server.datastore()).unwrap();
    assert!(ds.chunks().is_delta(&delta));
    stored::damage(&ds, &base);

    // Verify fails both snapshots, names the base's snapshot and the
    // delta's, and says the delta is damaged through its base.
    let (code, report) = verify_json(&server, None);
    assert_eq!(code, 8, "{report}");
    let bad = report["bad_chunks"].as_array().unwrap();
    let entry = |d: &Digest| {
        bad.iter()
            .find(|b| b["digest"] == d.to_hex())
            .unwrap_or_else(|| panic!("{d} not reported: {report}"))
    };
    assert_eq!(
        entry(&base)["used_by"],
        serde_json::json!(["vm/7/1970-01-01T00:16:40Z/disk.img.fidx"])
    );
    assert_eq!(
        entry(&delta)["used_by"],
        serde_json::json!(["vm/7/1970-01-01T00:33:20Z/disk.img.fidx"])
    );
    let problem = entry(&delta)["problem"].as_str().unwrap();
    assert!(problem.contains(&base.to_hex()), "{problem}");
    assert!(
        report["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["result"] == "failed")
    );

    // A restore of the dependent snapshot fails with the damaged-data
    // exit code, naming the chunk, and leaves nothing behind.
    let target = dir.path().join("out.img");
    let out = hoard(
        &server.addr,
        &[
            "restore",
            "vm/7/1970-01-01T00:33:20Z",
            "disk.img",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&delta.to_hex()[..16]),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());

    // The next backup of the same disk stores the chunk whole again.
    backup(&server, "3000", &path);
    assert!(!ds.chunks().is_delta(&delta));
    restores_disk_img(&server, "vm/7/1970-01-01T00:50:00Z", &two);
    let (code, report) = verify_json(&server, Some("vm/7/1970-01-01T00:50:00Z"));
    assert_eq!(code, 0, "{report}");
}

#[test]
fn a_version_1_client_gets_the_same_savings() {
    let server = Server::start();
    const CS: usize = 64 * 1024;
    let one: Vec<Vec<u8>> = (0..4).map(|i| noise(CS, 40 + i)).collect();
    let mut two = one.clone();
    for c in &mut two[1..3] {
        c[4096..8192].copy_from_slice(&noise(4096, 50));
    }
    let (before, _) = stored(&server);
    for (n, image) in [&one, &two].into_iter().enumerate() {
        let mut c = server.connect();
        let time = T0 + 100 * n as u64;
        c.send(
            1,
            &create(
                BackupType::Vm,
                "9",
                time,
                0x01,
                "disk",
                CS as u32,
                4 * CS as u64,
            ),
        );
        expect_created(&mut c, 1);
        let entries: Vec<(u64, Digest)> = image
            .iter()
            .enumerate()
            .map(|(i, data)| (i as u64, upload(&mut c, 1, data)))
            .collect();
        c.send(1, &fixed(&entries));
        c.send(1, &Message::BackupFinished);
        c.expect_ok(1);
    }
    let (after, deltas) = stored(&server);
    assert_eq!(deltas, 2);
    // Four whole chunks and two deltas of one block each.
    assert!(
        after - before < 4 * CS as u64 + 2 * 8192,
        "{}",
        after - before
    );
    let mut r = server.connect();
    let snap = hoard_types::SnapshotTime::from_epoch(T0 + 100).unwrap();
    let digests = hash_list(&mut r, 1, &format!("vm/9/{snap}/disk.fidx"));
    assert_eq!(download(&mut r, 2, &digests), two.concat());
}

#[test]
fn a_failing_disk_while_deltas_are_made_ends_the_pass_not_the_backup() {
    let mut server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let mut img = noise(SIZE, 5);
    write(&path, &img);
    backup(&server, "1000", &path);
    let mut time = 1000;
    let mut versions = Vec::new();
    // A full disk as the first delta is synced; an I/O error as the
    // second replaces its whole chunk (after the rename, before the
    // whole file goes).
    for (i, spec) in ["delta:sync:1:enospc", "delta:renamed:2:eio"]
        .into_iter()
        .enumerate()
    {
        server = server.restart_with(&[("HOARD_FAILPOINT", spec.to_string())]);
        let blocks: Vec<usize> = (0..8).map(|c| c * 64 + 3 + i).collect();
        overwrite(&mut img, &blocks, 500 + 10 * i as u64);
        write(&path, &img);
        time += 1000;
        let report = backup(&server, &time.to_string(), &path);
        assert_eq!(
            report["images"][0]["chunks_uploaded"], 8,
            "{spec}: {report}"
        );
        versions.push((time, img.clone()));
    }
    let (_, deltas) = stored(&server);
    assert!(deltas < 16, "the passes stopped: {deltas} deltas");
    server = server.restart_with(&[]);
    for (time, want) in &versions {
        let snap = hoard_types::SnapshotTime::from_epoch(*time).unwrap();
        restores_disk_img(&server, &format!("vm/7/{snap}"), want);
    }
    let (code, report) = verify_json(&server, None);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn encrypted_images_get_no_deltas_and_round_trip() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["key", "create", "--no-passphrase"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let path = dir.path().join("disk.img");
    let mut img = noise(SIZE, 6);
    let mut versions = Vec::new();
    for (n, time) in ["1000", "2000", "3000"].into_iter().enumerate() {
        if n > 0 {
            let blocks: Vec<usize> = (0..32).map(|c| c * 64 + n).collect();
            overwrite(&mut img, &blocks, 700 + n as u64);
        }
        write(&path, &img);
        let spec = format!("disk.img={}", path.display());
        let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
            .envs(client_env(&server.addr))
            .env("HOARD_KEY", &key)
            .args(["backup", "--type", "vm", "--id", "8", "--time", time])
            .args(["--chunk-size", "256K", "-q", &spec])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        versions.push((time, img.clone()));
    }
    // The server cannot read encrypted chunks: every one is stored whole.
    assert_eq!(stored(&server).1, 0);
    for (time, want) in &versions {
        let snap = hoard_types::SnapshotTime::from_epoch(time.parse().unwrap()).unwrap();
        let target = dir.path().join(format!("out-{time}"));
        let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
            .envs(client_env(&server.addr))
            .env("HOARD_KEY", &key)
            .args(["restore", &format!("vm/8/{snap}"), "disk.img"])
            .arg(&target)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(std::fs::read(&target).unwrap() == *want, "{time} differs");
    }
}
