//! Test harness: the real `hoard` binary serving a temporary datastore on
//! loopback ports (TLS, and plain version 1 acting as admin for the raw
//! packet tests), an admin token for the client commands, and a raw
//! packet connection.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use hoard_protocol::*;
use hoard_types::{BackupId, BackupType, Digest, FileName, SnapshotPath, SnapshotTime};

pub struct Server {
    pub child: Child,
    /// The TLS listener.
    pub addr: String,
    /// The plain version 1 listener (sessions act as admin).
    pub v1_addr: String,
    pub dir: tempfile::TempDir,
    /// An admin token, NAME:SECRET.
    pub token: String,
    pub fingerprint: String,
}

/// Credentials of each running test server by address, so that
/// [`hoard`] can pass them to the client.
static CREDENTIALS: Mutex<Option<HashMap<String, (String, String)>>> = Mutex::new(None);

/// The environment a client command needs for the server at `addr`.
pub fn client_env(addr: &str) -> Vec<(&'static str, String)> {
    let creds = CREDENTIALS.lock().unwrap();
    let mut env = vec![("HOARD_SERVER", addr.to_string())];
    match creds.as_ref().and_then(|m| m.get(addr)) {
        Some((token, fp)) => {
            env.push(("HOARD_TOKEN", token.clone()));
            env.push(("HOARD_FINGERPRINT", fp.clone()));
        }
        // No server there: credentials that get as far as connecting.
        None => env.push(("HOARD_TOKEN", "nobody:none".into())),
    }
    env
}

/// The server's state directory in a test's temp dir.
pub fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

/// Creates a token in the state directory under `dir`.
pub fn create_token(dir: &Path, name: &str, role: &str, paths: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoard"));
    cmd.args(["token", "create", name, "--role", role, "--state-dir"])
        .arg(state_dir(dir));
    for p in paths {
        cmd.args(["--path", p]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `hoard serve` on loopback for the datastore and state under `dir`
/// (on S3 when the tests run so).
fn serve_command(dir: &Path, role: &str, extra: &[&str]) -> Command {
    let mut cmd = serve_base(dir, role);
    cmd.args(s3_serve_args(&dir.join("ds"))).args(extra);
    cmd
}

/// `hoard serve` on loopback for `dir/ds` and `dir/state`, no more.
fn serve_base(dir: &Path, role: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoard"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--listen-v1",
        "127.0.0.1:0",
        "--v1-role",
        role,
        "--datastore",
    ])
    .arg(dir.join("ds"))
    .arg("--state-dir")
    .arg(state_dir(dir));
    cmd
}

/// Whether the tests run against datastores on S3
/// (`HOARD_TEST_DATASTORE=s3`: a SeaweedFS this test process starts) or
/// on local disk (default). `.ci/run` runs the image, tree and
/// maintenance tests both ways.
pub fn on_s3() -> bool {
    match std::env::var("HOARD_TEST_DATASTORE").as_deref() {
        Ok("s3") => true,
        Ok("local") | Err(_) => false,
        Ok(other) => panic!("HOARD_TEST_DATASTORE={other}: use local or s3"),
    }
}

/// The test bucket's configuration for the datastore directory `ds`:
/// a prefix of its own, short retries (a stopped service fails fast).
pub fn s3_config(ds: &Path) -> hoard_storage::S3Config {
    // FNV-1a of the path: a key prefix unique to the directory.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ds.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut c = hoard_storage::seaweedfs::shared().config(&format!("t{h:016x}"));
    c.retry_timeout_secs = 10;
    c
}

/// The `hoard serve` options that put a datastore on the bucket of `c`.
fn s3_flags(c: &hoard_storage::S3Config) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--s3-endpoint".into(),
        c.endpoint.clone(),
        "--s3-bucket".into(),
        c.bucket.clone(),
        "--s3-prefix".into(),
        c.prefix.clone(),
        "--s3-retry-timeout".into(),
        c.retry_timeout_secs.to_string(),
    ];
    if let Some(f) = &c.credentials_file {
        args.push("--s3-credentials".into());
        args.push(f.display().to_string());
    }
    args
}

/// `hoard serve` for the datastore `dir/ds` on `weed` under `prefix`
/// (short retries: a stopped service fails fast).
pub fn s3_serve_command(
    dir: &Path,
    weed: &hoard_storage::seaweedfs::SeaweedFs,
    prefix: &str,
) -> Command {
    let mut c = weed.config(prefix);
    c.retry_timeout_secs = 3;
    let mut cmd = serve_base(dir, "admin");
    cmd.args(s3_flags(&c));
    cmd
}

/// The S3 options for a new datastore `ds` when the tests run on S3 (an
/// existing one knows where its bucket is).
fn s3_serve_args(ds: &Path) -> Vec<String> {
    if !on_s3() || ds.join(".hoard-datastore").exists() {
        return Vec::new();
    }
    let mut args = s3_flags(&s3_config(ds));
    args.extend(["--cache-size".to_string(), "64M".to_string()]);
    args
}

/// A new datastore at `ds`, of the kind the tests run against.
pub fn new_datastore(ds: &Path) -> hoard_datastore::Datastore {
    if on_s3() {
        let o = hoard_datastore::ObjectOptions::new(s3_config(ds));
        hoard_datastore::Datastore::open_or_create_with(ds, hoard_datastore::Backend::S3(o))
            .unwrap()
    } else {
        hoard_datastore::Datastore::open_or_create(ds).unwrap()
    }
}

/// A stored chunk's bytes, wherever the datastore keeps them (a file,
/// or an object; tests damage and lose chunks through these).
pub mod web;

pub mod stored {
    use hoard_datastore::{ChunkClass, Datastore};
    use hoard_types::Digest;

    fn key(d: &Digest, class: ChunkClass) -> String {
        let hex = d.to_hex();
        let suffix = if class == ChunkClass::Encrypted {
            ".e"
        } else {
            ""
        };
        format!("chunks/{}/{hex}{suffix}", &hex[..2])
    }

    /// Drops the chunk from the local cache (the server's and ours), so
    /// that the next read sees the bucket.
    fn uncache(ds: &Datastore, d: &Digest, class: ChunkClass) {
        let suffix = if class == ChunkClass::Encrypted {
            ".e"
        } else {
            ""
        };
        let _ = std::fs::remove_file(
            ds.root()
                .join(".cache")
                .join(format!("{}{suffix}", d.to_hex())),
        );
    }

    pub fn read_class(ds: &Datastore, d: &Digest, class: ChunkClass) -> Vec<u8> {
        match ds.object_storage() {
            Some(s) => s.get(&key(d, class)).unwrap().to_vec(),
            None => std::fs::read(ds.chunks().path_of(d, class)).unwrap(),
        }
    }

    pub fn write_class(ds: &Datastore, d: &Digest, class: ChunkClass, data: &[u8]) {
        match ds.object_storage() {
            Some(s) => {
                s.put(&key(d, class), bytes::Bytes::copy_from_slice(data))
                    .unwrap();
                uncache(ds, d, class);
            }
            None => std::fs::write(ds.chunks().path_of(d, class), data).unwrap(),
        }
    }

    /// Loses the chunk (a file deleted; an object deleted behind the
    /// server's back, its local stub left as it was).
    pub fn lose_class(ds: &Datastore, d: &Digest, class: ChunkClass) {
        match ds.object_storage() {
            Some(s) => {
                s.delete(&[key(d, class)]).unwrap();
                uncache(ds, d, class);
            }
            None => std::fs::remove_file(ds.chunks().path_of(d, class)).unwrap(),
        }
    }

    pub fn exists_class(ds: &Datastore, d: &Digest, class: ChunkClass) -> bool {
        match ds.object_storage() {
            Some(s) => s.head(&key(d, class)).is_ok(),
            None => ds.chunks().path_of(d, class).exists(),
        }
    }

    pub fn read(ds: &Datastore, d: &Digest) -> Vec<u8> {
        read_class(ds, d, ChunkClass::Plain)
    }

    pub fn write(ds: &Datastore, d: &Digest, data: &[u8]) {
        write_class(ds, d, ChunkClass::Plain, data)
    }

    pub fn lose(ds: &Datastore, d: &Digest) {
        lose_class(ds, d, ChunkClass::Plain)
    }

    pub fn exists(ds: &Datastore, d: &Digest) -> bool {
        exists_class(ds, d, ChunkClass::Plain)
    }

    /// Flips a bit in the middle of the stored chunk.
    pub fn damage(ds: &Datastore, d: &Digest) {
        let mut raw = read(ds, d);
        let at = raw.len() / 2;
        raw[at] ^= 1;
        write(ds, d, &raw);
    }

    /// Whether verify's report of where a bad chunk went names a place
    /// that holds it.
    pub fn moved_aside(ds: &Datastore, moved_to: &str) -> bool {
        match ds.object_storage() {
            Some(s) => moved_to
                .rsplit(' ')
                .next()
                .is_some_and(|k| k.starts_with("bad/") && s.head(k).is_ok()),
            None => moved_to.contains("/.bad/") && std::path::Path::new(moved_to).exists(),
        }
    }

    /// The digests of the chunks stored (a file or a stub each).
    pub fn digests(ds: &Datastore) -> Vec<Digest> {
        super::walk(&ds.root().join(".chunks"))
            .into_iter()
            .filter_map(|p| p.file_name()?.to_str()?.parse().ok())
            .collect()
    }
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// A server with extra `hoard serve` arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        Self::start_with_v1_role("admin", extra)
    }

    /// A server whose plain version 1 sessions act as `role`.
    pub fn start_with_v1_role(role: &str, extra: &[&str]) -> Server {
        Self::start_in(tempfile::tempdir().unwrap(), role, extra)
    }

    /// A server in `dir` (whose `state/` may hold a certificate already).
    pub fn start_in(dir: tempfile::TempDir, role: &str, extra: &[&str]) -> Server {
        let cmd = serve_command(dir.path(), role, extra);
        Self::spawn(cmd, dir)
    }

    /// A server whose datastore (`dir/ds`) keeps its chunks on the S3
    /// service `weed`, under `prefix`, with `extra` arguments.
    pub fn start_on_s3(
        dir: tempfile::TempDir,
        weed: &hoard_storage::seaweedfs::SeaweedFs,
        prefix: &str,
        extra: &[&str],
    ) -> Server {
        let mut cmd = s3_serve_command(dir.path(), weed, prefix);
        cmd.args(extra);
        Self::spawn(cmd, dir)
    }

    /// A server whose datastore lives on a tmpfs of `size` (like "3m") in
    /// a private mount namespace (`unshare`), so that writes hit a real
    /// "No space left on device". Only the server sees that file system.
    pub fn start_on_small_disk(size: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let script = format!(
            "mount -t tmpfs -o size={size} tmpfs '{m}' && exec '{bin}' serve --listen 127.0.0.1:0 --listen-v1 127.0.0.1:0 --v1-role admin --datastore '{m}/ds' --state-dir '{s}'",
            m = mnt.display(),
            s = state_dir(dir.path()).display(),
            bin = env!("CARGO_BIN_EXE_hoard"),
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c", &script]);
        Self::spawn(cmd, dir)
    }

    fn spawn(cmd: Command, dir: tempfile::TempDir) -> Server {
        let token = create_token(dir.path(), "test-admin", "admin", &[]);
        Self::spawn_with_token(cmd, dir, token)
    }

    /// Kills the server with SIGKILL (a crash: nothing is cleaned up) and
    /// starts a new one on the same datastore and state directory.
    pub fn kill_and_restart(self) -> Server {
        self.restart_with(&[])
    }

    /// Kills the server, does `between` to its datastore directory, and
    /// starts a new one on it (which opens it as whatever kind it is).
    pub fn stop_then_restart(mut self, between: impl FnOnce(&Path)) -> Server {
        let _ = self.child.kill();
        self.child.wait().unwrap();
        between(&self.datastore());
        self.restart_with(&[])
    }

    /// Kills the server with SIGKILL if it still runs, and starts a new
    /// one on the same datastore and state directory with `env` set.
    pub fn restart_with(mut self, env: &[(&str, String)]) -> Server {
        let _ = self.child.kill();
        self.child.wait().unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let token = self.token.clone();
        drop(self);
        let mut cmd = serve_command(dir.path(), "admin", &[]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn_with_token(cmd, dir, token)
    }

    fn spawn_with_token(mut cmd: Command, dir: tempfile::TempDir, token: String) -> Server {
        let mut child = cmd
            .env("RUST_LOG", "warn,hoard::serve=error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (mut fingerprint, mut v1_addr) = (String::new(), String::new());
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let addr = loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "the server exited");
            let last = line.trim().rsplit(' ').next().unwrap().to_string();
            if line.contains("fingerprint") {
                fingerprint = last;
            } else if line.contains("version 1 without TLS") {
                v1_addr = line
                    .split(" on ")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string();
            } else if line.contains("serving datastore") {
                break last;
            }
        };
        assert!(
            addr.starts_with("127.0.0.1:"),
            "unexpected address {addr:?}"
        );
        CREDENTIALS
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(addr.clone(), (token.clone(), fingerprint.clone()));
        Server {
            child,
            addr,
            v1_addr,
            dir,
            token,
            fingerprint,
        }
    }

    /// Creates a token on this server.
    pub fn token(&self, name: &str, role: &str, paths: &[&str]) -> String {
        create_token(self.dir.path(), name, role, paths)
    }

    /// Runs `hoard` as a client of this server with `token`.
    pub fn hoard_as(&self, token: &str, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_hoard"))
            .env("HOARD_SERVER", &self.addr)
            .env("HOARD_TOKEN", token)
            .env("HOARD_FINGERPRINT", &self.fingerprint)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn datastore(&self) -> PathBuf {
        self.dir.path().join("ds")
    }

    /// A raw version 2 connection on the TLS listener, authenticated
    /// with `token`; panics unless the server answers Ok.
    pub fn connect_v2(&self, token: &str) -> Conn {
        self.connect_v2_with(token, Features::EXTENSIONS)
    }

    /// An authenticated version 2 connection that chose `features`.
    pub fn connect_v2_with(&self, token: &str, features: Features) -> Conn {
        let mut c = self.try_connect_v2_with(token, features);
        match c.recv() {
            (0, Message::Ok) => c,
            other => panic!("authentication failed: {other:?}"),
        }
    }

    /// A version 2 connection that has sent Authenticate with `token`;
    /// the caller reads the answer.
    pub fn try_connect_v2(&self, token: &str) -> Conn {
        self.try_connect_v2_with(token, Features::EXTENSIONS)
    }

    fn try_connect_v2_with(&self, token: &str, chosen: Features) -> Conn {
        let mut c = Conn::connect_tls(&self.addr, &self.fingerprint, &[b"hoard/2"]);
        match c.recv() {
            (
                0,
                Message::Hello {
                    version: 2,
                    features,
                },
            ) => {
                assert!(features.contains(Features::EXTENSIONS))
            }
            other => panic!("expected a version 2 Hello, got {other:?}"),
        }
        c.send(
            0,
            &Message::Authenticate {
                features: chosen,
                token: Secret(token.into()),
            },
        );
        c
    }

    /// A raw version 1 connection on the plain listener (admin).
    pub fn connect(&self) -> Conn {
        let mut c = Conn::connect(&self.v1_addr);
        match c.recv() {
            (0, Message::Hello { version: 1, .. }) => {}
            other => panic!("expected Hello, got {other:?}"),
        }
        c
    }

    /// Sends SIGINT and waits for a clean exit.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// Temp files left under the datastore's `.tmp/`: loose ones, and
    /// those in processes' temp directories besides their locks.
    pub fn temp_files(&self) -> usize {
        temp_files(&self.datastore())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Temp files of data (chunks, indexes, manifests) under datastore `ds`'s
/// `.tmp/` (see [`Server::temp_files`]). A report the server is writing
/// meanwhile (the usage sampler runs at start) is not one of them.
pub fn temp_files(ds: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(ds.join(".tmp")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            n += std::fs::read_dir(entry.path())
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    let name = name.to_string_lossy();
                    name != "lock" && !name.starts_with(hoard_datastore::reports::REPORT_TEMP)
                })
                .count();
        } else {
            n += 1;
        }
    }
    n
}

/// A byte stream a raw connection runs on: TCP, or TLS over TCP.
pub trait RawStream: Read + Write + Send {}
impl<T: Read + Write + Send> RawStream for T {}

pub struct Conn {
    /// The TCP socket (for shutdown and timeouts).
    pub sock: TcpStream,
    /// TLS on top of it, if any.
    tls: Option<Box<dyn RawStream>>,
}

impl Conn {
    pub fn connect(addr: &str) -> Conn {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        Conn { sock, tls: None }
    }

    /// A TLS connection to `addr` trusting `fingerprint`, offering `alpn`
    /// (`hoard/2`, or nothing for HTTP).
    pub fn connect_tls(addr: &str, fingerprint: &str, alpn: &[&[u8]]) -> Conn {
        let mut c = Conn::connect(addr);
        let trust = hoard_transport::tls::Trust::Pinned(fingerprint.parse().unwrap());
        let alpn = alpn.iter().map(|a| a.to_vec()).collect();
        let (config, _) = hoard_transport::tls::client_config_with_alpn(&trust, alpn).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let tcp = c.sock.try_clone().unwrap();
        c.tls = Some(Box::new(rustls::StreamOwned::new(conn, tcp)));
        c
    }

    fn io(&mut self) -> &mut dyn RawStream {
        match &mut self.tls {
            Some(t) => t.as_mut(),
            None => &mut self.sock,
        }
    }

    pub fn send(&mut self, stream: u8, msg: &Message) {
        let bytes = msg.encode(stream);
        self.send_raw(&bytes);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let io = self.io();
        io.write_all(bytes).unwrap();
        io.flush().unwrap();
    }

    /// Reads whatever arrives until the peer closes (or the timeout).
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.io().read_to_end(&mut out);
        out
    }

    /// Reads up to and including the blank line of an HTTP response head.
    pub fn read_http_head(&mut self) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.io().read_exact(&mut byte).is_err() {
                break;
            }
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// Next packet; panics on timeout or a closed connection.
    pub fn recv(&mut self) -> (u8, Message) {
        self.try_recv().expect("connection closed")
    }

    /// Next packet, or None if the server closed the connection.
    pub fn try_recv(&mut self) -> Option<(u8, Message)> {
        let mut head = [0u8; 6];
        if self.io().read_exact(&mut head).is_err() {
            return None;
        }
        let h = check_frame(&head).unwrap().unwrap();
        let mut payload = vec![0u8; h.payload_len()];
        self.io().read_exact(&mut payload).unwrap();
        Some((h.stream, Message::decode(&h, Bytes::from(payload)).unwrap()))
    }

    /// Expects an Error on `stream` whose message contains `needle`.
    pub fn expect_error(&mut self, stream: u8, needle: &str) -> hoard_protocol::ErrorId {
        match self.recv() {
            (s, Message::Error { id, message }) if s == stream => {
                assert!(
                    message.contains(needle),
                    "error {message:?} lacks {needle:?}"
                );
                id
            }
            other => {
                panic!("expected Error on stream {stream} containing {needle:?}, got {other:?}")
            }
        }
    }

    pub fn expect_ok(&mut self, stream: u8) {
        match self.recv() {
            (s, Message::Ok) if s == stream => {}
            other => panic!("expected Ok on stream {stream}, got {other:?}"),
        }
    }

    /// True if the server closed the connection (after any queued packets).
    pub fn closed(&mut self) -> bool {
        self.try_recv().is_none()
    }
}

/// Runs the `hoard` binary as a client of the test server at `addr`
/// (its admin token and fingerprint; see [`client_env`]).
pub fn hoard(addr: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hoard"))
        .envs(client_env(addr))
        .args(args)
        .output()
        .unwrap()
}

/// Runs a maintenance command (`verify`, `gc`, …) on datastore `ds` with
/// JSON output; panics unless it succeeds, and returns the report.
pub fn maintenance_json(ds: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(args)
        .args(["--output-format", "json", "--datastore"])
        .arg(ds)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Restores image `disk.img` of `snapshot` to a temp file and checks it
/// is `want`, byte for byte.
pub fn restores_disk_img(server: &Server, snapshot: &str, want: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.img");
    let out = hoard(
        &server.addr,
        &["restore", snapshot, "disk.img", target.to_str().unwrap()],
    );
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    assert!(
        std::fs::read(&target).unwrap() == want,
        "{snapshot} differs"
    );
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn count_files(dir: &Path, suffix: &str) -> usize {
    let mut n = 0;
    for e in walk(dir) {
        if e.to_string_lossy().ends_with(suffix) {
            n += 1;
        }
    }
    n
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

// Raw-protocol helpers, as a client written from the seed would send.

pub const T0: u64 = 1_556_022_216; // 2019-04-23T12:23:36Z

pub fn create(
    ty: BackupType,
    id: &str,
    time: u64,
    flags: u8,
    name: &str,
    chunk_size: u32,
    file_size: u64,
) -> Message {
    Message::CreateBackup(CreateBackup {
        backup_type: ty,
        id: BackupId::new(id).unwrap(),
        time: SnapshotTime::from_epoch(time).unwrap(),
        flags: BackupFlags(flags),
        name: FileName::new(name).unwrap(),
        chunk_size,
        file_size,
    })
}

pub fn upload(c: &mut Conn, stream: u8, data: &[u8]) -> Digest {
    let digest = Digest::of(data);
    c.send(
        stream,
        &Message::UploadChunk {
            digest,
            data: Bytes::copy_from_slice(data),
        },
    );
    c.expect_ok(stream);
    digest
}

pub fn expect_created(c: &mut Conn, stream: u8) -> String {
    match c.recv() {
        (s, Message::BackupCreated { path }) if s == stream => path,
        other => panic!("expected BackupCreated on {stream}, got {other:?}"),
    }
}

pub fn fixed(entries: &[(u64, Digest)]) -> Message {
    let e: Vec<_> = entries
        .iter()
        .map(|&(index, digest)| FixedEntry { index, digest })
        .collect();
    Message::BackupDataFixed(FixedEntryList::from_entries(&e))
}

pub fn dynamic(entries: &[(u64, Digest)]) -> Message {
    let e: Vec<_> = entries
        .iter()
        .map(|&(offset, digest)| DynamicEntry { offset, digest })
        .collect();
    Message::BackupDataDynamic(DynamicEntryList::from_entries(&e))
}

pub fn hash_list(c: &mut Conn, stream: u8, path: &str) -> Vec<Digest> {
    c.send(stream, &Message::GetHashList { path: path.into() });
    let mut out = Vec::new();
    loop {
        match c.recv() {
            (s, Message::HashListPart(l)) if s == stream => {
                if l.is_empty() {
                    return out;
                }
                out.extend(l.iter());
            }
            other => panic!("expected HashListPart, got {other:?}"),
        }
    }
}

pub fn download(c: &mut Conn, stream: u8, digests: &[Digest]) -> Vec<u8> {
    c.send(
        stream,
        &Message::DownloadChunks(DigestList::from_digests(digests)),
    );
    let mut out = Vec::new();
    for d in digests {
        match c.recv() {
            (
                s,
                Message::Chunk {
                    offset,
                    digest,
                    data,
                },
            ) if s == stream => {
                assert_eq!(offset, out.len() as u64, "chunk offset");
                assert_eq!(digest, *d);
                assert_eq!(Digest::of(&data), digest);
                out.extend_from_slice(&data);
            }
            other => panic!("expected Chunk, got {other:?}"),
        }
    }
    out
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).rotate_left(3) ^ (i >> 9) as u8)
        .collect()
}

/// Incompressible bytes (xorshift), for tests that need chunks to take
/// their full size on disk (the server compresses what it can).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A complete snapshot `vm/1/time` with one fixed file `disk` of `chunks`,
/// written through the datastore library as the server writes it.
pub fn make(ds: &hoard_datastore::Datastore, time: u64, chunks: &[&[u8]]) -> SnapshotPath {
    let reg = ds.register_writer().unwrap();
    let path = SnapshotPath {
        group: "vm/1".parse().unwrap(),
        time: SnapshotTime::from_epoch(time).unwrap(),
    };
    let mut w = ds.begin_snapshot(&path).unwrap();
    let size = chunks.iter().map(|c| c.len() as u64).sum();
    let mut f = w
        .start_file(
            &FileName::new("disk").unwrap(),
            hoard_datastore::FileKind::Fixed,
            true,
            size,
            4096,
        )
        .unwrap();
    for (i, c) in chunks.iter().enumerate() {
        let d = Digest::of(c);
        ds.chunks().insert(&d, c, reg.start()).unwrap();
        f.add_fixed(ds.chunks(), i as u64, &d, reg.start()).unwrap();
    }
    w.record(f.finish().unwrap()).unwrap();
    w.close().unwrap();
    path
}
