//! Recovery with a master key pair: the client wraps its key's secret to
//! an X25519 master public key, so whoever holds the master secret (kept
//! offline) can recover any client's key.
//!
//! Recovery blob ([`RECOVERY_BLOB_SIZE`] bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 32 | ephemeral X25519 public key E |
//! | 32 | 12 | nonce, random |
//! | 44 | 32 | AES-256-GCM ciphertext of the key's 32-byte secret |
//! | 76 | 16 | tag |
//!
//! The AES key is HKDF-SHA256(IKM = X25519(e, M), salt = E || M, info =
//! [`RECOVERY_INFO`]), M the master public key; AAD empty. A shared
//! secret of all zeros (a low-order point) is refused both ways.
//!
//! Master secret file: the key file's JSON with magic
//! [`MASTER_FILE_MAGIC`], fingerprint that of the public key. Public key
//! file: `#` comment lines and one line `hoard-master-pub-1 <64 hex>`.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::SystemRandom;
use sha2::{Digest as _, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::blob::{NONCE_SIZE, TAG_SIZE};
use crate::error::{Error, Result};
use crate::key::{FINGERPRINT_SIZE, Key, KeyFingerprint, SECRET_SIZE, hkdf_fill, random};
use crate::wrap::{Argon2Params, MAX_KEY_FILE_SIZE, SecretFile};

pub const MASTER_FILE_MAGIC: &str = "hoard-master-key-1";
pub const MASTER_PUB_MAGIC: &str = "hoard-master-pub-1";
pub const RECOVERY_INFO: &[u8] = b"hoard recovery v1";
pub const RECOVERY_BLOB_SIZE: usize = 32 + NONCE_SIZE + SECRET_SIZE + TAG_SIZE;
const WHAT: &str = "master key file";

/// The master secret (an X25519 scalar, wiped on drop).
pub struct MasterSecret {
    secret: StaticSecret,
    public: MasterPublic,
}

/// The master public key, which clients are given.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MasterPublic([u8; 32]);

impl fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterSecret({})", self.public.fingerprint())
    }
}

impl fmt::Debug for MasterPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterPublic({})", self.fingerprint())
    }
}

impl MasterSecret {
    pub fn generate() -> MasterSecret {
        let bytes = Zeroizing::new(random::<32>(&SystemRandom::new()));
        MasterSecret::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8; 32]) -> MasterSecret {
        let secret = StaticSecret::from(*bytes);
        let public = MasterPublic(PublicKey::from(&secret).to_bytes());
        MasterSecret { secret, public }
    }

    pub fn public(&self) -> MasterPublic {
        self.public
    }

    pub fn fingerprint(&self) -> KeyFingerprint {
        self.public.fingerprint()
    }

    /// The master secret file, protected by `passphrase` if given (it
    /// should be: this key opens every client's backups).
    pub fn to_file(
        &self,
        passphrase: Option<&str>,
        params: Argon2Params,
    ) -> Result<MasterSecretFile> {
        let bytes = Zeroizing::new(self.secret.to_bytes());
        SecretFile::create(
            MASTER_FILE_MAGIC,
            &bytes,
            self.fingerprint(),
            passphrase,
            params,
        )
        .map(MasterSecretFile)
    }

    /// The client key in a recovery blob made by [`MasterPublic::wrap`].
    pub fn unwrap(&self, blob: &[u8]) -> Result<Key> {
        if blob.len() != RECOVERY_BLOB_SIZE {
            return Err(Error::Recovery(format!(
                "{} bytes, expected {RECOVERY_BLOB_SIZE}",
                blob.len()
            )));
        }
        let mut eph = [0u8; 32];
        eph.copy_from_slice(&blob[..32]);
        let shared = self.secret.diffie_hellman(&PublicKey::from(eph));
        if !shared.was_contributory() {
            return Err(Error::Recovery("ephemeral key is a low-order point".into()));
        }
        let kek = recovery_key(shared.as_bytes(), &eph, &self.public.0);
        let mut nonce = [0u8; NONCE_SIZE];
        nonce.copy_from_slice(&blob[32..32 + NONCE_SIZE]);
        let mut buf = Zeroizing::new(blob[32 + NONCE_SIZE..].to_vec());
        let plain = kek
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| {
                Error::Recovery(format!(
                    "does not open with master key {}: made for another, or damaged",
                    self.fingerprint()
                ))
            })?;
        let mut secret = Zeroizing::new([0u8; SECRET_SIZE]);
        secret.copy_from_slice(plain);
        Ok(Key::from_secret(&secret))
    }
}

impl MasterPublic {
    /// The public key with these bytes; a low-order point (with which
    /// every shared secret is zero) is refused.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<MasterPublic> {
        // Clamped scalars are multiples of the cofactor, so any one of
        // them tells a low-order point by a zero result.
        let probe = StaticSecret::from([1u8; 32]);
        if !probe
            .diffie_hellman(&PublicKey::from(bytes))
            .was_contributory()
        {
            return Err(Error::MasterPublic("a low-order point, not a key".into()));
        }
        Ok(MasterPublic(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// First 16 bytes of SHA-256(`hoard-master-pub-1` || key).
    pub fn fingerprint(&self) -> KeyFingerprint {
        let mut h = Sha256::new();
        h.update(MASTER_PUB_MAGIC.as_bytes());
        h.update(self.0);
        let d = h.finalize();
        let mut fp = [0u8; FINGERPRINT_SIZE];
        fp.copy_from_slice(&d[..FINGERPRINT_SIZE]);
        KeyFingerprint(fp)
    }

    /// The public key file: a comment with the fingerprint, `comment`'s
    /// lines as comments, then the key line.
    pub fn to_text(&self, comment: Option<&str>) -> String {
        let mut out = format!(
            "# hoard master public key, fingerprint {}\n",
            self.fingerprint()
        );
        for line in comment.into_iter().flat_map(str::lines) {
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str(&format!("{MASTER_PUB_MAGIC} {}\n", hex::encode(self.0)));
        out
    }

    /// Parses a public key file: blank lines and lines starting with '#'
    /// are ignored, exactly one key line must remain.
    pub fn parse(text: &str) -> Result<MasterPublic> {
        if text.len() > MAX_KEY_FILE_SIZE {
            return Err(Error::TooLarge {
                what: "master public key file",
                len: text.len(),
                max: MAX_KEY_FILE_SIZE,
            });
        }
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines
            .next()
            .ok_or_else(|| Error::MasterPublic("no key line".into()))?;
        if lines.next().is_some() {
            return Err(Error::MasterPublic("more than one key line".into()));
        }
        let (magic, key) = line.split_once(char::is_whitespace).ok_or_else(|| {
            Error::MasterPublic(format!("{line:?} is not `{MASTER_PUB_MAGIC} <hex>`"))
        })?;
        if magic != MASTER_PUB_MAGIC {
            return Err(Error::MasterPublic(format!(
                "starts with {magic:?}, expected {MASTER_PUB_MAGIC}"
            )));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(key.trim(), &mut bytes)
            .map_err(|e| Error::MasterPublic(format!("key is not 64 hex digits: {e}")))?;
        MasterPublic::from_bytes(bytes)
    }

    /// A recovery blob of `key`'s secret for this master key (see the
    /// module doc).
    pub fn wrap(&self, key: &Key) -> Vec<u8> {
        let rng = SystemRandom::new();
        let eph_secret = StaticSecret::from(*Zeroizing::new(random::<32>(&rng)));
        let eph = PublicKey::from(&eph_secret).to_bytes();
        let shared = eph_secret.diffie_hellman(&PublicKey::from(self.0));
        // `from_bytes` refused low-order points, so this holds for every
        // MasterPublic there is.
        assert!(shared.was_contributory(), "master key is a low-order point");
        let kek = recovery_key(shared.as_bytes(), &eph, &self.0);
        let nonce = random::<NONCE_SIZE>(&rng);
        let mut out = Vec::with_capacity(RECOVERY_BLOB_SIZE);
        out.extend_from_slice(&eph);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(key.secret());
        let tag = kek
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut out[32 + NONCE_SIZE..],
            )
            .expect("32 bytes are within GCM's limit");
        out.extend_from_slice(tag.as_ref());
        out
    }
}

/// The recovery blob's AES-256-GCM key.
fn recovery_key(shared: &[u8; 32], eph: &[u8; 32], master: &[u8; 32]) -> LessSafeKey {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph);
    salt[32..].copy_from_slice(master);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(shared);
    let mut k = Zeroizing::new([0u8; 32]);
    hkdf_fill(&prk, RECOVERY_INFO, &mut *k);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &*k).expect("AES-256 key of 32 bytes"))
}

/// A parsed master secret file, its secret still wrapped.
#[derive(Clone)]
pub struct MasterSecretFile(SecretFile);

impl fmt::Debug for MasterSecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterSecretFile")
            .field("fingerprint", &self.0.fingerprint)
            .field("kdf", &self.0.kdf)
            .finish_non_exhaustive()
    }
}

impl MasterSecretFile {
    pub fn parse(bytes: &[u8]) -> Result<MasterSecretFile> {
        SecretFile::parse(WHAT, MASTER_FILE_MAGIC, bytes).map(MasterSecretFile)
    }

    pub fn unlock(&self, passphrase: Option<&str>) -> Result<MasterSecret> {
        let bytes = self.0.unlock(passphrase)?;
        let master = MasterSecret::from_bytes(&bytes);
        if master.fingerprint() != self.0.fingerprint {
            return Err(Error::FingerprintMismatch {
                what: WHAT,
                stored: self.0.fingerprint,
                derived: master.fingerprint(),
            });
        }
        Ok(master)
    }

    pub fn needs_passphrase(&self) -> bool {
        self.0.needs_passphrase()
    }

    pub fn fingerprint(&self) -> KeyFingerprint {
        self.0.fingerprint
    }

    pub fn to_json(&self) -> String {
        self.0.to_json(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyfile::KeyFile;

    use crate::keyfile::tests::FAST;

    #[test]
    fn wrap_and_unwrap() {
        let master = MasterSecret::generate();
        let key = Key::generate();
        let blob = master.public().wrap(&key);
        assert_eq!(blob.len(), RECOVERY_BLOB_SIZE);
        let back = master.unwrap(&blob).unwrap();
        assert_eq!(back.fingerprint(), key.fingerprint());
        assert_eq!(back.secret(), key.secret());
        // Two wraps of one key differ (fresh ephemeral key each time).
        assert_ne!(master.public().wrap(&key), blob);
    }

    /// A recovery blob made from docs/encryption.md by a separate program
    /// (Python `cryptography`: X25519, AESGCM; hmac for HKDF): master
    /// secret 01 02 .. 20, ephemeral secret 65 66 .. 84, nonce 09 x 12,
    /// client secret 05 x 32.
    #[test]
    fn golden_recovery_blob() {
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8 + 1);
        let master = MasterSecret::from_bytes(&bytes);
        assert_eq!(
            hex::encode(master.public().as_bytes()),
            "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c"
        );
        let blob = hex::decode(
            "5714769d116bf76436ae74bc793d2c30ad1903c59ac5273805c7e2698b410c36\
             090909090909090909090909\
             9f96efa9b9b8f32c4095974696630294e992b99f48fb476bfd126c7794ff52b6\
             c0112be1897ca1a5775a70f339e28213",
        )
        .unwrap();
        let key = master.unwrap(&blob).unwrap();
        assert_eq!(key.secret(), &[5u8; 32]);
    }

    #[test]
    fn wrong_master_and_damage() {
        let (master, other) = (MasterSecret::generate(), MasterSecret::generate());
        let blob = master.public().wrap(&Key::generate());
        assert!(matches!(other.unwrap(&blob), Err(Error::Recovery(_))));
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(master.unwrap(&bad).is_err(), "byte {i}");
        }
        assert!(master.unwrap(&blob[..91]).is_err());
        assert!(master.unwrap(&[blob.clone(), vec![0]].concat()).is_err());
        // A low-order ephemeral key (here: zero).
        let mut low = blob.clone();
        low[..32].fill(0);
        let err = master.unwrap(&low).unwrap_err();
        assert!(err.to_string().contains("low-order"), "{err}");
    }

    #[test]
    fn public_key_file() {
        let master = MasterSecret::generate();
        let text = master
            .public()
            .to_text(Some("company recovery key\nkept in the safe"));
        assert!(text.contains("# kept in the safe\n"));
        assert!(text.contains(&master.fingerprint().to_string()));
        assert_eq!(MasterPublic::parse(&text).unwrap(), master.public());
        let key_line = text.lines().last().unwrap();
        assert_eq!(MasterPublic::parse(key_line).unwrap(), master.public());
        for bad in [
            String::new(),
            "# only a comment".to_string(),
            format!("{key_line}\n{key_line}"),
            key_line.replace(MASTER_PUB_MAGIC, "hoard-master-pub-2"),
            key_line[..key_line.len() - 2].to_string(),
            format!("{MASTER_PUB_MAGIC} {}", "00".repeat(32)),
        ] {
            assert!(MasterPublic::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn master_secret_file() {
        let master = MasterSecret::generate();
        for pass in [None, Some("long passphrase")] {
            let json = master.to_file(pass, FAST).unwrap().to_json();
            assert!(json.contains(MASTER_FILE_MAGIC));
            let file = MasterSecretFile::parse(json.as_bytes()).unwrap();
            assert_eq!(file.needs_passphrase(), pass.is_some());
            assert_eq!(file.fingerprint(), master.fingerprint());
            let back = file.unlock(pass).unwrap();
            assert_eq!(back.public(), master.public());
            // A master file is not a key file, and the reverse.
            assert!(KeyFile::parse(json.as_bytes()).is_err());
        }
        let key_json = KeyFile::create(&Key::generate(), None, FAST)
            .unwrap()
            .to_json();
        assert!(MasterSecretFile::parse(key_json.as_bytes()).is_err());
        let file = MasterSecretFile::parse(
            master
                .to_file(Some("a"), FAST)
                .unwrap()
                .to_json()
                .as_bytes(),
        )
        .unwrap();
        assert!(matches!(
            file.unlock(Some("b")),
            Err(Error::WrongPassphrase)
        ));
    }
}
