//! DownloadChunks: one Chunk packet per requested digest, in request
//! order (the chunk file as stored in an encoded session, else the plain
//! data), each carrying its offset within the concatenation of the
//! requested chunks. A few chunk reads run ahead of the socket.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hoard_datastore::{ChunkClass, Datastore};
use hoard_protocol::consts::{CHUNK_PACKET_OVERHEAD, MAX_PACKET_SIZE};
use hoard_protocol::{DigestList, ErrorId, Features, Message};
use hoard_types::MAX_CHUNK_SIZE;
use tokio::sync::Semaphore;

use crate::budget::Reservation;
use crate::connection::{Connection, Flow, TaskKind};
use hoard_transport::Outbox;

/// Chunk reads in flight ahead of the one being sent.
const READ_AHEAD: usize = 3;

impl Connection {
    pub(crate) async fn download_chunks(&mut self, stream: u8, list: DigestList) -> Flow {
        if list.is_empty() {
            return Ok(());
        }
        let (ds, out, budget) = (self.ds.clone(), self.out.clone(), self.outgoing.clone());
        // An encoded session gets chunks as stored, of its class: an
        // encrypting session's are its encrypted ones.
        let encoded = self.features.contains(Features::ENCODED_CHUNKS).then(|| {
            if self.features.contains(Features::ENCRYPTION) {
                ChunkClass::Encrypted
            } else {
                ChunkClass::Plain
            }
        });
        self.spawn_stream_task(stream, TaskKind::Download, |done| {
            send_chunks(ds, out, budget, stream, list, encoded, done)
        });
        Ok(())
    }
}

async fn send_chunks(
    ds: Datastore,
    out: Outbox,
    budget: Vec<Arc<Semaphore>>,
    stream: u8,
    list: DigestList,
    encoded: Option<ChunkClass>,
    done: Arc<AtomicBool>,
) {
    let mut digests = list.iter();
    let mut reads = VecDeque::new();
    let mut offset = 0u64;
    loop {
        while reads.len() < READ_AHEAD && digests.len() > 0 {
            // Memory for the chunk is reserved before it is read, and held
            // until the writer has sent it (docs/security.md, "Limits").
            // Only a task holding nothing waits for room; one with reads
            // in hand sends those first.
            let reserved = if reads.is_empty() {
                Reservation::take(&budget, MAX_CHUNK_SIZE).await
            } else {
                match Reservation::try_take(&budget, MAX_CHUNK_SIZE) {
                    Some(r) => r,
                    None => break,
                }
            };
            let Some(digest) = digests.next() else { break };
            let ds = ds.clone();
            // The reservation shrinks to the chunk's size as soon as it is
            // read, not when its turn to be sent comes.
            reads.push_back((
                digest,
                tokio::task::spawn_blocking(move || {
                    let data = match encoded {
                        Some(class) => ds
                            .chunks()
                            .load_blob(&digest, class)
                            .and_then(|b| fits(&digest, b)),
                        None => ds.chunks().load(&digest),
                    };
                    data.map(|data| reserved.attach(data))
                }),
            ));
        }
        let Some((digest, read)) = reads.pop_front() else {
            break;
        };
        let last = reads.is_empty() && digests.len() == 0;
        let msg = match read.await {
            Ok(Ok(data)) => {
                let len = data.len() as u64;
                let msg = Message::Chunk {
                    offset,
                    digest,
                    data,
                };
                offset += len;
                msg
            }
            Ok(Err(e)) => {
                done.store(true, Ordering::Release);
                let _ = out
                    .send((
                        stream,
                        Message::Error {
                            id: ErrorId::Generic,
                            message: e.to_string(),
                        },
                    ))
                    .await;
                return;
            }
            Err(e) => {
                done.store(true, Ordering::Release);
                let message = format!("internal error: {e}");
                let _ = out
                    .send((
                        stream,
                        Message::Error {
                            id: ErrorId::Generic,
                            message,
                        },
                    ))
                    .await;
                return;
            }
        };
        if last {
            done.store(true, Ordering::Release);
        }
        if out.send((stream, msg)).await.is_err() {
            return;
        }
    }
    done.store(true, Ordering::Release);
}

/// A chunk file too large for a Chunk packet: only a version 1 client's
/// upload of nearly the largest chunk, stored raw, can be one.
fn fits(digest: &hoard_types::Digest, blob: Vec<u8>) -> hoard_datastore::Result<Vec<u8>> {
    let room = MAX_PACKET_SIZE as usize - CHUNK_PACKET_OVERHEAD;
    if blob.len() <= room {
        Ok(blob)
    } else {
        tracing::warn!("chunk {digest} is too large to download encoded");
        Err(hoard_datastore::Error::ChunkSize {
            size: blob.len(),
            max: room,
        })
    }
}
