//! The crate's errors, each naming what is wrong in the user's terms.

use hoard_types::Digest;

use crate::blob::Encoding;
use crate::key::{KeyFingerprint, KeyId};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- Blob structure: what a server can check without a key. ---
    #[error("chunk blob of {len} bytes is shorter than its 16-byte header")]
    Truncated { len: u64 },
    #[error("unknown chunk magic {magic} (hex)")]
    BadMagic { magic: String },
    #[error("raw size {raw_size} is outside 1..={max}")]
    RawSize { raw_size: u32, max: usize },
    #[error(
        "{encoding} payload of {payload_len} bytes does not fit a raw size of {raw_size} ({rule})"
    )]
    PayloadLength {
        encoding: Encoding,
        payload_len: u64,
        raw_size: u32,
        rule: &'static str,
    },
    #[error("CRC mismatch (bit rot): header says {stored:08x}, payload has {computed:08x}")]
    Crc { stored: u32, computed: u32 },

    // --- Decoding the data. ---
    #[error("zstd payload does not decompress: {reason}")]
    Decompress { reason: String },
    #[error("decompresses to {got} bytes, the header says {want}")]
    DecompressedSize { got: usize, want: usize },
    #[error("chunk data has digest {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("chunk is encrypted with key {key_id}; the server cannot read it")]
    Encrypted { key_id: KeyId },
    #[error("chunk is encrypted with key {key_id} and no key was given")]
    NoKey { key_id: KeyId },
    #[error("chunk {digest} is not encrypted: an encrypted backup never accepts plain chunks")]
    NotEncrypted { digest: Digest },
    #[error("chunk is encrypted with key {wanted}, not with this key ({have})")]
    WrongKey { wanted: KeyId, have: KeyFingerprint },
    #[error(
        "chunk {digest} fails authentication: tampered with, damaged, or stored as another kind"
    )]
    Tampered { digest: Digest },
    #[error("encrypted chunk {digest}: {reason}")]
    BadInner { digest: Digest, reason: String },

    // --- Key material. ---
    #[error("key fingerprint {0:?} is not 8 groups of 4 hex digits separated by ':'")]
    FingerprintParse(String),
    #[error("{0}")]
    CompressionParse(String),
    #[error("{what} is {len} bytes, more than the {max} any such file has")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what}: {reason}")]
    BadFile { what: &'static str, reason: String },
    #[error("KDF parameters refused: {0}")]
    KdfParams(String),
    #[error("wrong passphrase (or the key file was altered)")]
    WrongPassphrase,
    #[error("this key file is protected by a passphrase and none was given")]
    PassphraseNeeded,
    #[error("{what} damaged: it says fingerprint {stored}, its secret has {derived}")]
    FingerprintMismatch {
        what: &'static str,
        stored: KeyFingerprint,
        derived: KeyFingerprint,
    },
    #[error("paper key line {line}: {reason}")]
    PaperLine { line: usize, reason: String },
    #[error("paper key: {0}")]
    Paper(String),
    #[error("master public key: {0}")]
    MasterPublic(String),
    #[error("recovery blob: {0}")]
    Recovery(String),
    #[error("seal does not match: the manifest was altered or sealed with another key")]
    BadSeal,
}
