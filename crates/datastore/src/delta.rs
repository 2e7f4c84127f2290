//! Delta chunk files (`DIGEST.d`): a chunk of a disk image kept as the
//! 4 KiB blocks in which it differs from another stored chunk, its base.
//! Pure encoding and decoding; where deltas are made, read and kept alive
//! is in `chunk_deltas.rs`. Byte table: docs/format.md, "Delta chunk file".
//!
//! A delta names its base by digest, so the base may itself be a delta:
//! chains grow by one link per backup that changes the chunk, and each
//! link holds only what changed since the previous backup, not everything
//! since the first one. Reading resolves the chain from its whole root.

use hoard_types::{DIGEST_SIZE, Digest, MAX_CHUNK_SIZE};

/// `hoardCD1`: not a blob magic, so no blob reader takes a delta for a
/// chunk, and no client ever receives one.
pub const DELTA_MAGIC: [u8; 8] = *b"hoardCD1";
/// The unit of comparison: a guest file system's block, and the unit of
/// the writes a VM scatters over its disk.
pub const BLOCK: usize = 4096;
/// Fixed part of a delta file: magic, CRC, raw size, base digest, block
/// count, encoding and padding.
pub const FIXED_SIZE: usize = 56;
/// The largest delta file there can be: every block listed and stored
/// raw. A longer file is damaged, and is not read.
pub const MAX_FILE_SIZE: u64 =
    (FIXED_SIZE + 4 * MAX_CHUNK_SIZE.div_ceil(BLOCK) + MAX_CHUNK_SIZE) as u64;
/// Block data stored as is.
const DATA_RAW: u8 = 0;
/// Block data stored as one zstd frame.
const DATA_ZSTD: u8 = 1;

/// Why a delta file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("a delta file of {0} bytes is too short")]
    Truncated(usize),
    #[error("not a delta file (magic {0})")]
    BadMagic(String),
    #[error("delta CRC mismatch (stored {stored:08x}, computed {computed:08x})")]
    Crc { stored: u32, computed: u32 },
    #[error("delta of raw size {0}, outside 1..={MAX_CHUNK_SIZE}")]
    RawSize(u32),
    #[error("delta block list: {0}")]
    Blocks(String),
    #[error("delta block data: {0}")]
    Data(String),
    #[error("its base holds {base} bytes, the delta {raw}")]
    BaseSize { base: usize, raw: usize },
}

/// A decoded delta: which blocks of the base to replace, and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub raw_size: u32,
    pub base: Digest,
    /// Block numbers, strictly ascending, each inside the chunk.
    pub blocks: Vec<u32>,
    /// The blocks' new bytes, concatenated (the chunk's last block may be
    /// short).
    pub data: Vec<u8>,
}

/// What a delta file's fixed part says, read without the rest: enough to
/// follow a chain (GC, writers) without reading block data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaHead {
    pub raw_size: u32,
    pub base: Digest,
}

/// Blocks in a chunk of `raw_size` bytes.
fn block_count(raw_size: usize) -> usize {
    raw_size.div_ceil(BLOCK)
}

/// Byte range of block `b` in a chunk of `raw_size` bytes.
fn block_range(b: usize, raw_size: usize) -> std::ops::Range<usize> {
    let start = b * BLOCK;
    start..(start + BLOCK).min(raw_size)
}

/// The blocks in which `new` differs from `base` (same length).
pub fn diff_blocks(base: &[u8], new: &[u8]) -> Vec<u32> {
    debug_assert_eq!(base.len(), new.len());
    base.chunks(BLOCK)
        .zip(new.chunks(BLOCK))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i as u32)
        .collect()
}

/// Encodes the delta that turns `base` into `new` given the changed
/// `blocks` (from [`diff_blocks`]); block data is zstd-compressed at
/// `level` when that shrinks it.
///
/// # Panics
/// If `new` is empty or longer than `MAX_CHUNK_SIZE`, or a block is
/// outside it: callers pass stored chunks and their own diff.
pub fn encode(base: &Digest, new: &[u8], blocks: &[u32], level: i32) -> Vec<u8> {
    assert!(!new.is_empty() && new.len() <= MAX_CHUNK_SIZE);
    let mut data = Vec::with_capacity(blocks.len() * BLOCK);
    for &b in blocks {
        data.extend_from_slice(&new[block_range(b as usize, new.len())]);
    }
    let (encoding, body) = match zstd::bulk::compress(&data, level) {
        Ok(z) if z.len() < data.len() => (DATA_ZSTD, z),
        _ => (DATA_RAW, data),
    };
    let mut out = Vec::with_capacity(FIXED_SIZE + 4 * blocks.len() + body.len());
    out.extend_from_slice(&DELTA_MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(new.len() as u32).to_le_bytes());
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    out.extend_from_slice(&[encoding, 0, 0, 0]);
    for &b in blocks {
        out.extend_from_slice(&b.to_le_bytes());
    }
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out[12..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The fixed part of a delta file, from its first [`FIXED_SIZE`] bytes
/// (CRC not checked: that needs the whole file).
pub fn decode_head(head: &[u8]) -> Result<DeltaHead, DeltaError> {
    if head.len() < FIXED_SIZE {
        return Err(DeltaError::Truncated(head.len()));
    }
    if head[..8] != DELTA_MAGIC {
        return Err(DeltaError::BadMagic(hex::encode(&head[..8])));
    }
    let raw_size = u32_at(head, 12);
    if raw_size == 0 || raw_size as usize > MAX_CHUNK_SIZE {
        return Err(DeltaError::RawSize(raw_size));
    }
    Ok(DeltaHead {
        raw_size,
        base: Digest::from_slice(&head[16..16 + DIGEST_SIZE]),
    })
}

/// Decodes and checks a whole delta file: CRC, block list, and block data
/// of exactly the blocks' length. Sizes come from the file and are
/// checked before anything is allocated from them.
pub fn decode(file: &[u8]) -> Result<Delta, DeltaError> {
    let head = decode_head(file)?;
    let stored = u32_at(file, 8);
    let computed = crc32fast::hash(&file[12..]);
    if stored != computed {
        return Err(DeltaError::Crc { stored, computed });
    }
    let raw = head.raw_size as usize;
    let n = u32_at(file, 48) as usize;
    let encoding = file[52];
    if file[53..FIXED_SIZE] != [0; 3] {
        return Err(DeltaError::Blocks("padding is not zero".into()));
    }
    if n == 0 || n > block_count(raw) {
        return Err(DeltaError::Blocks(format!(
            "{n} blocks in a chunk of {} blocks",
            block_count(raw)
        )));
    }
    let list_end = FIXED_SIZE + 4 * n;
    if file.len() < list_end {
        return Err(DeltaError::Truncated(file.len()));
    }
    let blocks: Vec<u32> = file[FIXED_SIZE..list_end]
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if blocks.windows(2).any(|w| w[0] >= w[1]) || blocks[n - 1] as usize >= block_count(raw) {
        return Err(DeltaError::Blocks("not ascending inside the chunk".into()));
    }
    let want: usize = blocks
        .iter()
        .map(|&b| block_range(b as usize, raw).len())
        .sum();
    let body = &file[list_end..];
    let data = match encoding {
        DATA_RAW => body.to_vec(),
        DATA_ZSTD => {
            zstd::bulk::decompress(body, want).map_err(|e| DeltaError::Data(e.to_string()))?
        }
        other => return Err(DeltaError::Data(format!("unknown encoding {other}"))),
    };
    if data.len() != want {
        return Err(DeltaError::Data(format!(
            "{} bytes for blocks of {want}",
            data.len()
        )));
    }
    Ok(Delta {
        raw_size: head.raw_size,
        base: head.base,
        blocks,
        data,
    })
}

impl Delta {
    /// Turns the base's data into this delta's chunk, in place.
    pub fn apply(&self, base: &mut [u8]) -> Result<(), DeltaError> {
        let raw = self.raw_size as usize;
        if base.len() != raw {
            return Err(DeltaError::BaseSize {
                base: base.len(),
                raw,
            });
        }
        let mut at = 0;
        for &b in &self.blocks {
            let r = block_range(b as usize, raw);
            let len = r.len();
            base[r].copy_from_slice(&self.data[at..at + len]);
            at += len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rebuild(base: &[u8], new: &[u8]) -> Vec<u8> {
        let blocks = diff_blocks(base, new);
        let file = encode(&Digest::of(base), new, &blocks, 3);
        let d = decode(&file).unwrap();
        assert_eq!(d.base, Digest::of(base));
        let mut out = base.to_vec();
        d.apply(&mut out).unwrap();
        out
    }

    #[test]
    fn a_short_last_block_and_a_changed_first_block() {
        let base: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut new = base.clone();
        new[0] = 99;
        new[9_999] = 7;
        assert_eq!(diff_blocks(&base, &new), vec![0, 2]);
        assert_eq!(rebuild(&base, &new), new);
    }

    #[test]
    fn damage_is_found() {
        let base = vec![1u8; 3 * BLOCK];
        let mut new = base.clone();
        new[BLOCK + 5] = 2;
        let mut file = encode(&Digest::of(&base), &new, &diff_blocks(&base, &new), 3);
        let last = file.len() - 1;
        file[last] ^= 1;
        assert!(matches!(decode(&file), Err(DeltaError::Crc { .. })));
        assert!(matches!(
            decode(&file[..FIXED_SIZE - 1]),
            Err(DeltaError::Truncated(_))
        ));
        // A base of the wrong size is refused, not indexed out of range.
        let good = encode(&Digest::of(&base), &new, &[1], 3);
        let d = decode(&good).unwrap();
        assert!(d.apply(&mut [0u8; 10]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(
            base in proptest::collection::vec(any::<u8>(), 1..40_000),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..20),
        ) {
            let mut new = base.clone();
            for (at, v) in edits {
                let at = at % new.len();
                new[at] = new[at].wrapping_add(v | 1);
            }
            if new != base {
                prop_assert_eq!(rebuild(&base, &new), new);
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut file = bytes.clone();
            if file.len() >= 8 {
                file[..8].copy_from_slice(&DELTA_MAGIC);
            }
            if file.len() >= FIXED_SIZE {
                let crc = crc32fast::hash(&file[12..]);
                file[8..12].copy_from_slice(&crc.to_le_bytes());
            }
            if let Ok(d) = decode(&file) {
                let mut base = vec![0u8; d.raw_size as usize];
                d.apply(&mut base).unwrap();
            }
        }
    }
}
