//! The cuts depend on the bytes only, never on how the stream was fed.

use hoard_chunker::{Chunker, Params, chunk_lengths};
use proptest::prelude::*;

fn feed_in_pieces(params: Params, data: &[u8], pieces: &[usize]) -> Vec<usize> {
    let mut chunker = Chunker::new(params);
    let mut out = Vec::new();
    let mut current = 0usize;
    let mut rest = data;
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        let mut piece = &rest[..n];
        rest = &rest[n..];
        while let Some(cut) = chunker.next_cut(piece) {
            out.push(current + cut);
            current = 0;
            piece = &piece[cut..];
        }
        current += piece.len();
    }
    if current > 0 {
        out.push(current);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn cuts_do_not_depend_on_piece_sizes(
        seed in any::<u64>(),
        len in 0usize..400_000,
        pieces in proptest::collection::vec(1usize..70_000, 1..8),
    ) {
        let mut s = seed | 1;
        let data: Vec<u8> = (0..len).map(|_| { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s >> 24) as u8 }).collect();
        let params = Params::new(16 << 10).unwrap();
        let whole = chunk_lengths(params, &data);
        prop_assert_eq!(whole.iter().sum::<usize>(), data.len());
        prop_assert_eq!(feed_in_pieces(params, &data, &pieces), whole);
    }

    #[test]
    fn low_entropy_streams_respect_the_limits(
        byte in any::<u8>(),
        period in 1usize..300,
        len in 0usize..300_000,
    ) {
        let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add((i % period) as u8)).collect();
        let params = Params::new(16 << 10).unwrap();
        let lens = chunk_lengths(params, &data);
        prop_assert_eq!(lens.iter().sum::<usize>(), data.len());
        if let Some((_, body)) = lens.split_last() {
            for &l in body {
                prop_assert!((params.min..=params.max).contains(&l));
            }
        }
    }
}
