//! The snapshot manifest (`manifest.json`): which files a snapshot holds,
//! their kind, sizes and index checksums, and whether the snapshot is
//! complete. It is the source of truth for visibility: an index file that
//! the manifest does not name (a crash between the two renames) does not
//! exist for readers.

use std::path::Path;

use hoard_types::SourceAttributes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;

/// The first member of every manifest, naming kind and version.
pub const MANIFEST_MAGIC: &str = "hoard-manifest-1";
pub const MANIFEST_NAME: &str = "manifest.json";
/// A manifest larger than this is refused rather than read (a snapshot
/// with thousands of files stays far below it).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    /// A writer holds the snapshot, or died while holding it.
    Writing,
    /// Every file the writer started was finished.
    Complete,
    /// The writer ended with a file started but not finished.
    Incomplete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Fixed,
    Dynamic,
}

impl FileKind {
    pub fn suffix(self) -> &'static str {
        match self {
            FileKind::Fixed => ".fidx",
            FileKind::Dynamic => ".didx",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Stored name, with its `.fidx`/`.didx` suffix.
    pub name: String,
    pub kind: FileKind,
    /// The data is a raw file (disk image) rather than an archive.
    pub raw: bool,
    pub file_size: u64,
    /// Fixed indexes only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chunk_size: Option<u32>,
    pub chunk_count: u64,
    /// Hex SHA-256 of the index's entry region (as in its header).
    pub index_csum: String,
    /// Hex unique id of the index (as in its header).
    pub index_uuid: String,
    /// What the client's source file looked like (extension packet
    /// FileAttributes), so the next backup can skip an unchanged file.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<SourceAttributes>,
}

/// A client's seal over the snapshot (encrypted backups): a MAC with the
/// client's key over `body`, which lists the files as the client wrote
/// them. The server stores it and cannot check it (docs/format.md,
/// "Manifest seal").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// Hex HMAC-SHA256.
    pub mac: String,
    /// JSON, kept as the exact string the MAC covers.
    pub body: String,
}

/// Outcome of the last verification of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyState {
    Ok,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub state: VerifyState,
    /// When the verification ended, seconds since the epoch.
    pub time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub magic: String,
    pub snapshot: String,
    pub state: SnapshotState,
    pub files: Vec<ManifestFile>,
    /// The last verification, if any. A snapshot that failed is never an
    /// incremental base.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub verification: Option<Verification>,
    /// Set by `hoard protect`: prune never removes the snapshot.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub protected: bool,
    /// Written by a client that encrypts (a session with feature
    /// ENCRYPTION): its chunks are encrypted ones (`DIGEST.e`).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub encrypted: bool,
    /// Set by a client that encrypts (SealSnapshot).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seal: Option<Seal>,
}

impl Manifest {
    pub fn new(snapshot: String) -> Self {
        Manifest {
            magic: MANIFEST_MAGIC.to_string(),
            snapshot,
            state: SnapshotState::Writing,
            files: Vec::new(),
            verification: None,
            protected: false,
            encrypted: false,
            seal: None,
        }
    }

    /// The class of the chunks the snapshot's indexes name.
    pub fn chunk_class(&self) -> crate::ChunkClass {
        if self.encrypted || self.seal.is_some() {
            crate::ChunkClass::Encrypted
        } else {
            crate::ChunkClass::Plain
        }
    }

    pub fn file(&self, name: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Whether a client may use this snapshot as an incremental base:
    /// finished, and not known to be damaged.
    pub fn usable_as_base(&self) -> bool {
        self.state == SnapshotState::Complete
            && self
                .verification
                .as_ref()
                .is_none_or(|v| v.state != VerifyState::Failed)
    }

    pub fn load(path: &Path, display: &str) -> Result<Self> {
        let bad = |reason: String| Error::Manifest {
            path: display.to_string(),
            reason,
        };
        let mut file =
            crate::fsutil::open_nofollow(path).ctx(|| format!("reading manifest {display}"))?;
        let len = file
            .metadata()
            .ctx(|| format!("reading manifest {display}"))?
            .len();
        if len > MAX_MANIFEST_BYTES {
            return Err(bad(format!("{len} bytes is larger than any manifest")));
        }
        let mut raw = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut file, &mut raw)
            .ctx(|| format!("reading manifest {display}"))?;
        let m: Manifest = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
        if m.magic != MANIFEST_MAGIC {
            return Err(bad(format!("unknown magic {:?}", m.magic)));
        }
        Ok(m)
    }

    pub fn store(&self, tmp_dir: &Path, path: &Path) -> Result<()> {
        let mut raw = serde_json::to_vec_pretty(self).map_err(|e| Error::Manifest {
            path: self.snapshot.clone(),
            reason: e.to_string(),
        })?;
        raw.push(b'\n');
        if raw.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Error::Manifest {
                path: self.snapshot.clone(),
                reason: format!("{} bytes is larger than a manifest may be", raw.len()),
            });
        }
        write_atomic(tmp_dir, path, &raw)
    }
}
