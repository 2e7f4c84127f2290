//! Extension ListSnapshots: every snapshot matching a filter, one
//! SnapshotEntry (its manifest as JSON) each, then an empty SnapshotEntry.
//! Answered by a task so a long listing never holds up backups on the same
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hoard_datastore::{Datastore, SnapshotInfo};
use hoard_protocol::{ErrorId, Message, SnapshotFilter};

use crate::connection::{Connection, Flow};
use hoard_transport::Outbox;

impl Connection {
    pub(crate) async fn list_snapshots(&mut self, stream: u8, filter: SnapshotFilter) -> Flow {
        let (ds, out) = (self.ds.clone(), self.out.clone());
        self.spawn_stream_task(stream, false, |done| {
            send_list(ds, out, stream, filter, done)
        });
        Ok(())
    }
}

fn matches(filter: &SnapshotFilter, s: &SnapshotInfo) -> bool {
    filter.ty.is_none_or(|t| t == s.path.group.ty)
        && filter.id.as_ref().is_none_or(|id| *id == s.path.group.id)
}

async fn send_list(
    ds: Datastore,
    out: Outbox,
    stream: u8,
    filter: SnapshotFilter,
    done: Arc<AtomicBool>,
) {
    let listed = tokio::task::spawn_blocking(move || ds.list_snapshots()).await;
    let result = match listed {
        Ok(Ok(list)) => Ok(list),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("internal error: {e}")),
    };
    let list = match result {
        Ok(list) => list,
        Err(message) => {
            done.store(true, Ordering::Release);
            let error = Message::Error {
                id: ErrorId::Generic,
                message,
            };
            let _ = out.send((stream, error)).await;
            return;
        }
    };
    for snap in list.iter().filter(|s| matches(&filter, s)) {
        let json = match serde_json::to_vec(&snap.manifest) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!("encoding manifest of {}: {e}", snap.path);
                continue;
            }
        };
        // A manifest is at most 16 MiB on disk (datastore limit) but JSON
        // re-encoding is compact; one that still does not fit is skipped
        // rather than breaking the packet limit.
        if json.len() > hoard_protocol::consts::MAX_PACKET_SIZE as usize - 6 {
            tracing::warn!("manifest of {} is too large to list", snap.path);
            continue;
        }
        if out
            .send((stream, Message::SnapshotEntry(Bytes::from(json))))
            .await
            .is_err()
        {
            return;
        }
    }
    done.store(true, Ordering::Release);
    let _ = out
        .send((stream, Message::SnapshotEntry(Bytes::new())))
        .await;
}
