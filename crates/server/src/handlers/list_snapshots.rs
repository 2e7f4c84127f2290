//! Extension ListSnapshots: every snapshot matching a filter, one
//! SnapshotEntry (its manifest as JSON) each, then an empty SnapshotEntry.
//! Answered by a task so a long listing never holds up backups on the same
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hoard_auth::Principal;
use hoard_datastore::{Datastore, SnapshotInfo};
use hoard_protocol::{ErrorId, Message, SnapshotFilter};
use hoard_types::BackupGroup;

use crate::connection::{Connection, Flow, TaskKind};
use hoard_transport::Outbox;

impl Connection {
    pub(crate) async fn list_snapshots(&mut self, stream: u8, filter: SnapshotFilter) -> Flow {
        // One listing at a time: each reads the manifests of every group
        // the principal may see.
        if self.task_of_kind_running(TaskKind::Listing) {
            let msg = "a snapshot list is already being sent on this connection".to_string();
            return self.send_error(stream, ErrorId::Busy, msg).await;
        }
        let (ds, out, principal) = (self.ds.clone(), self.out.clone(), self.principal.clone());
        self.spawn_stream_task(stream, TaskKind::Listing, |done| {
            send_list(ds, out, principal, stream, filter, done)
        });
        Ok(())
    }
}

/// The snapshots matching `filter` of the groups `principal` may list.
fn visible(
    ds: &Datastore,
    principal: &Principal,
    filter: &SnapshotFilter,
) -> hoard_datastore::Result<Vec<SnapshotInfo>> {
    let wanted = |group: &BackupGroup| {
        filter.ty.is_none_or(|t| t == group.ty)
            && filter.id.as_ref().is_none_or(|id| *id == group.id)
    };
    crate::authorize::visible_snapshots(ds, principal, wanted).map(|(list, _)| list)
}

async fn send_list(
    ds: Datastore,
    out: Outbox,
    principal: Arc<Principal>,
    stream: u8,
    filter: SnapshotFilter,
    done: Arc<AtomicBool>,
) {
    let listed = tokio::task::spawn_blocking(move || visible(&ds, &principal, &filter)).await;
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
    for snap in &list {
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
