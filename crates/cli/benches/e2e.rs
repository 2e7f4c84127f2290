//! End-to-end benchmark of the client: the real `hoard` binary (built by
//! `cargo bench` with the release settings) against a real server on
//! loopback, on the dataset of `../shared/bench/gen_dataset.py`.
//!
//! `cargo bench -p hoard --bench e2e`
//!
//! Image steps, each timed from process start to exit:
//! 1. first backup of `image.raw` (2 GiB: random, text and zero zones);
//! 2. unchanged second backup, with the metadata shortcut;
//! 3. unchanged second backup, reading everything (`--reread`);
//! 4. backup after `gen_dataset.py mutate` (5,120 random 4 KiB writes);
//! 5. full restore of that snapshot to a file (checked byte-exact after
//!    the clock stops);
//! 6. full restore of the first snapshot (the image as generated).
//!
//! Tree steps (the ~20,000-file, ~1 GiB tree, its own server and
//! datastore):
//! 1. first backup; 2. unchanged second backup; 3. backup after the same
//!    `mutate` (2% of the files changed, added or removed); 4. full
//!    restore of the mutated snapshot (compared with the tree after the
//!    clock stops); 5. single-file restore of a 20 MiB file. After each
//!    backup, the datastore's size on disk (`du`).
//!
//! For each: seconds, MB/s over the image size, bytes uploaded or
//! downloaded, peak client RSS (from wait4) and peak server RSS (VmHWM,
//! reset before each step through /proc/PID/clear_refs).
//!
//! Image deltas (part `deltas`, run once after the rounds): on a fresh
//! datastore, a first backup, then the scattered mutation and the
//! clustered one, each followed by a backup; on another, a first backup
//! and ten successive scattered mutations (`mutate --round 1..10`), each
//! followed by a backup. For each backup, the datastore's growth; then
//! the full restore of the last round against that of the first backup
//! (alternating, three of each, medians).
//!
//! With `HOARD_BENCH_S3=1` every datastore keeps its chunks on a local
//! SeaweedFS (S3), and each step also reports the S3 requests the server
//! sent; the datastore column is then the local directory (metadata,
//! stubs, cache).
//!
//! Environment: `HOARD_BENCH_PART` = `image`, `tree`, `deltas` or `all`
//! (default);
//! `HOARD_BENCH_DIR` is where the datastore and the dataset
//! go (default: the system temp dir; /dev/shm measures without the disk);
//! `HOARD_BENCH_ROUNDS` (default 3) how often the whole sequence runs,
//! each round on a fresh datastore and a fresh copy of the image. This
//! VM's timings vary by up to 2x from run to run (first-touch page
//! faults, disk writeback of neighbours), so the median is printed.
//! Dirty pages are flushed (`sync`) before each step so that one step's
//! writeback does not land in the next one's time. Page cache is warm
//! (the data was just generated), as for a backup of a running VM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

const GEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/bench/gen_dataset.py"
);

struct Step {
    name: String,
    seconds: f64,
    moved: u64,
    client_rss_kib: u64,
    server_rss_kib: u64,
    /// The datastore's size on disk after a backup step.
    datastore: Option<u64>,
    /// Object-storage requests of the step (S3 runs).
    requests: Option<u64>,
}

/// The S3 service of an S3 run (`HOARD_BENCH_S3=1`).
fn s3() -> Option<&'static hoard_storage::seaweedfs::SeaweedFs> {
    (std::env::var("HOARD_BENCH_S3").as_deref() == Ok("1")).then(hoard_storage::seaweedfs::shared)
}

fn main() {
    let base = std::env::var_os("HOARD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let rounds: usize = std::env::var("HOARD_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let pristine = dir.path().join("pristine");
    println!("e2e: dataset and datastores under {}", dir.path().display());
    let gen_started = Instant::now();
    run_ok(
        Command::new("python3")
            .arg(GEN)
            .arg("create")
            .arg(&pristine),
    );
    println!(
        "dataset generated in {:.1} s",
        gen_started.elapsed().as_secs_f64()
    );
    let size = std::fs::metadata(pristine.join("image.raw"))
        .expect("image")
        .len();
    let part = std::env::var("HOARD_BENCH_PART").unwrap_or_else(|_| "all".into());
    let (do_image, do_tree) = (
        part == "all" || part == "image",
        part == "all" || part == "tree",
    );
    let mut images: Vec<Vec<Step>> = Vec::new();
    let mut trees: Vec<Vec<Step>> = Vec::new();
    for round in 0..rounds {
        if !do_image && !do_tree {
            break;
        }
        // Each round: a fresh datastore and a fresh copy of the data (the
        // mutation is deterministic, so every round sees the same bytes).
        let work = fresh_work(dir.path(), &format!("round{round}"), &pristine);
        let image = do_image.then(|| ImageRun::start(&work));
        let tree = do_tree.then(|| TreeRun::start(&work));
        let mut image_steps = Vec::new();
        let mut tree_steps = Vec::new();
        if let Some(r) = &image {
            r.before_mutation(&mut image_steps);
        }
        if let Some(r) = &tree {
            r.before_mutation(&mut tree_steps);
        }
        run_ok(
            Command::new("python3")
                .arg(GEN)
                .arg("mutate")
                .arg(&work)
                .stderr(Stdio::null()),
        );
        if let Some(r) = &image {
            r.after_mutation(&mut image_steps, size);
        }
        if let Some(r) = &tree {
            r.after_mutation(&mut tree_steps);
        }
        if do_image {
            images.push(image_steps);
        }
        if do_tree {
            trees.push(tree_steps);
        }
        drop((image, tree));
        let _ = std::fs::remove_dir_all(&work);
        if round + 1 < rounds {
            // On ext4 without a journal (this VM's disk), allocating
            // inodes stays slow for tens of seconds after many deletions
            // (the kernel skips "recently deleted" inodes one buffer
            // lookup at a time): the next round starts after that, as
            // the first one did.
            run_ok(&mut Command::new("sync"));
            std::thread::sleep(std::time::Duration::from_secs(40));
        }
    }
    if do_image {
        println!(
            "\nimage (2 GiB), {rounds} rounds: median seconds (min-max), median MB/s, data moved, peak RSS over all rounds"
        );
        print_steps(&images, size);
    }
    if do_tree {
        let tree_size = du_apparent(&pristine.join("tree"));
        println!(
            "\ntree ({:.0} MiB), {rounds} rounds: median seconds (min-max), median MB/s, data moved, peak RSS; datastore size after the step",
            tree_size as f64 / (1 << 20) as f64
        );
        print_steps(&trees, tree_size);
    }
    if part == "all" || part == "deltas" {
        delta_series(dir.path(), &pristine);
    }
}

/// Runs `gen_dataset.py mutate` on `work` (its image only matters here).
fn mutate(work: &Path, round: u32, style: &str) {
    run_ok(
        Command::new("python3")
            .arg(GEN)
            .arg("mutate")
            .arg(work)
            .args(["--round", &round.to_string(), "--image-style", style])
            .stderr(Stdio::null()),
    );
}

/// A fresh work directory with a copy of the pristine image and tree.
fn fresh_work(dir: &Path, name: &str, pristine: &Path) -> PathBuf {
    let work = dir.join(name);
    std::fs::create_dir(&work).expect("work dir");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(pristine.join("image.raw"))
            .arg(work.join("image.raw")),
    );
    // `mutate` edits the tree too.
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(pristine.join("tree"))
            .arg(work.join("tree")),
    );
    work
}

/// Image deltas: store growth per backup after each mutation, and the
/// restore of the newest round against the first backup's.
fn delta_series(dir: &Path, pristine: &Path) {
    let print = |title: &str, steps: &[Step]| {
        println!("\n{title}");
        println!(
            "{:34} {:>8} {:>12} {:>12} {:>12}",
            "backup", "seconds", "uploaded", "datastore", "growth"
        );
        let mut before = 0;
        for s in steps {
            let after = s.datastore.unwrap_or(0);
            println!(
                "{:34} {:>8.2} {:>8.1} MiB {:>8.1} MB {:>+9.1} MB",
                s.name,
                s.seconds,
                s.moved as f64 / (1 << 20) as f64,
                after as f64 / 1e6,
                (after as f64 - before as f64) / 1e6,
            );
            before = after;
        }
    };
    let work = fresh_work(dir, "deltas-styles", pristine);
    let run = ImageRun::start(&work);
    let mut steps = Vec::new();
    run.backup(&mut steps, "first backup", "1000", &[]);
    mutate(&work, 1, "scattered");
    run.backup(&mut steps, "after the scattered mutation", "2000", &[]);
    mutate(&work, 2, "clustered");
    run.backup(&mut steps, "after the clustered mutation", "3000", &[]);
    print(
        "image deltas: two mutation styles (datastore on disk)",
        &steps,
    );
    drop(run);
    let _ = std::fs::remove_dir_all(&work);

    let work = fresh_work(dir, "deltas-rounds", pristine);
    let run = ImageRun::start(&work);
    let mut steps = Vec::new();
    run.backup(&mut steps, "first backup", "1000", &[]);
    for round in 1..=10u32 {
        mutate(&work, round, "scattered");
        let time = (1000 * (round + 1)).to_string();
        run.backup(&mut steps, &format!("round {round}"), &time, &[]);
    }
    print(
        "image deltas: ten scattered rounds (datastore on disk)",
        &steps,
    );
    let total = steps.last().and_then(|s| s.datastore).unwrap_or(0) as f64
        - steps[0].datastore.unwrap_or(0) as f64;
    println!("growth over the ten rounds: {:.1} MB", total / 1e6);
    // The newest image backed up afresh into another group: the same
    // content with every chunk whole, to tell what deltas cost a restore
    // from what the content does (the mutations turned 262 empty chunks
    // into data to hash and write).
    let spec = format!("drive-scsi0.img={}", work.join("image.raw").display());
    let args = strings(&[
        "backup",
        "--type",
        "vm",
        "--id",
        "101",
        "--quiet",
        "--output-format",
        "json",
        &spec,
    ]);
    run.served.step("whole copy", &args, |_| 0);
    let snapshots = [
        ("first backup", "vm/100/1970-01-01T00:16:40Z"),
        ("round 1", "vm/100/1970-01-01T00:33:20Z"),
        ("round 10", "vm/100/latest"),
        ("round 10's image, whole", "vm/101/latest"),
    ];
    let mut secs = vec![Vec::new(); snapshots.len()];
    for _ in 0..3 {
        for (i, (_, snap)) in snapshots.iter().enumerate() {
            let want = (i >= 2).then(|| work.join("image.raw"));
            secs[i].push(run.restore_secs(snap, want.as_deref()));
        }
    }
    println!("full restores, three of each alternating: median (all)");
    let first = {
        secs[0].sort_by(f64::total_cmp);
        secs[0][1]
    };
    for ((name, _), s) in snapshots.iter().zip(&mut secs) {
        s.sort_by(f64::total_cmp);
        println!(
            "  {name:26} {:>6.2} s {:>6.2}x the first backup's  {s:.2?}",
            s[1],
            s[1] / first
        );
    }
    drop(run);
    let _ = std::fs::remove_dir_all(&work);
}

fn print_steps(all: &[Vec<Step>], size: u64) {
    println!(
        "{:30} {:>18} {:>8} {:>12} {:>11} {:>11} {:>11} {:>9}",
        "step", "seconds", "MB/s", "moved", "client RSS", "server RSS", "datastore", "requests"
    );
    for (i, first) in all[0].iter().enumerate() {
        let mut secs: Vec<f64> = all.iter().map(|r| r[i].seconds).collect();
        secs.sort_by(f64::total_cmp);
        let median = secs[secs.len() / 2];
        let client = all.iter().map(|r| r[i].client_rss_kib).max().unwrap_or(0);
        let server = all.iter().map(|r| r[i].server_rss_kib).max().unwrap_or(0);
        let store = match first.datastore {
            Some(b) => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
            None => "-".into(),
        };
        let requests = first.requests.map_or("-".into(), |r| r.to_string());
        println!(
            "{:30} {:>6.2} ({:.2}-{:.2}) {:>8.0} {:>8.1} MiB {:>7} MiB {:>7} MiB {:>11} {:>9}",
            first.name,
            median,
            secs[0],
            secs[secs.len() - 1],
            size as f64 / median / 1e6,
            first.moved as f64 / (1 << 20) as f64,
            client / 1024,
            server / 1024,
            store,
            requests,
        );
    }
}

/// Bytes a directory's files hold (apparent sizes).
fn du_apparent(dir: &Path) -> u64 {
    du(dir, &["-sb"])
}

/// Bytes a directory takes on disk.
fn du_disk(dir: &Path) -> u64 {
    du(dir, &["-s", "--block-size=1"])
}

fn du(dir: &Path, args: &[&str]) -> u64 {
    let out = Command::new("du").args(args).arg(dir).output().expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du output")
}

/// A server on its own datastore, for one part of a round.
struct Served {
    child: Child,
    /// What the client needs: server address, token, fingerprint.
    addr: Vec<(&'static str, String)>,
    ds: PathBuf,
}

impl Served {
    fn start(ds: PathBuf) -> Served {
        let state = ds.with_extension("state");
        let token = Command::new(env!("CARGO_BIN_EXE_hoard"))
            .args(["token", "create", "bench", "--role", "admin", "--state-dir"])
            .arg(&state)
            .output()
            .expect("create a token");
        assert!(token.status.success(), "token create failed");
        let token = String::from_utf8(token.stdout)
            .expect("utf-8")
            .trim()
            .to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoard"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--datastore"])
            .arg(&ds)
            .arg("--state-dir")
            .arg(&state)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        if let Some(weed) = s3() {
            let prefix = ds.display().to_string().replace(['/', '.'], "-");
            let c = weed.config(prefix.trim_start_matches('-'));
            cmd.args(["--s3-endpoint", &c.endpoint, "--s3-bucket", &c.bucket])
                .args(["--s3-prefix", &c.prefix, "--s3-credentials"])
                .arg(c.credentials_file.expect("a credentials file"))
                .env("RUST_LOG", "warn,hoard_server::connection=info")
                .stderr(std::fs::File::create(ds.with_extension("log")).expect("log file"));
        }
        let mut child = cmd.spawn().expect("start server");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut fingerprint = String::new();
        let server = loop {
            let mut line = String::new();
            out.read_line(&mut line).expect("banner");
            let last = line.trim().rsplit(' ').next().expect("word").to_string();
            if line.contains("fingerprint") {
                fingerprint = last;
            } else if line.contains("serving") {
                break last;
            }
        };
        let addr = vec![
            ("HOARD_SERVER", server),
            ("HOARD_TOKEN", token),
            ("HOARD_FINGERPRINT", fingerprint),
        ];
        Served { child, addr, ds }
    }

    /// The object-storage requests the server logged so far (S3 runs).
    fn requests(&self) -> Option<u64> {
        s3()?;
        let log = std::fs::read_to_string(self.ds.with_extension("log")).unwrap_or_default();
        let marker = "object storage requests so far: ";
        Some(
            log.lines()
                .rev()
                .find_map(|l| l.split(marker).nth(1)?.split(' ').next()?.parse().ok())
                .unwrap_or(0),
        )
    }

    /// Runs one client command as a timed step.
    fn step(
        &self,
        name: &str,
        args: &[String],
        moved: impl Fn(&serde_json::Value) -> u64,
    ) -> (Step, serde_json::Value) {
        let before = self.requests();
        let (seconds, client_rss_kib, server_rss_kib, out) = measure(&self.child, &self.addr, args);
        // The server logs its count as the connection ends, just after
        // the client exits.
        if before.is_some() {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let requests = before.zip(self.requests()).map(|(b, a)| a - b);
        let report: serde_json::Value = serde_json::from_slice(&out).expect("json report");
        let step = Step {
            name: name.to_string(),
            seconds,
            moved: moved(&report),
            client_rss_kib,
            server_rss_kib,
            datastore: None,
            requests,
        };
        (step, report)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

struct TreeRun {
    served: Served,
    work: PathBuf,
}

impl TreeRun {
    fn start(work: &Path) -> TreeRun {
        TreeRun {
            served: Served::start(work.join("ds-tree")),
            work: work.to_path_buf(),
        }
    }

    fn backup(&self, steps: &mut Vec<Step>, name: &'static str, time: &str) {
        let spec = format!("root={}", self.work.join("tree").display());
        let args = strings(&[
            "backup",
            "--type",
            "host",
            "--id",
            "bench",
            "--time",
            time,
            "--quiet",
            "--output-format",
            "json",
            &spec,
        ]);
        let (mut step, report) = self.served.step(name, &args, |r| {
            let t = &r["trees"][0];
            t["meta"]["bytes_uploaded"].as_u64().unwrap_or(0)
                + t["data"]["bytes_uploaded"].as_u64().unwrap_or(0)
        });
        assert_eq!(
            report["trees"][0]["skipped"], 0,
            "entries skipped: {report}"
        );
        run_ok(&mut Command::new("sync"));
        step.datastore = Some(du_disk(&self.served.ds));
        steps.push(step);
    }

    fn before_mutation(&self, steps: &mut Vec<Step>) {
        self.backup(steps, "tree: first backup", "1000");
        self.backup(steps, "tree: unchanged", "2000");
    }

    fn after_mutation(&self, steps: &mut Vec<Step>) {
        self.backup(steps, "tree: after 2% mutation", "3000");
        let target = self.work.join("restored-tree");
        let args = strings(&[
            "restore",
            "host/bench/1970-01-01T00:50:00Z",
            "root",
            target.to_str().expect("utf-8 path"),
            "--quiet",
            "--output-format",
            "json",
        ]);
        let downloaded = |r: &serde_json::Value| r["data_bytes_downloaded"].as_u64().unwrap_or(0);
        let (step, _) = self.served.step("tree: full restore", &args, downloaded);
        steps.push(step);
        run_ok(
            Command::new("diff")
                .arg("-r")
                .arg("--no-dereference")
                .arg(self.work.join("tree"))
                .arg(&target),
        );
        let _ = std::fs::remove_dir_all(&target);
        let one = self.work.join("one-file");
        let args = strings(&[
            "restore",
            "host/bench/1970-01-01T00:50:00Z",
            "root",
            one.to_str().expect("utf-8 path"),
            "--path",
            "big/L010.log",
            "--quiet",
            "--output-format",
            "json",
        ]);
        let (step, _) = self
            .served
            .step("tree: single-file restore", &args, downloaded);
        steps.push(step);
        assert!(
            same_content(&self.work.join("tree/big/L010.log"), &one),
            "single file differs"
        );
    }
}

struct ImageRun {
    served: Served,
    work: PathBuf,
}

impl ImageRun {
    fn start(work: &Path) -> ImageRun {
        ImageRun {
            served: Served::start(work.join("ds-image")),
            work: work.to_path_buf(),
        }
    }

    fn backup(&self, steps: &mut Vec<Step>, name: &str, time: &str, extra: &[&str]) {
        let spec = format!("drive-scsi0.img={}", self.work.join("image.raw").display());
        let mut args = vec![
            "backup",
            "--type",
            "vm",
            "--id",
            "100",
            "--time",
            time,
            "--quiet",
            "--output-format",
            "json",
        ];
        args.extend_from_slice(extra);
        args.push(&spec);
        let (mut step, _) = self.served.step(name, &strings(&args), |r| {
            r["images"][0]["bytes_uploaded"]
                .as_u64()
                .expect("byte count")
        });
        run_ok(&mut Command::new("sync"));
        step.datastore = Some(du_disk(&self.served.ds));
        steps.push(step);
    }

    fn before_mutation(&self, steps: &mut Vec<Step>) {
        self.backup(steps, "first backup", "1000", &[]);
        self.backup(steps, "unchanged, metadata shortcut", "2000", &[]);
        self.backup(steps, "unchanged, --reread", "3000", &["--reread"]);
    }

    fn after_mutation(&self, steps: &mut Vec<Step>, size: u64) {
        self.backup(steps, "after 1% mutation", "4000", &[]);
        let image = self.work.join("image.raw");
        let target = self.work.join("restored.raw");
        let restore = |snapshot: &str| -> Vec<String> {
            let _ = std::fs::remove_file(&target);
            strings(&[
                "restore",
                snapshot,
                "drive-scsi0.img",
                target.to_str().expect("utf-8 path"),
                "--quiet",
                "--output-format",
                "json",
            ])
        };
        let downloaded = |r: &serde_json::Value| {
            assert_eq!(r["size"].as_u64(), Some(size));
            r["bytes_downloaded"].as_u64().expect("byte count")
        };
        let (step, _) = self.served.step(
            "full restore, mutated image",
            &restore("vm/100/1970-01-01T01:06:40Z"),
            downloaded,
        );
        steps.push(step);
        assert!(same_content(&image, &target), "restored image differs");
        let (step, _) = self.served.step(
            "full restore, first image",
            &restore("vm/100/1970-01-01T00:16:40Z"),
            downloaded,
        );
        steps.push(step);
        let _ = std::fs::remove_file(&target);
    }
}

impl ImageRun {
    /// Seconds of a full restore of `snapshot`, compared with `want`
    /// (after the clock stops) if given.
    fn restore_secs(&self, snapshot: &str, want: Option<&Path>) -> f64 {
        let target = self.work.join("restored.raw");
        let _ = std::fs::remove_file(&target);
        run_ok(&mut Command::new("sync"));
        let args = strings(&[
            "restore",
            snapshot,
            "drive-scsi0.img",
            target.to_str().expect("utf-8 path"),
            "--quiet",
            "--output-format",
            "json",
        ]);
        let (step, _) = self.served.step("restore", &args, |r| {
            r["bytes_downloaded"].as_u64().unwrap_or(0)
        });
        if let Some(want) = want {
            assert!(same_content(want, &target), "restored image differs");
        }
        let _ = std::fs::remove_file(&target);
        step.seconds
    }
}

fn run_ok(cmd: &mut Command) {
    let status = cmd.status().expect("run");
    assert!(status.success(), "{cmd:?} failed");
}

/// Runs the client once: wall seconds, its peak RSS, the server's peak
/// RSS during the run, and its stdout.
fn measure(
    server: &Child,
    addr: &[(&'static str, String)],
    args: &[String],
) -> (f64, u64, u64, Vec<u8>) {
    run_ok(&mut Command::new("sync"));
    let status_path = format!("/proc/{}/status", server.id());
    // "5" resets the peak RSS (VmHWM) to the current RSS.
    let _ = std::fs::write(format!("/proc/{}/clear_refs", server.id()), "5");
    let out_file = tempfile::tempfile().expect("temp file");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(args)
        .envs(addr.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(out_file.try_clone().expect("dup"))
        .spawn()
        .expect("start client");
    let (code, maxrss_kib) = wait_with_rusage(child);
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "client {args:?} failed");
    let server_rss = std::fs::read_to_string(&status_path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    use std::io::{Read, Seek};
    let mut out = Vec::new();
    let mut f = out_file;
    f.rewind().expect("rewind");
    f.read_to_end(&mut out).expect("read output");
    (seconds, maxrss_kib, server_rss, out)
}

/// Waits for `child` and returns its exit code and peak RSS in KiB.
fn wait_with_rusage(child: Child) -> (i32, u64) {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: all-zero bytes are a valid `rusage` (a plain C struct of
    // integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unreaped child (std never waited for it),
    // and both out-pointers point to live, writable locals of the right
    // types for the duration of the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, usage.ru_maxrss as u64)
}

fn same_content(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .is_ok_and(|s| s.success())
}
