//! Load: fifty clients at once, each with its own token and group,
//! backing up an image and a tree and restoring both over loopback, while
//! GC and verify run over and over beside them. Nothing may fail, no
//! finished snapshot may be lost, and the server's memory stays bounded.

mod common;

use std::path::Path;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use common::{Server, maintenance_json, noise, stderr};
use serde_json::Value;

const CLIENTS: usize = 50;
/// The server's peak resident memory may not pass this (it holds at most
/// a few chunks per connection; measured about 60 MiB in a debug build).
const MAX_SERVER_RSS_MIB: u64 = 512;

fn run(server: &Server, token: &str, args: &[&str]) -> Value {
    let out = server.hoard_as(token, args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// One client's work: an image and a tree, backed up and restored.
fn client(server: &Server, token: &str, i: usize, dir: &Path) {
    let image = dir.join("disk.img");
    // Half of every image is shared by all clients: dedup under load.
    let mut data = noise(512 << 10, 1);
    data.extend_from_slice(&noise(512 << 10, 100 + i as u64));
    std::fs::write(&image, &data).unwrap();
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for f in 0..20 {
        let at = if f % 2 == 0 { "sub" } else { "." };
        std::fs::write(
            tree.join(at).join(format!("f{f}")),
            noise(4 << 10 << (f % 4), 1000 * i as u64 + f),
        )
        .unwrap();
    }
    let id = format!("load{i}");
    let image_spec = format!("disk.img={}", image.display());
    let tree_spec = format!("root={}", tree.display());
    for (ty, spec) in [("vm", &image_spec), ("host", &tree_spec)] {
        run(
            server,
            token,
            &[
                "backup",
                "--type",
                ty,
                "--id",
                &id,
                "--chunk-size",
                "64K",
                "--output-format",
                "json",
                "-q",
                spec,
            ],
        );
    }
    let restored = dir.join("restored.img");
    let snap = format!("vm/{id}/latest");
    run(
        server,
        token,
        &[
            "restore",
            &snap,
            "disk.img",
            restored.to_str().unwrap(),
            "-q",
        ],
    );
    assert!(
        std::fs::read(&restored).unwrap() == data,
        "client {i}: image differs"
    );
    let target = dir.join("restored-tree");
    let snap = format!("host/{id}/latest");
    run(
        server,
        token,
        &["restore", &snap, "root", target.to_str().unwrap(), "-q"],
    );
    for f in 0..20 {
        let at = if f % 2 == 0 { "sub" } else { "." };
        let rel = Path::new(at).join(format!("f{f}"));
        assert!(
            std::fs::read(target.join(&rel)).unwrap() == std::fs::read(tree.join(&rel)).unwrap(),
            "client {i}: {} differs",
            rel.display()
        );
    }
}

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[test]
fn fifty_clients_back_up_and_restore_beside_gc_and_verify() {
    let server = Server::start();
    let tokens: Vec<String> = (0..CLIENTS)
        .map(|i| server.token(&format!("client{i}"), "backup", &[]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let done = AtomicBool::new(false);
    let (gcs, verifies) = (AtomicU32::new(0), AtomicU32::new(0));
    let start = Barrier::new(CLIENTS);
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                maintenance_json(&server.datastore(), &["gc", "--grace", "0"]);
                gcs.fetch_add(1, Ordering::Relaxed);
                let v = maintenance_json(&server.datastore(), &["verify"]);
                assert!(v["findings"].as_array().unwrap().is_empty(), "{v}");
                verifies.fetch_add(1, Ordering::Relaxed);
            }
        });
        let clients: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                let (server, start, dir) = (&server, &start, dir.path().join(format!("c{i}")));
                s.spawn(move || {
                    std::fs::create_dir_all(&dir).unwrap();
                    start.wait();
                    client(server, token, i, &dir);
                })
            })
            .collect();
        // Joined without unwrapping: a failed client must still stop the
        // maintenance loop, or the scope would wait for it for ever.
        let results: Vec<_> = clients.into_iter().map(|c| c.join()).collect();
        done.store(true, Ordering::Relaxed);
        for r in results {
            if let Err(panic) = r {
                std::panic::resume_unwind(panic);
            }
        }
    });
    let secs = started.elapsed().as_secs_f64();
    // Every snapshot is there and complete, and verifies clean.
    let list = server.hoard_as(&server.token, &["snapshots", "--output-format", "json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2 * CLIENTS);
    assert!(list.iter().all(|s| s["state"] == "complete"));
    let v = maintenance_json(&server.datastore(), &["verify"]);
    assert!(v["findings"].as_array().unwrap().is_empty(), "{v}");
    let rss = peak_rss_mib(server.child.id());
    eprintln!(
        "load: {CLIENTS} clients in {secs:.1} s beside {} GCs and {} verifies; server peak RSS {rss} MiB",
        gcs.load(Ordering::Relaxed),
        verifies.load(Ordering::Relaxed)
    );
    assert!(rss <= MAX_SERVER_RSS_MIB, "server peak RSS {rss} MiB");
}
