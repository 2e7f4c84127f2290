//! File-tree backup: a directory tree as an archive of two dynamic-index
//! files, `NAME.hmeta` (directory tables) and `NAME.hdata` (contents),
//! written concurrently on two streams of one connection.
//!
//! A walker thread visits the tree depth-first in byte order of names
//! (so an unchanged tree gives the same bytes, hence the same chunks),
//! writes each directory's table after its children's, and feeds file
//! contents to the data stream's chunker. Hashing runs on the blocking
//! pool, uploads on the streams' tasks.
//!
//! Change detection: a regular file whose size, mtime, ctime and inode
//! match its entry in the previous snapshot's archive is not read; the
//! chunks of the previous data stream that hold its payload are spliced
//! in by digest (runs of neighbouring unchanged files share one splice).
//! The previous archive's tables are read on demand alongside the walk.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hoard_archive::format::{
    self, Extent, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN, PAYLOAD_HEADER_SIZE, payload_header,
};
use hoard_archive::{Archive, Entry, Kind, MetaWriter, Timestamp};
use hoard_chunker::Params;
use hoard_types::{Digest, FileName, SnapshotPath};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::conn::Connection;
use crate::error::{Error, Result};
use crate::feed::{self, ChunkFeed, FeedClosed, create_dynamic, upload_stream};
use crate::known::KnownChunks;
use crate::progress::Progress;
use crate::remote::{ChunkDecoder, ChunkMap, RemoteFile, archive_error, chunk_map};
use crate::requests::{Listed, find_base};
use crate::seal::SealedFile;
use crate::upload::{Encoder, StreamReport, joined};
use crate::xattrs;

/// Suffixes of the two files of a tree archive (before the server's
/// `.didx`): `root.hmeta.didx` and `root.hdata.didx`.
pub const META_SUFFIX: &str = hoard_types::ARCHIVE_META_SUFFIX;
pub const DATA_SUFFIX: &str = ".hdata";
/// Average chunk of the metadata stream: small, so that listing a
/// directory downloads little.
pub const META_AVG_CHUNK: usize = 64 << 10;
/// Default average chunk of the data stream.
pub const DEFAULT_DATA_AVG_CHUNK: usize = 1 << 20;
/// The signature that marks a cache directory (bford.info/cachedir).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";
/// Stack of the walker thread: one frame per directory level.
const WALKER_STACK: usize = 64 << 20;
/// Read buffer for file contents.
const READ_BUF: usize = 1 << 20;
/// Bytes the data stream may carry beyond its payloads (dead bytes in
/// reused chunks, and chunks spliced twice at a seam), as a share of the
/// bytes its files refer to: an archive stays within about 1.2x its
/// payloads however many incrementals it descends from.
const MAX_PADDING: f64 = 0.2;
/// Of those, the bytes a full restore downloads and throws away (a chunk
/// spliced twice at a seam is downloaded once): at most about 0.1.
const MAX_DEAD: f64 = 0.1;

/// One tree to back up.
#[derive(Debug, Clone)]
pub struct TreeSpec {
    pub name: FileName,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct TreeOptions {
    pub snapshot: SnapshotPath,
    /// Average chunk size of the data stream.
    pub avg_chunk: usize,
    pub reuse_unchanged: bool,
    /// gitignore-style patterns, relative to the tree's root.
    pub excludes: Vec<String>,
    pub all_file_systems: bool,
    pub buffers: usize,
}

/// What one tree's backup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TreeReport {
    pub name: String,
    pub source: PathBuf,
    /// The archive this backup compared against, if any.
    pub base: Option<String>,
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    /// Files read (new or changed).
    pub files_read: u64,
    /// Files whose chunks were reused without reading them.
    pub files_unchanged: u64,
    /// Unchanged files read anyway: reusing their chunks would have
    /// carried more dead bytes than the padding budget allows.
    pub files_reread: u64,
    /// Bytes of reused chunks that no file of this archive refers to
    /// (parts of changed or deleted files), in the data stream.
    pub padding_bytes: u64,
    pub bytes_read: u64,
    /// Content bytes of all files (read or reused).
    pub bytes_total: u64,
    /// Entries that could not be read and were left out.
    pub skipped: u64,
    pub excluded: u64,
    pub meta: StreamReport,
    pub data: StreamReport,
    /// The two files as the manifest seal records them.
    #[serde(skip)]
    pub(crate) sealed: Vec<SealedFile>,
}

impl TreeReport {
    pub fn chunks_uploaded(&self) -> u64 {
        self.meta.chunks_uploaded + self.data.chunks_uploaded
    }
    pub fn bytes_uploaded(&self) -> u64 {
        self.meta.bytes_uploaded + self.data.bytes_uploaded
    }
    pub fn chunks(&self) -> u64 {
        self.meta.chunks + self.data.chunks
    }
    pub fn chunks_reused(&self) -> u64 {
        self.meta.chunks_reused + self.data.chunks_reused
    }
}

/// The previous snapshot's archive of the same name.
struct Previous {
    archive: Archive<RemoteFile>,
    data: ChunkMap,
    /// The digests of its metadata stream.
    archive_digests: Vec<Digest>,
}

/// Backs up one tree into `opts.snapshot` over `conn`. `listed` is the
/// group's snapshot list (for the base); `known` the digests the server
/// is known to hold, shared with the run's other files.
pub(crate) async fn backup_tree(
    conn: Arc<Connection>,
    opts: TreeOptions,
    spec: TreeSpec,
    listed: Arc<Vec<Listed>>,
    known: KnownChunks,
    progress: Arc<Progress>,
) -> Result<TreeReport> {
    let root_meta = std::fs::symlink_metadata(&spec.path).map_err(Error::source_io(&spec.path))?;
    if !root_meta.is_dir() {
        return Err(Error::Source {
            path: spec.path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "is not a directory"),
        });
    }
    let excludes = build_excludes(&spec.path, &opts.excludes)?;
    let avg = Params::new(opts.avg_chunk).map_err(|e| Error::Usage(e.to_string()))?;
    let meta_params = Params::new(META_AVG_CHUNK.min(opts.avg_chunk)).expect("valid average");
    let meta_name = FileName::new(&format!("{}{META_SUFFIX}", spec.name))
        .map_err(|e| Error::Usage(format!("archive name {}: {e}", spec.name)))?;
    let data_name = FileName::new(&format!("{}{DATA_SUFFIX}", spec.name))
        .map_err(|e| Error::Usage(format!("archive name {}: {e}", spec.name)))?;

    let mut report = TreeReport {
        name: spec.name.to_string(),
        source: spec.path.clone(),
        ..TreeReport::default()
    };
    let rt = tokio::runtime::Handle::current();
    let previous = match find_previous(&conn, &opts, &spec, &listed).await? {
        Some((base, meta_map, data_map)) => {
            report.base = Some(base);
            known.extend(meta_map.digests.iter().copied());
            known.extend(data_map.digests.iter().copied());
            if opts.reuse_unchanged {
                let archive_digests = meta_map.digests.clone();
                let remote = RemoteFile::new(
                    conn.clone(),
                    rt.clone(),
                    ChunkDecoder::own(&conn),
                    hoard_codec::Kind::MetaChunk,
                    meta_name.to_string(),
                    meta_map,
                );
                let data_size = data_map.size();
                let opened = tokio::task::spawn_blocking(move || Archive::open(remote, data_size))
                    .await
                    .map_err(|e| Error::Protocol(format!("archive task failed: {e}")))?;
                match opened {
                    Ok(archive) => Some(Previous {
                        archive,
                        data: data_map,
                        archive_digests,
                    }),
                    Err(e) => {
                        tracing::warn!(
                            "the previous archive cannot be read, every file is read: {e}"
                        );
                        // Its chunks may be what is missing: upload them
                        // again when they recur.
                        known.forget(data_map.digests.iter().chain(&archive_digests));
                        None
                    }
                }
            } else {
                None
            }
        }
        None => None,
    };

    let meta_stream = create_dynamic(
        &conn,
        &opts.snapshot,
        &meta_name,
        META_AVG_CHUNK as u32,
        known.clone(),
    )
    .await?;
    let data_stream = create_dynamic(
        &conn,
        &opts.snapshot,
        &data_name,
        opts.avg_chunk as u32,
        known.clone(),
    )
    .await?;
    let buffers = Arc::new(Semaphore::new(opts.buffers.max(2)));
    let (meta_tx, meta_rx) = feed::channel();
    let (data_tx, data_rx) = feed::channel();
    let meta_up = tokio::spawn(upload_stream(meta_stream, meta_rx));
    let data_up = tokio::spawn(upload_stream(data_stream, data_rx));
    let encoder = Encoder::new(&conn, known.clone());
    let walker = Walker {
        meta: ChunkFeed::new(
            meta_params,
            meta_tx,
            rt.clone(),
            buffers.clone(),
            encoder.clone(),
            hoard_codec::Kind::MetaChunk,
        ),
        data: ChunkFeed::new(
            avg,
            data_tx,
            rt.clone(),
            buffers,
            encoder,
            hoard_codec::Kind::Chunk,
        ),
        layout: None,
        root: spec.path.clone(),
        root_dev: root_meta.dev(),
        all_file_systems: opts.all_file_systems,
        excludes,
        previous,
        known,
        links: HashMap::new(),
        run: None,
        report,
        progress,
        buf: vec![0u8; READ_BUF],
        live: 0,
        dead: 0,
        flushed: None,
        large_file: opts.avg_chunk as u64,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("hoard-walk".into())
        .stack_size(WALKER_STACK)
        .spawn(move || {
            let _ = tx.send(walker.run(root_meta));
        })
        .map_err(|e| Error::Protocol(format!("cannot start the walker thread: {e}")))?;
    let walked = rx
        .await
        .map_err(|_| Error::Protocol("the walker thread died".into()));
    // The uploaders' errors explain a walker that stopped because they
    // went away.
    let meta_r = joined(meta_up.await, "upload");
    let data_r = joined(data_up.await, "upload");
    let mut report = match walked? {
        Ok(r) => r,
        // One uploader failed, so the walker stopped and left the other
        // unfinished: report the failure, not that consequence.
        Err(FeedClosed) => {
            let errors = [meta_r.and_then(|r| r), data_r.and_then(|r| r)]
                .into_iter()
                .filter_map(Result::err);
            return Err(Error::first_cause(errors)
                .unwrap_or_else(|| Error::Protocol("an upload stopped early".into())));
        }
    };
    let (meta, meta_csum) = meta_r??;
    let (data, data_csum) = data_r??;
    report.sealed = vec![
        SealedFile::dynamic(&meta_name, &meta, meta_csum),
        SealedFile::dynamic(&data_name, &data, data_csum),
    ];
    report.meta = meta;
    report.data = data;
    Ok(report)
}

/// The base: the newest usable snapshot of the group holding both files
/// of this archive, with their chunk maps.
async fn find_previous(
    conn: &Connection,
    opts: &TreeOptions,
    spec: &TreeSpec,
    listed: &[Listed],
) -> Result<Option<(String, ChunkMap, ChunkMap)>> {
    let meta = format!("{}{META_SUFFIX}.didx", spec.name);
    let data = format!("{}{DATA_SUFFIX}.didx", spec.name);
    // An encrypted backup's base is sealed with its key (its files and
    // their index checksums are the sealed ones), a plain one's is plain.
    let keyed = conn.codec().key().is_some();
    let Some((snap, meta_file)) =
        find_base(listed, &opts.snapshot.group, &opts.snapshot, &meta, keyed)
    else {
        return Ok(None);
    };
    let Some(data_file) = snap.manifest.file(&data) else {
        return Ok(None);
    };
    let meta_map = chunk_map(conn, &format!("{}/{meta}", snap.path), meta_file).await?;
    let data_map = chunk_map(conn, &format!("{}/{data}", snap.path), data_file).await?;
    Ok(Some((
        format!("{}/{}", snap.path, spec.name),
        meta_map,
        data_map,
    )))
}

fn build_excludes(root: &Path, patterns: &[String]) -> Result<Gitignore> {
    let mut b = GitignoreBuilder::new(root);
    for p in patterns {
        b.add_line(None, p)
            .map_err(|e| Error::Usage(format!("exclude pattern {p:?}: {e}")))?;
    }
    b.build()
        .map_err(|e| Error::Usage(format!("exclude patterns: {e}")))
}

/// The walker stops only when an uploader went away (its error is the
/// cause): unreadable entries are skipped, a damaged base is read around.
type WalkResult<T> = std::result::Result<T, FeedClosed>;

/// Chunks of the previous data stream waiting to be spliced in: a run of
/// neighbouring unchanged files shares them.
struct SpliceRun {
    first: usize,
    last: usize,
    /// Offset in the previous data stream where the last payload spliced
    /// into this run ends.
    cursor: u64,
    /// Where chunk `first` lands in the new data stream.
    new_start: u64,
}

/// What splicing one payload would do (see `Walker::splice_step`).
struct SpliceStep {
    /// The previous stream's chunks that hold the payload.
    first: usize,
    last: usize,
    /// It continues the current run.
    extends: bool,
    /// Dead bytes before it: since the run's last payload, or in its
    /// first chunk when it starts a new run.
    gap: u64,
    /// Bytes of its last chunk after it.
    tail: u64,
    /// Dead bytes for a restore: the gap, and the end of the previous run
    /// unless this one starts in that run's last chunk right after it
    /// (a seam: the restore downloads that chunk once for both).
    restore_gap: u64,
}

/// The end of the last run written: its last chunk, where its last
/// payload ends there, the dead bytes after it, and where the run ended
/// in the new stream.
#[derive(Clone, Copy)]
struct Flushed {
    last: usize,
    cursor: u64,
    tail: u64,
    end: u64,
}

/// The first name under which a multiply-linked file was stored.
struct LinkTarget {
    path: Vec<u8>,
    payload: u64,
    payload_len: u64,
    sparse: bool,
    size: u64,
}

struct Walker {
    meta: ChunkFeed,
    data: ChunkFeed,
    layout: Option<MetaWriter>,
    root: PathBuf,
    root_dev: u64,
    all_file_systems: bool,
    excludes: Gitignore,
    previous: Option<Previous>,
    /// Digests the server is known to hold (shared with the uploaders).
    known: KnownChunks,
    links: HashMap<(u64, u64), LinkTarget>,
    run: Option<SpliceRun>,
    /// Payload bytes the data stream's entries refer to so far (the
    /// padding budget's base).
    live: u64,
    /// Bytes of reused chunks a full restore would download for nothing.
    dead: u64,
    /// The last run written, until the next run starts.
    flushed: Option<Flushed>,
    report: TreeReport,
    progress: Arc<Progress>,
    buf: Vec<u8>,
    /// Files from this size on start a new chunk: the data stream's
    /// average chunk size.
    large_file: u64,
}

fn timestamp(m: &std::fs::Metadata) -> Timestamp {
    Timestamp {
        sec: m.mtime(),
        nsec: m.mtime_nsec() as u32,
    }
}

fn ctime_ns(m: &std::fs::Metadata) -> i64 {
    m.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.ctime_nsec())
}

impl Walker {
    fn run(mut self, root_meta: std::fs::Metadata) -> WalkResult<TreeReport> {
        let (layout, head) = MetaWriter::start();
        self.layout = Some(layout);
        self.meta.write(&head)?;
        let prev_root = self.previous.as_ref().map(|p| p.archive.root().clone());
        let root_path = self.root.clone();
        let children = self.walk_dir(&root_path, b"", prev_root.as_ref(), 0)?;
        let (table, kind) = self.layout_mut().table(&children);
        self.meta.write(&table)?;
        self.flush_run()?;
        self.data.cut()?;
        let mut root = self.entry_of(&root_path, &root_meta, Vec::new(), kind);
        root.size = self.data.offset();
        let tail = self.layout.take().expect("started").finish(&root);
        self.meta.write(&tail)?;
        self.meta.finish()?;
        self.data.finish()?;
        Ok(self.report)
    }

    fn layout_mut(&mut self) -> &mut MetaWriter {
        self.layout.as_mut().expect("started")
    }

    /// Warns about an entry left out and counts it.
    fn skip(&mut self, path: &Path, what: &str, e: &dyn std::fmt::Display) {
        tracing::warn!("{}: {what}: {e} (skipped)", path.display());
        self.report.skipped += 1;
    }

    fn entry_of(&mut self, path: &Path, m: &std::fs::Metadata, name: Vec<u8>, kind: Kind) -> Entry {
        let xattrs = match xattrs::read(path) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("{}: cannot read extended attributes: {e}", path.display());
                Vec::new()
            }
        };
        Entry {
            name,
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: timestamp(m),
            ctime_ns: ctime_ns(m),
            inode: m.ino(),
            size: 0,
            xattrs,
        }
    }

    /// Walks directory `dir` (archive path `rel`), writing the tables of
    /// its subdirectories; returns its own entries, sorted.
    fn walk_dir(
        &mut self,
        dir: &Path,
        rel: &[u8],
        prev: Option<&Entry>,
        depth: usize,
    ) -> WalkResult<Vec<Entry>> {
        if depth >= MAX_DEPTH {
            self.skip(dir, "nested too deep", &MAX_DEPTH);
            return Ok(Vec::new());
        }
        let mut names: Vec<OsString> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => {
                self.skip(dir, "cannot list directory", &e);
                return Ok(Vec::new());
            }
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        // The previous archive's entries of this directory, if it had it.
        let prev_entries = match (prev, self.previous.as_mut()) {
            (Some(p), Some(prev_archive)) if p.is_dir() => match prev_archive.archive.read_dir(p) {
                Ok(list) => list,
                Err(e) => {
                    // A damaged base costs reading, never the backup: the
                    // rest of the tree is read in full.
                    let e = archive_error(e, prev_archive.archive.source());
                    tracing::warn!(
                        "{}: the previous snapshot's archive cannot be read ({e}); reading every file from here on",
                        dir.display()
                    );
                    self.flush_run()?;
                    // Its chunks may be what is missing: upload them again
                    // when they recur (the server keeps one copy).
                    if let Some(prev) = self.previous.take() {
                        self.known
                            .forget(prev.data.digests.iter().chain(&prev.archive_digests));
                    }
                    Vec::new()
                }
            },
            _ => Vec::new(),
        };
        let cache_dir = is_cache_dir(dir);
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let bytes = name.into_vec();
            if cache_dir && bytes != b"CACHEDIR.TAG" {
                self.report.excluded += 1;
                continue;
            }
            let path = dir.join(std::ffi::OsStr::from_bytes(&bytes));
            let child_rel = if rel.is_empty() {
                bytes.clone()
            } else {
                [rel, b"/", &bytes].concat()
            };
            let m = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.skip(&path, "cannot stat", &e);
                    continue;
                }
            };
            let rel_path = Path::new(std::ffi::OsStr::from_bytes(&child_rel));
            if self.excludes.matched(rel_path, m.is_dir()).is_ignore() {
                self.report.excluded += 1;
                continue;
            }
            if bytes.len() > MAX_NAME_LEN {
                self.skip(&path, "name too long", &bytes.len());
                continue;
            }
            let old = prev_entries
                .binary_search_by(|e| e.name.as_slice().cmp(&bytes))
                .ok()
                .map(|i| &prev_entries[i]);
            if let Some(entry) = self.visit(&path, &child_rel, bytes, &m, old, depth)? {
                self.report.entries += 1;
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// One entry; `None` if it was left out.
    fn visit(
        &mut self,
        path: &Path,
        rel: &[u8],
        name: Vec<u8>,
        m: &std::fs::Metadata,
        old: Option<&Entry>,
        depth: usize,
    ) -> WalkResult<Option<Entry>> {
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            self.report.dirs += 1;
            let children = if m.dev() != self.root_dev && !self.all_file_systems {
                // A mount point: kept, not entered (one file system).
                Vec::new()
            } else {
                let old = old.cloned();
                self.walk_dir(path, rel, old.as_ref(), depth + 1)?
            };
            let (table, kind) = self.layout_mut().table(&children);
            self.meta.write(&table)?;
            kind
        } else if ft.is_file() {
            return self.visit_file(path, rel, name, m, old);
        } else if ft.is_symlink() {
            match std::fs::read_link(path) {
                Ok(t) if !t.as_os_str().is_empty() && t.as_os_str().len() <= MAX_TARGET_LEN => {
                    Kind::Symlink {
                        target: t.into_os_string().into_vec(),
                    }
                }
                Ok(t) => {
                    self.skip(
                        path,
                        "symlink target length out of range",
                        &t.as_os_str().len(),
                    );
                    return Ok(None);
                }
                Err(e) => {
                    self.skip(path, "cannot read symlink", &e);
                    return Ok(None);
                }
            }
        } else if ft.is_char_device() {
            Kind::CharDev { rdev: m.rdev() }
        } else if ft.is_block_device() {
            Kind::BlockDev { rdev: m.rdev() }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else {
            self.skip(path, "unknown file type", &format!("{:o}", m.mode()));
            return Ok(None);
        };
        let mut e = self.entry_of(path, m, name, kind);
        if let Kind::Symlink { target } = &e.kind {
            e.size = target.len() as u64;
        }
        Ok(Some(e))
    }

    fn visit_file(
        &mut self,
        path: &Path,
        rel: &[u8],
        name: Vec<u8>,
        m: &std::fs::Metadata,
        old: Option<&Entry>,
    ) -> WalkResult<Option<Entry>> {
        let key = (m.dev(), m.ino());
        if m.nlink() > 1
            && let Some(t) = self.links.get(&key)
        {
            let kind = Kind::Hardlink {
                target: t.path.clone(),
                payload: t.payload,
                payload_len: t.payload_len,
                sparse: t.sparse,
            };
            let size = t.size;
            let mut e = self.entry_of(path, m, name, kind);
            e.size = size;
            self.report.files += 1;
            return Ok(Some(e));
        }
        let size = m.len();
        let unchanged = old.filter(|o| {
            self.previous.is_some()
                && matches!(o.kind, Kind::File { .. })
                && o.size == size
                && o.mtime == timestamp(m)
                && o.ctime_ns == ctime_ns(m)
                && o.inode == m.ino()
        });
        let reuse = unchanged.and_then(|o| o.payload());
        // Reading it again is for tidiness only: a file that cannot be
        // opened now keeps its previous copy rather than being left out.
        let must_reuse =
            |w: &Self, at: u64, len: u64| w.splice_pays(at, len) || open_noatime(path).is_err();
        let kind = match reuse {
            Some((at, len, sparse)) if must_reuse(self, at, len) => {
                let payload = self.splice(at, len)?;
                self.report.files_unchanged += 1;
                Kind::File {
                    payload,
                    payload_len: len,
                    sparse,
                }
            }
            _ => match self.read_file(path, m)? {
                Some(kind) => {
                    if reuse.is_some() {
                        self.report.files_reread += 1;
                    }
                    if let Some((_, len, _)) = kind_payload(&kind) {
                        self.live += len;
                    }
                    kind
                }
                None => return Ok(None),
            },
        };
        self.report.files += 1;
        self.report.bytes_total += size;
        self.progress.advance(size);
        if m.nlink() > 1
            && let Some((payload, payload_len, sparse)) = kind_payload(&kind)
        {
            self.links.insert(
                key,
                LinkTarget {
                    path: rel.to_vec(),
                    payload,
                    payload_len,
                    sparse,
                    size,
                },
            );
        }
        let mut e = self.entry_of(path, m, name, kind);
        e.size = size;
        Ok(Some(e))
    }

    /// Where splicing the previous payload `at .. at + len` would put it:
    /// into the current run, or at the start of a new one.
    fn splice_step(&self, at: u64, len: u64) -> SpliceStep {
        let prev = &self.previous.as_ref().expect("splicing needs a base").data;
        let range = prev.covering(at, len.max(1));
        let (first, last) = (*range.start(), *range.end());
        let (extends, gap) = match &self.run {
            Some(run) if first >= run.first && first <= run.last + 1 && at >= run.cursor => {
                (true, at - run.cursor)
            }
            _ => (false, at - prev.start(first)),
        };
        // The run this one follows: the current one (flushed when this
        // starts, nothing between them) or the last one written.
        let before = match &self.run {
            Some(run) => Some(Flushed {
                last: run.last,
                cursor: run.cursor,
                tail: prev.ends[run.last].saturating_sub(run.cursor),
                end: self.data.offset(),
            }),
            None => self.flushed,
        };
        let restore_gap = match before {
            _ if extends => gap,
            // Near enough that the restore still holds that chunk.
            Some(b)
                if first == b.last
                    && at >= b.cursor
                    && self.data.offset() - b.end <= 2 * self.large_file =>
            {
                at - b.cursor
            }
            Some(b) => b.tail + gap,
            None => gap,
        };
        SpliceStep {
            first,
            last,
            extends,
            gap,
            tail: prev.ends[last].saturating_sub(at + len),
            restore_gap,
        }
    }

    /// Whether to reuse an unchanged file's chunks rather than read it.
    ///
    /// Reusing whole chunks drags along the parts of changed and deleted
    /// files around the unchanged one; unbounded, that grows with every
    /// incremental. So, as PBS's metadata mode does, a file is read again
    /// when its reuse would carry too many dead bytes. It is reused if
    /// the dead bytes it may add (the gap before it and the rest of its
    /// last chunk) are within
    /// [`MAX_PADDING`] of its own size, or if the stream's dead bytes so
    /// far plus its gap stay within [`MAX_PADDING`] of the payload bytes
    /// the stream refers to.
    fn splice_pays(&self, at: u64, len: u64) -> bool {
        let step = self.splice_step(at, len);
        // The current run's tail is not counted: reading the file instead
        // ends the run too.
        let own = (step.gap + step.tail) as f64 <= MAX_DEAD * len as f64;
        let base = (self.live + len) as f64;
        let stream = (self.report.padding_bytes + step.gap) as f64 <= MAX_PADDING * base;
        let restore = (self.dead + step.restore_gap) as f64 <= MAX_DEAD * base;
        own || (stream && restore)
    }

    /// Splices the previous payload `at .. at + len` into the data stream;
    /// returns where it lands.
    fn splice(&mut self, at: u64, len: u64) -> WalkResult<u64> {
        let step = self.splice_step(at, len);
        self.report.padding_bytes += step.gap;
        self.dead += step.restore_gap;
        self.live += len;
        match &mut self.run {
            Some(run) if step.extends => {
                run.last = run.last.max(step.last);
                run.cursor = at + len;
            }
            _ => {
                self.flush_run()?;
                self.data.cut()?;
                self.run = Some(SpliceRun {
                    first: step.first,
                    last: step.last,
                    cursor: at + len,
                    new_start: self.data.offset(),
                });
                // The run before was accounted for in `restore_gap`.
                self.flushed = None;
            }
        }
        let run = self.run.as_ref().expect("set above");
        let prev = &self.previous.as_ref().expect("splicing needs a base").data;
        Ok(run.new_start + (at - prev.start(run.first)))
    }

    /// Appends the pending splice run's chunks to the data stream.
    fn flush_run(&mut self) -> WalkResult<()> {
        if let Some(run) = self.run.take() {
            let prev = &self.previous.as_ref().expect("a run needs a base").data;
            // The bytes after its last payload are dead too.
            let tail = prev.ends[run.last].saturating_sub(run.cursor);
            self.report.padding_bytes += tail;
            let pieces: Vec<(Digest, u64)> = (run.first..=run.last)
                .map(|i| (prev.digests[i], prev.ends[i] - prev.start(i)))
                .collect();
            for (digest, size) in pieces {
                self.data.splice(digest, size)?;
            }
            self.flushed = Some(Flushed {
                last: run.last,
                cursor: run.cursor,
                tail,
                end: self.data.offset(),
            });
        }
        Ok(())
    }

    /// Reads a file into the data stream. `None` if it cannot be opened
    /// (reported and left out). A file that shrinks while being read is
    /// padded with zeros to the size it had, one that grows is cut there:
    /// the entry and the payload must agree.
    fn read_file(&mut self, path: &Path, m: &std::fs::Metadata) -> WalkResult<Option<Kind>> {
        let file = match open_noatime(path) {
            Ok(f) => f,
            Err(e) => {
                self.skip(path, "cannot open", &e);
                return Ok(None);
            }
        };
        self.flush_run()?;
        let size = m.len();
        // A large file starts a chunk of its own, so its chunks are the
        // same wherever it lies in the tree (copies, moves, renames).
        // Small files share chunks of a quarter of the average, cut at a
        // file's start: a changed one among them then costs its
        // neighbours in a quarter-size chunk when reuse must drop the dead
        // bytes (read again) or carry them, not in a full one.
        if size >= self.large_file || self.data.pending_len() as u64 >= self.large_file / 4 {
            self.data.cut()?;
        }
        let extents = sparse_extents(&file, size, m);
        let payload = self.data.offset();
        // Read-ahead advice pays for large files only: one syscall less
        // per small file.
        if size >= self.large_file {
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        }
        let (payload_len, sparse) = match &extents {
            Some(ex) => {
                let data: u64 = ex.iter().map(|e| e.len).sum();
                let mut map = Vec::new();
                format::encode_extents(ex, &mut map);
                let len = map.len() as u64 + data;
                self.data.write(&payload_header(len))?;
                self.data.write(&map)?;
                for e in ex {
                    self.copy(&file, path, e.offset, e.len)?;
                }
                (PAYLOAD_HEADER_SIZE as u64 + len, true)
            }
            None => {
                self.data.write(&payload_header(size))?;
                self.copy(&file, path, 0, size)?;
                (PAYLOAD_HEADER_SIZE as u64 + size, false)
            }
        };
        self.report.files_read += 1;
        Ok(Some(Kind::File {
            payload,
            payload_len,
            sparse,
        }))
    }

    /// Copies `len` bytes at `offset` of `file` into the data stream.
    fn copy(&mut self, file: &File, path: &Path, offset: u64, len: u64) -> WalkResult<()> {
        use std::os::unix::fs::FileExt;
        let mut done = 0u64;
        let mut buf = std::mem::take(&mut self.buf);
        let mut trouble: Option<std::io::Error> = None;
        while done < len {
            let want = (len - done).min(buf.len() as u64) as usize;
            match file.read_at(&mut buf[..want], offset + done) {
                Ok(0) => break,
                Ok(n) => {
                    self.data.write(&buf[..n])?;
                    done += n as u64;
                    self.report.bytes_read += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    trouble = Some(e);
                    break;
                }
            }
        }
        if done < len {
            let why = match trouble {
                Some(e) => format!("read error at byte {}: {e}", offset + done),
                None => format!("it shrank to {} bytes while being read", offset + done),
            };
            tracing::warn!("{}: {why}; the rest is stored as zeros", path.display());
            buf.fill(0);
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                self.data.write(&buf[..n])?;
                done += n as u64;
            }
        }
        self.buf = buf;
        Ok(())
    }
}

fn kind_payload(kind: &Kind) -> Option<(u64, u64, bool)> {
    match kind {
        Kind::File {
            payload,
            payload_len,
            sparse,
        } => Some((*payload, *payload_len, *sparse)),
        _ => None,
    }
}

/// Opens for reading without updating the access time where allowed
/// (owner or root), so a backup does not dirty every inode it reads.
fn open_noatime(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_noatime())
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {
            File::open(path)
        }
        other => other,
    }
}

fn libc_noatime() -> i32 {
    rustix::fs::OFlags::NOATIME.bits() as i32
}

/// The data extents of a file with holes, or `None` for a dense file
/// (or when the file system cannot say). Checked only for files that
/// occupy fewer blocks than their size.
fn sparse_extents(file: &File, size: u64, m: &std::fs::Metadata) -> Option<Vec<Extent>> {
    if size == 0 || m.blocks() * 512 >= size {
        return None;
    }
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(e) if e == rustix::io::Errno::NXIO => break,
            Err(_) => return None,
        };
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(data)).ok()?;
        let end = hole.min(size);
        if end > data {
            out.push(Extent {
                offset: data,
                len: end - data,
            });
        }
        pos = end;
    }
    Some(out)
}

/// Whether `dir` holds a valid `CACHEDIR.TAG`.
fn is_cache_dir(dir: &Path) -> bool {
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    match File::open(dir.join("CACHEDIR.TAG")) {
        Ok(mut f) => f.read_exact(&mut head).is_ok() && head == CACHEDIR_SIGNATURE,
        Err(_) => false,
    }
}
