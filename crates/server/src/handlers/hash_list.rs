//! GetHashList: the digests of a finished index, in index order, as
//! HashListPart packets and a final empty one. One per connection at a
//! time; the index's checksum is verified before anything is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hoard_datastore::Datastore;
use hoard_protocol::consts::MAX_DIGESTS_PER_PACKET;
use hoard_protocol::{DigestList, ErrorId, Message};
use hoard_types::SnapshotPath;

use crate::connection::{Connection, Flow};
use hoard_transport::Outbox;

impl Connection {
    pub(crate) async fn get_hash_list(&mut self, stream: u8, path: String) -> Flow {
        if self.hash_list_running() {
            return self
                .send_error(
                    stream,
                    ErrorId::Busy,
                    "a hash list is already being sent on this connection".into(),
                )
                .await;
        }
        // Pinned before the index is opened: once the pin is held, a prune
        // cannot remove the snapshot, and if one got in first the index is
        // gone and the request fails. Either way no client learns digests
        // of a snapshot that is being removed (docs/maintenance.md).
        if let Some((snap, _)) = path.rsplit_once('/')
            && let Ok(snap) = snap.parse::<SnapshotPath>()
            && !self.pins.contains_key(&snap)
        {
            match tokio::task::block_in_place(|| self.ds.pin_snapshot(&snap)) {
                Ok(pin) => {
                    self.pins.insert(snap, pin);
                }
                Err(hoard_datastore::Error::SnapshotNotFound(_)) => {}
                Err(e) => return self.fail_ds(stream, e).await,
            }
        }
        let (ds, out) = (self.ds.clone(), self.out.clone());
        self.spawn_stream_task(stream, true, |done| {
            send_hash_list(ds, out, stream, path, done)
        });
        Ok(())
    }
}

async fn send_hash_list(
    ds: Datastore,
    out: Outbox,
    stream: u8,
    path: String,
    done: Arc<AtomicBool>,
) {
    let result = stream_parts(&ds, &out, stream, &path).await;
    done.store(true, Ordering::Release);
    let last = match result {
        Ok(()) => Message::HashListPart(DigestList::default()),
        Err(message) => Message::Error {
            id: ErrorId::Generic,
            message,
        },
    };
    let _ = out.send((stream, last)).await;
}

async fn stream_parts(ds: &Datastore, out: &Outbox, stream: u8, path: &str) -> Result<(), String> {
    let reader = {
        let (ds, path) = (ds.clone(), path.to_string());
        tokio::task::spawn_blocking(move || {
            let r = ds.open_index(&path)?;
            r.verify_checksum()?;
            Ok::<_, hoard_datastore::Error>(r)
        })
        .await
        .map_err(|e| format!("internal error: {e}"))?
        .map_err(|e| e.to_string())?
    };
    let reader = Arc::new(reader);
    let count = reader.chunk_count();
    let mut start = 0u64;
    while start < count {
        let n = (MAX_DIGESTS_PER_PACKET as u64).min(count - start) as usize;
        let r = reader.clone();
        let block = tokio::task::spawn_blocking(move || r.digest_block(start, n))
            .await
            .map_err(|e| format!("internal error: {e}"))?
            .map_err(|e| e.to_string())?;
        let list = DigestList::from_bytes(Bytes::from(block)).expect("whole digests");
        if out
            .send((stream, Message::HashListPart(list)))
            .await
            .is_err()
        {
            return Ok(());
        }
        start += n as u64;
    }
    Ok(())
}
