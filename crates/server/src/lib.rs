//! hoard's server: serves one datastore over the packet protocol.
//!
//! Each connection is a task that reads packets in order and dispatches
//! them ([`connection`]); responses go through a bounded channel to a
//! writer task (`hoard_transport::writer`), so a client that does not read slows only its
//! own connection. Chunk uploads are hashed and written on blocking
//! threads, at most [`ServerConfig::max_chunk_writes`] at a time across
//! all connections; while a connection waits for a slot it stops reading
//! from its socket, which is the backpressure that bounds memory: about
//! one packet per connection plus one per write slot.
//!
//! A misbehaving client gets an Error packet and, for framing errors, a
//! closed connection; it never reaches another connection's state.

mod connection;
mod handlers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hoard_datastore::Datastore;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

/// Tunables; the defaults suit the machine the server runs on.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Chunk uploads being hashed and written at once, all connections
    /// together. Each holds one chunk (up to 16 MiB) in memory.
    pub max_chunk_writes: usize,
    /// Uploads one connection may have in flight before it stops reading.
    pub max_uploads_per_connection: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        ServerConfig {
            max_chunk_writes: cores + 2,
            max_uploads_per_connection: 4,
        }
    }
}

/// Serves `ds` on `listener` until `shutdown` completes, then lets every
/// connection drop its unfinished files and close its snapshots before
/// returning.
pub async fn serve(
    listener: TcpListener,
    ds: Datastore,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(config.max_chunk_writes.max(1)));
    let config = Arc::new(config);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    if let Err(e) = hoard_transport::configure_socket(&sock) {
                        warn!(%peer, "socket options: {e}");
                    }
                    conns.spawn(connection::run(
                        sock,
                        peer,
                        ds.clone(),
                        permits.clone(),
                        config.clone(),
                        stop_rx.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little
                    // rather than spin.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    info!("shutting down: closing {} connection(s)", conns.len());
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Binds `addr`; a convenience for the CLI and tests.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
