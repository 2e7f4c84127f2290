//! The content-addressed chunk store: `.chunks/PP/DIGEST`,
//! `.chunks/PP/DIGEST.e` for chunks their clients encrypted, and
//! `.chunks/PP/DIGEST.d` for plain chunks kept as a delta of another
//! chunk ([`deltas`]).
//!
//! The two classes live in separate names, so nothing uploaded as one can
//! take, block, reveal or replace a chunk of the other: an encrypted
//! chunk's keyed digest cannot be checked by the server, and a plain
//! chunk's name must stay what its data hashes to.
//!
//! A chunk's file name is its SHA-256, checked against the data before
//! anything is written, so a name always matches its content unless the
//! disk damaged it (which the CRC in the header catches). Files appear
//! atomically; a zero-length file (a crash leftover on some filesystems)
//! counts as missing and is overwritten by the next insert.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hoard_types::zero::nonzero_runs;
use hoard_types::{Digest, MAX_CHUNK_SIZE};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{TempFile, fsync_dir, open_nofollow};
use crate::locks::{FsTime, Locks, touch};
use crate::object_chunks::ObjectChunks;
use crate::recovery::ProcessTemp;
use hoard_codec::Compression;
use hoard_codec::blob::{self, BlobHeader, Encoding, HEADER_SIZE as CHUNK_HEADER_SIZE};

mod deltas;
pub use deltas::{DELTA_SUFFIX, DeltaMade, MAX_CHAIN, MAX_CHAIN_READ};

/// The two kinds of chunk, kept apart: a backup holds one kind only, a
/// session uploads and references one kind only, and neither takes the
/// other's name (docs/security.md, "Encryption").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChunkClass {
    /// Unencrypted (raw or zstd): named by the SHA-256 of its data, which
    /// the server checks before storing it.
    Plain,
    /// Encrypted by its client: named by a keyed digest that nothing but
    /// the key can check.
    Encrypted,
}

impl ChunkClass {
    pub(crate) fn of(encoding: Encoding) -> ChunkClass {
        match encoding {
            Encoding::Raw | Encoding::Zstd => ChunkClass::Plain,
            Encoding::Encrypted => ChunkClass::Encrypted,
        }
    }
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Existed,
}

/// The chunks of a datastore: files under `.chunks/`, or objects in a
/// bucket ([`ObjectChunks`]) with local stubs under `.chunks/`. Callers
/// see one interface; only where chunks are kept, and how GC marks them,
/// differ.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    base: PathBuf,
    tmp: Arc<ProcessTemp>,
    /// Where verify moves damaged chunks (`.bad/`).
    bad: PathBuf,
    locks: Arc<Locks>,
    objects: Option<Arc<ObjectChunks>>,
    /// Whether the datastore's marker says it may hold deltas.
    delta_format: Arc<std::sync::atomic::AtomicBool>,
}

/// What the sweep of one prefix directory found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepCounts {
    pub removed: u64,
    pub removed_bytes: u64,
    pub kept: u64,
    pub kept_bytes: u64,
}

impl SweepCounts {
    pub fn add(&mut self, o: &SweepCounts) {
        self.removed += o.removed;
        self.removed_bytes += o.removed_bytes;
        self.kept += o.kept;
        self.kept_bytes += o.kept_bytes;
    }
}

/// What GC's mark found for one reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// Stamped now.
    Touched,
    /// Stamped at or after the cutoff already.
    Recent,
    Missing,
}

/// What verify found a good chunk to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Plain size, from the header.
    pub size: u64,
    /// Encrypted: only its structure and CRC could be checked.
    pub class: ChunkClass,
}

/// Why verify rejects a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkProblem {
    /// No file for the digest.
    Missing,
    /// A file of zero bytes (a crash leftover on some file systems).
    ZeroLength,
    /// Header, CRC, length or digest do not match.
    Corrupt(String),
    /// The file could not be read (an I/O error).
    Unreadable(String),
}

impl std::fmt::Display for ChunkProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkProblem::Missing => f.write_str("missing"),
            ChunkProblem::ZeroLength => f.write_str("zero-length file"),
            ChunkProblem::Corrupt(r) => write!(f, "corrupt: {r}"),
            ChunkProblem::Unreadable(r) => write!(f, "unreadable: {r}"),
        }
    }
}

/// A chunk file's name: 64 lower-case hex digits, with `.e` for an
/// encrypted chunk or `.d` for a delta.
pub(crate) fn is_chunk_name(name: &str) -> bool {
    let hex = name
        .strip_suffix(ENCRYPTED_SUFFIX)
        .or_else(|| name.strip_suffix(DELTA_SUFFIX))
        .unwrap_or(name);
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A chunk's file (and object) name.
pub(crate) fn chunk_name(digest: &Digest, class: ChunkClass) -> String {
    match class {
        ChunkClass::Plain => digest.to_hex(),
        ChunkClass::Encrypted => format!("{}{ENCRYPTED_SUFFIX}", digest.to_hex()),
    }
}

/// The suffix of an encrypted chunk's file name.
pub const ENCRYPTED_SUFFIX: &str = ".e";

/// Zero runs of at least this many bytes are holes in a chunk file.
const SPARSE_BLOCK: usize = 4096;

/// Hex digits of the digest that name a chunk's directory: 256
/// directories, pre-created with the datastore. restic uses the same
/// fan-out; ext4, XFS and ZFS index large directories, so millions of
/// chunks stay cheap to look up, and a fresh datastore creates no
/// directory per chunk (that was 15% of ingest CPU with 65,536 lazily
/// created ones).
pub const PREFIX_DIGITS: usize = 2;

impl ChunkStore {
    pub(crate) fn new(
        base: PathBuf,
        tmp: Arc<ProcessTemp>,
        bad: PathBuf,
        locks: Arc<Locks>,
    ) -> Self {
        ChunkStore {
            base,
            tmp,
            bad,
            locks,
            objects: None,
            delta_format: Arc::default(),
        }
    }

    /// Keeps the chunks in object storage instead.
    pub(crate) fn with_objects(mut self, objects: Arc<ObjectChunks>) -> Self {
        self.objects = Some(objects);
        self
    }

    /// On object storage: the lease on the bucket.
    pub(crate) fn lease(&self) -> Option<&crate::backend::Lease> {
        self.objects.as_ref().map(|o| o.lease.as_ref())
    }

    /// On object storage: keeps a chunk just stored (`blob` as stored) in
    /// the local cache, for a chunk that will be read again soon (a tree
    /// archive's metadata, which every incremental backup reads). Other
    /// uploads are not cached: a first backup would write every chunk
    /// locally a second time. A no-op on local disk.
    pub fn keep_cached(&self, digest: &Digest, class: ChunkClass, blob: &[u8]) {
        if let Some(o) = &self.objects {
            o.cache.insert(&chunk_name(digest, class), blob);
        }
    }

    /// On object storage: the bytes in the local chunk cache now.
    pub fn cached_bytes(&self) -> Option<u64> {
        self.objects.as_ref().map(|o| o.cache.bytes())
    }

    fn prefix(digest: &Digest) -> u8 {
        digest.0[0]
    }

    /// Where the plain chunk with this digest lives.
    pub fn chunk_path(&self, digest: &Digest) -> PathBuf {
        self.path_of(digest, ChunkClass::Plain)
    }

    /// Where the chunk of `class` with this digest lives (on object
    /// storage: its stub).
    pub fn path_of(&self, digest: &Digest, class: ChunkClass) -> PathBuf {
        let name = chunk_name(digest, class);
        self.base.join(&name[..PREFIX_DIGITS]).join(name)
    }

    /// Refuses a prefix directory under `base` that is a symbolic link.
    pub(crate) fn refuse_linked_prefixes(base: &Path) -> Result<()> {
        for p in 0..=255u8 {
            crate::fsutil::refuse_symlinks(base, &[&format!("{p:02x}")])?;
        }
        Ok(())
    }

    /// Creates the 256 prefix directories under `base`, so that storing a
    /// chunk never has to create (and fsync) a directory. Idempotent.
    pub(crate) fn create_prefix_dirs(base: &Path) -> Result<()> {
        for p in 0..=0xffu32 {
            let dir = base.join(format!("{p:02x}"));
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).ctx(|| format!("creating {}", dir.display())),
            }
        }
        crate::fsutil::fsync_dir(base)
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Verifies `data` against `digest` and stores it durably unless a
    /// chunk with that digest exists, compressed if that is worth it (a
    /// version 1 client's upload). Blocking: hashing and fsync.
    ///
    /// `since` is the start of the calling writer's registration: an
    /// existing chunk stamped before it is stamped now, under the prefix
    /// lock, so that a GC running meanwhile keeps it (docs/maintenance.md).
    pub fn insert(&self, digest: &Digest, data: &[u8], since: FsTime) -> Result<Inserted> {
        if data.is_empty() || data.len() > MAX_CHUNK_SIZE {
            return Err(Error::ChunkSize {
                size: data.len(),
                max: MAX_CHUNK_SIZE,
            });
        }
        let actual = Digest::of(data);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                declared: *digest,
                actual,
            });
        }
        if self.exists(digest, ChunkClass::Plain, since)? {
            return Ok(Inserted::Existed);
        }
        if let Some(o) = &self.objects {
            let blob = blob::encode_plain(data, AT_REST);
            let header =
                BlobHeader::decode(&blob, blob.len() as u64).map_err(|e| Error::BlobRejected {
                    digest: *digest,
                    reason: e.to_string(),
                })?;
            return o.store(digest, ChunkClass::Plain, header, blob.into(), since);
        }
        match AT_REST.compress(data) {
            Some(z) => {
                let h = BlobHeader::zstd(data.len(), &z);
                self.store(digest, since, ChunkClass::Plain, |f| write_blob(f, &h, &z))
            }
            None => self.store(digest, since, ChunkClass::Plain, |f| {
                write_blob(f, &BlobHeader::raw(data), data)
            }),
        }
    }

    /// Stores a chunk the client encoded (feature ENCODED_CHUNKS) as it
    /// was sent, after checking what can be checked: the header and CRC
    /// always; for an unencrypted chunk also that its data hashes to
    /// `digest`. The chunk must be of the session's `class` (encrypted
    /// exactly when the session negotiated ENCRYPTION).
    pub fn insert_blob(
        &self,
        digest: &Digest,
        blob: &[u8],
        class: ChunkClass,
        since: FsTime,
    ) -> Result<Inserted> {
        let corrupt = |e: hoard_codec::Error| Error::BlobRejected {
            digest: *digest,
            reason: e.to_string(),
        };
        let header = blob::check_structure(blob).map_err(corrupt)?;
        let found = ChunkClass::of(header.encoding);
        if found != class {
            return Err(Error::BlobRejected {
                digest: *digest,
                reason: match class {
                    ChunkClass::Plain => {
                        "an encrypted chunk, in a session that did not negotiate encryption"
                    }
                    ChunkClass::Encrypted => "an unencrypted chunk, in an encrypting session",
                }
                .into(),
            });
        }
        // Plain data is checked first, also when a chunk of that name
        // exists: only an upload proven to hold the data makes its digest
        // "uploaded" for the connection (the known-chunks rule), so
        // knowing a digest never lets anyone read its data.
        if class == ChunkClass::Plain {
            blob::verify_plain(digest, blob).map_err(corrupt)?;
        }
        if self.exists(digest, class, since)? {
            return Ok(Inserted::Existed);
        }
        if let Some(o) = &self.objects {
            let blob = bytes::Bytes::copy_from_slice(blob);
            return o.store(digest, class, header, blob, since);
        }
        let payload = &blob[CHUNK_HEADER_SIZE..];
        self.store(digest, since, class, |f| write_blob(f, &header, payload))
    }

    /// Under the prefix lock: whether a chunk of `class` is stored
    /// (stamping it as [`ChunkStore::existing`] does).
    fn exists(&self, digest: &Digest, class: ChunkClass, since: FsTime) -> Result<bool> {
        if let Some(o) = &self.objects {
            return o.exists(digest, class, since);
        }
        {
            let _shared = self.locks.share_prefix(Self::prefix(digest))?;
            if self.existing(digest, class, since)? {
                return Ok(true);
            }
        }
        // Kept as a delta: stored if its whole chain is (stamped in
        // order, each link under its own lock). If it cannot be told, the
        // chunk is stored whole: always safe, and it heals what a failing
        // read of the chain would otherwise break for every upload.
        if class != ChunkClass::Plain {
            return Ok(false);
        }
        match self.stamp_delta(digest, since) {
            Ok(stamped) => Ok(stamped.is_some()),
            Err(e) => {
                tracing::warn!(
                    "chunk {digest}: its delta chain cannot be read ({e}); storing it whole"
                );
                Ok(false)
            }
        }
    }

    /// Writes a new chunk file of `class` with `write` and renames it into
    /// place unless one is there by then (another upload of the same
    /// chunk won the race).
    fn store(
        &self,
        digest: &Digest,
        since: FsTime,
        class: ChunkClass,
        write: impl FnOnce(&File) -> std::io::Result<()>,
    ) -> Result<Inserted> {
        // Written and synced outside the prefix lock, so a GC waiting to
        // sweep this prefix never waits for a disk flush.
        let tmp = TempFile::create(self.tmp.path(), "chunk")?;
        write(&tmp.file).ctx(|| format!("writing chunk {digest}"))?;
        tmp.sync()?;
        let path = self.path_of(digest, class);
        {
            let _shared = self.locks.share_prefix(Self::prefix(digest))?;
            if self.existing(digest, class, since)? {
                return Ok(Inserted::Existed);
            }
            // The new file's mtime is its write time, after `since`.
            tmp.rename(&path)?;
        }
        crate::failpoint::write_step("chunk", "renamed")
            .ctx(|| format!("syncing the directory of chunk {digest}"))?;
        fsync_dir(path.parent().unwrap_or(&self.base))?;
        Ok(Inserted::New)
    }

    /// Under the prefix lock: whether a usable chunk file of `class`
    /// exists, stamping it if it is older than `since`.
    fn existing(&self, digest: &Digest, class: ChunkClass, since: FsTime) -> Result<bool> {
        stamp_file(&self.path_of(digest, class), digest, since)
    }

    /// A writer's reference to a stored chunk of the backup's `class` (so
    /// that no snapshot mixes the two): checks it is there, stamps it like
    /// [`ChunkStore::insert`] does, and returns its plain size.
    pub fn reference(&self, digest: &Digest, since: FsTime, class: ChunkClass) -> Result<u64> {
        if let Some(o) = &self.objects {
            return o.reference(digest, since, class);
        }
        {
            let _shared = self.locks.share_prefix(Self::prefix(digest))?;
            match self.open(digest, class) {
                Ok((file, header)) => {
                    let meta = file.metadata().ctx(|| format!("reading chunk {digest}"))?;
                    if FsTime::mtime(&meta) < since {
                        touch(&file).ctx(|| format!("stamping chunk {digest}"))?;
                    }
                    return Ok(header.raw_size as u64);
                }
                Err(Error::ChunkMissing(_)) if class == ChunkClass::Plain => {}
                Err(e) => return Err(e),
            }
        }
        self.stamp_delta(digest, since)?
            .ok_or(Error::ChunkMissing(*digest))
    }

    /// GC's mark: stamps the chunk unless it is stamped at or after
    /// `cutoff` already. Needs no lock: only GC removes chunks, and a
    /// stamp can only make a chunk younger.
    pub fn mark(&self, digest: &Digest, class: ChunkClass, cutoff: FsTime) -> Result<Marked> {
        if let Some(o) = &self.objects {
            return o.mark(digest, class, cutoff);
        }
        let path = self.path_of(digest, class);
        // Not there whole: a plain chunk may be kept as a delta (or have
        // just become one: a delta is in place before its whole file
        // goes).
        let as_delta = || match class {
            ChunkClass::Plain => self.mark_delta(digest, cutoff),
            ChunkClass::Encrypted => Ok(Marked::Missing),
        };
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return as_delta(),
            Err(e) => return Err(e).ctx(|| format!("reading chunk {digest}")),
        };
        if meta.len() == 0 {
            return as_delta();
        }
        if FsTime::mtime(&meta) >= cutoff {
            return Ok(Marked::Recent);
        }
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return as_delta(),
            Err(e) => return Err(e).ctx(|| format!("opening chunk {digest}")),
        };
        touch(&file).ctx(|| format!("stamping chunk {digest}"))?;
        Ok(Marked::Touched)
    }

    /// Chunk files under `.chunks/` and the bytes they occupy on disk, by
    /// a pass over the 256 prefix directories without locks (a count for
    /// people: chunks written or removed meanwhile may or may not be in
    /// it). On object storage these are the local stubs: the count is
    /// right, the bytes are the stubs'.
    pub fn count(&self) -> Result<(u64, u64)> {
        let (mut chunks, mut bytes) = (0u64, 0u64);
        for prefix in 0..=255u8 {
            let dir = self.base.join(format!("{prefix:02x}"));
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx(|| format!("listing {}", dir.display())),
            };
            for entry in rd {
                let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
                if !entry.file_name().to_str().is_some_and(is_chunk_name) {
                    continue;
                }
                match entry.metadata() {
                    Ok(m) => {
                        chunks += 1;
                        bytes += m.blocks() * 512;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).ctx(|| format!("reading {}", entry.path().display()));
                    }
                }
            }
        }
        Ok((chunks, bytes))
    }

    /// GC's sweep of prefix directory `prefix`: under its exclusive lock,
    /// removes every chunk file stamped before `cutoff`. Streams the
    /// directory; memory does not grow with its size.
    pub fn sweep_prefix(&self, prefix: u8, cutoff: FsTime) -> Result<SweepCounts> {
        if let Some(o) = &self.objects {
            return o.sweep_prefix(prefix, cutoff);
        }
        let _excl = self.locks.exclusive_prefix(prefix)?;
        let dir = self.base.join(format!("{prefix:02x}"));
        let mut counts = SweepCounts::default();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(counts),
            Err(e) => return Err(e).ctx(|| format!("listing {}", dir.display())),
        };
        let mut removed_any = false;
        for entry in rd {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Only files named by a digest are chunks; anything else is
            // not GC's to remove.
            if !is_chunk_name(name) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx(|| format!("reading {}", entry.path().display())),
            };
            let bytes = meta.blocks() * 512;
            if FsTime::mtime(&meta) < cutoff {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(e).ctx(|| format!("removing {}", entry.path().display()));
                    }
                }
                removed_any = true;
                counts.removed += 1;
                counts.removed_bytes += bytes;
            } else {
                counts.kept += 1;
                counts.kept_bytes += bytes;
            }
        }
        if removed_any {
            fsync_dir(&dir)?;
        }
        Ok(counts)
    }

    /// Verify's findings for one chunk, read and checked in full: an
    /// unencrypted chunk decoded and hashed; an encrypted one (keyed
    /// digest, no key here) checked for structure and CRC only.
    pub fn check(
        &self,
        digest: &Digest,
        class: ChunkClass,
    ) -> std::result::Result<Checked, ChunkProblem> {
        // On object storage the bucket's copy is checked, not the cache's.
        let blob = match &self.objects {
            Some(o) => match o.download(digest, class) {
                Ok(b) if b.is_empty() => return Err(ChunkProblem::ZeroLength),
                other => other,
            },
            None => self.load_blob(digest, class),
        };
        let checked = blob.and_then(|blob| {
            let header =
                BlobHeader::decode(&blob, blob.len() as u64).map_err(|e| Error::ChunkCorrupt {
                    digest: *digest,
                    reason: e.to_string(),
                })?;
            let class = ChunkClass::of(header.encoding);
            if class == ChunkClass::Plain {
                blob::verify_plain(digest, &blob).map_err(|e| Error::ChunkCorrupt {
                    digest: *digest,
                    reason: match e {
                        hoard_codec::Error::DigestMismatch { .. } => {
                            "its data does not hash to its name".into()
                        }
                        e => e.to_string(),
                    },
                })?;
            }
            Ok(Checked {
                size: header.raw_size as u64,
                class,
            })
        });
        match checked {
            Ok(c) => Ok(c),
            Err(Error::ChunkMissing(_) | Error::ChunkEncrypted(_)) => {
                let zero_length = self.objects.is_none()
                    && fs::symlink_metadata(self.path_of(digest, class)).is_ok();
                Err(if zero_length {
                    ChunkProblem::ZeroLength
                } else {
                    ChunkProblem::Missing
                })
            }
            Err(Error::ChunkCorrupt { reason, .. }) => Err(ChunkProblem::Corrupt(reason)),
            Err(e) => Err(ChunkProblem::Unreadable(e.to_string())),
        }
    }

    /// Moves a damaged chunk to `.bad/`, so that the next backup holding
    /// its data uploads it again. Under the prefix's exclusive lock the
    /// chunk is checked once more: a writer may have replaced a zero-length
    /// leftover meanwhile. Returns where it went, if it was moved.
    pub fn quarantine(&self, digest: &Digest, class: ChunkClass) -> Result<Option<String>> {
        let _excl = self.locks.exclusive_prefix(Self::prefix(digest))?;
        if let Some(o) = &self.objects {
            // It reads the object again and moves it only if still bad.
            return o.quarantine(digest, class);
        }
        let path = self.path_of(digest, class);
        // (A zero-length whole file is a crash leftover that counts as
        // missing: the delta is what readers get.)
        let no_whole = fs::metadata(&path).map_or(true, |m| m.len() == 0);
        if class == ChunkClass::Plain && no_whole && self.delta_path(digest).exists() {
            // The damage is in a file of its chain: that one is moved
            // (each under its own lock, so this one is released first).
            drop(_excl);
            return self.quarantine_delta(digest);
        }
        // Moved only if found damaged again: a read that fails now (an
        // I/O error that may pass) confirms nothing.
        let damaged = matches!(
            self.check(digest, class),
            Err(ChunkProblem::Corrupt(_) | ChunkProblem::ZeroLength)
        );
        if !path.exists() || !damaged {
            return Ok(None);
        }
        self.move_aside(&path, digest).map(Some)
    }

    /// Moves a damaged chunk file to `.bad/NAME.TIME`; the caller holds
    /// its prefix's exclusive lock.
    fn move_aside(&self, path: &Path, digest: &Digest) -> Result<String> {
        crate::fsutil::create_dir_durable(&self.bad)?;
        let stamp = jiff::Timestamp::now().as_second();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let dest = self.bad.join(format!(
            "{}.{stamp}",
            name.unwrap_or_else(|| digest.to_hex())
        ));
        fs::rename(path, &dest).ctx(|| format!("moving chunk {digest} aside"))?;
        fsync_dir(path.parent().unwrap_or(&self.base))?;
        fsync_dir(&self.bad)?;
        Ok(dest.display().to_string())
    }

    /// Opens the chunk file of `class`; one whose header is of the other
    /// class is damaged (it cannot have been stored so).
    fn open(&self, digest: &Digest, class: ChunkClass) -> Result<(File, BlobHeader)> {
        let path = self.path_of(digest, class);
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            // Asked for plain data that only an encrypted chunk holds: say
            // so. Callers name only chunks their principal may see (the
            // known-chunks rule), so this reveals nothing new.
            // (Not if the plain chunk is kept as a delta: an encrypted
            // chunk of the same name never hides a plain one.)
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && class == ChunkClass::Plain
                    && self.path_of(digest, ChunkClass::Encrypted).exists()
                    && !self.delta_path(digest).exists() =>
            {
                return Err(Error::ChunkEncrypted(*digest));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ChunkMissing(*digest));
            }
            Err(e) => return Err(e).ctx(|| format!("opening chunk {digest}")),
        };
        let len = file
            .metadata()
            .ctx(|| format!("reading chunk {digest}"))?
            .len();
        if len == 0 {
            return Err(Error::ChunkMissing(*digest));
        }
        let mut head = [0u8; CHUNK_HEADER_SIZE];
        let n = file
            .read_at(&mut head, 0)
            .ctx(|| format!("reading chunk {digest}"))?;
        let header = BlobHeader::decode(&head[..n], len).map_err(|e| Error::ChunkCorrupt {
            digest: *digest,
            reason: e.to_string(),
        })?;
        if ChunkClass::of(header.encoding) != class {
            return Err(Error::ChunkCorrupt {
                digest: *digest,
                reason: format!(
                    "a {} chunk in the place of the other class",
                    header.encoding
                ),
            });
        }
        Ok((file, header))
    }

    /// The length of the chunk's plain data, from its header only.
    /// Readers only; a writer uses [`ChunkStore::reference`].
    pub fn raw_size(&self, digest: &Digest) -> Result<u64> {
        if let Some(o) = &self.objects {
            return o.raw_size(digest, ChunkClass::Plain);
        }
        match self.open(digest, ChunkClass::Plain) {
            Ok((_, header)) => Ok(header.raw_size as u64),
            Err(Error::ChunkMissing(_)) => match self.delta_head(digest)? {
                Some(head) => Ok(u64::from(head.raw_size)),
                None => Err(Error::ChunkMissing(*digest)),
            },
            Err(e) => Err(e),
        }
    }

    /// Whether a usable chunk with this digest is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        if self.objects.is_some() {
            return self.raw_size(digest).is_ok();
        }
        self.raw_size(digest).is_ok()
    }

    /// A chunk file's bytes as stored (header and payload), its CRC
    /// checked: what an encoded session downloads.
    pub fn load_blob(&self, digest: &Digest, class: ChunkClass) -> Result<Vec<u8>> {
        if let Some(o) = &self.objects {
            return o.load_blob(digest, class).map(|(_, blob)| blob);
        }
        let (file, header) = match self.open(digest, class) {
            // Kept as a delta: rebuilt, and sent raw. Compressing it again
            // (zstd 1 or -3) made a restore slower, not faster: the
            // server's CPU, not the network, bounds it.
            Err(Error::ChunkMissing(_)) if class == ChunkClass::Plain => {
                return self.load_delta(digest).map(|d| blob::encode_raw(&d));
            }
            other => other?,
        };
        let blob = read_file(&file, digest)?;
        header
            .check_crc(&blob[CHUNK_HEADER_SIZE..])
            .map_err(|e| Error::ChunkCorrupt {
                digest: *digest,
                reason: e.to_string(),
            })?;
        Ok(blob)
    }

    /// Reads a chunk's plain data, checking its CRC. An encrypted chunk
    /// has no plain data the server could give out.
    pub fn load(&self, digest: &Digest) -> Result<Vec<u8>> {
        if let Some(o) = &self.objects {
            let (header, mut blob) = o.load_blob(digest, ChunkClass::Plain)?;
            let payload = blob.split_off(CHUNK_HEADER_SIZE);
            return blob::decode_payload_plain(&header, payload).map_err(|e| Error::ChunkCorrupt {
                digest: *digest,
                reason: e.to_string(),
            });
        }
        match self.load_whole(digest) {
            Err(Error::ChunkMissing(_)) if self.delta_path(digest).exists() => {
                self.load_delta(digest)
            }
            // Only an encrypted chunk by that name: say so (the caller
            // may download it, so it knows the name from an index).
            Err(Error::ChunkMissing(_)) if self.open(digest, ChunkClass::Encrypted).is_ok() => {
                Err(Error::ChunkEncrypted(*digest))
            }
            other => other,
        }
    }
}

/// Whether the usable (non-empty) chunk file at `path` exists, stamping
/// it if it is older than `since`. The caller holds its prefix lock.
fn stamp_file(path: &Path, digest: &Digest, since: FsTime) -> Result<bool> {
    let file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).ctx(|| format!("opening chunk {digest}")),
    };
    let meta = file.metadata().ctx(|| format!("reading chunk {digest}"))?;
    if meta.len() == 0 {
        return Ok(false);
    }
    if FsTime::mtime(&meta) < since {
        touch(&file).ctx(|| format!("stamping chunk {digest}"))?;
    }
    Ok(true)
}

/// How a version 1 client's raw uploads are stored: zstd level 3, as
/// before clients compressed (docs/format.md, "Chunk file").
const AT_REST: Compression = Compression::Zstd(3);

/// A chunk file's whole content. Read into spare capacity: no
/// zero-filling of a buffer that is overwritten right away.
fn read_file(file: &File, digest: &Digest) -> Result<Vec<u8>> {
    let len = file
        .metadata()
        .ctx(|| format!("reading chunk {digest}"))?
        .len() as usize;
    let mut data = Vec::with_capacity(len);
    let mut f = file;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))
        .and_then(|_| std::io::Read::take(f, len as u64).read_to_end(&mut data))
        .and_then(|_| crate::failpoint::read_step("chunk", &mut data))
        .ctx(|| format!("reading chunk {digest}"))?;
    if data.len() != len {
        return Err(Error::ChunkCorrupt {
            digest: *digest,
            reason: format!("{} bytes read of a {len}-byte file", data.len()),
        });
    }
    Ok(data)
}

/// Writes a chunk file: header, then payload. A raw payload's zero blocks
/// stay holes: a disk image's chunk is often mostly zeros, and those
/// bytes then cost neither page cache nor disk. Readers see zeros either
/// way.
fn write_blob(file: &File, header: &BlobHeader, payload: &[u8]) -> std::io::Result<()> {
    file.write_all_at(&header.encode(), 0)?;
    if header.encoding != Encoding::Raw {
        return file.write_all_at(payload, CHUNK_HEADER_SIZE as u64);
    }
    for (start, run) in nonzero_runs(payload, SPARSE_BLOCK) {
        file.write_all_at(run, (CHUNK_HEADER_SIZE + start) as u64)?;
    }
    file.set_len((CHUNK_HEADER_SIZE + payload.len()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: FsTime = FsTime(0);

    fn store() -> (tempfile::TempDir, ChunkStore) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        fs::create_dir(dir.path().join("chunks")).unwrap();
        ChunkStore::create_prefix_dirs(&dir.path().join("chunks")).unwrap();
        let locks = Arc::new(Locks::open(dir.path()).unwrap());
        let s = ChunkStore::new(
            dir.path().join("chunks"),
            Arc::new(ProcessTemp::create(&dir.path().join("tmp")).unwrap()),
            dir.path().join("bad"),
            locks,
        );
        (dir, s)
    }

    #[test]
    fn zero_blocks_are_holes_and_read_back_as_zeros() {
        use std::os::unix::fs::MetadataExt;
        let (_d, s) = store();
        // 1 MiB of zeros with data at the start, in the middle and at the
        // very end.
        let mut data = vec![0u8; 1 << 20];
        data[..100].fill(7);
        data[500_000..500_010].fill(8);
        let end = data.len();
        data[end - 3..].fill(9);
        let dg = Digest::of(&data);
        assert_eq!(s.insert(&dg, &data, T0).unwrap(), Inserted::New);
        // Stored compressed: next to nothing on disk.
        let meta = fs::metadata(s.chunk_path(&dg)).unwrap();
        assert!(meta.len() < 1024, "{} bytes", meta.len());
        assert_eq!(s.load(&dg).unwrap(), data);
        // Incompressible data with 16 KiB of zeros: stored raw, and the
        // zero blocks are holes.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        data[300 * 1024..316 * 1024].fill(0);
        let dg = Digest::of(&data);
        s.insert(&dg, &data, T0).unwrap();
        let meta = fs::metadata(s.chunk_path(&dg)).unwrap();
        assert_eq!(meta.len(), (CHUNK_HEADER_SIZE + data.len()) as u64);
        assert!(
            meta.blocks() * 512 <= (data.len() - 12 * 1024) as u64 + 4096,
            "{} bytes allocated",
            meta.blocks() * 512
        );
        assert_eq!(s.load(&dg).unwrap(), data);
        // Trailing zeros: the file still has its full length.
        let mut tail_zero = vec![0u8; 10_000];
        tail_zero[0] = 1;
        let dg = Digest::of(&tail_zero);
        s.insert(&dg, &tail_zero, T0).unwrap();
        assert_eq!(s.load(&dg).unwrap(), tail_zero);
    }

    #[test]
    fn encrypted_chunks_have_their_own_names() {
        let (_d, s) = store();
        let data = b"plain data of a chunk".repeat(40);
        let dg = Digest::of(&data);
        s.insert(&dg, &data, T0).unwrap();
        // An encrypted blob claiming the same digest: stored apart, the
        // plain chunk untouched and still served.
        let key = hoard_codec::Key::from_secret(&[3u8; 32]);
        let enc = key.encrypt(hoard_codec::Kind::Chunk, b"other", Compression::None);
        assert_eq!(
            s.insert_blob(&dg, &enc, ChunkClass::Encrypted, T0).unwrap(),
            Inserted::New
        );
        assert_eq!(
            s.insert_blob(&dg, &enc, ChunkClass::Encrypted, T0).unwrap(),
            Inserted::Existed
        );
        assert!(
            s.path_of(&dg, ChunkClass::Encrypted)
                .to_string_lossy()
                .ends_with(".e")
        );
        assert_eq!(s.load(&dg).unwrap(), data);
        assert_eq!(s.load_blob(&dg, ChunkClass::Encrypted).unwrap(), enc);
        assert_eq!(
            s.reference(&dg, T0, ChunkClass::Plain).unwrap(),
            data.len() as u64
        );
        assert_eq!(s.reference(&dg, T0, ChunkClass::Encrypted).unwrap(), 5);
        // A session's class decides what it may send.
        assert!(s.insert_blob(&dg, &enc, ChunkClass::Plain, T0).is_err());
        let raw = blob::encode_raw(&data);
        assert!(s.insert_blob(&dg, &raw, ChunkClass::Encrypted, T0).is_err());
        // Plain data asked for where only an encrypted chunk is.
        let other = Digest::of(b"nothing plain here");
        s.insert_blob(&other, &enc, ChunkClass::Encrypted, T0)
            .unwrap();
        assert!(matches!(s.load(&other), Err(Error::ChunkEncrypted(_))));
        // The sweep counts and removes both kinds of name.
        let later = FsTime(i128::MAX);
        let swept = s.sweep_prefix(dg.0[0], later).unwrap();
        assert!(swept.removed >= 2, "{swept:?}");
        assert!(!s.path_of(&dg, ChunkClass::Encrypted).exists());
        assert!(!s.chunk_path(&dg).exists());
    }

    #[test]
    fn insert_load_and_dedup() {
        let (_d, s) = store();
        let data = b"some chunk data".to_vec();
        let dg = Digest::of(&data);
        assert_eq!(s.insert(&dg, &data, T0).unwrap(), Inserted::New);
        assert_eq!(s.insert(&dg, &data, T0).unwrap(), Inserted::Existed);
        assert_eq!(s.load(&dg).unwrap(), data);
        assert_eq!(s.raw_size(&dg).unwrap(), data.len() as u64);
        assert!(
            s.chunk_path(&dg)
                .to_string_lossy()
                .contains(&dg.to_hex()[..PREFIX_DIGITS])
        );
    }

    #[test]
    fn refuses_wrong_digest_and_sizes() {
        let (_d, s) = store();
        let dg = Digest::of(b"a");
        assert!(matches!(
            s.insert(&dg, b"b", T0),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(matches!(
            s.insert(&dg, b"", T0),
            Err(Error::ChunkSize { .. })
        ));
        assert!(!s.chunk_path(&dg).exists());
        // No temp file left behind: the process's temp directory holds
        // its lock only.
        assert_eq!(fs::read_dir(s.tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn zero_length_leftover_counts_as_missing_and_heals() {
        let (_d, s) = store();
        let data = b"x".repeat(100);
        let dg = Digest::of(&data);
        let p = s.chunk_path(&dg);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        File::create(&p).unwrap();
        assert!(matches!(s.load(&dg), Err(Error::ChunkMissing(_))));
        assert_eq!(s.insert(&dg, &data, T0).unwrap(), Inserted::New);
        assert_eq!(s.load(&dg).unwrap(), data);
    }

    #[test]
    fn bit_rot_is_detected() {
        let (_d, s) = store();
        let data = b"y".repeat(100);
        let dg = Digest::of(&data);
        s.insert(&dg, &data, T0).unwrap();
        let p = s.chunk_path(&dg);
        let mut raw = fs::read(&p).unwrap();
        raw[50] ^= 1;
        fs::write(&p, raw).unwrap();
        assert!(matches!(s.load(&dg), Err(Error::ChunkCorrupt { .. })));
    }
}
