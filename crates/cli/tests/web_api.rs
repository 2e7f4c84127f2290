//! The HTTP API (docs/api.md) against a real server: every endpoint,
//! allowed and denied per role and path; bad input answered with the
//! right status and a message; sessions, cookies and CSRF; `/metrics`
//! parsed as Prometheus text.

mod common;

use std::path::Path;

use common::web::{Api, Auth, add_user, user_command};
use common::*;
use serde_json::{Value, json};

fn write_file(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_string()
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server with: `host/web1`, a tree backed up by the admin token (so
/// owned by it); `vm/100`, an image backed up twice by the backup token
/// `bk` (paths `vm`), so owned by `bk`. Tokens `bk` and `rd` (reader,
/// paths `host`). Returns the server, the tokens, the image's bytes and
/// the source directory.
struct World {
    server: Server,
    api: Api,
    admin: Auth,
    bk: Auth,
    rd: Auth,
    image: Vec<u8>,
    src: tempfile::TempDir,
}

fn world() -> World {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    write_file(&tree, "etc/hosts", b"127.0.0.1 localhost\n");
    write_file(&tree, "etc/motd", b"welcome\n");
    write_file(&tree, "big.bin", &big_file());
    std::os::unix::fs::symlink("etc/hosts", tree.join("link")).unwrap();
    let tree_spec = format!("root={}", tree.display());
    ok(&hoard(
        &server.addr,
        &["backup", "--type", "host", "--id", "web1", "-q", &tree_spec],
    ));
    let bk = server.token("bk", "backup", &["vm"]);
    let rd = server.token("rd", "reader", &["host"]);
    let image: Vec<u8> = (0..(5u32 << 20) + 4096)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let img = write_file(src.path(), "disk.raw", &image);
    let spec = format!("disk.img={img}");
    for time in ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"] {
        ok(&server.hoard_as(
            &bk,
            &[
                "backup", "--type", "vm", "--id", "100", "--time", time, "-q", &spec,
            ],
        ));
    }
    World {
        api: Api::new(&server),
        admin: Auth::Token(server.token.clone()),
        bk: Auth::Token(bk),
        rd: Auth::Token(rd),
        server,
        image,
        src,
    }
}

/// 12 MiB: more than the largest chunk, so its content spans chunks.
fn big_file() -> Vec<u8> {
    (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2246822519).rotate_left(13) >> 7) as u8)
        .collect()
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap().to_string())
        .collect()
}

fn first_snapshot(w: &World, group: &str) -> String {
    let a = w
        .api
        .get(&format!("/api/v1/snapshots?group={group}"), &w.admin);
    a.expect(200);
    // Newest first.
    names(&a.json(), "snapshot").remove(0)
}

#[test]
fn reading_endpoints_allow_and_deny_per_role() {
    let w = world();
    let api = &w.api;

    // No caller, a malformed and a wrong token: 401 with a message.
    for path in ["/api/v1/status", "/api/v1/groups", "/metrics"] {
        let a = api.get(path, &Auth::None);
        a.expect(401);
        assert!(a.error().contains("log in"), "{}", a.error());
    }
    let a = api.get("/api/v1/groups", &Auth::Token("bk:wrong".into()));
    a.expect(401);
    assert!(a.error().contains("authentication failed"));
    let a = api.get("/api/v1/groups", &Auth::Token("nocolon".into()));
    a.expect(401);

    // Groups: each caller sees what its role and paths allow.
    let all = api.get("/api/v1/groups", &w.admin);
    all.expect(200);
    assert_eq!(names(&all.json(), "group"), ["host/web1", "vm/100"]);
    let vm = &all.json()[1];
    assert_eq!(vm["owner"], "bk");
    assert_eq!(vm["snapshots"], 2);
    assert_eq!(vm["last"]["state"], "complete");
    assert_eq!(vm["last"]["size"], w.image.len() as u64);
    assert_eq!(vm["failing"], false);
    let a = api.get("/api/v1/groups", &w.bk);
    assert_eq!(names(&a.json(), "group"), ["vm/100"]);
    let a = api.get("/api/v1/groups", &w.rd);
    assert_eq!(names(&a.json(), "group"), ["host/web1"]);

    // Snapshots: newest first, files and archives; a group outside the
    // caller's paths is answered as missing.
    let a = api.get("/api/v1/snapshots?group=vm/100", &w.bk);
    a.expect(200);
    let snaps = a.json();
    assert_eq!(
        names(&snaps, "snapshot"),
        ["vm/100/2026-01-02T00:00:00Z", "vm/100/2026-01-01T00:00:00Z"]
    );
    assert_eq!(snaps[0]["images"], json!(["disk.img"]));
    assert_eq!(snaps[0]["files"][0]["kind"], "image");
    let a = api.get("/api/v1/snapshots?group=vm/100", &w.rd);
    a.expect(404);
    assert!(a.error().contains("no group vm/100"));
    api.get("/api/v1/snapshots?group=vm/999", &w.admin)
        .expect(404);
    let a = api.get("/api/v1/snapshots?group=disk/1", &w.admin);
    a.expect(400);
    assert!(a.error().contains("bad group"));
    api.get("/api/v1/snapshots?group=vm/100&x=1", &w.admin)
        .expect(400);
    let a = api.get("/api/v1/snapshots", &w.rd);
    assert_eq!(names(&a.json(), "group"), ["host/web1"]);

    // One snapshot.
    let tree = first_snapshot(&w, "host/web1");
    let a = api.get(&format!("/api/v1/snapshots/{tree}"), &w.rd);
    a.expect(200);
    assert_eq!(a.json()["archives"], json!(["root"]));
    assert_eq!(a.json()["owner"], "test-admin");
    api.get(&format!("/api/v1/snapshots/{tree}"), &w.bk)
        .expect(404);
    api.get("/api/v1/snapshots/host/web1/2020-01-01T00:00:00Z", &w.admin)
        .expect(404);
    api.get("/api/v1/snapshots/host/web1/yesterday", &w.admin)
        .expect(400);
    api.get(
        "/api/v1/snapshots/host/..%2f..%2fetc/2020-01-01T00:00:00Z",
        &w.admin,
    )
    .expect(400);

    // Status and usage for everyone; counts are the caller's.
    let a = api.get("/api/v1/status", &w.rd);
    a.expect(200);
    let s = a.json();
    assert_eq!(
        (s["groups"].as_u64(), s["snapshots"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(s["datastore"].get("path").is_none(), "paths are for admins");
    let a = api.get("/api/v1/status", &w.admin);
    assert_eq!(a.json()["snapshots"], 3);
    assert!(a.json()["datastore"]["path"].is_string());
    assert!(
        a.json()["datastore"]["format"]
            .as_str()
            .unwrap()
            .starts_with("hoard-datastore")
    );
    // The chunk store's size and history are server-wide: admins and
    // readers of everything only.
    assert!(s["datastore"].get("chunks").is_none());
    api.get("/api/v1/usage", &w.rd).expect(403);
    api.get("/api/v1/usage", &w.bk).expect(403);
    let a = api.get("/api/v1/usage", &w.admin);
    a.expect(200);
    assert!(
        !a.json()["samples"].as_array().unwrap().is_empty(),
        "sampled at start"
    );

    // Admin-only views.
    for path in ["/api/v1/reports", "/api/v1/connections", "/api/v1/tokens"] {
        for who in [&w.bk, &w.rd] {
            let a = api.get(path, who);
            a.expect(403);
            assert!(a.error().contains("admin role"), "{}", a.error());
        }
        api.get(path, &w.admin).expect(200);
    }
    let tokens = api.get("/api/v1/tokens", &w.admin);
    assert_eq!(names(&tokens.json(), "name"), ["bk", "rd", "test-admin"]);
    let text = String::from_utf8_lossy(&tokens.body).to_string();
    if let Auth::Token(t) = &w.bk {
        let secret = t.split_once(':').unwrap().1;
        assert!(!text.contains(secret), "never a secret");
    }

    // A live session shows in the connections, with its principal.
    let _conn = w.server.connect_v2(&w.server.token("live", "backup", &[]));
    let a = api.get("/api/v1/connections", &w.admin);
    let live = a.json();
    assert!(
        live.as_array()
            .unwrap()
            .iter()
            .any(|c| c["principal"] == "live" && c["protocol"] == 2),
        "{live}"
    );

    // Unknown endpoints and pages.
    let a = api.get("/api/v1/nothing", &w.admin);
    a.expect(404);
    assert_eq!(a.error(), "no such endpoint");
    api.get("/nothing.html", &Auth::None).expect(404);
    // The page itself needs no login, and runs only its own script.
    let a = api.get("/", &Auth::None);
    a.expect(200);
    let csp = a.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
    api.get("/app.js", &Auth::None).expect(200);
    api.get("/style.css", &Auth::None).expect(200);
}

#[test]
fn browsing_and_downloads() {
    let w = world();
    let api = &w.api;
    let tree = first_snapshot(&w, "host/web1");
    let list = |path: &str, who: &Auth| {
        api.get(
            &format!("/api/v1/snapshots/{tree}/archives/root/list?path={path}"),
            who,
        )
    };
    let a = list("", &w.rd);
    a.expect(200);
    let root = a.json();
    assert_eq!(names(&root["entries"], "name"), ["big.bin", "etc", "link"]);
    assert_eq!(root["entries"][1]["kind"], "dir");
    assert_eq!(root["entries"][2]["target"], "etc/hosts");
    let a = list("etc", &w.rd);
    assert_eq!(names(&a.json()["entries"], "name"), ["hosts", "motd"]);
    assert_eq!(a.json()["total"], 2);
    let a = list("etc&offset=1", &w.rd);
    assert_eq!(names(&a.json()["entries"], "name"), ["motd"]);
    assert_eq!(
        (a.json()["total"].as_u64(), a.json()["offset"].as_u64()),
        (Some(2), Some(1))
    );
    // A file lists as itself.
    let a = list("etc/hosts", &w.rd);
    assert_eq!(a.json()["entries"][0]["size"], 20);
    list("etc/nothing", &w.rd).expect(404);
    let a = list("etc/../..", &w.rd);
    a.expect(400);
    assert!(a.error().contains(".."));
    list("%2e%2e", &w.rd).expect(400);
    list("", &w.bk).expect(404);
    api.get(
        &format!("/api/v1/snapshots/{tree}/archives/other/list"),
        &w.rd,
    )
    .expect(404);

    // One file, byte for byte, with its name for the browser.
    let file = |path: &str, who: &Auth| {
        api.get(
            &format!("/api/v1/snapshots/{tree}/archives/root/file?path={path}"),
            who,
        )
    };
    let a = file("etc/hosts", &w.rd);
    a.expect(200);
    assert_eq!(a.body, b"127.0.0.1 localhost\n");
    let disposition = a.headers["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment;") && disposition.contains("hosts"));
    let a = file("big.bin", &w.rd);
    a.expect(200);
    assert!(a.body == big_file(), "big.bin downloads byte for byte");
    assert_eq!(
        a.headers["content-length"],
        (12u64 << 20).to_string().as_str()
    );
    let a = file("../../../etc/passwd", &w.rd);
    a.expect(400);
    assert!(a.error().contains("go down from the archive's root"));
    let a = file("etc", &w.rd);
    a.expect(409);
    assert!(a.error().contains("not a regular file"));
    file("link", &w.rd).expect(409);
    file("", &w.rd).expect(400);
    file("etc/nothing", &w.rd).expect(404);
    file("etc/hosts", &w.bk).expect(404);
    // Outside its paths a snapshot that exists and one that does not
    // are answered alike.
    let a = api.get(
        "/api/v1/snapshots/host/web1/2020-01-01T00:00:00Z/archives/root/file?path=x",
        &w.bk,
    );
    a.expect(404);
    assert_eq!(a.error(), file("etc/hosts", &w.bk).error());

    // A whole image.
    let vm = first_snapshot(&w, "vm/100");
    let a = api.get(&format!("/api/v1/snapshots/{vm}/images/disk.img"), &w.bk);
    a.expect(200);
    assert!(a.body == w.image, "the image downloads byte for byte");
    api.get(&format!("/api/v1/snapshots/{vm}/images/disk.img"), &w.rd)
        .expect(404);
    api.get(&format!("/api/v1/snapshots/{vm}/images/other.img"), &w.bk)
        .expect(404);
    api.get(
        &format!("/api/v1/snapshots/{vm}/images/..%2f..%2fmanifest.json"),
        &w.bk,
    )
    .expect(404);

    // A damaged chunk is never served as good data: a download that
    // meets a chunk failing its digest check is cut short.
    let ds = new_datastore(&w.server.datastore());
    let index = ds.open_index(&format!("{tree}/root.hdata.didx")).unwrap();
    let digests = index.digests(0, index.chunk_count() as usize).unwrap();
    assert!(digests.len() >= 2, "big.bin spans chunks");
    // The first holds big.bin's start (and its payload header).
    for d in &digests[1..] {
        stored::damage(&ds, d);
    }
    let token = match &w.rd {
        Auth::Token(t) => t.clone(),
        _ => unreachable!(),
    };
    let r = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!(
            "{}/api/v1/snapshots/{tree}/archives/root/file?path=big.bin",
            api.base
        ))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the head goes out before the damage is met"
    );
    assert!(r.bytes().is_err(), "a damaged chunk ends the body early");
    drop(w.src);
}

#[test]
fn maintenance_actions_per_role() {
    let w = world();
    let api = &w.api;
    let vm_old = "vm/100/2026-01-01T00:00:00Z";
    let tree = first_snapshot(&w, "host/web1");

    // Protect: the group's owner (backup) or an admin; never a reader.
    let a = api.post(
        &format!("/api/v1/snapshots/{tree}/protect"),
        &w.rd,
        &json!({}),
    );
    a.expect(403);
    assert!(a.error().contains("may not change protection"));
    api.post(
        &format!("/api/v1/snapshots/{tree}/protect"),
        &w.bk,
        &json!({}),
    )
    .expect(404);
    let a = api.post(
        &format!("/api/v1/snapshots/{vm_old}/protect"),
        &w.bk,
        &json!({}),
    );
    a.expect(200);
    assert_eq!(a.json()["protected"], true);
    let a = api.get(&format!("/api/v1/snapshots/{vm_old}"), &w.bk);
    assert_eq!(a.json()["protected"], true);
    // Taking protection away is an admin's: a backup token sits on the
    // machine it protects, where ransomware finds it.
    let a = api.post(
        &format!("/api/v1/snapshots/{vm_old}/unprotect"),
        &w.bk,
        &json!({}),
    );
    a.expect(403);
    assert!(a.error().contains("admin role"));
    api.post(
        &format!("/api/v1/snapshots/{tree}/protect"),
        &w.admin,
        &json!({}),
    )
    .expect(200);
    api.post(
        &format!("/api/v1/snapshots/{tree}/unprotect"),
        &w.admin,
        &json!({}),
    )
    .expect(200);
    api.post(
        "/api/v1/snapshots/vm/100/2020-01-01T00:00:00Z/protect",
        &w.admin,
        &json!({}),
    )
    .expect(404);

    // Prune: bad input first.
    let a = api.post("/api/v1/prune", &w.bk, &json!({"keep": {}}));
    a.expect(400);
    assert!(a.error().contains("at least one"));
    let a = api.post(
        "/api/v1/prune",
        &w.bk,
        &json!({"keep": {"last": 1}, "force": true}),
    );
    a.expect(400);
    assert!(a.error().contains("unknown field"));
    api.post_raw("/api/v1/prune", &w.bk, b"{not json".to_vec())
        .expect(400);
    let big = vec![b' '; 100 * 1024];
    let a = api.post_raw("/api/v1/prune", &w.bk, big);
    a.expect(413);
    let a = api.post("/api/v1/prune", &w.rd, &json!({"keep": {"last": 1}}));
    a.expect(403);
    api.post(
        "/api/v1/prune",
        &w.bk,
        &json!({"group": "host/web1", "keep": {"last": 1}}),
    )
    .expect(404);
    // Removing snapshots over the network is an admin's too.
    let a = api.post(
        "/api/v1/prune",
        &w.bk,
        &json!({"group": "vm/100", "keep": {"last": 1}, "dry_run": false}),
    );
    a.expect(403);
    assert!(a.error().contains("admin role"));

    // A dry run by the owner: decisions, nothing removed.
    let a = api.post(
        "/api/v1/prune",
        &w.bk,
        &json!({"group": "vm/100", "keep": {"last": 1}, "dry_run": true}),
    );
    a.expect(202);
    let id = a.json()["task"].as_str().unwrap().to_string();
    let t = api.wait_task(&id, &w.bk);
    assert_eq!(t["state"], "ok", "{t}");
    assert_eq!(t["by"], "bk");
    let decisions = &t["result"]["snapshots"];
    assert_eq!(t["result"]["dry_run"], true);
    // The old snapshot is protected, so kept.
    assert_eq!(decisions[1]["snapshot"], vm_old);
    assert_eq!(decisions[1]["reason"], "protected");
    assert!(t["log"].as_array().unwrap().len() >= 2);
    let a = api.get(&format!("/api/v1/tasks/{id}?since=1"), &w.bk);
    assert_eq!(
        a.json()["log"].as_array().unwrap().len(),
        t["log"].as_array().unwrap().len() - 1
    );
    // Others' tasks are invisible to a non-admin, all visible to admins.
    api.get(&format!("/api/v1/tasks/{id}"), &w.rd).expect(404);
    assert!(
        api.get("/api/v1/tasks", &w.rd)
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        names(&api.get("/api/v1/tasks", &w.admin).json(), "id"),
        [id.as_str()]
    );
    api.get("/api/v1/tasks/nope", &w.admin).expect(404);
    // A dry run is no prune: no report.
    assert!(api.get("/api/v1/reports", &w.admin).json()["prune"].is_null());

    // A real prune by an admin over every group.
    api.post(
        &format!("/api/v1/snapshots/{vm_old}/unprotect"),
        &w.admin,
        &json!({}),
    )
    .expect(200);
    // Without dry_run a prune is a dry run: removing is asked for in so
    // many words.
    let a = api.post("/api/v1/prune", &w.admin, &json!({"keep": {"last": 1}}));
    let t = api.wait_task(a.json()["task"].as_str().unwrap(), &w.admin);
    assert_eq!(t["result"]["dry_run"], true);
    let a = api.post(
        "/api/v1/prune",
        &w.admin,
        &json!({"keep": {"last": 1}, "dry_run": false}),
    );
    let t = api.wait_task(a.json()["task"].as_str().unwrap(), &w.admin);
    assert_eq!(t["state"], "ok", "{t}");
    let removed: Vec<_> = t["result"]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["removed"] == true)
        .map(|d| d["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [vm_old]);
    api.get(&format!("/api/v1/snapshots/{vm_old}"), &w.admin)
        .expect(404);

    // Verify and GC: admins only.
    for (path, body) in [("/api/v1/verify", json!({})), ("/api/v1/gc", json!({}))] {
        for who in [&w.bk, &w.rd] {
            api.post(path, who, &body).expect(403);
        }
    }
    api.post(
        "/api/v1/verify",
        &w.admin,
        &json!({"group": "vm/100", "snapshot": tree}),
    )
    .expect(400);
    api.post(
        "/api/v1/verify",
        &w.admin,
        &json!({"snapshot": "vm/100/2020-01-01T00:00:00Z"}),
    )
    .expect(404);
    api.post("/api/v1/gc", &w.admin, &json!({"grace": 0}))
        .expect(400);
    let a = api.post("/api/v1/verify", &w.admin, &json!({}));
    a.expect(202);
    let t = api.wait_task(a.json()["task"].as_str().unwrap(), &w.admin);
    assert_eq!(t["state"], "ok", "{t}");
    assert_eq!(t["result"]["snapshots"].as_array().unwrap().len(), 2);
    let a = api.get(&format!("/api/v1/snapshots/{tree}"), &w.rd);
    assert_eq!(a.json()["verify"]["state"], "ok");
    let a = api.post("/api/v1/gc", &w.admin, &json!({}));
    a.expect(202);
    let t = api.wait_task(a.json()["task"].as_str().unwrap(), &w.admin);
    assert_eq!(t["state"], "ok", "{t}");
    assert!(t["result"]["kept_chunks"].as_u64().unwrap() > 0);

    // Reports: the last of each kind, with who ran it.
    let r = api.get("/api/v1/reports", &w.admin).json();
    for kind in ["gc", "prune", "verify"] {
        assert_eq!(r[kind]["by"], "test-admin", "{kind}: {r}");
        assert_eq!(r[kind]["ok"], true, "{kind}: {r}");
    }
    // The CLI's runs land there too.
    maintenance_json(&w.server.datastore(), &["gc"]);
    let r = api.get("/api/v1/reports", &w.admin).json();
    assert_eq!(r["gc"]["by"], "cli");
}

#[test]
fn sessions_cookies_and_csrf() {
    let w = world();
    let api = &w.api;
    let dir = w.server.dir.path();
    add_user(dir, "alice", "admin", &[], "correct horse");
    add_user(dir, "rob", "reader", &["host"], "staple battery");

    // Wrong password and unknown user: the same 401.
    let bad = |user: &str, pw: &str| {
        let a = api.post(
            "/api/v1/login",
            &Auth::None,
            &json!({"user": user, "password": pw}),
        );
        a.expect(401);
        a.error()
    };
    let refused = bad("alice", "wrong horse");
    assert_eq!(refused, bad("mallory", "correct horse"));
    // A name no user can have is refused alike, at once, and not counted.
    let a = api.post(
        "/api/v1/login",
        &Auth::None,
        &json!({"user": "x".repeat(60_000), "password": "correct horse"}),
    );
    a.expect(401);
    assert_eq!(a.error(), refused);
    api.post("/api/v1/login", &Auth::None, &json!({"user": "alice"}))
        .expect(400);

    // The cookie's flags.
    let a = api.post(
        "/api/v1/login",
        &Auth::None,
        &json!({"user": "alice", "password": "correct horse"}),
    );
    a.expect(200);
    let cookie = a.headers["set-cookie"].to_str().unwrap();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let alice = api.login("alice", "correct horse");
    let Auth::Session { cookie, csrf } = alice.clone() else {
        unreachable!()
    };
    let me = api.get("/api/v1/me", &alice).json();
    assert_eq!(me["name"], "alice");
    assert_eq!(me["kind"], "user");
    assert_eq!(me["may"]["admin"], true);
    assert_eq!(me["csrf"].as_str(), csrf.as_deref());

    // Reading needs no CSRF token; every change does.
    let read_only = Auth::Session {
        cookie: cookie.clone(),
        csrf: None,
    };
    api.get("/api/v1/groups", &read_only).expect(200);
    let tree = first_snapshot(&w, "host/web1");
    let protect = format!("/api/v1/snapshots/{tree}/protect");
    let a = api.post(&protect, &read_only, &json!({}));
    a.expect(403);
    assert!(a.error().contains("X-CSRF-Token"));
    let forged = Auth::Session {
        cookie: cookie.clone(),
        csrf: Some("0".repeat(64)),
    };
    api.post(&protect, &forged, &json!({})).expect(403);
    api.post("/api/v1/gc", &forged, &json!({})).expect(403);
    api.post(&protect, &alice, &json!({})).expect(200);
    // A token needs no CSRF token (browsers never send one by themselves).
    api.post(
        &format!("/api/v1/snapshots/{tree}/unprotect"),
        &w.admin,
        &json!({}),
    )
    .expect(200);

    // A reader user sees its paths and may change nothing.
    let rob = api.login("rob", "staple battery");
    assert_eq!(
        names(&api.get("/api/v1/groups", &rob).json(), "group"),
        ["host/web1"]
    );
    let me = api.get("/api/v1/me", &rob).json();
    assert_eq!(
        (
            me["may"]["maintain"].as_bool(),
            me["may"]["admin"].as_bool()
        ),
        (Some(false), Some(false))
    );
    api.post(&protect, &rob, &json!({})).expect(403);
    api.get("/api/v1/tokens", &rob).expect(403);

    // A forged or ended session is a 401.
    let nobody = Auth::Session {
        cookie: "f".repeat(64),
        csrf: None,
    };
    let a = api.get("/api/v1/groups", &nobody);
    a.expect(401);
    assert!(a.error().contains("session has ended"));
    let a = api.post("/api/v1/logout", &alice, &json!({}));
    a.expect(200);
    assert!(
        a.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    api.get("/api/v1/groups", &alice).expect(401);

    // A new password ends the user's sessions; so does removal.
    let alice = api.login("alice", "correct horse");
    ok(&user_command(
        dir,
        &["passwd", "alice"],
        Some("another horse"),
    ));
    api.get("/api/v1/groups", &alice).expect(401);
    let alice = api.login("alice", "another horse");
    api.get("/api/v1/groups", &alice).expect(200);
    ok(&user_command(dir, &["remove", "alice"], None));
    api.get("/api/v1/groups", &alice).expect(401);
    let out = user_command(dir, &["remove", "alice"], None);
    assert_eq!(out.status.code(), Some(4));
    let out = user_command(dir, &["add", "x", "--role", "admin"], Some("short"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 8"));
    let out = user_command(dir, &["list", "--output-format", "json"], None);
    ok(&out);
    let users: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(names(&users, "name"), ["rob"]);

    // Changes are JSON, and from this server's page if the browser says
    // where they come from: a form of another site can neither log a
    // browser in nor act with its session.
    let rob = api.login("rob", "staple battery");
    let login = br#"{"user": "rob", "password": "staple battery"}"#.to_vec();
    let a = api.post_with(
        "/api/v1/login",
        &Auth::None,
        login.clone(),
        &[("content-type", "text/plain")],
    );
    a.expect(415);
    assert!(a.error().contains("application/json"));
    let evil = [
        ("content-type", "application/json"),
        ("origin", "https://evil.example"),
    ];
    api.post_with("/api/v1/login", &Auth::None, login.clone(), &evil)
        .expect(403);
    api.post_with("/api/v1/logout", &rob, b"{}".to_vec(), &evil)
        .expect(403);
    let ours = format!("https://{}", w.server.addr);
    let same = [
        ("content-type", "application/json"),
        ("origin", ours.as_str()),
    ];
    api.post_with("/api/v1/login", &Auth::None, login, &same)
        .expect(200);

    // Guessing: after 5 failed logins from an address in a minute (the
    // two above count), its logins are refused until the minute ends,
    // right passwords included.
    let wrong = json!({"user": "rob", "password": "wrong guess"});
    let mut refused_after = None;
    for i in 0..5 {
        let a = api.post("/api/v1/login", &Auth::None, &wrong);
        if a.status == 429 {
            refused_after = Some(i);
            break;
        }
        a.expect(401);
    }
    assert_eq!(refused_after, Some(3), "2 + 3 failures, then refused");
    let a = api.post(
        "/api/v1/login",
        &Auth::None,
        &json!({"user": "rob", "password": "staple battery"}),
    );
    a.expect(429);
    assert!(a.error().contains("too many failed logins"));
    // Sessions already open go on.
    api.get("/api/v1/groups", &rob).expect(200);
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let w = world();
    let api = &w.api;
    // A GC from the API, so the last-GC gauges are set.
    let a = api.post("/api/v1/gc", &w.admin, &json!({}));
    let t = api.wait_task(a.json()["task"].as_str().unwrap(), &w.admin);
    assert_eq!(t["state"], "ok");
    api.get("/api/v1/nothing", &w.rd).expect(404);

    // Server-wide counters: admins and readers of everything only.
    for who in [&w.bk, &w.rd] {
        let a = api.get("/metrics", who);
        a.expect(403);
        assert!(a.error().contains("metrics"));
    }
    let monitor = Auth::Token(w.server.token("prometheus", "reader", &[]));
    let a = api.get("/metrics", &monitor);
    a.expect(200);
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics-text")
    );
    let text = String::from_utf8(a.body.clone()).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        }
    };
    // Three backups (one tree, two images), the second image deduplicated.
    assert_eq!(value("hoard_backups_started_total"), 3.0);
    assert_eq!(value("hoard_backups_finished_total"), 3.0);
    assert_eq!(value("hoard_backups_failed_total"), 0.0);
    assert!(value("hoard_chunks_received_total") >= 3.0);
    assert!(value("hoard_chunk_bytes_received_total") > 0.0);
    assert!(value("hoard_connections_opened_total") >= 3.0);
    assert_eq!(value("hoard_connections"), 0.0);
    assert!(value("hoard_datastore_fs_bytes") > 0.0);
    assert!(value("hoard_datastore_chunks") > 0.0);
    assert!(value("hoard_last_gc_timestamp_seconds") > 1.7e9);
    assert_eq!(value("hoard_last_gc_success"), 1.0);
    assert!(value("hoard_chunks_deduplicated_total") >= 0.0);
    // The latency histogram: buckets per method and status, cumulative,
    // the last (+Inf) equal to the count.
    let hist: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "hoard_http_request_duration_seconds")
        .collect();
    assert!(hist.iter().any(|s| s.labels.get("status") == Some("404")));
    for h in hist {
        let prometheus_parse::Value::Histogram(buckets) = &h.value else {
            panic!("not a histogram: {h:?}")
        };
        assert!(buckets.windows(2).all(|b| b[0].count <= b[1].count));
        let inf = buckets.last().unwrap();
        assert!(inf.less_than.is_infinite() && inf.count >= 1.0);
    }
    assert!(text.trim_end().ends_with("# EOF"));
}

#[test]
fn http_connections_are_bounded_and_time_out() {
    let server = Server::start_with(&["--idle-timeout", "1"]);
    let api = Api::new(&server);
    let head = b"GET /api/v1/status HTTP/1.1\r\nhost: x\r\n\r\n";
    let open = || {
        let mut c = Conn::connect_tls(&server.addr, &server.fingerprint, &[]);
        c.send_raw(head);
        c
    };
    // A body that stops half-way: the connection ends once nothing has
    // moved for the idle time, and gives its place back.
    let started = std::time::Instant::now();
    let mut c = Conn::connect_tls(&server.addr, &server.fingerprint, &[]);
    c.send_raw(b"POST /api/v1/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"user\"");
    c.read_to_end();
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "closed after {took:?}"
    );
    // So does an idle keep-alive connection.
    let mut c = open();
    assert!(c.read_http_head().starts_with("HTTP/1.1 401"));
    c.read_to_end();

    // At most 32 HTTP connections from one address: the next is told so,
    // and backups (the packet protocol) still get in.
    let mut held = Vec::new();
    for _ in 0..32 {
        let mut c = open();
        assert!(c.read_http_head().starts_with("HTTP/1.1 401"));
        held.push(c);
    }
    let mut c = open();
    let refused = c.read_http_head();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    let _v2 = server.connect_v2(&server.token);
    drop(held);
    // Their places come back (the server notices the closes at once).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if api
            .get("/api/v1/status", &Auth::Token(server.token.clone()))
            .status
            == 200
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "places never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
