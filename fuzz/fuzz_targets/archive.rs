//! A tree archive's metadata stream as restore and `hoard ls` read it,
//! from a hostile server or a damaged datastore: any bytes open, list and
//! walk to an archive or an error, never a panic, an endless walk or an
//! allocation the bytes do not back.
#![no_main]

use hoard_archive::format::{check_extents, decode_payload_header, decode_table, Extent};
use hoard_archive::{Archive, Entry};
use libfuzzer_sys::fuzz_target;

/// Walks every directory reachable from `dir`, at most `budget` tables.
fn walk(a: &mut Archive<Vec<u8>>, dir: &Entry, budget: &mut u32) {
    if *budget == 0 {
        return;
    }
    *budget -= 1;
    if let Ok(entries) = a.read_dir(dir) {
        for e in entries.iter().filter(|e| e.is_dir()) {
            walk(a, e, budget);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes say the data stream's length; the rest is the
    // metadata stream.
    if data.len() < 8 {
        return;
    }
    let data_size = u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 40);
    let meta = data[8..].to_vec();
    let _ = decode_table(&meta, u64::MAX);
    let _ = decode_payload_header(&meta[..meta.len().min(16)]);
    let extents: Vec<Extent> = meta
        .chunks_exact(16)
        .map(|x| Extent {
            offset: u64::from_le_bytes(x[..8].try_into().unwrap()),
            len: u64::from_le_bytes(x[8..].try_into().unwrap()),
        })
        .collect();
    let _ = check_extents(&extents, data_size, data_size);
    if let Ok(mut a) = Archive::open(meta, data_size) {
        let root = a.root().clone();
        let mut budget = 1000;
        walk(&mut a, &root, &mut budget);
        let _ = a.lookup("a/b/c");
    }
});
