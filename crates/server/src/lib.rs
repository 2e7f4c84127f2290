//! hoard's server: serves one datastore over the packet protocol.
//!
//! Two ways in ([`Listeners`]):
//! - the **main listener**, always TLS. ALPN `hoard/2` selects protocol
//!   version 2 (Hello with feature flags, then an Authenticate packet with
//!   an API token); anything else speaks HTTP/1.1, where the seed's
//!   version 1 runs after an `Upgrade` authenticated with a token
//!   ([`http`]). The packet protocol never runs unauthenticated here.
//! - an optional **plain version 1 listener** (`--listen-v1`) for legacy
//!   clients, whose sessions act as one fixed principal.
//!
//! Each connection is a task that reads packets in order and dispatches
//! them ([`connection`]) after one authorization check ([`authorize`]);
//! responses go through a bounded channel to a writer task
//! (`hoard_transport::writer`), so a client that does not read slows only
//! its own connection. Chunk uploads are hashed and written on blocking
//! threads, at most [`ServerConfig::max_chunk_writes`] at a time across
//! all connections; while a connection waits for a slot it stops reading
//! from its socket, which is the backpressure that bounds memory.
//!
//! What a hostile peer can hold is bounded too ([`Limits`], enforced in
//! [`admission`] and [`connection`]): connections in all and per
//! principal, handshakes in progress (the oldest is dropped for a new
//! one), bytes of partly received packets, files and snapshots open, and
//! time (handshake, idle, a packet that stops half-way).

mod admission;
mod api;
mod authorize;
mod budget;
mod connection;
mod handlers;
mod handshake;
mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hoard_auth::{Principal, TokenStore, UserStore};
use hoard_datastore::Datastore;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use admission::Admission;

/// Entry points for fuzz targets (`fuzz/`): the parsers of bytes an
/// unauthenticated peer sends. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses an HTTP request head as the TLS port does, with the
    /// credential and login-form parsing behind it.
    pub fn http_request(data: &[u8]) {
        crate::http::fuzz(data);
    }
}

/// Tunables; the defaults suit the machine the server runs on.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Chunk uploads being hashed and written at once, all connections
    /// together. Each holds one chunk (up to 16 MiB) in memory.
    pub max_chunk_writes: usize,
    /// Uploads one connection may have in flight before it stops reading.
    pub max_uploads_per_connection: usize,
    pub limits: Limits,
}

/// What one peer, or all of them, can hold of the server
/// (docs/security.md, "Limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections at once, authenticated or not.
    pub max_connections: usize,
    /// Authenticated connections of one principal (token) at once.
    pub max_connections_per_principal: usize,
    /// Connections still in their TLS handshake or authentication; past
    /// this the oldest is dropped, so idle connects cannot lock out a
    /// real client.
    pub max_pending_handshakes: usize,
    /// From accept until authenticated.
    pub handshake_timeout: Duration,
    /// A connection with nothing in flight that sends nothing this long
    /// is closed (files it left unfinished are dropped).
    pub idle_timeout: Duration,
    /// A packet must arrive whole this long after its first byte.
    pub packet_timeout: Duration,
    /// Bytes of partly received packets, all connections together; one
    /// principal holds at most a quarter.
    pub unfinished_bytes: usize,
    /// Bytes of chunks and lists read for peers and not yet sent, all
    /// connections together; one principal holds at most a quarter.
    pub outgoing_bytes: usize,
    /// Requests being answered (downloads, lists) on one connection.
    pub max_answers_per_connection: usize,
    /// Files being written on one connection at once.
    pub max_open_files_per_connection: usize,
    /// Files and snapshots being written at once, all connections.
    pub max_open_files: usize,
    /// Chunks a non-admin connection may learn from indexes it reads
    /// (the known-chunks rule keeps them in memory).
    pub max_known_chunks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_principal: 64,
            max_pending_handshakes: 128,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            packet_timeout: Duration::from_secs(120),
            unfinished_bytes: 512 << 20,
            outgoing_bytes: 512 << 20,
            max_answers_per_connection: 16,
            max_open_files_per_connection: 64,
            max_open_files: 8192,
            max_known_chunks: 1 << 21,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        ServerConfig {
            max_chunk_writes: cores + 2,
            max_uploads_per_connection: 4,
            limits: Limits::default(),
        }
    }
}

/// Where the server listens.
pub struct Listeners {
    /// The main listener: TLS, authenticated.
    pub main: TcpListener,
    /// `--listen-v1`: plain version 1 sessions acting as this principal.
    pub v1: Option<(TcpListener, Principal)>,
}

/// Everything a connection needs of the server, shared.
pub(crate) struct Shared {
    pub ds: Datastore,
    pub tokens: TokenStore,
    /// Users of the web page.
    pub users: UserStore,
    pub tls: tokio_rustls::TlsAcceptor,
    pub config: ServerConfig,
    /// Chunk writes in flight, all connections.
    pub chunk_writes: Arc<Semaphore>,
    /// Partly received packets, all connections.
    pub unfinished: budget::Budget,
    /// Chunks and lists read for peers and not yet sent.
    pub outgoing: budget::Budget,
    /// Files and snapshots open for writing, all connections.
    pub open_files: Arc<Semaphore>,
    pub admission: Admission,
    /// The HTTP side: sessions, tasks, metrics, live connections.
    pub web: api::WebState,
}

/// Serves `ds` until `shutdown` completes, then lets every connection
/// drop its unfinished files and close its snapshots before returning.
pub async fn serve(
    listeners: Listeners,
    ds: Datastore,
    tokens: TokenStore,
    users: UserStore,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = &config.limits;
    let shared = Arc::new(Shared {
        ds,
        tokens,
        users,
        web: api::WebState::new(&config.limits),
        tls: tokio_rustls::TlsAcceptor::from(tls),
        chunk_writes: Arc::new(Semaphore::new(config.max_chunk_writes.max(1))),
        unfinished: budget::Budget::new(
            limits.unfinished_bytes,
            hoard_protocol::consts::MAX_PACKET_SIZE as usize,
        ),
        outgoing: budget::Budget::new(
            limits.outgoing_bytes,
            hoard_protocol::consts::MAX_PACKET_SIZE as usize,
        ),
        open_files: Arc::new(Semaphore::new(limits.max_open_files.max(1))),
        admission: Admission::new(limits),
        config,
    });
    let Listeners { main, v1 } = listeners;
    let v1 = v1.map(|(l, p)| (l, Arc::new(p)));
    let mut conns = JoinSet::new();
    let sampler = tokio::spawn(api::usage::sampler(shared.clone(), stop_rx.clone()));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = main.accept() => match accepted {
                Ok((sock, peer)) => {
                    if let Some(slot) = admit(&shared, &sock, peer) {
                        // Entered here, before the task runs, so a burst of
                        // connects evicts handshakes at once.
                        let pending = shared.admission.begin_handshake(peer.ip());
                        conns.spawn(handshake::tls(sock, peer, slot, pending, shared.clone(), stop_rx.clone()));
                    }
                }
                Err(e) => accept_failed(e).await,
            },
            accepted = accept_v1(v1.as_ref()) => match accepted {
                Ok((sock, peer, principal)) => {
                    if let Some(slot) = admit(&shared, &sock, peer) {
                        conns.spawn(handshake::plain_v1(sock, peer, slot, principal, shared.clone(), stop_rx.clone()));
                    }
                }
                Err(e) => accept_failed(e).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    info!("shutting down: closing {} connection(s)", conns.len());
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    let _ = sampler.await;
    Ok(())
}

/// The next connection on the plain version 1 listener, with the
/// principal its sessions act as; never, without that listener.
async fn accept_v1(
    v1: Option<&(TcpListener, Arc<Principal>)>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr, Arc<Principal>)> {
    match v1 {
        Some((l, p)) => l.accept().await.map(|(s, a)| (s, a, p.clone())),
        None => std::future::pending().await,
    }
}

/// Out of file descriptors and the like: wait a little rather than spin.
async fn accept_failed(e: std::io::Error) {
    warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Counts the connection in, or refuses it (logged) when the server is
/// full.
fn admit(
    shared: &Arc<Shared>,
    sock: &tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<admission::Slot> {
    match shared.admission.connect() {
        Ok(slot) => {
            if let Err(e) = hoard_transport::configure_socket(sock) {
                warn!(%peer, "socket options: {e}");
            }
            Some(slot)
        }
        Err(reason) => {
            warn!(%peer, "connection refused: {reason}");
            None
        }
    }
}

/// What an unauthenticated peer is told when its token is refused: the
/// refusal itself, or, when the token store cannot be read, a generic
/// message (the details, which name files, go to the log only).
pub(crate) fn auth_message(e: &hoard_auth::AuthError, peer: SocketAddr) -> String {
    use hoard_auth::AuthError as E;
    match e {
        E::Rejected(_) | E::Malformed | E::LoginFailed => e.to_string(),
        other => {
            warn!(%peer, "authentication could not be checked: {other}");
            "authentication failed: the server cannot check tokens right now".into()
        }
    }
}

/// Binds `addr` with a listen backlog of 1,024 (the default 128 makes a
/// burst of connects wait for SYN retries).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Raises the soft open-file limit to the hard one and returns it: the
/// server holds a descriptor per connection, per file being written and
/// per chunk being stored.
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum)
        && cur < max
    {
        lim.current = Some(max);
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            warn!("raising the open-file limit to {max}: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Limits sized for an open-file limit of `nofile`: connections and
/// writes share it, with room left for chunk writes and index reads.
pub fn limits_for_open_files(nofile: u64) -> Limits {
    let mut l = Limits::default();
    let nofile = nofile.min(1 << 20) as usize;
    let fixed = l.max_connections + l.max_pending_handshakes + 512;
    l.max_open_files = nofile.saturating_sub(fixed).max(64);
    l
}
