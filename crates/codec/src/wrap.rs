//! The JSON secret file shared by key files (`hoard-key-1`) and master key
//! files (`hoard-master-key-1`): a 32-byte secret, in hex or wrapped with
//! a passphrase through Argon2id and AES-256-GCM.
//!
//! Everything read from a file is bounded before it is used: the file's
//! size, the KDF's memory, passes, lanes and salt, the lengths of hex
//! fields. A hostile file gets an error, never a 4 TiB allocation.

use jiff::Timestamp;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::blob::{NONCE_SIZE, TAG_SIZE};
use crate::error::{Error, Result};
use crate::key::{KeyFingerprint, SECRET_SIZE, random};

/// Largest key or master key file accepted; real ones are under 1 KiB.
pub const MAX_KEY_FILE_SIZE: usize = 64 << 10;
/// The only KDF, by name in the file.
pub const KDF_ARGON2ID: &str = "argon2id";
/// Bounds on KDF parameters read from a file (and given to create one).
pub const MAX_M_KIB: u32 = 4 << 20; // 4 GiB
pub const MAX_T: u32 = 100;
pub const MAX_P: u32 = 16;
pub const MIN_SALT_LEN: usize = 16;
pub const MAX_SALT_LEN: usize = 64;
/// Salt length of files this crate writes.
pub const SALT_LEN: usize = 16;
/// Length of a wrapped secret: nonce || ciphertext || tag.
pub const WRAPPED_LEN: usize = NONCE_SIZE + SECRET_SIZE + TAG_SIZE;

/// Argon2id cost parameters (RFC 9106 section 4; the salt is per file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes over the memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Argon2Params {
    /// RFC 9106's second recommended option ("if much less memory is
    /// available"): 64 MiB, 3 passes; one lane instead of its four, as
    /// the derivation runs on one thread, where lanes cost the same time
    /// one after another. Above every configuration OWASP lists. A
    /// fraction of a second on one core (docs/encryption.md), paid once
    /// per backup or restore.
    pub const DEFAULT: Argon2Params = Argon2Params {
        m_kib: 64 << 10,
        t: 3,
        p: 1,
    };

    /// Whether these parameters are within the bounds a file may ask for
    /// and argon2's own (memory at least 8 KiB per lane).
    pub fn check(&self) -> Result<()> {
        let Argon2Params { m_kib, t, p } = *self;
        if !(1..=MAX_P).contains(&p) {
            return Err(Error::KdfParams(format!("p = {p}, not in 1..={MAX_P}")));
        }
        if !(1..=MAX_T).contains(&t) {
            return Err(Error::KdfParams(format!("t = {t}, not in 1..={MAX_T}")));
        }
        if m_kib < 8 * p || m_kib > MAX_M_KIB {
            return Err(Error::KdfParams(format!(
                "m_kib = {m_kib}, not in {}..={MAX_M_KIB}",
                8 * p
            )));
        }
        Ok(())
    }

    /// The 32-byte key Argon2id derives from `passphrase` and `salt`.
    fn derive(&self, passphrase: &str, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        self.check()?;
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| Error::KdfParams(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), salt, &mut *out)
            .map_err(|e| Error::KdfParams(e.to_string()))?;
        Ok(out)
    }
}

impl Default for Argon2Params {
    fn default() -> Self {
        Argon2Params::DEFAULT
    }
}

/// The KDF of a passphrase-protected file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kdf {
    pub params: Argon2Params,
    pub salt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJson {
    magic: String,
    created: String,
    fingerprint: String,
    kdf: Option<KdfJson>,
    key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfJson {
    name: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
}

/// A parsed secret file: every field checked for form, the secret still
/// wrapped.
#[derive(Clone)]
pub(crate) struct SecretFile {
    pub magic: &'static str,
    pub created: Timestamp,
    pub fingerprint: KeyFingerprint,
    pub kdf: Option<Kdf>,
    /// The secret (no KDF) or nonce || ciphertext || tag.
    key: Zeroizing<Vec<u8>>,
}

impl SecretFile {
    /// A new file for `secret` named `fingerprint`, protected by
    /// `passphrase` if one is given.
    pub fn create(
        magic: &'static str,
        secret: &[u8; SECRET_SIZE],
        fingerprint: KeyFingerprint,
        passphrase: Option<&str>,
        params: Argon2Params,
    ) -> Result<SecretFile> {
        let created = Timestamp::from_second(Timestamp::now().as_second())
            .expect("the current time is a valid timestamp");
        let (kdf, key) = match passphrase {
            None => (None, Zeroizing::new(secret.to_vec())),
            Some(pass) => {
                let rng = SystemRandom::new();
                let kdf = Kdf {
                    params,
                    salt: random::<SALT_LEN>(&rng).to_vec(),
                };
                let kek = params.derive(pass, &kdf.salt)?;
                let nonce = random::<NONCE_SIZE>(&rng);
                let mut out = Zeroizing::new(Vec::with_capacity(WRAPPED_LEN));
                out.extend_from_slice(&nonce);
                out.extend_from_slice(secret);
                let tag = aead(&kek)
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad(magic, &fingerprint)),
                        &mut out[NONCE_SIZE..],
                    )
                    .expect("32 bytes are within GCM's limit");
                out.extend_from_slice(tag.as_ref());
                (Some(kdf), out)
            }
        };
        Ok(SecretFile {
            magic,
            created,
            fingerprint,
            kdf,
            key,
        })
    }

    /// Parses a file that must have `magic`; `what` names it in errors.
    pub fn parse(what: &'static str, magic: &'static str, bytes: &[u8]) -> Result<SecretFile> {
        if bytes.len() > MAX_KEY_FILE_SIZE {
            return Err(Error::TooLarge {
                what,
                len: bytes.len(),
                max: MAX_KEY_FILE_SIZE,
            });
        }
        let bad = |reason: String| Error::BadFile { what, reason };
        let json: FileJson =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if json.magic != magic {
            return Err(bad(format!(
                "magic is {:?}, expected {magic:?}",
                json.magic
            )));
        }
        let created: Timestamp = json
            .created
            .parse()
            .map_err(|e| bad(format!("created {:?}: {e}", json.created)))?;
        let fingerprint: KeyFingerprint = json.fingerprint.parse()?;
        let kdf = json.kdf.map(|k| parse_kdf(what, k)).transpose()?;
        let want = if kdf.is_some() {
            WRAPPED_LEN
        } else {
            SECRET_SIZE
        };
        if json.key.len() != 2 * want {
            return Err(bad(format!(
                "key is {} hex digits, expected {}",
                json.key.len(),
                2 * want
            )));
        }
        let key =
            Zeroizing::new(hex::decode(json.key.as_bytes()).map_err(|e| bad(format!("key: {e}")))?);
        Ok(SecretFile {
            magic,
            created,
            fingerprint,
            kdf,
            key,
        })
    }

    pub fn needs_passphrase(&self) -> bool {
        self.kdf.is_some()
    }

    /// The secret: read as it is (no KDF; a passphrase given is then
    /// ignored) or unwrapped with `passphrase`. The caller checks it
    /// against the fingerprint, which it derives its own way.
    pub fn unlock(&self, passphrase: Option<&str>) -> Result<Zeroizing<[u8; SECRET_SIZE]>> {
        let mut secret = Zeroizing::new([0u8; SECRET_SIZE]);
        let Some(kdf) = &self.kdf else {
            secret.copy_from_slice(&self.key);
            return Ok(secret);
        };
        let pass = passphrase.ok_or(Error::PassphraseNeeded)?;
        let kek = kdf.params.derive(pass, &kdf.salt)?;
        let mut nonce = [0u8; NONCE_SIZE];
        nonce.copy_from_slice(&self.key[..NONCE_SIZE]);
        let mut buf = Zeroizing::new(self.key[NONCE_SIZE..].to_vec());
        let plain = aead(&kek)
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(self.magic, &self.fingerprint)),
                &mut buf,
            )
            .map_err(|_| Error::WrongPassphrase)?;
        secret.copy_from_slice(plain);
        Ok(secret)
    }

    /// Pretty JSON (the file) or compact (the paper copy).
    pub fn to_json(&self, pretty: bool) -> String {
        let json = FileJson {
            magic: self.magic.to_string(),
            created: self.created.to_string(),
            fingerprint: self.fingerprint.to_string(),
            kdf: self.kdf.as_ref().map(|k| KdfJson {
                name: KDF_ARGON2ID.to_string(),
                m_kib: k.params.m_kib,
                t: k.params.t,
                p: k.params.p,
                salt: hex::encode(&k.salt),
            }),
            key: hex::encode(&*self.key),
        };
        let mut s = if pretty {
            serde_json::to_string_pretty(&json)
        } else {
            serde_json::to_string(&json)
        }
        .expect("plain strings and numbers serialise");
        // Of an unprotected file, `json.key` is the secret in hex: wipe it
        // (what is returned is the caller's to keep or wipe).
        let mut key_hex = json.key;
        zeroize::Zeroize::zeroize(&mut key_hex);
        if pretty {
            s.push('\n');
        }
        s
    }
}

fn parse_kdf(what: &'static str, k: KdfJson) -> Result<Kdf> {
    if k.name != KDF_ARGON2ID {
        return Err(Error::BadFile {
            what,
            reason: format!("unknown KDF {:?} (only {KDF_ARGON2ID})", k.name),
        });
    }
    let params = Argon2Params {
        m_kib: k.m_kib,
        t: k.t,
        p: k.p,
    };
    params.check()?;
    if !(2 * MIN_SALT_LEN..=2 * MAX_SALT_LEN).contains(&k.salt.len()) {
        return Err(Error::KdfParams(format!(
            "salt of {} hex digits, not {MIN_SALT_LEN}..={MAX_SALT_LEN} bytes",
            k.salt.len()
        )));
    }
    let salt = hex::decode(&k.salt).map_err(|e| Error::KdfParams(format!("salt: {e}")))?;
    Ok(Kdf { params, salt })
}

fn aead(kek: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).expect("AES-256 key of 32 bytes"))
}

/// AAD of a wrapped secret: the magic (ASCII) then the 16 fingerprint
/// bytes, so a wrapped secret cannot be moved to another kind of file or
/// relabelled.
fn aad(magic: &str, fingerprint: &KeyFingerprint) -> Vec<u8> {
    let mut a = magic.as_bytes().to_vec();
    a.extend_from_slice(&fingerprint.0);
    a
}
