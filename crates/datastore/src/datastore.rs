//! The datastore directory: opening it, writing snapshots into it and
//! finding what is there.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hoard_types::{
    BackupGroup, BackupId, BackupType, Digest, FileName, SnapshotPath, SnapshotTime,
    SourceAttributes,
};

use hoard_storage::{S3Config, Storage};

use crate::backend::{
    BUCKET_MARKER_CONTENT, Backend, CONFIG_NAME, Claim, Lease, Mirror, ObjectOptions,
    StorageConfig, bucket_holds_datastore, check_conditional_writes, mark_bucket, new_generation,
    open_s3, pull_metadata,
};
use crate::chunk_cache::ChunkCache;
use crate::chunk_store::ChunkClass;
use crate::chunk_store::ChunkStore;
use crate::dynamic_index::{DynamicIndexReader, DynamicIndexWriter};
use crate::error::{Error, IoContext, Result};
use crate::fixed_index::{FixedIndexReader, FixedIndexWriter};
use crate::fsutil::{create_dir_durable, fsync_dir, open_nofollow, refuse_symlinks, write_atomic};
use crate::image_deltas::{DeltaCounts, make_deltas};
use crate::index_file::IndexSummary;
use crate::locks::{FsTime, Locks, SnapshotPin, WriterRegistration, try_exclusive};
use crate::manifest::{FileKind, MANIFEST_NAME, Manifest, ManifestFile, Seal, SnapshotState};
use crate::object_chunks::ObjectChunks;
use crate::recovery::{ProcessTemp, Recovery, Settled, sweep_dead_temp_dirs};

pub(crate) const MARKER_NAME: &str = ".hoard-datastore";
pub(crate) const MARKER_CONTENT: &str = "hoard-datastore 2\n";
/// A local datastore that may hold delta chunks (`DIGEST.d`): raised from
/// version 2 before its first delta is written, so that a hoard which
/// predates deltas (whose GC would not keep their bases) refuses to open
/// it. Otherwise the same format.
pub(crate) const DELTA_MARKER_CONTENT: &str = "hoard-datastore 3\n";
/// The marker of a datastore whose chunks are on object storage: the same
/// format, but a hoard that predates object storage must not open it (it
/// would take the stubs for chunks).
const OBJECT_MARKER_CONTENT: &str = BUCKET_MARKER_CONTENT;
const LOCK_NAME: &str = ".lock";
/// In a group's directory: the name of the token that owns the group.
const OWNER_NAME: &str = "owner";
const MAX_OWNER_BYTES: u64 = 256;
/// Files one snapshot may hold: a manifest is rewritten whole as each
/// file finishes, so this bounds both its size and the writing.
pub const MAX_FILES_PER_SNAPSHOT: usize = 1024;
/// How far ahead of the server's clock a new snapshot's time may lie.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;
/// Where verify moves damaged chunks.
pub(crate) const BAD_DIR: &str = ".bad";

/// An open datastore. Cheap to clone; every method is blocking I/O.
#[derive(Debug, Clone)]
pub struct Datastore {
    root: PathBuf,
    /// This process's directory under `.tmp/` (see `recovery`).
    temp: Arc<ProcessTemp>,
    chunks: ChunkStore,
    locks: Arc<Locks>,
    /// On object storage: where snapshot metadata is copied.
    mirror: Option<Mirror>,
}

impl Datastore {
    /// Opens the datastore at `root`, creating it (on local disk) if the
    /// directory is missing or empty. A non-empty directory without the
    /// marker is refused, so hoard never takes over a directory that is
    /// not its own. An existing datastore opens as whatever kind it is.
    pub fn open_or_create(root: &Path) -> Result<Self> {
        Self::open_or_create_with(root, Backend::Local)
    }

    /// Opens the datastore at `root`, creating it with `backend` if the
    /// directory is missing or empty. On object storage, a bucket that
    /// holds a datastore already is attached: its snapshots' metadata is
    /// copied into the new directory.
    pub fn open_or_create_with(root: &Path, backend: Backend) -> Result<Self> {
        let marker = root.join(MARKER_NAME);
        if marker.exists() {
            return Self::open_as(root, &backend);
        }
        create_dir_durable(root)?;
        let mut names = Vec::new();
        for entry in fs::read_dir(root).ctx(|| format!("reading {}", root.display()))? {
            let entry = entry.ctx(|| format!("reading {}", root.display()))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        // An object-storage datastore whose creation was cut short is set
        // up again; any other content means the directory is not ours.
        let resumable = names.iter().any(|n| n == CONFIG_NAME);
        if !names.is_empty() && !resumable {
            return Err(Error::NotADatastore(root.to_path_buf()));
        }
        create_dir_durable(&root.join(".tmp"))?;
        create_dir_durable(&root.join(".chunks"))?;
        ChunkStore::create_prefix_dirs(&root.join(".chunks"))?;
        let content = match &backend {
            Backend::Local => MARKER_CONTENT,
            Backend::S3(o) => {
                check_conditional_writes(&o.target)?;
                Self::set_up_objects(root, open_s3(&o.target)?, Some(o.target.clone()), o)?;
                OBJECT_MARKER_CONTENT
            }
            Backend::Storage(o) => {
                Self::set_up_objects(root, o.target.clone(), None, o)?;
                OBJECT_MARKER_CONTENT
            }
        };
        // The marker last: a datastore whose creation was cut short is
        // still empty of it and is created again.
        write_atomic(&root.join(".tmp"), &marker, content.as_bytes())?;
        Self::open_as(root, &backend)
    }

    /// The object-storage part of creating a datastore: its
    /// configuration, the bucket's markers, and (a bucket that holds a
    /// datastore) its snapshots' metadata.
    fn set_up_objects<T>(
        root: &Path,
        storage: Arc<dyn Storage>,
        s3: Option<S3Config>,
        o: &ObjectOptions<T>,
    ) -> Result<()> {
        // A setup cut short is resumed with the identity it chose.
        let (id, generation) = match StorageConfig::load(root) {
            Ok(c) => (c.id, c.generation),
            Err(_) => (format!("{:016x}", rand::random::<u64>()), new_generation()),
        };
        let config = StorageConfig {
            id,
            generation,
            previous: None,
            cache_bytes: o.cache_bytes,
            s3,
        };
        config.store(root)?;
        let existed = bucket_holds_datastore(storage.as_ref())?;
        let claim = if o.take_over {
            Claim::TakeOver
        } else {
            Claim::Own
        };
        Lease::open(storage.clone(), root, &config, claim)?;
        if !existed {
            mark_bucket(storage.as_ref())?;
        } else {
            let n = pull_metadata(storage.as_ref(), root)?;
            tracing::info!(
                "attached {}: {n} metadata files copied into {}",
                storage.describe(),
                root.display()
            );
        }
        Ok(())
    }

    /// Opens an existing datastore.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_as(root, &Backend::Local)
    }

    /// Opens an existing datastore; `backend` may change an object
    /// datastore's connection settings (not which bucket it is).
    fn open_as(root: &Path, backend: &Backend) -> Result<Self> {
        let marker = root.join(MARKER_NAME);
        if !root.is_dir() {
            return Err(Error::NoDatastore(root.to_path_buf()));
        }
        let found =
            fs::read_to_string(&marker).map_err(|_| Error::NotADatastore(root.to_path_buf()))?;
        let on_objects = match found.as_str() {
            MARKER_CONTENT | DELTA_MARKER_CONTENT => false,
            OBJECT_MARKER_CONTENT => true,
            _ => {
                return Err(Error::UnsupportedFormat {
                    path: root.to_path_buf(),
                    found: found.trim().to_string(),
                });
            }
        };
        if !on_objects && !matches!(backend, Backend::Local) {
            return Err(Error::Unsafe(format!(
                "{} is a datastore on local disk; it cannot move to object storage",
                root.display()
            )));
        }
        // The directories every write goes through must be real ones: a
        // link planted there would redirect chunks out of the datastore.
        for dir in [".tmp", ".chunks", ".locks", ".cache"] {
            refuse_symlinks(root, &[dir])?;
        }
        ChunkStore::refuse_linked_prefixes(&root.join(".chunks"))?;
        let tmp = root.join(".tmp");
        create_dir_durable(&tmp)?;
        let temp = Arc::new(ProcessTemp::create(&tmp)?);
        let locks = Arc::new(Locks::open(root)?);
        let mut chunks = ChunkStore::new(
            root.join(".chunks"),
            temp.clone(),
            root.join(BAD_DIR),
            locks.clone(),
        );
        let mut mirror = None;
        if on_objects {
            let (storage, cache_bytes, lease) = Self::open_objects(root, backend)?;
            let cache = ChunkCache::open(&root.join(".cache"), temp.path(), cache_bytes)?;
            let objects = ObjectChunks::new(
                storage.clone(),
                root.join(".chunks"),
                cache,
                temp.clone(),
                locks.clone(),
                Arc::new(lease),
            );
            chunks = chunks.with_objects(Arc::new(objects));
            mirror = Some(Mirror::new(storage, root));
        }
        Ok(Datastore {
            root: root.to_path_buf(),
            chunks,
            temp,
            locks,
            mirror,
        })
    }

    /// The storage of an object datastore, its cache size, and the lease
    /// on its bucket (checked: the bucket names this directory).
    fn open_objects(root: &Path, backend: &Backend) -> Result<(Arc<dyn Storage>, u64, Lease)> {
        let mut config = StorageConfig::load(root)?;
        let storage = match (backend, &config.s3) {
            (Backend::S3(o), Some(stored)) => {
                // The endpoint may change (a new address, TLS); the
                // bucket and prefix may not.
                let same =
                    |a: &S3Config, b: &S3Config| (&a.bucket, &a.prefix) == (&b.bucket, &b.prefix);
                if !same(&o.target, stored) {
                    return Err(Error::Unsafe(format!(
                        "{} is a datastore on bucket {} (prefix {:?}); it cannot move to \
                         bucket {} (prefix {:?})",
                        root.display(),
                        stored.bucket,
                        stored.prefix,
                        o.target.bucket,
                        o.target.prefix
                    )));
                }
                if (&o.target, o.cache_bytes) != (stored, config.cache_bytes) {
                    config.s3 = Some(o.target.clone());
                    config.cache_bytes = o.cache_bytes;
                    config.store(root)?;
                }
                open_s3(&o.target)?
            }
            (Backend::Local, Some(stored)) => open_s3(stored)?,
            (Backend::Storage(o), _) => {
                config.cache_bytes = o.cache_bytes;
                o.target.clone()
            }
            (_, None) => {
                return Err(Error::Unsafe(format!(
                    "{} is a datastore on a storage that only its creator can open",
                    root.display()
                )));
            }
        };
        // Taking over happens when a directory is created; an existing
        // directory only ever opens a bucket whose lease it holds.
        let lease = Lease::open(storage.clone(), root, &config, Claim::Own)?;
        Ok((storage, config.cache_bytes, lease))
    }

    /// A server's start on an object-storage datastore: renews the lease
    /// on the bucket, so that any copy of this directory is refused from
    /// now on. Nothing to do on local disk.
    pub fn start_serving(&self) -> Result<()> {
        match self.chunks.lease() {
            Some(l) => l.renew(),
            None => Ok(()),
        }
    }

    /// Fails unless this directory still holds the bucket's lease (a
    /// no-op on local disk).
    pub fn check_lease(&self) -> Result<()> {
        match self.chunks.lease() {
            Some(l) => l.check(),
            None => Ok(()),
        }
    }

    /// The object storage under the datastore, if it is on one.
    pub fn object_storage(&self) -> Option<&Arc<dyn Storage>> {
        self.mirror.as_ref().map(|m| &m.storage)
    }

    /// Where this process writes files before they become visible.
    pub(crate) fn tmp(&self) -> &Path {
        self.temp.path()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunks(&self) -> &ChunkStore {
        &self.chunks
    }

    pub fn snapshot_dir(&self, snap: &SnapshotPath) -> PathBuf {
        self.root
            .join(snap.group.ty.as_str())
            .join(snap.group.id.as_str())
            .join(snap.time.to_string())
    }

    /// Creates the snapshot and takes it for writing. A snapshot is
    /// written by one writer, once: one that exists already is refused
    /// ([`Error::SnapshotBusy`] while its writer lives,
    /// [`Error::SnapshotExists`] after), so a finished snapshot never
    /// changes. Its time must be newer than every snapshot of its group,
    /// and not beyond [`MAX_CLOCK_SKEW_SECS`] ahead of this machine's
    /// clock, so a writer can neither slip an old snapshot under the
    /// newest (pushing good ones out of a retention policy) nor plant
    /// one that stays the newest for ever.
    pub fn begin_snapshot(&self, snap: &SnapshotPath) -> Result<SnapshotWriter> {
        let dir = self.checked_snapshot_dir(snap)?;
        // On object storage: only while this directory holds the bucket.
        self.check_lease()?;
        let now = SnapshotTime::now();
        if snap.time.epoch() > now.epoch().saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(Error::SnapshotInFuture {
                time: snap.clone(),
                now: now.to_string(),
                skew_secs: MAX_CLOCK_SKEW_SECS,
            });
        }
        if let Some(group_dir) = dir.parent() {
            create_dir_durable(group_dir)?;
        }
        match fs::create_dir(&dir) {
            Ok(()) => fsync_dir(dir.parent().unwrap_or(&self.root))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(if self.writer_active(snap)? {
                    Error::SnapshotBusy(snap.clone())
                } else {
                    Error::SnapshotExists(snap.clone())
                });
            }
            Err(e) => return Err(e).ctx(|| format!("creating snapshot {snap}")),
        }
        let lock = open_snapshot_lock(&dir, snap)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::SnapshotBusy(snap.clone())),
            Err(TryLockError::Error(e)) => {
                return Err(e).ctx(|| format!("locking snapshot {snap}"));
            }
        }
        // Checked with the new directory in place: of two writers racing
        // with different times, each sees the other's directory or was
        // first, so neither ends up under an older newest.
        if let Some(newest) = self.newest_other_snapshot(snap)? {
            let _ = fs::remove_file(dir.join(LOCK_NAME));
            let _ = fs::remove_dir(&dir);
            return Err(Error::SnapshotNotNewer {
                time: snap.clone(),
                newest,
            });
        }
        let manifest_path = dir.join(MANIFEST_NAME);
        let mut manifest = Manifest::new(snap.to_string());
        manifest.state = SnapshotState::Writing;
        manifest.store(self.tmp(), &manifest_path)?;
        Ok(SnapshotWriter {
            ds: self.clone(),
            snap: snap.clone(),
            dir,
            manifest,
            started: HashSet::new(),
            in_progress: HashSet::new(),
            mirrored: false,
            _lock: lock,
        })
    }

    /// The newest snapshot of `snap`'s group at or after `snap`'s time,
    /// other than `snap` itself (any state, manifest or not).
    fn newest_other_snapshot(&self, snap: &SnapshotPath) -> Result<Option<SnapshotPath>> {
        let group_dir = self.group_dir(&snap.group);
        let newest = dir_names(&group_dir)?
            .iter()
            .filter_map(|n| n.parse::<SnapshotTime>().ok())
            .filter(|t| *t > snap.time)
            .max();
        Ok(newest.map(|time| SnapshotPath {
            group: snap.group.clone(),
            time,
        }))
    }

    fn group_dir(&self, group: &BackupGroup) -> PathBuf {
        self.root.join(group.ty.as_str()).join(group.id.as_str())
    }

    /// [`Datastore::snapshot_dir`], refusing it if the type, group or
    /// snapshot directory is a symbolic link.
    fn checked_snapshot_dir(&self, snap: &SnapshotPath) -> Result<PathBuf> {
        let time = snap.time.to_string();
        refuse_symlinks(
            &self.root,
            &[snap.group.ty.as_str(), snap.group.id.as_str(), &time],
        )?;
        Ok(self.snapshot_dir(snap))
    }

    /// Whether the group's directory exists.
    pub fn group_exists(&self, group: &BackupGroup) -> Result<bool> {
        refuse_symlinks(&self.root, &[group.ty.as_str(), group.id.as_str()])?;
        Ok(self.group_dir(group).is_dir())
    }

    /// The name recorded as the group's owner, if any.
    pub fn group_owner(&self, group: &BackupGroup) -> Result<Option<String>> {
        refuse_symlinks(
            &self.root,
            &[group.ty.as_str(), group.id.as_str(), OWNER_NAME],
        )?;
        let path = self.group_dir(group).join(OWNER_NAME);
        let mut file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("reading the owner of {group}")),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(&mut file, MAX_OWNER_BYTES),
            &mut text,
        )
        .ctx(|| format!("reading the owner of {group}"))?;
        let owner = text.trim();
        if owner.is_empty() {
            return Err(Error::Owner {
                group: group.to_string(),
                reason: "the owner file is empty".into(),
            });
        }
        Ok(Some(owner.to_string()))
    }

    /// Makes `owner` the owner of a group that has none, creating the
    /// group's directory; fails if another owner got there first.
    pub fn claim_group(&self, group: &BackupGroup, owner: &str) -> Result<()> {
        refuse_symlinks(&self.root, &[group.ty.as_str(), group.id.as_str()])?;
        let dir = self.group_dir(group);
        create_dir_durable(&dir)?;
        let mut tmp = crate::fsutil::TempFile::create(self.tmp(), "owner")?;
        std::io::Write::write_all(&mut tmp.file, format!("{owner}\n").as_bytes())
            .ctx(|| format!("writing the owner of {group}"))?;
        tmp.sync()?;
        // link(2) creates the name only if it is absent: of two claims,
        // exactly one wins.
        let path = dir.join(OWNER_NAME);
        match fs::hard_link(tmp.path(), &path) {
            Ok(()) => {
                fsync_dir(&dir)?;
                self.mirror_upload(&path)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                match self.group_owner(group)? {
                    Some(o) if o == owner => Ok(()),
                    other => Err(Error::Owner {
                        group: group.to_string(),
                        reason: format!("it belongs to {}", other.unwrap_or_default()),
                    }),
                }
            }
            Err(e) => Err(e).ctx(|| format!("recording the owner of {group}")),
        }
    }

    /// Records `owner` as the group's owner, replacing any other (an
    /// admin's assignment).
    pub fn set_group_owner(&self, group: &BackupGroup, owner: &str) -> Result<()> {
        refuse_symlinks(
            &self.root,
            &[group.ty.as_str(), group.id.as_str(), OWNER_NAME],
        )?;
        let dir = self.group_dir(group);
        if !dir.is_dir() {
            return Err(Error::Owner {
                group: group.to_string(),
                reason: "no such group".into(),
            });
        }
        let path = dir.join(OWNER_NAME);
        write_atomic(self.tmp(), &path, format!("{owner}\n").as_bytes())?;
        self.mirror_upload(&path)
    }

    /// On object storage: copies a metadata file just written to the
    /// bucket.
    fn mirror_upload(&self, path: &Path) -> Result<()> {
        match &self.mirror {
            Some(m) => m.upload(path),
            None => Ok(()),
        }
    }

    pub fn load_manifest(&self, snap: &SnapshotPath) -> Result<Manifest> {
        let path = self.checked_snapshot_dir(snap)?.join(MANIFEST_NAME);
        if !path.exists() {
            return Err(Error::SnapshotNotFound(snap.clone()));
        }
        Manifest::load(&path, &snap.to_string())
    }

    pub(crate) fn locks(&self) -> &Locks {
        &self.locks
    }

    /// Registers a writer (a connection that uploads or references
    /// chunks); GC keeps everything it stamps until the registration drops.
    pub fn register_writer(&self) -> Result<WriterRegistration> {
        self.locks.register_writer()
    }

    /// Holds `snap` against prune until the pin drops: the base of a
    /// running backup, a snapshot being restored. Fails with
    /// [`Error::SnapshotNotFound`] if it is gone, or going.
    pub fn pin_snapshot(&self, snap: &SnapshotPath) -> Result<SnapshotPin> {
        let dir = self.checked_snapshot_dir(snap)?;
        let pin = SnapshotPin::take(&dir, &snap.to_string())?
            .ok_or_else(|| Error::SnapshotNotFound(snap.clone()))?;
        // Checked after the pin: a prune that held the directory first
        // removed the manifest before letting go.
        if !dir.join(MANIFEST_NAME).exists() {
            return Err(Error::SnapshotNotFound(snap.clone()));
        }
        Ok(pin)
    }

    /// Changes a finished snapshot's manifest (verification result,
    /// protection). Fails with [`Error::SnapshotBusy`] while a writer
    /// holds the snapshot.
    pub fn update_manifest<T>(
        &self,
        snap: &SnapshotPath,
        f: impl FnOnce(&mut Manifest) -> T,
    ) -> Result<T> {
        let _pin = self.pin_snapshot(snap)?;
        let dir = self.snapshot_dir(snap);
        let lock = open_snapshot_lock(&dir, snap)?;
        if !try_exclusive(&lock, &format!("snapshot {snap}"))? {
            return Err(Error::SnapshotBusy(snap.clone()));
        }
        let path = dir.join(MANIFEST_NAME);
        let mut manifest = Manifest::load(&path, &snap.to_string())?;
        let out = f(&mut manifest);
        manifest.store(self.tmp(), &path)?;
        self.mirror_upload(&path)?;
        Ok(out)
    }

    /// Takes a group's maintenance lock (one prune per group at a time).
    pub fn lock_group(&self, group: &BackupGroup) -> Result<File> {
        self.locks.group(group.ty.as_str(), group.id.as_str())
    }

    /// Removes a snapshot unless something holds it. The manifest goes
    /// first, so a crash halfway leaves a directory that readers ignore.
    pub fn remove_snapshot(&self, snap: &SnapshotPath) -> Result<Removal> {
        let dir = self.checked_snapshot_dir(snap)?;
        let name = snap.to_string();
        let Some(dir_lock) = open_dir(&dir, &name)? else {
            return Ok(Removal::Gone);
        };
        if !try_exclusive(&dir_lock, &format!("snapshot {name}"))? {
            return Ok(Removal::InUse);
        }
        let lock = open_snapshot_lock(&dir, snap)?;
        if !try_exclusive(&lock, &format!("snapshot {name}"))? {
            return Ok(Removal::BeingWritten);
        }
        let manifest_path = dir.join(MANIFEST_NAME);
        if !manifest_path.exists() {
            return Ok(Removal::Gone);
        }
        // Protection is checked under the lock that `protect` takes.
        if Manifest::load(&manifest_path, &name)?.protected {
            return Ok(Removal::Protected);
        }
        // On object storage the bucket's manifest goes first: a snapshot
        // must never live on there after it is gone here (GC would take
        // its chunks, and a rebuilt directory would bring it back).
        if let Some(m) = &self.mirror {
            m.remove(&manifest_path)?;
        }
        fs::remove_file(&manifest_path).ctx(|| format!("removing the manifest of {name}"))?;
        fsync_dir(&dir)?;
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {name}"))? {
            let entry = entry.ctx(|| format!("listing {name}"))?;
            fs::remove_file(entry.path()).ctx(|| format!("removing {}", entry.path().display()))?;
        }
        fs::remove_dir(&dir).ctx(|| format!("removing {name}"))?;
        if let Some(group) = dir.parent() {
            fsync_dir(group)?;
        }
        // Indexes no manifest names: garbage in the bucket if this fails.
        if let Some(m) = &self.mirror
            && let Err(e) = m.remove_all(&dir)
        {
            tracing::warn!("removing the indexes of {name} from the bucket: {e}");
        }
        Ok(Removal::Removed)
    }

    /// Whether a live writer holds the snapshot.
    pub fn writer_active(&self, snap: &SnapshotPath) -> Result<bool> {
        let dir = self.checked_snapshot_dir(snap)?;
        let lock = match File::open(dir.join(LOCK_NAME)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).ctx(|| format!("opening the lock of {snap}")),
        };
        Ok(!try_exclusive(&lock, &format!("snapshot {snap}"))?)
    }

    /// Settles a snapshot whose writer died: `writing` becomes
    /// `incomplete`, keeping the files it finished, or the snapshot is
    /// removed if it finished none (`recovery` has the argument). A
    /// snapshot with a live writer, or already settled, is untouched.
    pub fn settle_snapshot(&self, snap: &SnapshotPath) -> Result<Settled> {
        let outcome = self.update_manifest(snap, |m| {
            if m.state != SnapshotState::Writing {
                Settled::Untouched
            } else if m.files.is_empty() {
                Settled::Removed
            } else {
                m.state = SnapshotState::Incomplete;
                Settled::MadeIncomplete
            }
        });
        match outcome {
            Ok(Settled::Removed) => {}
            Ok(other) => return Ok(other),
            Err(Error::SnapshotBusy(_) | Error::SnapshotNotFound(_)) => {
                return Ok(Settled::Untouched);
            }
            Err(e) => return Err(e),
        }
        // Still `writing` with no file, and nobody can write it again: its
        // directory makes a new writer of that name fail.
        match self.remove_snapshot(snap)? {
            Removal::Removed => {
                let dir = self.snapshot_dir(snap);
                // The group directory too, if this was its only snapshot.
                if let Some(group) = dir.parent()
                    && fs::remove_dir(group).is_ok()
                {
                    fsync_dir(group.parent().unwrap_or(&self.root))?;
                }
                Ok(Settled::Removed)
            }
            _ => Ok(Settled::Untouched),
        }
    }

    /// Puts right what dead processes left: their temp files, and the
    /// snapshots their writers never finished (see `recovery`). Safe at
    /// any time beside live servers and maintenance; the server runs it
    /// on start and GC on every run.
    pub fn recover(&self) -> Result<Recovery> {
        let mut report = Recovery {
            temp_files_removed: sweep_dead_temp_dirs(&self.root.join(".tmp"))?,
            ..Recovery::default()
        };
        // A manifest that cannot be read is verify's business, not ours.
        let listed = self.list_with(&mut |_| true, &mut |_, _| Ok(()))?;
        for s in listed {
            if s.manifest.state != SnapshotState::Writing {
                continue;
            }
            // One snapshot that cannot be settled now (a full disk, a
            // race with prune) waits for the next run; the rest go on.
            match self.settle_snapshot(&s.path) {
                Ok(Settled::Untouched) => {}
                Ok(Settled::MadeIncomplete) => report.snapshots_incomplete.push(s.path.to_string()),
                Ok(Settled::Removed) => report.snapshots_removed.push(s.path.to_string()),
                Err(e) => tracing::warn!("snapshot {} not settled: {e}", s.path),
            }
        }
        Ok(report)
    }

    /// What [`Datastore::remove_snapshot`] would keep from removing the
    /// snapshot right now, if anything (for a dry run).
    pub fn removal_blocker(&self, snap: &SnapshotPath) -> Result<Option<Removal>> {
        let dir = self.checked_snapshot_dir(snap)?;
        let Some(dir_lock) = open_dir(&dir, &snap.to_string())? else {
            return Ok(Some(Removal::Gone));
        };
        if !try_exclusive(&dir_lock, &format!("snapshot {snap}"))? {
            return Ok(Some(Removal::InUse));
        }
        if self.writer_active(snap)? {
            return Ok(Some(Removal::BeingWritten));
        }
        if self.load_manifest(snap)?.protected {
            return Ok(Some(Removal::Protected));
        }
        Ok(None)
    }

    /// The snapshots with a readable manifest of the groups `keep`
    /// accepts (asked before any of the group's manifests is read), sorted
    /// by group then time; a snapshot whose manifest cannot be read is
    /// passed to `skipped` instead of failing the listing. For serving
    /// lists; maintenance uses [`Datastore::list_snapshots`], which stops.
    pub fn list_snapshots_where(
        &self,
        mut keep: impl FnMut(&BackupGroup) -> bool,
        mut skipped: impl FnMut(&SnapshotPath, Error),
    ) -> Result<Vec<SnapshotInfo>> {
        let mut listed = self.list_with(&mut keep, &mut |path, e| {
            skipped(path, e);
            Ok(())
        })?;
        // Shown as they are: a snapshot whose writer died is incomplete,
        // or gone if it had no file, even before `recover` writes that.
        listed.retain_mut(|s| {
            if s.manifest.state != SnapshotState::Writing
                || self.writer_active(&s.path).unwrap_or(true)
            {
                return true;
            }
            // The writer may have finished since the manifest was read.
            match self.load_manifest(&s.path) {
                Ok(m) if m.state != SnapshotState::Writing => {
                    s.manifest = m;
                    true
                }
                Ok(m) if m.files.is_empty() => false,
                Ok(m) => {
                    s.manifest = m;
                    s.manifest.state = SnapshotState::Incomplete;
                    true
                }
                Err(_) => false,
            }
        });
        Ok(listed)
    }

    /// Every snapshot with a manifest, sorted by group then time.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.list_with(&mut |_| true, &mut |_, e| Err(e))
    }

    fn list_with(
        &self,
        keep: &mut dyn FnMut(&BackupGroup) -> bool,
        on_error: &mut dyn FnMut(&SnapshotPath, Error) -> Result<()>,
    ) -> Result<Vec<SnapshotInfo>> {
        let mut out = Vec::new();
        for ty in BackupType::ALL {
            for id_name in dir_names(&self.root.join(ty.as_str()))? {
                let Ok(id) = BackupId::new(&id_name) else {
                    continue;
                };
                let group = BackupGroup { ty, id };
                if !keep(&group) {
                    continue;
                }
                let group_dir = self.root.join(ty.as_str()).join(&id_name);
                for time_name in dir_names(&group_dir)? {
                    let Ok(time) = time_name.parse::<SnapshotTime>() else {
                        continue;
                    };
                    let path = SnapshotPath {
                        group: group.clone(),
                        time,
                    };
                    match self.load_manifest(&path) {
                        Ok(manifest) => out.push(SnapshotInfo { path, manifest }),
                        Err(Error::SnapshotNotFound(_)) => {}
                        Err(e) => on_error(&path, e)?,
                    }
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// The fixed index of the newest earlier backup of disk image
    /// `stored_name` in `snap`'s group, if it has the same chunk size and
    /// is a sound base for deltas: plain (the server cannot compare
    /// encrypted chunks), not failed by verify, on local disk (a bucket's
    /// chunks stay whole). Best effort: anything unreadable means none.
    fn previous_image(
        &self,
        snap: &SnapshotPath,
        stored_name: &str,
        chunk_size: u32,
    ) -> Option<FixedIndexReader> {
        if self.mirror.is_some() {
            return None;
        }
        let group_dir = self.group_dir(&snap.group);
        let mut times: Vec<SnapshotTime> = dir_names(&group_dir)
            .ok()?
            .iter()
            .filter_map(|n| n.parse().ok())
            .filter(|t| *t < snap.time)
            .collect();
        times.sort_unstable();
        // The newest few with a manifest: a run of failed backups that
        // left no manifest is passed over, an earlier disk is not looked
        // for far back.
        for time in times.into_iter().rev().take(8) {
            let prev = SnapshotPath {
                group: snap.group.clone(),
                time,
            };
            let Ok(manifest) = self.load_manifest(&prev) else {
                continue;
            };
            let failed = matches!(
                &manifest.verification,
                Some(v) if v.state == crate::manifest::VerifyState::Failed
            );
            let Some(entry) = manifest.file(stored_name) else {
                continue;
            };
            if manifest.encrypted
                || failed
                || entry.kind != FileKind::Fixed
                || entry.chunk_size != Some(chunk_size)
            {
                return None;
            }
            return match self.open_index(&format!("{prev}/{stored_name}")) {
                Ok(IndexReader::Fixed(r)) => Some(r),
                _ => None,
            };
        }
        None
    }

    /// Opens a finished index by its datastore-relative path, as sent in
    /// BackupCreated and GetHashList (`vm/100/TIME/NAME.fidx`). Anything
    /// that is not such a path, or not named by its snapshot's manifest,
    /// is [`Error::IndexNotFound`].
    pub fn open_index(&self, rel: &str) -> Result<IndexReader> {
        let not_found = || Error::IndexNotFound(rel.to_string());
        let (snap, name) = rel.rsplit_once('/').ok_or_else(not_found)?;
        let snap: SnapshotPath = snap.parse().map_err(|_| not_found())?;
        FileName::new(name).map_err(|_| not_found())?;
        let manifest = match self.load_manifest(&snap) {
            Err(Error::SnapshotNotFound(_)) => return Err(not_found()),
            other => other?,
        };
        let entry = manifest.file(name).ok_or_else(not_found)?;
        let path = self.checked_snapshot_dir(&snap)?.join(name);
        let reader = match entry.kind {
            FileKind::Fixed => IndexReader::Fixed(FixedIndexReader::open(&path, rel)?),
            FileKind::Dynamic => IndexReader::Dynamic(DynamicIndexReader::open(&path, rel)?),
        };
        if hex::encode(reader.header_csum()) != entry.index_csum {
            return Err(Error::IndexCorrupt {
                path: rel.to_string(),
                reason: "index checksum differs from the manifest".into(),
            });
        }
        Ok(reader)
    }
}

/// What [`Datastore::remove_snapshot`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// Pinned by a reader (base of a running backup, restore, verify).
    InUse,
    /// A writer holds it.
    BeingWritten,
    Protected,
    /// Not there (any more).
    Gone,
}

fn open_dir(dir: &Path, what: &str) -> Result<Option<File>> {
    match File::open(dir) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx(|| format!("opening snapshot {what}")),
    }
}

fn open_snapshot_lock(dir: &Path, snap: &SnapshotPath) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(LOCK_NAME))
        .ctx(|| format!("locking snapshot {snap}"))
}

fn dir_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("listing {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_dir())
            && let Ok(n) = entry.file_name().into_string()
        {
            names.push(n);
        }
    }
    names.sort();
    Ok(names)
}

/// A snapshot found on disk.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub path: SnapshotPath,
    pub manifest: Manifest,
}

/// A finished index of either kind.
#[derive(Debug)]
pub enum IndexReader {
    Fixed(FixedIndexReader),
    Dynamic(DynamicIndexReader),
}

impl IndexReader {
    pub fn chunk_count(&self) -> u64 {
        match self {
            IndexReader::Fixed(r) => r.chunk_count(),
            IndexReader::Dynamic(r) => r.chunk_count(),
        }
    }

    pub fn file_size(&self) -> u64 {
        match self {
            IndexReader::Fixed(r) => r.file_size(),
            IndexReader::Dynamic(r) => r.file_size(),
        }
    }

    fn header_csum(&self) -> [u8; 32] {
        match self {
            IndexReader::Fixed(r) => r.inner.header.csum,
            IndexReader::Dynamic(r) => r.inner.header.csum,
        }
    }

    pub fn verify_checksum(&self) -> Result<()> {
        match self {
            IndexReader::Fixed(r) => r.verify_checksum(),
            IndexReader::Dynamic(r) => r.verify_checksum(),
        }
    }

    /// Digests of chunks `start..start+n` back to back, as the protocol
    /// sends them.
    pub fn digest_block(&self, start: u64, n: usize) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        match self {
            IndexReader::Fixed(r) => r.inner.read_entries(start, n, &mut buf)?,
            IndexReader::Dynamic(r) => {
                r.inner.read_entries(start, n, &mut buf)?;
                let mut w = 0;
                for i in 0..n {
                    buf.copy_within(i * 40 + 8..i * 40 + 40, w);
                    w += 32;
                }
                buf.truncate(w);
            }
        }
        Ok(buf)
    }

    /// Chunks `start..start+n` as 40-byte entries (end offset u64 LE,
    /// digest), as the protocol's IndexPart sends them. A fixed index's
    /// ends follow from its chunk size.
    pub fn entry_block(&self, start: u64, n: usize) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        match self {
            IndexReader::Dynamic(r) => r.inner.read_entries(start, n, &mut buf)?,
            IndexReader::Fixed(r) => {
                let cs = r.chunk_size() as u64;
                let size = r.file_size();
                buf.reserve(n * 40);
                for (i, d) in r.digests(start, n)?.into_iter().enumerate() {
                    let end = ((start + i as u64 + 1) * cs).min(size);
                    buf.extend_from_slice(&end.to_le_bytes());
                    buf.extend_from_slice(d.as_bytes());
                }
            }
        }
        Ok(buf)
    }

    /// Opens an index file of `kind` at `path` with no manifest check
    /// (verify compares with the manifest itself). `name` is for messages.
    pub fn open_file(kind: FileKind, path: &Path, name: &str) -> Result<IndexReader> {
        Ok(match kind {
            FileKind::Fixed => IndexReader::Fixed(FixedIndexReader::open(path, name)?),
            FileKind::Dynamic => IndexReader::Dynamic(DynamicIndexReader::open(path, name)?),
        })
    }

    /// The header's checksum of the entries, hex (as in the manifest).
    pub fn csum_hex(&self) -> String {
        hex::encode(self.header_csum())
    }

    /// Chunks `start..start+n` with the size each must have: a fixed
    /// index's slot size, a dynamic index's distance between end offsets.
    pub fn sized_digests(&self, start: u64, n: usize) -> Result<Vec<(Digest, u64)>> {
        match self {
            IndexReader::Fixed(r) => {
                let cs = r.chunk_size() as u64;
                let size = r.file_size();
                Ok(r.digests(start, n)?
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let off = (start + i as u64) * cs;
                        (d, size.saturating_sub(off).min(cs))
                    })
                    .collect())
            }
            IndexReader::Dynamic(r) => {
                let mut prev = if start == 0 {
                    0
                } else {
                    r.entries(start - 1, 1)?[0].0
                };
                Ok(r.entries(start, n)?
                    .into_iter()
                    .map(|(end, d)| {
                        let size = end.saturating_sub(prev);
                        prev = end;
                        (d, size)
                    })
                    .collect())
            }
        }
    }

    /// Digests of chunks `start..start+n`, in index order.
    pub fn digests(&self, start: u64, n: usize) -> Result<Vec<Digest>> {
        match self {
            IndexReader::Fixed(r) => r.digests(start, n),
            IndexReader::Dynamic(r) => {
                Ok(r.entries(start, n)?.into_iter().map(|(_, d)| d).collect())
            }
        }
    }
}

/// Checks what a new file declares, before any directory or file is made
/// for it.
pub fn check_new_file(kind: FileKind, file_size: u64, chunk_size: u32) -> Result<()> {
    match kind {
        FileKind::Fixed => FixedIndexWriter::check_sizes(file_size, chunk_size).map(|_| ()),
        FileKind::Dynamic if file_size != 0 => Err(Error::DynamicFileSize(file_size)),
        FileKind::Dynamic => Ok(()),
    }
}

/// Holds a snapshot's lock while files are added to it.
pub struct SnapshotWriter {
    ds: Datastore,
    snap: SnapshotPath,
    dir: PathBuf,
    manifest: Manifest,
    /// Stored names started since the lock was taken.
    started: HashSet<String>,
    /// Stored names started and neither finished nor abandoned.
    in_progress: HashSet<String>,
    /// A manifest of this writer's was sent to the bucket.
    mirrored: bool,
    _lock: File,
}

/// How a file of a snapshot is being built.
pub enum FileIndexWriter {
    Fixed(FixedIndexWriter),
    Dynamic(DynamicIndexWriter),
}

/// One file of a snapshot being written; dropped unfinished, it leaves
/// nothing visible.
pub struct FileWriter {
    stored_name: String,
    rel_path: String,
    dest: PathBuf,
    raw: bool,
    chunk_size: Option<u32>,
    source: Option<SourceAttributes>,
    index: FileIndexWriter,
    /// The snapshot's kind of chunk.
    class: ChunkClass,
    mirror: Option<Mirror>,
    /// A disk image's previous backup: its chunks are the delta bases of
    /// this one's changed chunks ([`FileWriter::finish_with_deltas`]).
    delta_base: Option<FixedIndexReader>,
}

impl SnapshotWriter {
    pub fn path(&self) -> &SnapshotPath {
        &self.snap
    }

    /// Starts a new file. Sizes are checked before anything is allocated.
    pub fn start_file(
        &mut self,
        name: &FileName,
        kind: FileKind,
        raw: bool,
        file_size: u64,
        chunk_size: u32,
    ) -> Result<FileWriter> {
        let stored_name = format!("{name}{}", kind.suffix());
        if self.started.len() >= MAX_FILES_PER_SNAPSHOT && !self.started.contains(&stored_name) {
            return Err(Error::TooManyFiles {
                snapshot: self.snap.clone(),
                max: MAX_FILES_PER_SNAPSHOT,
            });
        }
        if self.manifest.file(&stored_name).is_some() {
            return Err(Error::FileExists {
                snapshot: self.snap.clone(),
                name: stored_name,
            });
        }
        if self.in_progress.contains(&stored_name) {
            return Err(Error::FileBusy {
                snapshot: self.snap.clone(),
                name: stored_name,
            });
        }
        let index = match kind {
            FileKind::Fixed => FileIndexWriter::Fixed(FixedIndexWriter::create(
                self.ds.tmp(),
                file_size,
                chunk_size,
            )?),
            FileKind::Dynamic => {
                if file_size != 0 {
                    return Err(Error::DynamicFileSize(file_size));
                }
                FileIndexWriter::Dynamic(DynamicIndexWriter::create(self.ds.tmp())?)
            }
        };
        let delta_base = match kind {
            FileKind::Fixed if self.manifest.chunk_class() == ChunkClass::Plain => {
                self.ds.previous_image(&self.snap, &stored_name, chunk_size)
            }
            _ => None,
        };
        self.started.insert(stored_name.clone());
        self.in_progress.insert(stored_name.clone());
        Ok(FileWriter {
            rel_path: format!("{}/{}", self.snap, stored_name),
            dest: self.dir.join(&stored_name),
            stored_name,
            raw,
            chunk_size: (kind == FileKind::Fixed).then_some(chunk_size),
            source: None,
            index,
            class: self.manifest.chunk_class(),
            mirror: self.ds.mirror.clone(),
            delta_base,
        })
    }

    /// Records a file that [`FileWriter::finish`] wrote; from now on it is
    /// visible.
    pub fn record(&mut self, file: ManifestFile) -> Result<()> {
        self.in_progress.remove(&file.name);
        self.manifest.files.push(file);
        let stored = self.store_manifest();
        if stored.is_err() {
            self.manifest.files.pop();
        }
        stored
    }

    /// Marks the snapshot as written by a client that encrypts (a session
    /// with feature ENCRYPTION): its files may reference only encrypted
    /// chunks, and it closes as complete only if sealed, so a backup cut
    /// off before its seal never passes for a plain snapshot.
    pub fn set_encrypted(&mut self) {
        self.manifest.encrypted = true;
    }

    /// Stores the client's seal; the manifest carries it from now on.
    pub fn seal(&mut self, seal: Seal) -> Result<()> {
        let old = self.manifest.seal.replace(seal);
        let stored = self.store_manifest();
        if stored.is_err() {
            self.manifest.seal = old;
        }
        stored
    }

    /// Forgets a file that will not be finished (its stream failed).
    pub fn abandon(&mut self, stored_name: &str) {
        self.in_progress.remove(stored_name);
    }

    fn store_manifest(&mut self) -> Result<()> {
        let path = self.dir.join(MANIFEST_NAME);
        self.mirrored |= self.ds.mirror.is_some();
        self.manifest.store(self.ds.tmp(), &path)?;
        self.ds.mirror_upload(&path)
    }

    /// Releases the snapshot. It is complete if every file started under
    /// this lock was finished. A snapshot that ends with no file at all
    /// is removed again.
    pub fn close(self) -> Result<SnapshotState> {
        self.close_as(true)
    }

    /// Releases a snapshot whose writer promised to confirm its end and
    /// did not (a version 2 session with CloseSnapshot that went away):
    /// whatever it finished, it may have meant to add more, so it is
    /// incomplete, never a complete snapshot missing files.
    pub fn close_unconfirmed(self) -> Result<SnapshotState> {
        self.close_as(false)
    }

    fn close_as(mut self, may_complete: bool) -> Result<SnapshotState> {
        let all_done = may_complete
            && self.started.iter().all(|n| self.manifest.file(n).is_some())
            && (!self.manifest.encrypted || self.manifest.seal.is_some());
        if self.manifest.files.is_empty() {
            // Any manifest this writer stored may be in the bucket (an
            // upload reported failed may have landed): it goes there too,
            // or a rebuilt directory would bring the snapshot back.
            if let Some(m) = &self.ds.mirror
                && self.mirrored
                && let Err(e) = m.remove(&self.dir.join(MANIFEST_NAME))
            {
                tracing::warn!(
                    "removing the manifest of empty snapshot {} from the bucket: {e}",
                    self.snap
                );
            }
            let _ = fs::remove_file(self.dir.join(MANIFEST_NAME));
            let _ = fs::remove_file(self.dir.join(LOCK_NAME));
            let _ = fs::remove_dir(&self.dir);
            // The group directory too, if this was its only snapshot.
            if let Some(group) = self.dir.parent() {
                let _ = fs::remove_dir(group);
                fsync_dir(group.parent().unwrap_or(&self.ds.root))?;
            }
            return Ok(SnapshotState::Incomplete);
        }
        self.manifest.state = if all_done {
            SnapshotState::Complete
        } else {
            SnapshotState::Incomplete
        };
        self.store_manifest()?;
        Ok(self.manifest.state)
    }
}

impl FileWriter {
    /// Records what the client's source looked like; kept in the manifest.
    pub fn set_source(&mut self, source: SourceAttributes) {
        self.source = Some(source);
    }

    pub fn rel_path(&self) -> &str {
        &self.rel_path
    }

    pub fn stored_name(&self) -> &str {
        &self.stored_name
    }

    pub fn kind(&self) -> FileKind {
        match self.index {
            FileIndexWriter::Fixed(_) => FileKind::Fixed,
            FileIndexWriter::Dynamic(_) => FileKind::Dynamic,
        }
    }

    /// Fills slot `index` of a fixed index with a stored chunk of the
    /// right size.
    /// `since` is the writer's registration start ([`Datastore::register_writer`]).
    pub fn add_fixed(
        &mut self,
        store: &ChunkStore,
        index: u64,
        digest: &Digest,
        since: FsTime,
    ) -> Result<()> {
        let FileIndexWriter::Fixed(w) = &mut self.index else {
            unreachable!("the server dispatches by kind")
        };
        let expected = w.slot_size(index)?;
        let got = store.reference(digest, since, self.class)?;
        if got != expected {
            return Err(Error::SlotSize {
                index,
                digest: *digest,
                expected,
                got,
            });
        }
        w.set(index, digest)
    }

    /// Appends a stored chunk starting at `offset` to a dynamic index.
    pub fn add_dynamic(
        &mut self,
        store: &ChunkStore,
        offset: u64,
        digest: &Digest,
        since: FsTime,
    ) -> Result<()> {
        let FileIndexWriter::Dynamic(w) = &mut self.index else {
            unreachable!("the server dispatches by kind")
        };
        if offset != w.next_offset() {
            return Err(Error::DynamicOffset {
                expected: w.next_offset(),
                got: offset,
            });
        }
        let size = store.reference(digest, since, self.class)?;
        w.push(offset, digest, size)
    }

    /// [`FileWriter::finish`], then, for a disk image with a previous
    /// backup, keeps each chunk this backup stored (`stored_now`) that
    /// differs from the chunk in the same slot of that backup as a delta
    /// of it. The deltas are made before the file is recorded, so a
    /// backup that reports success has made them; none is needed for
    /// the backup to be complete, so a crash meanwhile loses nothing, and
    /// an error while making them is logged, not returned.
    pub fn finish_with_deltas(
        mut self,
        store: &ChunkStore,
        stored_now: &(dyn Fn(&Digest) -> bool + Sync),
    ) -> Result<(ManifestFile, Option<DeltaCounts>)> {
        let base = self.delta_base.take();
        let dest = self.dest.clone();
        let file = self.finish()?;
        let Some(base) = base else {
            return Ok((file, None));
        };
        let new = match FixedIndexReader::open(&dest, &file.name) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{}: deltas not made: {e}", dest.display());
                return Ok((file, None));
            }
        };
        // A few threads: each holds a chunk and its base (up to 32 MiB),
        // and several backups may finish at once.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        // The file is complete and durable already: a datastore error
        // here (a full disk, a failing read) ends the pass, not the
        // backup; the chunks not done stay whole.
        match make_deltas(store, &new, &base, stored_now, threads) {
            Ok(counts) => Ok((file, Some(counts))),
            Err(e) => {
                tracing::warn!("{}: deltas not made: {e}", dest.display());
                Ok((file, None))
            }
        }
    }

    /// Checks the file is whole and writes its index durably; the caller
    /// then [`SnapshotWriter::record`]s the result.
    pub fn finish(self) -> Result<ManifestFile> {
        let (kind, summary): (FileKind, IndexSummary) = match self.index {
            FileIndexWriter::Fixed(w) => (FileKind::Fixed, w.finish(&self.dest)?),
            FileIndexWriter::Dynamic(w) => (FileKind::Dynamic, w.finish(&self.dest)?),
        };
        if let Some(m) = &self.mirror {
            m.upload(&self.dest)?;
        }
        Ok(ManifestFile {
            name: self.stored_name,
            kind,
            raw: self.raw,
            file_size: summary.file_size,
            chunk_size: self.chunk_size,
            chunk_count: summary.chunk_count,
            index_csum: hex::encode(summary.csum),
            index_uuid: hex::encode(summary.uuid),
            source: self.source,
        })
    }
}
