//! The client's key: a 32-byte secret and the subkeys derived from it,
//! keyed digests and the encrypted (`hoardCE1`) chunk encoding.
//!
//! Subkeys are HKDF-SHA256 (RFC 5869) of the secret with salt
//! [`HKDF_SALT`], one info string each ([`INFO_AEAD`], [`INFO_DIGEST`],
//! [`INFO_SEAL`], [`INFO_FINGERPRINT`]), so no two uses share key bytes and
//! the fingerprint reveals nothing of the others.
//!
//! An encrypted chunk's payload (after the 16-byte blob header):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | key id: first 8 bytes of the key's fingerprint |
//! | 8 | 12 | nonce, random |
//! | 20 | 1 + m | AES-256-GCM ciphertext of: inner encoding (0 raw, 1 zstd) then the data or one zstd frame |
//! | 21 + m | 16 | GCM tag |
//!
//! AAD = blob magic `hoardCE1` || raw size (u32 LE) || key id || kind
//! byte: the header fields a server could alter are authenticated, and a
//! chunk encrypted as one [`Kind`] never opens as the other. The chunk's
//! name is the keyed digest BLAKE3-keyed(digest key, kind byte || data),
//! checked after decryption, so a chunk stored under another name is
//! refused too. The server sees sizes and the digest, never data.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use hmac::{Hmac, KeyInit};
use hoard_types::Digest;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::blob::{
    self, BlobHeader, CIPHERTEXT_OFFSET, Encoding, HEADER_SIZE, INNER_RAW, INNER_ZSTD, KEY_ID_SIZE,
    MAGIC_ENCRYPTED, NONCE_SIZE, TAG_SIZE,
};
use crate::compress::Compression;
use crate::error::{Error, Result};

/// Length of a key's secret.
pub const SECRET_SIZE: usize = 32;
/// Length of a key fingerprint.
pub const FINGERPRINT_SIZE: usize = 16;
pub const HKDF_SALT: &[u8] = b"hoard key v1";
pub const INFO_AEAD: &[u8] = b"chunk aes-256-gcm";
pub const INFO_DIGEST: &[u8] = b"chunk digest blake3";
pub const INFO_SEAL: &[u8] = b"seal hmac-sha256";
pub const INFO_FINGERPRINT: &[u8] = b"fingerprint";
pub const INFO_CHUNKER: &[u8] = b"chunker gear";
/// Length of the AAD of an encrypted chunk.
const AAD_SIZE: usize = 8 + 4 + KEY_ID_SIZE + 1;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// What a chunk holds; part of its keyed digest and of its AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Data: a disk image's or a tree archive's data stream.
    Chunk = 1,
    /// A tree archive's metadata stream (names, attributes, the layout).
    MetaChunk = 2,
}

impl Kind {
    pub fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Chunk),
            2 => Some(Kind::MetaChunk),
            _ => None,
        }
    }
}

/// A key's public name: 16 bytes derived from the secret, shown as 8
/// groups of 4 hex digits separated by ':'.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyFingerprint(pub [u8; FINGERPRINT_SIZE]);

/// The key id stored in every encrypted chunk: the first 8 bytes of the
/// key's fingerprint, shown as the fingerprint's first 4 groups.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_SIZE]);

fn write_groups(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for (i, pair) in bytes.chunks(2).enumerate() {
        if i > 0 {
            f.write_str(":")?;
        }
        f.write_str(&hex::encode(pair))?;
    }
    Ok(())
}

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_groups(f, &self.0)
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyFingerprint({self})")
    }
}

impl FromStr for KeyFingerprint {
    type Err = Error;

    /// Parses the `Display` form; case does not matter.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::FingerprintParse(s.to_string());
        let groups: Vec<&str> = s.trim().split(':').collect();
        if groups.len() != FINGERPRINT_SIZE / 2 || groups.iter().any(|g| g.len() != 4) {
            return Err(bad());
        }
        let mut out = [0u8; FINGERPRINT_SIZE];
        hex::decode_to_slice(groups.concat(), &mut out).map_err(|_| bad())?;
        Ok(KeyFingerprint(out))
    }
}

impl KeyFingerprint {
    pub fn key_id(&self) -> KeyId {
        let mut id = [0u8; KEY_ID_SIZE];
        id.copy_from_slice(&self.0[..KEY_ID_SIZE]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_groups(f, &self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The client's key. Holds the secret (wiped on drop) and the subkeys
/// ready to use; `Debug` shows only the fingerprint.
pub struct Key {
    secret: Zeroizing<[u8; SECRET_SIZE]>,
    aead: LessSafeKey,
    /// HMAC states with the key already absorbed: cloning one costs a
    /// copy, not two SHA-256 blocks.
    /// BLAKE3 with the digest key absorbed: cloning it costs a copy.
    digest_hasher: blake3::Hasher,
    pub(crate) seal_mac: HmacSha256,
    fingerprint: KeyFingerprint,
    rng: SystemRandom,
    /// Keyed digests of all-zero chunks, by kind and length: an image's
    /// empty space is many chunks of the same few lengths.
    zero_digests: Mutex<HashMap<(Kind, usize), Digest>>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.fingerprint)
    }
}

/// Output length for ring's HKDF.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 expand of `prk` with `info` into `out`.
pub(crate) fn hkdf_fill(prk: &hkdf::Prk, info: &[u8], out: &mut [u8]) {
    prk.expand(&[info], Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output of at most 32 bytes");
}

/// `len` random bytes from the operating system.
///
/// # Panics
/// If the OS has no randomness to give (getrandom fails): nothing safe
/// can be done without it.
pub(crate) fn random<const N: usize>(rng: &SystemRandom) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill(&mut out)
        .expect("the OS random number generator failed");
    out
}

impl Key {
    /// A new random key.
    pub fn generate() -> Key {
        let secret = Zeroizing::new(random::<SECRET_SIZE>(&SystemRandom::new()));
        Key::from_secret(&secret)
    }

    /// The key with this secret; derives and prepares every subkey.
    pub fn from_secret(secret: &[u8; SECRET_SIZE]) -> Key {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
        let mut sub = Zeroizing::new([0u8; 32]);
        hkdf_fill(&prk, INFO_AEAD, &mut *sub);
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &*sub).expect("AES-256 key of 32 bytes"),
        );
        hkdf_fill(&prk, INFO_DIGEST, &mut *sub);
        let digest_hasher = blake3::Hasher::new_keyed(&sub);
        hkdf_fill(&prk, INFO_SEAL, &mut *sub);
        let seal_mac = HmacSha256::new_from_slice(&*sub).expect("HMAC takes any key length");
        let mut fingerprint = [0u8; FINGERPRINT_SIZE];
        hkdf_fill(&prk, INFO_FINGERPRINT, &mut fingerprint);
        Key {
            secret: Zeroizing::new(*secret),
            aead,
            digest_hasher,
            seal_mac,
            fingerprint: KeyFingerprint(fingerprint),
            rng: SystemRandom::new(),
            zero_digests: Mutex::default(),
        }
    }

    /// The secret, for wrapping it into a key file or recovery blob.
    pub(crate) fn secret(&self) -> &[u8; SECRET_SIZE] {
        &self.secret
    }

    pub fn fingerprint(&self) -> KeyFingerprint {
        self.fingerprint
    }

    pub fn key_id(&self) -> KeyId {
        self.fingerprint.key_id()
    }

    /// The gear table of this key's content-defined chunker: 256 u64 LE
    /// from HKDF (info `chunker gear`), so that chunk boundaries, and so
    /// chunk sizes, depend on the key (docs/encryption.md, "Key
    /// hierarchy").
    pub fn chunker_gear(&self) -> [u64; 256] {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&*self.secret);
        let mut bytes = Zeroizing::new([0u8; 256 * 8]);
        prk.expand(&[INFO_CHUNKER], Len(bytes.len()))
            .and_then(|okm| okm.fill(&mut *bytes))
            .expect("HKDF output of 2048 bytes (at most 8160)");
        let mut table = [0u64; 256];
        for (t, b) in table.iter_mut().zip(bytes.chunks_exact(8)) {
            *t = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        table
    }

    /// The keyed digest of a chunk: BLAKE3 keyed with the digest key, of
    /// kind || data. Names the chunk in an encrypted backup; without the
    /// key nobody can tell which known data a chunk holds.
    pub fn digest(&self, kind: Kind, plain: &[u8]) -> Digest {
        let mut h = self.digest_hasher.clone();
        h.update(&[kind as u8]);
        h.update(plain);
        Digest(*h.finalize().as_bytes())
    }

    /// The keyed digest of `len` zero bytes, computed once per kind and
    /// length.
    pub fn zero_digest(&self, kind: Kind, len: usize) -> Digest {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let cache = || self.zero_digests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = cache().get(&(kind, len)) {
            return *d;
        }
        let mut h = self.digest_hasher.clone();
        h.update(&[kind as u8]);
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len());
            h.update(&ZEROS[..n]);
            left -= n;
        }
        let d = Digest(*h.finalize().as_bytes());
        cache().insert((kind, len), d);
        d
    }

    /// The encrypted (`hoardCE1`) blob of `plain`, header included:
    /// compressed first when `compression` finds it worth it, then
    /// encrypted in place in the one output buffer.
    ///
    /// # Panics
    /// If `plain` is empty or longer than `MAX_CHUNK_SIZE`, or the OS
    /// random number generator fails.
    pub fn encrypt(&self, kind: Kind, plain: &[u8], compression: Compression) -> Vec<u8> {
        let raw_size = blob::raw_size_of(plain);
        let body_at = CIPHERTEXT_OFFSET + 1;
        let mut out = Vec::with_capacity(body_at + plain.len() + TAG_SIZE);
        out.resize(body_at, 0);
        out[CIPHERTEXT_OFFSET] = if compression.compress_into(plain, &mut out) {
            INNER_ZSTD
        } else {
            out.extend_from_slice(plain);
            INNER_RAW
        };
        let key_id = self.key_id();
        let nonce = random::<NONCE_SIZE>(&self.rng);
        out[..8].copy_from_slice(&MAGIC_ENCRYPTED);
        out[12..16].copy_from_slice(&raw_size.to_le_bytes());
        out[HEADER_SIZE..HEADER_SIZE + KEY_ID_SIZE].copy_from_slice(&key_id.0);
        out[HEADER_SIZE + KEY_ID_SIZE..CIPHERTEXT_OFFSET].copy_from_slice(&nonce);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(raw_size, &key_id, kind)),
                &mut out[CIPHERTEXT_OFFSET..],
            )
            .expect("a chunk is far below GCM's length limit");
        out.extend_from_slice(tag.as_ref());
        let crc = blob::crc_of(raw_size, &out[HEADER_SIZE..]);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The plain data of an encrypted blob of `kind` named `digest`.
    /// Checks, in order: header and CRC (damage), key id (another key),
    /// the GCM tag (tampering, or another kind), the inner encoding and
    /// decompression within the raw size, and that the data's keyed digest
    /// is `digest` (a chunk stored under another name).
    pub fn decrypt(&self, kind: Kind, digest: &Digest, blob: &[u8]) -> Result<Vec<u8>> {
        let h = blob::check_structure(blob)?;
        if h.encoding != Encoding::Encrypted {
            return Err(Error::NotEncrypted { digest: *digest });
        }
        let key_id = blob::encrypted_key_id(&blob[HEADER_SIZE..]);
        if key_id != self.key_id() {
            return Err(Error::WrongKey {
                wanted: key_id,
                have: self.fingerprint,
            });
        }
        let mut nonce = [0u8; NONCE_SIZE];
        nonce.copy_from_slice(&blob[HEADER_SIZE + KEY_ID_SIZE..CIPHERTEXT_OFFSET]);
        let mut buf = blob[CIPHERTEXT_OFFSET..].to_vec();
        let plain_len = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(h.raw_size, &key_id, kind)),
                &mut buf,
            )
            .map_err(|_| Error::Tampered { digest: *digest })?
            .len();
        buf.truncate(plain_len);
        let data = decode_inner(digest, &h, buf)?;
        let actual = self.digest(kind, &data);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                expected: *digest,
                actual,
            });
        }
        Ok(data)
    }
}

/// The AAD of an encrypted chunk.
fn aad(raw_size: u32, key_id: &KeyId, kind: Kind) -> [u8; AAD_SIZE] {
    let mut a = [0u8; AAD_SIZE];
    a[..8].copy_from_slice(&MAGIC_ENCRYPTED);
    a[8..12].copy_from_slice(&raw_size.to_le_bytes());
    a[12..20].copy_from_slice(&key_id.0);
    a[20] = kind as u8;
    a
}

/// The data of a decrypted plaintext: inner encoding byte, then the data
/// or a zstd frame shorter than it.
fn decode_inner(digest: &Digest, h: &BlobHeader, mut plain: Vec<u8>) -> Result<Vec<u8>> {
    let raw_size = h.raw_size as usize;
    let bad = |reason: String| Error::BadInner {
        digest: *digest,
        reason,
    };
    let Some((&inner, body)) = plain.split_first() else {
        return Err(bad("empty plaintext".into()));
    };
    match inner {
        INNER_RAW if body.len() == raw_size => {
            plain.remove(0);
            Ok(plain)
        }
        INNER_ZSTD if !body.is_empty() && body.len() < raw_size => {
            blob::decompress(body, raw_size).map_err(|e| bad(e.to_string()))
        }
        INNER_RAW | INNER_ZSTD => Err(bad(format!(
            "inner body of {} bytes does not fit a raw size of {raw_size}",
            body.len()
        ))),
        other => Err(bad(format!("unknown inner encoding {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::decode_plain;

    fn text(n: usize) -> Vec<u8> {
        b"INFO srv12 backup of chunk index id=9f3e2a t=771\n"
            .iter()
            .cycle()
            .take(n)
            .copied()
            .collect()
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    fn key(n: u8) -> Key {
        Key::from_secret(&[n; 32])
    }

    #[test]
    fn fingerprint_format_and_parse() {
        let k = key(1);
        let s = k.fingerprint().to_string();
        assert_eq!(s.len(), 39);
        assert_eq!(s.matches(':').count(), 7);
        assert_eq!(s.parse::<KeyFingerprint>().unwrap(), k.fingerprint());
        assert_eq!(
            s.to_uppercase().parse::<KeyFingerprint>().unwrap(),
            k.fingerprint()
        );
        assert!(s.starts_with(&k.key_id().to_string()));
        assert!(s[..38].parse::<KeyFingerprint>().is_err());
        assert!(s.replace(':', "").parse::<KeyFingerprint>().is_err());
        assert!(format!("{k:?}").contains(&s));
        assert_ne!(key(2).fingerprint(), k.fingerprint());
    }

    /// Subkey derivation is part of the format: a second implementation
    /// must derive the same fingerprint and digests from the same secret.
    #[test]
    fn derivation_vectors() {
        let k = key(0);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"hoard key v1").extract(&[0u8; 32]);
        let mut fp = [0u8; 16];
        hkdf_fill(&prk, b"fingerprint", &mut fp);
        assert_eq!(k.fingerprint().0, fp);
        let mut dk = [0u8; 32];
        hkdf_fill(&prk, b"chunk digest blake3", &mut dk);
        let mut h = blake3::Hasher::new_keyed(&dk);
        h.update(&[1]);
        h.update(b"abc");
        assert_eq!(k.digest(Kind::Chunk, b"abc").0, *h.finalize().as_bytes());
    }

    /// Values computed from docs/encryption.md by a separate program
    /// (Python: hmac, hashlib, blake3, `cryptography`'s AESGCM) for the all-zero
    /// secret: a second implementation gets these or is wrong, and so is
    /// a change here.
    #[test]
    fn golden_vectors_from_the_spec() {
        let k = key(0);
        assert_eq!(
            k.fingerprint().to_string(),
            "2198:c6c4:6cfc:b8d4:97b8:766f:2091:edb5"
        );
        assert_eq!(k.key_id().to_string(), "2198:c6c4:6cfc:b8d4");
        assert_eq!(
            k.digest(Kind::Chunk, b"abc").to_hex(),
            "2c9011820a02138d022fba92bc9e6a35b31cf54869ebe1ce02f572755948daff"
        );
        assert_eq!(
            k.digest(Kind::MetaChunk, b"abc").to_hex(),
            "2172b70bcff836de567687a7dc3d07ac9af3fea7034ae1d20f3f916226d70d86"
        );
        assert_eq!(
            hex::encode(k.seal(b"abc")),
            "7aa85d2035fc9ab495ea44c03d9edf85bd68bd24548cdac2967553b7b1f5835e"
        );
        // "hello encrypted chunk", kind Chunk, raw inner encoding, nonce
        // 00 01 .. 0b.
        let blob = hex::decode(
            "686f617264434531db61857b150000002198c6c46cfcb8d4000102030405060708090a0b\
             8e9f7fda2ae385b4010493bedbb08ce9db58d4f2953c6fe8c72c5499b4f010d7803d56cbe55f",
        )
        .unwrap();
        let data = b"hello encrypted chunk";
        let d = k.digest(Kind::Chunk, data);
        assert_eq!(k.decrypt(Kind::Chunk, &d, &blob).unwrap(), data);
    }

    #[test]
    fn keyed_digests_differ() {
        let (a, b) = (key(1), key(2));
        let data = b"some data";
        let d = a.digest(Kind::Chunk, data);
        assert_ne!(d, Digest::of(data));
        assert_ne!(d, a.digest(Kind::MetaChunk, data));
        assert_ne!(d, b.digest(Kind::Chunk, data));
        assert_eq!(d, a.digest(Kind::Chunk, data));
    }

    #[test]
    fn zero_digest_matches() {
        let k = key(3);
        for len in [1, 4096, 100_000, (64 << 10) + 1] {
            for kind in [Kind::Chunk, Kind::MetaChunk] {
                assert_eq!(k.zero_digest(kind, len), k.digest(kind, &vec![0; len]));
                assert_eq!(k.zero_digest(kind, len), k.digest(kind, &vec![0; len]));
            }
        }
    }

    #[test]
    fn chunker_gear_is_keyed() {
        let a = Key::from_secret(&[0u8; 32]).chunker_gear();
        let b = Key::from_secret(&[1u8; 32]).chunker_gear();
        assert_eq!(a, Key::from_secret(&[0u8; 32]).chunker_gear());
        assert_ne!(a, b);
        // Distinct values: a table with repeats would weaken the hash.
        let mut sorted = a.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }

    #[test]
    fn round_trips() {
        let k = key(4);
        for data in [text(100), text(100_000), noise(100_000), vec![0; 1 << 20]] {
            for c in [
                Compression::None,
                Compression::default(),
                Compression::Zstd(-3),
            ] {
                for kind in [Kind::Chunk, Kind::MetaChunk] {
                    let blob = k.encrypt(kind, &data, c);
                    assert_eq!(&blob[..8], b"hoardCE1");
                    let d = k.digest(kind, &data);
                    assert_eq!(k.decrypt(kind, &d, &blob).unwrap(), data);
                    let h = blob::check_structure(&blob).unwrap();
                    assert_eq!(h.raw_size as usize, data.len());
                }
            }
        }
        // Compressible data shrinks, and identical chunks encrypt
        // differently (random nonce).
        let data = text(100_000);
        let a = k.encrypt(Kind::Chunk, &data, Compression::default());
        let b = k.encrypt(Kind::Chunk, &data, Compression::default());
        assert!(a.len() < 10_000);
        assert_ne!(a, b);
        let raw = k.encrypt(Kind::Chunk, &data, Compression::None);
        assert_eq!(raw.len(), 16 + 37 + data.len());
    }

    #[test]
    fn server_sees_only_structure() {
        let k = key(5);
        let data = text(5000);
        let blob = k.encrypt(Kind::Chunk, &data, Compression::default());
        match decode_plain(&Digest::of(&data), &blob) {
            Err(Error::Encrypted { key_id }) => assert_eq!(key_id, k.key_id()),
            other => panic!("{other:?}"),
        }
        let err = decode_plain(&Digest::of(&data), &blob).unwrap_err();
        assert!(err.to_string().contains("server cannot read"), "{err}");
        assert!(!blob.windows(20).any(|w| data.windows(20).any(|d| d == w)));
    }

    /// Every region of an encrypted blob, one bit flipped: found, by the
    /// header checks, the CRC or the tag.
    #[test]
    fn every_corruption_is_detected() {
        let k = key(6);
        for data in [text(3000), noise(3000)] {
            let blob = k.encrypt(Kind::Chunk, &data, Compression::default());
            let d = k.digest(Kind::Chunk, &data);
            for i in 0..blob.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bad = blob.clone();
                    bad[i] ^= bit;
                    let err = k.decrypt(Kind::Chunk, &d, &bad).unwrap_err();
                    let region = match i {
                        0..8 => "magic",
                        8..12 => "crc",
                        12..16 => "raw size",
                        16..24 => "key id",
                        24..36 => "nonce",
                        _ if i >= blob.len() - 16 => "tag",
                        _ => "ciphertext",
                    };
                    let ok = match region {
                        "magic" => matches!(err, Error::BadMagic { .. }),
                        "raw size" => matches!(
                            err,
                            Error::Crc { .. } | Error::PayloadLength { .. } | Error::RawSize { .. }
                        ),
                        _ => matches!(err, Error::Crc { .. }),
                    };
                    assert!(ok, "{region} byte {i}: {err}");
                }
            }
            // With the CRC recomputed (a deliberate forger), the AEAD
            // still refuses every change behind the header.
            for i in 12..blob.len() {
                let mut bad = blob.clone();
                bad[i] ^= 0x04;
                let crc = blob::crc_of(
                    u32::from_le_bytes(bad[12..16].try_into().unwrap()),
                    &bad[16..],
                );
                bad[8..12].copy_from_slice(&crc.to_le_bytes());
                let err = k.decrypt(Kind::Chunk, &d, &bad).unwrap_err();
                assert!(
                    matches!(
                        err,
                        Error::Tampered { .. }
                            | Error::WrongKey { .. }
                            | Error::PayloadLength { .. }
                            | Error::RawSize { .. }
                    ),
                    "byte {i}: {err}"
                );
            }
        }
    }

    #[test]
    fn kind_name_and_key_are_bound() {
        let (k, other) = (key(7), key(8));
        let data = text(2000);
        let blob = k.encrypt(Kind::Chunk, &data, Compression::default());
        let d = k.digest(Kind::Chunk, &data);
        // Read back as metadata: the AAD differs.
        let dm = k.digest(Kind::MetaChunk, &data);
        assert!(matches!(
            k.decrypt(Kind::MetaChunk, &dm, &blob),
            Err(Error::Tampered { .. })
        ));
        assert!(matches!(
            k.decrypt(Kind::MetaChunk, &d, &blob),
            Err(Error::Tampered { .. })
        ));
        // Stored under another chunk's name.
        let d2 = k.digest(Kind::Chunk, b"other");
        assert!(matches!(
            k.decrypt(Kind::Chunk, &d2, &blob),
            Err(Error::DigestMismatch { .. })
        ));
        // Another key.
        match other.decrypt(Kind::Chunk, &d, &blob) {
            Err(Error::WrongKey { wanted, have }) => {
                assert_eq!(wanted, k.key_id());
                assert_eq!(have, other.fingerprint());
            }
            r => panic!("{r:?}"),
        }
        // A plain blob given to a key.
        let plain = blob::encode_raw(&data);
        assert!(matches!(
            k.decrypt(Kind::Chunk, &d, &plain),
            Err(Error::NotEncrypted { .. })
        ));
    }

    /// Hand-made plaintexts with a bad inner encoding, correctly sealed:
    /// refused by the inner checks.
    #[test]
    fn bad_inner_encodings() {
        let k = key(9);
        let data = text(1000);
        let d = k.digest(Kind::Chunk, &data);
        let seal = |inner: &[u8]| {
            let mut out = vec![0u8; CIPHERTEXT_OFFSET];
            out.extend_from_slice(inner);
            out[..8].copy_from_slice(&MAGIC_ENCRYPTED);
            out[12..16].copy_from_slice(&1000u32.to_le_bytes());
            out[16..24].copy_from_slice(&k.key_id().0);
            let tag = k
                .aead
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([0; 12]),
                    Aad::from(aad(1000, &k.key_id(), Kind::Chunk)),
                    &mut out[CIPHERTEXT_OFFSET..],
                )
                .unwrap();
            out.extend_from_slice(tag.as_ref());
            let crc = blob::crc_of(1000, &out[16..]);
            out[8..12].copy_from_slice(&crc.to_le_bytes());
            k.decrypt(Kind::Chunk, &d, &out)
        };
        let mut ok = vec![INNER_RAW];
        ok.extend_from_slice(&data);
        assert_eq!(seal(&ok).unwrap(), data);
        let mut unknown = ok.clone();
        unknown[0] = 7;
        assert!(matches!(seal(&unknown), Err(Error::BadInner { .. })));
        let mut short = ok.clone();
        short.pop();
        assert!(matches!(seal(&short), Err(Error::BadInner { .. })));
        let frame = zstd::bulk::compress(&data[..500], 1).unwrap();
        let mut z = vec![INNER_ZSTD];
        z.extend_from_slice(&frame);
        assert!(matches!(seal(&z), Err(Error::BadInner { .. })));
        assert!(matches!(
            seal(&[INNER_ZSTD, 1, 2, 3]),
            Err(Error::BadInner { .. })
        ));
    }
}
