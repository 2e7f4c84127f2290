//! Reads whole packets from a socket, cancel-safely: all progress lives in
//! the reader, so a `select!` that drops a pending `next()` loses nothing.

use bytes::{BufMut, Bytes, BytesMut};
use hoard_protocol::consts::HEADER_SIZE;
use hoard_protocol::{FrameError, Header, check_frame};
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{err}")]
    Frame { stream: u8, err: FrameError },
    #[error("connection closed in the middle of a packet")]
    Truncated,
}

pub struct FrameReader<R> {
    inner: R,
    head: [u8; HEADER_SIZE],
    head_len: usize,
    body: Option<(Header, BytesMut)>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            head: [0; HEADER_SIZE],
            head_len: 0,
            body: None,
        }
    }

    /// The next packet, `None` at a clean end of stream. The payload buffer
    /// is allocated only after the header's length has been checked.
    pub async fn next(&mut self) -> Result<Option<(Header, Bytes)>, ReadError> {
        loop {
            if let Some((header, buf)) = self.body.as_mut() {
                let want = header.payload_len();
                if buf.len() == want {
                    let (header, buf) = self.body.take().expect("checked above");
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
            self.body = Some((header, BytesMut::with_capacity(header.payload_len())));
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
}
