//! Which kind a datastore is, and what the object-storage kind adds to
//! the directory: its configuration, the bucket's layout, the in-use
//! marker, and the mirroring of snapshot metadata into the bucket.
//!
//! A datastore on object storage is still a directory: it holds the
//! snapshots' manifests and indexes (so listing, incremental backups and
//! restores never list or download them), the locks, the chunk stubs and
//! the chunk cache. The bucket holds everything needed to rebuild that
//! directory: chunks, indexes, manifests and owners. A directory lost
//! with its disk is rebuilt by opening the bucket from an empty one
//! (docs/storage.md).
//!
//! ```text
//! BUCKET/PREFIX/
//!   hoard-datastore                      the format marker
//!   in-use                               which directory uses the bucket (JSON)
//!   chunks/ab/abcd…(64 hex)[.e]          chunk blobs, as a local chunk file
//!   snapshots/vm/100/owner               as in the directory
//!   snapshots/vm/100/2019-…Z/manifest.json, *.fidx, *.didx
//!   bad/abcd….STAMP                      chunks verify found damaged
//! ```

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hoard_storage::{S3Config, S3Storage, Storage};
use hoard_types::{BackupId, BackupType, FileName, SnapshotTime};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use crate::manifest::MANIFEST_NAME;

/// The local configuration of an object-storage datastore.
pub(crate) const CONFIG_NAME: &str = ".storage.json";
/// The bucket's format marker.
const BUCKET_MARKER: &str = "hoard-datastore";
pub(crate) const BUCKET_MARKER_CONTENT: &str = "hoard-datastore 2 object\n";
const IN_USE: &str = "in-use";
/// Where snapshot metadata lives in the bucket.
const SNAPSHOTS: &str = "snapshots";
/// The chunk cache's size when none is configured.
pub const DEFAULT_CACHE_BYTES: u64 = 4 << 30;

/// Where a datastore keeps its chunks.
#[derive(Debug, Clone)]
pub enum Backend {
    /// In the directory (`.chunks/`).
    Local,
    /// In an S3-compatible bucket.
    S3(ObjectOptions<S3Config>),
    /// In a storage the caller opened (tests: memory, a directory).
    Storage(ObjectOptions<Arc<dyn Storage>>),
}

/// How an object-storage datastore is opened.
#[derive(Debug, Clone)]
pub struct ObjectOptions<T> {
    pub target: T,
    /// The local chunk cache's bound in bytes.
    pub cache_bytes: u64,
    /// Take the bucket over from the directory that marked it in use.
    pub take_over: bool,
}

impl<T> ObjectOptions<T> {
    pub fn new(target: T) -> Self {
        ObjectOptions {
            target,
            cache_bytes: DEFAULT_CACHE_BYTES,
            take_over: false,
        }
    }
}

/// `.storage.json`: no secret, only where the bucket is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StorageConfig {
    /// This directory's identity in the bucket's in-use marker.
    pub id: String,
    pub cache_bytes: u64,
    /// None: a storage only its creator can open again (tests).
    #[serde(default)]
    pub s3: Option<S3Config>,
}

impl StorageConfig {
    pub fn load(root: &Path) -> Result<StorageConfig> {
        let path = root.join(CONFIG_NAME);
        let text = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| Error::Manifest {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn store(&self, root: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Manifest {
            path: CONFIG_NAME.into(),
            reason: e.to_string(),
        })?;
        write_atomic(&root.join(".tmp"), &root.join(CONFIG_NAME), &json)
    }
}

/// Opens the storage a configuration names.
pub(crate) fn open_s3(config: &S3Config) -> Result<Arc<dyn Storage>> {
    Ok(Arc::new(S3Storage::open(config)?))
}

/// Checks, when a datastore is created on it, that the service keeps
/// create-if-absent: a chunk upload must never overwrite another.
pub(crate) fn check_conditional_writes(config: &S3Config) -> Result<()> {
    if config.no_conditional_writes {
        return Ok(());
    }
    if !S3Storage::open(config)?.probe_conditional_writes()? {
        return Err(Error::Storage(hoard_storage::Error::Config(format!(
            "{} overwrote an object on a conditional PUT (If-None-Match: *): it does not \
             support conditional writes. If this server is the bucket's only user, create \
             the datastore with --s3-no-conditional-writes (docs/storage.md)",
            config.endpoint
        ))));
    }
    Ok(())
}

/// The bucket's side of opening: its marker (written if the bucket is
/// new), then the in-use marker. Returns whether the bucket held a
/// datastore already.
pub(crate) fn open_bucket(storage: &dyn Storage, id: &str, take_over: bool) -> Result<bool> {
    let existed = match storage.get(BUCKET_MARKER) {
        Ok(found) if found == BUCKET_MARKER_CONTENT.as_bytes() => true,
        Ok(found) => {
            return Err(Error::UnsupportedFormat {
                path: PathBuf::from(storage.describe()),
                found: String::from_utf8_lossy(&found).trim().to_string(),
            });
        }
        Err(hoard_storage::Error::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    claim_in_use(storage, id, take_over)?;
    if !existed {
        storage.put_if_absent(
            BUCKET_MARKER,
            Bytes::from_static(BUCKET_MARKER_CONTENT.as_bytes()),
        )?;
    }
    Ok(existed)
}

#[derive(Debug, Serialize, Deserialize)]
struct InUse {
    id: String,
    host: String,
    since: String,
}

/// Marks the bucket as used by the directory `id`, unless another
/// directory marked it (then [`Error::InUse`], or taken over).
fn claim_in_use(storage: &dyn Storage, id: &str, take_over: bool) -> Result<()> {
    let mine = InUse {
        id: id.to_string(),
        host: hostname(),
        since: jiff::Timestamp::now().to_string(),
    };
    let json = Bytes::from(serde_json::to_vec(&mine).unwrap_or_default());
    for _ in 0..2 {
        match storage.get(IN_USE) {
            Ok(found) => {
                let other: InUse = serde_json::from_slice(&found).unwrap_or(InUse {
                    id: "(unreadable)".into(),
                    host: "?".into(),
                    since: "?".into(),
                });
                if other.id == id {
                    return Ok(());
                }
                if take_over {
                    tracing::warn!(
                        "taking {} over from directory {} on {}",
                        storage.describe(),
                        other.id,
                        other.host
                    );
                    storage.put(IN_USE, json)?;
                    return Ok(());
                }
                return Err(Error::InUse {
                    store: storage.describe(),
                    other_id: other.id,
                    host: other.host,
                    since: other.since,
                });
            }
            Err(hoard_storage::Error::NotFound(_)) => {
                if storage.put_if_absent(IN_USE, json.clone())? == hoard_storage::Put::Created {
                    return Ok(());
                }
                // Another directory claimed it between our get and put.
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Busy(format!(
        "{}: the in-use marker keeps changing",
        storage.describe()
    )))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "(unknown host)".into())
}

/// Writes every snapshot's metadata the bucket holds into the (new)
/// directory `root`. Keys that are not a group's owner or a snapshot's
/// manifest or index are skipped.
pub(crate) fn pull_metadata(storage: &dyn Storage, root: &Path) -> Result<u64> {
    let mut pulled = 0;
    let mut failure = None;
    storage.list(&format!("{SNAPSHOTS}/"), &mut |obj| {
        let rel = &obj.key[SNAPSHOTS.len() + 1..];
        if !is_metadata_path(rel) {
            tracing::warn!("skipping {} in the bucket: not snapshot metadata", obj.key);
            return Ok(ControlFlow::Continue(()));
        }
        let result = storage.get(&obj.key).map_err(Error::from).and_then(|data| {
            let dest = root.join(rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
            }
            write_atomic(&root.join(".tmp"), &dest, &data)
        });
        match result {
            Ok(()) => {
                pulled += 1;
                Ok(ControlFlow::Continue(()))
            }
            Err(e) => {
                failure = Some(e);
                Ok(ControlFlow::Break(()))
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(pulled),
    }
}

/// `TYPE/ID/owner` or `TYPE/ID/TIME/NAME` with a manifest or index name.
fn is_metadata_path(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    let group_ok =
        |ty: &str, id: &str| ty.parse::<BackupType>().is_ok() && BackupId::new(id).is_ok();
    match parts.as_slice() {
        [ty, id, "owner"] => group_ok(ty, id),
        [ty, id, time, name] => {
            group_ok(ty, id)
                && time.parse::<SnapshotTime>().is_ok()
                && (*name == MANIFEST_NAME
                    || [".fidx", ".didx"].iter().any(|suffix| {
                        name.strip_suffix(suffix)
                            .is_some_and(|stem| FileName::new(stem).is_ok())
                    }))
        }
        _ => false,
    }
}

/// Copies snapshot metadata written in the directory to the bucket, and
/// removes it there. Metadata is uploaded after the local file is durable
/// and before anything names it: an index before the manifest that lists
/// it, so the bucket never names an index it lacks.
#[derive(Debug, Clone)]
pub(crate) struct Mirror {
    pub storage: Arc<dyn Storage>,
    root: PathBuf,
}

impl Mirror {
    pub fn new(storage: Arc<dyn Storage>, root: &Path) -> Self {
        Mirror {
            storage,
            root: root.to_path_buf(),
        }
    }

    fn key(&self, path: &Path) -> Result<String> {
        let rel = path
            .strip_prefix(&self.root)
            .map_err(|_| Error::Unsafe(format!("{} is outside the datastore", path.display())))?;
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Ok(format!("{SNAPSHOTS}/{}", parts.join("/")))
    }

    /// Uploads the local file at `path` (replacing the bucket's copy).
    pub fn upload(&self, path: &Path) -> Result<()> {
        let data = std::fs::read(path).ctx(|| format!("reading {}", path.display()))?;
        self.storage.put(&self.key(path)?, Bytes::from(data))?;
        Ok(())
    }

    /// Removes the bucket's copy of the file at `path`.
    pub fn remove(&self, path: &Path) -> Result<()> {
        self.storage.delete(&[self.key(path)?])?;
        Ok(())
    }

    /// Removes every object under the directory `dir`'s key.
    pub fn remove_all(&self, dir: &Path) -> Result<()> {
        let prefix = format!("{}/", self.key(dir)?);
        let mut keys = Vec::new();
        self.storage.list(&prefix, &mut |o| {
            keys.push(o.key);
            Ok(ControlFlow::Continue(()))
        })?;
        if !keys.is_empty() {
            self.storage.delete(&keys)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_metadata_paths_are_pulled() {
        for ok in [
            "vm/100/owner",
            "vm/100/2019-04-23T12:23:36Z/manifest.json",
            "host/h/2019-04-23T12:23:36Z/root.pxar.didx",
            "ct/1/2019-04-23T12:23:36Z/drive.img.fidx",
        ] {
            assert!(is_metadata_path(ok), "{ok}");
        }
        for bad in [
            "vm/100",
            "xx/100/owner",
            "vm/100/2019-04-23T12:23:36Z/.lock",
            "vm/100/2019-04-23T12:23:36Z/x.exe",
            "vm/100/notatime/manifest.json",
            "vm/100/2019-04-23T12:23:36Z/a/manifest.json",
        ] {
            assert!(!is_metadata_path(bad), "{bad}");
        }
    }
}
