//! End-to-end benchmark of the image client: the real `hoard` binary
//! (built by `cargo bench` with the release settings) against a real
//! server on loopback, on the dataset of `../shared/bench/gen_dataset.py`.
//!
//! `cargo bench -p hoard --bench e2e`
//!
//! Steps, each timed from process start to exit:
//! 1. first backup of `image.raw` (2 GiB: random, text and zero zones);
//! 2. unchanged second backup, with the metadata shortcut;
//! 3. unchanged second backup, reading everything (`--reread`);
//! 4. backup after `gen_dataset.py mutate` (5,120 random 4 KiB writes);
//! 5. full restore of that snapshot to a file (checked byte-exact after
//!    the clock stops);
//! 6. full restore of the first snapshot (the image as generated).
//!
//! For each: seconds, MB/s over the image size, bytes uploaded or
//! downloaded, peak client RSS (from wait4) and peak server RSS (VmHWM,
//! reset before each step through /proc/PID/clear_refs).
//!
//! Environment: `HOARD_BENCH_DIR` is where the datastore and the dataset
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
    name: &'static str,
    seconds: f64,
    moved: u64,
    client_rss_kib: u64,
    server_rss_kib: u64,
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
    let mut all: Vec<Vec<Step>> = Vec::new();
    for round in 0..rounds {
        // Each round: a fresh datastore and a fresh copy of the image
        // (the mutation is deterministic, so every round sees the same
        // bytes). The tree is only linked: mutate needs it, we do not.
        let work = dir.path().join(format!("round{round}"));
        std::fs::create_dir(&work).expect("round dir");
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(pristine.join("image.raw"))
                .arg(work.join("image.raw")),
        );
        std::os::unix::fs::symlink(pristine.join("tree"), work.join("tree")).expect("symlink");
        all.push(run_round(&work, size));
        let _ = std::fs::remove_dir_all(&work);
    }

    println!(
        "\nimage (2 GiB), {rounds} rounds: median seconds (min-max), median MB/s, data moved, peak RSS over all rounds"
    );
    println!(
        "{:30} {:>18} {:>8} {:>12} {:>11} {:>11}",
        "step", "seconds", "MB/s", "moved", "client RSS", "server RSS"
    );
    for (i, first) in all[0].iter().enumerate() {
        let mut secs: Vec<f64> = all.iter().map(|r| r[i].seconds).collect();
        secs.sort_by(f64::total_cmp);
        let median = secs[secs.len() / 2];
        let client = all.iter().map(|r| r[i].client_rss_kib).max().unwrap_or(0);
        let server = all.iter().map(|r| r[i].server_rss_kib).max().unwrap_or(0);
        println!(
            "{:30} {:>6.2} ({:.2}-{:.2}) {:>8.0} {:>8.1} MiB {:>7} MiB {:>7} MiB",
            first.name,
            median,
            secs[0],
            secs[secs.len() - 1],
            size as f64 / median / 1e6,
            first.moved as f64 / (1 << 20) as f64,
            client / 1024,
            server / 1024,
        );
    }
}

fn run_round(work: &Path, size: u64) -> Vec<Step> {
    let image = work.join("image.raw");
    let mut server = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--datastore"])
        .arg(work.join("ds"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server");
    let mut banner = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut banner)
        .expect("banner");
    let addr = banner
        .trim()
        .rsplit(' ')
        .next()
        .expect("address")
        .to_string();
    let spec = format!("drive-scsi0.img={}", image.display());
    let backup = |time: &str, extra: &[&str]| {
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
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let mut steps = Vec::new();
    let mut step = |name, args: Vec<String>, moved_key: &str| {
        let (seconds, client_rss_kib, server_rss_kib, out) = measure(&server, &addr, &args);
        let report: serde_json::Value = serde_json::from_slice(&out).expect("json report");
        let moved = match moved_key {
            "uploaded" => report["images"][0]["bytes_uploaded"].as_u64(),
            _ => report["bytes_downloaded"].as_u64(),
        }
        .expect("byte count");
        assert_eq!(report["size"].as_u64().unwrap_or(size), size);
        steps.push(Step {
            name,
            seconds,
            moved,
            client_rss_kib,
            server_rss_kib,
        });
    };
    step("first backup", backup("1000", &[]), "uploaded");
    step(
        "unchanged, metadata shortcut",
        backup("2000", &[]),
        "uploaded",
    );
    step(
        "unchanged, --reread",
        backup("3000", &["--reread"]),
        "uploaded",
    );
    run_ok(
        Command::new("python3")
            .arg(GEN)
            .arg("mutate")
            .arg(work)
            .stderr(Stdio::null()),
    );
    step("after 1% mutation", backup("4000", &[]), "uploaded");
    let target = work.join("restored.raw");
    let restore = |snapshot: &str| -> Vec<String> {
        let _ = std::fs::remove_file(&target);
        [
            "restore",
            snapshot,
            "drive-scsi0.img",
            target.to_str().expect("utf-8 path"),
            "--quiet",
            "--output-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    step(
        "full restore, mutated image",
        restore("vm/100/1970-01-01T01:06:40Z"),
        "downloaded",
    );
    assert!(same_content(&image, &target), "restored image differs");
    step(
        "full restore, first image",
        restore("vm/100/1970-01-01T00:16:40Z"),
        "downloaded",
    );
    let _ = std::fs::remove_file(&target);
    let _ = server.kill();
    let _ = server.wait();
    steps
}

fn run_ok(cmd: &mut Command) {
    let status = cmd.status().expect("run");
    assert!(status.success(), "{cmd:?} failed");
}

/// Runs the client once: wall seconds, its peak RSS, the server's peak
/// RSS during the run, and its stdout.
fn measure(server: &Child, addr: &str, args: &[String]) -> (f64, u64, u64, Vec<u8>) {
    run_ok(&mut Command::new("sync"));
    let status_path = format!("/proc/{}/status", server.id());
    // "5" resets the peak RSS (VmHWM) to the current RSS.
    let _ = std::fs::write(format!("/proc/{}/clear_refs", server.id()), "5");
    let out_file = tempfile::tempfile().expect("temp file");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(args)
        .env("HOARD_SERVER", addr)
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
