//! A delta chunk file (`DIGEST.d`) as the server reads it from a damaged
//! or tampered datastore: any bytes decode to a delta or an error, never
//! a panic or an allocation the bytes do not back, and a decoded delta
//! applies to any base of its size.
//!
//! Layout: a flag byte (bit 0: recompute the CRC, so that the fuzzer gets
//! past it), then the file.
#![no_main]

use hoard_datastore::delta::{decode, decode_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if flag & 1 == 1 && file.len() >= 12 {
        let crc = crc32fast_hash(&file[12..]);
        file[8..12].copy_from_slice(&crc.to_le_bytes());
    }
    let head = decode_head(&file);
    if let Ok(delta) = decode(&file) {
        assert_eq!(head.map(|h| h.raw_size), Ok(delta.raw_size));
        let mut base = vec![0u8; delta.raw_size as usize];
        delta.apply(&mut base).expect("a decoded delta fits a base of its size");
        assert!(delta.apply(&mut vec![0u8; delta.raw_size as usize + 1]).is_err());
    }
});

/// CRC-32 (IEEE), as the format's; written out here so the target needs
/// no crate beyond the datastore's.
fn crc32fast_hash(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
