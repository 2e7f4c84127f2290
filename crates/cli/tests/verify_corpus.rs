//! `hoard verify` against a corpus of small damaged datastores that the
//! tests build, one kind of damage each, with the exact findings asserted;
//! and the heal path end to end.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Server, hoard, make, new_datastore, stderr, stored};
use hoard_datastore::Datastore;
use hoard_types::{Digest, SnapshotPath};
use serde_json::Value;

const T1: u64 = 1_600_000_000;
const T2: u64 = 1_600_000_100;

fn chunk(seed: u8) -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
        .collect()
}

/// S1 = [a, b] and S2 = [b, c]: b is shared.
struct Corpus {
    _dir: tempfile::TempDir,
    ds: Datastore,
    s1: SnapshotPath,
    s2: SnapshotPath,
    a: Digest,
    b: Digest,
    c: Digest,
}

fn corpus() -> Corpus {
    let dir = tempfile::tempdir().unwrap();
    let ds = new_datastore(&dir.path().join("ds"));
    let (a, b, c) = (chunk(1), chunk(2), chunk(3));
    let s1 = make(&ds, T1, &[&a, &b]);
    let s2 = make(&ds, T2, &[&b, &c]);
    Corpus {
        ds,
        s1,
        s2,
        a: Digest::of(&a),
        b: Digest::of(&b),
        c: Digest::of(&c),
        _dir: dir,
    }
}

impl Corpus {
    fn root(&self) -> &Path {
        self.ds.root()
    }

    fn index(&self, s: &SnapshotPath) -> std::path::PathBuf {
        self.ds.snapshot_dir(s).join("disk.fidx")
    }

    /// Runs verify; returns its exit code and JSON report.
    fn verify(&self, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["verify", "--output-format", "json", "--datastore"];
        let root = self.root().to_str().unwrap().to_string();
        args.push(&root);
        args.extend_from_slice(extra);
        let out = hoard("127.0.0.1:1", &args);
        // An error before any result (a bad target) prints no JSON.
        let report = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)))
        };
        (out.status.code().unwrap(), report)
    }
}

/// (snapshot, file, digest, start of the problem) of every finding.
fn findings(r: &Value) -> Vec<(String, String, String, String)> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["snapshot"].as_str().unwrap().to_string(),
                f["file"].as_str().unwrap_or("").to_string(),
                f["digest"].as_str().unwrap_or("").to_string(),
                f["problem"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn results(r: &Value) -> Vec<(String, String)> {
    r["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["snapshot"].as_str().unwrap().to_string(),
                s["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn f(s: &SnapshotPath, digest: Option<&Digest>, problem: &str) -> (String, String, String, String) {
    (
        s.to_string(),
        "disk.fidx".into(),
        digest.map(Digest::to_hex).unwrap_or_default(),
        problem.into(),
    )
}

fn verdicts(c: &Corpus, s1: &str, s2: &str) -> Vec<(String, String)> {
    vec![
        (c.s1.to_string(), s1.to_string()),
        (c.s2.to_string(), s2.to_string()),
    ]
}

#[test]
fn a_clean_datastore_verifies_and_the_result_is_recorded() {
    let c = corpus();
    let (code, r) = c.verify(&[]);
    assert_eq!(code, 0);
    assert_eq!(results(&r), verdicts(&c, "ok", "ok"));
    assert_eq!(r["chunks_checked"], 3, "b is read once");
    assert_eq!(r["bytes_checked"], 3 * 4096);
    let m = c.ds.load_manifest(&c.s1).unwrap();
    assert_eq!(
        m.verification.unwrap().state,
        hoard_datastore::VerifyState::Ok
    );
    // Recently verified snapshots can be skipped.
    let (code, r) = c.verify(&["--skip-verified-within", "1d"]);
    assert_eq!(code, 0);
    assert_eq!(results(&r), verdicts(&c, "skipped", "skipped"));
    assert_eq!(r["chunks_checked"], 0);
    // One snapshot, or one group.
    let (_, r) = c.verify(&[&c.s2.to_string()]);
    assert_eq!(results(&r), vec![(c.s2.to_string(), "ok".to_string())]);
    let (code, _) = c.verify(&["vm/2"]);
    assert_eq!(code, 4, "no snapshot matches");
}

#[test]
fn missing_chunk() {
    let c = corpus();
    stored::lose(&c.ds, &c.b);
    let (code, r) = c.verify(&[]);
    assert_eq!(code, 8);
    assert_eq!(
        findings(&r),
        vec![
            f(&c.s1, Some(&c.b), "chunk missing"),
            f(&c.s2, Some(&c.b), "chunk missing"),
        ]
    );
    assert_eq!(results(&r), verdicts(&c, "failed", "failed"));
    let bad = &r["bad_chunks"][0];
    assert_eq!(bad["digest"], c.b.to_hex());
    assert_eq!(bad["moved_to"], Value::Null);
    assert_eq!(
        bad["used_by"],
        serde_json::json!([format!("{}/disk.fidx", c.s1), format!("{}/disk.fidx", c.s2)])
    );
    assert!(!c.ds.load_manifest(&c.s1).unwrap().usable_as_base());
}

#[test]
fn flipped_bit_in_a_chunk_is_moved_aside() {
    let c = corpus();
    let mut raw = stored::read(&c.ds, &c.a);
    raw[100] ^= 0x10;
    stored::write(&c.ds, &c.a, &raw);
    let (code, r) = c.verify(&[]);
    assert_eq!(code, 8);
    let found = findings(&r);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, c.s1.to_string());
    assert_eq!(found[0].2, c.a.to_hex());
    assert!(found[0].3.starts_with("chunk corrupt: "), "{found:?}");
    assert_eq!(results(&r), verdicts(&c, "failed", "ok"));
    let moved = r["bad_chunks"][0]["moved_to"].as_str().unwrap();
    assert!(stored::moved_aside(&c.ds, moved), "{moved}");
    assert!(!stored::exists(&c.ds, &c.a), "moved, not copied");
}

#[test]
fn zero_length_chunk() {
    let c = corpus();
    stored::write(&c.ds, &c.c, b"");
    let (code, r) = c.verify(&[]);
    assert_eq!(code, 8);
    assert_eq!(
        findings(&r),
        vec![f(&c.s2, Some(&c.c), "chunk zero-length file")]
    );
    assert_eq!(results(&r), verdicts(&c, "ok", "failed"));
    assert!(r["bad_chunks"][0]["moved_to"].is_string());
}

#[test]
fn truncated_index() {
    let c = corpus();
    let p = c.index(&c.s2);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let (code, r) = c.verify(&[]);
    assert_eq!(code, 8);
    let found = findings(&r);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (&found[0].0[..], &found[0].2[..]),
        (&c.s2.to_string()[..], "")
    );
    assert!(found[0].3.contains("truncated"), "{found:?}");
    assert_eq!(results(&r), verdicts(&c, "ok", "failed"));
}

#[test]
fn foreign_and_replaced_index_files() {
    let c = corpus();
    // S2's index replaced by S1's: a valid index, but not the one the
    // manifest names.
    std::fs::copy(c.index(&c.s1), c.index(&c.s2)).unwrap();
    let (_, r) = c.verify(&[]);
    assert_eq!(
        findings(&r),
        vec![f(
            &c.s2,
            None,
            "index checksum differs from the manifest (the file was replaced or is foreign)"
        )]
    );
    // Not an index at all.
    std::fs::write(c.index(&c.s1), vec![7u8; 200]).unwrap();
    let (code, r) = c.verify(&[]);
    assert_eq!(code, 8);
    let found = findings(&r);
    assert!(found[0].3.contains("wrong magic"), "{found:?}");
    assert_eq!(results(&r), verdicts(&c, "failed", "failed"));
}

#[test]
fn manifest_lists_a_file_that_is_not_there() {
    let c = corpus();
    std::fs::remove_file(c.index(&c.s1)).unwrap();
    let (code, r) = c.verify(&[]);
    assert_eq!(code, 8);
    assert_eq!(
        findings(&r),
        vec![f(&c.s1, None, "listed in the manifest but missing")]
    );
}

#[test]
fn index_referencing_a_foreign_digest() {
    // A snapshot copied in from another datastore: its index and manifest
    // are sound, but its chunk lives elsewhere.
    let c = corpus();
    let other = tempfile::tempdir().unwrap();
    let ods = new_datastore(&other.path().join("ds"));
    let x = chunk(9);
    let foreign = make(&ods, T2 + 100, &[&x]);
    let dest = c.ds.snapshot_dir(&foreign);
    std::fs::create_dir(&dest).unwrap();
    for name in ["manifest.json", "disk.fidx"] {
        std::fs::copy(ods.snapshot_dir(&foreign).join(name), dest.join(name)).unwrap();
    }
    let (code, r) = c.verify(&[]);
    assert_eq!(code, 8);
    assert_eq!(
        findings(&r),
        vec![f(&foreign, Some(&Digest::of(&x)), "chunk missing")]
    );
}

#[test]
fn orphan_chunk_is_fine_for_verify_and_gone_after_gc() {
    let c = corpus();
    let orphan = chunk(42);
    let reg = c.ds.register_writer().unwrap();
    c.ds.chunks()
        .insert(&Digest::of(&orphan), &orphan, reg.start())
        .unwrap();
    drop(reg);
    let (code, r) = c.verify(&[]);
    assert_eq!(code, 0);
    assert!(findings(&r).is_empty());
    std::thread::sleep(std::time::Duration::from_millis(50));
    let root = c.root().to_str().unwrap().to_string();
    let out = hoard(
        "127.0.0.1:1",
        &[
            "gc",
            "--grace",
            "0",
            "--output-format",
            "json",
            "--datastore",
            &root,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let g: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(g["removed_chunks"], 1, "{g}");
    assert_eq!(g["kept_chunks"], 3, "{g}");
    assert!(!stored::exists(&c.ds, &Digest::of(&orphan)));
    assert!([c.a, c.b, c.c].iter().all(|d| stored::exists(&c.ds, d)));
}

/// Corrupt a chunk, verify flags it and moves it aside, back up again
/// (the failed snapshot is no base, so the chunk is uploaded again),
/// verify passes, restore is byte-exact.
#[test]
fn heal_path() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    let spec = format!("disk={}", img.display());
    let backup = |time: &str| {
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
                "64K",
                "--reread",
                "-q",
                &spec,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    };
    backup("2026-01-01T00:00:00Z");
    let ds = Datastore::open(&server.datastore()).unwrap();
    let first: SnapshotPath = "vm/7/2026-01-01T00:00:00Z".parse().unwrap();
    let index = ds.open_index(&format!("{first}/disk.fidx")).unwrap();
    let victim = index.digests(3, 1).unwrap()[0];
    // Within the payload, whether the server stored it raw or compressed.
    stored::damage(&ds, &victim);

    let root = server.datastore().to_str().unwrap().to_string();
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "--output-format", "json", "--datastore", &root];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
            .args(&args)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code().unwrap(), v)
    };
    let (code, r) = verify(&[]);
    assert_eq!(code, 8);
    assert_eq!(r["bad_chunks"][0]["digest"], victim.to_hex());
    assert!(!stored::exists(&ds, &victim));

    backup("2026-01-02T00:00:00Z");
    assert!(
        stored::exists(&ds, &victim),
        "the second backup uploaded the chunk again"
    );
    let (code, r) = verify(&[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        results(&r),
        vec![
            (first.to_string(), "ok".to_string()),
            ("vm/7/2026-01-02T00:00:00Z".to_string(), "ok".to_string())
        ]
    );
    for snap in ["vm/7/2026-01-01T00:00:00Z", "vm/7/2026-01-02T00:00:00Z"] {
        let target = dir.path().join(snap.replace('/', "_"));
        let out = hoard(
            &server.addr,
            &["restore", "-q", snap, "disk", target.to_str().unwrap()],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(std::fs::read(&target).unwrap(), data);
    }
}
