//! One connection to a server, shared by many concurrent streams.
//!
//! A reader task routes each incoming packet to the [`Stream`] that owns
//! its stream id; a writer task drains one bounded outbox to the socket.
//! A stream id goes back to the pool only when its exchange ended cleanly
//! ([`Stream::finish`]), so late packets of an abandoned request can never
//! reach a new user of the id.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hoard_codec::{ChunkCodec, Compression};
use hoard_protocol::consts::{ALPN_V2, HELLO_STREAM, MAX_TOKEN_LEN, PROTOCOL_VERSION_2};
use hoard_protocol::{ErrorId, Features, Message, Secret};
use hoard_transport::tls::{self, Trust};
use hoard_transport::{FrameReader, OUTBOX_DEPTH, Outbox, ReadError, writer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(120);

struct Shared {
    routes: Mutex<Routes>,
    /// Why the connection ended, once it has.
    lost: Mutex<Option<String>>,
}

struct Routes {
    by_id: HashMap<u8, mpsc::Sender<Message>>,
    free: VecDeque<u8>,
    closed: bool,
}

impl Shared {
    fn lost_reason(&self) -> String {
        self.lost
            .lock()
            .expect("lock poisoned")
            .clone()
            .unwrap_or_else(|| "the server closed the connection".into())
    }
}

pub struct Connection {
    out: Outbox,
    shared: Arc<Shared>,
    features: Features,
    /// The server answers one hash list per connection at a time.
    pub(crate) hash_list_turn: tokio::sync::Mutex<()>,
    /// How this client encodes chunks (compression, and its key if it
    /// encrypts); see [`Connection::set_codec`].
    codec: Arc<ChunkCodec>,
    reader: JoinHandle<()>,
    writer: JoinHandle<std::io::Result<()>>,
}

pub use hoard_transport::tls::{Fingerprint, Trust as ServerTrust};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `HOST:PORT`.
    pub server: String,
    /// `NAME:SECRET`.
    pub token: String,
    pub trust: Trust,
    /// Added to a fingerprint mismatch's message (where the pin came from).
    pub mismatch_hint: String,
    /// Ask for feature ENCRYPTION: this client will upload encrypted
    /// chunks and seal its snapshots. Only a client with a key asks, and
    /// the server then closes the snapshots it writes as complete only
    /// once sealed.
    pub encrypt: bool,
}

impl Connection {
    /// Connects over TLS, checks the server's certificate against
    /// `opts.trust`, and authenticates with protocol version 2.
    pub async fn connect(opts: &ConnectOptions) -> Result<Connection> {
        // A server at its cap of handshakes in progress drops one at
        // random (admission.rs): fifty clients behind one address that
        // start together lose a few openings. Those, and a Busy answer,
        // are tried again after a pause with jitter; anything else fails
        // at once.
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match Self::connect_once(opts).await {
                Err(e) if attempt < CONNECT_ATTEMPTS && opening_dropped(&e) => {
                    tracing::debug!("{}: attempt {attempt}: {e}; trying again", opts.server);
                    let jitter = rand::random_range(0..=pause.as_millis() as u64);
                    tokio::time::sleep(pause + Duration::from_millis(jitter)).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn connect_once(opts: &ConnectOptions) -> Result<Connection> {
        let server = opts.server.as_str();
        if opts.token.len() > MAX_TOKEN_LEN {
            return Err(Error::Usage(format!(
                "the token is {} bytes long; a token is NAME:SECRET, at most {MAX_TOKEN_LEN} bytes",
                opts.token.len()
            )));
        }
        let connect_err = |source| Error::Connect {
            server: server.to_string(),
            source,
        };
        let (config, seen) =
            tls::client_config(&opts.trust).map_err(|e| Error::Usage(format!("TLS setup: {e}")))?;
        let sock = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_err)?;
        hoard_transport::configure_socket(&sock).map_err(connect_err)?;
        let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
        let name = tls::server_name(host).ok_or_else(|| {
            Error::Usage(format!("{host:?} is neither a host name nor an IP address"))
        })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let handshake = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, sock))
            .await
            .map_err(|_| {
                Error::Protocol(format!(
                    "{server}: no TLS handshake within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?;
        let stream = match handshake {
            Ok(s) => s,
            Err(e) => return Err(handshake_error(opts, seen.fingerprint(), e)),
        };
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_V2) {
            return Err(Error::Protocol(format!(
                "{server} does not offer hoard protocol version 2 (ALPN hoard/2); is it an older hoard?"
            )));
        }
        let mut want = Features::SUPPORTED;
        if !opts.encrypt {
            want = Features(want.0 & !Features::ENCRYPTION.0);
        }
        Self::start(stream, server, &opts.token, want).await
    }

    /// Runs protocol version 2 over an established stream: reads the
    /// Hello, authenticates with `token` asking for the offered ones of
    /// `want`, and starts the reader and writer tasks.
    pub async fn start<S>(
        stream: S,
        server: &str,
        token: &str,
        want: Features,
    ) -> Result<Connection>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, mut write_half) = tokio::io::split(stream);
        let mut reader =
            FrameReader::new(tokio::io::BufReader::with_capacity(256 * 1024, read_half));
        let offered = match next_handshake_packet(&mut reader, server).await? {
            Message::Hello { version, features } if version == PROTOCOL_VERSION_2 => features,
            Message::Hello { version, .. } => {
                return Err(Error::Protocol(format!(
                    "{server} speaks protocol version {version}, this client {PROTOCOL_VERSION_2}"
                )));
            }
            other => {
                return Err(Error::Protocol(format!(
                    "{server} is not a hoard server (first packet {:?})",
                    other.packet_type()
                )));
            }
        };
        let features = offered.intersect(want);
        // Encryption rides on encoded chunks.
        let features = if features.contains(Features::ENCODED_CHUNKS) {
            features
        } else {
            Features(features.0 & !Features::ENCRYPTION.0)
        };
        let auth = Message::Authenticate {
            features,
            token: Secret(token.to_string()),
        };
        write_half
            .write_all(&auth.encode(HELLO_STREAM))
            .await
            .map_err(|e| Error::ConnectionLost(e.to_string()))?;
        write_half
            .flush()
            .await
            .map_err(|e| Error::ConnectionLost(e.to_string()))?;
        match next_handshake_packet(&mut reader, server).await? {
            Message::Ok => {}
            Message::Error {
                id: ErrorId::Denied,
                message,
            } => return Err(Error::Denied(message)),
            Message::Error { id, message } => {
                return Err(Error::Server {
                    what: "the connection".into(),
                    message,
                    busy: id == ErrorId::Busy,
                });
            }
            other => {
                return Err(Error::Protocol(format!(
                    "{server} answered Authenticate with {:?}",
                    other.packet_type()
                )));
            }
        }
        let shared = Arc::new(Shared {
            routes: Mutex::new(Routes {
                by_id: HashMap::new(),
                free: (1..=255).collect(),
                closed: false,
            }),
            lost: Mutex::new(None),
        });
        let (out, rx) = mpsc::channel(OUTBOX_DEPTH);
        let writer = tokio::spawn(writer::run(write_half, rx, None));
        let reader = tokio::spawn(route_packets(reader, shared.clone()));
        Ok(Connection {
            out,
            shared,
            features,
            hash_list_turn: tokio::sync::Mutex::new(()),
            codec: Arc::new(ChunkCodec::new(Compression::default(), None)),
            reader,
            writer,
        })
    }

    /// The features negotiated with the server.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Chunks travel as stored (the server negotiated ENCODED_CHUNKS):
    /// the client compresses, and decodes what it downloads.
    pub fn encoded(&self) -> bool {
        self.features.contains(Features::ENCODED_CHUNKS)
    }

    /// Sets how chunks are compressed and, with a key, encrypted. A key
    /// needs a server that takes encrypted chunks.
    pub fn set_codec(&mut self, codec: ChunkCodec) -> Result<()> {
        if codec.key().is_some() && !self.features.contains(Features::ENCRYPTION) {
            return Err(Error::Usage(
                "the server does not take encrypted chunks (an older hoard); back up without --key or upgrade it".into(),
            ));
        }
        self.codec = Arc::new(codec);
        Ok(())
    }

    /// The codec for this client's own chunks.
    pub fn codec(&self) -> &Arc<ChunkCodec> {
        &self.codec
    }

    /// A new stream whose incoming packets queue up to `depth` deep; a
    /// full queue stops the reader for every stream, so a stream's owner
    /// must keep reading (or bound what it asks for).
    pub fn open_stream(&self, depth: usize) -> Result<Stream> {
        let (tx, rx) = mpsc::channel(depth.max(1));
        let mut routes = self.shared.routes.lock().expect("lock poisoned");
        if routes.closed {
            return Err(Error::ConnectionLost(self.shared.lost_reason()));
        }
        let id = routes
            .free
            .pop_front()
            .ok_or_else(|| Error::Usage("more than 255 concurrent streams".into()))?;
        routes.by_id.insert(id, tx);
        Ok(Stream {
            id,
            rx,
            out: self.out.clone(),
            shared: self.shared.clone(),
            clean: false,
        })
    }

    /// [`Connection::close`] through a shared handle, once the caller's
    /// tasks are done with it (so this is the last reference). A handle
    /// still shared elsewhere is left to its other holders.
    pub async fn close_shared(self: Arc<Self>) -> Result<()> {
        match Arc::into_inner(self) {
            Some(conn) => conn.close().await,
            None => Ok(()),
        }
    }

    /// Half-closes the connection and waits until the server closed its
    /// side too: by then it has closed the snapshots this connection
    /// wrote (docs/protocol.md), so they are complete when this returns.
    pub async fn close(self) -> Result<()> {
        drop(self.out);
        match self.writer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::ConnectionLost(e.to_string())),
            Err(e) => return Err(Error::ConnectionLost(e.to_string())),
        }
        // The server closes once its snapshots are closed (a few fsyncs);
        // one that never does is reported rather than waited for forever.
        match tokio::time::timeout(CLOSE_TIMEOUT, self.reader).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::ConnectionLost(format!(
                "the server did not close the connection within {} s after the client finished",
                CLOSE_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Openings tried at most (see [`Connection::connect`]).
const CONNECT_ATTEMPTS: u32 = 6;

/// Whether `e` is an opening the server dropped (reset or closed before
/// it answered Authenticate, a handshake evicted under load) or refused
/// as busy: worth another try, unlike a certificate, a token or a
/// protocol problem.
fn opening_dropped(e: &Error) -> bool {
    match e {
        Error::Opening(_) => true,
        Error::Server { busy, .. } => *busy,
        _ => false,
    }
}

/// One packet of the opening exchange (stream 0), under the connect
/// timeout.
async fn next_handshake_packet<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    server: &str,
) -> Result<Message> {
    let next = tokio::time::timeout(CONNECT_TIMEOUT, reader.next())
        .await
        .map_err(|_| Error::Protocol(format!("{server} did not answer the opening")))?;
    match next {
        Ok(Some((h, payload))) if h.stream == HELLO_STREAM => {
            Message::decode(&h, payload).map_err(|e| Error::Protocol(format!("{server}: {e}")))
        }
        Ok(Some(_)) => Err(Error::Protocol(format!(
            "{server} is not a hoard server (a packet on a stream other than 0 first)"
        ))),
        Ok(None) => Err(Error::Opening(format!(
            "{server} closed the connection during the opening"
        ))),
        Err(ReadError::Io(e)) if is_drop(&e) => Err(Error::Opening(format!(
            "{server} dropped the connection during the opening: {e}"
        ))),
        Err(e) => Err(Error::Protocol(format!("{server}: {e}"))),
    }
}

/// Says why a TLS handshake failed in the user's terms: an untrusted or
/// changed certificate is not a network problem.
fn handshake_error(
    opts: &ConnectOptions,
    seen: Option<tls::Fingerprint>,
    e: std::io::Error,
) -> Error {
    match (&opts.trust, seen) {
        (Trust::Pinned(expected), Some(seen)) if *expected != seen => Error::FingerprintMismatch {
            server: opts.server.clone(),
            expected: expected.to_string(),
            seen: seen.to_string(),
            hint: opts.mismatch_hint.clone(),
        },
        (Trust::Chain { .. }, Some(seen)) if e.to_string().contains("certificate") => {
            Error::Untrusted {
                server: opts.server.clone(),
                fingerprint: seen.to_string(),
            }
        }
        _ if is_drop(&e) => Error::Opening(format!(
            "{}: the server dropped the TLS handshake: {e}",
            opts.server
        )),
        _ => Error::Protocol(format!("{}: TLS handshake failed: {e}", opts.server)),
    }
}

/// An I/O error that means the peer went away, not that it misbehaved.
fn is_drop(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
    )
}

async fn route_packets<R: AsyncRead + Unpin>(mut reader: FrameReader<R>, shared: Arc<Shared>) {
    let reason = loop {
        let (header, payload) = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break None,
            Err(e) => break Some(e.to_string()),
        };
        let msg = match Message::decode(&header, payload) {
            Ok(m) => m,
            Err(e) => break Some(format!("undecodable packet from the server: {e}")),
        };
        let route = {
            let routes = shared.routes.lock().expect("lock poisoned");
            routes.by_id.get(&header.stream).cloned()
        };
        match route {
            // The owner may have given up on the stream; that is its call.
            Some(tx) => drop(tx.send(msg).await),
            None => match msg {
                Message::Error { message, .. } => {
                    // An Error on an unowned stream is what the server
                    // sends before closing after a framing error.
                    *shared.lost.lock().expect("lock poisoned") = Some(message);
                }
                other => tracing::debug!(stream = header.stream, "dropping {other:?}"),
            },
        }
    };
    if let Some(r) = reason {
        shared.lost.lock().expect("lock poisoned").get_or_insert(r);
    }
    let mut routes = shared.routes.lock().expect("lock poisoned");
    routes.closed = true;
    routes.by_id.clear();
}

/// One stream id of a connection.
pub struct Stream {
    id: u8,
    rx: mpsc::Receiver<Message>,
    out: Outbox,
    shared: Arc<Shared>,
    clean: bool,
}

impl Stream {
    pub fn id(&self) -> u8 {
        self.id
    }

    pub async fn send(&self, msg: Message) -> Result<()> {
        self.out
            .send((self.id, msg))
            .await
            .map_err(|_| Error::ConnectionLost(self.shared.lost_reason()))
    }

    /// The next packet on this stream. An Error packet is returned as
    /// [`Error::Server`], naming `what` was asked.
    pub async fn recv(&mut self, what: &str) -> Result<Message> {
        match self.rx.recv().await {
            Some(Message::Error { id, message }) => Err(server_error(what, id, message)),
            Some(m) => Ok(m),
            None => Err(Error::ConnectionLost(self.shared.lost_reason())),
        }
    }

    /// A packet already queued on this stream, without waiting.
    pub fn try_recv(&mut self, what: &str) -> Option<Result<Message>> {
        match self.rx.try_recv() {
            Ok(Message::Error { id, message }) => Some(Err(server_error(what, id, message))),
            Ok(m) => Some(Ok(m)),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                Some(Err(Error::ConnectionLost(self.shared.lost_reason())))
            }
        }
    }

    /// Expects an Ok.
    pub async fn recv_ok(&mut self, what: &str) -> Result<()> {
        match self.recv(what).await? {
            Message::Ok => Ok(()),
            other => Err(unexpected(what, &other)),
        }
    }

    /// The exchange on this stream ended as the protocol says: the id may
    /// be reused.
    pub fn finish(mut self) {
        self.clean = true;
    }
}

/// An Error packet as the client's error: permission problems apart.
fn server_error(what: &str, id: ErrorId, message: String) -> Error {
    match id {
        ErrorId::Denied => Error::Denied(format!("server refused {what}: {message}")),
        id => Error::Server {
            what: what.to_string(),
            message,
            busy: id == ErrorId::Busy,
        },
    }
}

pub(crate) fn unexpected(what: &str, got: &Message) -> Error {
    Error::Protocol(format!(
        "unexpected {:?} packet while waiting for {what}",
        got.packet_type()
    ))
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut routes = self.shared.routes.lock().expect("lock poisoned");
        routes.by_id.remove(&self.id);
        if self.clean {
            routes.free.push_back(self.id);
        }
    }
}
