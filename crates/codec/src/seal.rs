//! The seal of a snapshot manifest: HMAC-SHA256 with the key's seal
//! subkey over [`SEAL_PREFIX`] || body. A server that alters a sealed
//! manifest (drops a file, points an entry at another chunk) cannot
//! recompute the seal without the key. What the body holds is the
//! client's business; this module only computes and checks the MAC.

use hmac::Mac;

use crate::error::{Error, Result};
use crate::key::Key;

/// Domain separation: no other HMAC made with this subkey starts so.
pub const SEAL_PREFIX: &[u8] = b"hoard-seal-1";
pub const SEAL_SIZE: usize = 32;

impl Key {
    /// HMAC-SHA256(seal key, `hoard-seal-1` || body).
    pub fn seal(&self, body: &[u8]) -> [u8; SEAL_SIZE] {
        let mut mac = self.seal_mac.clone();
        mac.update(SEAL_PREFIX);
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// Checks `mac` against the body's seal, in constant time.
    pub fn check_seal(&self, body: &[u8], mac: &[u8]) -> Result<()> {
        let mut m = self.seal_mac.clone();
        m.update(SEAL_PREFIX);
        m.update(body);
        m.verify_slice(mac).map_err(|_| Error::BadSeal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_check() {
        let (k, other) = (Key::from_secret(&[1; 32]), Key::from_secret(&[2; 32]));
        let body = br#"{"files":["a","b"]}"#;
        let seal = k.seal(body);
        k.check_seal(body, &seal).unwrap();
        assert!(matches!(
            k.check_seal(br#"{"files":["a"]}"#, &seal),
            Err(Error::BadSeal)
        ));
        assert!(other.check_seal(body, &seal).is_err());
        assert!(k.check_seal(body, &seal[..31]).is_err());
        let mut flipped = seal;
        flipped[31] ^= 1;
        assert!(k.check_seal(body, &flipped).is_err());
        // The seal is not the keyed digest of the same bytes.
        assert_ne!(k.seal(body), k.digest(crate::Kind::Chunk, body).0);
    }
}
