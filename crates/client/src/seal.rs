//! The manifest seal of an encrypted snapshot: the client's own record
//! of the files it wrote (names, sizes, index checksums, source
//! attributes) and of the key it used, authenticated with that key.
//!
//! The server writes the manifest, so it could swap, drop or reorder
//! files, or plant attributes that make the next backup skip reading a
//! file. A client holding the key trusts only what the seal says
//! ([`check`]); every index it then downloads must hash to the sealed
//! checksum (`crate::requests::hash_list`, `crate::remote::chunk_map`).
//! Format: docs/format.md, "Manifest seal".

use hoard_codec::Key;
use hoard_datastore::{FileKind, Manifest, ManifestFile, Seal};
use hoard_types::{FileName, SnapshotPath, SourceAttributes};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::upload::StreamReport;

/// The first member of every seal body.
pub const SEAL_MAGIC: &str = "hoard-seal-1";

/// One file as the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedFile {
    /// Stored name, with its `.fidx`/`.didx` suffix.
    pub name: String,
    pub kind: FileKind,
    pub raw: bool,
    pub file_size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chunk_size: Option<u32>,
    pub chunk_count: u64,
    /// Hex SHA-256 of the index's entry region.
    pub index_csum: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<SourceAttributes>,
}

impl SealedFile {
    /// A tree stream, as `upload_stream` finished it.
    pub(crate) fn dynamic(name: &FileName, r: &StreamReport, csum: [u8; 32]) -> SealedFile {
        SealedFile {
            name: format!("{name}{}", FileKind::Dynamic.suffix()),
            kind: FileKind::Dynamic,
            raw: false,
            file_size: r.size,
            chunk_size: None,
            chunk_count: r.chunks,
            index_csum: hex::encode(csum),
            source: None,
        }
    }

    /// A manifest entry as a seal records it (all but the server's
    /// index id).
    pub fn of(f: &ManifestFile) -> SealedFile {
        SealedFile {
            name: f.name.clone(),
            kind: f.kind,
            raw: f.raw,
            file_size: f.file_size,
            chunk_size: f.chunk_size,
            chunk_count: f.chunk_count,
            index_csum: f.index_csum.clone(),
            source: f.source,
        }
    }
}

/// What a seal covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealBody {
    pub magic: String,
    pub snapshot: String,
    /// Fingerprint of the key every chunk of the snapshot is encrypted
    /// with.
    pub key: String,
    /// Sorted by name.
    pub files: Vec<SealedFile>,
    /// The key, encrypted to the master public key (hex), if the backup
    /// was made with one: `hoard key recover` opens it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub recovery: Option<String>,
}

/// Builds and authenticates the seal of `snapshot`.
pub fn make(
    key: &Key,
    snapshot: &SnapshotPath,
    mut files: Vec<SealedFile>,
    recovery: Option<Vec<u8>>,
) -> (SealBody, [u8; 32], Vec<u8>) {
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let body = SealBody {
        magic: SEAL_MAGIC.to_string(),
        snapshot: snapshot.to_string(),
        key: key.fingerprint().to_string(),
        files,
        recovery: recovery.map(hex::encode),
    };
    let bytes = serde_json::to_vec(&body).expect("a seal body serializes");
    let mac = key.seal(&bytes);
    (body, mac, bytes)
}

/// The body of a stored seal, not yet authenticated: enough to say
/// which key a snapshot needs.
pub fn peek(seal: &Seal) -> Result<SealBody> {
    serde_json::from_str(&seal.body)
        .map_err(|e| Error::Damaged(format!("the manifest seal is unreadable: {e}")))
}

/// How a listed snapshot relates to the client's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealState {
    /// No seal: an unencrypted snapshot.
    Plain,
    /// Sealed with the client's key and verified: the manifest's files
    /// are the sealed ones.
    Ours,
    /// Sealed with a key the client does not hold.
    Foreign { key: String },
    /// Sealed with the client's key, but the seal or the manifest does
    /// not check out.
    Broken { problem: String },
}

/// Checks `manifest`'s seal against `key` (if any). When it holds
/// ([`SealState::Ours`]), the manifest's files equal the sealed ones in
/// every member the seal covers (only `index_uuid` and their order are
/// the server's, and nothing trusts those).
pub fn check(path: &SnapshotPath, manifest: &mut Manifest, key: Option<&Key>) -> SealState {
    let Some(seal) = &manifest.seal else {
        return SealState::Plain;
    };
    let body = match peek(seal) {
        Ok(b) => b,
        Err(e) => {
            return SealState::Broken {
                problem: e.to_string(),
            };
        }
    };
    let Some(key) = key.filter(|k| k.fingerprint().to_string() == body.key) else {
        return SealState::Foreign { key: body.key };
    };
    let broken = |problem: String| SealState::Broken { problem };
    let mac = match hex::decode(&seal.mac) {
        Ok(m) if m.len() == 32 => m,
        _ => return broken("its MAC is not 32 bytes of hex".into()),
    };
    if key.check_seal(seal.body.as_bytes(), &mac).is_err() {
        return broken(format!(
            "its MAC does not verify with key {}: the manifest was altered",
            body.key
        ));
    }
    if body.magic != SEAL_MAGIC || body.snapshot != path.to_string() {
        return broken(format!(
            "it seals {:?}, not this snapshot: a manifest was moved",
            body.snapshot
        ));
    }
    // Every sealed file must be listed as sealed, and nothing else.
    if body.files.len() != manifest.files.len() {
        return broken(format!(
            "it names {} files, the manifest {}",
            body.files.len(),
            manifest.files.len()
        ));
    }
    for sealed in &body.files {
        match manifest.file(&sealed.name) {
            Some(f) if *sealed == SealedFile::of(f) => {}
            Some(_) => {
                return broken(format!(
                    "the manifest's entry for {} differs from the sealed one",
                    sealed.name
                ));
            }
            None => return broken(format!("the manifest lacks sealed file {}", sealed.name)),
        }
    }
    SealState::Ours
}

/// The index checksum (hex) a download must match, and what to call a
/// mismatch.
pub(crate) fn index_mismatch(index_path: &str, want: &str, got: &[u8; 32]) -> Result<()> {
    if hex::encode(got) == want {
        Ok(())
    } else {
        Err(Error::Damaged(format!(
            "the index {index_path} does not match its checksum in the manifest: the server altered or swapped it"
        )))
    }
}
