//! Datastores written by earlier versions open and restore: one small
//! datastore per format, kept as a fixture (`tests/fixtures/`, made by
//! `make_fixture.sh` with the binary named in `fixtures/README.md`).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Server, hoard, stderr};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn untar(archive: &str, into: &Path) {
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(format!("{FIXTURES}/{archive}"))
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(st.success(), "untar {archive}");
}

/// A server on a copy of fixture `archive`, and the sources it holds.
fn serve_fixture(archive: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    untar(archive, dir.path());
    let src = tempfile::tempdir().unwrap();
    untar("source.tar.gz", src.path());
    (Server::start_in(dir, "admin", &[]), src)
}

fn restores(server: &Server, env: &[(&str, String)], snap: &str, src: &Path) {
    restores_disk(server, env, snap, src, &src.join("source/disk.img"));
}

/// [`restores`], with the snapshot's disk image being `disk`.
fn restores_disk(server: &Server, env: &[(&str, String)], snap: &str, src: &Path, disk: &Path) {
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("disk.img");
    let tree = out.path().join("tree");
    for (file, target) in [("disk.img", &img), ("root", &tree)] {
        let o = Command::new(env!("CARGO_BIN_EXE_hoard"))
            .envs(common::client_env(&server.addr))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["restore", snap, file, target.to_str().unwrap(), "-q"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{snap} {file}: {}", stderr(&o));
    }
    assert!(
        std::fs::read(&img).unwrap() == std::fs::read(disk).unwrap(),
        "{snap}: disk.img differs"
    );
    for rel in ["hello.txt", "sub/random.bin"] {
        assert_eq!(
            std::fs::read(tree.join(rel)).unwrap(),
            std::fs::read(src.join("source/tree").join(rel)).unwrap(),
            "{rel}"
        );
    }
}

fn verify(server: &Server) -> Value {
    common::maintenance_json(&server.datastore(), &["verify"])
}

#[test]
fn a_datastore_of_the_first_version_restores_and_takes_new_backups() {
    let (server, src) = serve_fixture("datastore-plain.tar.gz");
    for snap in ["vm/1/2026-11-01T00:00:00Z", "vm/1/2026-11-02T00:00:00Z"] {
        restores(&server, &[], snap, src.path());
    }
    // Chunks the server compressed, from before clients did.
    let v = verify(&server);
    assert_eq!(v["chunks_encrypted"], 0);
    assert!(v["chunks_checked"].as_u64().unwrap() > 0);
    // A new backup builds on the old snapshot and restores.
    let img = format!("disk.img={}", src.path().join("source/disk.img").display());
    let tree = format!("root={}", src.path().join("source/tree").display());
    let o = hoard(
        &server.addr,
        &[
            "backup",
            "--type",
            "vm",
            "--id",
            "1",
            "--time",
            "2026-11-03T00:00:00Z",
            "--chunk-size",
            "16K",
            "--reread",
            "--output-format",
            "json",
            "-q",
            &img,
            &tree,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r["images"][0]["base"],
        "vm/1/2026-11-02T00:00:00Z/disk.img.fidx"
    );
    assert_eq!(r["images"][0]["chunks_uploaded"], 0, "{r}");
    restores(&server, &[], "vm/1/2026-11-03T00:00:00Z", src.path());
}

#[test]
fn an_encrypted_datastore_restores_with_its_key() {
    let (server, src) = serve_fixture("datastore-encrypted.tar.gz");
    let key = format!("{FIXTURES}/key.json");
    for snap in ["vm/1/2026-11-01T00:00:00Z", "vm/1/2026-11-02T00:00:00Z"] {
        restores(&server, &[("HOARD_KEY", key.clone())], snap, src.path());
    }
    let v = verify(&server);
    assert_eq!(v["chunks_encrypted"], v["chunks_checked"]);
    // Without the key: refused, naming it.
    let o = hoard(
        &server.addr,
        &["restore", "vm/1/2026-11-01T00:00:00Z", "disk.img", "-"],
    );
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
}

/// The second disk of the delta fixture: `source/disk.img` with four
/// 4 KiB blocks rewritten with incompressible bytes (in a text chunk, two
/// random ones and an empty one), as `fixtures/README.md` makes it.
fn second_disk(src: &Path) -> std::path::PathBuf {
    let mut disk = std::fs::read(src.join("source/disk.img")).unwrap();
    for offset in [24_576usize, 102_400, 131_072, 180_224] {
        let mut x = offset as u64;
        for j in 0..4096 {
            x = (1_103_515_245 * x + 12_345) % (1 << 31);
            disk[offset + j] = (x >> 16) as u8;
        }
    }
    let path = src.join("disk2.img");
    std::fs::write(&path, disk).unwrap();
    path
}

#[test]
fn a_datastore_with_deltas_restores_verifies_and_keeps_its_bases() {
    let (server, src) = serve_fixture("datastore-deltas.tar.gz");
    let root = server.datastore();
    assert_eq!(
        std::fs::read_to_string(root.join(".hoard-datastore")).unwrap(),
        "hoard-datastore 3\n"
    );
    let deltas = common::walk(&root.join(".chunks"))
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".d"))
        .count();
    assert_eq!(deltas, 2, "the two changed random chunks");
    let disk2 = second_disk(src.path());
    let check = |server: &Server| {
        restores(server, &[], "vm/1/2026-11-01T00:00:00Z", src.path());
        restores_disk(server, &[], "vm/1/2026-11-02T00:00:00Z", src.path(), &disk2);
    };
    check(&server);
    let v = verify(&server);
    assert_eq!(v["snapshots"][1]["result"], "ok", "{v}");
    assert_eq!(v["bad_chunks"], serde_json::json!([]), "{v}");
    // The first snapshot goes; GC keeps its chunks that are bases.
    let ds = hoard_datastore::Datastore::open(&root).unwrap();
    let first: hoard_types::SnapshotPath = "vm/1/2026-11-01T00:00:00Z".parse().unwrap();
    assert_eq!(
        ds.remove_snapshot(&first).unwrap(),
        hoard_datastore::Removal::Removed
    );
    let gc = common::maintenance_json(&root, &["gc", "--grace", "0"]);
    assert_eq!(gc["missing_chunks"], 0, "{gc}");
    restores_disk(
        &server,
        &[],
        "vm/1/2026-11-02T00:00:00Z",
        src.path(),
        &disk2,
    );
}

/// A bucket laid out by hand, by the rules of docs/format.md ("Datastores
/// on object storage"), from the first version's fixture files: a new
/// directory attaches it and every snapshot restores. The bucket's
/// layout, read back by this version as a second implementation would
/// write it.
#[test]
fn a_bucket_laid_out_from_the_first_versions_files_attaches_and_restores() {
    use hoard_storage::Storage;
    let fixture = tempfile::tempdir().unwrap();
    untar("datastore-plain.tar.gz", fixture.path());
    let src = tempfile::tempdir().unwrap();
    untar("source.tar.gz", src.path());
    let weed = hoard_storage::seaweedfs::shared();
    let prefix = format!("fixture-{:08x}", rand::random::<u32>());
    let bucket = hoard_storage::S3Storage::open(&weed.config(&prefix)).unwrap();
    bucket
        .put("hoard-datastore", "hoard-datastore 2 object\n".into())
        .unwrap();
    let ds = fixture.path().join("ds");
    let mut chunks = 0;
    for path in common::walk(&ds) {
        let rel = path
            .strip_prefix(&ds)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let key = if let Some(chunk) = rel.strip_prefix(".chunks/") {
            chunks += 1;
            format!("chunks/{chunk}")
        } else if rel.starts_with('.') || rel.ends_with("/.lock") {
            continue; // the marker, temp files, locks: the directory's own
        } else {
            format!("snapshots/{rel}")
        };
        let data = std::fs::read(&path).unwrap();
        bucket.put(&key, data.into()).unwrap();
    }
    assert!(chunks > 0);
    let server = Server::start_on_s3(
        tempfile::tempdir().unwrap(),
        weed,
        &prefix,
        &["--take-over"],
    );
    for snap in ["vm/1/2026-11-01T00:00:00Z", "vm/1/2026-11-02T00:00:00Z"] {
        restores(&server, &[], snap, src.path());
    }
    let v = verify(&server);
    assert_eq!(v["snapshots"][0]["result"], "ok", "{v}");
    assert_eq!(v["snapshots"][1]["result"], "ok", "{v}");
}
