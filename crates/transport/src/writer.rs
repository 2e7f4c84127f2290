//! The writing half of a connection: encodes queued messages and sends
//! bulk data (chunks, lists) straight from its buffer.

use bytes::BytesMut;
use hoard_protocol::Message;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// Messages queued for the peer; bounded so a slow reader pushes back.
/// The sending side of a connection's outbox.
pub type Outbox = mpsc::Sender<(u8, Message)>;

/// How many messages may wait for the socket.
pub const OUTBOX_DEPTH: usize = 8;

pub async fn run<W: AsyncWrite + Unpin>(
    sink: W,
    mut rx: mpsc::Receiver<(u8, Message)>,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    let mut head = BytesMut::with_capacity(256);
    while let Some((stream, msg)) = rx.recv().await {
        head.clear();
        msg.encode_head(stream, &mut head);
        out.write_all(&head).await?;
        if let Some(bulk) = msg.bulk() {
            out.write_all(bulk).await?;
        }
        if rx.is_empty() {
            out.flush().await?;
        }
    }
    out.flush().await?;
    out.shutdown().await
}
