//! `hoard prune`, `hoard protect` and `hoard unprotect` from the command
//! line, on a datastore the test builds. The calendar itself is checked
//! against hand-worked cases in hoard-datastore's prune module.

mod common;

use common::{hoard, make, stderr};
use hoard_datastore::Datastore;
use serde_json::Value;

fn run(ds: &Datastore, args: &[&str]) -> (i32, Value, String) {
    let root = ds.root().to_str().unwrap().to_string();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--output-format", "json", "--datastore", &root]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoard"))
        .env("TZ", "UTC")
        .args(&all)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap(), v, stderr(&out))
}

fn plan(v: &Value) -> Vec<(String, String, String)> {
    v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["snapshot"].as_str().unwrap().to_string(),
                d["action"].as_str().unwrap().to_string(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn row(s: &str, action: &str, reason: &str) -> (String, String, String) {
    (format!("vm/1/{s}"), action.into(), reason.into())
}

#[test]
fn dry_run_shows_every_decision_and_protect_keeps_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::new_datastore(&dir.path().join("ds"));
    let data = vec![5u8; 4096];
    // Two on Jan 1, one on Jan 2, two on Jan 3 (UTC).
    for t in [
        "2021-01-01T08:00:00Z",
        "2021-01-01T20:00:00Z",
        "2021-01-02T12:00:00Z",
        "2021-01-03T08:00:00Z",
        "2021-01-03T20:00:00Z",
    ] {
        let secs = t.parse::<jiff::Timestamp>().unwrap().as_second() as u64;
        make(&ds, secs, &[&data]);
    }
    let (code, v, err) = run(
        &ds,
        &[
            "prune",
            "--keep-last",
            "1",
            "--keep-daily",
            "2",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["dry_run"], true);
    let dry = vec![
        row("2021-01-03T20:00:00Z", "keep", "keep-last"),
        row("2021-01-03T08:00:00Z", "remove", "expired"),
        row("2021-01-02T12:00:00Z", "keep", "keep-daily"),
        row("2021-01-01T20:00:00Z", "keep", "keep-daily"),
        row("2021-01-01T08:00:00Z", "remove", "expired"),
    ];
    assert_eq!(plan(&v), dry);
    assert_eq!(
        ds.list_snapshots().unwrap().len(),
        5,
        "a dry run changes nothing"
    );

    let (code, _, err) = run(&ds, &["protect", "vm/1/2021-01-01T08:00:00Z"]);
    assert_eq!(code, 0, "{err}");
    let (code, v, err) = run(
        &ds,
        &["prune", "vm/1", "--keep-last", "1", "--keep-daily", "2"],
    );
    assert_eq!(code, 0, "{err}");
    let mut real = dry.clone();
    real[4] = row("2021-01-01T08:00:00Z", "keep", "protected");
    assert_eq!(plan(&v), real);
    let left: Vec<String> = ds
        .list_snapshots()
        .unwrap()
        .iter()
        .map(|s| s.path.time.to_string())
        .collect();
    assert_eq!(
        left,
        [
            "2021-01-01T08:00:00Z",
            "2021-01-01T20:00:00Z",
            "2021-01-02T12:00:00Z",
            "2021-01-03T20:00:00Z"
        ]
    );

    // Unprotected, it goes by the same policy.
    let (code, v, _) = run(&ds, &["unprotect", "vm/1/2021-01-01T08:00:00Z"]);
    assert_eq!((code, v["changed"].clone()), (0, Value::Bool(true)));
    let (_, v, _) = run(&ds, &["prune", "--keep-last", "1", "--keep-daily", "2"]);
    assert_eq!(
        plan(&v)[3],
        row("2021-01-01T08:00:00Z", "remove", "expired")
    );
    assert_eq!(ds.list_snapshots().unwrap().len(), 3);
}

#[test]
fn refusals() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::new_datastore(&dir.path().join("ds"));
    make(&ds, 1_600_000_000, &[&[1u8; 4096]]);
    let (code, _, err) = run(&ds, &["prune"]);
    assert_eq!(code, 2);
    assert!(err.contains("no retention policy"), "{err}");
    let (code, _, err) = run(
        &ds,
        &["prune", "vm/1/2020-09-13T12:26:40Z", "--keep-last", "1"],
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&ds, &["protect", "vm/1/2020-01-01T00:00:00Z"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not found"), "{err}");
    let out = hoard("127.0.0.1:1", &["gc", "--datastore", "/nonexistent/ds"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("no datastore at /nonexistent/ds"));
}
