//! Zeros: the unused space of every disk image. All-zero chunks are
//! recognised by a scan far faster than SHA-256 and their digest is
//! computed once per length; zero blocks inside a chunk become holes when
//! it is written to a file (chunk store, restore target).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::Digest;

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

/// The runs of `data` that are not all-zero blocks of `block` bytes, with
/// their start offsets: what to write so that the zero blocks stay holes.
pub fn nonzero_runs(data: &[u8], block: usize) -> Vec<(usize, &[u8])> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, b) in data.chunks(block).enumerate() {
        match (is_zero(b), start) {
            (false, None) => start = Some(i * block),
            (true, Some(s)) => {
                runs.push((s, &data[s..i * block]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, &data[s..]));
    }
    runs
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

    proptest! {
        /// Writing the runs into zeros gives back the data.
        #[test]
        fn nonzero_runs_rebuild_the_data(
            blocks in prop::collection::vec(prop::option::of(1u8..), 0..20),
            tail in 0usize..7,
        ) {
            let block = 8;
            let mut data: Vec<u8> = blocks
                .iter()
                .flat_map(|b| std::iter::repeat_n(b.unwrap_or(0), block))
                .collect();
            data.extend(std::iter::repeat_n(3u8, tail));
            let mut rebuilt = vec![0u8; data.len()];
            let mut last_end = 0;
            for (start, run) in nonzero_runs(&data, block) {
                prop_assert!(start >= last_end);
                prop_assert!(!run.is_empty());
                rebuilt[start..start + run.len()].copy_from_slice(run);
                last_end = start + run.len();
            }
            prop_assert_eq!(rebuilt, data);
        }
    }
}
