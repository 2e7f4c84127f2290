//! Security end to end (docs/security.md): certificates and pinning,
//! tokens and revocation, the privilege matrix of roles and paths, group
//! ownership, forward-only snapshot times, the known-chunks rule, version
//! 1 on the plain listener and through the HTTP upgrade, and the limits
//! that keep hostile connections from holding the server.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hoard_protocol::*;
use hoard_types::{BackupType, Digest};

fn write_file(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_string()
}

/// `hoard` as `token`, expecting exit `code`; returns stderr.
fn expect(server: &Server, token: &str, args: &[&str], code: i32) -> String {
    let out = server.hoard_as(token, args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    err + &String::from_utf8_lossy(&out.stdout)
}

fn backup_args<'a>(ty: &'a str, id: &'a str, time: &'a str, spec: &'a str) -> Vec<&'a str> {
    vec!["backup", "--type", ty, "--id", id, "--time", time, spec]
}

/// The error message of the next packet, which must be an Error on
/// `stream` with id `id`.
fn error_on(c: &mut Conn, stream: u8, id: ErrorId) -> String {
    match c.recv() {
        (s, Message::Error { id: got, message }) if s == stream => {
            assert_eq!(got, id, "{message}");
            message
        }
        other => panic!("expected an Error on {stream}, got {other:?}"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn certificates_are_pinned_and_tokens_checked() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let run = |token: &str, fp: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoard"));
        cmd.env("HOARD_SERVER", &server.addr)
            .env("HOARD_TOKEN", token)
            .env("XDG_CONFIG_HOME", &config)
            .env_remove("HOARD_FINGERPRINT")
            .args(["snapshots"])
            .stdin(Stdio::null());
        if let Some(fp) = fp {
            cmd.env("HOARD_FINGERPRINT", fp);
        }
        cmd.output().unwrap()
    };
    // A wrong pin is a hard error that names both fingerprints.
    let wrong = format!("00{}", &server.fingerprint[2..]);
    let out = run(&server.token, Some(&wrong));
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(stderr(&out).contains(&server.fingerprint) && stderr(&out).contains(&wrong));
    // No pin, no terminal: refused, printing what it saw.
    let out = run(&server.token, None);
    assert_eq!(out.status.code(), Some(9));
    assert!(stderr(&out).contains("not trusted"), "{}", stderr(&out));
    assert!(stderr(&out).contains(&server.fingerprint));
    assert!(!config.join("hoard/known_servers").exists());
    // The fingerprint the server's machine prints is the one served.
    let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["cert", "fingerprint", "--state-dir"])
        .arg(state_dir(server.dir.path()))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        server.fingerprint
    );

    // Unknown names and wrong secrets get the same refusal.
    let fp = Some(server.fingerprint.as_str());
    let bad_secret = format!("test-admin:{}", "0".repeat(64));
    for token in ["nobody:abc", bad_secret.as_str()] {
        let out = run(token, fp);
        assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("unknown or revoked"),
            "{}",
            stderr(&out)
        );
    }
    // A token too long for the Authenticate packet is a usage error.
    let long = format!("x:{}", "a".repeat(600));
    let out = run(&long, fp);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("at most 512 bytes"),
        "{}",
        stderr(&out)
    );
    // Without a token the client says how to get one.
    let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .env("HOARD_SERVER", &server.addr)
        .env_remove("HOARD_TOKEN")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("hoard token create"));

    // A revoked token's next connection fails; the server runs on.
    let t = server.token("laptop", "backup", &["vm/1"]);
    assert!(run(&t, fp).status.success());
    let mut open = server.connect_v2(&t);
    let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["token", "revoke", "laptop", "--state-dir"])
        .arg(state_dir(server.dir.path()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&t, fp);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(run(&server.token, fp).status.success());
    // A connection made before the revocation keeps its session.
    open.send(1, &Message::ListSnapshots(SnapshotFilter::default()));
    assert!(matches!(open.recv(), (1, Message::SnapshotEntry(e)) if e.is_empty()));
    // The token list never shows secrets.
    let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["token", "list", "--state-dir"])
        .arg(state_dir(server.dir.path()))
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("test-admin") && !list.contains("laptop"),
        "{list}"
    );
    assert!(!list.contains(server.token.split(':').nth(1).unwrap()));
}

#[test]
fn a_fingerprint_confirmed_on_a_terminal_is_remembered() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    // `script` gives the client a terminal; "y" answers its question.
    let mut child = Command::new("script")
        .args([
            "-qec",
            &format!("{} snapshots", env!("CARGO_BIN_EXE_hoard")),
            "/dev/null",
        ])
        .env("HOARD_SERVER", &server.addr)
        .env("HOARD_TOKEN", &server.token)
        .env("XDG_CONFIG_HOME", &config)
        .env_remove("HOARD_FINGERPRINT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    child.stdin.take().unwrap().write_all(b"y\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&server.fingerprint) && text.contains("[y/N]"),
        "{text}"
    );
    let known = std::fs::read_to_string(config.join("hoard/known_servers")).unwrap();
    assert_eq!(known, format!("{} {}\n", server.addr, server.fingerprint));
    // Off a terminal the remembered fingerprint is used.
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_hoard"))
            .env("HOARD_SERVER", &server.addr)
            .env("HOARD_TOKEN", &server.token)
            .env("XDG_CONFIG_HOME", &config)
            .env_remove("HOARD_FINGERPRINT")
            .arg("snapshots")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    // A server whose certificate no longer matches is refused, and the
    // message says where the expectation came from.
    let wrong = format!("{} 00{}\n", server.addr, &server.fingerprint[2..]);
    std::fs::write(config.join("hoard/known_servers"), wrong).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(9));
    assert!(stderr(&out).contains("known_servers"), "{}", stderr(&out));
}

#[test]
fn a_ca_signed_certificate_needs_no_pin() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_dir(dir.path());
    std::fs::create_dir_all(&state).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(state.join("cert.pem"), cert.pem() + &ca.pem()).unwrap();
    std::fs::write(state.join("key.pem"), key.serialize_pem()).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let server = Server::start_in(dir, "admin", &[]);
    let run = |ca: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoard"));
        cmd.env("HOARD_SERVER", &server.addr)
            .env("HOARD_TOKEN", &server.token)
            .env("XDG_CONFIG_HOME", ca_file.with_file_name("cfg"))
            .env_remove("HOARD_FINGERPRINT")
            .stdin(Stdio::null())
            .arg("snapshots");
        if let Some(ca) = ca {
            cmd.arg("--ca").arg(ca);
        }
        cmd.output().unwrap()
    };
    let out = run(Some(&ca_file));
    assert!(out.status.success(), "{}", stderr(&out));
    // The system's CAs alone do not vouch for it.
    assert_eq!(run(None).status.code(), Some(9));
}

#[test]
fn the_privilege_matrix() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let img = write_file(dir.path(), "img", &noise(3 * 65536, 1));
    let spec = format!("d={img}");
    let alice = server.token("alice", "backup", &["vm"]);
    let bob = server.token("bob", "backup", &["vm"]);
    let reader = server.token("auditor", "reader", &["vm/1"]);
    let outsider = server.token("ct-reader", "reader", &["ct"]);

    // Create a snapshot: in a new group (it becomes the creator's), in
    // one's own group, in another's, outside one's paths, as a reader.
    expect(&server, &alice, &backup_args("vm", "1", "1000", &spec), 0);
    expect(&server, &alice, &backup_args("vm", "1", "2000", &spec), 0);
    let err = expect(&server, &bob, &backup_args("vm", "1", "3000", &spec), 10);
    assert!(err.contains("belongs to alice"), "{err}");
    expect(&server, &bob, &backup_args("vm", "2", "1000", &spec), 0);
    let err = expect(&server, &alice, &backup_args("ct", "1", "1000", &spec), 10);
    assert!(err.contains("outside its paths"), "{err}");
    let err = expect(&server, &reader, &backup_args("vm", "1", "4000", &spec), 10);
    assert!(err.contains("role reader"), "{err}");
    let err = expect(
        &server,
        &server.token,
        &backup_args("vm", "1", "1500", &spec),
        10,
    );
    assert!(err.contains("not newer"), "admins too: {err}");
    let owner = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["owner", "vm/1", "--datastore"])
        .arg(server.datastore())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), "alice");

    // Listing shows each token what it may read, and nothing else.
    let list = |token: &str| {
        let out = server.hoard_as(token, &["snapshots", "--output-format", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut groups: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let path = s["snapshot"].as_str().unwrap();
                path.rsplit_once('/').unwrap().0.to_string()
            })
            .collect();
        groups.dedup();
        groups
    };
    assert_eq!(list(&alice), ["vm/1"]);
    assert_eq!(list(&bob), ["vm/2"]);
    assert_eq!(list(&reader), ["vm/1"]);
    assert!(list(&outsider).is_empty());
    assert_eq!(list(&server.token), ["vm/1", "vm/2"]);

    // Restore: one's own group, a reader's path; another's group is
    // not even visible.
    let out_path = dir.path().join("r1");
    let out_s = out_path.to_str().unwrap();
    expect(&server, &alice, &["restore", "vm/1/latest", "d", out_s], 0);
    assert_eq!(
        std::fs::read(&out_path).unwrap(),
        std::fs::read(&img).unwrap()
    );
    let out2 = dir.path().join("r2");
    expect(
        &server,
        &reader,
        &["restore", "vm/1/latest", "d", out2.to_str().unwrap()],
        0,
    );
    let err = expect(&server, &alice, &["restore", "vm/2/latest", "d", out_s], 4);
    assert!(err.contains("vm/2"), "{err}");

    // The same at the packet level, where each refusal is a Denied Error.
    let admin = server.connect_v2(&server.token);
    drop(admin);
    let vm1 = server.datastore().join("vm/1");
    let snap1 = std::fs::read_dir(&vm1)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .find(|n| n.starts_with("19"))
        .unwrap();
    let idx1 = format!("vm/1/{snap1}/d.fidx");
    let d1 = hash_list(&mut server.connect_v2(&server.token), 1, &idx1)[0];
    // bob: GetHashList of alice's group, DownloadChunks of her chunk.
    let mut b = server.connect_v2(&bob);
    b.send(1, &Message::GetHashList { path: idx1.clone() });
    assert!(error_on(&mut b, 1, ErrorId::Denied).contains("reads back only the groups it owns"));
    b.send(2, &Message::DownloadChunks(DigestList::from_digests(&[d1])));
    assert!(error_on(&mut b, 2, ErrorId::Denied).contains("in no index this connection has read"));
    // alice reads her own, then may download what it listed.
    let mut a = server.connect_v2(&alice);
    assert_eq!(hash_list(&mut a, 1, &idx1)[0], d1);
    assert_eq!(download(&mut a, 2, &[d1]).len(), 3 * 65536);
    // reader: never uploads or creates.
    let mut r = server.connect_v2(&reader);
    r.send(
        1,
        &Message::UploadChunk {
            digest: Digest::of(b"x"),
            data: Bytes::from_static(b"x"),
        },
    );
    assert!(error_on(&mut r, 1, ErrorId::Denied).contains("may not upload"));
    r.send(2, &create(BackupType::Vm, "1", 5000, 0, "e", 4096, 4096));
    assert!(error_on(&mut r, 2, ErrorId::Denied).contains("role reader"));
    assert_eq!(hash_list(&mut r, 3, &idx1)[0], d1);
    // outsider: nothing of vm.
    let mut o = server.connect_v2(&outsider);
    o.send(1, &Message::GetHashList { path: idx1 });
    assert!(error_on(&mut o, 1, ErrorId::Denied).contains("outside its paths"));
}

#[test]
fn snapshot_times_only_move_forward() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let img = write_file(dir.path(), "img", &noise(70_000, 2));
    let spec = format!("d={img}");
    let t = server.token("host1", "backup", &["host/web1"]);
    expect(
        &server,
        &t,
        &backup_args("host", "web1", "2000000", &spec),
        0,
    );
    let err = expect(
        &server,
        &t,
        &backup_args("host", "web1", "1000000", &spec),
        10,
    );
    assert!(
        err.contains("not newer than the group's newest snapshot"),
        "{err}"
    );
    let err = expect(
        &server,
        &t,
        &backup_args("host", "web1", "2000000", &spec),
        5,
    );
    assert!(err.contains("exists already"), "{err}");
    let future = (hoard_types::SnapshotTime::now().epoch() + 86_400).to_string();
    let err = expect(
        &server,
        &t,
        &backup_args("host", "web1", &future, &spec),
        10,
    );
    assert!(err.contains("in the future"), "{err}");
    // Nothing was left behind by the refusals.
    let n = std::fs::read_dir(server.datastore().join("host/web1"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert_eq!(n, 1);
}

#[test]
fn chunks_are_referenced_only_when_uploaded_or_read() {
    let server = Server::start();
    // The admin stores a chunk in vm/7.
    let secret = noise(5000, 3);
    let mut adm = server.connect_v2(&server.token);
    adm.send(
        1,
        &create(
            BackupType::Vm,
            "7",
            T0,
            BackupFlags::DYNAMIC_CHUNKS,
            "f",
            0,
            0,
        ),
    );
    expect_created(&mut adm, 1);
    let d = upload(&mut adm, 1, &secret);
    adm.send(1, &dynamic(&[(0, d)]));
    adm.send(1, &Message::BackupFinished);
    adm.expect_ok(1);
    drop(adm);
    // A backup token cannot learn that the chunk exists by naming it:
    // the refusal is the same as for a digest nobody has.
    let t = server.token("probe", "backup", &["vm/8"]);
    let mut c = server.connect_v2(&t);
    let mut refuse = |stream: u8, digest: Digest| {
        c.send(
            stream,
            &create(
                BackupType::Vm,
                "8",
                T0 + stream as u64,
                BackupFlags::DYNAMIC_CHUNKS,
                "f",
                0,
                0,
            ),
        );
        expect_created(&mut c, stream);
        c.send(stream, &dynamic(&[(0, digest)]));
        error_on(&mut c, stream, ErrorId::Denied).replace(&digest.to_string(), "D")
    };
    let known = refuse(1, d);
    let unknown = refuse(2, Digest([0x5a; 32]));
    assert_eq!(known, unknown);
    assert!(
        known.contains("neither uploaded on this connection"),
        "{known}"
    );
    // Uploading it makes it referenceable (the client has the data).
    c.send(
        3,
        &create(
            BackupType::Vm,
            "8",
            T0 + 3,
            BackupFlags::DYNAMIC_CHUNKS,
            "f",
            0,
            0,
        ),
    );
    expect_created(&mut c, 3);
    upload(&mut c, 3, &secret);
    c.send(3, &dynamic(&[(0, d)]));
    c.send(3, &Message::BackupFinished);
    c.expect_ok(3);
}

#[test]
fn a_second_token_cannot_poison_a_base() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let victim_data = noise(4 * 65536, 4);
    let img = write_file(dir.path(), "disk", &victim_data);
    let spec = format!("d={img}");
    let victim = server.token("victim", "backup", &["vm/100"]);
    let attacker = server.token("attacker", "backup", &["vm"]);
    expect(
        &server,
        &victim,
        &backup_args("vm", "100", "1000", &spec),
        0,
    );
    // The attack: a newer snapshot in the victim's group with the
    // victim's attributes and the attacker's data.
    let mut c = server.connect_v2(&attacker);
    c.send(
        1,
        &create(
            BackupType::Vm,
            "100",
            2000,
            BackupFlags::RAW,
            "d",
            65536,
            victim_data.len() as u64,
        ),
    );
    assert!(error_on(&mut c, 1, ErrorId::Denied).contains("belongs to victim"));
    drop(c);
    // The victim's next backup takes its own snapshot as base and
    // restores its own data.
    expect(
        &server,
        &victim,
        &backup_args("vm", "100", "3000", &spec),
        0,
    );
    let out = dir.path().join("out");
    expect(
        &server,
        &victim,
        &["restore", "vm/100/latest", "d", out.to_str().unwrap()],
        0,
    );
    assert_eq!(std::fs::read(&out).unwrap(), victim_data);
    let snaps = std::fs::read_dir(server.datastore().join("vm/100"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert_eq!(snaps, 2);
}

#[test]
fn version_1_runs_on_the_plain_listener_with_its_role() {
    let server = Server::start_with_v1_role("backup", &[]);
    let mut c = server.connect();
    // A seed client's dynamic stream (no RAW flag), written anonymously.
    let data = noise(150_000, 5);
    c.send(
        1,
        &create(
            BackupType::Ct,
            "9",
            T0,
            BackupFlags::DYNAMIC_CHUNKS,
            "catar",
            0,
            0,
        ),
    );
    expect_created(&mut c, 1);
    let mut off = 0u64;
    for piece in data.chunks(60_000) {
        let d = upload(&mut c, 1, piece);
        c.send(1, &dynamic(&[(off, d)]));
        off += piece.len() as u64;
    }
    c.send(1, &Message::BackupFinished);
    c.expect_ok(1);
    c.sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed());
    // It restores with hoard's own client, as its bytes.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("catar");
    let o = hoard(
        &server.addr,
        &["restore", "ct/9/latest", "catar", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let o = hoard(&server.addr, &["restore", "ct/9/latest", "catar", "-"]);
    assert_eq!(o.stdout, data);
    // The anonymous role is backup: it owns what it made and reads only
    // that; other groups' indexes are refused.
    let owner = std::fs::read_to_string(server.datastore().join("ct/9/owner")).unwrap();
    assert_eq!(owner.trim(), "@v1");
    let img = write_file(dir.path(), "img", &noise(70_000, 6));
    let o = hoard(
        &server.addr,
        &["backup", "--type", "vm", "--id", "1", &format!("d={img}")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = hoard(&server.addr, &["snapshots", "--output-format", "json"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    let path = text
        .split('"')
        .find(|s| s.starts_with("vm/1/"))
        .unwrap()
        .to_string();
    let mut c = server.connect();
    c.send(
        1,
        &Message::GetHashList {
            path: format!("{path}/d.fidx"),
        },
    );
    // Version 1 knows Generic and Busy only.
    assert!(error_on(&mut c, 1, ErrorId::Generic).contains("permission denied"));
}

/// Sends the prototype's upgrade request with `headers` over TLS (no
/// ALPN) and returns the connection and the response head.
fn upgrade(server: &Server, headers: &str) -> (Conn, String) {
    let mut c = Conn::connect_tls(&server.addr, &server.fingerprint, &[]);
    let req = format!(
        "GET /api2/json/admin/datastore/store1/test-upload HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\nupgrade: proxmox-backup-protocol-1\r\n{headers}\r\n"
    );
    c.send_raw(req.as_bytes());
    let head = c.read_http_head();
    (c, head)
}

#[test]
fn version_1_runs_over_tls_after_the_upgrade_with_a_token() {
    let server = Server::start();
    let t = server.token("qemu", "backup", &["vm/300"]);
    let cookie_token = t.replace(':', "%3A");
    let (mut c, head) = upgrade(
        &server,
        &format!("cookie: PBSAuthCookie={cookie_token}\r\nCSRFPreventionToken: x\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    match c.recv() {
        (0, Message::Hello { version: 1, .. }) => {}
        other => panic!("expected a version 1 Hello, got {other:?}"),
    }
    let data = noise(100_000, 7);
    c.send(
        1,
        &create(
            BackupType::Vm,
            "300",
            T0,
            BackupFlags::DYNAMIC_CHUNKS,
            "drive.img",
            0,
            0,
        ),
    );
    expect_created(&mut c, 1);
    let d = upload(&mut c, 1, &data);
    c.send(1, &dynamic(&[(0, d)]));
    c.send(1, &Message::BackupFinished);
    c.expect_ok(1);
    // Its role holds inside the upgrade too.
    c.send(
        2,
        &create(
            BackupType::Vm,
            "301",
            T0,
            BackupFlags::DYNAMIC_CHUNKS,
            "x",
            0,
            0,
        ),
    );
    assert!(error_on(&mut c, 2, ErrorId::Generic).contains("outside its paths"));
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("img");
    let o = hoard(
        &server.addr,
        &[
            "restore",
            "vm/300/latest",
            "drive.img",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // An Authorization header works as well.
    let (_, head) = upgrade(&server, &format!("authorization: Bearer {t}\r\n"));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // No token, a wrong one, a revoked one: 401, and no packet follows.
    for h in ["", "cookie: PBSAuthCookie=qemu%3Awrong\r\n"] {
        let (mut c, head) = upgrade(&server, h);
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        let rest = c.read_to_end();
        assert!(!rest.windows(8).any(|w| w == b"PMXBCKUP"), "no Hello");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["token", "revoke", "qemu", "--state-dir"])
        .arg(state_dir(server.dir.path()))
        .output()
        .unwrap();
    assert!(o.status.success());
    let (_, head) = upgrade(
        &server,
        &format!("cookie: PBSAuthCookie={cookie_token}\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    // Any other request is answered, never upgraded.
    let mut c = Conn::connect_tls(&server.addr, &server.fingerprint, &[]);
    c.send_raw(b"GET /../../etc/passwd HTTP/1.1\r\n\r\n");
    assert!(c.read_http_head().starts_with("HTTP/1.1 404"));
}

#[test]
fn the_prototype_login_hands_out_the_token_as_ticket() {
    let server = Server::start();
    let t = server.token("legacy", "backup", &[]);
    let (name, secret) = t.split_once(':').unwrap();
    let login = |user: &str, pass: &str| {
        let mut c = Conn::connect_tls(&server.addr, &server.fingerprint, &[]);
        let body = format!("username={user}&password={pass}");
        let req = format!(
            "POST /api2/json/access/ticket HTTP/1.1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        c.send_raw(req.as_bytes());
        String::from_utf8_lossy(&c.read_to_end()).into_owned()
    };
    let ok = login(name, secret);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let json: serde_json::Value =
        serde_json::from_str(&ok[ok.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let ticket = json["data"]["ticket"].as_str().unwrap().to_string();
    assert!(json["data"]["CSRFPreventionToken"].is_string());
    let (_, head) = upgrade(
        &server,
        &format!("cookie: PBSAuthCookie={}\r\n", ticket.replace(':', "%3A")),
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(login(name, "wrong").starts_with("HTTP/1.1 401"));
}

#[test]
fn hostile_connections_time_out_and_release_what_they_hold() {
    let server = Server::start_with(&[
        "--handshake-timeout",
        "1",
        "--idle-timeout",
        "2",
        "--packet-timeout",
        "2",
    ]);
    let closed_within = |c: &mut Conn, secs: u64| {
        let t = Instant::now();
        c.sock
            .set_read_timeout(Some(Duration::from_secs(secs + 5)))
            .unwrap();
        let _ = c.read_to_end();
        let took = t.elapsed();
        assert!(took < Duration::from_secs(secs + 4), "took {took:?}");
    };
    // Slowloris on the TLS port: connects and never says hello.
    let mut idle_tls = Conn::connect(&server.addr);
    closed_within(&mut idle_tls, 1);
    // Authenticated in TLS, but no Authenticate packet.
    let mut no_auth = Conn::connect_tls(&server.addr, &server.fingerprint, &[b"hoard/2"]);
    assert!(matches!(
        no_auth.recv(),
        (0, Message::Hello { version: 2, .. })
    ));
    closed_within(&mut no_auth, 1);
    // Before authentication, a large packet is refused outright.
    let mut big = Conn::connect_tls(&server.addr, &server.fingerprint, &[b"hoard/2"]);
    big.recv();
    big.send_raw(&[0, 69, 0, 0, 0, 1]);
    assert!(error_on(&mut big, 0, ErrorId::Generic).contains("1024-byte limit"));
    // A packet that stops arriving half-way.
    let mut stalled = server.connect();
    let mut head = vec![1u8, 7];
    head.extend_from_slice(&(16u32 << 20).to_le_bytes());
    head.extend_from_slice(&[0u8; 1000]);
    stalled.send_raw(&head);
    closed_within(&mut stalled, 2);
    // One token's stalled packets hold at most its share of the memory
    // for unfinished packets: others' packets still get in.
    let mallory = server.token("mallory", "backup", &[]);
    let stalled: Vec<Conn> = (0..12)
        .map(|_| {
            let mut c = server.connect_v2(&mallory);
            let mut head = vec![1u8, 7];
            head.extend_from_slice(&(16u32 << 20).to_le_bytes());
            head.extend_from_slice(&[0u8; 100]);
            c.send_raw(&head);
            c
        })
        .collect();
    let mut alice = server.connect_v2(&server.token);
    alice
        .sock
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    upload(&mut alice, 1, &noise(70_000, 11));
    drop(stalled);
    // Idle with a backup open: closed, the file dropped, the snapshot
    // freed (it had no finished file, so it is gone).
    let mut idle = server.connect();
    idle.send(1, &create(BackupType::Vm, "77", T0, 0, "d", 4096, 8192));
    expect_created(&mut idle, 1);
    closed_within(&mut idle, 2);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !server
            .datastore()
            .join("vm/77/2019-04-23T12:23:36Z")
            .exists()
    );
    assert_eq!(server.temp_files(), 0);
}

#[test]
fn floods_of_connections_and_files_do_not_lock_out_real_clients() {
    let server = Server::start_with(&["--max-connections-per-token", "3"]);
    let pid = server.child.id();
    let dir = tempfile::tempdir().unwrap();
    let img = write_file(dir.path(), "img", &noise(300_000, 8));
    let spec = format!("d={img}");
    let before = rss_kib(pid);
    // 5,000 idle connections to the TLS port, kept open.
    let idle: Vec<std::net::TcpStream> = (0..5000)
        .map(|_| std::net::TcpStream::connect(&server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = rss_kib(pid);
    let o = hoard(&server.addr, &backup_args("vm", "1", "1000", &spec));
    assert!(
        o.status.success(),
        "a real backup during the flood: {}",
        stderr(&o)
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    eprintln!(
        "server RSS: {before} KiB before, {during} KiB with 5,000 idle connections, {after} KiB after"
    );
    assert!(during < before + 64 * 1024, "{before} -> {during} KiB");
    assert!(after < before + 32 * 1024, "{before} -> {after} KiB");

    // One token's connections are capped; another token still gets in.
    let t = server.token("flood", "backup", &[]);
    let held: Vec<Conn> = (0..3).map(|_| server.connect_v2(&t)).collect();
    let mut fourth = server.try_connect_v2(&t);
    assert!(error_on(&mut fourth, 0, ErrorId::Busy).contains("3 connections open"));
    let o = hoard(&server.addr, &backup_args("vm", "1", "2000", &spec));
    assert!(o.status.success(), "{}", stderr(&o));
    drop(held);

    // Files left open on one connection are capped with a clear refusal.
    let mut c = server.connect();
    let mut refused = None;
    for s in 1..=80u8 {
        c.send(
            s,
            &create(BackupType::Vm, "9", T0, 0, &format!("f{s}"), 4096, 4096),
        );
        match c.recv() {
            (_, Message::BackupCreated { .. }) => {}
            (_, Message::Error { message, .. }) => {
                refused = Some((s, message));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let (at, message) = refused.expect("a refusal");
    assert_eq!(at, 65, "{message}");
    assert!(message.contains("64 files open"), "{message}");
    let o = hoard(&server.addr, &backup_args("vm", "1", "3000", &spec));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn downloads_nobody_reads_hold_bounded_memory() {
    let server = Server::start();
    let pid = server.child.id();
    let mut c = server.connect_v2(&server.token);
    let big = upload(&mut c, 1, &noise(16_000_000, 12));
    let before = rss_kib(pid);
    // 40 streams asking for the chunk 50 times each, never read.
    let mut busy = 0;
    for s in 1..=40u8 {
        c.send(
            s,
            &Message::DownloadChunks(DigestList::from_digests(&[big; 50])),
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let during = rss_kib(pid);
    eprintln!(
        "server RSS: {before} KiB before, {during} KiB with 40 unread downloads of 800 MB each"
    );
    assert!(during < before + 300 * 1024, "{before} -> {during} KiB");
    // Past 16 answers at once the connection is told to read first.
    c.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for _ in 0..200 {
        match c.try_recv() {
            Some((
                _,
                Message::Error {
                    id: ErrorId::Busy,
                    message,
                },
            )) => {
                assert!(message.contains("requests being answered"), "{message}");
                busy += 1;
            }
            Some(_) => {}
            None => break,
        }
        if busy == 40 - 16 {
            break;
        }
    }
    assert_eq!(busy, 40 - 16);
    // Another client is served meanwhile.
    let dir = tempfile::tempdir().unwrap();
    let img = write_file(dir.path(), "img", &noise(100_000, 13));
    let o = hoard(
        &server.addr,
        &backup_args("vm", "1", "1000", &format!("d={img}")),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_peer_that_stops_reading_is_cut_off_and_releases_its_budget() {
    use std::io::Read;
    let server = Server::start_with(&["--packet-timeout", "2"]);
    let mut c = server.connect_v2(&server.token);
    let small = upload(&mut c, 1, &noise(65_536, 14));
    // Answers nobody reads fill the queue and the socket; then an upload
    // whose Ok has nowhere to go, and half a packet that holds budget.
    // (Plain TCP: a TLS client library reads while it writes.)
    let mut hog = server.connect();
    for s in 1..=4u8 {
        hog.send(
            s,
            &Message::DownloadChunks(DigestList::from_digests(&[small; 2000])),
        );
    }
    // Let the unread answers fill the socket and the server's queue.
    std::thread::sleep(Duration::from_secs(1));
    let data = noise(1_000_000, 15);
    hog.send(
        20,
        &Message::UploadChunk {
            digest: Digest::of(&data),
            data: Bytes::from(data),
        },
    );
    let mut half = vec![21u8, 7];
    half.extend_from_slice(&(16u32 << 20).to_le_bytes());
    half.extend_from_slice(&[0u8; 100]);
    hog.send_raw(&half);
    std::thread::sleep(Duration::from_secs(6));
    // By now the server has given up on it: what is left to read ends.
    hog.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    let ended = loop {
        match hog.sock.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => total += n,
            Err(_) => break false,
        }
    };
    assert!(ended, "the server kept the connection ({total} bytes read)");
    assert!(t.elapsed() < Duration::from_secs(8));
    assert!(total < 4 * 2000 * 65_536, "{total}");
    // The same principal is served again.
    let mut again = server.connect();
    upload(&mut again, 1, &noise(70_000, 16));
}

#[test]
fn the_server_never_follows_links_planted_in_the_datastore() {
    let server = Server::start();
    let mut c = server.connect();
    c.send(
        1,
        &create(BackupType::Vm, "5", T0, BackupFlags::RAW, "d", 4096, 4096),
    );
    let path = expect_created(&mut c, 1);
    let d = upload(&mut c, 1, &noise(4096, 9));
    c.send(1, &fixed(&[(0, d)]));
    c.send(1, &Message::BackupFinished);
    c.expect_ok(1);
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let index = server.datastore().join(&path);
    std::fs::remove_file(&index).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &index).unwrap();
    let mut c = server.connect();
    c.send(1, &Message::GetHashList { path: path.clone() });
    let msg = error_on(&mut c, 1, ErrorId::Generic);
    assert!(!msg.contains("root:"), "{msg}");
    // A group linked to a directory outside: no snapshot goes there.
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), server.datastore().join("vm/6")).unwrap();
    c.send(2, &create(BackupType::Vm, "6", T0, 0, "d", 4096, 4096));
    assert!(error_on(&mut c, 2, ErrorId::Generic).contains("symbolic link"));
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn scattered_fixed_entries_are_refused_before_they_cost_disk() {
    let server = Server::start();
    let mut c = server.connect();
    c.send(
        1,
        &create(BackupType::Vm, "1", T0, 0, "big", 4096, (1u64 << 30) * 4096),
    );
    expect_created(&mut c, 1);
    let d = upload(&mut c, 1, &noise(4096, 10));
    let entries: Vec<(u64, Digest)> = (0..2000u64).map(|i| (i * 128, d)).collect();
    c.send(1, &fixed(&entries));
    assert!(error_on(&mut c, 1, ErrorId::Generic).contains("scattered"));
    // The temp index was dropped with the stream.
    assert_eq!(server.temp_files(), 0);
}
