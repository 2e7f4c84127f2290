//! UploadChunk: check the chunk (its digest, unless the client encrypted
//! it) and store it, off the async threads, answering Ok on the same
//! stream.

use bytes::Bytes;
use hoard_datastore::ChunkClass;
use hoard_protocol::Features;
use hoard_types::Digest;

use crate::connection::{Connection, Flow, UploadDone};

impl Connection {
    pub(crate) async fn upload(&mut self, stream: u8, digest: Digest, data: Bytes) -> Flow {
        // Waiting here stops this connection's reads: the backpressure that
        // keeps the server's memory bounded however fast clients send.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the write semaphore is never closed");
        let since = match self.writer_start() {
            Ok(t) => t,
            Err(e) => return self.fail_ds(stream, e).await,
        };
        *self.pending.entry(digest).or_default() += 1;
        let ds = self.ds.clone();
        // An encoded session sends chunk files as stored (checked, kept
        // as sent); a version 1 or plain one sends the data.
        let encoded = self.features.contains(Features::ENCODED_CHUNKS);
        let class = if self.features.contains(Features::ENCRYPTION) {
            ChunkClass::Encrypted
        } else {
            ChunkClass::Plain
        };
        self.uploads.spawn_blocking(move || {
            let _permit = permit;
            let result = if encoded {
                ds.chunks().insert_blob(&digest, &data, class, since)
            } else {
                ds.chunks().insert(&digest, &data, since)
            };
            UploadDone {
                stream,
                digest,
                result,
            }
        });
        Ok(())
    }
}
