//! GetHashList: the digests of a finished index, in index order, as
//! HashListPart packets and a final empty one; and extension GetIndex,
//! the same with each chunk's end offset, as IndexPart packets. One of
//! either per connection at a time; the index's checksum is verified
//! before anything is sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hoard_datastore::Datastore;
use hoard_protocol::consts::{MAX_DIGESTS_PER_PACKET, MAX_ENTRIES_PER_PACKET, MAX_PACKET_SIZE};
use hoard_protocol::{DigestList, DynamicEntryList, ErrorId, Message};
use hoard_types::SnapshotPath;
use tokio::sync::Semaphore;

use crate::authorize::KnownChunks;
use crate::budget::Reservation;
use crate::connection::{Connection, Flow, TaskKind};
use hoard_transport::Outbox;

/// What a list request wants of each chunk.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ListKind {
    /// GetHashList: digests.
    Digests,
    /// GetIndex: end offsets and digests.
    Entries,
}

impl Connection {
    pub(crate) async fn get_hash_list(&mut self, stream: u8, path: String, kind: ListKind) -> Flow {
        if self.task_of_kind_running(TaskKind::HashList) {
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
        let ctx = ListContext {
            ds: self.ds.clone(),
            out: self.out.clone(),
            known: self.known.clone(),
            budget: self.outgoing.clone(),
        };
        self.spawn_stream_task(stream, TaskKind::HashList, |done| {
            send_hash_list(ctx, stream, path, kind, done)
        });
        Ok(())
    }
}

/// What answering a list needs of its connection.
struct ListContext {
    ds: Datastore,
    out: Outbox,
    known: Arc<Mutex<KnownChunks>>,
    budget: Vec<Arc<Semaphore>>,
}

async fn send_hash_list(
    ctx: ListContext,
    stream: u8,
    path: String,
    kind: ListKind,
    done: Arc<AtomicBool>,
) {
    let out = ctx.out.clone();
    let result = stream_parts(&ctx, stream, &path, kind).await;
    done.store(true, Ordering::Release);
    let last = match result {
        Ok(()) => part(kind, Bytes::new()),
        Err(message) => Message::Error {
            id: ErrorId::Generic,
            message,
        },
    };
    let _ = out.send((stream, last)).await;
}

/// One answer packet of `kind` carrying `block`.
fn part(kind: ListKind, block: Bytes) -> Message {
    match kind {
        ListKind::Digests => {
            Message::HashListPart(DigestList::from_bytes(block).expect("whole digests"))
        }
        ListKind::Entries => {
            Message::IndexPart(DynamicEntryList::from_bytes(block).expect("whole entries"))
        }
    }
}

async fn stream_parts(
    ctx: &ListContext,
    stream: u8,
    path: &str,
    kind: ListKind,
) -> Result<(), String> {
    let (ds, out, known) = (&ctx.ds, &ctx.out, &ctx.known);
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
    let per_packet = match kind {
        ListKind::Digests => MAX_DIGESTS_PER_PACKET,
        ListKind::Entries => MAX_ENTRIES_PER_PACKET,
    } as u64;
    while start < count {
        let n = per_packet.min(count - start) as usize;
        let reserved = Reservation::take(&ctx.budget, MAX_PACKET_SIZE as usize).await;
        let r = reader.clone();
        let block = tokio::task::spawn_blocking(move || match kind {
            ListKind::Digests => r.digest_block(start, n),
            ListKind::Entries => r.entry_block(start, n),
        })
        .await
        .map_err(|e| format!("internal error: {e}"))?
        .map_err(|e| e.to_string())?;
        // What the client reads here it may reference and download.
        {
            let mut known = known.lock().expect("lock poisoned");
            match kind {
                ListKind::Digests => known.learn(&block)?,
                ListKind::Entries => known.learn_entries(&block)?,
            }
        }
        if out
            .send((stream, part(kind, reserved.attach(block))))
            .await
            .is_err()
        {
            return Ok(());
        }
        start += n as u64;
    }
    Ok(())
}
