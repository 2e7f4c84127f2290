//! Image backup: disk images as fixed-size chunks, one stream per image,
//! all images of a snapshot at once over one connection.
//!
//! Per image, a reader thread reads the source sequentially in chunk-size
//! pieces (skipping the holes of sparse files without reading them) and
//! hands each piece to a blocking task that hashes it, so hashing runs on
//! every core. The stream task takes the hashed chunks back in order,
//! uploads those the server does not have and sends the index entries.
//! A semaphore shared by all images bounds the chunk buffers alive at
//! once, which bounds memory whatever the image sizes.
//!
//! What the server "has": the chunks of the file's base (the newest
//! finished, undamaged snapshot of the group holding a file of that name,
//! fetched with GetHashList) and every chunk sent earlier in this run.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use hoard_datastore::{FileKind, ManifestFile};
use hoard_protocol::consts::MAX_ENTRIES_PER_PACKET;
use hoard_protocol::{
    BackupFlags, CreateBackup, Features, FixedEntry, FixedEntryList, Message, SnapshotFilter,
};
use hoard_types::{Digest, FileName, SnapshotPath};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::conn::{Connection, Stream, unexpected};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::requests::{Listed, find_base, hash_list, list_snapshots};
use crate::source::Source;
use crate::tree_backup::{TreeOptions, TreeReport, TreeSpec, backup_tree};
use hoard_types::zero::{is_zero, zero_digest};

/// Uploads sent on one stream whose Ok has not arrived yet.
const UPLOAD_WINDOW: usize = 16;
/// Index entries per BackupDataFixed packet (40 bytes each).
const ENTRY_BATCH: usize = 4096;
const _: () = assert!(ENTRY_BATCH <= MAX_ENTRIES_PER_PACKET);

/// One image to back up: stored as `NAME.fidx`.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub name: FileName,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub snapshot: SnapshotPath,
    /// Fixed chunk size of images.
    pub chunk_size: u32,
    /// Average chunk size of tree archives' data streams.
    pub avg_chunk: usize,
    /// gitignore-style patterns excluded from trees.
    pub excludes: Vec<String>,
    /// Trees: enter mount points below the root.
    pub all_file_systems: bool,
    /// Reuse the base's index for a regular file whose size, mtime, ctime
    /// and inode are unchanged, without reading it.
    pub reuse_unchanged: bool,
    /// Chunk buffers alive at once, all images together.
    pub buffers: usize,
}

/// What one image's backup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageReport {
    pub name: String,
    pub source: PathBuf,
    pub size: u64,
    /// The index this backup compared against, if any.
    pub base: Option<String>,
    /// The base's index was reused without reading the source.
    pub unchanged: bool,
    pub bytes_read: u64,
    pub chunks: u64,
    pub chunks_uploaded: u64,
    pub bytes_uploaded: u64,
    /// Chunks the server had already (from the base or this run).
    pub chunks_reused: u64,
    /// All-zero chunks (counted in uploaded or reused as well).
    pub chunks_zero: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub snapshot: String,
    pub images: Vec<ImageReport>,
    pub trees: Vec<TreeReport>,
    pub seconds: f64,
}

impl BackupReport {
    pub fn total(&self, f: impl Fn(&ImageReport) -> u64) -> u64 {
        self.images.iter().map(f).sum()
    }
}

/// Backs up `images` and `trees` into one new snapshot over `conn`, all
/// at once. Every image is opened before anything is sent, so an
/// unreadable one fails early.
pub async fn backup(
    conn: Arc<Connection>,
    opts: BackupOptions,
    images: Vec<ImageSpec>,
    trees: Vec<TreeSpec>,
    progress: Arc<Progress>,
) -> Result<BackupReport> {
    let started = Instant::now();
    let mut sources = Vec::with_capacity(images.len());
    for spec in &images {
        let src = Source::open(&spec.path)?;
        progress.add_total(src.size);
        sources.push(src);
    }
    let group = opts.snapshot.group.clone();
    let filter = SnapshotFilter {
        ty: Some(group.ty),
        id: Some(group.id.clone()),
    };
    // A server without hoard's extensions (negotiated in the Hello): no
    // bases, no attributes.
    let extensions = conn.features().contains(Features::EXTENSIONS);
    let listed = if extensions {
        list_snapshots(&conn, filter).await?
    } else {
        tracing::warn!("no incremental base: the server does not offer hoard's extensions");
        Vec::new()
    };
    let listed = Arc::new(listed);
    let shared = Arc::new(RunState {
        known: Arc::new(Mutex::new(HashSet::new())),
        buffers: Arc::new(Semaphore::new(opts.buffers.max(1))),
        progress,
        extensions,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for spec in trees {
        let tree_opts = TreeOptions {
            snapshot: opts.snapshot.clone(),
            avg_chunk: opts.avg_chunk,
            reuse_unchanged: opts.reuse_unchanged,
            excludes: opts.excludes.clone(),
            all_file_systems: opts.all_file_systems,
            buffers: opts.buffers,
        };
        let job = backup_tree(
            conn.clone(),
            tree_opts,
            spec,
            listed.clone(),
            shared.known.clone(),
            shared.progress.clone(),
        );
        tasks.spawn(async move { job.await.map(Done::Tree) });
    }
    for (spec, src) in images.into_iter().zip(sources) {
        let job = ImageJob {
            conn: conn.clone(),
            opts: opts.clone(),
            spec,
            src,
            listed: listed.clone(),
            run: shared.clone(),
        };
        tasks.spawn(async move { job.run().await.map(Done::Image) });
    }
    let mut reports = Vec::new();
    let mut tree_reports = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let failed = match done {
            Ok(Ok(Done::Image(r))) => {
                reports.push(r);
                continue;
            }
            Ok(Ok(Done::Tree(r))) => {
                tree_reports.push(r);
                continue;
            }
            Ok(Err(e)) => e,
            Err(e) => Error::Protocol(format!("backup task failed: {e}")),
        };
        // One image failed: the snapshot cannot be complete, so the
        // others stop now rather than upload for nothing.
        tasks.abort_all();
        return Err(failed);
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    tree_reports.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(BackupReport {
        snapshot: opts.snapshot.to_string(),
        images: reports,
        trees: tree_reports,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What one file's task of a run produced.
enum Done {
    Image(ImageReport),
    Tree(TreeReport),
}

/// State shared by the files of one run.
struct RunState {
    /// Digests the server is known to hold, or that were queued for
    /// upload on this connection (the server orders references after
    /// uploads on one connection).
    known: Arc<Mutex<HashSet<Digest>>>,
    buffers: Arc<Semaphore>,
    progress: Arc<Progress>,
    /// The server understands hoard's extension packets.
    extensions: bool,
}

struct ImageJob {
    conn: Arc<Connection>,
    opts: BackupOptions,
    spec: ImageSpec,
    src: Source,
    listed: Arc<Vec<Listed>>,
    run: Arc<RunState>,
}

/// A chunk read and hashed; `data` is `None` for an all-zero chunk.
struct Hashed {
    index: u64,
    len: usize,
    digest: Digest,
    data: Option<Bytes>,
    _buffer: OwnedSemaphorePermit,
}

fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(chunk_size as u64)
}

impl ImageJob {
    async fn run(self) -> Result<ImageReport> {
        let stored_name = format!("{}{}", self.spec.name, FileKind::Fixed.suffix());
        let base = find_base(
            &self.listed,
            &self.opts.snapshot.group,
            &self.opts.snapshot,
            &stored_name,
        )
        .map(|(s, f)| (format!("{}/{}", s.path, f.name), f.clone()));
        let mut report = ImageReport {
            name: self.spec.name.to_string(),
            source: self.src.path.clone(),
            size: self.src.size,
            base: base.as_ref().map(|(p, _)| p.clone()),
            chunks: chunk_count(self.src.size, self.opts.chunk_size),
            ..ImageReport::default()
        };
        let mut stream = self.conn.open_stream(UPLOAD_WINDOW + 8)?;
        let what = format!("the backup of {}", self.spec.name);
        // EXCL: a run never adds to a snapshot that existed before it.
        let flags = BackupFlags::EXCL | BackupFlags::RAW;
        stream
            .send(Message::CreateBackup(CreateBackup {
                backup_type: self.opts.snapshot.group.ty,
                id: self.opts.snapshot.group.id.clone(),
                time: self.opts.snapshot.time,
                flags: BackupFlags(flags),
                name: self.spec.name.clone(),
                chunk_size: self.opts.chunk_size,
                file_size: self.src.size,
            }))
            .await?;
        match stream.recv(&what).await? {
            Message::BackupCreated { .. } => {}
            other => return Err(unexpected(&what, &other)),
        }
        if self.run.extensions
            && let Some(attrs) = self.src.attrs
        {
            stream.send(Message::FileAttributes(attrs)).await?;
        }
        if let Some((path, file)) = &base {
            let digests = hash_list(&self.conn, path).await?;
            if self.unchanged(file) && digests.len() as u64 == report.chunks {
                report.unchanged = true;
                report.chunks_reused = report.chunks;
                self.run.progress.advance(self.src.size);
                send_entries(&mut stream, &what, digests.into_iter().enumerate()).await?;
                stream.send(Message::BackupFinished).await?;
                stream.recv_ok(&what).await?;
                stream.finish();
                return Ok(report);
            }
            self.run
                .known
                .lock()
                .expect("lock poisoned")
                .extend(digests);
        }
        self.stream_chunks(&mut stream, &what, &mut report).await?;
        stream.finish();
        Ok(report)
    }

    /// The metadata shortcut applies: same source file, untouched since.
    fn unchanged(&self, base: &ManifestFile) -> bool {
        self.opts.reuse_unchanged
            && self.src.attrs.is_some()
            && base.source == self.src.attrs
            && base.kind == FileKind::Fixed
            && base.file_size == self.src.size
            && base.chunk_size == Some(self.opts.chunk_size)
    }

    async fn stream_chunks(
        &self,
        stream: &mut Stream,
        what: &str,
        report: &mut ImageReport,
    ) -> Result<()> {
        let (tx, mut rx) = mpsc::channel::<JoinHandle<Hashed>>(self.opts.buffers.max(1));
        let reader = {
            let src = self.src.try_clone()?;
            let buffers = self.run.buffers.clone();
            let chunk_size = self.opts.chunk_size;
            let rt = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || read_chunks(src, chunk_size, buffers, tx, rt))
        };
        let mut entries = Vec::with_capacity(ENTRY_BATCH);
        let mut in_flight = 0usize;
        let mut zero_bytes: Option<Bytes> = None;
        while let Some(job) = rx.recv().await {
            let chunk = job
                .await
                .map_err(|e| Error::Protocol(format!("hashing task failed: {e}")))?;
            self.run.progress.advance(chunk.len as u64);
            report.bytes_read += chunk.len as u64;
            if chunk.data.is_none() {
                report.chunks_zero += 1;
            }
            let known = self
                .run
                .known
                .lock()
                .expect("lock poisoned")
                .contains(&chunk.digest);
            if known {
                report.chunks_reused += 1;
            } else {
                let data = match chunk.data {
                    Some(d) => d,
                    None => zero_bytes
                        .get_or_insert_with(|| Bytes::from(vec![0u8; chunk.len]))
                        .slice(..chunk.len),
                };
                stream
                    .send(Message::UploadChunk {
                        digest: chunk.digest,
                        data,
                    })
                    .await?;
                // Queued behind the upload: any later reference, on any
                // stream, reaches the server after it.
                self.run
                    .known
                    .lock()
                    .expect("lock poisoned")
                    .insert(chunk.digest);
                report.chunks_uploaded += 1;
                report.bytes_uploaded += chunk.len as u64;
                in_flight += 1;
            }
            entries.push(FixedEntry {
                index: chunk.index,
                digest: chunk.digest,
            });
            if entries.len() == ENTRY_BATCH {
                send_fixed(stream, &entries).await?;
                entries.clear();
            }
            // Oks (and an Error, should one come) are taken as they
            // arrive, so the stream's queue never fills.
            while let Some(m) = stream.try_recv(what) {
                expect_ok(m?, what)?;
                in_flight -= 1;
            }
            while in_flight >= UPLOAD_WINDOW {
                stream.recv_ok(what).await?;
                in_flight -= 1;
            }
        }
        // The reader ended: completely, or with an error that must not
        // become a finished file.
        reader
            .await
            .map_err(|e| Error::Protocol(format!("reader task failed: {e}")))??;
        if !entries.is_empty() {
            send_fixed(stream, &entries).await?;
        }
        stream.send(Message::BackupFinished).await?;
        for _ in 0..=in_flight {
            stream.recv_ok(what).await?;
        }
        Ok(())
    }
}

fn expect_ok(m: Message, what: &str) -> Result<()> {
    match m {
        Message::Ok => Ok(()),
        other => Err(unexpected(what, &other)),
    }
}

async fn send_fixed(stream: &Stream, entries: &[FixedEntry]) -> Result<()> {
    stream
        .send(Message::BackupDataFixed(FixedEntryList::from_entries(
            entries,
        )))
        .await
}

/// Sends a whole index's entries. Nothing is answered on success, so any
/// packet that arrives meanwhile is an Error that ends the backup: taken
/// at once, it never piles up in the stream's queue.
async fn send_entries(
    stream: &mut Stream,
    what: &str,
    digests: impl Iterator<Item = (usize, Digest)>,
) -> Result<()> {
    let mut entries = Vec::with_capacity(ENTRY_BATCH);
    for (index, digest) in digests {
        entries.push(FixedEntry {
            index: index as u64,
            digest,
        });
        if entries.len() == ENTRY_BATCH {
            send_fixed(stream, &entries).await?;
            entries.clear();
            if let Some(m) = stream.try_recv(what) {
                return Err(match m {
                    Err(e) => e,
                    Ok(other) => unexpected(what, &other),
                });
            }
        }
    }
    if !entries.is_empty() {
        send_fixed(stream, &entries).await?;
    }
    Ok(())
}

/// `len` bytes at `offset`, read into spare capacity (no zero-filling of a
/// buffer about to be overwritten). A file that shrank meanwhile is an
/// error: the index must cover the size announced in CreateBackup.
fn read_at(src: &Source, offset: u64, len: usize) -> Result<Vec<u8>> {
    let fail = |e: std::io::Error| Error::Source {
        path: src.path.clone(),
        source: std::io::Error::new(e.kind(), format!("at offset {offset}: {e}")),
    };
    let mut buf = Vec::with_capacity(len);
    let mut file = &src.file;
    file.seek(SeekFrom::Start(offset)).map_err(fail)?;
    file.take(len as u64).read_to_end(&mut buf).map_err(fail)?;
    if buf.len() != len {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the source ended after {} bytes", offset + buf.len() as u64),
        )));
    }
    Ok(buf)
}

/// Reads `src` in order, one chunk at a time, and starts hashing each on
/// the blocking pool. Runs on a blocking thread.
fn read_chunks(
    src: Source,
    chunk_size: u32,
    buffers: Arc<Semaphore>,
    tx: mpsc::Sender<JoinHandle<Hashed>>,
    rt: tokio::runtime::Handle,
) -> Result<()> {
    let _ = rustix::fs::fadvise(&src.file, 0, None, rustix::fs::Advice::Sequential);
    let count = chunk_count(src.size, chunk_size);
    for index in 0..count {
        let offset = index * chunk_size as u64;
        let len = (src.size - offset).min(chunk_size as u64) as usize;
        let Ok(permit) = rt.block_on(buffers.clone().acquire_owned()) else {
            return Ok(());
        };
        let job = if src.is_hole(offset, len as u64) {
            rt.spawn(async move {
                Hashed {
                    index,
                    len,
                    digest: zero_digest(len),
                    data: None,
                    _buffer: permit,
                }
            })
        } else {
            let buf = read_at(&src, offset, len)?;
            rt.spawn_blocking(move || {
                let (digest, data) = if is_zero(&buf) {
                    (zero_digest(len), None)
                } else {
                    (Digest::of(&buf), Some(Bytes::from(buf)))
                };
                Hashed {
                    index,
                    len,
                    digest,
                    data,
                    _buffer: permit,
                }
            })
        };
        if tx.blocking_send(job).is_err() {
            // The stream task gave up; its error is what matters.
            return Ok(());
        }
    }
    Ok(())
}
