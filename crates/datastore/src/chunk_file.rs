//! The chunk file format: a 16-byte header, then the payload.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic naming the encoding: `hoardCR1` = raw (uncompressed, unencrypted) |
//! | 8 | 4 | CRC-32 (IEEE) of bytes 12.. (raw size and payload), u32 LE |
//! | 12 | 4 | raw size: length of the chunk's plain data, u32 LE |
//! | 16 | n | payload; for `hoardCR1` exactly the plain data |
//!
//! The magic leaves room for compressed and encrypted encodings; the CRC
//! lets verify tell bit rot from a good chunk without re-hashing and a
//! reader detect damage before handing data out.

use hoard_types::Digest;

use crate::error::{Error, Result};

pub const CHUNK_MAGIC_RAW: [u8; 8] = *b"hoardCR1";
pub const CHUNK_HEADER_SIZE: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub magic: [u8; 8],
    pub crc: u32,
    pub raw_size: u32,
}

impl ChunkHeader {
    pub fn for_raw(data: &[u8]) -> Self {
        let raw_size = data.len() as u32;
        let mut h = crc32fast::Hasher::new();
        h.update(&raw_size.to_le_bytes());
        h.update(data);
        ChunkHeader {
            magic: CHUNK_MAGIC_RAW,
            crc: h.finalize(),
            raw_size,
        }
    }

    pub fn encode(&self) -> [u8; CHUNK_HEADER_SIZE] {
        let mut out = [0u8; CHUNK_HEADER_SIZE];
        out[..8].copy_from_slice(&self.magic);
        out[8..12].copy_from_slice(&self.crc.to_le_bytes());
        out[12..16].copy_from_slice(&self.raw_size.to_le_bytes());
        out
    }

    /// Parses a header; checks the magic and, given the file's length, that
    /// the payload is all there.
    pub fn decode(digest: &Digest, raw: &[u8], file_len: u64) -> Result<Self> {
        let corrupt = |reason: String| Error::ChunkCorrupt {
            digest: *digest,
            reason,
        };
        if raw.len() < CHUNK_HEADER_SIZE || file_len < CHUNK_HEADER_SIZE as u64 {
            return Err(corrupt(format!(
                "file of {file_len} bytes is shorter than the header"
            )));
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&raw[..8]);
        if magic != CHUNK_MAGIC_RAW {
            return Err(corrupt(format!(
                "unknown chunk magic {}",
                hex::encode(magic)
            )));
        }
        let h = ChunkHeader {
            magic,
            crc: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
            raw_size: u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]),
        };
        let payload = file_len - CHUNK_HEADER_SIZE as u64;
        if payload != h.raw_size as u64 {
            return Err(corrupt(format!(
                "payload of {payload} bytes, header says {}",
                h.raw_size
            )));
        }
        Ok(h)
    }

    /// Checks the payload against the CRC.
    pub fn check_payload(&self, digest: &Digest, payload: &[u8]) -> Result<()> {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.raw_size.to_le_bytes());
        h.update(payload);
        if h.finalize() == self.crc {
            Ok(())
        } else {
            Err(Error::ChunkCorrupt {
                digest: *digest,
                reason: "CRC mismatch (bit rot)".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let data = b"hello chunk";
        let d = Digest::of(data);
        let h = ChunkHeader::for_raw(data);
        let enc = h.encode();
        assert_eq!(&enc[..8], b"hoardCR1");
        let back = ChunkHeader::decode(&d, &enc, 16 + data.len() as u64).unwrap();
        assert_eq!(back, h);
        back.check_payload(&d, data).unwrap();
        assert!(back.check_payload(&d, b"hello chunK").is_err());
        assert!(ChunkHeader::decode(&d, &enc, 15 + data.len() as u64).is_err());
        let mut foreign = enc;
        foreign[0] = b'X';
        assert!(ChunkHeader::decode(&d, &foreign, 16 + data.len() as u64).is_err());
    }
}
