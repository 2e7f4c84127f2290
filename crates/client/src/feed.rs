//! One dynamic-index file written as a stream: the producer side
//! ([`ChunkFeed`], on the thread that makes the bytes) cuts it with the
//! content-defined chunker and starts hashing each chunk on the blocking
//! pool; the consumer side ([`upload_stream`], a task) takes the chunks in
//! order, uploads those the server lacks and sends the index entries.
//!
//! A feed can also splice in a whole chunk of an earlier snapshot by its
//! digest ([`ChunkFeed::splice`]): the chunker restarts after it, so new
//! data is cut as if the stream began there.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use hoard_chunker::{Chunker, Params};
use hoard_protocol::consts::MAX_ENTRIES_PER_PACKET;
use hoard_protocol::{BackupFlags, CreateBackup, DynamicEntry, DynamicEntryList, Message};
use hoard_types::{Digest, FileName, SnapshotPath};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::conn::{Connection, Stream, unexpected};
use crate::error::{Error, Result};

/// Uploads sent on one stream whose Ok has not arrived yet.
const UPLOAD_WINDOW: usize = 16;
/// Index entries per BackupDataDynamic packet (40 bytes each).
const ENTRY_BATCH: usize = 4096;
const _: () = assert!(ENTRY_BATCH <= MAX_ENTRIES_PER_PACKET);
/// Pieces queued between a feed and its uploader.
const PIECE_QUEUE: usize = 64;

/// What a feed hands its uploader, in stream order.
pub(crate) enum Piece {
    /// New data, being hashed.
    New(JoinHandle<(Digest, Bytes, OwnedSemaphorePermit)>),
    /// A chunk the server holds, spliced in by digest.
    Known { digest: Digest, size: u64 },
    /// The stream is complete: only now may the file be finished. A feed
    /// dropped without it (its producer failed) leaves the file
    /// unfinished, so the snapshot cannot end up complete.
    End,
}

/// The producer side of one stream. Blocking: runs on its own thread.
pub(crate) struct ChunkFeed {
    chunker: Chunker,
    pending: BytesMut,
    /// Bytes fed so far, pending included.
    offset: u64,
    tx: mpsc::Sender<Piece>,
    rt: tokio::runtime::Handle,
    buffers: Arc<Semaphore>,
}

/// The uploader went away; its own result says why.
#[derive(Debug)]
pub(crate) struct FeedClosed;

impl ChunkFeed {
    pub(crate) fn new(
        params: Params,
        tx: mpsc::Sender<Piece>,
        rt: tokio::runtime::Handle,
        buffers: Arc<Semaphore>,
    ) -> ChunkFeed {
        ChunkFeed {
            chunker: Chunker::new(params),
            pending: BytesMut::with_capacity(params.max),
            offset: 0,
            tx,
            rt,
            buffers,
        }
    }

    /// The stream offset the next byte will have.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    pub(crate) fn write(&mut self, mut data: &[u8]) -> Result<(), FeedClosed> {
        self.offset += data.len() as u64;
        while let Some(n) = self.chunker.next_cut(data) {
            self.pending.extend_from_slice(&data[..n]);
            self.emit()?;
            data = &data[n..];
        }
        self.pending.extend_from_slice(data);
        Ok(())
    }

    /// Appends a chunk of `size` bytes the server holds. What was pending
    /// becomes a chunk of its own first.
    pub(crate) fn splice(&mut self, digest: Digest, size: u64) -> Result<(), FeedClosed> {
        self.cut()?;
        self.offset += size;
        self.tx
            .blocking_send(Piece::Known { digest, size })
            .map_err(|_| FeedClosed)
    }

    /// Ends the current chunk here (if any bytes are pending).
    pub(crate) fn cut(&mut self) -> Result<(), FeedClosed> {
        if !self.pending.is_empty() {
            self.emit()?;
        }
        self.chunker.reset();
        Ok(())
    }

    /// Flushes the last chunk and tells the uploader to finish the file.
    pub(crate) fn finish(mut self) -> Result<(), FeedClosed> {
        self.cut()?;
        self.tx.blocking_send(Piece::End).map_err(|_| FeedClosed)
    }

    fn emit(&mut self) -> Result<(), FeedClosed> {
        let data = self.pending.split().freeze();
        self.pending.reserve(self.chunker.params().max);
        let permit = self
            .rt
            .block_on(self.buffers.clone().acquire_owned())
            .map_err(|_| FeedClosed)?;
        let job = self.rt.spawn_blocking(move || {
            let digest = Digest::of(&data);
            (digest, data, permit)
        });
        self.tx
            .blocking_send(Piece::New(job))
            .map_err(|_| FeedClosed)
    }
}

/// The channel between a feed and its uploader.
pub(crate) fn channel() -> (mpsc::Sender<Piece>, mpsc::Receiver<Piece>) {
    mpsc::channel(PIECE_QUEUE)
}

/// What one uploaded stream consisted of.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamReport {
    pub size: u64,
    pub chunks: u64,
    pub chunks_uploaded: u64,
    pub bytes_uploaded: u64,
    /// Chunks the server had already (spliced, from the base, or sent
    /// earlier in this run).
    pub chunks_reused: u64,
}

/// Opens file `name` of `snapshot` as a dynamic index on a new stream.
pub(crate) async fn create_dynamic(
    conn: &Connection,
    snapshot: &SnapshotPath,
    name: &FileName,
    avg: u32,
) -> Result<Stream> {
    let mut stream = conn.open_stream(UPLOAD_WINDOW + 8)?;
    let what = format!("the backup of {name}");
    stream
        .send(Message::CreateBackup(CreateBackup {
            backup_type: snapshot.group.ty,
            id: snapshot.group.id.clone(),
            time: snapshot.time,
            // EXCL: a run never adds to a snapshot that existed before it.
            flags: BackupFlags(BackupFlags::EXCL | BackupFlags::DYNAMIC_CHUNKS),
            name: name.clone(),
            chunk_size: avg,
            file_size: 0,
        }))
        .await?;
    match stream.recv(&what).await? {
        Message::BackupCreated { .. } => Ok(stream),
        other => Err(unexpected(&what, &other)),
    }
}

/// Consumes the pieces of one stream: uploads new chunks the server
/// lacks (`known` is shared by all streams of the run), sends the index
/// entries, and finishes the file when the feed is done.
pub(crate) async fn upload_stream(
    mut stream: Stream,
    what: String,
    mut rx: mpsc::Receiver<Piece>,
    known: Arc<Mutex<HashSet<Digest>>>,
) -> Result<StreamReport> {
    let mut report = StreamReport::default();
    let mut entries: Vec<DynamicEntry> = Vec::with_capacity(ENTRY_BATCH);
    let mut in_flight = 0usize;
    let mut ended = false;
    while let Some(piece) = rx.recv().await {
        let (digest, size) = match piece {
            Piece::End => {
                ended = true;
                break;
            }
            Piece::Known { digest, size } => {
                report.chunks_reused += 1;
                (digest, size)
            }
            Piece::New(job) => {
                let (digest, data, _permit) = job
                    .await
                    .map_err(|e| Error::Protocol(format!("hashing task failed: {e}")))?;
                let size = data.len() as u64;
                // Inserted before the upload is queued: any later
                // reference, on any stream, reaches the server after it.
                let fresh = known.lock().expect("lock poisoned").insert(digest);
                if fresh {
                    stream.send(Message::UploadChunk { digest, data }).await?;
                    report.chunks_uploaded += 1;
                    report.bytes_uploaded += size;
                    in_flight += 1;
                } else {
                    report.chunks_reused += 1;
                }
                (digest, size)
            }
        };
        entries.push(DynamicEntry {
            offset: report.size,
            digest,
        });
        report.size += size;
        report.chunks += 1;
        if entries.len() == ENTRY_BATCH {
            send_entries(&stream, &entries).await?;
            entries.clear();
        }
        // Oks (and an Error, should one come) are taken as they arrive,
        // so the stream's queue never fills.
        while let Some(m) = stream.try_recv(&what) {
            expect_ok(m?, &what)?;
            in_flight -= 1;
        }
        while in_flight >= UPLOAD_WINDOW {
            stream.recv_ok(&what).await?;
            in_flight -= 1;
        }
    }
    if !ended {
        // Dropped unfinished: the server discards the file.
        return Err(Error::Protocol(format!(
            "{what} stopped before its end (see the cause above)"
        )));
    }
    if !entries.is_empty() {
        send_entries(&stream, &entries).await?;
    }
    stream.send(Message::BackupFinished).await?;
    for _ in 0..=in_flight {
        stream.recv_ok(&what).await?;
    }
    stream.finish();
    Ok(report)
}

fn expect_ok(m: Message, what: &str) -> Result<()> {
    match m {
        Message::Ok => Ok(()),
        other => Err(unexpected(what, &other)),
    }
}

async fn send_entries(stream: &Stream, entries: &[DynamicEntry]) -> Result<()> {
    stream
        .send(Message::BackupDataDynamic(DynamicEntryList::from_entries(
            entries,
        )))
        .await
}
