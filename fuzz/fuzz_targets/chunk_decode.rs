//! A chunk blob as a server or client receives it, from a hostile peer or
//! a damaged disk: any bytes give data or an error, never a panic and
//! never an allocation the header's bounds do not allow.
//!
//! The first input byte picks a fix-up so the fuzzer gets past the cheap
//! checks: bit 0 writes the fixed key's id into the key id field, bit 1
//! recomputes the CRC; the rest is the blob.
#![no_main]

use hoard_codec::blob::{self, BlobHeader, HEADER_SIZE, KEY_ID_SIZE};
use hoard_codec::{ChunkCodec, Compression, Key, Kind};
use hoard_types::Digest;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn key() -> &'static Arc<Key> {
    static KEY: OnceLock<Arc<Key>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(Key::from_secret(&[7u8; 32])))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut b = rest.to_vec();
    if flags & 1 != 0 && b.len() >= HEADER_SIZE + KEY_ID_SIZE {
        b[HEADER_SIZE..HEADER_SIZE + KEY_ID_SIZE].copy_from_slice(&key().key_id().0);
    }
    if flags & 2 != 0 && b.len() >= HEADER_SIZE {
        let raw_size = u32::from_le_bytes(b[12..16].try_into().unwrap());
        let crc = blob::crc_of(raw_size, &b[HEADER_SIZE..]);
        b[8..12].copy_from_slice(&crc.to_le_bytes());
    }
    let digest = Digest::of(&b);
    let _ = blob::check_structure(&b);
    if let Ok(h) = BlobHeader::decode(&b, b.len() as u64) {
        let _ = h.check_crc(&b[HEADER_SIZE..]);
        let _ = blob::decode_payload_plain(&h, b[HEADER_SIZE..].to_vec());
    }
    if let Ok(plain) = blob::decode_plain(&digest, &b) {
        // Only possible for a blob whose data hashes to the digest of the
        // whole blob: never, but if so it must be within a chunk's size.
        assert!(plain.len() <= hoard_types::MAX_CHUNK_SIZE);
    }
    for kind in [Kind::Chunk, Kind::MetaChunk] {
        let _ = key().decrypt(kind, &digest, &b);
        let codec = ChunkCodec::encrypted(key().clone(), Compression::default());
        let _ = codec.decode(kind, &digest, &b);
        let _ = ChunkCodec::plain(Compression::default()).decode(kind, &digest, &b);
    }
});
