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

    /// Reads and decodes `manifest.json` at `path`; `display` names it
    /// in errors. A file larger than any manifest is refused unread.
    pub fn load(path: &Path, display: &str) -> Result<Self> {
        let mut file =
            crate::fsutil::open_nofollow(path).ctx(|| format!("reading manifest {display}"))?;
        let len = file
            .metadata()
            .ctx(|| format!("reading manifest {display}"))?
            .len();
        if len > MAX_MANIFEST_BYTES {
            return Err(Error::Manifest {
                path: display.to_string(),
                reason: format!("{len} bytes is larger than any manifest"),
            });
        }
        let mut raw = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut file, &mut raw)
            .ctx(|| format!("reading manifest {display}"))?;
        Self::decode(&raw, display)
    }

    /// Decodes the bytes of a `manifest.json` (untrusted: they come off
    /// disk; fuzzed by `fuzz/manifest`); `display` names it in errors.
    pub fn decode(raw: &[u8], display: &str) -> Result<Self> {
        let bad = |reason: String| Error::Manifest {
            path: display.to_string(),
            reason,
        };
        if raw.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "{} bytes is larger than any manifest",
                raw.len()
            )));
        }
        let m: Manifest = serde_json::from_slice(raw).map_err(|e| bad(e.to_string()))?;
        if m.magic != MANIFEST_MAGIC {
            return Err(bad(format!("unknown magic {:?}", m.magic)));
        }
        Ok(m)
    }

    /// The bytes [`Manifest::store`] writes: pretty JSON and a newline,
    /// refused if larger than [`Manifest::decode`] accepts.
    pub fn encode(&self) -> Result<Vec<u8>> {
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
        Ok(raw)
    }

    pub fn store(&self, tmp_dir: &Path, path: &Path) -> Result<()> {
        write_atomic(tmp_dir, path, &self.encode()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut m = Manifest::new("vm/1/2026-11-01T00:00:00Z".into());
        m.state = SnapshotState::Complete;
        m.files.push(ManifestFile {
            name: "disk.img.fidx".into(),
            kind: FileKind::Fixed,
            raw: true,
            file_size: 10_000,
            chunk_size: Some(4096),
            chunk_count: 3,
            index_csum: "ab".repeat(32),
            index_uuid: "cd".repeat(16),
            source: Some(SourceAttributes {
                mtime_ns: -1,
                ctime_ns: i64::MAX,
                inode: u64::MAX,
            }),
        });
        m.verification = Some(Verification {
            state: VerifyState::Failed,
            time: -5,
        });
        m.protected = true;
        m
    }

    #[test]
    fn encode_decode_round_trip() {
        let m = sample();
        let raw = m.encode().unwrap();
        assert_eq!(raw.last(), Some(&b'\n'));
        assert_eq!(Manifest::decode(&raw, "x").unwrap(), m);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_NAME);
        m.store(dir.path(), &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), raw);
        assert_eq!(Manifest::load(&path, "x").unwrap(), m);
    }

    #[test]
    fn decode_refuses_foreign_and_damaged_bytes() {
        let raw = sample().encode().unwrap();
        let bad = |b: &[u8]| {
            let e = Manifest::decode(b, "s").unwrap_err();
            matches!(e, Error::Manifest { ref path, .. } if path == "s")
        };
        assert!(bad(&raw[..raw.len() / 2]));
        assert!(bad(b""));
        assert!(bad(b"\xff"));
        let text = String::from_utf8(raw).unwrap();
        assert!(bad(text
            .replace(MANIFEST_MAGIC, "hoard-manifest-2")
            .as_bytes()));
        assert!(bad(text.replace("\"fixed\"", "\"sparse\"").as_bytes()));
        let mut huge = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        huge[..2].copy_from_slice(b"{}");
        assert!(bad(&huge));
    }
}
