//! Image restore: a fixed-index file back to a file, a block device or
//! standard output; and any dynamic-index file (a stream a version 1
//! client uploaded, one stream of an archive) back as its bytes.
//!
//! The digests come from GetHashList; all-zero chunks are never
//! downloaded (a file target gets a hole, other targets zeros). The other
//! chunks are requested in one DownloadChunks per 524,287 digests, so the
//! server streams them back to back; each is checked against its digest
//! on the blocking pool, in parallel, and a writer thread puts them in
//! place in order. A file target is written under a temporary name and
//! renamed when complete, so a failed restore leaves no partial file.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hoard_datastore::{FileKind, ManifestFile};
use hoard_protocol::consts::MAX_DIGESTS_PER_PACKET;
use hoard_protocol::{DigestList, Message};
use hoard_types::Digest;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::conn::{Connection, unexpected};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::remote::ChunkDecoder;
use crate::requests::{Listed, display_name, hash_list};
use hoard_codec::Kind;
use hoard_types::zero::nonzero_runs;

/// Chunk packets that may queue on the download stream.
const DOWNLOAD_DEPTH: usize = 4;

#[derive(Debug, Clone)]
pub enum Target {
    Stdout,
    Path(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => f.write_str("-"),
            Target::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub snapshot: String,
    pub file: String,
    pub target: String,
    pub size: u64,
    pub chunks: u64,
    pub chunks_downloaded: u64,
    pub bytes_downloaded: u64,
    pub chunks_zero: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Replace an existing target file.
    pub overwrite: bool,
    /// Chunks being checked or waiting to be written, at most.
    pub buffers: usize,
}

/// Restores `file` of `snap` to `target`.
pub async fn restore_image(
    conn: &Connection,
    snap: &Listed,
    file: &ManifestFile,
    target: &Target,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let snapshot = &snap.path;
    let decoder = ChunkDecoder::for_snapshot(conn, snap)?;
    let name = display_name(file).to_string();
    let chunk_size = match (file.kind, file.chunk_size) {
        (FileKind::Fixed, Some(cs)) if cs > 0 && cs as usize <= hoard_types::MAX_CHUNK_SIZE => {
            cs as u64
        }
        _ => {
            return Err(Error::Usage(format!(
                "{snapshot}/{name} is not a disk image (no fixed chunk size); it restores as a stream"
            )));
        }
    };
    let size = file.file_size;
    let output = Output::open(target, size, opts.overwrite)?;
    progress.add_total(size);
    let index_path = format!("{snapshot}/{}", file.name);
    let digests = hash_list(conn, &index_path, file).await?;
    let mut report = RestoreReport {
        snapshot: snapshot.to_string(),
        file: name,
        target: target.to_string(),
        size,
        chunks: digests.len() as u64,
        chunks_downloaded: 0,
        bytes_downloaded: 0,
        chunks_zero: 0,
        seconds: 0.0,
    };
    if digests.len() as u64 != size.div_ceil(chunk_size) {
        return Err(Error::Damaged(format!(
            "{index_path} lists {} chunks, its size calls for {}",
            digests.len(),
            size.div_ceil(chunk_size)
        )));
    }
    let (tx, writer) = spawn_writer(output, opts, size, chunk_size, progress);
    let image = Image {
        digests: &digests,
        size,
        chunk_size,
        path: &index_path,
    };
    let fetched = fetch(conn, &decoder, &image, tx, &mut report).await;
    settle(fetched, writer).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Restores a dynamic-index `file` of `snapshot` as its bytes: its chunk
/// map from GetIndex, the chunks in order, each checked against its
/// digest on the blocking pool, written by the same writer as images.
pub async fn restore_stream(
    conn: &Connection,
    snap: &Listed,
    file: &ManifestFile,
    target: &Target,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let snapshot = &snap.path;
    let decoder = ChunkDecoder::for_snapshot(conn, snap)?;
    let index_path = format!("{snapshot}/{}", file.name);
    let map = crate::remote::chunk_map(conn, &index_path, file).await?;
    let size = map.size();
    if size != file.file_size {
        return Err(Error::Damaged(format!(
            "{index_path} covers {size} bytes, the manifest says {}",
            file.file_size
        )));
    }
    let output = Output::open(target, size, opts.overwrite)?;
    progress.add_total(size);
    let mut report = RestoreReport {
        snapshot: snapshot.to_string(),
        file: display_name(file).to_string(),
        target: target.to_string(),
        size,
        chunks: map.digests.len() as u64,
        chunks_downloaded: map.digests.len() as u64,
        bytes_downloaded: size,
        chunks_zero: 0,
        seconds: 0.0,
    };
    let (tx, writer) = spawn_writer(output, opts, size, 0, progress);
    let wanted: Vec<(Digest, u64)> = (0..map.digests.len())
        .map(|i| (map.digests[i], map.ends[i] - map.start(i)))
        .collect();
    let mut next = 0usize;
    // A tree's metadata stream restored as bytes holds metadata chunks.
    let meta_suffix = format!("{}.didx", crate::tree_backup::META_SUFFIX);
    let kind = if file.name.ends_with(&meta_suffix) {
        Kind::MetaChunk
    } else {
        Kind::Chunk
    };
    let downloaded = crate::remote::download(conn, &index_path, &wanted, |digest, size, data| {
        let offset = map.start(next);
        next += 1;
        let what = index_path.clone();
        let decoder = decoder.clone();
        let checked =
            tokio::task::spawn_blocking(move || decoder.open(kind, &digest, size, data, &what));
        let tx = tx.clone();
        async move {
            tx.send(Item::Data { offset, checked })
                .await
                .map_err(|_| Error::Protocol("restore writer stopped early".into()))
        }
    })
    .await;
    // A download that stopped because the writer went away is explained
    // by the writer's error.
    let fetched = match downloaded {
        Ok(()) => Ok(true),
        Err(_) if tx.is_closed() => Ok(false),
        Err(e) => Err(e),
    };
    drop(tx);
    settle(fetched, writer).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Ok(false): the writer went away (its result says why).
type Fetched = Result<bool>;

/// The writer thread of a restore, fed in file order through the sender.
fn spawn_writer(
    output: Output,
    opts: &RestoreOptions,
    size: u64,
    chunk_size: u64,
    progress: Arc<Progress>,
) -> (mpsc::Sender<Item>, JoinHandle<Result<()>>) {
    let (tx, rx) = mpsc::channel::<Item>(opts.buffers.max(1));
    let rt = tokio::runtime::Handle::current();
    let writer = tokio::task::spawn_blocking(move || {
        write_items(output, rx, rt, size, chunk_size, progress)
    });
    (tx, writer)
}

/// Waits for the writer once fetching ended. A fetch that failed is the
/// cause (the writer then stopped short); a fetch that stopped because
/// the writer went away is explained by the writer's error.
async fn settle(fetched: Fetched, writer: JoinHandle<Result<()>>) -> Result<()> {
    let written = writer
        .await
        .map_err(|e| Error::Protocol(format!("writer task failed: {e}")))?;
    match (fetched, written) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e),
        (Ok(true), Ok(())) => Ok(()),
        (Ok(false), Ok(())) => Err(Error::Protocol("restore writer stopped early".into())),
    }
}

/// What the writer thread gets, in file order.
enum Item {
    Zero {
        offset: u64,
        len: u64,
    },
    Data {
        offset: u64,
        checked: JoinHandle<Result<Bytes>>,
    },
}

/// The fixed index being restored.
struct Image<'a> {
    digests: &'a [Digest],
    size: u64,
    chunk_size: u64,
    /// `SNAPSHOT/NAME.fidx`.
    path: &'a str,
}

async fn fetch(
    conn: &Connection,
    decoder: &ChunkDecoder,
    image: &Image<'_>,
    tx: mpsc::Sender<Item>,
    report: &mut RestoreReport,
) -> Fetched {
    let Image {
        digests,
        size,
        chunk_size,
        path: index_path,
    } = *image;
    let len_of = |i: usize| (size - i as u64 * chunk_size).min(chunk_size);
    // All-zero chunks are never downloaded; their digests (keyed when
    // encrypted) are computed once per length.
    let codec = decoder.codec();
    let zero_full = codec.zero_digest(Kind::Chunk, chunk_size as usize);
    let last = digests.len().saturating_sub(1);
    let zero_last = match len_of(last) as usize {
        0 => zero_full,
        n => codec.zero_digest(Kind::Chunk, n),
    };
    let data_slots: Vec<usize> = (0..digests.len())
        .filter(|&i| digests[i] != if i == last { zero_last } else { zero_full })
        .collect();
    let mut slot = 0usize;
    for batch in data_slots.chunks(MAX_DIGESTS_PER_PACKET) {
        let mut stream = conn.open_stream(DOWNLOAD_DEPTH)?;
        let list = DigestList::from_digests(batch.iter().map(|&i| &digests[i]));
        stream.send(Message::DownloadChunks(list)).await?;
        let what = format!("chunks of {index_path}");
        let mut stream_offset = 0u64;
        for &want in batch {
            // Zero chunks before this one.
            if !zeros_until(&tx, &mut slot, want, chunk_size, &len_of, report).await {
                return Ok(false);
            }
            let (offset, digest, data) = match stream.recv(&what).await? {
                Message::Chunk {
                    offset,
                    digest,
                    data,
                } => (offset, digest, data),
                other => return Err(unexpected(&what, &other)),
            };
            let expected = digests[want];
            let len = len_of(want);
            if digest != expected || offset != stream_offset {
                return Err(Error::Protocol(format!(
                    "the server sent chunk {digest} (at {offset}) for slot {want} of {index_path}, \
                     expected {expected} (at {stream_offset})"
                )));
            }
            stream_offset += data.len() as u64;
            report.chunks_downloaded += 1;
            report.bytes_downloaded += len;
            let what = format!("{index_path} (slot {want})");
            let decoder = decoder.clone();
            let checked = tokio::task::spawn_blocking(move || {
                decoder.open(Kind::Chunk, &expected, len, data, &what)
            });
            let item = Item::Data {
                offset: want as u64 * chunk_size,
                checked,
            };
            if tx.send(item).await.is_err() {
                return Ok(false);
            }
            slot += 1;
        }
        stream.finish();
    }
    Ok(zeros_until(&tx, &mut slot, digests.len(), chunk_size, &len_of, report).await)
}

/// Queues the zero chunks from `*slot` up to `until`; false if the writer
/// went away.
async fn zeros_until(
    tx: &mpsc::Sender<Item>,
    slot: &mut usize,
    until: usize,
    chunk_size: u64,
    len_of: &impl Fn(usize) -> u64,
    report: &mut RestoreReport,
) -> bool {
    while *slot < until {
        report.chunks_zero += 1;
        let item = Item::Zero {
            offset: *slot as u64 * chunk_size,
            len: len_of(*slot),
        };
        if tx.send(item).await.is_err() {
            return false;
        }
        *slot += 1;
    }
    true
}

/// Runs on a blocking thread: writes items in order, then completes the
/// target. Any failure removes a temporary file.
fn write_items(
    mut output: Output,
    mut rx: mpsc::Receiver<Item>,
    rt: tokio::runtime::Handle,
    size: u64,
    chunk_size: u64,
    progress: Arc<Progress>,
) -> Result<()> {
    let mut zeros: Vec<u8> = Vec::new();
    let mut done = 0u64;
    let result = (|| {
        while let Some(item) = rx.blocking_recv() {
            match item {
                Item::Zero { offset, len } => {
                    if !output.sparse() {
                        if zeros.len() < len as usize {
                            zeros = vec![0; chunk_size as usize];
                        }
                        output.write_at(offset, &zeros[..len as usize])?;
                    }
                    done += len;
                    progress.advance(len);
                }
                Item::Data { offset, checked } => {
                    let data = rt
                        .block_on(checked)
                        .map_err(|e| Error::Protocol(format!("check task failed: {e}")))??;
                    output.write_at(offset, &data)?;
                    done += data.len() as u64;
                    progress.advance(data.len() as u64);
                }
            }
        }
        if done != size {
            // The fetch stopped early; its error is reported by the caller.
            return Err(Error::Protocol(format!(
                "restore stopped at byte {done} of {size}"
            )));
        }
        output.finish(size)
    })();
    if result.is_err() {
        rx.close();
    }
    result
}

/// Where restored bytes go.
enum Output {
    Stdout(std::io::Stdout),
    /// A block device, written in place.
    Device {
        file: File,
        path: PathBuf,
    },
    /// A new file under a temporary name, renamed over `dest` at the end.
    File {
        file: File,
        temp: PathBuf,
        dest: PathBuf,
        renamed: bool,
    },
}

impl Output {
    fn open(target: &Target, size: u64, overwrite: bool) -> Result<Output> {
        let path = match target {
            Target::Stdout => return Ok(Output::Stdout(std::io::stdout())),
            Target::Path(p) => p,
        };
        let err = |source| Error::Target {
            path: path.clone(),
            source,
        };
        let invalid = |msg: &str| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                msg.to_string(),
            ))
        };
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_block_device() => {
                let mut file = OpenOptions::new().write(true).open(path).map_err(err)?;
                let dev_size = file.seek(SeekFrom::End(0)).map_err(err)?;
                if dev_size < size {
                    return Err(invalid(&format!(
                        "the device has {dev_size} bytes, the image {size}"
                    )));
                }
                return Ok(Output::Device {
                    file,
                    path: path.clone(),
                });
            }
            Ok(m) if m.is_dir() => return Err(invalid("is a directory")),
            Ok(m) if !m.is_file() => {
                return Err(invalid("is neither a regular file nor a block device"));
            }
            Ok(_) if !overwrite => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists already (--overwrite replaces it)",
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = path
            .file_name()
            .ok_or_else(|| invalid("names no file"))?
            .to_string_lossy()
            .into_owned();
        let temp = dir.join(format!(".{base}.hoard-restore-{}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(err)?;
        Ok(Output::File {
            file,
            temp,
            dest: path.clone(),
            renamed: false,
        })
    }

    /// Zero ranges need no writing: a fresh file reads zeros in holes.
    fn sparse(&self) -> bool {
        matches!(self, Output::File { .. })
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            // Items come in file order, so stdout is written sequentially.
            Output::Stdout(out) => out.lock().write_all(data).map_err(|source| Error::Target {
                path: PathBuf::from("-"),
                source,
            }),
            Output::Device { file, path } => file
                .write_all_at(data, offset)
                .map_err(Error::target_io(path)),
            // The file started empty: zero blocks inside a chunk stay
            // holes too, so the restored image is as sparse as the
            // original (at 4 KiB granularity).
            Output::File { file, dest, .. } => {
                for (start, run) in nonzero_runs(data, SPARSE_BLOCK) {
                    file.write_all_at(run, offset + start as u64)
                        .map_err(Error::target_io(dest))?;
                }
                Ok(())
            }
        }
    }

    fn finish(mut self, size: u64) -> Result<()> {
        match &mut self {
            Output::Stdout(out) => out.lock().flush().map_err(|source| Error::Target {
                path: PathBuf::from("-"),
                source,
            }),
            Output::Device { file, path } => file.sync_all().map_err(Error::target_io(path)),
            Output::File {
                file,
                temp,
                dest,
                renamed,
            } => {
                // Trailing zero chunks are a hole up to the end.
                file.set_len(size).map_err(Error::target_io(dest))?;
                file.sync_all().map_err(Error::target_io(dest))?;
                std::fs::rename(&*temp, &*dest).map_err(Error::target_io(dest))?;
                *renamed = true;
                sync_parent(dest).map_err(Error::target_io(dest))
            }
        }
    }
}

impl Drop for Output {
    /// A temporary file that was not completed never survives.
    fn drop(&mut self) {
        if let Output::File {
            temp,
            renamed: false,
            ..
        } = self
        {
            let _ = std::fs::remove_file(&*temp);
        }
    }
}

/// Granularity of holes in a restored file: the usual file system block.
const SPARSE_BLOCK: usize = 4096;

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
