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
//! fetched with GetHashList) and every chunk sent earlier in this run
//! ([`crate::known`]). Chunks go through the one upload path of
//! [`crate::upload`], as tree streams do. With a key, the run ends by
//! sealing the snapshot's manifest ([`crate::seal`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use hoard_codec::Kind;
use hoard_datastore::{FileKind, ManifestFile};
use hoard_protocol::{BackupFlags, CreateBackup, Features, Message, SnapshotFilter};
use hoard_types::{Digest, FileName, SnapshotPath};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::conn::Connection;
use crate::error::{Error, Result};
use crate::known::KnownChunks;
use crate::progress::Progress;
use crate::requests::{Listed, find_base, hash_list, list_snapshots};
use crate::seal::SealedFile;
use crate::source::Source;
use crate::tree_backup::{TreeOptions, TreeReport, TreeSpec, backup_tree};
use crate::upload::{Encoder, FileUpload, Prepared, joined};
use hoard_types::zero::is_zero;

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
    /// Encrypted backups: the key encrypted to a master public key,
    /// recorded in the seal (`hoard key recover`).
    pub recovery: Option<Vec<u8>>,
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
    /// Bytes read from the source: holes, zero extents an NBD export
    /// reports, and chunks taken from the base unread do not count.
    pub bytes_read: u64,
    pub chunks: u64,
    pub chunks_uploaded: u64,
    /// Plain bytes of the uploaded chunks.
    pub bytes_uploaded: u64,
    /// Bytes sent for them, compressed and encrypted as stored.
    pub bytes_sent: u64,
    /// Chunks the server had already (from the base or this run).
    pub chunks_reused: u64,
    /// All-zero chunks (counted in uploaded or reused as well).
    pub chunks_zero: u64,
    /// NBD exports: the dirty bitmap that chose the chunks read (the
    /// others were taken from the base unread).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<String>,
    /// NBD exports: why the bitmap asked for was not used (everything
    /// was read instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitmap_refused: Option<String>,
    /// The image as the manifest seal records it.
    #[serde(skip)]
    pub(crate) sealed: Option<SealedFile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub snapshot: String,
    /// Fingerprint of the key the backup is encrypted with, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
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
        known: KnownChunks::default(),
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
    let key = conn.codec().key().cloned();
    if let Some(key) = &key {
        let files = reports
            .iter()
            .filter_map(|r| r.sealed.clone())
            .chain(tree_reports.iter().flat_map(|t| t.sealed.iter().cloned()))
            .collect();
        seal_snapshot(&conn, key, &opts.snapshot, files, opts.recovery.clone()).await?;
    }
    if conn.features().contains(Features::CLOSE_SNAPSHOT) {
        close_snapshot(&conn, &opts.snapshot).await?;
    }
    Ok(BackupReport {
        snapshot: opts.snapshot.to_string(),
        key: key.map(|k| k.fingerprint().to_string()),
        images: reports,
        trees: tree_reports,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Sends the seal of `snapshot`, covering `files`, once every file is
/// finished.
async fn seal_snapshot(
    conn: &Connection,
    key: &hoard_codec::Key,
    snapshot: &SnapshotPath,
    files: Vec<SealedFile>,
    recovery: Option<Vec<u8>>,
) -> Result<()> {
    let (_, mac, body) = crate::seal::make(key, snapshot, files, recovery);
    let mut stream = conn.open_stream(1)?;
    stream
        .send(Message::SealSnapshot {
            snapshot: snapshot.to_string(),
            mac,
            body: Bytes::from(body),
        })
        .await?;
    stream.recv_ok(&format!("the seal of {snapshot}")).await?;
    stream.finish();
    Ok(())
}

/// Closes `snapshot` and waits for the server to answer that it is stored
/// complete: only then is the backup done (a server that crashed before
/// the connection's end closed it would leave it incomplete). Servers
/// without the feature close it when the connection ends.
async fn close_snapshot(conn: &Connection, snapshot: &SnapshotPath) -> Result<()> {
    let mut stream = conn.open_stream(1)?;
    stream
        .send(Message::CloseSnapshot {
            snapshot: snapshot.to_string(),
        })
        .await?;
    stream.recv_ok(&format!("closing {snapshot}")).await?;
    stream.finish();
    Ok(())
}

/// What one file's task of a run produced.
enum Done {
    Image(ImageReport),
    Tree(TreeReport),
}

/// State shared by the files of one run.
struct RunState {
    known: KnownChunks,
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

/// A chunk read and prepared by a worker, in order.
type Job = JoinHandle<(Prepared, OwnedSemaphorePermit)>;

fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(chunk_size as u64)
}

impl ImageJob {
    async fn run(self) -> Result<ImageReport> {
        let stored_name = format!("{}{}", self.spec.name, FileKind::Fixed.suffix());
        let keyed = self.conn.codec().key().is_some();
        let base = find_base(
            &self.listed,
            &self.opts.snapshot.group,
            &self.opts.snapshot,
            &stored_name,
            keyed,
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
        let req = CreateBackup {
            backup_type: self.opts.snapshot.group.ty,
            id: self.opts.snapshot.group.id.clone(),
            time: self.opts.snapshot.time,
            // EXCL: a run never adds to a snapshot that existed before it.
            flags: BackupFlags(BackupFlags::EXCL | BackupFlags::RAW),
            name: self.spec.name.clone(),
            chunk_size: self.opts.chunk_size,
            file_size: self.src.size,
        };
        let mut up = FileUpload::create(&self.conn, req, self.run.known.clone()).await?;
        let attrs = self.src.attrs.filter(|_| self.run.extensions);
        if self.src.attrs.is_some() && attrs.is_none() && !self.src.is_file() {
            tracing::warn!(
                "{}: new-bitmap not recorded: the server does not offer hoard's extensions",
                self.spec.name
            );
        }
        if let Some(a) = attrs {
            up.attributes(a).await?;
        }
        if let Some((path, file)) = &base {
            let digests = hash_list(&self.conn, path, file).await?;
            if self.unchanged(file) && digests.len() as u64 == report.chunks {
                report.unchanged = true;
                self.run.progress.advance(self.src.size);
                let cs = self.opts.chunk_size as u64;
                for (i, d) in digests.into_iter().enumerate() {
                    let len = (self.src.size - i as u64 * cs).min(cs);
                    up.push_known(d, len).await?;
                }
            } else {
                self.run.known.extend(digests.iter().copied());
                let reuse = match self.bitmap_base(path, file, digests.len() as u64) {
                    Ok(Some(bitmap)) => {
                        report.bitmap = Some(bitmap);
                        Some(digests)
                    }
                    Ok(None) => None,
                    Err(why) => {
                        tracing::warn!("{}: reading everything: {why}", self.spec.name);
                        report.bitmap_refused = Some(why);
                        None
                    }
                };
                self.stream_chunks(&mut up, &mut report, reuse).await?;
            }
        } else {
            if let Some(b) = &self.src.bitmap {
                let why = format!(
                    "bitmap {b}: no complete earlier backup of this image (one that did not fail verify) to build on"
                );
                tracing::warn!("{}: reading everything: {why}", self.spec.name);
                report.bitmap_refused = Some(why);
            }
            self.stream_chunks(&mut up, &mut report, None).await?;
        }
        let done = up.finish().await?;
        let r = &done.report;
        report.chunks_uploaded = r.chunks_uploaded;
        report.bytes_uploaded = r.bytes_uploaded;
        report.bytes_sent = r.bytes_sent;
        report.chunks_reused = r.chunks_reused;
        report.chunks_zero = r.chunks_zero;
        report.sealed = Some(SealedFile {
            name: stored_name,
            kind: FileKind::Fixed,
            raw: true,
            file_size: self.src.size,
            chunk_size: Some(self.opts.chunk_size),
            chunk_count: r.chunks,
            index_csum: hex::encode(done.csum),
            source: attrs,
        });
        Ok(report)
    }

    /// Whether the export's dirty bitmap may choose what is read, with
    /// `base` (at `path`, `chunks` digests long) supplying the rest:
    /// `Ok(Some(name))` if so, `Ok(None)` if no bitmap was asked for, and
    /// `Err(why)` if it may not. The base must be the backup that recorded
    /// the bitmap's start ([`crate::source::bitmap_mark`]), of the same
    /// size and chunk size; the base is complete and unfailed already
    /// ([`find_base`]).
    fn bitmap_base(
        &self,
        path: &str,
        base: &ManifestFile,
        chunks: u64,
    ) -> std::result::Result<Option<String>, String> {
        let Some(b) = &self.src.bitmap else {
            return Ok(None);
        };
        if !self.opts.reuse_unchanged {
            return Err(format!("--reread: bitmap {b} not used"));
        }
        // The base must be the newest backup of this image in the group,
        // whatever became of the later ones (incomplete, failed verify):
        // a bitmap covers the writes since the one point it was started
        // at, and a name reused later must never reach back to an older
        // snapshot that recorded it.
        let base_time = path
            .rsplit_once('/')
            .and_then(|(snap, _)| snap.parse::<SnapshotPath>().ok())
            .map(|s| s.time)
            .ok_or_else(|| format!("the base {path} is not a snapshot's file"))?;
        if let Some(newer) = self.listed.iter().find(|s| {
            s.path.group == self.opts.snapshot.group
                && s.path.time > base_time
                && s.path.time < self.opts.snapshot.time
                && s.manifest.file(&base.name).is_some()
        }) {
            return Err(format!(
                "a later backup {} of this image exists: bitmap {b} is only used on top of the newest",
                newer.path
            ));
        }
        if base.file_size != self.src.size {
            return Err(format!(
                "the disk is {} bytes, its base {path} {}",
                self.src.size, base.file_size
            ));
        }
        if base.chunk_size != Some(self.opts.chunk_size)
            || chunks != chunk_count(self.src.size, self.opts.chunk_size)
        {
            return Err(format!("the base {path} has another chunk size"));
        }
        if base.source != Some(crate::source::bitmap_mark(b)) {
            return Err(format!(
                "bitmap {b} was not started at the base {path} (that backup did not name it with new-bitmap={b})"
            ));
        }
        if let Some(why) = self.src.bitmap_missing() {
            return Err(why);
        }
        Ok(Some(b.clone()))
    }

    /// The metadata shortcut applies: same source file, untouched since.
    fn unchanged(&self, base: &ManifestFile) -> bool {
        self.opts.reuse_unchanged
            && self.src.is_file()
            && self.src.attrs.is_some()
            && base.source == self.src.attrs
            && base.kind == FileKind::Fixed
            && base.file_size == self.src.size
            && base.chunk_size == Some(self.opts.chunk_size)
    }

    /// Reads the source in order on a blocking thread, prepares each
    /// chunk on the blocking pool, and pushes them in order.
    /// With `reuse` (the base's digests, when a dirty bitmap may choose),
    /// a chunk the bitmap marks clean is the base's, taken unread.
    async fn stream_chunks(
        &self,
        up: &mut FileUpload,
        report: &mut ImageReport,
        reuse: Option<Vec<Digest>>,
    ) -> Result<()> {
        let (tx, mut rx) = mpsc::channel::<Job>(self.opts.buffers.max(1));
        let read = Arc::new(AtomicU64::new(0));
        let bitmap_read = Arc::new(AtomicBool::new(false));
        let wants_bitmap = reuse.is_some();
        let reader = {
            let read = read.clone();
            let bitmap_read = bitmap_read.clone();
            let src = self.src.try_clone()?;
            let buffers = self.run.buffers.clone();
            let chunk_size = self.opts.chunk_size;
            let rt = tokio::runtime::Handle::current();
            let encoder = Encoder::new(&self.conn, self.run.known.clone());
            tokio::task::spawn_blocking(move || {
                let plan = ReadPlan {
                    src,
                    chunk_size,
                    buffers,
                    encoder,
                    reuse,
                    bitmap_read,
                };
                read_chunks(plan, tx, rt, &read)
            })
        };
        while let Some(job) = rx.recv().await {
            let (chunk, _permit) = joined(job.await, "hashing")?;
            self.run.progress.advance(chunk.size);
            up.push(chunk).await?;
        }
        // The reader ended: completely, or with an error that must not
        // become a finished file.
        let ended = joined(reader.await, "reader")?;
        report.bytes_read += read.load(Ordering::Relaxed);
        if wants_bitmap && !bitmap_read.load(Ordering::Relaxed) {
            let why = format!(
                "the export's bitmap {} could not be read",
                report.bitmap.take().unwrap_or_default()
            );
            tracing::warn!("{}: read everything: {why}", self.spec.name);
            report.bitmap_refused = Some(why);
        }
        ended
    }
}

/// What the reader thread of one image needs.
struct ReadPlan {
    src: Source,
    chunk_size: u32,
    buffers: Arc<Semaphore>,
    encoder: Encoder,
    /// The base's digests, when a dirty bitmap chooses what is read.
    reuse: Option<Vec<Digest>>,
    /// Set when the bitmap could be read and chose what was read.
    bitmap_read: Arc<AtomicBool>,
}

/// Reads `src` in order, one chunk at a time, and starts preparing each
/// on the blocking pool (holes are zero chunks, never read; with a dirty
/// bitmap, unwritten chunks are the base's). Counts the bytes read in
/// `read`. Runs on a blocking thread.
fn read_chunks(
    plan: ReadPlan,
    tx: mpsc::Sender<Job>,
    rt: tokio::runtime::Handle,
    read: &AtomicU64,
) -> Result<()> {
    let ReadPlan {
        src,
        chunk_size,
        buffers,
        encoder,
        reuse,
        bitmap_read,
    } = plan;
    src.advise_sequential();
    // Exports: what is zero, and what the bitmap says is unwritten, for
    // every chunk at once.
    let zero = src.zero_chunks(chunk_size);
    let clean = reuse.as_ref().and_then(|_| src.clean_chunks(chunk_size));
    bitmap_read.store(clean.is_some(), Ordering::Relaxed);
    let count = chunk_count(src.size, chunk_size);
    for index in 0..count {
        let offset = index * chunk_size as u64;
        let len = (src.size - offset).min(chunk_size as u64) as usize;
        let Ok(permit) = rt.block_on(buffers.clone().acquire_owned()) else {
            return Ok(());
        };
        let encoder = encoder.clone();
        let i = index as usize;
        let unwritten = reuse
            .as_ref()
            .and_then(|base| base.get(i))
            .filter(|_| clean.as_ref().is_some_and(|c| c[i]));
        let zeros = zero.as_ref().is_some_and(|z| z[i]) || src.is_hole(offset, len as u64);
        let job = if let Some(&digest) = unwritten {
            // Unwritten since the base: the base's chunk, not read.
            rt.spawn_blocking(move || {
                let chunk = Prepared {
                    digest,
                    size: len as u64,
                    upload: None,
                    zero: false,
                };
                (chunk, permit)
            })
        } else if zeros {
            rt.spawn_blocking(move || (encoder.zero(Kind::Chunk, len), permit))
        } else {
            let buf = src.read_at(offset, len)?;
            read.fetch_add(len as u64, Ordering::Relaxed);
            rt.spawn_blocking(move || {
                let chunk = if is_zero(&buf) {
                    encoder.zero(Kind::Chunk, len)
                } else {
                    encoder.prepare(Kind::Chunk, Bytes::from(buf))
                };
                (chunk, permit)
            })
        };
        if tx.blocking_send(job).is_err() {
            // The stream task gave up; its error is what matters.
            return Ok(());
        }
    }
    Ok(())
}
