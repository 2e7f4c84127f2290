//! The writing half of a connection: encodes queued messages and sends
//! bulk data (chunks, lists) straight from its buffer.

use bytes::BytesMut;
use hoard_protocol::Message;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use tokio::sync::mpsc;

/// Messages queued for the peer; bounded so a slow reader pushes back.
/// The sending side of a connection's outbox.
pub type Outbox = mpsc::Sender<(u8, Message)>;

/// How many messages may wait for the socket.
pub const OUTBOX_DEPTH: usize = 8;

/// Sends queued messages until the queue closes. With `stall_timeout`,
/// one message (or flush) that the peer does not take within that time
/// ends the writer with `TimedOut`: a peer that stops reading cannot hold
/// what is queued for it (and the server memory it stands for) for ever.
pub async fn run<W: AsyncWrite + Unpin>(
    sink: W,
    mut rx: mpsc::Receiver<(u8, Message)>,
    stall_timeout: Option<Duration>,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    let mut head = BytesMut::with_capacity(256);
    while let Some((stream, msg)) = rx.recv().await {
        let send = async {
            head.clear();
            msg.encode_head(stream, &mut head);
            out.write_all(&head).await?;
            if let Some(bulk) = msg.bulk() {
                out.write_all(bulk).await?;
            }
            if rx.is_empty() {
                out.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        within(stall_timeout, send).await?;
    }
    within(stall_timeout, out.flush()).await?;
    within(stall_timeout, out.shutdown()).await
}

async fn within<T>(
    limit: Option<Duration>,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match limit {
        None => f.await,
        Some(d) => tokio::time::timeout(d, f).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the peer read nothing for {} s", d.as_secs()),
            )
        })?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hoard_types::Digest;

    #[tokio::test]
    async fn a_peer_that_reads_nothing_ends_the_writer() {
        let (sink, _unread) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(4);
        let writer = tokio::spawn(run(sink, rx, Some(Duration::from_millis(200))));
        let data = Bytes::from(vec![0u8; 100_000]);
        let msg = Message::Chunk {
            offset: 0,
            digest: Digest::of(&data),
            data,
        };
        tx.send((1, msg)).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer gave up")
            .unwrap();
        assert_eq!(ended.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        // What was still queued is dropped with the receiver.
        drop(tx);
    }
}
