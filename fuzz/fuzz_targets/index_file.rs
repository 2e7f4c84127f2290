//! Index files (`.fidx`, `.didx`) as the datastore reads them from a
//! damaged or hostile disk, and the index a client then receives: any
//! bytes open to an index or an error, never a panic, and an index that
//! opens reads back whole, in the blocks the server, GC and verify use,
//! with allocations bounded by the file's length.
//!
//! The readers take a path, so each input is written to a scratch file
//! on tmpfs and opened with the real readers, as both kinds. The entries
//! the server would then send (HashListPart, IndexPart), and the raw
//! entry bytes as a hostile server's IndexPart, go through the packet
//! codec and the client's chunk map checks.
//!
//! The first input byte picks fix-ups so the fuzzer gets past the cheap
//! checks: bit 0 the kind (fixed, dynamic), bit 1 writes its magic, bit 2
//! sets the chunk count to the whole entries present, bit 3 recomputes
//! the entry checksum, bit 4 makes a fixed index's sizes agree with its
//! chunk count; bits 5-7 choose how many entries are read at a time. The
//! rest is the file.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use hoard_client::remote::ChunkMap;
use hoard_datastore::{
    DYNAMIC_INDEX_MAGIC, FIXED_INDEX_MAGIC, FileKind, INDEX_HEADER_SIZE, IndexReader,
    MIN_FIXED_CHUNK_SIZE,
};
use hoard_protocol::{DigestList, DynamicEntryList, Message, check_frame};
use hoard_types::{DIGEST_SIZE, Digest, MAX_CHUNK_SIZE};
use libfuzzer_sys::fuzz_target;

const DYNAMIC_ENTRY_SIZE: usize = 40;

/// The scratch file, one per process (libFuzzer's -fork and -jobs run
/// several); it exists only while an input is being opened.
fn scratch() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("hoard-fuzz-index.{}", std::process::id()))
    })
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn fix_up(flags: u8, kind: FileKind, b: &mut Vec<u8>) {
    if b.len() < INDEX_HEADER_SIZE {
        return;
    }
    let (magic, entry) = match kind {
        FileKind::Fixed => (FIXED_INDEX_MAGIC, DIGEST_SIZE),
        FileKind::Dynamic => (DYNAMIC_INDEX_MAGIC, DYNAMIC_ENTRY_SIZE),
    };
    if flags & 2 != 0 {
        b[..8].copy_from_slice(&magic);
    }
    if flags & 4 != 0 {
        let n = (b.len() - INDEX_HEADER_SIZE) / entry;
        b.truncate(INDEX_HEADER_SIZE + n * entry);
        b[40..48].copy_from_slice(&(n as u64).to_le_bytes());
    }
    if flags & 8 != 0 {
        let csum = Digest::of(&b[INDEX_HEADER_SIZE..]);
        b[48..80].copy_from_slice(csum.as_bytes());
    }
    if flags & 16 != 0 && kind == FileKind::Fixed {
        let span = MAX_CHUNK_SIZE as u32 - MIN_FIXED_CHUNK_SIZE + 1;
        let cs = MIN_FIXED_CHUNK_SIZE + u32::from_le_bytes(b[80..84].try_into().unwrap()) % span;
        let count = u64_at(b, 40);
        let size = match count {
            0 => 0,
            n => (n - 1)
                .saturating_mul(cs as u64)
                .saturating_add(1 + u64_at(b, 32) % cs as u64),
        };
        b[32..40].copy_from_slice(&size.to_le_bytes());
        b[80..84].copy_from_slice(&cs.to_le_bytes());
    }
}

/// What the server sends of an index: HashListPart and IndexPart
/// payloads, `per` entries each, read as `hash_list.rs` reads them; and
/// the same reads as GC (`digests`) and verify (`sized_digests`) make.
fn serve(r: &IndexReader, per: u64) -> (Vec<Bytes>, Vec<Bytes>) {
    let (mut digest_parts, mut entry_parts) = (Vec::new(), Vec::new());
    let count = r.chunk_count();
    let mut start = 0;
    while start < count {
        let n = per.min(count - start) as usize;
        let digests = r
            .digest_block(start, n)
            .expect("entries within the file read");
        let entries = r
            .entry_block(start, n)
            .expect("entries within the file read");
        assert_eq!(digests.len(), n * DIGEST_SIZE);
        assert_eq!(entries.len(), n * DYNAMIC_ENTRY_SIZE);
        let sized = r
            .sized_digests(start, n)
            .expect("entries within the file read");
        let plain = r.digests(start, n).expect("entries within the file read");
        assert_eq!(sized.len(), n);
        assert!(sized.iter().map(|(d, _)| d).eq(plain.iter()));
        assert!(plain.iter().flat_map(|d| d.as_bytes()).eq(digests.iter()));
        digest_parts.push(Bytes::from(digests));
        entry_parts.push(Bytes::from(entries));
        start += n as u64;
    }
    (digest_parts, entry_parts)
}

/// `msg` as the server encodes it and the client decodes it.
fn receive(msg: Message) -> Message {
    let raw = msg.encode(1).freeze();
    let header = check_frame(&raw)
        .expect("a packet the server encodes frames")
        .expect("a whole packet");
    Message::decode(&header, raw.slice(6..)).expect("a packet the server encodes decodes")
}

/// What `hoard_client::remote::chunk_map` makes of IndexPart payloads
/// (its checks are inline there, in an async fn over a connection): at
/// most `chunk_count` entries, ends strictly increasing; returns the map
/// and the SHA-256 of the entries, which it compares with the manifest.
fn chunk_map(parts: &[Bytes], chunk_count: u64) -> Option<(ChunkMap, Digest)> {
    let mut map = ChunkMap::default();
    let mut all = Vec::new();
    for part in parts {
        let Message::IndexPart(list) = receive(Message::IndexPart(
            DynamicEntryList::from_bytes(part.clone()).expect("whole entries"),
        )) else {
            panic!("an IndexPart decodes as one");
        };
        if (map.ends.len() + list.len()) as u64 > chunk_count {
            return None;
        }
        all.extend_from_slice(list.as_bytes());
        for e in list.iter() {
            if e.offset <= map.size() {
                return None;
            }
            map.ends.push(e.offset);
            map.digests.push(e.digest);
        }
    }
    Some((map, Digest::of(&all)))
}

/// The lookups a remote file makes in a chunk map it accepted.
fn walk(map: &ChunkMap) {
    for (i, &end) in map.ends.iter().enumerate() {
        let start = map.start(i);
        assert!(start < end);
        assert_eq!(map.chunk_at(start), i);
        assert_eq!(map.chunk_at(end - 1), i);
        assert_eq!(map.covering(start, end - start), i..=i);
    }
    if map.size() > 0 {
        assert_eq!(map.covering(0, map.size()), 0..=map.ends.len() - 1);
    }
}

/// What `hoard_client::requests::hash_list` makes of HashListPart
/// payloads: at most `chunk_count` digests, hashed.
fn hash_list(parts: &[Bytes], chunk_count: u64) -> Option<(Vec<Digest>, Digest)> {
    let mut out = Vec::new();
    let mut all = Vec::new();
    for part in parts {
        let list = DigestList::from_bytes(part.clone()).expect("whole digests");
        let Message::HashListPart(list) = receive(Message::HashListPart(list)) else {
            panic!("a HashListPart decodes as one");
        };
        if (out.len() + list.len()) as u64 > chunk_count {
            return None;
        }
        all.extend_from_slice(list.as_bytes());
        out.extend(list.iter());
    }
    Some((out, Digest::of(&all)))
}

fn check_reader(r: &IndexReader, kind: FileKind, per: u64) {
    let intact = r.verify_checksum().is_ok();
    let csum = r.csum_hex();
    let (digest_parts, entry_parts) = serve(r, per);
    let count = r.chunk_count();
    match kind {
        FileKind::Fixed => {
            let (digests, hash) = hash_list(&digest_parts, count).expect("within the count");
            assert_eq!(digests.len() as u64, count);
            assert!(!intact || hash.to_hex() == csum);
            let (map, _) = chunk_map(&entry_parts, count).expect("a fixed index's ends rise");
            assert_eq!(map.size(), r.file_size());
            walk(&map);
        }
        FileKind::Dynamic => {
            if let Some((map, hash)) = chunk_map(&entry_parts, count) {
                assert!(!intact || hash.to_hex() == csum);
                walk(&map);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let kind = if flags & 1 == 0 {
        FileKind::Fixed
    } else {
        FileKind::Dynamic
    };
    let mut file = rest.to_vec();
    fix_up(flags, kind, &mut file);
    let per = 1 + (flags >> 5) as u64 * 3;

    let path = scratch();
    std::fs::write(path, &file).expect("writing the scratch file");
    let fixed = IndexReader::open_file(FileKind::Fixed, path, "vm/1/T/fuzz.fidx");
    let dynamic = IndexReader::open_file(FileKind::Dynamic, path, "vm/1/T/fuzz.didx");
    std::fs::remove_file(path).expect("removing the scratch file");
    if let Ok(r) = fixed {
        check_reader(&r, FileKind::Fixed, per);
    }
    if let Ok(r) = dynamic {
        check_reader(&r, FileKind::Dynamic, per);
    }

    // A hostile server's IndexPart: the entry bytes as they are.
    let body = file.get(INDEX_HEADER_SIZE..).unwrap_or_default();
    let body = &body[..body.len() / DYNAMIC_ENTRY_SIZE * DYNAMIC_ENTRY_SIZE];
    let parts: Vec<Bytes> = body
        .chunks(per as usize * DYNAMIC_ENTRY_SIZE)
        .map(Bytes::copy_from_slice)
        .collect();
    if let Some((map, _)) = chunk_map(&parts, u64::MAX) {
        walk(&map);
    }
});
