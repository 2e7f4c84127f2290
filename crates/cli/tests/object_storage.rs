//! Datastores on S3 with the real server and client against SeaweedFS:
//! the service going away mid-backup, a cold cache and a directory
//! rebuilt from its bucket, the cache's bound, and two servers on one
//! bucket. (The image, tree and maintenance tests run on S3 too, with
//! `HOARD_TEST_DATASTORE=s3`.)

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hoard_storage::seaweedfs::{self, SeaweedFs};
use serde_json::Value;

/// An image of `size` bytes of noise, written to `path`.
fn image(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let data = noise(size, seed);
    let f = std::fs::File::create(path).unwrap();
    f.write_all_at(&data, 0).unwrap();
    data
}

fn backup_args<'a>(time: &'a str, spec: &'a str) -> Vec<&'a str> {
    vec![
        "backup",
        "--type",
        "vm",
        "--id",
        "1",
        "--time",
        time,
        "--chunk-size",
        "1M",
        "-q",
        spec,
    ]
}

fn restore_image(server: &Server, snap: &str, target: &Path) -> Vec<u8> {
    let out = hoard(
        &server.addr,
        &["restore", "-q", snap, "d.img", target.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::read(target).unwrap()
}

fn snapshots(server: &Server) -> Value {
    let out = hoard(&server.addr, &["snapshots", "--output-format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Bytes in the files directly under `dir`.
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn a_stopped_s3_service_fails_the_backup_cleanly_and_the_next_one_succeeds() {
    let mut weed = SeaweedFs::start();
    let server = Server::start_on_s3(tempfile::tempdir().unwrap(), &weed, "stopped", &[]);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let data = image(&img, 96 << 20, 1);
    let spec = format!("d.img={}", img.display());

    // The service goes away once the first chunks are stored.
    let child = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(backup_args("2026-01-01T00:00:00Z", &spec))
        .envs(client_env(&server.addr))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stubs = server.datastore().join(".chunks");
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_count(&stubs) < 2 {
        assert!(Instant::now() < deadline, "no chunk was ever stored");
        std::thread::sleep(Duration::from_millis(2));
    }
    weed.stop();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "the backup succeeded without its storage"
    );
    assert!(err.contains("object storage"), "names the cause: {err}");
    // Nothing passes for a complete snapshot.
    let listed = snapshots(&server);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] != "complete"),
        "{listed}"
    );

    weed.restart();
    let out = hoard(&server.addr, &backup_args("2026-01-02T00:00:00Z", &spec));
    assert!(out.status.success(), "{}", stderr(&out));
    let target = dir.path().join("out");
    assert!(restore_image(&server, "vm/1/2026-01-02T00:00:00Z", &target) == data);
    let out = maintenance_json(
        &server.datastore(),
        &["verify", "vm/1/2026-01-02T00:00:00Z"],
    );
    assert_eq!(out["snapshots"][0]["result"], "ok", "{out}");
}

fn stored_count(stubs: &Path) -> usize {
    walk(stubs).len()
}

#[test]
fn a_cold_cache_and_a_directory_rebuilt_from_the_bucket_restore() {
    let weed = seaweedfs::shared();
    let server = Server::start_on_s3(tempfile::tempdir().unwrap(), weed, "rebuilt", &[]);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let data = image(&img, 8 << 20, 2);
    let spec = format!("d.img={}", img.display());
    let out = hoard(&server.addr, &backup_args("2026-01-01T00:00:00Z", &spec));
    assert!(out.status.success(), "{}", stderr(&out));

    // A cold cache: emptied while the server is down.
    let mut server = server.stop_then_restart(|ds| {
        std::fs::remove_dir_all(ds.join(".cache")).unwrap();
    });
    let target = dir.path().join("cold");
    assert!(restore_image(&server, "vm/1/2026-01-01T00:00:00Z", &target) == data);
    assert!(
        du(&server.datastore().join(".cache")) >= 8 << 20,
        "refilled"
    );

    // The whole directory lost: a new one on the same bucket is refused
    // while the old one holds it, then takes it over.
    server.interrupt();
    let fresh = tempfile::tempdir().unwrap();
    let refused = s3_serve_command(fresh.path(), weed, "rebuilt")
        .output()
        .unwrap();
    let err = stderr(&refused);
    assert!(!refused.status.success());
    assert!(
        err.contains("in use by") && err.contains("--take-over"),
        "{err}"
    );
    assert!(!err.contains(seaweedfs::SECRET_ACCESS_KEY), "{err}");
    let rebuilt = Server::start_on_s3(fresh, weed, "rebuilt", &["--take-over"]);
    let listed = snapshots(&rebuilt);
    assert_eq!(listed[0]["state"], "complete", "{listed}");
    let target = dir.path().join("rebuilt");
    assert!(restore_image(&rebuilt, "vm/1/2026-01-01T00:00:00Z", &target) == data);
    // An incremental backup of the same data reuses every chunk.
    let mut args = backup_args("2026-01-02T00:00:00Z", &spec);
    args.retain(|a| *a != "-q");
    args.extend(["--output-format", "json"]);
    let out = hoard(&rebuilt.addr, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["images"][0]["chunks_uploaded"], 0, "{r}");
    // Nothing secret was written to the directory.
    let config = std::fs::read_to_string(rebuilt.datastore().join(".storage.json")).unwrap();
    assert!(!config.contains(seaweedfs::SECRET_ACCESS_KEY), "{config}");
}

#[test]
fn the_cache_limit_holds_under_a_backup_larger_than_the_cache() {
    let weed = seaweedfs::shared();
    let server = Server::start_on_s3(
        tempfile::tempdir().unwrap(),
        weed,
        "small-cache",
        &["--cache-size", "4M"],
    );
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let data = image(&img, 24 << 20, 3);
    let spec = format!("d.img={}", img.display());
    let out = hoard(&server.addr, &backup_args("2026-01-01T00:00:00Z", &spec));
    assert!(out.status.success(), "{}", stderr(&out));
    let cache = server.datastore().join(".cache");
    assert!(du(&cache) <= 4 << 20, "{} bytes cached", du(&cache));
    let target = dir.path().join("out");
    assert!(restore_image(&server, "vm/1/2026-01-01T00:00:00Z", &target) == data);
    assert!(du(&cache) <= 4 << 20, "{} bytes cached", du(&cache));
    assert!(du(&cache) > 0);
}
