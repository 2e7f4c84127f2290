//! One dynamic-index file written as a stream: the producer side
//! ([`ChunkFeed`], on the thread that makes the bytes) cuts it with the
//! content-defined chunker and starts hashing each chunk on the blocking
//! pool; the consumer side ([`upload_stream`], a task) takes the chunks in
//! order, uploads those the server lacks and sends the index entries.
//!
//! A feed can also splice in a whole chunk of an earlier snapshot by its
//! digest ([`ChunkFeed::splice`]): the chunker restarts after it, so new
//! data is cut as if the stream began there.

use std::sync::Arc;

use bytes::BytesMut;
use hoard_chunker::{Chunker, Gear, Params};
use hoard_codec::Kind;
use hoard_protocol::{BackupFlags, CreateBackup};
use hoard_types::{Digest, FileName, SnapshotPath};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::conn::Connection;
use crate::error::{Error, Result};
use crate::known::KnownChunks;
use crate::upload::{Encoder, FileUpload, Prepared, StreamReport, joined};

/// Pieces queued between a feed and its uploader.
const PIECE_QUEUE: usize = 64;

/// What a feed hands its uploader, in stream order.
pub(crate) enum Piece {
    /// New data, being hashed.
    New(JoinHandle<(Prepared, OwnedSemaphorePermit)>),
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
    encoder: Encoder,
    kind: Kind,
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
        encoder: Encoder,
        kind: Kind,
    ) -> ChunkFeed {
        // An encrypted backup cuts where its key says (hoard_chunker).
        let chunker = match encoder.key() {
            Some(key) => Chunker::with_gear(params, Gear::from_table(key.chunker_gear())),
            None => Chunker::new(params),
        };
        ChunkFeed {
            chunker,
            pending: BytesMut::with_capacity(params.max),
            offset: 0,
            tx,
            rt,
            buffers,
            encoder,
            kind,
        }
    }

    /// Bytes written since the last cut.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
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
        let (encoder, kind) = (self.encoder.clone(), self.kind);
        let job = self
            .rt
            .spawn_blocking(move || (encoder.prepare(kind, data), permit));
        self.tx
            .blocking_send(Piece::New(job))
            .map_err(|_| FeedClosed)
    }
}

/// The channel between a feed and its uploader.
pub(crate) fn channel() -> (mpsc::Sender<Piece>, mpsc::Receiver<Piece>) {
    mpsc::channel(PIECE_QUEUE)
}

/// Opens file `name` of `snapshot` as a dynamic index on a new stream.
pub(crate) async fn create_dynamic(
    conn: &Connection,
    snapshot: &SnapshotPath,
    name: &FileName,
    avg: u32,
    known: KnownChunks,
) -> Result<FileUpload> {
    let req = CreateBackup {
        backup_type: snapshot.group.ty,
        id: snapshot.group.id.clone(),
        time: snapshot.time,
        // EXCL: a run never adds to a snapshot that existed before it.
        flags: BackupFlags(BackupFlags::EXCL | BackupFlags::DYNAMIC_CHUNKS),
        name: name.clone(),
        chunk_size: avg,
        file_size: 0,
    };
    FileUpload::create(conn, req, known).await
}

/// Consumes the pieces of one stream into its upload, and finishes the
/// file when the feed is done.
pub(crate) async fn upload_stream(
    mut up: FileUpload,
    mut rx: mpsc::Receiver<Piece>,
) -> Result<(StreamReport, [u8; 32])> {
    let mut ended = false;
    while let Some(piece) = rx.recv().await {
        match piece {
            Piece::End => {
                ended = true;
                break;
            }
            Piece::Known { digest, size } => up.push_known(digest, size).await?,
            Piece::New(job) => {
                let (chunk, _permit) = joined(job.await, "hashing")?;
                up.push(chunk).await?;
            }
        }
    }
    if !ended {
        // Dropped unfinished: the server discards the file.
        return Err(Error::Abandoned(format!(
            "{} stopped before its end",
            up.what()
        )));
    }
    let done = up.finish().await?;
    Ok((done.report, done.csum))
}
