//! The crash harness: backups, prunes and GCs against a real server,
//! killed at random moments, hundreds of times; after each kill every
//! snapshot reported finished restores byte-exact and verify is clean.
//!
//! Kills are of four kinds: the server by SIGKILL, the client by SIGKILL,
//! the server at a crash point inside a chunk insert, an index write or a
//! manifest update (`HOARD_FAILPOINT`, `crates/datastore/src/failpoint.rs`:
//! it ends the process as SIGKILL would, at the step the crash-safety
//! argument of `docs/format.md` is about), and a GC or prune by SIGKILL.
//!
//! CI runs a bounded number of rounds; `HOARD_CRASH_ROUNDS=2000` (and
//! `--release`) is the long mode, `HOARD_CRASH_SEED` replays a run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Server, client_env, hoard, maintenance_json, noise, stderr};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;

/// Rounds in a CI run: each kills something (or lets it finish).
const CI_ROUNDS: usize = 400;
/// Every this many rounds, and after the last, every snapshot reported
/// finished is restored and compared (after the others, the newest
/// of each group and the whole datastore's verify).
const FULL_CHECK_EVERY: usize = 10;

const POINTS: [&str; 12] = [
    "chunk:sync",
    // A changed image chunk becoming a delta: written, renamed over the
    // chunk's place beside the whole file, which is then removed.
    "delta:sync",
    "delta:rename",
    "delta:renamed",
    "chunk:rename",
    "chunk:renamed",
    "fidx:rename",
    "fidx:renamed",
    "didx:rename",
    "didx:renamed",
    "manifest.json:rename",
    "manifest.json:renamed",
];

/// What a finished snapshot must restore to.
enum Expected {
    Image(Vec<u8>),
    /// A copy of the tree as it was backed up.
    Tree(PathBuf),
}

#[derive(Default, Debug)]
struct Counts {
    server_kills: u32,
    client_kills: u32,
    failpoints: u32,
    failpoints_reached: u32,
    maintenance_kills: u32,
    /// Crash points reached, by point.
    reached: BTreeMap<&'static str, u32>,
    finished: u32,
    restores: u32,
    verifies: u32,
}

struct Harness {
    rng: StdRng,
    dir: PathBuf,
    server: Option<Server>,
    expected: BTreeMap<String, Expected>,
    minute: u64,
    counts: Counts,
    /// Each image group's last source, which the next one often changes
    /// in a few blocks (so that the server makes deltas).
    images: BTreeMap<String, Vec<u8>>,
}

fn wait_or_kill(mut child: Child, after: Option<Duration>) -> (Option<std::process::Output>, bool) {
    if let Some(after) = after {
        std::thread::sleep(after);
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            child.wait().unwrap();
            return (None, true);
        }
    }
    (Some(child.wait_with_output().unwrap()), false)
}

impl Harness {
    fn server(&self) -> &Server {
        self.server.as_ref().expect("a server runs")
    }

    fn datastore(&self) -> PathBuf {
        self.server().datastore()
    }

    fn restart(&mut self, env: &[(&str, String)]) {
        let s = self.server.take().expect("a server runs");
        self.server = Some(s.restart_with(env));
    }

    fn next_time(&mut self) -> String {
        self.minute += 1;
        format!(
            "2026-01-{:02}T{:02}:{:02}:00Z",
            1 + self.minute / 1440,
            (self.minute / 60) % 24,
            self.minute % 60
        )
    }

    /// Writes a fresh source: an image (often the group's last one with a
    /// few 4 KiB blocks changed), or a small tree.
    fn make_source(&mut self, tree: bool, group: &str, round: usize) -> PathBuf {
        let seed = self.rng.random::<u64>();
        if tree {
            let root = self.dir.join(format!("src/t{round}"));
            std::fs::create_dir_all(root.join("sub")).unwrap();
            for i in 0..self.rng.random_range(4..24) {
                let len = self.rng.random_range(0..48 << 10);
                let at = if i % 3 == 0 { "sub" } else { "." };
                std::fs::write(root.join(at).join(format!("f{i}")), noise(len, seed + i)).unwrap();
            }
            root
        } else {
            let path = self.dir.join(format!("src/i{round}.img"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let data = match self.images.get(group) {
                Some(last) if self.rng.random_bool(0.6) => {
                    let mut data = last.clone();
                    for _ in 0..self.rng.random_range(1..6) {
                        let at = self.rng.random_range(0..data.len() / 4096) * 4096;
                        data[at..at + 4096].copy_from_slice(&noise(4096, seed ^ at as u64));
                    }
                    data
                }
                _ => {
                    let blocks = self.rng.random_range(1..8);
                    let mut data = noise(blocks * (64 << 10), seed);
                    // Some zero blocks and some repeated ones across rounds.
                    if blocks > 2 {
                        data[..64 << 10].fill(0);
                    }
                    data
                }
            };
            std::fs::write(&path, &data).unwrap();
            self.images.insert(group.to_string(), data);
            path
        }
    }

    fn client(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_hoard"))
            .envs(client_env(&self.server().addr))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn maintenance(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_hoard"))
            .args(args)
            .args(["--output-format", "json", "--datastore"])
            .arg(self.datastore())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// One round: a backup (image or tree) with a kill, or a prune or GC.
    fn round(&mut self, round: usize) {
        let what = self.rng.random_range(0..10);
        if what == 0 {
            return self.prune();
        }
        let tree = what % 2 == 0;
        let group = self.rng.random_range(0..3);
        let src = self.make_source(tree, &format!("{group}"), round);
        let time = self.next_time();
        let id = format!("{group}");
        let spec = if tree {
            format!("root={}", src.display())
        } else {
            format!("disk.img={}", src.display())
        };
        let ty = if tree { "host" } else { "vm" };
        let args = [
            "backup",
            "--type",
            ty,
            "--id",
            &id,
            "--time",
            &time,
            "--chunk-size",
            "64K",
            "--output-format",
            "json",
            "-q",
            &spec,
        ];
        // How it ends: 0 finishes, 1 server SIGKILL, 2 client SIGKILL,
        // 3 a crash point, 4 a GC beside it (killed or not).
        let how = [0, 1, 1, 2, 3, 3, 4][self.rng.random_range(0..7)];
        let mut point = "";
        if how == 3 {
            point = POINTS[self.rng.random_range(0..POINTS.len())];
            let n = self.rng.random_range(1..4);
            self.restart(&[("HOARD_FAILPOINT", format!("{point}:{n}"))]);
            self.counts.failpoints += 1;
        }
        let child = self.client(&args);
        let delay = Duration::from_millis(self.rng.random_range(0..80));
        let (out, killed) = match how {
            1 => {
                std::thread::sleep(delay);
                let s = self.server.as_mut().expect("a server runs");
                let _ = s.child.kill();
                self.counts.server_kills += 1;
                wait_or_kill(child, None)
            }
            2 => {
                let r = wait_or_kill(child, Some(delay));
                if r.1 {
                    self.counts.client_kills += 1;
                }
                r
            }
            4 => {
                let gc = self.maintenance(&["gc", "--grace", "0"]);
                let kill_gc = self.rng.random_bool(0.5);
                let (gc_out, gc_killed) = wait_or_kill(gc, kill_gc.then_some(delay));
                if gc_killed {
                    self.counts.maintenance_kills += 1;
                } else {
                    let o = gc_out.unwrap();
                    assert!(o.status.success(), "gc: {}", stderr(&o));
                }
                wait_or_kill(child, None)
            }
            _ => wait_or_kill(child, None),
        };
        if how == 3 {
            // Reached (the server is gone) or not: either way it restarts.
            let s = self.server.as_mut().expect("a server runs");
            if s.child.try_wait().unwrap().is_some() {
                self.counts.failpoints_reached += 1;
                *self.counts.reached.entry(point).or_default() += 1;
            }
        }
        if let (Some(out), false) = (out, killed) {
            if out.status.success() {
                let report: Value = serde_json::from_slice(&out.stdout).unwrap();
                let snap = report["snapshot"].as_str().unwrap().to_string();
                let expected = if tree {
                    let copy = self.dir.join(format!("expected/{round}"));
                    copy_tree(&src, &copy);
                    Expected::Tree(copy)
                } else {
                    Expected::Image(std::fs::read(&src).unwrap())
                };
                self.expected.insert(snap, expected);
                self.counts.finished += 1;
            } else {
                // A failure must be a clean one: connection lost or the
                // server's error, never a protocol break or a panic.
                let err = stderr(&out);
                assert!(
                    matches!(out.status.code(), Some(3 | 5)) && !err.contains("panicked"),
                    "round {round}: {err}"
                );
            }
        }
        if tree {
            std::fs::remove_dir_all(&src).unwrap();
        } else {
            std::fs::remove_file(&src).unwrap();
        }
        self.restart(&[]);
    }

    /// Prune to the last 3 of each group, killed half the time; what it
    /// would remove leaves the expected set either way.
    fn prune(&mut self) {
        let dry = maintenance_json(
            &self.datastore(),
            &["prune", "--keep-last", "3", "--dry-run"],
        );
        for d in dry["snapshots"].as_array().unwrap() {
            if d["action"] == "remove" {
                self.expected.remove(d["snapshot"].as_str().unwrap());
            }
        }
        let child = self.maintenance(&["prune", "--keep-last", "3"]);
        let kill = self.rng.random_bool(0.5);
        let delay = Duration::from_millis(self.rng.random_range(0..30));
        let (out, killed) = wait_or_kill(child, kill.then_some(delay));
        if killed {
            self.counts.maintenance_kills += 1;
        } else {
            let o = out.unwrap();
            assert!(o.status.success(), "prune: {}", stderr(&o));
        }
        if self.rng.random_bool(0.5) {
            maintenance_json(&self.datastore(), &["gc", "--grace", "0"]);
        }
    }

    /// Every reported snapshot is listed complete, nothing is left
    /// `writing`; with `full`, each restores byte-exact and verify is
    /// clean, otherwise the newest of each group is restored.
    fn check(&mut self, full: bool) {
        let list = hoard(
            &self.server().addr,
            &["snapshots", "--output-format", "json"],
        );
        assert!(list.status.success(), "{}", stderr(&list));
        let list: Value = serde_json::from_slice(&list.stdout).unwrap();
        let states: BTreeMap<String, String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["snapshot"].as_str().unwrap().to_string(),
                    s["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(
            states.values().all(|s| s != "writing"),
            "a snapshot is left writing: {states:?}"
        );
        for snap in self.expected.keys() {
            assert_eq!(
                states.get(snap).map(String::as_str),
                Some("complete"),
                "{snap} was reported finished"
            );
        }
        let mut newest: BTreeMap<String, &String> = BTreeMap::new();
        for snap in self.expected.keys() {
            let group = snap.rsplit_once('/').unwrap().0.to_string();
            newest.insert(group, snap);
        }
        let chosen: Vec<String> = if full {
            self.expected.keys().cloned().collect()
        } else {
            newest.values().map(|s| s.to_string()).collect()
        };
        for snap in chosen {
            self.restore_and_compare(&snap);
        }
        if full {
            let v = maintenance_json(&self.datastore(), &["verify"]);
            assert!(v["findings"].as_array().unwrap().is_empty(), "verify: {v}");
            self.counts.verifies += 1;
        }
    }

    fn restore_and_compare(&mut self, snap: &str) {
        let target = self.dir.join("restored");
        let _ = std::fs::remove_dir_all(&target);
        let _ = std::fs::remove_file(&target);
        let (name, _) = match &self.expected[snap] {
            Expected::Image(_) => ("disk.img", ()),
            Expected::Tree(_) => ("root", ()),
        };
        let out = hoard(
            &self.server().addr,
            &["restore", snap, name, target.to_str().unwrap(), "-q"],
        );
        assert!(out.status.success(), "restore {snap}: {}", stderr(&out));
        match &self.expected[snap] {
            Expected::Image(data) => {
                assert!(std::fs::read(&target).unwrap() == *data, "{snap} differs")
            }
            Expected::Tree(copy) => assert_same_files(copy, &target, snap),
        }
        self.counts.restores += 1;
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn assert_same_files(a: &Path, b: &Path, snap: &str) {
    let mut names_a: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names_b: Vec<_> = std::fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "{snap}: {}", a.display());
    for n in names_a {
        let (pa, pb) = (a.join(&n), b.join(&n));
        if pa.is_dir() {
            assert_same_files(&pa, &pb, snap);
        } else {
            assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "{snap}: {} differs",
                pb.display()
            );
        }
    }
}

#[test]
fn kills_at_random_moments_lose_no_finished_snapshot() {
    let rounds = std::env::var("HOARD_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_ROUNDS);
    let seed = std::env::var("HOARD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("crash harness: {rounds} rounds, HOARD_CRASH_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness {
        rng: StdRng::seed_from_u64(seed),
        dir: dir.path().to_path_buf(),
        server: Some(Server::start()),
        expected: BTreeMap::new(),
        minute: 0,
        counts: Counts::default(),
        images: BTreeMap::new(),
    };
    for round in 1..=rounds {
        h.round(round);
        let full = round % FULL_CHECK_EVERY == 0 || round == rounds;
        h.check(full);
    }
    eprintln!("crash harness: {:?}", h.counts);
    let c = &h.counts;
    assert!(c.finished > 0 && c.server_kills > 0 && c.client_kills > 0);
    assert!(c.failpoints_reached > 0, "{c:?}");
}
