//! UploadChunk: verify the digest and store the chunk, off the async
//! threads, answering Ok on the same stream.

use bytes::Bytes;
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
        self.uploads.spawn_blocking(move || {
            let _permit = permit;
            let result = ds.chunks().insert(&digest, &data, since);
            UploadDone {
                stream,
                digest,
                result,
            }
        });
        Ok(())
    }
}
