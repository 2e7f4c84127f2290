//! The one upload path of a backup, for images (fixed index) and tree
//! streams (dynamic index) alike.
//!
//! - [`Encoder`] runs on the blocking pool, one chunk at a time: the
//!   chunk's digest (keyed when encrypting), and, unless the server
//!   already holds it, its encoding (compressed, encrypted) as a chunk
//!   file's bytes.
//! - [`FileUpload`] owns one file's stream: it uploads what the server
//!   lacks (the [`KnownChunks`] rule), keeps a window of unanswered
//!   uploads, batches the index entries, and hashes them as the server
//!   will (the index checksum that the manifest seal covers).

use std::sync::Arc;

use bytes::Bytes;
use hoard_codec::{ChunkCodec, Kind};
use hoard_protocol::consts::{HEADER_SIZE, MAX_ENTRIES_PER_PACKET, MAX_PACKET_SIZE};
use hoard_protocol::{
    CreateBackup, DynamicEntry, DynamicEntryList, FixedEntry, FixedEntryList, Message,
};
use hoard_types::{Digest, SourceAttributes};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::conn::{Connection, Stream, unexpected};
use crate::error::{Error, Result};
use crate::known::KnownChunks;

/// Uploads sent on one stream whose Ok has not arrived yet.
const UPLOAD_WINDOW: usize = 16;
/// Largest chunk an UploadChunk packet (header, digest) carries; the
/// command line's chunk sizes (8 MiB at most) stay far below it.
const MAX_UPLOAD: usize = MAX_PACKET_SIZE as usize - HEADER_SIZE - 32;
/// Index entries per BackupData packet (40 bytes each).
const ENTRY_BATCH: usize = 4096;
const _: () = assert!(ENTRY_BATCH <= MAX_ENTRIES_PER_PACKET);

/// A chunk ready for its stream: digest and plain size, and what to
/// upload if the server lacked it when it was prepared.
pub(crate) struct Prepared {
    pub digest: Digest,
    pub size: u64,
    /// `None`: the server holds the chunk.
    pub upload: Option<Bytes>,
    /// The chunk is all zeros.
    pub zero: bool,
}

/// What a worker needs to prepare chunks: the session's codec, whether
/// the server takes encoded chunks, and the run's known chunks.
#[derive(Clone)]
pub(crate) struct Encoder {
    codec: Arc<ChunkCodec>,
    encoded: bool,
    known: KnownChunks,
}

impl Encoder {
    pub(crate) fn new(conn: &Connection, known: KnownChunks) -> Encoder {
        Encoder {
            codec: conn.codec().clone(),
            encoded: conn.encoded(),
            known,
        }
    }

    /// The key chunks are encrypted with, if any.
    pub(crate) fn key(&self) -> Option<&Arc<hoard_codec::Key>> {
        self.codec.key()
    }

    /// Digest and, if the server lacks the chunk, its upload. Blocking.
    pub(crate) fn prepare(&self, kind: Kind, data: Bytes) -> Prepared {
        let digest = self.codec.digest(kind, &data);
        let size = data.len() as u64;
        let upload = (!self.known.contains(&digest)).then(|| self.encode(kind, data));
        Prepared {
            digest,
            size,
            upload,
            zero: false,
        }
    }

    /// An all-zero chunk of `len` bytes, read or not (a hole). The zeros
    /// are made and encoded only if the server lacks them.
    pub(crate) fn zero(&self, kind: Kind, len: usize) -> Prepared {
        let digest = self.codec.zero_digest(kind, len);
        let upload =
            (!self.known.contains(&digest)).then(|| self.encode(kind, Bytes::from(vec![0u8; len])));
        Prepared {
            digest,
            size: len as u64,
            upload,
            zero: true,
        }
    }

    fn encode(&self, kind: Kind, data: Bytes) -> Bytes {
        if self.encoded {
            let mut blob = self.codec.encode(kind, &data);
            // The buffer was sized for the plain data; a chunk that
            // compressed well waits in the upload window at its own size.
            if blob.len() < blob.capacity() / 2 {
                blob.shrink_to_fit();
            }
            Bytes::from(blob)
        } else {
            // A server without encoded chunks takes the plain data (and
            // compresses it itself); never with a key (Connection::set_codec).
            data
        }
    }
}

/// What one uploaded file consisted of.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamReport {
    pub size: u64,
    pub chunks: u64,
    pub chunks_uploaded: u64,
    /// Plain bytes of the uploaded chunks.
    pub bytes_uploaded: u64,
    /// Bytes sent for them: compressed and encrypted as stored.
    pub bytes_sent: u64,
    /// Chunks the server had already (spliced, from the base, or sent
    /// earlier in this run).
    pub chunks_reused: u64,
    /// All-zero chunks (counted in uploaded or reused as well).
    pub chunks_zero: u64,
}

/// One file's index as the server builds it: which kind, and the
/// running checksum of its entry region (docs/format.md, "Index files").
enum Entries {
    Fixed(Vec<FixedEntry>),
    Dynamic(Vec<DynamicEntry>),
}

/// A finished file: its report and index checksum.
pub(crate) struct Finished {
    pub report: StreamReport,
    pub csum: [u8; 32],
}

/// One file of a snapshot being written on its own stream.
pub(crate) struct FileUpload {
    stream: Stream,
    what: String,
    entries: Entries,
    csum: Sha256,
    in_flight: usize,
    known: KnownChunks,
    pub report: StreamReport,
}

impl FileUpload {
    /// Opens the file described by `req` on a new stream.
    pub(crate) async fn create(
        conn: &Connection,
        req: CreateBackup,
        known: KnownChunks,
    ) -> Result<FileUpload> {
        let what = format!("the backup of {}", req.name);
        let entries = if req.flags.dynamic() {
            Entries::Dynamic(Vec::with_capacity(ENTRY_BATCH))
        } else {
            Entries::Fixed(Vec::with_capacity(ENTRY_BATCH))
        };
        let mut stream = conn.open_stream(UPLOAD_WINDOW + 8)?;
        stream.send(Message::CreateBackup(req)).await?;
        match stream.recv(&what).await? {
            Message::BackupCreated { .. } => {}
            other => return Err(unexpected(&what, &other)),
        }
        Ok(FileUpload {
            stream,
            what,
            entries,
            csum: Sha256::new(),
            in_flight: 0,
            known,
            report: StreamReport::default(),
        })
    }

    /// Records what the source looked like (extension FileAttributes).
    pub(crate) async fn attributes(&self, attrs: SourceAttributes) -> Result<()> {
        self.stream.send(Message::FileAttributes(attrs)).await
    }

    /// Appends a prepared chunk, uploading it unless the server holds it
    /// by now.
    pub(crate) async fn push(&mut self, chunk: Prepared) -> Result<()> {
        if chunk.zero {
            self.report.chunks_zero += 1;
        }
        match chunk.upload {
            Some(data) if !self.known.contains(&chunk.digest) => {
                let sent = data.len() as u64;
                if data.len() > MAX_UPLOAD {
                    return Err(Error::Usage(format!(
                        "a chunk of {} bytes encodes to {sent}, more than an UploadChunk packet carries",
                        chunk.size
                    )));
                }
                self.stream
                    .send(Message::UploadChunk {
                        digest: chunk.digest,
                        data,
                    })
                    .await?;
                self.known.queued(chunk.digest);
                self.report.chunks_uploaded += 1;
                self.report.bytes_uploaded += chunk.size;
                self.report.bytes_sent += sent;
                self.in_flight += 1;
            }
            _ => self.report.chunks_reused += 1,
        }
        self.entry(chunk.digest, chunk.size).await?;
        // Oks (and an Error, should one come) are taken as they arrive,
        // so the stream's queue never fills.
        while let Some(m) = self.stream.try_recv(&self.what) {
            expect_ok(m?, &self.what)?;
            self.in_flight -= 1;
        }
        while self.in_flight >= UPLOAD_WINDOW {
            self.stream.recv_ok(&self.what).await?;
            self.in_flight -= 1;
        }
        Ok(())
    }

    /// Appends a chunk the server holds (spliced from a base).
    pub(crate) async fn push_known(&mut self, digest: Digest, size: u64) -> Result<()> {
        self.report.chunks_reused += 1;
        self.entry(digest, size).await?;
        // Nothing is answered before BackupFinished but an Error, which
        // ends the file: taken at once, it never piles up.
        if let Some(m) = self.stream.try_recv(&self.what) {
            match m? {
                Message::Ok if self.in_flight > 0 => self.in_flight -= 1,
                other => return Err(unexpected(&self.what, &other)),
            }
        }
        Ok(())
    }

    async fn entry(&mut self, digest: Digest, size: u64) -> Result<()> {
        let full = match &mut self.entries {
            Entries::Fixed(list) => {
                self.csum.update(digest.as_bytes());
                list.push(FixedEntry {
                    index: self.report.chunks,
                    digest,
                });
                list.len() == ENTRY_BATCH
            }
            Entries::Dynamic(list) => {
                let end = self.report.size + size;
                self.csum.update(end.to_le_bytes());
                self.csum.update(digest.as_bytes());
                list.push(DynamicEntry {
                    offset: self.report.size,
                    digest,
                });
                list.len() == ENTRY_BATCH
            }
        };
        self.report.size += size;
        self.report.chunks += 1;
        if full {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let msg = match &mut self.entries {
            Entries::Fixed(list) if !list.is_empty() => {
                let m = Message::BackupDataFixed(FixedEntryList::from_entries(&*list));
                list.clear();
                m
            }
            Entries::Dynamic(list) if !list.is_empty() => {
                let m = Message::BackupDataDynamic(DynamicEntryList::from_entries(&*list));
                list.clear();
                m
            }
            _ => return Ok(()),
        };
        self.stream.send(msg).await
    }

    /// Sends the last entries and BackupFinished, and waits for every
    /// answer: the file is complete on the server when this returns.
    pub(crate) async fn finish(mut self) -> Result<Finished> {
        self.flush().await?;
        self.stream.send(Message::BackupFinished).await?;
        for _ in 0..=self.in_flight {
            self.stream.recv_ok(&self.what).await?;
        }
        self.stream.finish();
        Ok(Finished {
            report: self.report,
            csum: self.csum.finalize().into(),
        })
    }

    pub(crate) fn what(&self) -> &str {
        &self.what
    }
}

fn expect_ok(m: Message, what: &str) -> Result<()> {
    match m {
        Message::Ok => Ok(()),
        other => Err(unexpected(what, &other)),
    }
}

/// A task's panic or cancellation as an error.
pub(crate) fn joined<T>(
    r: std::result::Result<T, tokio::task::JoinError>,
    what: &str,
) -> Result<T> {
    r.map_err(|e| Error::Protocol(format!("{what} task failed: {e}")))
}
