//! From an accepted socket to a session: the TLS handshake and the
//! choice of protocol by ALPN, or a plain version 1 session on the
//! legacy listener. Everything here runs under the handshake deadline
//! and can be evicted by newer connections ([`crate::admission`]).

use std::net::SocketAddr;
use std::sync::Arc;

use hoard_auth::Principal;
use hoard_protocol::consts::ALPN_V2;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};
use tracing::info;

use crate::Shared;
use crate::admission::{Pending, Slot};
use crate::connection::{self, Start};

/// Read buffer of a session: large enough for a few packets' headers and
/// small lists, while a chunk's bytes go straight to its own buffer.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

/// A connection on the main listener: TLS, then version 2 (ALPN
/// `hoard/2`) or HTTP/1.1 (the version 1 upgrade).
pub(crate) async fn tls(
    sock: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    mut pending: Pending,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let deadline = Instant::now() + shared.config.limits.handshake_timeout;
    let accepted = tokio::select! {
        _ = pending.evicted() => {
            info!(%peer, "connection closed: handshake evicted by newer connections");
            return;
        }
        r = timeout_at(deadline, shared.tls.accept(sock)) => r,
    };
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            info!(%peer, "connection closed: TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            info!(%peer, "connection closed: no TLS handshake within the timeout");
            return;
        }
    };
    let v2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_V2);
    let (r, w) = tokio::io::split(stream);
    let reader = BufReader::with_capacity(READ_BUFFER, r);
    if v2 {
        let start = Start::V2 { pending, deadline };
        connection::run(reader, w, peer, start, slot, shared, stop).await;
    } else {
        crate::http::serve(reader, w, peer, pending, deadline, slot, shared, stop).await;
    }
}

/// A connection on the plain version 1 listener: a session as
/// `principal` at once.
pub(crate) async fn plain_v1(
    sock: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    principal: Arc<Principal>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let principal_slot = match shared.admission.enter(&principal.name) {
        Ok(s) => s,
        Err(reason) => {
            info!(%peer, "version 1 connection refused: {reason}");
            return;
        }
    };
    let (r, w) = sock.into_split();
    let reader = BufReader::with_capacity(READ_BUFFER, r);
    let start = Start::V1 {
        principal,
        slot: principal_slot,
    };
    connection::run(reader, w, peer, start, slot, shared, stop).await;
}
