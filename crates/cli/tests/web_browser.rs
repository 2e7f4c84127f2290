//! The web page in a real browser: headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`, started here)
//! against a real server. Logs in, sees the groups (a failing one
//! highlighted), browses into a tree snapshot and downloads a file, then
//! compares it with the original; protects a snapshot; runs a prune dry
//! run and a GC; and checks a reader sees none of the maintenance.
//! Screenshots of the dashboard and the snapshot browser are saved under
//! `target/tmp/web-screenshots/`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::web::add_user;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use hoard_types::SnapshotPath;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on a free loopback port, once it accepts connections.
fn start_driver() -> (Driver, u16) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; ./run-tests installs it)");
    let driver = Driver(child);
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (driver, port)
}

async fn browser(port: u16, profile: &Path, downloads: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                // The test server's certificate is self-signed.
                "--ignore-certificate-errors",
                "--window-size=1366,900",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
            },
        }),
    );
    let http = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(http)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session")
}

async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
}

/// Waits until `css` shows text for which `ok` holds; returns it.
async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && ok(&t)
        {
            return t;
        }
        assert!(Instant::now() < deadline, "{css} never showed the text");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether nothing matching `css` is shown (absent, or hidden).
async fn absent(c: &Client, css: &str) -> bool {
    for e in c.find_all(Locator::Css(css)).await.unwrap() {
        if e.is_displayed().await.unwrap_or(false) {
            return false;
        }
    }
    true
}

async fn login(c: &Client, base: &str, user: &str, password: &str) {
    c.goto(base).await.unwrap();
    wait_for(c, "#login-user")
        .await
        .send_keys(user)
        .await
        .unwrap();
    c.find(Locator::Css("#login-password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    c.find(Locator::Css("#login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "#whoami", |t| t.contains(user)).await;
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let path = screenshots().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// A file that appears whole in `dir` (Chromium writes `.crdownload`
/// first and renames it).
async fn downloaded(dir: &Path, name: &str) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    let path = dir.join(name);
    loop {
        if path.exists() {
            return std::fs::read(&path).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{name} was not downloaded; {} holds {:?}",
            dir.display(),
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn manifest_protected(ds: &Path, snap: &str) -> bool {
    let ds = hoard_datastore::Datastore::open(ds).unwrap();
    let snap: SnapshotPath = snap.parse().unwrap();
    ds.load_manifest(&snap).unwrap().protected
}

fn ok(out: std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_web_page_in_chromium() {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("etc/ssl")).unwrap();
    let hosts = b"127.0.0.1 localhost\n::1 localhost ip6-localhost\n".to_vec();
    std::fs::write(tree.join("etc/hosts"), &hosts).unwrap();
    std::fs::write(tree.join("etc/ssl/openssl.cnf"), b"[ req ]\n").unwrap();
    std::fs::write(tree.join("README"), b"a web server\n").unwrap();
    let spec = format!("root={}", tree.display());
    let mut tree_snaps = Vec::new();
    for time in ["2026-11-28T02:00:00Z", "2026-11-29T02:00:00Z"] {
        ok(hoard(
            &server.addr,
            &[
                "backup", "--type", "host", "--id", "web1", "--time", time, "-q", &spec,
            ],
        ));
        tree_snaps.push(format!("host/web1/{time}"));
    }
    // A VM whose backup fails verify: the dashboard must show it.
    let img = src.path().join("disk.raw");
    std::fs::write(&img, vec![9u8; 3 << 20]).unwrap();
    let img_spec = format!("drive-scsi0.img={}", img.display());
    ok(hoard(
        &server.addr,
        &["backup", "--type", "vm", "--id", "100", "-q", &img_spec],
    ));
    let ds = new_datastore(&server.datastore());
    for d in stored::digests(&ds) {
        if ds
            .chunks()
            .raw_size(&d)
            .is_ok_and(|n| n == 4 << 20 || n == 3 << 20)
        {
            stored::damage(&ds, &d);
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["verify", "vm/100", "--datastore"])
        .arg(server.datastore())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "verify finds the damage");

    add_user(server.dir.path(), "alice", "admin", &[], "correct horse");
    add_user(
        server.dir.path(),
        "rob",
        "reader",
        &["host"],
        "staple battery",
    );
    let base = format!("https://{}/", server.addr);
    let downloads = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let (_driver, port) = start_driver();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = browser(port, profile.path(), downloads.path()).await;

        // Log in; the dashboard lists both groups, the VM as failing.
        login(&c, &base, "alice", "correct horse").await;
        wait_for(&c, r#"#groups tr[data-group="host/web1"]"#).await;
        let vm = wait_for(&c, r#"#groups tr[data-group="vm/100"]"#).await;
        let class = vm.attr("class").await.unwrap().unwrap_or_default();
        assert!(
            class.contains("failing"),
            "vm/100 is highlighted: {class:?}"
        );
        // GC from the page, followed as a task; it adds a usage sample.
        wait_for(&c, "#gc-run").await.click().await.unwrap();
        wait_text(&c, "#task-state", |t| t.contains("ok")).await;
        c.goto(&base).await.unwrap();
        wait_for(&c, r#"#groups tr[data-group="host/web1"]"#).await;
        wait_for(&c, "svg#usage-chart").await;
        // The GC just run shows among the reports, by whom it was run.
        wait_text(&c, "#reports", |t| {
            t.contains("Garbage collection") && t.contains("by alice")
        })
        .await;
        screenshot(&c, "dashboard.png").await;

        // Into the group, its newest snapshot, the archive, a directory.
        wait_for(&c, r#"tr[data-group="host/web1"] a.group-link"#)
            .await
            .click()
            .await
            .unwrap();
        let newest = &tree_snaps[1];
        wait_for(&c, &format!(r#"#snapshots tr[data-snapshot="{newest}"]"#)).await;
        c.find(Locator::Css(&format!(
            r#"#snapshots tr[data-snapshot="{newest}"] a.browse"#
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
        wait_for(&c, r#"#entries tr[data-name="etc"] a.dir-link"#)
            .await
            .click()
            .await
            .unwrap();
        let link = wait_for(&c, r#"#entries tr[data-name="hosts"] a.file-download"#).await;
        wait_for(&c, r#"#entries tr[data-name="ssl"]"#).await;
        wait_text(&c, "#browser-path", |t| t.contains("etc")).await;
        screenshot(&c, "snapshot-browser.png").await;
        link.click().await.unwrap();
        assert_eq!(
            downloaded(downloads.path(), "hosts").await,
            hosts,
            "the downloaded file matches the original"
        );

        // Protect the older snapshot from its group page.
        let older = &tree_snaps[0];
        c.goto(&format!("{base}#/group/host/web1")).await.unwrap();
        wait_for(
            &c,
            &format!(r#"#snapshots tr[data-snapshot="{older}"] button.protect"#),
        )
        .await
        .click()
        .await
        .unwrap();
        wait_for(
            &c,
            &format!(r#"#snapshots tr[data-snapshot="{older}"] button.unprotect"#),
        )
        .await;
        assert!(manifest_protected(&server.datastore(), older));

        // A prune dry run keeping the last one: the protected older one is
        // kept for its protection, and nothing is removed.
        let last = wait_for(&c, "#prune-last").await;
        last.clear().await.unwrap();
        last.send_keys("1").await.unwrap();
        let dry = c.find(Locator::Css("#prune-dry-run")).await.unwrap();
        assert_eq!(dry.prop("checked").await.unwrap().as_deref(), Some("true"));
        c.find(Locator::Css("#prune-run"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "#task-state", |t| t.contains("ok")).await;
        let row = wait_for(&c, &format!(r#"#prune-result tr[data-snapshot="{older}"]"#)).await;
        let text = row.text().await.unwrap().to_lowercase();
        assert!(
            text.contains("keep") && text.contains("protected"),
            "{text}"
        );
        screenshot(&c, "prune-dry-run.png").await;
        for s in &tree_snaps {
            assert!(
                server.datastore().join(s).join("manifest.json").exists(),
                "{s} is still there"
            );
        }

        // Log out; a reader sees its paths and no maintenance.
        wait_for(&c, "#logout").await.click().await.unwrap();
        wait_for(&c, "#login-user").await;
        login(&c, &base, "rob", "staple battery").await;
        wait_for(&c, r#"#groups tr[data-group="host/web1"]"#).await;
        assert!(absent(&c, r#"#groups tr[data-group="vm/100"]"#).await);
        assert!(absent(&c, "#gc-run").await && absent(&c, "#verify-run").await);
        c.goto(&format!("{base}#/group/host/web1")).await.unwrap();
        wait_for(&c, &format!(r#"#snapshots tr[data-snapshot="{older}"]"#)).await;
        assert!(absent(&c, "button.protect").await && absent(&c, "button.unprotect").await);
        assert!(absent(&c, "#prune-run").await);
        c.close().await.unwrap();
    });
}
