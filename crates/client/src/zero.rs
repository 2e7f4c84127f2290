//! All-zero chunks: the unused space of every disk image. They are
//! recognised by a scan far faster than SHA-256, and their digest is
//! computed once per chunk length.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use hoard_types::Digest;

/// Whether `data` is all zero bytes. Compares 64-byte blocks so the loop
/// vectorises; runs at memory speed.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    let blocks_zero = blocks
        .by_ref()
        .all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0);
    blocks_zero && blocks.remainder().iter().all(|&b| b == 0)
}

/// The digest of `len` zero bytes.
pub fn zero_digest(len: usize) -> Digest {
    static CACHE: OnceLock<Mutex<HashMap<usize, Digest>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(d) = cache.lock().expect("lock poisoned").get(&len) {
        return *d;
    }
    let d = Digest::of(&vec![0u8; len]);
    cache.lock().expect("lock poisoned").insert(len, d);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_digest_matches_hashing() {
        for len in [1, 63, 64, 65, 4096, 100_000] {
            assert_eq!(zero_digest(len), Digest::of(&vec![0; len]));
            assert!(is_zero(&vec![0; len]));
        }
        assert!(is_zero(&[]));
    }

    proptest! {
        #[test]
        fn one_set_byte_anywhere_is_seen(len in 1usize..300, pos in 0usize..300, v in 1u8..) {
            let pos = pos % len;
            let mut data = vec![0u8; len];
            data[pos] = v;
            prop_assert!(!is_zero(&data));
        }
    }
}
