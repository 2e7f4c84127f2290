//! One client connection: its streams, its snapshots, its uploads in
//! flight, and the loop that reads packets and dispatches them to
//! [`crate::handlers`].
//!
//! Rules kept here (see docs/protocol.md):
//! - An Error on a stream id cancels whatever that stream was doing.
//! - A packet that references a chunk whose upload on this connection is
//!   still in flight waits for that upload, so a client may pipeline
//!   UploadChunk and BackupData without waiting for each Ok.
//! - When the connection ends, unfinished files are dropped (nothing
//!   visible) and its snapshots are closed: complete if every file started
//!   was finished, incomplete otherwise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hoard_datastore::{
    Datastore, FileWriter, FsTime, Inserted, SnapshotPin, SnapshotWriter, WriterRegistration,
};
use hoard_protocol::{ErrorId, Header, Message, PacketType, Sender};
use hoard_types::{Digest, SnapshotPath};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tracing::{debug, info, warn};

use crate::ServerConfig;
use crate::handlers::ListKind;
use hoard_transport::{FrameReader, OUTBOX_DEPTH, Outbox, ReadError, writer};

/// The client went away; nothing more can be sent.
#[derive(Debug)]
pub(crate) struct Closed;

pub(crate) type Flow = Result<(), Closed>;

/// What a stream id is busy with.
pub(crate) enum Stream {
    /// CreateBackup … BackupFinished.
    Backup(Box<BackupStream>),
    /// A GetHashList or DownloadChunks answered by a task. `done` is set by
    /// the task before it sends its last packet, so the client may reuse
    /// the stream id as soon as it has read that packet.
    Task {
        hash_list: bool,
        done: Arc<AtomicBool>,
        abort: AbortHandle,
    },
}

pub(crate) struct BackupStream {
    pub snapshot: SnapshotPath,
    pub file: FileWriter,
}

pub(crate) struct UploadDone {
    pub stream: u8,
    pub digest: Digest,
    pub result: hoard_datastore::Result<Inserted>,
}

pub(crate) struct Connection {
    pub ds: Datastore,
    pub out: Outbox,
    pub peer: SocketAddr,
    pub permits: Arc<Semaphore>,
    pub config: Arc<ServerConfig>,
    pub streams: HashMap<u8, Stream>,
    pub snapshots: HashMap<SnapshotPath, SnapshotWriter>,
    pub uploads: JoinSet<UploadDone>,
    /// Digests with an upload in flight on this connection, and how many.
    pub pending: HashMap<Digest, usize>,
    /// Taken at the first upload or CreateBackup; GC keeps every chunk
    /// this connection stamps while it lives (docs/maintenance.md).
    pub registration: Option<WriterRegistration>,
    /// Snapshots whose hash list this connection read (the base of its
    /// backup, the snapshot it restores): prune leaves them alone until
    /// the connection ends.
    pub pins: HashMap<SnapshotPath, SnapshotPin>,
}

pub(crate) async fn run(
    sock: TcpStream,
    peer: SocketAddr,
    ds: Datastore,
    permits: Arc<Semaphore>,
    config: Arc<ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    debug!(%peer, "connected");
    let (read_half, write_half) = sock.into_split();
    let (tx, rx) = mpsc::channel(OUTBOX_DEPTH);
    let writer = tokio::spawn(writer::run(write_half, rx));
    let mut conn = Connection {
        ds,
        out: tx,
        peer,
        permits,
        config,
        streams: HashMap::new(),
        snapshots: HashMap::new(),
        uploads: JoinSet::new(),
        pending: HashMap::new(),
        registration: None,
        pins: HashMap::new(),
    };
    let mut reader = FrameReader::new(tokio::io::BufReader::with_capacity(64 * 1024, read_half));
    let hello = Message::Hello {
        version: hoard_protocol::consts::PROTOCOL_VERSION,
    };
    if conn
        .send(hoard_protocol::consts::HELLO_STREAM, hello)
        .await
        .is_ok()
    {
        conn.serve(&mut reader, &mut stop).await;
    }
    conn.finish().await;
    // The writer ends when the last sender is gone.
    drop(conn);
    match writer.await {
        Ok(Ok(())) | Ok(Err(_)) => {}
        Err(e) => warn!(%peer, "writer task failed: {e}"),
    }
    debug!(%peer, "disconnected");
}

impl Connection {
    async fn serve<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        stop: &mut watch::Receiver<bool>,
    ) {
        loop {
            let may_read = self.uploads.len() < self.config.max_uploads_per_connection;
            let flow = tokio::select! {
                biased;
                _ = stop.changed() => return,
                Some(done) = self.uploads.join_next(), if !self.uploads.is_empty() => {
                    self.upload_done(done).await
                }
                frame = reader.next(), if may_read => match frame {
                    Ok(Some((header, payload))) => self.dispatch(header, payload).await,
                    Ok(None) => return,
                    Err(ReadError::Frame { stream, err }) => {
                        info!(peer = %self.peer, "framing error, closing: {err}");
                        let _ = self.send_error(stream, ErrorId::Generic, err.to_string()).await;
                        return;
                    }
                    Err(e) => {
                        debug!(peer = %self.peer, "read failed: {e}");
                        return;
                    }
                },
            };
            if flow.is_err() {
                return;
            }
        }
    }

    async fn dispatch(&mut self, header: Header, payload: Bytes) -> Flow {
        let stream = header.stream;
        let Some(ty) = header.packet_type() else {
            return self
                .fail(stream, format!("unknown packet type {}", header.type_byte))
                .await;
        };
        if ty.sender() == Sender::Server {
            return self
                .fail(
                    stream,
                    format!(
                        "packet type {ty:?} ({}) is sent by the server only",
                        ty.as_u8()
                    ),
                )
                .await;
        }
        let msg = match Message::decode(&header, payload) {
            Ok(m) => m,
            Err(e) => return self.fail(stream, e.to_string()).await,
        };
        // A request that occupies its stream id needs a free one; the
        // Error also cancels what the stream was doing (docs/protocol.md).
        let occupies = matches!(
            msg,
            Message::CreateBackup(_)
                | Message::GetHashList { .. }
                | Message::GetIndex { .. }
                | Message::DownloadChunks(_)
                | Message::ListSnapshots(_)
        );
        if occupies && self.stream_busy(stream) {
            return self
                .fail(stream, format!("stream {stream} is in use"))
                .await;
        }
        match msg {
            Message::UploadChunk { digest, data } => self.upload(stream, digest, data).await,
            Message::CreateBackup(req) => self.create_backup(stream, req).await,
            Message::BackupDataFixed(list) => self.backup_data_fixed(stream, list).await,
            Message::BackupDataDynamic(list) => self.backup_data_dynamic(stream, list).await,
            Message::BackupFinished => self.backup_finished(stream).await,
            Message::GetHashList { path } => {
                self.get_hash_list(stream, path, ListKind::Digests).await
            }
            Message::GetIndex { path } => self.get_hash_list(stream, path, ListKind::Entries).await,
            Message::DownloadChunks(list) => self.download_chunks(stream, list).await,
            Message::ListSnapshots(filter) => self.list_snapshots(stream, filter).await,
            Message::FileAttributes(attrs) => self.file_attributes(stream, attrs).await,
            other => {
                debug_assert!(other.packet_type().sender() == Sender::Server);
                self.fail(
                    stream,
                    format!("unexpected {:?}", PacketType::from_u8(header.type_byte)),
                )
                .await
            }
        }
    }

    pub async fn send(&self, stream: u8, msg: Message) -> Flow {
        self.out.send((stream, msg)).await.map_err(|_| Closed)
    }

    pub async fn send_error(&self, stream: u8, id: ErrorId, message: String) -> Flow {
        self.send(stream, Message::Error { id, message }).await
    }

    /// Answers Error on `stream` and cancels what the stream was doing.
    pub async fn fail(&mut self, stream: u8, message: String) -> Flow {
        self.fail_with(stream, ErrorId::Generic, message).await
    }

    pub async fn fail_with(&mut self, stream: u8, id: ErrorId, message: String) -> Flow {
        debug!(peer = %self.peer, stream, "error: {message}");
        self.cancel(stream);
        self.send_error(stream, id, message).await
    }

    /// Drops whatever `stream` was doing; an unfinished file leaves nothing.
    pub fn cancel(&mut self, stream: u8) {
        match self.streams.remove(&stream) {
            Some(Stream::Backup(b)) => {
                if let Some(w) = self.snapshots.get_mut(&b.snapshot) {
                    w.abandon(b.file.stored_name());
                }
            }
            Some(Stream::Task { abort, .. }) => abort.abort(),
            None => {}
        }
    }

    /// Whether `stream` is busy; forgets tasks that have finished.
    pub fn stream_busy(&mut self, stream: u8) -> bool {
        match self.streams.get(&stream) {
            Some(Stream::Task { done, .. }) if done.load(Ordering::Acquire) => {
                self.streams.remove(&stream);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Runs a request's answer as a task on `stream`; the task sets the
    /// flag it is given before sending its last packet.
    pub fn spawn_stream_task<F>(
        &mut self,
        stream: u8,
        hash_list: bool,
        make: impl FnOnce(Arc<AtomicBool>) -> F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let done = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(make(done.clone()));
        let abort = task.abort_handle();
        self.streams.insert(
            stream,
            Stream::Task {
                hash_list,
                done,
                abort,
            },
        );
    }

    pub fn hash_list_running(&self) -> bool {
        self.streams.values().any(|s| {
            matches!(s, Stream::Task { hash_list: true, done, .. } if !done.load(Ordering::Acquire))
        })
    }

    /// The start of this connection's writer registration, registering
    /// it first if needed.
    pub fn writer_start(&mut self) -> hoard_datastore::Result<FsTime> {
        if let Some(r) = &self.registration {
            return Ok(r.start());
        }
        let r = tokio::task::block_in_place(|| self.ds.register_writer())?;
        let start = r.start();
        self.registration = Some(r);
        Ok(start)
    }

    /// Handles one finished upload: Ok, or an Error that cancels its stream.
    pub async fn upload_done(&mut self, done: Result<UploadDone, JoinError>) -> Flow {
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                warn!(peer = %self.peer, "chunk write task failed: {e}");
                return Err(Closed);
            }
        };
        if let Some(n) = self.pending.get_mut(&done.digest) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&done.digest);
            }
        }
        match done.result {
            Ok(_) => self.send(done.stream, Message::Ok).await,
            Err(e) => self.fail(done.stream, e.to_string()).await,
        }
    }

    /// Waits until no upload of any of `digests` is in flight.
    pub async fn settle_uploads(&mut self, digests: impl Iterator<Item = Digest>) -> Flow {
        let waiting: Vec<Digest> = digests.filter(|d| self.pending.contains_key(d)).collect();
        for d in waiting {
            while self.pending.contains_key(&d) {
                match self.uploads.join_next().await {
                    Some(done) => self.upload_done(done).await?,
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Ends the connection: lets uploads in flight land, drops unfinished
    /// files, closes snapshots.
    async fn finish(&mut self) {
        while let Some(done) = self.uploads.join_next().await {
            let _ = self.upload_done(done).await;
        }
        let streams: Vec<u8> = self.streams.keys().copied().collect();
        for s in streams {
            self.cancel(s);
        }
        let snapshots: Vec<SnapshotWriter> = self.snapshots.drain().map(|(_, w)| w).collect();
        let peer = self.peer;
        let closed = tokio::task::spawn_blocking(move || {
            for w in snapshots {
                let path = w.path().clone();
                match w.close() {
                    Ok(state) => info!(%peer, "snapshot {path} closed: {state:?}"),
                    Err(e) => warn!(%peer, "closing snapshot {path}: {e}"),
                }
            }
        });
        let _ = closed.await;
    }
}
