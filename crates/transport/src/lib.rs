//! Packets over a byte stream. [`protocol`](hoard_protocol) knows what the
//! bytes of one packet mean; this crate moves whole packets across a tokio
//! socket, in the same way for the server and the client:
//! [`FrameReader`] reads one packet at a time and is cancel-safe (it can
//! sit in a `select!`), and [`writer::run`] drains a bounded queue of
//! messages to the socket, sending bulk data straight from its buffer.

mod frame_reader;
pub mod tls;
pub mod writer;

use std::time::Duration;

/// Sets up a connected socket the same way on both sides: no Nagle delay
/// (packets are written whole), and TCP keepalive so that a peer whose
/// machine died is noticed after about a minute (30 s idle, then 3 probes
/// 10 s apart), releasing what the connection held (a server's snapshot
/// lock, a client's wait).
pub fn configure_socket(sock: &tokio::net::TcpStream) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    socket2::SockRef::from(sock).set_tcp_keepalive(&keepalive)
}

pub use frame_reader::{BUDGET_UNIT, FrameReader, ReadError};
pub use writer::{OUTBOX_DEPTH, Outbox};

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_get_nodelay_and_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        configure_socket(&client).unwrap();
        assert!(client.nodelay().unwrap());
        let s = socket2::SockRef::from(&client);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);
    }
}
