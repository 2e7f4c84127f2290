//! The chunk blob: a 16-byte header, then the payload. The stored chunk
//! file and the bytes on the wire are the same blob.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic: `hoardCR1` raw, `hoardCZ1` zstd, `hoardCE1` encrypted |
//! | 8 | 4 | CRC-32 (IEEE) of bytes 12.. (raw size and payload), u32 LE |
//! | 12 | 4 | raw size: length of the plain data, u32 LE, 1..=`MAX_CHUNK_SIZE` |
//! | 16 | n | payload |
//!
//! - `hoardCR1`: the plain data, n = raw size.
//! - `hoardCZ1`: one zstd frame, 0 < n < raw size.
//! - `hoardCE1`: key id (8) || nonce (12) || AES-256-GCM ciphertext of
//!   (inner encoding byte || body) || tag (16); see [`crate::key`].
//!   38 <= n <= 37 + raw size.
//!
//! `hoardCR1` and `hoardCZ1` are the chunk files datastores already hold
//! and must stay byte-for-byte as they are. The CRC lets a server tell bit
//! rot from a good chunk without a key, without decompressing and without
//! hashing; everything here checks lengths against the header before it
//! allocates. This module knows no key: for an encrypted blob it checks
//! structure only and says which key it needs.

use std::cell::RefCell;
use std::fmt;

use hoard_types::{Digest, MAX_CHUNK_SIZE};

use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::key::KeyId;

pub const HEADER_SIZE: usize = 16;
pub const MAGIC_RAW: [u8; 8] = *b"hoardCR1";
pub const MAGIC_ZSTD: [u8; 8] = *b"hoardCZ1";
pub const MAGIC_ENCRYPTED: [u8; 8] = *b"hoardCE1";

/// Sizes of the fields of an encrypted payload, in order.
pub const KEY_ID_SIZE: usize = 8;
pub const NONCE_SIZE: usize = 12;
pub const INNER_ENCODING_SIZE: usize = 1;
pub const TAG_SIZE: usize = 16;
/// Bytes of an encrypted payload that are not the body: key id, nonce,
/// inner encoding byte and tag.
pub const ENCRYPTED_OVERHEAD: usize = KEY_ID_SIZE + NONCE_SIZE + INNER_ENCODING_SIZE + TAG_SIZE;
/// Offset in the blob of an encrypted payload's ciphertext (inner
/// encoding byte first).
pub const CIPHERTEXT_OFFSET: usize = HEADER_SIZE + KEY_ID_SIZE + NONCE_SIZE;

/// The inner encoding byte of an encrypted chunk's plaintext.
pub const INNER_RAW: u8 = 0;
pub const INNER_ZSTD: u8 = 1;

/// How a blob's payload holds the data; the header's magic names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Raw,
    Zstd,
    Encrypted,
}

impl Encoding {
    pub fn magic(self) -> [u8; 8] {
        match self {
            Encoding::Raw => MAGIC_RAW,
            Encoding::Zstd => MAGIC_ZSTD,
            Encoding::Encrypted => MAGIC_ENCRYPTED,
        }
    }

    pub fn from_magic(magic: &[u8]) -> Option<Self> {
        [Encoding::Raw, Encoding::Zstd, Encoding::Encrypted]
            .into_iter()
            .find(|e| e.magic() == magic)
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Raw => "raw",
            Encoding::Zstd => "zstd",
            Encoding::Encrypted => "encrypted",
        })
    }
}

/// A decoded blob header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader {
    pub encoding: Encoding,
    pub crc: u32,
    pub raw_size: u32,
}

impl BlobHeader {
    /// The header for `payload` holding `raw_size` bytes of data.
    pub fn new(encoding: Encoding, raw_size: u32, payload: &[u8]) -> Self {
        BlobHeader {
            encoding,
            crc: crc_of(raw_size, payload),
            raw_size,
        }
    }

    /// The header of a raw blob of `data`.
    pub fn raw(data: &[u8]) -> Self {
        Self::new(Encoding::Raw, raw_size_of(data), data)
    }

    /// The header of a zstd blob of `raw_size` bytes whose frame is `frame`.
    pub fn zstd(raw_size: usize, frame: &[u8]) -> Self {
        Self::new(Encoding::Zstd, checked_raw_size(raw_size), frame)
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[..8].copy_from_slice(&self.encoding.magic());
        out[8..12].copy_from_slice(&self.crc.to_le_bytes());
        out[12..16].copy_from_slice(&self.raw_size.to_le_bytes());
        out
    }

    /// Parses the header at the start of `head`, for a blob of `total_len`
    /// bytes: checks the magic, the raw size and that the payload length
    /// fits the encoding. Needs only the first 16 bytes, so a server can
    /// read the header of a file before deciding to read the rest.
    pub fn decode(head: &[u8], total_len: u64) -> Result<Self> {
        if head.len() < HEADER_SIZE || total_len < HEADER_SIZE as u64 {
            return Err(Error::Truncated {
                len: total_len.min(head.len() as u64),
            });
        }
        let encoding = Encoding::from_magic(&head[..8]).ok_or_else(|| Error::BadMagic {
            magic: hex::encode(&head[..8]),
        })?;
        let h = BlobHeader {
            encoding,
            crc: u32::from_le_bytes([head[8], head[9], head[10], head[11]]),
            raw_size: u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
        };
        if h.raw_size == 0 || h.raw_size as usize > MAX_CHUNK_SIZE {
            return Err(Error::RawSize {
                raw_size: h.raw_size,
                max: MAX_CHUNK_SIZE,
            });
        }
        h.check_payload_len(total_len - HEADER_SIZE as u64)?;
        Ok(h)
    }

    fn check_payload_len(&self, n: u64) -> Result<()> {
        let raw = u64::from(self.raw_size);
        let overhead = ENCRYPTED_OVERHEAD as u64;
        let (fits, rule) = match self.encoding {
            Encoding::Raw => (n == raw, "raw: exactly the raw size"),
            Encoding::Zstd => (n > 0 && n < raw, "zstd: 1..raw size"),
            Encoding::Encrypted => (
                n > overhead && n <= overhead + raw,
                "encrypted: 38..=37 + raw size",
            ),
        };
        if fits {
            Ok(())
        } else {
            Err(Error::PayloadLength {
                encoding: self.encoding,
                payload_len: n,
                raw_size: self.raw_size,
                rule,
            })
        }
    }

    /// Checks `payload` against the CRC.
    pub fn check_crc(&self, payload: &[u8]) -> Result<()> {
        let computed = crc_of(self.raw_size, payload);
        if computed == self.crc {
            Ok(())
        } else {
            Err(Error::Crc {
                stored: self.crc,
                computed,
            })
        }
    }
}

/// CRC-32 of the raw size (u32 LE) and the payload: bytes 12.. of a blob.
pub fn crc_of(raw_size: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&raw_size.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Header and CRC of a whole blob: all a server can check without a key,
/// for every encoding.
pub fn check_structure(blob: &[u8]) -> Result<BlobHeader> {
    let h = BlobHeader::decode(blob, blob.len() as u64)?;
    h.check_crc(&blob[HEADER_SIZE..])?;
    Ok(h)
}

/// The plain data of an unencrypted blob whose data has SHA-256 `digest`:
/// header, CRC, decompression (bounded by the raw size) and digest are
/// all checked. An encrypted blob is [`Error::Encrypted`].
pub fn decode_plain(digest: &Digest, blob: &[u8]) -> Result<Vec<u8>> {
    let h = check_structure(blob)?;
    let payload = &blob[HEADER_SIZE..];
    let data = match h.encoding {
        Encoding::Raw => payload.to_vec(),
        Encoding::Zstd => decompress(payload, h.raw_size as usize)?,
        Encoding::Encrypted => {
            return Err(Error::Encrypted {
                key_id: encrypted_key_id(payload),
            });
        }
    };
    check_digest(digest, &data)?;
    Ok(data)
}

/// [`decode_plain`]'s checks without keeping the data: a raw payload is
/// hashed where it lies, not copied (the server's check of an upload,
/// verify). Returns the header.
pub fn verify_plain(digest: &Digest, blob: &[u8]) -> Result<BlobHeader> {
    let h = check_structure(blob)?;
    let payload = &blob[HEADER_SIZE..];
    match h.encoding {
        Encoding::Raw => check_digest(digest, payload)?,
        Encoding::Zstd => check_digest(digest, &decompress(payload, h.raw_size as usize)?)?,
        Encoding::Encrypted => {
            return Err(Error::Encrypted {
                key_id: encrypted_key_id(payload),
            });
        }
    }
    Ok(h)
}

/// The plain data of `payload`, read apart from its header (a server's
/// pread of a chunk file): a raw payload is returned as it is, a zstd
/// frame decompressed within the raw size. The payload must already have
/// passed [`BlobHeader::decode`] (length) and should have passed
/// [`BlobHeader::check_crc`]; the digest is the caller's to check
/// ([`check_digest`]).
pub fn decode_payload_plain(header: &BlobHeader, payload: Vec<u8>) -> Result<Vec<u8>> {
    header.check_payload_len(payload.len() as u64)?;
    match header.encoding {
        Encoding::Raw => Ok(payload),
        Encoding::Zstd => decompress(&payload, header.raw_size as usize),
        Encoding::Encrypted => Err(Error::Encrypted {
            key_id: encrypted_key_id(&payload),
        }),
    }
}

/// The key id of an encrypted payload (its first 8 bytes); the caller has
/// checked the length against the header.
pub fn encrypted_key_id(payload: &[u8]) -> KeyId {
    let mut id = [0u8; KEY_ID_SIZE];
    id.copy_from_slice(&payload[..KEY_ID_SIZE]);
    KeyId(id)
}

/// Checks that `data` has SHA-256 `expected`.
pub fn check_digest(expected: &Digest, data: &[u8]) -> Result<()> {
    let actual = Digest::of(data);
    if actual == *expected {
        Ok(())
    } else {
        Err(Error::DigestMismatch {
            expected: *expected,
            actual,
        })
    }
}

/// Decompresses one zstd frame into exactly `raw_size` bytes; the output
/// never grows beyond `raw_size` whatever the frame claims.
pub(crate) fn decompress(frame: &[u8], raw_size: usize) -> Result<Vec<u8>> {
    thread_local! {
        /// A zstd context per thread: setting one up costs more than
        /// decompressing a 64 KiB metadata chunk.
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    let err = |e: std::io::Error| Error::Decompress {
        reason: e.to_string(),
    };
    let data = DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        let d = match &mut *d {
            Some(d) => d,
            none => none.insert(zstd::bulk::Decompressor::new().map_err(err)?),
        };
        d.decompress(frame, raw_size).map_err(err)
    })?;
    if data.len() != raw_size {
        return Err(Error::DecompressedSize {
            got: data.len(),
            want: raw_size,
        });
    }
    Ok(data)
}

/// A raw (`hoardCR1`) blob of `data`.
///
/// # Panics
/// If `data` is empty or longer than `MAX_CHUNK_SIZE`: callers never make
/// such chunks, and a server checks an upload's size first.
pub fn encode_raw(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE + data.len());
    out.extend_from_slice(&BlobHeader::raw(data).encode());
    out.extend_from_slice(data);
    out
}

/// A plain blob of `data`: zstd (`hoardCZ1`) if `compression` finds it
/// worth it, else raw. The server uses this for raw uploads of old
/// clients.
///
/// # Panics
/// As [`encode_raw`].
pub fn encode_plain(data: &[u8], compression: Compression) -> Vec<u8> {
    let raw_size = raw_size_of(data);
    let mut out = Vec::with_capacity(HEADER_SIZE + data.len());
    out.resize(HEADER_SIZE, 0);
    let encoding = if compression.compress_into(data, &mut out) {
        Encoding::Zstd
    } else {
        out.extend_from_slice(data);
        Encoding::Raw
    };
    let h = BlobHeader::new(encoding, raw_size, &out[HEADER_SIZE..]);
    out[..HEADER_SIZE].copy_from_slice(&h.encode());
    out
}

/// The raw size field for `data`, which must be a valid chunk.
pub(crate) fn raw_size_of(data: &[u8]) -> u32 {
    checked_raw_size(data.len())
}

fn checked_raw_size(len: usize) -> u32 {
    assert!(
        (1..=MAX_CHUNK_SIZE).contains(&len),
        "chunk of {len} bytes is outside 1..={MAX_CHUNK_SIZE}"
    );
    len as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(n: usize) -> Vec<u8> {
        b"WARN request backup chunk id=3f2a\n"
            .iter()
            .cycle()
            .take(n)
            .copied()
            .collect()
    }

    /// A raw blob written from the layout table, byte by byte, as
    /// today's datastores hold them.
    #[test]
    fn golden_raw_blob() {
        let data = b"hello chunk";
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[11, 0, 0, 0]);
        crc.update(data);
        let mut blob = b"hoardCR1".to_vec();
        blob.extend_from_slice(&crc.finalize().to_le_bytes());
        blob.extend_from_slice(&[11, 0, 0, 0]);
        blob.extend_from_slice(data);
        assert_eq!(encode_raw(data), blob);
        assert_eq!(encode_plain(data, Compression::default()), blob);
        assert_eq!(decode_plain(&Digest::of(data), &blob).unwrap(), data);
        let h = check_structure(&blob).unwrap();
        assert_eq!(h.encoding, Encoding::Raw);
        assert_eq!(h.raw_size, 11);
        // The CRC of this exact blob, computed once: a change of the CRC
        // polynomial or of the covered bytes fails here.
        assert_eq!(&blob[8..12], &0xc09b_651du32.to_le_bytes());
    }

    /// A zstd blob as today's server writes it (header over an
    /// independently made level-3 frame).
    #[test]
    fn golden_zstd_blob() {
        let data = text(5000);
        let frame = zstd::bulk::compress(&data, 3).unwrap();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&5000u32.to_le_bytes());
        crc.update(&frame);
        let mut blob = b"hoardCZ1".to_vec();
        blob.extend_from_slice(&crc.finalize().to_le_bytes());
        blob.extend_from_slice(&[0x88, 0x13, 0, 0]);
        blob.extend_from_slice(&frame);
        assert_eq!(decode_plain(&Digest::of(&data), &blob).unwrap(), data);
        assert_eq!(check_structure(&blob).unwrap().encoding, Encoding::Zstd);
        // And what we write decodes the same way.
        let ours = encode_plain(&data, Compression::Zstd(3));
        assert_eq!(ours, blob);
    }

    #[test]
    fn header_checks() {
        let data = text(1000);
        let blob = encode_raw(&data);
        let len = blob.len() as u64;
        assert!(matches!(
            BlobHeader::decode(&blob[..15], len),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            BlobHeader::decode(&blob, len - 1),
            Err(Error::PayloadLength { .. })
        ));
        let mut bad = blob.clone();
        bad[0] = b'X';
        let err = BlobHeader::decode(&bad, len).unwrap_err();
        assert!(err.to_string().contains("586f617264435231"), "{err}");
        let mut huge = blob.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            BlobHeader::decode(&huge, 16 + u64::from(u32::MAX)),
            Err(Error::RawSize { .. })
        ));
        let mut zero = blob.clone();
        zero[12..16].fill(0);
        assert!(matches!(
            BlobHeader::decode(&zero, 16),
            Err(Error::RawSize { .. })
        ));
        // A zstd payload as long as the data is not a valid blob.
        let mut z = blob.clone();
        z[..8].copy_from_slice(&MAGIC_ZSTD);
        assert!(matches!(
            BlobHeader::decode(&z, len),
            Err(Error::PayloadLength { .. })
        ));
        // Encrypted payload bounds: 38..=37 + raw size.
        let mut e = blob[..16].to_vec();
        e[..8].copy_from_slice(&MAGIC_ENCRYPTED);
        assert!(BlobHeader::decode(&e, 16 + 37).is_err());
        assert!(BlobHeader::decode(&e, 16 + 38).is_ok());
        assert!(BlobHeader::decode(&e, 16 + 37 + 1000).is_ok());
        assert!(BlobHeader::decode(&e, 16 + 38 + 1000).is_err());
    }

    #[test]
    fn damage_is_found() {
        let data = text(5000);
        let d = Digest::of(&data);
        for blob in [
            encode_raw(&data),
            encode_plain(&data, Compression::default()),
        ] {
            for i in 8..blob.len() {
                let mut bad = blob.clone();
                bad[i] ^= 0x10;
                assert!(decode_plain(&d, &bad).is_err(), "byte {i}");
            }
            assert!(matches!(
                decode_plain(&Digest::of(b"other"), &blob),
                Err(Error::DigestMismatch { .. })
            ));
        }
        // A zstd frame of other data under a correct CRC: the size check.
        let frame = zstd::bulk::compress(&data[..100], 3).unwrap();
        let h = BlobHeader::zstd(5000, &frame);
        assert!(matches!(
            decode_payload_plain(&h, frame),
            Err(Error::DecompressedSize { .. })
        ));
        assert!(matches!(
            decode_payload_plain(&h, vec![1, 2, 3]),
            Err(Error::Decompress { .. })
        ));
    }

    #[test]
    fn two_part_read() {
        let data = text(70_000);
        let blob = encode_plain(&data, Compression::default());
        let h = BlobHeader::decode(&blob[..16], blob.len() as u64).unwrap();
        let payload = blob[16..].to_vec();
        h.check_crc(&payload).unwrap();
        let plain = decode_payload_plain(&h, payload).unwrap();
        check_digest(&Digest::of(&data), &plain).unwrap();
        assert_eq!(plain, data);
    }

    proptest! {
        #[test]
        fn plain_round_trip(data in prop::collection::vec(any::<u8>(), 1..70_000), rep in 0usize..4) {
            // Repeat a prefix to get compressible data as well.
            let data: Vec<u8> = if rep > 0 {
                data.iter().take(100).cycle().take(data.len()).copied().collect()
            } else {
                data
            };
            let blob = encode_plain(&data, Compression::default());
            prop_assert_eq!(decode_plain(&Digest::of(&data), &blob).unwrap(), data);
        }

        #[test]
        fn arbitrary_bytes_never_panic(blob in prop::collection::vec(any::<u8>(), 0..200), magic in 0usize..4) {
            let mut blob = blob;
            if blob.len() >= 8 && magic < 3 {
                blob[..8].copy_from_slice(&[MAGIC_RAW, MAGIC_ZSTD, MAGIC_ENCRYPTED][magic]);
            }
            let _ = check_structure(&blob);
            let _ = decode_plain(&Digest::of(&blob), &blob);
        }
    }
}
