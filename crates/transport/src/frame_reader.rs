//! Reads whole packets from a socket, cancel-safely: all progress lives in
//! the reader, so a `select!` that drops a pending `next()` loses nothing.
//!
//! Two limits guard a server's memory against peers that declare large
//! packets and then stall: a per-reader packet size limit (small before
//! the peer authenticated), and an optional shared budget of bytes in
//! partly received packets, taken before a payload buffer is allocated
//! and given back when the packet is complete.

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use hoard_protocol::consts::{HEADER_SIZE, MAX_PACKET_SIZE};
use hoard_protocol::{FrameError, Header, check_frame};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget permits are KiB of payload.
pub const BUDGET_UNIT: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{err}")]
    Frame { stream: u8, err: FrameError },
    #[error("connection closed in the middle of a packet")]
    Truncated,
    #[error("a packet of {length} bytes exceeds the {limit}-byte limit at this point")]
    OverLimit { stream: u8, length: u32, limit: u32 },
}

pub struct FrameReader<R> {
    inner: R,
    head: [u8; HEADER_SIZE],
    head_len: usize,
    /// A checked header whose payload waits for budget.
    waiting: Option<Header>,
    body: Option<(Header, BytesMut, Vec<OwnedSemaphorePermit>)>,
    limit: u32,
    budgets: Vec<Arc<Semaphore>>,
    /// When the packet being read began to arrive.
    started: Option<Instant>,
    /// Budget taken so far for the waiting packet.
    granted: Vec<OwnedSemaphorePermit>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            head: [0; HEADER_SIZE],
            head_len: 0,
            waiting: None,
            body: None,
            limit: MAX_PACKET_SIZE,
            budgets: Vec::new(),
            started: None,
            granted: Vec::new(),
        }
    }

    /// Packets longer than `limit` (header included) end the stream with
    /// [`ReadError::OverLimit`] before anything is allocated.
    pub fn set_limit(&mut self, limit: u32) {
        self.limit = limit.min(MAX_PACKET_SIZE);
    }

    /// Payloads take [`BUDGET_UNIT`]s from each of `budgets`, in order,
    /// before their buffer is allocated (a share of the peer's principal,
    /// then the server's total, say); a reader whose peer's packet does
    /// not fit waits. Each budget must hold a largest packet.
    pub fn set_budgets(&mut self, budgets: Vec<Arc<Semaphore>>) {
        self.budgets = budgets;
    }

    /// When the packet now arriving began (its first header byte, or the
    /// moment its budget was granted), `None` between packets and while
    /// waiting for budget: the caller's deadline for a stalled packet.
    pub fn packet_started(&self) -> Option<Instant> {
        self.started
    }

    /// Whether a packet's header has arrived and its payload waits for
    /// budget (the server's doing, not the peer's: no idle time).
    pub fn waiting_for_budget(&self) -> bool {
        self.waiting.is_some()
    }

    /// The underlying stream (for a caller that switches protocols).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next packet, `None` at a clean end of stream. The payload buffer
    /// is allocated only after the header's length has been checked.
    pub async fn next(&mut self) -> Result<Option<(Header, Bytes)>, ReadError> {
        loop {
            if let Some(header) = self.waiting {
                let units = header.payload_len().div_ceil(BUDGET_UNIT) as u32;
                // Cancel-safe: permits taken before a cancellation are
                // kept in `granted` for the next call.
                while self.granted.len() < self.budgets.len() {
                    let b = self.budgets[self.granted.len()].clone();
                    let permit = b
                        .acquire_many_owned(units)
                        .await
                        .expect("a budget semaphore is never closed");
                    self.granted.push(permit);
                }
                let permit = std::mem::take(&mut self.granted);
                self.waiting = None;
                self.started = Some(Instant::now());
                self.body = Some((
                    header,
                    BytesMut::with_capacity(header.payload_len()),
                    permit,
                ));
                continue;
            }
            if let Some((header, buf, _)) = self.body.as_mut() {
                let want = header.payload_len();
                if buf.len() == want {
                    let (header, buf, _permit) = self.body.take().expect("checked above");
                    self.started = None;
                    return Ok(Some((header, buf.freeze())));
                }
                let room = want - buf.len();
                let n = self.inner.read_buf(&mut (&mut *buf).limit(room)).await?;
                if n == 0 {
                    return Err(ReadError::Truncated);
                }
                continue;
            }
            if self.head_len < HEADER_SIZE {
                let n = self.inner.read(&mut self.head[self.head_len..]).await?;
                if n == 0 {
                    return if self.head_len == 0 {
                        Ok(None)
                    } else {
                        Err(ReadError::Truncated)
                    };
                }
                if self.head_len == 0 {
                    self.started = Some(Instant::now());
                }
                self.head_len += n;
                continue;
            }
            self.head_len = 0;
            let header = check_frame(&self.head)
                .map_err(|err| ReadError::Frame {
                    stream: self.head[0],
                    err,
                })?
                .expect("a whole header is present");
            if header.length > self.limit {
                return Err(ReadError::OverLimit {
                    stream: header.stream,
                    length: header.length,
                    limit: self.limit,
                });
            }
            // No clock runs while the packet waits for budget: waiting is
            // the server's doing, not the peer's.
            self.started = None;
            self.waiting = Some(header);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoard_protocol::Message;

    #[tokio::test]
    async fn reads_packets_split_anywhere() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&Message::Ok.encode(1));
        wire.extend_from_slice(&Message::GetHashList { path: "abc".into() }.encode(2));
        let (mut a, b) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for byte in wire {
                a.write_all(&[byte]).await.unwrap();
            }
        });
        let mut r = FrameReader::new(b);
        let (h, p) = r.next().await.unwrap().unwrap();
        assert_eq!((h.stream, h.type_byte, p.len()), (1, 1, 0));
        let (h, p) = r.next().await.unwrap().unwrap();
        assert_eq!((h.stream, h.type_byte, &p[..]), (2, 3, &b"\x03\x00abc"[..]));
        writer.await.unwrap();
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn lying_length_is_fatal_before_allocation() {
        let wire = [4u8, 7, 0xff, 0xff, 0xff, 0xff];
        let mut r = FrameReader::new(&wire[..]);
        assert!(matches!(
            r.next().await,
            Err(ReadError::Frame {
                stream: 4,
                err: FrameError::TooLong(_)
            })
        ));
        let truncated = [0u8, 1, 10, 0, 0, 0, 1];
        let mut r = FrameReader::new(&truncated[..]);
        assert!(matches!(r.next().await, Err(ReadError::Truncated)));
    }

    #[tokio::test]
    async fn limit_refuses_before_allocation() {
        let wire = Message::GetHashList {
            path: "x".repeat(100),
        }
        .encode(3);
        let mut r = FrameReader::new(&wire[..]);
        r.set_limit(64);
        assert!(matches!(
            r.next().await,
            Err(ReadError::OverLimit {
                stream: 3,
                limit: 64,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn budget_is_taken_while_a_packet_arrives_and_given_back() {
        let budget = Arc::new(tokio::sync::Semaphore::new(4));
        let wire = Message::GetHashList {
            path: "y".repeat(3000),
        }
        .encode(1);
        let (mut a, b) = tokio::io::duplex(1 << 16);
        use tokio::io::AsyncWriteExt;
        a.write_all(&wire[..100]).await.unwrap();
        let mut r = FrameReader::new(b);
        r.set_budgets(vec![budget.clone()]);
        // The packet stalls part-way: it holds 3 KiB of the budget.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), r.next()).await;
        assert!(pending.is_err());
        assert_eq!(budget.available_permits(), 1);
        assert!(r.packet_started().is_some());
        a.write_all(&wire[100..]).await.unwrap();
        let (h, p) = r.next().await.unwrap().unwrap();
        assert_eq!((h.stream, p.len()), (1, 3002));
        assert_eq!(budget.available_permits(), 4);
        assert!(r.packet_started().is_none());
    }
}
