//! What the client does to every chunk: name it, encode it for upload,
//! decode what it downloads. One [`ChunkCodec`] per backup or restore,
//! with or without a key; a backup is either all plain or all encrypted,
//! never a mix, so a server cannot slip plain chunks into an encrypted
//! backup.

use std::sync::Arc;

use hoard_types::Digest;

use crate::blob::{self, Encoding};
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::key::{Key, Kind};

#[derive(Debug, Clone)]
pub struct ChunkCodec {
    compression: Compression,
    key: Option<Arc<Key>>,
}

impl ChunkCodec {
    /// Without a key: SHA-256 names, `hoardCR1`/`hoardCZ1` blobs.
    pub fn plain(compression: Compression) -> Self {
        ChunkCodec {
            compression,
            key: None,
        }
    }

    /// With a key: keyed names, `hoardCE1` blobs.
    pub fn encrypted(key: Arc<Key>, compression: Compression) -> Self {
        ChunkCodec {
            compression,
            key: Some(key),
        }
    }

    pub fn new(compression: Compression, key: Option<Arc<Key>>) -> Self {
        ChunkCodec { compression, key }
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    pub fn key(&self) -> Option<&Arc<Key>> {
        self.key.as_ref()
    }

    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The chunk's name: SHA-256 of the data without a key, the keyed
    /// digest of kind and data with one. Without a key, `kind` plays no
    /// part (plain names are what existing datastores hold).
    pub fn digest(&self, kind: Kind, plain: &[u8]) -> Digest {
        match &self.key {
            None => Digest::of(plain),
            Some(k) => k.digest(kind, plain),
        }
    }

    /// The digest of `len` zero bytes, cached per length.
    pub fn zero_digest(&self, kind: Kind, len: usize) -> Digest {
        match &self.key {
            None => hoard_types::zero::zero_digest(len),
            Some(k) => k.zero_digest(kind, len),
        }
    }

    /// The blob to upload for `plain`.
    ///
    /// # Panics
    /// If `plain` is empty or longer than `MAX_CHUNK_SIZE`.
    pub fn encode(&self, kind: Kind, plain: &[u8]) -> Vec<u8> {
        match &self.key {
            None => blob::encode_plain(plain, self.compression),
            Some(k) => k.encrypt(kind, plain, self.compression),
        }
    }

    /// The data of a downloaded blob named `digest`, every check done. A
    /// plain codec refuses encrypted blobs ([`Error::NoKey`]); an encrypted
    /// one refuses plain blobs ([`Error::NotEncrypted`]).
    pub fn decode(&self, kind: Kind, digest: &Digest, blob: &[u8]) -> Result<Vec<u8>> {
        match &self.key {
            None => blob::decode_plain(digest, blob).map_err(|e| match e {
                Error::Encrypted { key_id } => Error::NoKey { key_id },
                e => e,
            }),
            Some(k) => k.decrypt(kind, digest, blob),
        }
    }

    /// The encoding of a blob, from its header alone (for a progress
    /// display or a plain/encrypted consistency check).
    pub fn encoding_of(blob: &[u8]) -> Result<Encoding> {
        Ok(blob::BlobHeader::decode(blob, blob.len() as u64)?.encoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codecs() -> (ChunkCodec, ChunkCodec) {
        let key = Arc::new(Key::from_secret(&[42; 32]));
        (
            ChunkCodec::plain(Compression::default()),
            ChunkCodec::encrypted(key, Compression::default()),
        )
    }

    #[test]
    fn plain_and_encrypted_do_not_mix() {
        let (plain, enc) = codecs();
        let data = vec![b'x'; 3000];
        let pd = plain.digest(Kind::Chunk, &data);
        assert_eq!(pd, Digest::of(&data));
        let ed = enc.digest(Kind::Chunk, &data);
        assert_ne!(pd, ed);
        let pb = plain.encode(Kind::Chunk, &data);
        let eb = enc.encode(Kind::Chunk, &data);
        assert_eq!(ChunkCodec::encoding_of(&pb).unwrap(), Encoding::Zstd);
        assert_eq!(ChunkCodec::encoding_of(&eb).unwrap(), Encoding::Encrypted);
        assert_eq!(plain.decode(Kind::Chunk, &pd, &pb).unwrap(), data);
        assert_eq!(enc.decode(Kind::Chunk, &ed, &eb).unwrap(), data);
        let err = plain.decode(Kind::Chunk, &ed, &eb).unwrap_err();
        assert!(matches!(err, Error::NoKey { .. }), "{err}");
        assert!(err.to_string().contains("no key was given"), "{err}");
        let err = enc.decode(Kind::Chunk, &pd, &pb).unwrap_err();
        assert!(matches!(err, Error::NotEncrypted { .. }), "{err}");
    }

    #[test]
    fn shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ChunkCodec>();
        send_sync::<Key>();
    }

    #[test]
    fn zero_digests() {
        let (plain, enc) = codecs();
        for len in [1, 4 << 20] {
            let zeros = vec![0u8; len];
            assert_eq!(
                plain.zero_digest(Kind::Chunk, len),
                plain.digest(Kind::Chunk, &zeros)
            );
            assert_eq!(
                enc.zero_digest(Kind::MetaChunk, len),
                enc.digest(Kind::MetaChunk, &zeros)
            );
        }
    }

    fn data_strategy() -> impl Strategy<Value = Vec<u8>> {
        (prop::collection::vec(any::<u8>(), 1..70_000), 0usize..3).prop_map(|(data, mode)| {
            match mode {
                // Incompressible.
                0 => data,
                // Compressible: a short pattern repeated.
                1 => data
                    .iter()
                    .take(37)
                    .cycle()
                    .take(data.len())
                    .copied()
                    .collect(),
                // Mostly zeros.
                _ => {
                    let mut z = vec![0u8; data.len()];
                    z[..data.len().min(100)].copy_from_slice(&data[..data.len().min(100)]);
                    z
                }
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip(data in data_strategy(), meta in any::<bool>()) {
            let kind = if meta { Kind::MetaChunk } else { Kind::Chunk };
            let (plain, enc) = codecs();
            for c in [&plain, &enc] {
                let blob = c.encode(kind, &data);
                let d = c.digest(kind, &data);
                prop_assert_eq!(c.decode(kind, &d, &blob).unwrap(), data.clone());
            }
        }

        #[test]
        fn arbitrary_blobs_never_panic(
            body in prop::collection::vec(any::<u8>(), 0..300),
            magic in 0usize..4,
            raw_size in 0u32..400,
        ) {
            let mut blob = body;
            if blob.len() >= 16 && magic < 3 {
                blob[..8].copy_from_slice(&[blob::MAGIC_RAW, blob::MAGIC_ZSTD, blob::MAGIC_ENCRYPTED][magic]);
                blob[12..16].copy_from_slice(&raw_size.to_le_bytes());
                let crc = blob::crc_of(raw_size, &blob[16..]);
                blob[8..12].copy_from_slice(&crc.to_le_bytes());
            }
            let (plain, enc) = codecs();
            if magic == 2 && blob.len() >= 24 {
                // Past the key id check, into the AEAD.
                blob[16..24].copy_from_slice(&enc.key().unwrap().key_id().0);
                let crc = blob::crc_of(raw_size, &blob[16..]);
                blob[8..12].copy_from_slice(&crc.to_le_bytes());
            }
            let d = Digest::of(&blob);
            prop_assert!(plain.decode(Kind::Chunk, &d, &blob).is_err());
            prop_assert!(enc.decode(Kind::Chunk, &d, &blob).is_err());
        }
    }
}
