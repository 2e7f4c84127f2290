//! SHA-256 content digests: the address of a chunk.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// Size of a SHA-256 digest in bytes.
pub const DIGEST_SIZE: usize = 32;

/// The SHA-256 digest of a chunk's plain data; the chunk's name in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; DIGEST_SIZE]);

impl Digest {
    /// Hashes `data` (SHA-NI accelerated where the CPU has it).
    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    /// Reads a digest from the first 32 bytes of `bytes`.
    ///
    /// # Panics
    /// If `bytes` is shorter than 32 bytes; callers check lengths first.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut d = [0u8; DIGEST_SIZE];
        d.copy_from_slice(&bytes[..DIGEST_SIZE]);
        Digest(d)
    }

    pub fn as_bytes(&self) -> &[u8; DIGEST_SIZE] {
        &self.0
    }

    /// Lower-case hex, the form used in file names and messages.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a SHA-256 digest (64 hex digits): {0:?}")]
pub struct DigestParseError(pub String);

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut d = [0u8; DIGEST_SIZE];
        hex::decode_to_slice(s, &mut d).map_err(|_| DigestParseError(s.to_string()))?;
        Ok(Digest(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // FIPS 180-2 test vector "abc".
        assert_eq!(
            Digest::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trip() {
        let d = Digest::of(b"hoard");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        assert!("zz".parse::<Digest>().is_err());
    }
}
