//! File-tree restore and listing: an archive (`NAME.hmeta` +
//! `NAME.hdata`) back into a directory, one subtree or one file of it,
//! reading only the chunks those need.
//!
//! Restore walks the tables twice on one blocking thread: first to list
//! the data chunks the payloads need, in the order they will be
//! consumed (a download task streams exactly those, checking each on the
//! blocking pool in parallel), then to create the entries, handing small
//! files to writer threads by directory ([`crate::dir_writer`]).
//!
//! Never outside the target: every entry is created relative to an open
//! directory descriptor, by a single name the decoder checked (no `/`,
//! no `..`); directories are entered with `O_NOFOLLOW`; a hard link's
//! target is resolved the same way, component by component; an existing
//! non-empty target is refused. A symlink is created, never followed.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use hoard_archive::format::MAX_DEPTH;
use hoard_archive::reader::{LayoutError, payload_layout};
use hoard_archive::{Archive, Entry, Kind};
use hoard_datastore::Manifest;
use hoard_types::Digest;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::archive_refs::{FIRST_FLOOR, Outside, Refs};
use crate::conn::Connection;
use crate::dir_writer::{Batch, DirState, FileWork, Writers, set_metadata, times};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::remote::{
    ChunkDecoder, ChunkMap, RemoteFile, archive_error, chunk_map, download, source_error,
};
use crate::requests::Listed;
use crate::tree_backup::{DATA_SUFFIX, META_SUFFIX};
use crate::xattrs;

/// Stack of the restore thread: one frame per directory level.
const RESTORE_STACK: usize = 64 << 20;

/// Whether `manifest` holds an archive named `name`.
pub fn has_archive(manifest: &Manifest, name: &str) -> bool {
    manifest
        .file(&format!("{name}{META_SUFFIX}.didx"))
        .is_some()
        && manifest
            .file(&format!("{name}{DATA_SUFFIX}.didx"))
            .is_some()
}

/// An archive opened for reading, and its data stream's chunk map.
pub struct OpenArchive {
    pub archive: Archive<RemoteFile>,
    pub data: ChunkMap,
    /// Decodes the data stream's chunks.
    pub decoder: ChunkDecoder,
}

/// Opens archive `name` of `snap`: both chunk maps (checked against the
/// manifest's index checksums, sealed ones when encrypted), then the
/// trailer and root entry (blocking: run off the async workers).
pub async fn open_archive(conn: Arc<Connection>, snap: &Listed, name: &str) -> Result<OpenArchive> {
    let decoder = ChunkDecoder::for_snapshot(&conn, snap)?;
    let snapshot = &snap.path;
    let meta_name = format!("{name}{META_SUFFIX}");
    let data_name = format!("{name}{DATA_SUFFIX}");
    let entry = |stored: &str| {
        snap.manifest
            .file(stored)
            .ok_or_else(|| Error::NotFound(format!("snapshot {snapshot} has no {stored}")))
    };
    let meta_stored = format!("{meta_name}.didx");
    let data_stored = format!("{data_name}.didx");
    let meta_path = format!("{snapshot}/{meta_stored}");
    let meta = chunk_map(&conn, &meta_path, entry(&meta_stored)?).await?;
    let data_path = format!("{snapshot}/{data_stored}");
    let data = chunk_map(&conn, &data_path, entry(&data_stored)?).await?;
    let rt = tokio::runtime::Handle::current();
    let data_size = data.size();
    let remote = RemoteFile::new(
        conn,
        rt,
        decoder.clone(),
        hoard_codec::Kind::MetaChunk,
        format!("{snapshot}/{meta_name}"),
        meta,
    );
    let slot = remote.last_error.clone();
    let archive = tokio::task::spawn_blocking(move || {
        Archive::open(remote, data_size).map_err(|e| source_error(e, &slot))
    })
    .await
    .map_err(|e| Error::Protocol(format!("archive task failed: {e}")))??;
    Ok(OpenArchive {
        archive,
        data,
        decoder,
    })
}

pub use hoard_archive::listing::{ListedEntry, listed};

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub path: String,
    pub entries: Vec<ListedEntry>,
    /// Chunks of the metadata stream downloaded for this listing.
    pub meta_chunks_downloaded: u64,
}

/// The entries of directory `path` of an archive (or the one entry, if
/// `path` is not a directory).
pub async fn list(conn: Arc<Connection>, snap: &Listed, name: &str, path: &str) -> Result<Listing> {
    let OpenArchive { mut archive, .. } = open_archive(conn, snap, name).await?;
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let entry = archive
            .lookup(&path)
            .map_err(|e| archive_error(e, archive.source()))?;
        let entries = if entry.is_dir() {
            archive
                .read_dir(&entry)
                .map_err(|e| archive_error(e, archive.source()))?
        } else {
            vec![entry]
        };
        Ok(Listing {
            path,
            entries: entries.iter().map(listed).collect(),
            meta_chunks_downloaded: archive.source().fetched.load(Ordering::Relaxed),
        })
    })
    .await
    .map_err(|e| Error::Protocol(format!("listing task failed: {e}")))?
}

#[derive(Debug, Clone)]
pub struct TreeRestoreOptions {
    /// Restore only this path of the archive (`""`: everything).
    pub path: String,
    /// Replace an existing target file (single-file restores).
    pub overwrite: bool,
    /// Chunks being checked or waiting to be written, at most.
    pub buffers: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TreeRestoreReport {
    pub snapshot: String,
    pub archive: String,
    pub path: String,
    pub target: String,
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub others: u64,
    pub bytes: u64,
    /// Entries that could not be created or given their metadata.
    pub failed: u64,
    pub meta_chunks_downloaded: u64,
    pub data_chunks_downloaded: u64,
    pub data_bytes_downloaded: u64,
    pub seconds: f64,
}

/// Restores archive `name` of `snapshot` (all of it, or `opts.path`) to
/// `target`: a directory that does not exist or is empty, or for a
/// single non-directory entry the path it is to have.
pub async fn restore_tree(
    conn: Arc<Connection>,
    snap: &Listed,
    name: &str,
    target: &Path,
    opts: &TreeRestoreOptions,
    progress: Arc<Progress>,
) -> Result<TreeRestoreReport> {
    let started = Instant::now();
    let snapshot = &snap.path;
    let OpenArchive {
        mut archive,
        data,
        decoder,
    } = open_archive(conn.clone(), snap, name).await?;
    let rt = tokio::runtime::Handle::current();
    // Look up the subtree and plan the chunks it needs.
    let path = opts.path.trim_matches('/').to_string();
    let (archive, entry, needs) = {
        let data = data.clone();
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let entry = archive
                .lookup(&path)
                .map_err(|e| archive_error(e, archive.source()))?;
            let mut plan = Plan {
                data: &data,
                prefix: path.as_bytes().to_vec(),
                needs: Vec::new(),
                bytes: 0,
                recent: Recent::new(),
                refs: Refs::default(),
            };
            plan.entry(&mut archive, &entry, path.as_bytes(), 0, FIRST_FLOOR)
                .map_err(|e| plan_error(e, &mut archive))?;
            let (needs, bytes) = (plan.needs, plan.bytes);
            Ok::<_, Error>((archive, entry, (needs, bytes)))
        })
        .await
        .map_err(|e| Error::Protocol(format!("restore task failed: {e}")))??
    };
    let (needs, total_bytes) = needs;
    progress.add_total(total_bytes);
    let mut report = TreeRestoreReport {
        snapshot: snapshot.to_string(),
        archive: name.to_string(),
        path: path.clone(),
        target: target.display().to_string(),
        data_chunks_downloaded: needs.len() as u64,
        data_bytes_downloaded: needs.iter().map(|&i| data.ends[i] - data.start(i)).sum(),
        ..TreeRestoreReport::default()
    };
    let out = Output::prepare(target, &entry, opts.overwrite)?;

    // Download exactly the planned chunks, in order, checked in parallel.
    let (tx, rx) = mpsc::channel::<JoinHandle<Result<Bytes>>>(opts.buffers.max(2));
    // Set when the restore thread stopped taking chunks: its own error
    // is then the cause.
    let writer_gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fetcher = {
        let wanted: Vec<(Digest, u64)> = needs
            .iter()
            .map(|&i| (data.digests[i], data.ends[i] - data.start(i)))
            .collect();
        let what = format!("{snapshot}/{name}{DATA_SUFFIX}");
        let conn = conn.clone();
        let gone = writer_gone.clone();
        tokio::spawn(async move {
            download(&conn, &what.clone(), &wanted, |digest, size, chunk| {
                let what = what.clone();
                let decoder = decoder.clone();
                let job = tokio::task::spawn_blocking(move || {
                    decoder.open(hoard_codec::Kind::Chunk, &digest, size, chunk, &what)
                });
                let (tx, gone) = (tx.clone(), gone.clone());
                async move {
                    tx.send(job).await.map_err(|_| {
                        gone.store(true, Ordering::Relaxed);
                        Error::Protocol("the restore stopped".into())
                    })
                }
            })
            .await
        })
    };
    let cursor = DataCursor {
        rx,
        rt: rt.clone(),
        map: data,
        needs,
        next: 0,
        recent: Recent::new(),
        progress: progress.clone(),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let snapshot_name = format!("{snapshot}/{name}");
    std::thread::Builder::new()
        .name("hoard-restore".into())
        .stack_size(RESTORE_STACK)
        .spawn(move || {
            let root = match &out {
                Output::Dir { fd, .. } => fd.try_clone().ok(),
                Output::Single { .. } => None,
            };
            let as_root = rustix::process::geteuid().is_root();
            let mut r = Restorer {
                writers: None,
                refs: Refs::default(),
                archive,
                cursor,
                root,
                prefix: path.into_bytes(),
                as_root,
                counts: Counts::default(),
                what: snapshot_name,
            };
            let result = r.restore(out, &entry);
            let _ = done_tx.send((
                result,
                r.counts,
                r.archive.source().fetched.load(Ordering::Relaxed),
            ));
        })
        .map_err(|e| Error::Protocol(format!("cannot start the restore thread: {e}")))?;
    let (restored, counts, meta_fetched) = done_rx
        .await
        .map_err(|_| Error::Protocol("the restore thread died".into()))?;
    let fetched = fetcher
        .await
        .map_err(|e| Error::Protocol(format!("download task failed: {e}")))?;
    // A failed download explains a restore that ran out of chunks; a
    // restore that failed explains a download it stopped.
    match (restored, fetched) {
        (Err(e), Err(_)) if writer_gone.load(Ordering::Relaxed) => return Err(e),
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(())) => return Err(e),
        (Ok(()), Ok(())) => {}
    }
    report.files = counts.files;
    report.dirs = counts.dirs;
    report.links = counts.links;
    report.others = counts.others;
    report.bytes = counts.bytes;
    report.failed = counts.failed;
    report.meta_chunks_downloaded = meta_fetched;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn plan_error(e: PlanError, archive: &mut Archive<RemoteFile>) -> Error {
    match e {
        PlanError::Archive(e) => archive_error(e, archive.source()),
        PlanError::Client(e) => e,
    }
}

enum PlanError {
    Archive(hoard_archive::ArchiveError),
    Client(Error),
}

impl From<Error> for PlanError {
    fn from(e: Error) -> Self {
        PlanError::Client(e)
    }
}

impl From<hoard_archive::ArchiveError> for PlanError {
    fn from(e: hoard_archive::ArchiveError) -> Self {
        PlanError::Archive(e)
    }
}

/// The first pass: which data chunks, in which order.
struct Plan<'a> {
    data: &'a ChunkMap,
    prefix: Vec<u8>,
    needs: Vec<usize>,
    bytes: u64,
    /// What the cursor will hold when it needs each chunk.
    recent: Recent<()>,
    /// Tables and payloads are referenced once; checked here, before
    /// anything is written.
    refs: Refs,
}

/// Chunks held for reuse while restoring, by digest, the oldest dropped
/// first. The plan and the cursor keep one each, fed the same sequence of
/// requests, so they agree on which chunks must be downloaded: a chunk
/// an earlier snapshot's splice repeated (at each seam between spliced
/// and new data) is downloaded once.
struct Recent<T> {
    entries: std::collections::VecDeque<(Digest, T)>,
}

/// Chunks a [`Recent`] holds: at most 8 × 4 MiB with the default
/// average, about 10 MiB typically.
const RECENT_CHUNKS: usize = 8;

impl<T> Recent<T> {
    fn new() -> Recent<T> {
        Recent {
            entries: std::collections::VecDeque::with_capacity(RECENT_CHUNKS),
        }
    }

    fn get(&self, d: &Digest) -> Option<&T> {
        self.entries.iter().find(|(x, _)| x == d).map(|(_, t)| t)
    }

    fn push(&mut self, d: Digest, t: T) {
        if self.entries.len() == RECENT_CHUNKS {
            self.entries.pop_front();
        }
        self.entries.push_back((d, t));
    }
}

/// Whether archive path `target` lies in the restored subtree `prefix`.
fn inside(prefix: &[u8], target: &[u8]) -> bool {
    prefix.is_empty()
        || target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.first() == Some(&b'/'))
}

impl Plan<'_> {
    /// Plans entry `e` at archive path `rel`, a directory's subtree
    /// tables lying at or after `floor` (see `archive_refs`).
    fn entry(
        &mut self,
        archive: &mut Archive<RemoteFile>,
        e: &Entry,
        rel: &[u8],
        depth: usize,
        floor: u64,
    ) -> std::result::Result<(), PlanError> {
        match &e.kind {
            Kind::Dir { .. } => {
                if depth >= MAX_DEPTH {
                    return Err(PlanError::Client(Error::Damaged(format!(
                        "{} is nested deeper than {MAX_DEPTH}",
                        String::from_utf8_lossy(rel)
                    ))));
                }
                let children = archive.read_dir(e)?;
                let floors = Refs::child_floors(&children, floor, rel)?;
                for (child, floor) in children.iter().zip(floors) {
                    let child_rel = join(rel, &child.name);
                    self.entry(archive, child, &child_rel, depth + 1, floor)?;
                }
            }
            Kind::Hardlink { target, .. } if depth > 0 && inside(&self.prefix, target) => {}
            Kind::Hardlink {
                payload: at,
                payload_len: len,
                ..
            } if depth > 0 => {
                if self.refs.outside_link(rel, *at, *len)? == Outside::Copy {
                    self.payload(*at, *len);
                    self.bytes += e.size;
                }
            }
            _ => {
                if let Some((at, len, _)) = e.payload() {
                    if matches!(e.kind, Kind::File { .. }) {
                        self.refs.file_payload(rel, at, len)?;
                    }
                    self.payload(at, len);
                    self.bytes += e.size;
                }
            }
        }
        Ok(())
    }

    fn payload(&mut self, at: u64, len: u64) {
        for c in self.data.covering(at, len) {
            let d = self.data.digests[c];
            if self.recent.get(&d).is_none() {
                self.recent.push(d, ());
                self.needs.push(c);
            }
        }
    }
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        name.to_vec()
    } else {
        [rel, b"/", name].concat()
    }
}

/// The planned chunks as they arrive, read as one stream of payloads.
struct DataCursor {
    rx: mpsc::Receiver<JoinHandle<Result<Bytes>>>,
    rt: tokio::runtime::Handle,
    map: ChunkMap,
    needs: Vec<usize>,
    /// Index into `needs` of the next chunk to arrive.
    next: usize,
    recent: Recent<Bytes>,
    progress: Arc<Progress>,
}

impl DataCursor {
    /// Chunk `c`: held (it or a chunk with its digest), or the next
    /// planned one.
    fn chunk(&mut self, c: usize) -> Result<Bytes> {
        let digest = self.map.digests[c];
        if let Some(b) = self.recent.get(&digest) {
            return Ok(b.clone());
        }
        if self.needs.get(self.next) != Some(&c) {
            return Err(Error::Protocol(format!(
                "restore out of step: data chunk {c} was not planned next"
            )));
        }
        self.next += 1;
        let job = self.rx.blocking_recv().ok_or_else(|| {
            Error::ConnectionLost("the download of the data stream ended early".into())
        })?;
        let data = self
            .rt
            .block_on(job)
            .map_err(|e| Error::Protocol(format!("check task failed: {e}")))??;
        self.recent.push(digest, data.clone());
        Ok(data)
    }

    /// Calls `sink` with the bytes `at .. at + len` of the data stream,
    /// slice by slice, without copying them.
    fn read(&mut self, at: u64, len: u64, sink: &mut dyn FnMut(Bytes) -> Result<()>) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = at + len;
        let mut pos = at;
        for c in self.map.covering(at, len) {
            let chunk = self.chunk(c)?;
            let start = self.map.start(c);
            let from = (pos - start) as usize;
            let to = ((end - start) as usize).min(chunk.len());
            sink(chunk.slice(from..to))?;
            pos = start + to as u64;
        }
        Ok(())
    }

    /// `len` bytes at `at`, gathered (headers and extent maps).
    fn gather(&mut self, at: u64, len: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len as usize);
        self.read(at, len, &mut |s| {
            out.extend_from_slice(&s);
            Ok(())
        })?;
        Ok(out)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    files: u64,
    dirs: u64,
    links: u64,
    others: u64,
    bytes: u64,
    failed: u64,
}

/// Where the restored root goes.
enum Output {
    /// A directory (new or empty), open.
    Dir { fd: OwnedFd, path: PathBuf },
    /// One non-directory entry named `name` in directory `parent`; a file
    /// is written under a temporary name and renamed.
    Single {
        parent: OwnedFd,
        name: Vec<u8>,
        path: PathBuf,
        overwrite: bool,
    },
}

fn target_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Target {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.into()),
    }
}

fn open_dir_nofollow(dirfd: impl AsFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dirfd,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

impl Output {
    fn prepare(target: &Path, entry: &Entry, overwrite: bool) -> Result<Output> {
        let io = |e: std::io::Error| Error::Target {
            path: target.to_path_buf(),
            source: e,
        };
        if entry.is_dir() {
            match std::fs::symlink_metadata(target) {
                Ok(m) if m.is_dir() => {
                    if std::fs::read_dir(target).map_err(io)?.next().is_some() {
                        return Err(target_err(target, "exists and is not empty"));
                    }
                }
                Ok(_) => return Err(target_err(target, "exists and is not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(target).map_err(io)?;
                }
                Err(e) => return Err(io(e)),
            }
            let fd = rustix::fs::open(
                target,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io(e.into()))?;
            return Ok(Output::Dir {
                fd,
                path: target.to_path_buf(),
            });
        }
        let name = target
            .file_name()
            .ok_or_else(|| target_err(target, "names no file"))?;
        match std::fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => return Err(target_err(target, "is a directory")),
            Ok(_)
                if !overwrite
                    || !matches!(entry.kind, Kind::File { .. } | Kind::Hardlink { .. }) =>
            {
                return Err(Error::Target {
                    path: target.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "exists already (--overwrite replaces a file)",
                    ),
                });
            }
            _ => {}
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let parent = rustix::fs::open(
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(e.into()))?;
        Ok(Output::Single {
            parent,
            name: name.as_bytes().to_vec(),
            path: target.to_path_buf(),
            overwrite,
        })
    }
}

struct Restorer {
    archive: Archive<RemoteFile>,
    cursor: DataCursor,
    /// The restored root directory, against which hard links resolve.
    root: Option<OwnedFd>,
    /// Archive path of the restored subtree's root.
    prefix: Vec<u8>,
    as_root: bool,
    counts: Counts,
    what: String,
    /// Writer threads for the files of a tree restore.
    writers: Option<Writers>,
    /// The copies made for hard links out of the subtree.
    refs: Refs,
}

/// Files up to this size go to the writer threads (their content held
/// as chunk slices meanwhile); larger ones are streamed to disk by the
/// restore thread as their chunks arrive.
const POOLED_FILE: u64 = 4 << 20;
/// A batch is handed over at this many bytes or files.
const BATCH_BYTES: u64 = 4 << 20;
const BATCH_FILES: usize = 256;

fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

impl Restorer {
    fn restore(&mut self, out: Output, entry: &Entry) -> Result<()> {
        match out {
            Output::Dir { fd, path } => {
                let rel = self.prefix.clone();
                // HOARD_RESTORE_THREADS overrides the writer count (for
                // measuring; the default is one per core).
                let threads = std::env::var("HOARD_RESTORE_THREADS")
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
                self.writers = Some(Writers::new(threads, self.as_root));
                let dir = DirState::new(fd, path, entry.clone());
                self.fill_dir(&dir, entry, &rel, 0)?;
                let writers = self.writers.take().expect("set above");
                writers.release(&dir);
                self.counts.dirs += 1;
                self.counts.failed += writers.finish()?;
                Ok(())
            }
            Output::Single {
                parent,
                name,
                path,
                overwrite,
            } => {
                if entry.payload().is_some() {
                    self.single_file(&parent, &name, &path, entry, overwrite)
                } else {
                    self.create(&parent, &path, &name, entry, &self.prefix.clone())
                }
            }
        }
    }

    fn writers(&self) -> &Writers {
        self.writers.as_ref().expect("a tree restore has writers")
    }

    /// Creates the entries of directory `e` in `dir`: small files in
    /// batches for the writers, the rest here, subdirectories depth
    /// first (the order the plan downloads the chunks in).
    fn fill_dir(&mut self, dir: &Arc<DirState>, e: &Entry, rel: &[u8], depth: usize) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(Error::Damaged(format!(
                "{} is nested deeper than {MAX_DEPTH}",
                dir.path.display()
            )));
        }
        let children = self
            .archive
            .read_dir(e)
            .map_err(|err| archive_error(err, self.archive.source()))?;
        let new_batch = || Batch {
            dir: dir.clone(),
            files: Vec::new(),
            bytes: 0,
        };
        let mut batch = new_batch();
        for child in &children {
            let child_path = dir.path.join(os(&child.name));
            let child_rel = join(rel, &child.name);
            // A hard link out of the subtree is a copy, once per payload
            // (archive_refs); the plan made the same choice.
            let mut link_to_copy = None;
            if let Kind::Hardlink {
                target,
                payload: at,
                payload_len: len,
                ..
            } = &child.kind
                && !inside(&self.prefix, target)
                && let Outside::LinkTo(copy) = self.refs.outside_link(&child_rel, *at, *len)?
            {
                link_to_copy = Some(copy);
            }
            let pooled = match &child.kind {
                Kind::File { .. } => child.size <= POOLED_FILE,
                Kind::Hardlink { target, .. } => {
                    !inside(&self.prefix, target)
                        && link_to_copy.is_none()
                        && child.size <= POOLED_FILE
                }
                _ => false,
            };
            if pooled {
                self.counts.files += 1;
                self.counts.bytes += child.size;
                let mut pieces = Vec::new();
                let sparse = self.payload_pieces(&child_path, child, &mut |at, b| {
                    pieces.push((at, b));
                    Ok(())
                })?;
                batch.bytes += child.size;
                batch.files.push(FileWork {
                    path: child_path,
                    entry: child.clone(),
                    pieces,
                    sparse,
                });
                if batch.bytes >= BATCH_BYTES || batch.files.len() >= BATCH_FILES {
                    self.writers()
                        .submit(std::mem::replace(&mut batch, new_batch()))?;
                }
                continue;
            }
            // Anything else is created here; a hard link's target may be
            // in the batch being filled, so that goes first.
            if !batch.files.is_empty() && !matches!(child.kind, Kind::File { .. }) {
                self.writers()
                    .submit(std::mem::replace(&mut batch, new_batch()))?;
            }
            if let Some(copy) = link_to_copy {
                // The copy may still be with a writer.
                self.writers().drain()?;
                self.link(&dir.fd, os(&child.name), &child_path, &copy)?;
                self.counts.links += 1;
            } else if child.is_dir() {
                let name = os(&child.name);
                let target_io = |err: Errno| Error::Target {
                    path: child_path.clone(),
                    source: err.into(),
                };
                rustix::fs::mkdirat(&dir.fd, name, Mode::from_raw_mode(0o700))
                    .map_err(target_io)?;
                let fd = open_dir_nofollow(&dir.fd, name).map_err(target_io)?;
                let sub = DirState::new(fd, child_path.clone(), child.clone());
                self.fill_dir(&sub, child, &child_rel, depth + 1)?;
                self.writers().release(&sub);
                self.counts.dirs += 1;
            } else {
                self.create(&dir.fd, &child_path, &child.name, child, &child_rel)?;
            }
        }
        if !batch.files.is_empty() {
            self.writers().submit(batch)?;
        }
        Ok(())
    }

    fn failed(&mut self, path: &Path, what: &str, e: impl std::fmt::Display) {
        tracing::warn!("{}: {what}: {e}", path.display());
        self.counts.failed += 1;
    }

    /// Creates one entry named `name` in `dirfd` (not a directory: those
    /// are [`Restorer::fill_dir`]'s).
    fn create(
        &mut self,
        dirfd: &OwnedFd,
        path: &Path,
        name: &[u8],
        e: &Entry,
        rel: &[u8],
    ) -> Result<()> {
        let name = os(name);
        let target_io = |err: Errno| Error::Target {
            path: path.to_path_buf(),
            source: err.into(),
        };
        match &e.kind {
            Kind::Dir { .. } => {
                return Err(Error::Protocol(format!(
                    "{}: directory {} reached the entry creator",
                    path.display(),
                    String::from_utf8_lossy(rel)
                )));
            }
            Kind::Hardlink { target, .. } if inside(&self.prefix, target) => {
                // The target may still be with a writer.
                if let Some(w) = &self.writers {
                    w.drain()?;
                }
                self.link(dirfd, name, path, target)?;
                self.counts.links += 1;
            }
            Kind::File { .. } | Kind::Hardlink { .. } => {
                self.counts.files += 1;
                self.counts.bytes += e.size;
                let fd = rustix::fs::openat(
                    dirfd,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(target_io)?;
                let mut file = std::fs::File::from(fd);
                self.stream_payload(&mut file, path, e)?;
                self.finish_meta_fd(&file, path, e);
            }
            Kind::Symlink { target } => {
                rustix::fs::symlinkat(os(target), dirfd, name).map_err(target_io)?;
                self.finish_meta_at(dirfd, name, path, e, true);
                self.counts.others += 1;
            }
            Kind::CharDev { rdev } | Kind::BlockDev { rdev } => {
                let ft = if matches!(e.kind, Kind::CharDev { .. }) {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                match rustix::fs::mknodat(dirfd, name, ft, Mode::from_raw_mode(0o600), *rdev) {
                    Ok(()) => {
                        self.finish_meta_at(dirfd, name, path, e, false);
                        self.counts.others += 1;
                    }
                    Err(err) => self.failed(path, "cannot create device node", err),
                }
            }
            Kind::Fifo | Kind::Socket => {
                let ft = if matches!(e.kind, Kind::Fifo) {
                    FileType::Fifo
                } else {
                    FileType::Socket
                };
                rustix::fs::mknodat(dirfd, name, ft, Mode::from_raw_mode(0o600), 0)
                    .map_err(target_io)?;
                self.finish_meta_at(dirfd, name, path, e, false);
                self.counts.others += 1;
            }
        }
        Ok(())
    }

    /// A hard link to `target` (an archive path inside the restored
    /// subtree), resolved component by component without following
    /// symlinks.
    fn link(&mut self, dirfd: &OwnedFd, name: &OsStr, path: &Path, target: &[u8]) -> Result<()> {
        let rest = if self.prefix.is_empty() {
            target
        } else {
            &target[self.prefix.len() + 1..]
        };
        let parts: Vec<&[u8]> = rest.split(|&c| c == b'/').collect();
        let refuse = |why: String| {
            Error::Damaged(format!(
                "{}: hard link to {:?} refused: {why}",
                path.display(),
                String::from_utf8_lossy(target)
            ))
        };
        let (last, dirs) = parts
            .split_last()
            .ok_or_else(|| refuse("empty target".into()))?;
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| refuse("no restored root".into()))?;
        let mut current: Option<OwnedFd> = None;
        for part in dirs {
            let base = current.as_ref().unwrap_or(root);
            let next = open_dir_nofollow(base, os(part)).map_err(|e| {
                refuse(format!(
                    "{} is not a restored directory ({e})",
                    String::from_utf8_lossy(part)
                ))
            })?;
            current = Some(next);
        }
        let base = current.as_ref().unwrap_or(root);
        // flags 0: a symlink at the target is linked itself, never followed.
        rustix::fs::linkat(base, os(last), dirfd, name, AtFlags::empty())
            .map_err(|e| refuse(format!("the target was not restored ({e})")))
    }

    /// Checks a file's payload header (and extent map) and calls `sink`
    /// with each piece of content and its offset in the file. Returns
    /// whether the file is sparse.
    fn payload_pieces(
        &mut self,
        path: &Path,
        e: &Entry,
        sink: &mut dyn FnMut(u64, Bytes) -> Result<()>,
    ) -> Result<bool> {
        let damaged =
            |why: String| Error::Damaged(format!("{}: {why} in {}", path.display(), self.what));
        let cursor = &mut self.cursor;
        let layout = payload_layout(e, u64::MAX, &mut |at, len| cursor.gather(at, len)).map_err(
            |x| match x {
                LayoutError::Source(e) => e,
                LayoutError::Malformed(why) => damaged(why),
            },
        )?;
        let (mut pos, sparse) = (layout.data_at, layout.sparse);
        let extents = layout.extents;
        let progress = self.cursor.progress.clone();
        for ex in extents {
            let mut off = ex.offset;
            self.cursor.read(pos, ex.len, &mut |s| {
                let n = s.len() as u64;
                sink(off, s)?;
                off += n;
                progress.advance(n);
                Ok(())
            })?;
            pos += ex.len;
        }
        Ok(sparse)
    }

    /// Writes a file's content as its chunks arrive.
    fn stream_payload(&mut self, file: &mut std::fs::File, path: &Path, e: &Entry) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let io = |err: std::io::Error| Error::Target {
            path: path.to_path_buf(),
            source: err,
        };
        let sparse = self.payload_pieces(path, e, &mut |off, b| {
            file.write_all_at(&b, off).map_err(io)
        })?;
        if sparse {
            file.set_len(e.size).map_err(io)?;
        }
        Ok(())
    }

    fn finish_meta_fd(&mut self, fd: &impl AsFd, path: &Path, e: &Entry) {
        for (what, err) in set_metadata(fd, e, self.as_root) {
            self.failed(path, &what, err);
        }
    }

    /// The same for an entry that cannot be opened (symlinks, devices,
    /// fifos, sockets), by name in `dirfd`.
    fn finish_meta_at(
        &mut self,
        dirfd: &OwnedFd,
        name: &OsStr,
        path: &Path,
        e: &Entry,
        symlink: bool,
    ) {
        if self.as_root
            && let Err(err) = rustix::fs::chownat(
                dirfd,
                name,
                Some(rustix::fs::Uid::from_raw(e.uid)),
                Some(rustix::fs::Gid::from_raw(e.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
        {
            self.failed(path, "cannot set owner", err);
        }
        // Symlinks have no mode of their own on Linux.
        if !symlink
            && let Err(err) =
                rustix::fs::chmodat(dirfd, name, Mode::from_raw_mode(e.mode), AtFlags::empty())
        {
            self.failed(path, "cannot set mode", err);
        }
        if !e.xattrs.is_empty() {
            use std::os::fd::AsRawFd;
            let proc_path =
                PathBuf::from(format!("/proc/self/fd/{}", dirfd.as_raw_fd())).join(name);
            for (xname, err) in xattrs::set_path(&proc_path, &e.xattrs) {
                self.failed(path, &format!("cannot set extended attribute {xname}"), err);
            }
        }
        if let Err(err) = rustix::fs::utimensat(dirfd, name, &times(e), AtFlags::SYMLINK_NOFOLLOW) {
            self.failed(path, "cannot set times", err);
        }
    }

    /// A single file restored to `path`: under a temporary name in its
    /// directory, synced, then renamed, so a failure leaves nothing.
    fn single_file(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        path: &Path,
        e: &Entry,
        overwrite: bool,
    ) -> Result<()> {
        let temp = [
            b".",
            name,
            format!(".hoard-restore-{}", std::process::id()).as_bytes(),
        ]
        .concat();
        let target_io = |err: Errno| Error::Target {
            path: path.to_path_buf(),
            source: err.into(),
        };
        let fd = rustix::fs::openat(
            parent,
            os(&temp),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(target_io)?;
        let mut file = std::fs::File::from(fd);
        let result = (|| {
            self.stream_payload(&mut file, path, e)?;
            self.finish_meta_fd(&file, path, e);
            file.sync_all().map_err(|err| Error::Target {
                path: path.to_path_buf(),
                source: err,
            })?;
            if !overwrite && rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW).is_ok()
            {
                return Err(target_err(path, "appeared during the restore"));
            }
            rustix::fs::renameat(parent, os(&temp), parent, os(name)).map_err(target_io)?;
            rustix::fs::fsync(parent).map_err(target_io)
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(parent, os(&temp), AtFlags::empty());
        } else {
            self.counts.files += 1;
            self.counts.bytes += e.size;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_link_targets_inside_the_subtree() {
        assert!(inside(b"", b"etc/hostname"));
        assert!(inside(b"etc", b"etc/hostname"));
        assert!(!inside(b"etc", b"etcetera/x"));
        assert!(!inside(b"etc", b"etc"));
        assert!(!inside(b"var", b"etc/hostname"));
    }

    #[test]
    fn recent_chunks_drop_the_oldest() {
        let d = |i: u8| Digest::of(&[i]);
        let mut r: Recent<u8> = Recent::new();
        for i in 0..RECENT_CHUNKS as u8 {
            r.push(d(i), i);
        }
        assert_eq!(r.get(&d(0)), Some(&0));
        r.push(d(100), 100);
        assert_eq!(r.get(&d(0)), None);
        assert_eq!(r.get(&d(1)), Some(&1));
        assert_eq!(r.get(&d(100)), Some(&100));
    }

    #[test]
    fn the_plan_fetches_a_repeated_chunk_once() {
        // Chunks 0..4 where chunk 3 repeats chunk 1 (a splice seam).
        let ds = [b"a", b"b", b"c", b"b"].map(|x| Digest::of(x));
        let map = ChunkMap {
            ends: vec![10, 20, 30, 40],
            digests: ds.to_vec(),
        };
        let mut plan = Plan {
            data: &map,
            prefix: Vec::new(),
            needs: Vec::new(),
            bytes: 0,
            recent: Recent::new(),
            refs: Refs::default(),
        };
        plan.payload(0, 25);
        plan.payload(25, 15);
        plan.payload(0, 5);
        assert_eq!(plan.needs, vec![0, 1, 2]);
    }
}
