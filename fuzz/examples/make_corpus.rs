//! Writes the generated part of the fuzz seed corpora: small valid and
//! near-valid inputs for the targets that take formats this repository
//! encodes (`fuzz/make_corpus.sh` runs it and adds files taken from the
//! test fixtures). Deterministic: fixed keys, times, ids and contents,
//! so running it again rewrites the same bytes. Each input follows the
//! layout its target's top comment describes.
//!
//! Usage: `cargo run --example make_corpus -- CORPUS_DIR` (from `fuzz/`).

use std::fs;
use std::path::{Path, PathBuf};

use hoard_archive::format::{Extent, encode_extents, payload_header};
use hoard_archive::{Archive, Entry, Kind, MetaWriter, Timestamp, Xattr};
use hoard_client::requests::parse_entry;
use hoard_client::seal::{self, SealState, SealedFile};
use hoard_codec::blob::{self, HEADER_SIZE};
use hoard_codec::master::RECOVERY_BLOB_SIZE;
use hoard_codec::{Argon2Params, Compression, Key, KeyFile, MasterPublic, MasterSecretFile};
use hoard_datastore::{
    DynamicIndexWriter, FileKind, FixedIndexWriter, INDEX_HEADER_SIZE, IndexReader, Manifest,
    ManifestFile, Seal, SnapshotState, Verification, VerifyState,
};
use hoard_types::{Digest, SnapshotPath, SourceAttributes};

/// The key the fuzz targets hold (`Key::from_secret(&[7u8; 32])`).
const FUZZ_SECRET: [u8; 32] = [7; 32];
const CREATED: &str = "2026-11-01T00:00:00Z";
const SNAPSHOT: &str = "vm/1/2026-11-01T00:00:00Z";

struct Out(PathBuf);

impl Out {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.0.join(target);
        fs::create_dir_all(&dir).expect("creating a corpus directory");
        fs::write(dir.join(name), bytes).expect("writing a corpus file");
    }
}

fn main() {
    let out = Out(std::env::args_os()
        .nth(1)
        .expect("usage: make_corpus CORPUS_DIR")
        .into());
    let scratch = std::env::temp_dir().join(format!("hoard-make-corpus.{}", std::process::id()));
    fs::create_dir_all(&scratch).expect("creating a scratch directory");
    index_files(&out, &scratch);
    fs::remove_dir_all(&scratch).expect("removing the scratch directory");
    manifests(&out);
    archives(&out);
    chunks(&out);
    deltas(&out);
    nbd_replies(&out);
    key_files(&out);
}

// ---- index_file: flag byte (bit 0: dynamic), then the index file ----

/// Reads a finished index and gives it a fixed id and time (the header
/// fields the entry checksum does not cover).
fn pinned(path: &Path) -> Vec<u8> {
    let mut b = fs::read(path).expect("reading a new index");
    b[8..24].copy_from_slice(&[0x5a; 16]);
    b[24..32].copy_from_slice(&1_793_491_200i64.to_le_bytes());
    b
}

fn with_flag(flag: u8, file: &[u8]) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(file);
    v
}

fn index_files(out: &Out, scratch: &Path) {
    let put =
        |name: &str, flag: u8, file: &[u8]| out.put("index_file", name, &with_flag(flag, file));
    let d = |i: u32| Digest::of(&i.to_le_bytes());

    let mut w = FixedIndexWriter::create(scratch, 10_000, 4096).unwrap();
    for i in [2, 0, 1] {
        w.set(i, &d(i as u32)).unwrap();
    }
    let path = scratch.join("three.fidx");
    w.finish(&path).unwrap();
    let fixed = pinned(&path);
    let r = IndexReader::open_file(FileKind::Fixed, &path, "three.fidx").unwrap();
    r.verify_checksum().unwrap();
    put("fixed-3", 0, &fixed);
    put("fixed-3-read-by-7", 0x40, &fixed);
    put("fixed-3-truncated", 0, &fixed[..fixed.len() - 1]);
    put("fixed-3-as-dynamic", 1, &fixed);
    let mut bad = fixed.clone();
    bad[INDEX_HEADER_SIZE] ^= 1;
    put("fixed-3-entry-flipped", 0, &bad);
    put("fixed-3-entry-flipped-csum-fixed", 0x08, &bad);
    let mut bad = fixed.clone();
    bad[80..84].copy_from_slice(&1024u32.to_le_bytes());
    put("fixed-3-chunk-size-1k", 0, &bad);
    put("fixed-3-chunk-size-fixed", 0x10, &bad);
    let mut bad = fixed.clone();
    bad[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
    put("fixed-3-count-max", 0, &bad);
    put("fixed-3-count-fixed", 0x04, &bad);

    let w = FixedIndexWriter::create(scratch, 0, 4096).unwrap();
    let path = scratch.join("empty.fidx");
    w.finish(&path).unwrap();
    put("fixed-empty", 0, &pinned(&path));

    let mut w = DynamicIndexWriter::create(scratch).unwrap();
    let mut at = 0;
    for (i, size) in [100u64, 4096, 1].into_iter().enumerate() {
        w.push(at, &d(i as u32), size).unwrap();
        at += size;
    }
    let path = scratch.join("three.didx");
    w.finish(&path).unwrap();
    let dynamic = pinned(&path);
    let r = IndexReader::open_file(FileKind::Dynamic, &path, "three.didx").unwrap();
    r.verify_checksum().unwrap();
    assert_eq!(r.file_size(), 4197);
    put("dynamic-3", 1, &dynamic);
    put("dynamic-3-read-by-4", 0x21, &dynamic);
    put("dynamic-3-as-fixed", 0, &dynamic);
    put("dynamic-3-extra-byte", 1, &[&dynamic[..], &[0]].concat());
    put(
        "dynamic-3-extra-byte-count-fixed",
        0x05,
        &[&dynamic[..], &[0]].concat(),
    );
    // Ends that do not rise, with a checksum that holds.
    let mut bad = dynamic.clone();
    bad[INDEX_HEADER_SIZE + 40..INDEX_HEADER_SIZE + 48].copy_from_slice(&50u64.to_le_bytes());
    put("dynamic-3-ends-fall", 0x09, &bad);
    let mut bad = dynamic.clone();
    bad[..8].copy_from_slice(b"hoardXI1");
    put("dynamic-3-bad-magic", 1, &bad);
    put("dynamic-3-magic-fixed", 0x03, &bad);

    let w = DynamicIndexWriter::create(scratch).unwrap();
    let path = scratch.join("empty.didx");
    w.finish(&path).unwrap();
    let empty = pinned(&path);
    put("dynamic-empty", 1, &empty);
    put("header-only-short", 1, &empty[..INDEX_HEADER_SIZE - 1]);
    put("nothing", 0x0f, &[]);
}

// ---- manifest and snapshot_entry: manifest.json bytes ----

fn fixed_file() -> ManifestFile {
    ManifestFile {
        name: "disk.img.fidx".into(),
        kind: FileKind::Fixed,
        raw: true,
        file_size: 10_000,
        chunk_size: Some(4096),
        chunk_count: 3,
        index_csum: "1f".repeat(32),
        index_uuid: "5a".repeat(16),
        source: Some(SourceAttributes {
            mtime_ns: 1_793_491_200_000_000_000,
            ctime_ns: 1_793_491_200_000_000_001,
            inode: 42,
        }),
    }
}

fn dynamic_file(name: &str, file_size: u64, chunk_count: u64) -> ManifestFile {
    ManifestFile {
        name: name.into(),
        kind: FileKind::Dynamic,
        raw: false,
        file_size,
        chunk_size: None,
        chunk_count,
        index_csum: "2e".repeat(32),
        index_uuid: "6b".repeat(16),
        source: None,
    }
}

fn sealed(m: &mut Manifest, key: &Key, recovery: Option<Vec<u8>>) {
    let snap: SnapshotPath = m.snapshot.parse().expect("a snapshot path");
    let files = m.files.iter().map(SealedFile::of).collect();
    let (_, mac, body) = seal::make(key, &snap, files, recovery);
    m.encrypted = true;
    m.seal = Some(Seal {
        mac: hex(&mac),
        body: String::from_utf8(body).expect("a seal body is JSON"),
    });
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn manifests(out: &Out) {
    let put = |name: &str, m: &Manifest| {
        let raw = m.encode().expect("a small manifest encodes");
        out.put("manifest", name, &raw);
        out.put("snapshot_entry", name, &raw);
    };
    let key = Key::from_secret(&FUZZ_SECRET);

    let mut m = Manifest::new(SNAPSHOT.into());
    put("writing-empty", &m);
    m.files = vec![
        fixed_file(),
        dynamic_file("root.hmeta.didx", 390, 1),
        dynamic_file("root.hdata.didx", 26_032, 3),
    ];
    m.state = SnapshotState::Complete;
    put("complete-plain", &m);
    m.state = SnapshotState::Incomplete;
    m.verification = Some(Verification {
        state: VerifyState::Failed,
        time: 1_793_577_600,
    });
    m.protected = true;
    put("incomplete-failed-protected", &m);

    let mut s = m.clone();
    s.state = SnapshotState::Complete;
    s.verification = Some(Verification {
        state: VerifyState::Ok,
        time: 1_793_577_600,
    });
    s.protected = false;
    sealed(&mut s, &key, None);
    let listed = parse_entry(&s.encode().unwrap(), Some(&key)).unwrap();
    assert_eq!(listed.seal, SealState::Ours);
    put("sealed-fuzz-key", &s);
    let mut r = s.clone();
    sealed(&mut r, &key, Some(vec![0x33; RECOVERY_BLOB_SIZE]));
    put("sealed-fuzz-key-recovery", &r);
    let mut t = s.clone();
    t.files[0].file_size += 1;
    put("sealed-fuzz-key-altered", &t);
    let mut t = s.clone();
    t.snapshot = "vm/1/2026-11-02T00:00:00Z".into();
    put("sealed-fuzz-key-moved", &t);
    let mut f = s.clone();
    sealed(&mut f, &Key::from_secret(&[8; 32]), None);
    put("sealed-other-key", &f);
    let mut e = m.clone();
    e.encrypted = true;
    put("encrypted-unsealed", &e);

    // Near-valid text.
    let text = String::from_utf8(s.encode().unwrap()).unwrap();
    let put_text = |name: &str, t: &str| {
        out.put("manifest", name, t.as_bytes());
        out.put("snapshot_entry", name, t.as_bytes());
    };
    put_text(
        "bad-magic",
        &text.replace("hoard-manifest-1", "hoard-manifest-9"),
    );
    put_text("bad-state", &text.replace("\"complete\"", "\"done\""));
    put_text("bad-kind", &text.replace("\"fixed\"", "\"sparse\""));
    put_text("negative-size", &text.replace("10000", "-1"));
    put_text("truncated", &text[..text.len() / 2]);
    put_text("bad-snapshot", &text.replace(SNAPSHOT, "vm/1/../etc"));
}

// ---- archive: data stream length (u64 LE), then the metadata stream ----

fn entry(name: &str, kind: Kind, size: u64) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 100,
        mtime: Timestamp {
            sec: 1_793_491_200,
            nsec: 5,
        },
        ctime_ns: 1_793_491_200_000_000_005,
        inode: 7,
        size,
        xattrs: Vec::new(),
    }
}

/// The data stream of files `contents`, and each one's (offset, len).
fn data_stream(contents: &[&[u8]]) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut data = Vec::new();
    let mut at = Vec::new();
    for c in contents {
        let start = data.len() as u64;
        data.extend_from_slice(&payload_header(c.len() as u64));
        data.extend_from_slice(c);
        at.push((start, data.len() as u64 - start));
    }
    (data, at)
}

fn file(name: &str, (payload, payload_len): (u64, u64), size: u64) -> Entry {
    let kind = Kind::File {
        payload,
        payload_len,
        sparse: false,
    };
    entry(name, kind, size)
}

fn dir(name: &str, kind: Kind) -> Entry {
    let mut e = entry(name, kind, 0);
    e.mode = 0o755;
    e
}

fn archive_seed(data_size: u64, meta: &[u8]) -> Vec<u8> {
    let mut v = data_size.to_le_bytes().to_vec();
    v.extend_from_slice(meta);
    v
}

fn archives(out: &Out) {
    let (mut data, at) = data_stream(&[b"hello\n", b"deep\n"]);
    // A sparse file of 1 MiB holding 4 bytes at 64 KiB.
    let sparse_at = data.len() as u64;
    let mut map = Vec::new();
    encode_extents(
        &[Extent {
            offset: 65_536,
            len: 4,
        }],
        &mut map,
    );
    data.extend_from_slice(&payload_header(map.len() as u64 + 4));
    data.extend_from_slice(&map);
    data.extend_from_slice(b"data");
    let sparse_len = data.len() as u64 - sparse_at;

    let (mut w, head) = MetaWriter::start();
    let mut meta = head.to_vec();
    let (t, c) = w.table(&[file("f", at[1], 5)]);
    meta.extend_from_slice(&t);
    let (t, b) = w.table(&[dir("c", c)]);
    meta.extend_from_slice(&t);
    let (t, a) = w.table(&[dir("b", b)]);
    meta.extend_from_slice(&t);
    let mut hello = file("hello.txt", at[0], 6);
    hello.xattrs.push(Xattr {
        name: b"user.note".to_vec(),
        value: b"seed".to_vec(),
    });
    let hardlink = Kind::Hardlink {
        target: b"hello.txt".to_vec(),
        payload: at[0].0,
        payload_len: at[0].1,
        sparse: false,
    };
    let sparse = Kind::File {
        payload: sparse_at,
        payload_len: sparse_len,
        sparse: true,
    };
    let root_entries = [
        dir("a", a),
        entry("chr", Kind::CharDev { rdev: 0x0103 }, 0),
        entry("fifo", Kind::Fifo, 0),
        hello,
        entry("link", hardlink, 6),
        entry("sock", Kind::Socket, 0),
        entry("sparse", sparse, 1 << 20),
        entry(
            "sym",
            Kind::Symlink {
                target: b"a/b/c/f".to_vec(),
            },
            7,
        ),
    ];
    let (t, root_kind) = w.table(&root_entries);
    meta.extend_from_slice(&t);
    let mut root = dir("", root_kind);
    root.size = data.len() as u64;
    meta.extend_from_slice(&w.finish(&root));
    let data_size = data.len() as u64;
    let mut a = Archive::open(meta.clone(), data_size).expect("the seed archive opens");
    let f = a.lookup("a/b/c/f").expect("a/b/c/f is there");
    assert_eq!(f.size, 5);
    let root = a.root().clone();
    assert_eq!(a.read_dir(&root).expect("the root lists").len(), 8);
    out.put("archive", "tree", &archive_seed(data_size, &meta));
    out.put(
        "archive",
        "tree-data-short",
        &archive_seed(data_size - 1, &meta),
    );
    out.put(
        "archive",
        "tree-truncated",
        &archive_seed(data_size, &meta[..meta.len() - 1]),
    );
    let mut bad = meta.clone();
    bad[16 + 8] ^= 0xff; // the deepest table's entry count
    out.put(
        "archive",
        "tree-table-count-flipped",
        &archive_seed(data_size, &bad),
    );

    let (mut w, head) = MetaWriter::start();
    let mut meta = head.to_vec();
    let (t, kind) = w.table(&[]);
    meta.extend_from_slice(&t);
    meta.extend_from_slice(&w.finish(&dir("", kind)));
    out.put("archive", "empty-dir", &archive_seed(0, &meta));
    out.put("archive", "short", &[0; 8]);
}

// ---- chunk_decode: flag byte (bit 0 key id, bit 1 CRC), then a blob ----

fn chunks(out: &Out) {
    let put = |name: &str, flag: u8, b: &[u8]| out.put("chunk_decode", name, &with_flag(flag, b));
    let text: Vec<u8> = b"hoard chunk seed "
        .iter()
        .copied()
        .cycle()
        .take(4096)
        .collect();
    let raw = blob::encode_raw(b"hello, chunk\n");
    put("raw", 0, &raw);
    put("raw-truncated", 2, &raw[..raw.len() - 1]);
    let mut bad = raw.clone();
    bad[HEADER_SIZE] ^= 1;
    put("raw-crc-broken", 0, &bad);
    put("raw-crc-fixed", 2, &bad);
    let zstd = blob::encode_plain(&text, Compression::default());
    assert_ne!(zstd, blob::encode_raw(&text), "text compresses");
    assert_eq!(blob::decode_plain(&Digest::of(&text), &zstd).unwrap(), text);
    put("zstd", 0, &zstd);
    let mut bad = zstd.clone();
    bad[12..16].copy_from_slice(&8192u32.to_le_bytes());
    put("zstd-raw-size-wrong", 2, &bad);
    let mut bad = zstd.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    put("zstd-frame-damaged", 2, &bad);
    put("header-only", 2, &zstd[..HEADER_SIZE]);
}

// ---- delta_decode: flag byte (bit 0: recompute the CRC), then a delta ----

fn deltas(out: &Out) {
    use hoard_datastore::delta;
    let put = |name: &str, flag: u8, b: &[u8]| out.put("delta_decode", name, &with_flag(flag, b));
    let base: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
    let mut new = base.clone();
    new[5000] ^= 1;
    new[19_999] ^= 1;
    let blocks = delta::diff_blocks(&base, &new);
    let zstd = delta::encode(&Digest::of(&base), &new, &blocks, 3);
    put("two-blocks", 0, &zstd);
    let noisy: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut raw_new = base.clone();
    raw_new[..4096].copy_from_slice(&noisy);
    let raw = delta::encode(&Digest::of(&base), &raw_new, &[0], 3);
    put("one-raw-block", 0, &raw);
    put("truncated", 1, &zstd[..zstd.len() - 3]);
    let mut bad = zstd.clone();
    bad[48..52].copy_from_slice(&9u32.to_le_bytes());
    put("block-count-wrong", 1, &bad);
    put("head-only", 1, &zstd[..delta::FIXED_SIZE]);
}

// ---- nbd_reply: a server's side of an NBD conversation ----

fn nbd_replies(out: &Out) {
    use hoard_nbd::wire::*;
    let opt = |o: u32, ty: u32, data: &[u8]| {
        let mut v = REPLY_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&o.to_be_bytes());
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    };
    let chunk = |flags: u16, ty: u16, cookie: u64, payload: &[u8]| {
        let mut v = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    };
    let mut hello = INIT_MAGIC.to_be_bytes().to_vec();
    hello.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    hello.extend(opt(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
    let mut ctx = 1u32.to_be_bytes().to_vec();
    ctx.extend_from_slice(b"base:allocation");
    hello.extend(opt(OPT_SET_META_CONTEXT, REP_META_CONTEXT, &ctx));
    let mut ctx = 2u32.to_be_bytes().to_vec();
    ctx.extend_from_slice(b"qemu:dirty-bitmap:b");
    hello.extend(opt(OPT_SET_META_CONTEXT, REP_META_CONTEXT, &ctx));
    hello.extend(opt(OPT_SET_META_CONTEXT, REP_ACK, &[]));
    let mut info = INFO_EXPORT.to_be_bytes().to_vec();
    info.extend_from_slice(&8192u64.to_be_bytes());
    info.extend_from_slice(&1u16.to_be_bytes());
    hello.extend(opt(OPT_GO, REP_INFO, &info));
    hello.extend(opt(OPT_GO, REP_ACK, &[]));
    out.put("nbd_reply", "handshake-only", &hello);
    let mut read = hello.clone();
    let mut hole = 0u64.to_be_bytes().to_vec();
    hole.extend_from_slice(&4096u32.to_be_bytes());
    read.extend(chunk(0, REPLY_TYPE_OFFSET_HOLE, 1, &hole));
    let mut data = 4096u64.to_be_bytes().to_vec();
    data.extend_from_slice(&[0x5a; 4096]);
    read.extend(chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 1, &data));
    let mut bs = 1u32.to_be_bytes().to_vec();
    bs.extend_from_slice(&4096u32.to_be_bytes());
    bs.extend_from_slice(&(STATE_HOLE | STATE_ZERO).to_be_bytes());
    bs.extend_from_slice(&4096u32.to_be_bytes());
    bs.extend_from_slice(&0u32.to_be_bytes());
    read.extend(chunk(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, 2, &bs));
    let mut dirty = 2u32.to_be_bytes().to_vec();
    dirty.extend_from_slice(&8192u32.to_be_bytes());
    dirty.extend_from_slice(&STATE_DIRTY.to_be_bytes());
    read.extend(chunk(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, 3, &dirty));
    out.put("nbd_reply", "read-and-status", &read);
    let mut err = hello.clone();
    let mut e = 5u32.to_be_bytes().to_vec();
    e.extend_from_slice(&3u16.to_be_bytes());
    e.extend_from_slice(b"bad");
    e.extend_from_slice(&512u64.to_be_bytes());
    err.extend(chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR_OFFSET, 1, &e));
    out.put("nbd_reply", "read-error", &err);
    let mut simple = hello;
    simple.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    simple.extend_from_slice(&0u32.to_be_bytes());
    simple.extend_from_slice(&1u64.to_be_bytes());
    simple.extend_from_slice(&[7u8; 8192]);
    out.put("nbd_reply", "simple-read", &simple);
}

// ---- key_file: key files, master key files, paper text, public keys ----

/// `json` with the creation time pinned.
fn pin_created(file: &KeyFile) -> String {
    file.to_json().replace(&file.created().to_string(), CREATED)
}

fn key_files(out: &Out) {
    let put = |name: &str, b: &[u8]| out.put("key_file", name, b);
    let key = Key::from_secret(&FUZZ_SECRET);
    let fp = key.fingerprint().to_string();

    let plain = pin_created(&KeyFile::create(&key, None, Argon2Params::DEFAULT).unwrap());
    let file = KeyFile::parse(plain.as_bytes()).unwrap();
    assert_eq!(file.unlock(None).unwrap().fingerprint(), key.fingerprint());
    put("key-plain.json", plain.as_bytes());
    put("key-plain.paper", hoard_codec::paper(&file).as_bytes());
    let other = Key::from_secret(&[8; 32]).fingerprint().to_string();
    put(
        "key-wrong-fingerprint.json",
        plain.replace(&fp, &other).as_bytes(),
    );
    put(
        "key-unknown-field.json",
        plain.replace("\"kdf\"", "\"x\": 1, \"kdf\"").as_bytes(),
    );

    // Wrapped with a cheap KDF; the bytes are not a real wrapping (that
    // needs fresh randomness), so unlocking reaches the GCM tag and fails.
    let wrapped = |magic: &str, fp: &str, m_kib: u32, t: u32, salt: &str| {
        format!(
            "{{\"magic\":\"{magic}\",\"created\":\"{CREATED}\",\"fingerprint\":\"{fp}\",\
             \"kdf\":{{\"name\":\"argon2id\",\"m_kib\":{m_kib},\"t\":{t},\"p\":1,\"salt\":\"{salt}\"}},\
             \"key\":\"{}\"}}",
            "a5".repeat(60)
        )
    };
    let salt = "c3".repeat(16);
    let protected = wrapped("hoard-key-1", &fp, 8, 1, &salt);
    let file = KeyFile::parse(protected.as_bytes()).unwrap();
    assert!(file.needs_passphrase());
    put("key-protected.json", protected.as_bytes());
    put("key-protected.paper", hoard_codec::paper(&file).as_bytes());
    put(
        "key-kdf-t-too-big.json",
        wrapped("hoard-key-1", &fp, 8, 101, &salt).as_bytes(),
    );
    put(
        "key-kdf-m-too-small.json",
        wrapped("hoard-key-1", &fp, 4, 1, &salt).as_bytes(),
    );
    put(
        "key-salt-short.json",
        wrapped("hoard-key-1", &fp, 8, 1, "c3").as_bytes(),
    );

    // A master key file for a fixed secret: its fingerprint is that of
    // the public key, which unlocking with a wrong one reports.
    let master = |fp: &str| {
        format!(
            "{{\"magic\":\"hoard-master-key-1\",\"created\":\"{CREATED}\",\"fingerprint\":\"{fp}\",\
             \"kdf\":null,\"key\":\"{}\"}}",
            "48".repeat(32)
        )
    };
    let derived = match MasterSecretFile::parse(master(&fp).as_bytes())
        .unwrap()
        .unlock(None)
    {
        Err(hoard_codec::Error::FingerprintMismatch { derived, .. }) => derived.to_string(),
        other => panic!("unexpected {other:?}"),
    };
    let good = master(&derived);
    MasterSecretFile::parse(good.as_bytes())
        .unwrap()
        .unlock(None)
        .unwrap();
    put("master-plain.json", good.as_bytes());
    put("master-wrong-fingerprint.json", master(&fp).as_bytes());
    let protected = wrapped("hoard-master-key-1", &derived, 8, 1, &salt);
    MasterSecretFile::parse(protected.as_bytes()).unwrap();
    put("master-protected.json", protected.as_bytes());

    let mut point = [0u8; 32];
    point[0] = 9; // the base point: a valid, not low-order public key
    let public = MasterPublic::from_bytes(point).unwrap();
    put(
        "master-public.txt",
        public.to_text(Some("fuzz seed")).as_bytes(),
    );
    put(
        "master-public-low-order.txt",
        public
            .to_text(None)
            .replace(&hex(&point), &"00".repeat(32))
            .as_bytes(),
    );
    let mut blob = vec![0u8; RECOVERY_BLOB_SIZE];
    blob[..32].copy_from_slice(&point);
    put("recovery-blob.bin", &blob);
}
