//! Extension ListSnapshots: every snapshot matching a filter, one
//! SnapshotEntry (its manifest as JSON) each, then an empty SnapshotEntry.
//! Answered by a task so a long listing never holds up backups on the same
//! connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hoard_auth::{GroupOwner, Principal};
use hoard_datastore::{Datastore, SnapshotInfo};
use hoard_protocol::{ErrorId, Message, SnapshotFilter};
use hoard_types::BackupGroup;

use crate::connection::{Connection, Flow};
use hoard_transport::Outbox;

impl Connection {
    pub(crate) async fn list_snapshots(&mut self, stream: u8, filter: SnapshotFilter) -> Flow {
        let (ds, out, principal) = (self.ds.clone(), self.out.clone(), self.principal.clone());
        self.spawn_stream_task(stream, false, |done| {
            send_list(ds, out, principal, stream, filter, done)
        });
        Ok(())
    }
}

fn matches(filter: &SnapshotFilter, s: &SnapshotInfo) -> bool {
    filter.ty.is_none_or(|t| t == s.path.group.ty)
        && filter.id.as_ref().is_none_or(|id| *id == s.path.group.id)
}

/// The snapshots of the groups `principal` may list (each group's owner
/// looked up once).
fn visible(ds: &Datastore, principal: &Principal) -> hoard_datastore::Result<Vec<SnapshotInfo>> {
    let mut list = ds.list_snapshots_skipping(|path, e| {
        tracing::warn!("listing snapshots: skipping {path}: {e}");
    })?;
    if principal.sees_every_chunk() {
        return Ok(list);
    }
    let mut verdicts: HashMap<BackupGroup, bool> = HashMap::new();
    let mut keep = Vec::with_capacity(list.len());
    for snap in list.drain(..) {
        let group = &snap.path.group;
        let ok = match verdicts.get(group) {
            Some(ok) => *ok,
            None => {
                let owner = match ds.group_owner(group)? {
                    Some(o) => GroupOwner::Owned(o),
                    None => GroupOwner::Unowned,
                };
                let ok = principal.may_list(group, &owner);
                verdicts.insert(group.clone(), ok);
                ok
            }
        };
        if ok {
            keep.push(snap);
        }
    }
    Ok(keep)
}

async fn send_list(
    ds: Datastore,
    out: Outbox,
    principal: Arc<Principal>,
    stream: u8,
    filter: SnapshotFilter,
    done: Arc<AtomicBool>,
) {
    let listed = tokio::task::spawn_blocking(move || visible(&ds, &principal)).await;
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
