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
//! - Every request is authorized in one place ([`crate::authorize`])
//!   before it does anything.
//! - A connection that sends nothing while nothing is in flight, or a
//!   packet that stops arriving half-way, is closed after its timeout.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hoard_auth::Principal;
use hoard_datastore::{
    Datastore, FileWriter, FsTime, Inserted, SnapshotPin, SnapshotWriter, WriterRegistration,
};
use hoard_protocol::consts::{
    HELLO_STREAM, MAX_PACKET_SIZE, MAX_PREAUTH_PACKET_SIZE, PROTOCOL_VERSION, PROTOCOL_VERSION_2,
};
use hoard_protocol::{ErrorId, Features, Header, Message, PacketType, Sender};
use hoard_types::{Digest, SnapshotPath};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::admission::{Pending, PrincipalSlot, Slot};
use crate::authorize::KnownChunks;
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
        kind: TaskKind,
        done: Arc<AtomicBool>,
        abort: AbortHandle,
    },
}

/// What a stream's answer task sends. Hash lists (and indexes) and
/// snapshot listings run one at a time per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskKind {
    HashList,
    Download,
    Listing,
}

pub(crate) struct BackupStream {
    pub snapshot: SnapshotPath,
    pub file: FileWriter,
    /// The file's place in the server's open-file budget.
    pub _open: OwnedSemaphorePermit,
}

/// An open snapshot and its place in the open-file budget.
pub(crate) struct OpenSnapshot {
    pub writer: SnapshotWriter,
    pub _open: OwnedSemaphorePermit,
}

pub(crate) struct UploadDone {
    pub stream: u8,
    pub digest: Digest,
    /// Uploaded for a disk image (a fixed index): a delta candidate.
    pub for_image: bool,
    pub result: hoard_datastore::Result<Inserted>,
}

pub(crate) struct Connection {
    pub ds: Datastore,
    pub shared: Arc<Shared>,
    pub out: Outbox,
    pub peer: SocketAddr,
    pub principal: Arc<Principal>,
    /// Protocol version of the session (1 or 2).
    pub version: u32,
    pub features: Features,
    pub permits: Arc<Semaphore>,
    pub streams: HashMap<u8, Stream>,
    pub snapshots: HashMap<SnapshotPath, OpenSnapshot>,
    /// What this connection may reference and download (known-chunks
    /// rule); shared with the tasks that send hash lists.
    pub known: Arc<Mutex<KnownChunks>>,
    /// When the last packet arrived (idle timeout).
    pub last_packet: Instant,
    /// A new group the CreateBackup being handled may claim for the
    /// principal (set by [`Connection::authorize`]).
    pub claim: Option<hoard_types::BackupGroup>,
    /// Where data read for this peer takes its memory from.
    pub outgoing: Vec<Arc<Semaphore>>,
    /// Set when the peer stopped reading (see [`Connection::send`]).
    pub stalled: AtomicBool,
    pub uploads: JoinSet<UploadDone>,
    /// Digests with an upload in flight on this connection, and how many.
    pub pending: HashMap<Digest, usize>,
    /// Chunks this connection stored that were not there before (at most
    /// the known-chunks cap): the candidates for deltas when a disk
    /// image's backup finishes. A chunk that was there before may be
    /// another delta's base, and is left as it is.
    pub stored_new: HashSet<Digest>,
    /// Taken at the first upload or CreateBackup; GC keeps every chunk
    /// this connection stamps while it lives (docs/maintenance.md).
    pub registration: Option<WriterRegistration>,
    /// Snapshots whose hash list this connection read (the base of its
    /// backup, the snapshot it restores): prune leaves them alone until
    /// the connection ends.
    pub pins: HashMap<SnapshotPath, SnapshotPin>,
    /// This session in the list of live connections (`/api/v1/connections`),
    /// and what it received.
    pub live_id: u64,
    pub received: Arc<crate::api::live::Received>,
}

/// How a session begins: a version 1 session is authenticated already
/// (by the HTTP upgrade, or as the plain listener's principal); a version
/// 2 session authenticates with its first packet.
pub(crate) enum Start {
    V1 {
        principal: Arc<Principal>,
        slot: PrincipalSlot,
    },
    V2 {
        pending: Pending,
        deadline: Instant,
    },
}

pub(crate) async fn run<R, W>(
    read_half: R,
    write_half: W,
    peer: SocketAddr,
    start: Start,
    _slot: Slot,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(OUTBOX_DEPTH);
    let stall = shared.config.limits.packet_timeout;
    let writer = tokio::spawn(writer::run(write_half, rx, Some(stall)));
    let mut reader = FrameReader::new(read_half);
    let session = match start {
        Start::V1 { principal, slot } => {
            let hello = Message::Hello {
                version: PROTOCOL_VERSION,
                features: Features::NONE,
            };
            match tx.send((HELLO_STREAM, hello)).await {
                // Version 1 sessions keep hoard's extension packets, as
                // before version 2 existed.
                Ok(()) => Some((principal, slot, PROTOCOL_VERSION, Features::EXTENSIONS)),
                Err(_) => None,
            }
        }
        Start::V2 { pending, deadline } => {
            authenticate(&mut reader, &tx, peer, pending, deadline, &shared)
                .await
                .map(|(p, slot, f)| (p, slot, PROTOCOL_VERSION_2, f))
        }
    };
    if let Some((principal, _principal_slot, version, features)) = session {
        debug!(%peer, principal = %principal.name, version, "session started");
        reader.set_budgets(shared.unfinished.for_principal(&principal.name));
        let outgoing = shared.outgoing.for_principal(&principal.name);
        let known = KnownChunks::new(&principal, shared.config.limits.max_known_chunks);
        let (live_id, received) = shared.web.live.register(peer, &principal.name, version);
        shared.web.metrics.connections_opened.inc();
        let live = shared.clone();
        let mut conn = Connection {
            ds: shared.ds.clone(),
            permits: shared.chunk_writes.clone(),
            shared,
            out: tx,
            peer,
            principal,
            version,
            features,
            streams: HashMap::new(),
            snapshots: HashMap::new(),
            known: Arc::new(Mutex::new(known)),
            last_packet: Instant::now(),
            claim: None,
            outgoing,
            stalled: AtomicBool::new(false),
            uploads: JoinSet::new(),
            pending: HashMap::new(),
            stored_new: HashSet::new(),
            registration: None,
            pins: HashMap::new(),
            live_id,
            received,
        };
        conn.serve(&mut reader, &mut stop).await;
        conn.finish().await;
        // The writer ends when the last sender is gone.
        drop(conn);
        live.web.live.unregister(live_id);
    } else {
        drop(tx);
    }
    match writer.await {
        Ok(Ok(())) | Ok(Err(_)) => {}
        Err(e) => warn!(%peer, "writer task failed: {e}"),
    }
    debug!(%peer, "disconnected");
}

/// Version 2's opening: Hello with the offered features, then the
/// client's Authenticate, read with a small packet limit under the
/// handshake deadline. Answers Ok, or an Error and `None` (the caller
/// closes).
async fn authenticate<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    out: &Outbox,
    peer: SocketAddr,
    mut pending: Pending,
    deadline: Instant,
    shared: &Shared,
) -> Option<(Arc<Principal>, PrincipalSlot, Features)> {
    reader.set_limit(MAX_PREAUTH_PACKET_SIZE);
    let offered = Features::SUPPORTED;
    let hello = Message::Hello {
        version: PROTOCOL_VERSION_2,
        features: offered,
    };
    out.send((HELLO_STREAM, hello)).await.ok()?;
    let frame = tokio::select! {
        _ = pending.evicted() => {
            info!(%peer, "connection closed: evicted before authenticating by newer connections");
            return None;
        }
        r = tokio::time::timeout_at(deadline, reader.next()) => r,
    };
    let refuse = |id: ErrorId, message: String| async move {
        info!(%peer, "connection refused: {message}");
        let _ = out
            .send((HELLO_STREAM, Message::Error { id, message }))
            .await;
        None
    };
    let (features, token) = match frame {
        Err(_) => {
            info!(%peer, "connection closed: no Authenticate within the handshake timeout");
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => return refuse(ErrorId::Generic, e.to_string()).await,
        Ok(Ok(Some((h, payload)))) => match Message::decode(&h, payload) {
            Ok(Message::Authenticate { features, token }) => (features, token),
            Ok(other) => {
                let msg = format!(
                    "the first packet of protocol version 2 must be Authenticate, not {:?}",
                    other.packet_type()
                );
                return refuse(ErrorId::Generic, msg).await;
            }
            Err(e) => return refuse(ErrorId::Generic, e.to_string()).await,
        },
    };
    let unknown = features.beyond(offered);
    if !unknown.is_empty() {
        let msg = format!(
            "Authenticate asks for features 0x{:x} that the server did not offer",
            unknown.0
        );
        return refuse(ErrorId::Generic, msg).await;
    }
    if features.contains(Features::ENCRYPTION) && !features.contains(Features::ENCODED_CHUNKS) {
        let msg = "Authenticate asks for ENCRYPTION without ENCODED_CHUNKS".to_string();
        return refuse(ErrorId::Generic, msg).await;
    }
    let store = shared.tokens.clone();
    let checked = tokio::task::spawn_blocking(move || store.authenticate(&token.0)).await;
    let principal = match checked {
        Ok(Ok(p)) => Arc::new(p),
        Ok(Err(e)) => return refuse(ErrorId::Denied, crate::auth_message(&e, peer)).await,
        Err(e) => return refuse(ErrorId::Generic, format!("internal error: {e}")).await,
    };
    let slot = match shared.admission.enter(&principal.name) {
        Ok(s) => s,
        Err(reason) => return refuse(ErrorId::Busy, reason).await,
    };
    out.send((HELLO_STREAM, Message::Ok)).await.ok()?;
    reader.set_limit(MAX_PACKET_SIZE);
    drop(pending);
    Some((principal, slot, features))
}

impl Connection {
    async fn serve<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        stop: &mut watch::Receiver<bool>,
    ) {
        let limits = self.shared.config.limits.clone();
        loop {
            let may_read = self.uploads.len() < self.shared.config.max_uploads_per_connection;
            let packet_deadline = reader
                .packet_started()
                .filter(|_| may_read)
                .map(|t| Instant::from_std(t) + limits.packet_timeout);
            let idle =
                self.uploads.is_empty() && !self.task_running() && !reader.waiting_for_budget();
            let idle_deadline = self.last_packet + limits.idle_timeout;
            let flow = tokio::select! {
                biased;
                _ = stop.changed() => return,
                Some(done) = self.uploads.join_next(), if !self.uploads.is_empty() => {
                    self.upload_done(done).await
                }
                // A packet that is whole is read before any deadline is
                // looked at: after a request that kept this task busy (a
                // slow disk, an object-storage retry), what arrived
                // meanwhile is served, not taken for a stalled peer. A
                // packet still incomplete meets its deadline below.
                frame = reader.next(), if may_read => match frame {
                    Ok(Some((header, payload))) => {
                        self.last_packet = Instant::now();
                        self.dispatch(header, payload).await
                    }
                    Ok(None) => return,
                    Err(ReadError::Frame { stream, err }) => {
                        info!(peer = %self.peer, "framing error, closing: {err}");
                        let _ = self.send_error(stream, ErrorId::Generic, err.to_string()).await;
                        return;
                    }
                    Err(e @ ReadError::OverLimit { stream, .. }) => {
                        info!(peer = %self.peer, "closing: {e}");
                        let _ = self.send_error(stream, ErrorId::Generic, e.to_string()).await;
                        return;
                    }
                    Err(e) => {
                        debug!(peer = %self.peer, "read failed: {e}");
                        return;
                    }
                },
                _ = tokio::time::sleep_until(packet_deadline.unwrap_or(idle_deadline)), if packet_deadline.is_some() => {
                    info!(peer = %self.peer, principal = %self.principal.name,
                        "connection closed: a packet did not arrive whole within {} s", limits.packet_timeout.as_secs());
                    return;
                }
                _ = tokio::time::sleep_until(idle_deadline), if idle && packet_deadline.is_none() => {
                    info!(peer = %self.peer, principal = %self.principal.name,
                        "connection closed: idle for {} s", limits.idle_timeout.as_secs());
                    return;
                }
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
        let answered = matches!(
            msg,
            Message::GetHashList { .. }
                | Message::GetIndex { .. }
                | Message::DownloadChunks(_)
                | Message::ListSnapshots(_)
        );
        let limit = self.shared.config.limits.max_answers_per_connection;
        if answered && self.tasks_running() >= limit {
            let msg = format!(
                "this connection has {limit} requests being answered, the most it may; read their answers first"
            );
            return self.fail_with(stream, ErrorId::Busy, msg).await;
        }
        // Packets a session may send only with the feature it chose.
        let needs = match ty {
            PacketType::SealSnapshot => Some((Features::ENCRYPTION, "encryption")),
            PacketType::CloseSnapshot => Some((Features::CLOSE_SNAPSHOT, "close-snapshot")),
            _ if ty.is_extension() => Some((Features::EXTENSIONS, "extensions")),
            _ => None,
        };
        if let Some((feature, name)) = needs
            && !self.features.contains(feature)
        {
            return self
                .fail(
                    stream,
                    format!("{ty:?} needs the {name} feature, which this session did not ask for"),
                )
                .await;
        }
        if let Err(denied) = self.authorize(&msg) {
            return self
                .fail_with(stream, ErrorId::Denied, denied.to_string())
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
            Message::SealSnapshot {
                snapshot,
                mac,
                body,
            } => self.seal_snapshot(stream, snapshot, mac, body).await,
            Message::CloseSnapshot { snapshot } => self.close_snapshot(stream, snapshot).await,
            Message::Authenticate { .. } => {
                self.fail(stream, "the session is authenticated already".into())
                    .await
            }
            _ => {
                self.fail(
                    stream,
                    format!("unexpected {:?}", PacketType::from_u8(header.type_byte)),
                )
                .await
            }
        }
    }

    /// Queues `msg` for the peer. A peer that has not made room within
    /// the packet timeout is not reading: the connection ends (and every
    /// later send fails at once), so its timeouts and what it holds are
    /// not suspended behind a full queue.
    pub async fn send(&self, stream: u8, msg: Message) -> Flow {
        if self.stalled.load(Ordering::Relaxed) {
            return Err(Closed);
        }
        let limit = self.shared.config.limits.packet_timeout;
        match tokio::time::timeout(limit, self.out.send((stream, msg))).await {
            Ok(sent) => sent.map_err(|_| Closed),
            Err(_) => {
                info!(peer = %self.peer, principal = %self.principal.name,
                    "connection closed: the peer read nothing for {} s", limit.as_secs());
                self.stalled.store(true, Ordering::Relaxed);
                Err(Closed)
            }
        }
    }

    pub async fn send_error(&self, stream: u8, id: ErrorId, message: String) -> Flow {
        // The seed knows error ids 0 and 1 only.
        let id = match id {
            ErrorId::Denied if self.version < PROTOCOL_VERSION_2 => ErrorId::Generic,
            id => id,
        };
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
                if let Some(s) = self.snapshots.get_mut(&b.snapshot) {
                    s.writer.abandon(b.file.stored_name());
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
        kind: TaskKind,
        make: impl FnOnce(Arc<AtomicBool>) -> F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let done = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(make(done.clone()));
        let abort = task.abort_handle();
        self.streams
            .insert(stream, Stream::Task { kind, done, abort });
    }

    /// Whether an answer is still being sent on some stream.
    fn task_running(&self) -> bool {
        self.tasks_running() > 0
    }

    /// Answers still being sent.
    fn tasks_running(&self) -> usize {
        self.streams
            .values()
            .filter(|s| matches!(s, Stream::Task { done, .. } if !done.load(Ordering::Acquire)))
            .count()
    }

    /// Whether a task of `kind` is still answering.
    pub fn task_of_kind_running(&self, kind: TaskKind) -> bool {
        self.streams.values().any(|s| {
            matches!(s, Stream::Task { kind: k, done, .. } if *k == kind && !done.load(Ordering::Acquire))
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
            Ok(inserted) => {
                if inserted == Inserted::Existed {
                    self.shared.web.metrics.chunks_deduplicated.inc();
                }
                if inserted == Inserted::New
                    && done.for_image
                    && self.stored_new.len() < self.shared.config.limits.max_known_chunks
                {
                    self.stored_new.insert(done.digest);
                }
                // Only a stored chunk counts as uploaded (known-chunks
                // rule): an unencrypted one verified against its digest,
                // or an encrypted one, which never takes the name of an
                // unencrypted chunk (ChunkStore::insert_blob) and which
                // only its key opens.
                let learned = self
                    .known
                    .lock()
                    .expect("lock poisoned")
                    .uploaded(done.digest);
                match learned {
                    Ok(()) => self.send(done.stream, Message::Ok).await,
                    Err(e) => self.fail(done.stream, e).await,
                }
            }
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
        let snapshots: Vec<OpenSnapshot> = self.snapshots.drain().map(|(_, s)| s).collect();
        let peer = self.peer;
        // A session that chose CloseSnapshot closes what it finished; one
        // still open here was cut off, whatever its files say.
        let confirms = self.features.contains(Features::CLOSE_SNAPSHOT);
        let (shared, live_id) = (self.shared.clone(), self.live_id);
        let closed = tokio::task::spawn_blocking(move || {
            for s in snapshots {
                let path = s.writer.path().clone();
                let closed = if confirms {
                    s.writer.close_unconfirmed()
                } else {
                    s.writer.close()
                };
                crate::api::snapshot_closed(&shared, live_id, &path, &closed);
                match closed {
                    Ok(state) => info!(%peer, "snapshot {path} closed: {state:?}"),
                    Err(e) => warn!(%peer, "closing snapshot {path}: {e}"),
                }
            }
        });
        let _ = closed.await;
        // The process's object-storage requests so far (benchmarks read
        // them per backup).
        if let Some(storage) = self.ds.object_storage() {
            let r = storage.requests();
            info!(%peer, "object storage requests so far: {} (put {}, get {}, head {}, list {}, delete {})",
                r.total(), r.put, r.get, r.head, r.list, r.delete);
        }
    }
}
