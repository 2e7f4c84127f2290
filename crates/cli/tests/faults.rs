//! Fault injection: writes that fail with ENOSPC or EIO at every step of
//! making a chunk, an index or a manifest visible, and chunk reads that
//! fail, come back short or come back with a bit flipped
//! (`HOARD_FAILPOINT`, `crates/datastore/src/failpoint.rs`). Each must be
//! a clear error (exit 5 naming the cause, or 8 for data that does not
//! check out), never a corrupt or wrongly complete snapshot, never a
//! good chunk moved aside; and with the fault gone the next backup, the
//! restores and verify succeed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, hoard, maintenance_json, noise, stderr};
use serde_json::Value;

struct Sources {
    image: PathBuf,
    image_data: Vec<u8>,
    tree: PathBuf,
}

fn sources(dir: &Path, seed: u64) -> Sources {
    let image = dir.join(format!("disk{seed}.img"));
    let image_data = noise(6 * (64 << 10), seed);
    std::fs::write(&image, &image_data).unwrap();
    let tree = dir.join(format!("tree{seed}"));
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for f in 0..8u64 {
        let at = if f % 2 == 0 { "sub" } else { "." };
        std::fs::write(
            tree.join(at).join(format!("f{f}")),
            noise(20_000, seed * 100 + f),
        )
        .unwrap();
    }
    Sources {
        image,
        image_data,
        tree,
    }
}

/// Backs up the image (`vm/1`) and the tree (`host/1`) at `time`;
/// returns the snapshots that succeeded. A failure must be exit 5 naming
/// `cause`.
fn back_up(server: &Server, src: &Sources, time: &str, cause: &str) -> Vec<String> {
    let image_spec = format!("disk.img={}", src.image.display());
    let tree_spec = format!("root={}", src.tree.display());
    let mut done = Vec::new();
    for (ty, spec) in [("vm", &image_spec), ("host", &tree_spec)] {
        let args = [
            "backup",
            "--type",
            ty,
            "--id",
            "1",
            "--time",
            time,
            "--chunk-size",
            "64K",
            "--output-format",
            "json",
            "-q",
            spec,
        ];
        let out = hoard(&server.addr, &args);
        if out.status.success() {
            let r: Value = serde_json::from_slice(&out.stdout).unwrap();
            done.push(r["snapshot"].as_str().unwrap().to_string());
        } else {
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(5), "{ty} with {cause}: {err}");
            assert!(err.contains(cause), "{ty}: {err:?} lacks {cause:?}");
        }
    }
    done
}

fn restore_and_compare(server: &Server, snap: &str, src: &Sources, dir: &Path) {
    let target = dir.join("restored");
    let _ = std::fs::remove_dir_all(&target);
    let _ = std::fs::remove_file(&target);
    let (name, image) = if snap.starts_with("vm/") {
        ("disk.img", true)
    } else {
        ("root", false)
    };
    let out = hoard(
        &server.addr,
        &["restore", snap, name, target.to_str().unwrap(), "-q"],
    );
    assert!(out.status.success(), "restore {snap}: {}", stderr(&out));
    if image {
        assert!(std::fs::read(&target).unwrap() == src.image_data, "{snap}");
    } else {
        for f in 0..8 {
            let at = if f % 2 == 0 { "sub" } else { "." };
            let rel = Path::new(at).join(format!("f{f}"));
            assert!(
                std::fs::read(target.join(&rel)).unwrap()
                    == std::fs::read(src.tree.join(&rel)).unwrap(),
                "{snap}: {}",
                rel.display()
            );
        }
    }
}

/// Every snapshot that was reported done is listed complete, those `new`
/// since the last check restore, nothing is left writing, verify is clean.
fn check(
    server: &Server,
    done: &BTreeMap<String, u64>,
    new: &[String],
    srcs: &[Sources],
    dir: &Path,
) {
    let list = hoard(&server.addr, &["snapshots", "--output-format", "json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let list = list.as_array().unwrap();
    for s in list {
        assert_ne!(s["state"], "writing", "{s}");
    }
    for snap in done.keys() {
        let listed = list.iter().find(|s| s["snapshot"] == *snap);
        let state = listed.map(|s| &s["state"]);
        assert_eq!(state, Some(&Value::from("complete")), "{snap}");
    }
    for snap in new {
        restore_and_compare(server, snap, &srcs[done[snap] as usize], dir);
    }
    let v = maintenance_json(&server.datastore(), &["verify"]);
    assert!(v["findings"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn write_faults_at_every_step_are_clear_errors_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srcs: Vec<Sources> = (0..2).map(|s| sources(dir.path(), s)).collect();
    let mut server = Server::start();
    let mut done: BTreeMap<String, u64> = BTreeMap::new();
    let mut minute = 0;
    let mut time = || {
        minute += 1;
        format!("2026-01-01T{:02}:{:02}:00Z", minute / 60, minute % 60)
    };
    let (mut fired, mut runs) = (0, 0);
    for kind in ["chunk", "fidx", "didx", "manifest.json"] {
        for step in ["sync", "rename", "renamed"] {
            for (action, cause) in [
                ("enospc", "No space left on device"),
                ("eio", "Input/output error"),
            ] {
                for n in [1, 2] {
                    let seed = (runs % 2) as u64;
                    runs += 1;
                    let spec = format!("{kind}:{step}:{n}:{action}");
                    server = server.restart_with(&[("HOARD_FAILPOINT", spec.clone())]);
                    let t = time();
                    let mut new = back_up(&server, &srcs[seed as usize], &t, cause);
                    if new.len() < 2 {
                        fired += 1;
                    }
                    // The fault gone: the next backup works, and what was
                    // reported done is there.
                    server = server.restart_with(&[]);
                    let t = time();
                    let next = back_up(&server, &srcs[seed as usize], &t, "-");
                    assert_eq!(next.len(), 2, "after {spec}");
                    new.extend(next);
                    for snap in &new {
                        done.insert(snap.clone(), seed);
                    }
                    check(&server, &done, &new, &srcs, dir.path());
                }
            }
        }
    }
    eprintln!("faults: {runs} write faults set, {fired} of them failed a backup");
    assert!(fired >= runs / 2, "{fired} of {runs}");
}

#[test]
fn read_faults_are_clear_errors_and_move_no_good_chunk_aside() {
    let dir = tempfile::tempdir().unwrap();
    let src = sources(dir.path(), 0);
    let mut server = Server::start();
    let done = back_up(&server, &src, "2026-01-01T00:00:00Z", "-");
    assert_eq!(done.len(), 2);
    let mut failed = 0;
    for action in ["eio", "short", "flip"] {
        for n in [1, 3] {
            let spec = format!("chunk:read:{n}:{action}");
            server = server.restart_with(&[("HOARD_FAILPOINT", spec.clone())]);
            for snap in &done {
                let (name, image) = if snap.starts_with("vm/") {
                    ("disk.img", true)
                } else {
                    ("root", false)
                };
                let target = dir.path().join(format!("r-{action}-{n}-{image}"));
                let out = hoard(
                    &server.addr,
                    &["restore", snap, name, target.to_str().unwrap(), "-q"],
                );
                if out.status.success() {
                    if image {
                        assert!(std::fs::read(&target).unwrap() == src.image_data, "{spec}");
                    }
                } else {
                    // The server's error, or data that does not check out:
                    // never wrong bytes, and no half-written target.
                    failed += 1;
                    let err = stderr(&out);
                    assert!(matches!(out.status.code(), Some(5 | 8)), "{spec}: {err}");
                    assert!(
                        !target.exists(),
                        "{spec}: a failed restore left {}",
                        target.display()
                    );
                }
            }
            // Verify under the same fault (its own process): the chunk
            // read wrong once is read again, and not moved aside.
            let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
                .args(["verify", "--output-format", "json", "--datastore"])
                .arg(server.datastore())
                .env("HOARD_FAILPOINT", &spec)
                .output()
                .unwrap();
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(v["findings"].as_array().unwrap().is_empty(), "{spec}: {v}");
            assert!(
                v["bad_chunks"].as_array().unwrap().is_empty(),
                "{spec}: {v}"
            );
            let notes = v["notes"].to_string();
            assert!(notes.contains("transient read error"), "{spec}: {v}");
        }
    }
    assert!(failed > 0);
    server = server.restart_with(&[]);
    for snap in &done {
        restore_and_compare(&server, snap, &src, dir.path());
    }
    let v = maintenance_json(&server.datastore(), &["verify"]);
    assert!(v["findings"].as_array().unwrap().is_empty(), "{v}");
    assert!(!server.datastore().join(".bad").exists());
}
