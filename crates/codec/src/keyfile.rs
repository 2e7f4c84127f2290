//! The key file: the client's key as JSON, plain or wrapped with a
//! passphrase, and its paper copy ([`paper`], [`from_paper`]).
//!
//! ```json
//! {"magic":"hoard-key-1","created":"2025-01-01T00:00:00Z",
//!  "fingerprint":"1a2b:…","kdf":null | {"name":"argon2id","m_kib":65536,"t":3,"p":1,"salt":"<hex>"},
//!  "key":"<hex>"}
//! ```
//!
//! `key` is the 32-byte secret in hex when `kdf` is null, else hex of
//! nonce (12) || AES-256-GCM(Argon2id(passphrase, salt), secret) || tag
//! (16) with AAD = `hoard-key-1` || the 16 fingerprint bytes. This module
//! makes and reads bytes; writing them (mode 0600, temp file, fsync,
//! rename) is the CLI's job.

mod paper;

use std::fmt;

use jiff::Timestamp;

pub use self::paper::{from_paper, paper};
use crate::error::{Error, Result};
use crate::key::{Key, KeyFingerprint};
use crate::wrap::SecretFile;
pub use crate::wrap::{
    Argon2Params, Kdf, MAX_KEY_FILE_SIZE, MAX_M_KIB, MAX_P, MAX_SALT_LEN, MAX_T, MIN_SALT_LEN,
};

pub const KEY_FILE_MAGIC: &str = "hoard-key-1";
const WHAT: &str = "key file";

/// A parsed key file, its secret still wrapped.
#[derive(Clone)]
pub struct KeyFile(SecretFile);

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("fingerprint", &self.0.fingerprint)
            .field("created", &self.0.created)
            .field("kdf", &self.0.kdf)
            .finish_non_exhaustive()
    }
}

impl KeyFile {
    /// The key file of `key`, protected by `passphrase` through Argon2id
    /// with `params` if one is given ([`Argon2Params::DEFAULT`] normally).
    pub fn create(key: &Key, passphrase: Option<&str>, params: Argon2Params) -> Result<KeyFile> {
        SecretFile::create(
            KEY_FILE_MAGIC,
            key.secret(),
            key.fingerprint(),
            passphrase,
            params,
        )
        .map(KeyFile)
    }

    /// Parses a key file (at most [`MAX_KEY_FILE_SIZE`] bytes); checks
    /// every field's form and the KDF parameters' bounds, derives nothing.
    pub fn parse(bytes: &[u8]) -> Result<KeyFile> {
        SecretFile::parse(WHAT, KEY_FILE_MAGIC, bytes).map(KeyFile)
    }

    /// The key. `passphrase` is needed if [`KeyFile::needs_passphrase`]
    /// (else ignored); a wrong one is [`Error::WrongPassphrase`]. The
    /// secret must match the file's fingerprint.
    pub fn unlock(&self, passphrase: Option<&str>) -> Result<Key> {
        let secret = self.0.unlock(passphrase)?;
        let key = Key::from_secret(&secret);
        if key.fingerprint() != self.0.fingerprint {
            return Err(Error::FingerprintMismatch {
                what: WHAT,
                stored: self.0.fingerprint,
                derived: key.fingerprint(),
            });
        }
        Ok(key)
    }

    pub fn needs_passphrase(&self) -> bool {
        self.0.needs_passphrase()
    }

    pub fn fingerprint(&self) -> KeyFingerprint {
        self.0.fingerprint
    }

    pub fn created(&self) -> Timestamp {
        self.0.created
    }

    pub fn kdf(&self) -> Option<&Kdf> {
        self.0.kdf.as_ref()
    }

    /// The file's text (pretty JSON, one trailing newline).
    pub fn to_json(&self) -> String {
        self.0.to_json(true)
    }

    /// Compact JSON: what the paper copy carries.
    pub(crate) fn to_compact_json(&self) -> String {
        self.0.to_json(false)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Cheap parameters so tests do not spend seconds in the KDF.
    pub(crate) const FAST: Argon2Params = Argon2Params {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn round_trip_without_passphrase() {
        let key = Key::generate();
        let file = KeyFile::create(&key, None, FAST).unwrap();
        assert!(!file.needs_passphrase());
        let json = file.to_json();
        assert!(json.contains("\"magic\": \"hoard-key-1\""), "{json}");
        assert!(json.contains("\"kdf\": null"), "{json}");
        assert!(json.contains(&hex::encode(key.secret())));
        let back = KeyFile::parse(json.as_bytes()).unwrap();
        assert_eq!(back.fingerprint(), key.fingerprint());
        assert_eq!(back.created(), file.created());
        let k = back.unlock(None).unwrap();
        assert_eq!(k.secret(), key.secret());
        // A passphrase given for an unprotected file is ignored.
        assert!(back.unlock(Some("x")).is_ok());
    }

    #[test]
    fn round_trip_with_passphrase() {
        let key = Key::generate();
        let file = KeyFile::create(&key, Some("correct horse"), FAST).unwrap();
        assert!(file.needs_passphrase());
        let json = file.to_json();
        assert!(!json.contains(&hex::encode(key.secret())));
        let back = KeyFile::parse(json.as_bytes()).unwrap();
        assert_eq!(back.kdf().unwrap().params, FAST);
        assert_eq!(back.kdf().unwrap().salt.len(), 16);
        let k = back.unlock(Some("correct horse")).unwrap();
        assert_eq!(k.fingerprint(), key.fingerprint());
        assert!(matches!(
            back.unlock(Some("wrong horse")),
            Err(Error::WrongPassphrase)
        ));
        assert!(matches!(back.unlock(None), Err(Error::PassphraseNeeded)));
    }

    /// The real parameters, once: 64 MiB, 3 passes.
    #[test]
    fn default_parameters() {
        let key = Key::generate();
        let file = KeyFile::create(&key, Some("pw"), Argon2Params::default()).unwrap();
        let json = file.to_json();
        assert!(json.contains("\"m_kib\": 65536"), "{json}");
        let back = KeyFile::parse(json.as_bytes()).unwrap();
        assert_eq!(
            back.unlock(Some("pw")).unwrap().fingerprint(),
            key.fingerprint()
        );
    }

    fn edit(json: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        f(&mut v);
        v.to_string()
    }

    #[test]
    fn tampered_files_are_refused() {
        let key = Key::generate();
        let other = Key::generate();
        let plain = KeyFile::create(&key, None, FAST).unwrap().to_json();
        let wrapped = KeyFile::create(&key, Some("pw"), FAST).unwrap().to_json();
        // Fingerprint of another key: found after unwrapping (plain) or
        // by the AEAD (wrapped, the fingerprint is in the AAD).
        let fp = other.fingerprint().to_string();
        let swapped = edit(&plain, |v| v["fingerprint"] = fp.clone().into());
        assert!(matches!(
            KeyFile::parse(swapped.as_bytes()).unwrap().unlock(None),
            Err(Error::FingerprintMismatch { .. })
        ));
        let swapped = edit(&wrapped, |v| v["fingerprint"] = fp.clone().into());
        assert!(matches!(
            KeyFile::parse(swapped.as_bytes())
                .unwrap()
                .unlock(Some("pw")),
            Err(Error::WrongPassphrase)
        ));
        // A flipped digit of the wrapped key.
        let flipped = edit(&wrapped, |v| {
            let mut k = v["key"].as_str().unwrap().to_string();
            let c = if k.ends_with('0') { "1" } else { "0" };
            k.replace_range(k.len() - 1.., c);
            v["key"] = k.into();
        });
        assert!(matches!(
            KeyFile::parse(flipped.as_bytes())
                .unwrap()
                .unlock(Some("pw")),
            Err(Error::WrongPassphrase)
        ));
        // Form errors.
        for bad in [
            edit(&plain, |v| v["magic"] = "hoard-master-key-1".into()),
            edit(&plain, |v| v["key"] = "abcd".into()),
            edit(&plain, |v| v["created"] = "yesterday".into()),
            edit(&plain, |v| v["fingerprint"] = "12".into()),
            edit(&plain, |v| v["extra"] = 1.into()),
            edit(&wrapped, |v| v["kdf"]["name"] = "scrypt".into()),
            "[]".to_string(),
            String::new(),
        ] {
            assert!(KeyFile::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let huge = format!("{plain}{}", " ".repeat(MAX_KEY_FILE_SIZE));
        assert!(matches!(
            KeyFile::parse(huge.as_bytes()),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn hostile_kdf_parameters_are_refused() {
        let key = Key::generate();
        let wrapped = KeyFile::create(&key, Some("pw"), FAST).unwrap().to_json();
        for (field, value) in [
            ("m_kib", serde_json::json!(u32::MAX)),
            ("m_kib", serde_json::json!(MAX_M_KIB + 1)),
            ("m_kib", serde_json::json!(4)),
            ("t", serde_json::json!(0)),
            ("t", serde_json::json!(101)),
            ("p", serde_json::json!(0)),
            ("p", serde_json::json!(17)),
            ("m_kib", serde_json::json!(-1)),
            ("t", serde_json::json!(1u64 << 40)),
            ("salt", serde_json::json!("00")),
            ("salt", serde_json::json!("00".repeat(65))),
            ("salt", serde_json::json!("zz".repeat(16))),
        ] {
            let bad = edit(&wrapped, |v| v["kdf"][field] = value.clone());
            assert!(KeyFile::parse(bad.as_bytes()).is_err(), "{field} = {value}");
        }
        // And they cannot be used to create a file either.
        let huge = Argon2Params {
            m_kib: MAX_M_KIB + 1,
            t: 1,
            p: 1,
        };
        assert!(KeyFile::create(&key, Some("pw"), huge).is_err());
    }
}
