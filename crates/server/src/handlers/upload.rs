//! UploadChunk: check the chunk (its digest, unless the client encrypted
//! it) and store it, off the async threads, answering Ok on the same
//! stream.

use bytes::Bytes;
use hoard_datastore::{ChunkClass, FileKind, Inserted};
use hoard_protocol::Features;
use hoard_types::{ARCHIVE_META_SUFFIX, Digest};

use crate::connection::{Connection, Flow, Stream, UploadDone};

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
        let m = &self.shared.web.metrics;
        m.chunks_received.inc();
        m.chunk_bytes_received.inc_by(data.len() as u64);
        self.received.chunk(data.len() as u64);
        let ds = self.ds.clone();
        // An encoded session sends chunk files as stored (checked, kept
        // as sent); a version 1 or plain one sends the data.
        let encoded = self.features.contains(Features::ENCODED_CHUNKS);
        let class = if self.features.contains(Features::ENCRYPTION) {
            ChunkClass::Encrypted
        } else {
            ChunkClass::Plain
        };
        let for_image = matches!(
            self.streams.get(&stream),
            Some(Stream::Backup(b)) if b.file.kind() == FileKind::Fixed
        );
        // A tree archive's metadata is read again by the next backup.
        let reread_soon = matches!(
            self.streams.get(&stream),
            Some(Stream::Backup(b))
                if b.file.stored_name().ends_with(&format!("{ARCHIVE_META_SUFFIX}.didx"))
        );
        self.uploads.spawn_blocking(move || {
            let _permit = permit;
            let result = if encoded {
                let stored = ds.chunks().insert_blob(&digest, &data, class, since);
                if reread_soon && matches!(stored, Ok(Inserted::New)) {
                    ds.chunks().keep_cached(&digest, class, &data);
                }
                stored
            } else {
                ds.chunks().insert(&digest, &data, since)
            };
            UploadDone {
                stream,
                digest,
                for_image,
                result,
            }
        });
        Ok(())
    }
}
