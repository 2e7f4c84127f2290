//! Chunks of a datastore on object storage: the blobs in the bucket
//! under `chunks/PP/NAME`, and on local disk a *stub* per chunk
//! (`.chunks/PP/NAME`: the blob's 16-byte header and its length) plus a
//! bounded cache of whole blobs (`chunk_cache`).
//!
//! The stub is GC's mark and the writers' stamp, exactly as a chunk
//! file's mtime is on a local datastore (objects cannot be touched): the
//! same prefix locks, the same cutoff, the same argument
//! (docs/maintenance.md, "Object storage"). It also holds what a writer
//! must know of a chunk it references (its size and class), so an
//! incremental backup sends no request for the chunks it reuses.
//!
//! A stub exists only for a chunk whose object exists: it is written,
//! under the prefix's shared lock, after the object was created or found,
//! and removed, under the exclusive lock and durably, before the object
//! is deleted. Stubs are written without fsync: one lost in a crash is
//! re-made from the bucket (a HEAD and a ranged GET) when next needed;
//! only a live writer's chunks lack an index that GC marks them by, and a
//! live writer's stubs are not lost.

use std::fs::{self, File};
use std::io::Read;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use hoard_codec::blob::{BlobHeader, HEADER_SIZE};
use hoard_storage::{Put, Storage};
use hoard_types::Digest;

use crate::backend::Lease;
use crate::chunk_cache::ChunkCache;
use crate::chunk_store::{ChunkClass, Inserted, Marked, SweepCounts, chunk_name, is_chunk_name};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{fsync_dir, open_nofollow};
use crate::locks::{FsTime, Locks, touch};
use crate::recovery::ProcessTemp;

/// A stub: the blob header, then the blob's length (u64 LE).
const STUB_SIZE: usize = HEADER_SIZE + 8;
/// Objects deleted per request (S3 DeleteObjects takes up to 1000).
const DELETE_BATCH: usize = 1000;
/// No chunk object is larger: the largest chunk with the largest header
/// and encryption overhead, and room to spare. A larger object is damage
/// (or hostile), refused before it is read into memory.
const MAX_BLOB_SIZE: u64 = hoard_types::MAX_CHUNK_SIZE as u64 + 4096;

#[derive(Debug)]
pub(crate) struct ObjectChunks {
    pub storage: Arc<dyn Storage>,
    stubs: PathBuf,
    pub cache: ChunkCache,
    tmp: Arc<ProcessTemp>,
    locks: Arc<Locks>,
    pub lease: Arc<Lease>,
}

/// What a stub says of its chunk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stub {
    pub header: BlobHeader,
    pub blob_len: u64,
}

impl Stub {
    fn encode(&self) -> [u8; STUB_SIZE] {
        let mut b = [0u8; STUB_SIZE];
        b[..HEADER_SIZE].copy_from_slice(&self.header.encode());
        b[HEADER_SIZE..].copy_from_slice(&self.blob_len.to_le_bytes());
        b
    }

    fn decode(raw: &[u8], digest: &Digest) -> Result<Stub> {
        let corrupt = |reason: String| Error::ChunkCorrupt {
            digest: *digest,
            reason: format!("its local stub is damaged: {reason}"),
        };
        if raw.len() != STUB_SIZE {
            return Err(corrupt(format!("{} bytes", raw.len())));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&raw[HEADER_SIZE..]);
        let blob_len = u64::from_le_bytes(len);
        let header = BlobHeader::decode(&raw[..HEADER_SIZE], blob_len)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(Stub { header, blob_len })
    }
}

/// The bucket key of a chunk.
pub(crate) fn chunk_key(digest: &Digest, class: ChunkClass) -> String {
    let name = chunk_name(digest, class);
    format!("chunks/{}/{name}", &name[..2])
}

impl ObjectChunks {
    pub fn new(
        storage: Arc<dyn Storage>,
        stubs: PathBuf,
        cache: ChunkCache,
        tmp: Arc<ProcessTemp>,
        locks: Arc<Locks>,
        lease: Arc<Lease>,
    ) -> Self {
        ObjectChunks {
            storage,
            stubs,
            cache,
            tmp,
            locks,
            lease,
        }
    }

    fn stub_path(&self, digest: &Digest, class: ChunkClass) -> PathBuf {
        let name = chunk_name(digest, class);
        self.stubs.join(&name[..2]).join(name)
    }

    /// The stub and its file, if there is one.
    fn read_stub(&self, digest: &Digest, class: ChunkClass) -> Result<Option<(File, Stub)>> {
        let path = self.stub_path(digest, class);
        let mut file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("opening the stub of chunk {digest}")),
        };
        let mut raw = Vec::with_capacity(STUB_SIZE);
        (&mut file)
            .take(STUB_SIZE as u64 + 1)
            .read_to_end(&mut raw)
            .ctx(|| format!("reading the stub of chunk {digest}"))?;
        match Stub::decode(&raw, digest) {
            Ok(stub) => Ok(Some((file, stub))),
            // A torn stub (a crash): as if there were none.
            Err(_) => Ok(None),
        }
    }

    /// Writes a stub (see the module doc for why without fsync).
    fn write_stub(&self, digest: &Digest, class: ChunkClass, stub: &Stub) -> Result<()> {
        let tmp = crate::fsutil::TempFile::create(self.tmp.path(), "stub")?;
        std::io::Write::write_all(&mut &tmp.file, &stub.encode())
            .ctx(|| format!("writing the stub of chunk {digest}"))?;
        tmp.rename(&self.stub_path(digest, class))
    }

    /// Stamps a stub older than `since` (the writer's start).
    fn stamp(file: &File, since: FsTime, digest: &Digest) -> Result<()> {
        let meta = file
            .metadata()
            .ctx(|| format!("reading the stub of chunk {digest}"))?;
        if FsTime::mtime(&meta) < since {
            touch(file).ctx(|| format!("stamping chunk {digest}"))?;
        }
        Ok(())
    }

    /// Under the prefix lock: whether the chunk is known to be stored,
    /// stamping its stub.
    pub fn exists(&self, digest: &Digest, class: ChunkClass, since: FsTime) -> Result<bool> {
        let _shared = self.locks.share_prefix(digest.0[0])?;
        match self.read_stub(digest, class)? {
            Some((file, _)) => Self::stamp(&file, since, digest).map(|_| true),
            None => Ok(false),
        }
    }

    /// Stores an encoded blob: created in the bucket unless there, then
    /// stubbed and cached. The shared prefix lock is held across the
    /// request, so a GC sweep never deletes an object between a writer's
    /// finding it and its stub being written.
    pub fn store(
        &self,
        digest: &Digest,
        class: ChunkClass,
        header: BlobHeader,
        blob: Bytes,
        since: FsTime,
    ) -> Result<Inserted> {
        let stub = Stub {
            header,
            blob_len: blob.len() as u64,
        };
        let _shared = self.locks.share_prefix(digest.0[0])?;
        if let Some((file, _)) = self.read_stub(digest, class)? {
            Self::stamp(&file, since, digest)?;
            return Ok(Inserted::Existed);
        }
        match self
            .storage
            .put_if_absent(&chunk_key(digest, class), blob)?
        {
            Put::Created => {
                self.write_stub(digest, class, &stub)?;
                Ok(Inserted::New)
            }
            // Found, not written: the stub comes from the object itself
            // (an encrypted chunk's bytes under one name may differ).
            Put::Existed => {
                self.header(digest, class, since)?;
                Ok(Inserted::Existed)
            }
        }
    }

    /// The header of a stored chunk: from its stub, or (no stub: a lost
    /// one, or a datastore attached to an existing bucket) from the
    /// bucket, re-making the stub. The caller holds the prefix lock
    /// where it must.
    fn header(&self, digest: &Digest, class: ChunkClass, since: FsTime) -> Result<BlobHeader> {
        if let Some((file, stub)) = self.read_stub(digest, class)? {
            Self::stamp(&file, since, digest)?;
            return Ok(stub.header);
        }
        let key = chunk_key(digest, class);
        let missing = |e: hoard_storage::Error| match e {
            hoard_storage::Error::NotFound(_) => self.missing(digest, class),
            e => Error::Storage(e),
        };
        let info = self.storage.head(&key).map_err(missing)?;
        let head = self
            .storage
            .get_range(&key, 0..HEADER_SIZE as u64)
            .map_err(missing)?;
        let header = BlobHeader::decode(&head, info.size).map_err(|e| Error::ChunkCorrupt {
            digest: *digest,
            reason: e.to_string(),
        })?;
        check_class(digest, class, &header)?;
        self.write_stub(
            digest,
            class,
            &Stub {
                header,
                blob_len: info.size,
            },
        )?;
        Ok(header)
    }

    /// The error for a chunk that is not stored: [`Error::ChunkEncrypted`]
    /// if plain data was asked for where only an encrypted chunk is.
    fn missing(&self, digest: &Digest, class: ChunkClass) -> Error {
        if class == ChunkClass::Plain
            && self
                .read_stub(digest, ChunkClass::Encrypted)
                .ok()
                .flatten()
                .is_some()
        {
            Error::ChunkEncrypted(*digest)
        } else {
            Error::ChunkMissing(*digest)
        }
    }

    /// A writer's reference: the chunk's plain size, stamping its stub.
    pub fn reference(&self, digest: &Digest, since: FsTime, class: ChunkClass) -> Result<u64> {
        let _shared = self.locks.share_prefix(digest.0[0])?;
        Ok(self.header(digest, class, since)?.raw_size as u64)
    }

    /// A reader's look at the chunk's plain size.
    pub fn raw_size(&self, digest: &Digest, class: ChunkClass) -> Result<u64> {
        let _shared = self.locks.share_prefix(digest.0[0])?;
        Ok(self.header(digest, class, FsTime(i128::MIN))?.raw_size as u64)
    }

    /// GC's mark: the stub stamped, or re-made from the bucket.
    pub fn mark(&self, digest: &Digest, class: ChunkClass, cutoff: FsTime) -> Result<Marked> {
        if let Some((file, _)) = self.read_stub(digest, class)? {
            let meta = file
                .metadata()
                .ctx(|| format!("reading the stub of chunk {digest}"))?;
            if FsTime::mtime(&meta) >= cutoff {
                return Ok(Marked::Recent);
            }
            touch(&file).ctx(|| format!("stamping chunk {digest}"))?;
            return Ok(Marked::Touched);
        }
        // Re-made under the shared lock, as a writer would: a stub must
        // never be written for an object a quarantine or a lost-object
        // check deleted meanwhile.
        let _shared = self.locks.share_prefix(digest.0[0])?;
        match self.header(digest, class, cutoff) {
            Ok(_) => Ok(Marked::Touched),
            Err(Error::ChunkMissing(_) | Error::ChunkEncrypted(_)) => Ok(Marked::Missing),
            Err(e) => Err(e),
        }
    }

    /// A chunk's blob as stored, its header and CRC checked: from the
    /// cache, or downloaded (and cached).
    pub fn load_blob(&self, digest: &Digest, class: ChunkClass) -> Result<(BlobHeader, Vec<u8>)> {
        let name = chunk_name(digest, class);
        if let Some(blob) = self.cache.get(&name) {
            match checked(digest, class, &blob) {
                Ok(header) => return Ok((header, blob)),
                Err(_) => self.cache.remove(&name),
            }
        }
        let blob = self.download(digest, class)?;
        let header = checked(digest, class, &blob)?;
        self.cache.insert(&name, &blob);
        Ok((header, blob))
    }

    /// The blob as the bucket has it, bypassing the cache (verify). An
    /// object found missing loses its stub ([`ObjectChunks::forget_lost`]),
    /// so the caller must hold no lock of its prefix.
    pub fn download(&self, digest: &Digest, class: ChunkClass) -> Result<Vec<u8>> {
        match self.download_locked(digest, class) {
            Err(Error::ChunkMissing(_)) => {
                self.forget_lost(digest, class)?;
                Err(self.missing(digest, class))
            }
            other => other,
        }
    }

    /// [`ObjectChunks::download`] for a caller that holds its prefix's
    /// lock: a missing object is only reported. A blob larger than any
    /// chunk is refused before it is read whole.
    pub fn download_locked(&self, digest: &Digest, class: ChunkClass) -> Result<Vec<u8>> {
        match self
            .storage
            .get_bounded(&chunk_key(digest, class), MAX_BLOB_SIZE)
        {
            Ok(b) => Ok(Vec::from(b)),
            Err(hoard_storage::Error::NotFound(_)) => Err(Error::ChunkMissing(*digest)),
            Err(hoard_storage::Error::TooLarge { size, .. }) => Err(Error::ChunkCorrupt {
                digest: *digest,
                reason: format!("its object has {size} bytes, more than any chunk"),
            }),
            Err(e) => Err(Error::Storage(e)),
        }
    }

    /// An object found missing (lost behind the server's back): its stub
    /// goes, so that the next upload of its data stores it again instead
    /// of trusting the stub. Under the exclusive lock, and only if the
    /// object is still missing: a writer may have stored it meanwhile.
    fn forget_lost(&self, digest: &Digest, class: ChunkClass) -> Result<()> {
        let _excl = self.locks.exclusive_prefix(digest.0[0])?;
        match self.storage.head(&chunk_key(digest, class)) {
            Err(hoard_storage::Error::NotFound(_)) => {}
            _ => return Ok(()),
        }
        let stub = self.stub_path(digest, class);
        match fs::remove_file(&stub) {
            Ok(()) => {
                fsync_dir(&self.stubs.join(&chunk_name(digest, class)[..2]))?;
                tracing::warn!(
                    "chunk {digest} is missing from {}: its stub is removed, the next backup \
                     holding its data stores it again",
                    self.storage.describe()
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx(|| format!("removing {}", stub.display())),
        }
        self.cache.remove(&chunk_name(digest, class));
        Ok(())
    }

    /// GC's sweep of prefix `prefix`: deletes every object of it whose
    /// stub is missing or stamped before `cutoff`, then the stale stubs of
    /// objects that are gone. Only local file times are compared, as on
    /// a local datastore: the bucket's clock is never consulted, so its
    /// skew cannot matter. Streams the listing; at most one page of
    /// candidates is held.
    pub fn sweep_prefix(&self, prefix: u8, cutoff: FsTime) -> Result<SweepCounts> {
        let mut counts = SweepCounts::default();
        let mut page: Vec<(Digest, ChunkClass, u64)> = Vec::new();
        let list_prefix = format!("chunks/{prefix:02x}/");
        let mut failure = None;
        self.storage.list(&list_prefix, &mut |obj| {
            let name = obj.key.rsplit('/').next().unwrap_or("");
            // Only objects exactly where this prefix's chunks live: a
            // misplaced or foreign key is none of this sweep's business
            // (it would be deleted under the wrong prefix's lock).
            let parsed = parse_chunk_name(name)
                .filter(|(d, c)| d.0[0] == prefix && chunk_key(d, *c) == obj.key);
            let Some((digest, class)) = parsed else {
                tracing::warn!("GC leaves {} alone: not a chunk of this datastore", obj.key);
                return Ok(ControlFlow::Continue(()));
            };
            page.push((digest, class, obj.size));
            if page.len() >= DELETE_BATCH
                && let Err(e) = self.sweep_batch(prefix, &mut page, cutoff, &mut counts)
            {
                failure = Some(e);
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        self.sweep_batch(prefix, &mut page, cutoff, &mut counts)?;
        self.sweep_stale_stubs(prefix, cutoff)?;
        Ok(counts)
    }

    /// Under the prefix's exclusive lock: deletes the candidates whose
    /// stub is absent or older than the cutoff, stub first.
    fn sweep_batch(
        &self,
        prefix: u8,
        page: &mut Vec<(Digest, ChunkClass, u64)>,
        cutoff: FsTime,
        counts: &mut SweepCounts,
    ) -> Result<()> {
        if page.is_empty() {
            return Ok(());
        }
        // Nothing is deleted unless this directory still holds the
        // bucket: another's GC would know other snapshots.
        self.lease.check()?;
        let _excl = self.locks.exclusive_prefix(prefix)?;
        let mut doomed = Vec::with_capacity(page.len());
        for (digest, class, size) in page.drain(..) {
            let path = self.stub_path(&digest, class);
            let fresh = match fs::symlink_metadata(&path) {
                Ok(m) => FsTime::mtime(&m) >= cutoff,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
            };
            if fresh {
                counts.kept += 1;
                counts.kept_bytes += size;
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx(|| format!("removing {}", path.display())),
            }
            self.cache.remove(&chunk_name(&digest, class));
            doomed.push(chunk_key(&digest, class));
            counts.removed += 1;
            counts.removed_bytes += size;
        }
        if doomed.is_empty() {
            return Ok(());
        }
        // The stubs' removal is durable before any object goes: a stub
        // that came back after a power loss would name a deleted object.
        fsync_dir(&self.stubs.join(format!("{prefix:02x}")))?;
        self.storage.delete(&doomed)?;
        Ok(())
    }

    /// Removes stubs older than the cutoff whose objects the listing no
    /// longer had (deleted above, or lost): no marked chunk is among them.
    fn sweep_stale_stubs(&self, prefix: u8, cutoff: FsTime) -> Result<()> {
        let dir = self.stubs.join(format!("{prefix:02x}"));
        let _excl = self.locks.exclusive_prefix(prefix)?;
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx(|| format!("listing {}", dir.display())),
        };
        for entry in rd {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            if !name.to_str().is_some_and(is_chunk_name) {
                continue;
            }
            if let Ok(m) = entry.metadata()
                && FsTime::mtime(&m) < cutoff
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Verify's move of a damaged chunk: copied to `bad/NAME.STAMP` in
    /// the bucket, then deleted with its stub and cache entry, so that the
    /// next backup holding its data uploads it again. The caller holds
    /// the exclusive prefix lock and has re-checked the chunk.
    pub fn quarantine(&self, digest: &Digest, class: ChunkClass) -> Result<Option<String>> {
        let key = chunk_key(digest, class);
        // What is moved is what was checked: read once more, and moved
        // only if this very copy is damaged.
        let blob = match self.download_locked(digest, class) {
            Ok(b) => b,
            Err(Error::ChunkCorrupt { .. }) => return Ok(None),
            Err(Error::ChunkMissing(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !blob.is_empty() && still_good(digest, class, &blob) {
            return Ok(None);
        }
        let stamp = jiff::Timestamp::now().as_second();
        let bad = format!("bad/{}.{stamp}", chunk_name(digest, class));
        self.storage.put(&bad, blob.into())?;
        let stub = self.stub_path(digest, class);
        match fs::remove_file(&stub) {
            Ok(()) => fsync_dir(&self.stubs.join(&chunk_name(digest, class)[..2]))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx(|| format!("removing {}", stub.display())),
        }
        self.cache.remove(&chunk_name(digest, class));
        self.storage.delete(&[key])?;
        Ok(Some(format!("{} {bad}", self.storage.describe())))
    }
}

/// Whether a blob passes every check verify makes (for a plain chunk:
/// its data hashes to its name).
fn still_good(digest: &Digest, class: ChunkClass, blob: &[u8]) -> bool {
    checked(digest, class, blob).is_ok()
        && (class == ChunkClass::Encrypted || hoard_codec::blob::verify_plain(digest, blob).is_ok())
}

/// Checks a blob's header (of the expected class) and CRC.
fn checked(digest: &Digest, class: ChunkClass, blob: &[u8]) -> Result<BlobHeader> {
    let corrupt = |e: hoard_codec::Error| Error::ChunkCorrupt {
        digest: *digest,
        reason: e.to_string(),
    };
    let header = BlobHeader::decode(blob, blob.len() as u64).map_err(corrupt)?;
    check_class(digest, class, &header)?;
    header.check_crc(&blob[HEADER_SIZE..]).map_err(corrupt)?;
    Ok(header)
}

fn check_class(digest: &Digest, class: ChunkClass, header: &BlobHeader) -> Result<()> {
    if ChunkClass::of(header.encoding) != class {
        return Err(Error::ChunkCorrupt {
            digest: *digest,
            reason: format!(
                "a {} chunk in the place of the other class",
                header.encoding
            ),
        });
    }
    Ok(())
}

/// The digest and class a chunk name stands for.
fn parse_chunk_name(name: &str) -> Option<(Digest, ChunkClass)> {
    if !is_chunk_name(name) {
        return None;
    }
    let (hex, class) = match name.strip_suffix(crate::chunk_store::ENCRYPTED_SUFFIX) {
        Some(h) => (h, ChunkClass::Encrypted),
        None => (name, ChunkClass::Plain),
    };
    hex.parse::<Digest>().ok().map(|d| (d, class))
}
