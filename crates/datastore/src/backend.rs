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
    /// The lease's generation (see [`Lease`]), and the one before it
    /// while a renewal is under way.
    #[serde(default)]
    pub generation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
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

/// The bucket's marker: whether the bucket holds a datastore. A bucket
/// without the marker but with chunks or snapshots is refused: taking it
/// for an empty one would let the first GC delete every chunk.
pub(crate) fn bucket_holds_datastore(storage: &dyn Storage) -> Result<bool> {
    match storage.get(BUCKET_MARKER) {
        Ok(found) if found == BUCKET_MARKER_CONTENT.as_bytes() => Ok(true),
        Ok(found) => Err(Error::UnsupportedFormat {
            path: PathBuf::from(storage.describe()),
            found: String::from_utf8_lossy(&found).trim().to_string(),
        }),
        Err(hoard_storage::Error::NotFound(_)) => {
            for prefix in ["chunks/", "snapshots/", "in-use"] {
                let mut any = false;
                storage.list(prefix, &mut |_| {
                    any = true;
                    Ok(ControlFlow::Break(()))
                })?;
                if any {
                    return Err(Error::Unsafe(format!(
                        "{} holds hoard objects ({prefix}...) but no {BUCKET_MARKER} marker: \
                         refusing to take it for an empty bucket. Restore the marker (its \
                         content is {BUCKET_MARKER_CONTENT:?}) if this is a hoard datastore",
                        storage.describe()
                    )));
                }
            }
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes the marker of a new datastore's bucket.
pub(crate) fn mark_bucket(storage: &dyn Storage) -> Result<()> {
    storage.put_if_absent(
        BUCKET_MARKER,
        Bytes::from_static(BUCKET_MARKER_CONTENT.as_bytes()),
    )?;
    Ok(())
}

/// The bucket's `in-use` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InUse {
    id: String,
    /// Changes on every server start: a copy of the directory (restored
    /// from a backup, cloned with its VM) keeps an old one and is refused.
    #[serde(default)]
    generation: String,
    host: String,
    since: String,
}

/// The lease on the bucket that a directory holds: the bucket's `in-use`
/// names the directory's id and current generation. Checked on open,
/// before a snapshot is begun and before GC deletes anything; renewed
/// (a new generation) when a server starts.
#[derive(Debug)]
pub(crate) struct Lease {
    storage: Arc<dyn Storage>,
    root: PathBuf,
    id: String,
    generation: std::sync::Mutex<String>,
}

pub(crate) fn new_generation() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Lease {
    /// Checks (or, with `claim`, takes) the lease of the directory whose
    /// configuration is `config`.
    pub fn open(
        storage: Arc<dyn Storage>,
        root: &Path,
        config: &StorageConfig,
        claim: Claim,
    ) -> Result<Lease> {
        let lease = Lease {
            storage,
            root: root.to_path_buf(),
            id: config.id.clone(),
            generation: std::sync::Mutex::new(config.generation.clone()),
        };
        match (lease.read()?, claim) {
            (None, _) => lease.write(&config.generation, true)?,
            (Some(other), Claim::TakeOver) if other.id != config.id => {
                tracing::warn!(
                    "taking {} over from directory {} on {}",
                    lease.storage.describe(),
                    other.id,
                    other.host
                );
                lease.write(&config.generation, false)?;
            }
            (Some(other), _) if other.id != config.id => {
                return Err(Error::InUse {
                    store: lease.storage.describe(),
                    other_id: other.id,
                    host: other.host,
                    since: other.since,
                });
            }
            (Some(other), _) if other.generation == config.generation => {}
            // A renewal cut short after the directory's half: finish it.
            (Some(other), _) if Some(&other.generation) == config.previous.as_ref() => {
                lease.write(&config.generation, false)?;
            }
            (Some(other), _) => return Err(lease.stale(&other)),
        }
        Ok(lease)
    }

    fn stale(&self, found: &InUse) -> Error {
        Error::Unsafe(format!(
            "{} is not the directory that uses {} (its lease {} is not the bucket's {}, \
             renewed on {} since {}): it was copied or restored from an older state, or \
             another directory took the bucket over. Its view of the bucket is stale; start a \
             server on an empty directory with --take-over to rebuild it from the bucket",
            self.root.display(),
            self.storage.describe(),
            self.current(),
            found.generation,
            found.host,
            found.since
        ))
    }

    fn current(&self) -> String {
        self.generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn read(&self) -> Result<Option<InUse>> {
        match self.storage.get_bounded(IN_USE, 4096) {
            Ok(raw) => Ok(Some(serde_json::from_slice(&raw).map_err(|e| {
                Error::Unsafe(format!(
                    "{}: unreadable {IN_USE} marker ({e})",
                    self.storage.describe()
                ))
            })?)),
            Err(hoard_storage::Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn write(&self, generation: &str, create: bool) -> Result<()> {
        let mine = InUse {
            id: self.id.clone(),
            generation: generation.to_string(),
            host: hostname(),
            since: jiff::Timestamp::now().to_string(),
        };
        let json = Bytes::from(serde_json::to_vec(&mine).unwrap_or_default());
        if create {
            if self.storage.put_if_absent(IN_USE, json)? == hoard_storage::Put::Existed {
                return Err(Error::Busy(format!(
                    "{}: another directory claimed it at the same moment",
                    self.storage.describe()
                )));
            }
        } else {
            self.storage.put(IN_USE, json)?;
        }
        Ok(())
    }

    /// Fails unless the bucket's `in-use` still names this directory and
    /// generation.
    pub fn check(&self) -> Result<()> {
        match self.read()? {
            Some(found) if found.id == self.id && found.generation == self.current() => Ok(()),
            Some(found) if found.id != self.id => Err(Error::InUse {
                store: self.storage.describe(),
                other_id: found.id,
                host: found.host,
                since: found.since,
            }),
            Some(found) => Err(self.stale(&found)),
            None => Err(Error::Unsafe(format!(
                "{}: its {IN_USE} marker is gone",
                self.storage.describe()
            ))),
        }
    }

    /// A server's start: a new generation, in the directory first, then
    /// in the bucket. Every other holder of the old one (a copy of the
    /// directory) is refused from now on.
    pub fn renew(&self) -> Result<()> {
        self.check()?;
        let old = self.current();
        let new = new_generation();
        let mut config = StorageConfig::load(&self.root)?;
        config.previous = Some(old);
        config.generation = new.clone();
        config.store(&self.root)?;
        self.write(&new, false)?;
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }
}

/// How opening treats the bucket's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// It must be this directory's (or free).
    Own,
    /// Taken from whichever directory holds it (a new directory only).
    TakeOver,
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
        let decoded = decode_key(&obj.key[SNAPSHOTS.len() + 1..]);
        let Some(rel) = decoded.as_deref().filter(|r| is_metadata_path(r)) else {
            tracing::warn!("skipping {} in the bucket: not snapshot metadata", obj.key);
            return Ok(ControlFlow::Continue(()));
        };
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

/// A path part as an object key part: letters, digits, `.`, `:` and
/// `-` as they are (a leading `.` excepted); every other byte as `_XX`
/// (two lower-case hex digits). File names may hold any character but
/// `/` and NUL; object keys may not (`hoard_storage::check_key`).
fn encode_part(part: &[u8]) -> String {
    let mut out = String::with_capacity(part.len());
    for (i, &b) in part.iter().enumerate() {
        let plain = b.is_ascii_alphanumeric() || matches!(b, b':' | b'-') || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The path a metadata key stands for (`encode_part` undone per part);
/// None if it is not an encoding `encode_part` makes.
fn decode_key(key: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in key.split('/') {
        let mut bytes = Vec::with_capacity(part.len());
        let mut it = part.bytes();
        while let Some(b) = it.next() {
            if b == b'_' {
                let hex = [it.next()?, it.next()?];
                let v = u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?;
                bytes.push(v);
            } else {
                bytes.push(b);
            }
        }
        let decoded = String::from_utf8(bytes).ok()?;
        if encode_part(decoded.as_bytes()) != part {
            return None; // not canonical: two keys must not mean one path
        }
        parts.push(decoded);
    }
    Some(parts.join("/"))
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
            .map(|c| encode_part(c.as_os_str().as_encoded_bytes()))
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

    proptest::proptest! {
        /// Whatever key a bucket holds, the path it is pulled to is a
        /// plain relative path of the metadata layout, and the key is
        /// the only one that encodes to it.
        #[test]
        fn pulled_keys_stay_inside_the_directory(key in "[a-z0-9_./:-]{0,40}|\\PC{0,40}") {
            if let Some(rel) = decode_key(&key).filter(|r| is_metadata_path(r)) {
                for c in std::path::Path::new(&rel).components() {
                    proptest::prop_assert!(matches!(c, std::path::Component::Normal(_)), "{rel:?}");
                }
                let again: Vec<String> =
                    rel.split('/').map(|p| encode_part(p.as_bytes())).collect();
                proptest::prop_assert_eq!(again.join("/"), key);
            }
        }

        /// Every name a file may have survives the trip through a key.
        #[test]
        fn encoding_round_trips(name in "\\PC{1,40}") {
            let key = encode_part(name.as_bytes());
            proptest::prop_assert!(hoard_storage::check_key(&key).is_ok(), "{key}");
            proptest::prop_assert_eq!(decode_key(&key), Some(name));
        }
    }

    #[test]
    fn any_file_name_has_a_key_and_back() {
        for name in [
            "system disk.fidx",
            "données.didx",
            ".hidden.fidx",
            "a_b:c-d.e",
            "x%2F",
        ] {
            let key = encode_part(name.as_bytes());
            hoard_storage::check_key(&key).unwrap();
            assert_eq!(decode_key(&key).as_deref(), Some(name), "{key}");
        }
        assert_eq!(
            decode_key("vm/100/2019-04-23T12:23:36Z/a_20b.fidx").as_deref(),
            Some("vm/100/2019-04-23T12:23:36Z/a b.fidx")
        );
        // Not what the encoder makes: refused.
        for bad in ["a_2", "a_zz", "_61", "a_2e", "_ff"] {
            assert_eq!(decode_key(bad), None, "{bad}");
        }
    }

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
