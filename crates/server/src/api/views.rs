//! Read-only endpoints (status, usage, groups, snapshots, reports,
//! connections, tokens) and protect/unprotect.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use hoard_auth::{GroupOwner, Principal};
use hoard_datastore::reports::ReportKind;
use hoard_datastore::{Datastore, Error as DsError, FileKind, SnapshotInfo};
use hoard_types::{ARCHIVE_META_SUFFIX, BackupGroup, SnapshotPath};
use serde::Deserialize;
use serde_json::{Value, json};

use super::caller::Caller;
use super::{ApiError, ApiResult, blocking, may_maintain, parse_group, readable};
use crate::Shared;
use crate::authorize::{Owners, visible_snapshots};

const DATA_SUFFIX: &str = ".hdata";

/// The snapshots of the groups `principal` may read (of `only`, if
/// given), with each group's owner.
pub(crate) fn visible(
    ds: &Datastore,
    principal: &Principal,
    only: Option<&BackupGroup>,
) -> ApiResult<(Vec<SnapshotInfo>, Owners)> {
    visible_snapshots(ds, principal, |g| only.is_none_or(|o| o == g))
        .map_err(|e| ApiError::internal("listing snapshots", e))
}

/// A snapshot as the API shows it (docs/api.md).
pub(crate) fn snapshot_json(info: &SnapshotInfo, owner: Option<&str>) -> Value {
    let m = &info.manifest;
    let mut archives = Vec::new();
    let mut images = Vec::new();
    let files: Vec<Value> = m
        .files
        .iter()
        .map(|f| {
            let mut v = json!({
                "name": f.name,
                "size": f.file_size,
                "chunks": f.chunk_count,
            });
            match f.kind {
                FileKind::Fixed => {
                    let image = f.name.strip_suffix(".fidx").unwrap_or(&f.name);
                    v["kind"] = json!("image");
                    v["image"] = json!(image);
                    images.push(image.to_string());
                }
                FileKind::Dynamic => {
                    let stem = f.name.strip_suffix(".didx").unwrap_or(&f.name);
                    if let Some(a) = stem.strip_suffix(ARCHIVE_META_SUFFIX) {
                        v["kind"] = json!("archive-meta");
                        v["archive"] = json!(a);
                        if m.file(&format!("{a}{DATA_SUFFIX}.didx")).is_some() {
                            archives.push(a.to_string());
                        }
                    } else if let Some(a) = stem.strip_suffix(DATA_SUFFIX) {
                        v["kind"] = json!("archive-data");
                        v["archive"] = json!(a);
                    } else {
                        v["kind"] = json!("dynamic");
                    }
                }
            }
            v
        })
        .collect();
    json!({
        "snapshot": info.path.to_string(),
        "group": info.path.group.to_string(),
        "time": info.path.time.epoch(),
        "state": m.state,
        "protected": m.protected,
        "encrypted": m.encrypted,
        "verify": m.verification.as_ref().map(|v| json!({"state": v.state, "time": v.time})),
        "size": m.files.iter().map(|f| f.file_size).sum::<u64>(),
        "owner": owner,
        "files": files,
        "archives": archives,
        "images": images,
    })
}

fn fs_gauges(shared: &Shared) -> Value {
    match shared.web.usage.latest() {
        Some(u) => json!({
            "fs_total": u.fs_total, "fs_used": u.fs_used, "fs_avail": u.fs_avail,
            "chunks": u.chunks, "chunk_bytes": u.chunk_bytes, "counted": u.time,
        }),
        None => json!({
            "fs_total": null, "fs_used": null, "fs_avail": null,
            "chunks": null, "chunk_bytes": null, "counted": null,
        }),
    }
}

pub(crate) async fn status(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let reading = super::reading(&shared).await?;
    let s = shared.clone();
    let principal = caller.principal.clone();
    let (groups, snapshots, format) = blocking(move || {
        // The place goes with the work (see `reading`).
        let _reading = reading;
        let (list, owners) = visible(&s.ds, &principal, None)?;
        let format = std::fs::read_to_string(s.ds.root().join(".hoard-datastore"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        Ok((owners.len(), list.len(), format))
    })
    .await?;
    // The chunk store's size is server-wide: not for a backup token
    // (docs/security.md, "The web page and HTTP API").
    let mut ds = if super::sees_server_wide(&caller.principal) {
        fs_gauges(&shared)
    } else {
        json!({})
    };
    ds["format"] = json!(format);
    ds["object_storage"] = json!(shared.ds.object_storage().is_some());
    // Where the datastore lives is for admins only.
    if caller.is_admin() {
        ds["path"] = json!(shared.ds.root().display().to_string());
    }
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started": shared.web.started,
        "datastore": ds,
        "groups": groups,
        "snapshots": snapshots,
    })))
}

pub(crate) async fn usage(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    if !super::sees_server_wide(&caller.principal) {
        return Err(ApiError::forbidden(format!(
            "{} may not see the datastore's history: it takes an admin, or a reader of every path",
            caller.display_name()
        )));
    }
    let s = shared.clone();
    let samples = blocking(move || {
        s.ds.usage_history()
            .map_err(|e| ApiError::internal("reading the usage history", e))
    })
    .await?;
    Ok(Json(json!({ "samples": samples })))
}

pub(crate) async fn groups(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let reading = super::reading(&shared).await?;
    let s = shared.clone();
    let principal = caller.principal.clone();
    let out = blocking(move || {
        // The place goes with the work (see `reading`).
        let _reading = reading;
        let (list, owners) = visible(&s.ds, &principal, None)?;
        let mut by_group: BTreeMap<String, Vec<&SnapshotInfo>> = BTreeMap::new();
        for info in &list {
            by_group
                .entry(info.path.group.to_string())
                .or_default()
                .push(info);
        }
        let mut out = Vec::new();
        for (group, snaps) in by_group {
            // Listed oldest first.
            let Some(last) = snaps.iter().max_by_key(|s| s.path.time) else {
                continue;
            };
            let complete =
                |s: &&&SnapshotInfo| s.manifest.state == hoard_datastore::SnapshotState::Complete;
            let last_complete = snaps
                .iter()
                .filter(complete)
                .map(|s| s.path.time.epoch())
                .max();
            let verify_failed = snaps.iter().any(|s| {
                s.manifest
                    .verification
                    .as_ref()
                    .is_some_and(|v| v.state == hoard_datastore::VerifyState::Failed)
            });
            let last_ok = last.manifest.state == hoard_datastore::SnapshotState::Complete;
            let (ty, id) = group.split_once('/').unwrap_or((&group, ""));
            out.push(json!({
                "group": group,
                "type": ty,
                "id": id,
                "owner": owners.get(&group).cloned().flatten(),
                "snapshots": snaps.len(),
                "protected": snaps.iter().filter(|s| s.manifest.protected).count(),
                "last": {
                    "snapshot": last.path.to_string(),
                    "time": last.path.time.epoch(),
                    "state": last.manifest.state,
                    "verify": last.manifest.verification.as_ref().map(|v| v.state),
                    "size": last.manifest.files.iter().map(|f| f.file_size).sum::<u64>(),
                },
                "last_complete": last_complete,
                "failing": !last_ok || verify_failed,
            }));
        }
        Ok(out)
    })
    .await?;
    Ok(Json(Value::Array(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupQuery {
    group: Option<String>,
}

pub(crate) async fn snapshots(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    query: Result<Query<GroupQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = query?;
    let only = q.group.as_deref().map(parse_group).transpose()?;
    let reading = super::reading(&shared).await?;
    let s = shared.clone();
    let principal = caller.principal.clone();
    let out = blocking(move || {
        // The place goes with the work (see `reading`).
        let _reading = reading;
        if let Some(g) = &only {
            readable(&s.ds, &principal, g)?;
        }
        let (list, owners) = visible(&s.ds, &principal, only.as_ref())?;
        Ok(list
            .iter()
            .rev()
            .map(|i| {
                let owner = owners.get(&i.path.group.to_string()).cloned().flatten();
                snapshot_json(i, owner.as_deref())
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(Value::Array(out)))
}

/// The snapshot named by a path, after checking the caller may read its
/// group; with its info and its group's owner.
pub(crate) fn find_snapshot(
    ds: &Datastore,
    principal: &Principal,
    snap: &SnapshotPath,
) -> ApiResult<(SnapshotInfo, GroupOwner)> {
    let owner = readable(ds, principal, &snap.group)?;
    match ds.load_manifest(snap) {
        Ok(manifest) => Ok((
            SnapshotInfo {
                path: snap.clone(),
                manifest,
            },
            owner,
        )),
        Err(DsError::SnapshotNotFound(_)) => {
            Err(ApiError::not_found(format!("no snapshot {snap}")))
        }
        Err(e) if !ds.snapshot_dir(snap).exists() => {
            tracing::debug!("{snap}: {e}");
            Err(ApiError::not_found(format!("no snapshot {snap}")))
        }
        Err(e) => Err(ApiError::internal("reading a manifest", e)),
    }
}

pub(crate) type SnapPath = Path<(String, String, String)>;

pub(crate) fn snapshot_of(path: Result<SnapPath, PathRejection>) -> ApiResult<SnapshotPath> {
    let Path((ty, id, time)) = path?;
    super::parse_snapshot(&ty, &id, &time)
}

pub(crate) async fn snapshot(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    path: Result<SnapPath, PathRejection>,
) -> ApiResult<Json<Value>> {
    let snap = snapshot_of(path)?;
    let reading = super::reading(&shared).await?;
    let s = shared.clone();
    let principal = caller.principal.clone();
    blocking(move || {
        // The place goes with the work (see `reading`).
        let _reading = reading;
        let (info, owner) = find_snapshot(&s.ds, &principal, &snap)?;
        let owner = match owner {
            GroupOwner::Owned(o) => Some(o),
            _ => None,
        };
        Ok(Json(snapshot_json(&info, owner.as_deref())))
    })
    .await
}

async fn set_protected(
    shared: Arc<Shared>,
    caller: Caller,
    path: Result<SnapPath, PathRejection>,
    protect: bool,
) -> ApiResult<Json<Value>> {
    let snap = snapshot_of(path)?;
    // Unprotecting opens a snapshot to removal: nothing on the network
    // but an admin may take a snapshot's protection away (a backup token
    // sits on the machine it protects, where ransomware finds it).
    if !protect {
        caller.require_admin("unprotect a snapshot")?;
    }
    let who = caller.display_name().to_string();
    let principal = caller.principal.clone();
    blocking(move || {
        let (_, owner) = find_snapshot(&shared.ds, &principal, &snap)?;
        if !may_maintain(&principal, &snap.group, &owner) {
            return Err(ApiError::forbidden(format!(
                "{who} (role {}) may not change protection in {}",
                principal.role, snap.group
            )));
        }
        match shared
            .ds
            .update_manifest(&snap, |m| std::mem::replace(&mut m.protected, protect))
        {
            Ok(was) => {
                if was != protect {
                    tracing::info!(by = %who, "{snap} {}", if protect { "protected" } else { "unprotected" });
                }
                Ok(Json(json!({"snapshot": snap.to_string(), "protected": protect})))
            }
            Err(DsError::SnapshotBusy(_)) => Err(ApiError::conflict(format!(
                "{snap} is being written or changed; try again when it is finished"
            ))),
            Err(DsError::SnapshotNotFound(_)) => {
                Err(ApiError::not_found(format!("no snapshot {snap}")))
            }
            Err(e) => Err(ApiError::internal("changing a manifest", e)),
        }
    })
    .await
}

pub(crate) async fn protect(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    path: Result<SnapPath, PathRejection>,
) -> ApiResult<Json<Value>> {
    set_protected(shared, caller, path, true).await
}

pub(crate) async fn unprotect(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    path: Result<SnapPath, PathRejection>,
) -> ApiResult<Json<Value>> {
    set_protected(shared, caller, path, false).await
}

pub(crate) async fn reports(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_admin("read the maintenance reports")?;
    let s = shared.clone();
    blocking(move || {
        let mut out = serde_json::Map::new();
        for kind in ReportKind::ALL {
            let r =
                s.ds.last_report(kind)
                    .map_err(|e| ApiError::internal("reading the reports", e))?;
            out.insert(kind.name().into(), json!(r));
        }
        Ok(Json(Value::Object(out)))
    })
    .await
}

pub(crate) async fn connections(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_admin("list the connections")?;
    Ok(Json(json!(shared.web.live.list())))
}

pub(crate) async fn tokens(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_admin("list the tokens")?;
    let store = shared.tokens.clone();
    blocking(move || {
        store
            .list()
            .map(|t| Json(json!(t)))
            .map_err(|e| ApiError::internal("reading the tokens", e))
    })
    .await
}
