//! Maintenance started from the API (prune, verify, GC) runs as a task of
//! the server: the request answers at once with the task's id, the work
//! goes on on a blocking thread whether or not anyone watches, and its
//! progress, log and result can be read until it is among the oldest of
//! the last [`KEPT`] tasks. Each run also leaves its report in
//! `.reports/`, as the CLI commands do.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use hoard_auth::{Principal, Role};
use hoard_datastore::gc::{GcEvent, GcOptions, collect_garbage};
use hoard_datastore::prune::{KeepPolicy, prune};
use hoard_datastore::reports::ReportKind;
use hoard_datastore::verify::{VerifyEvent, VerifyOptions, verify};
use hoard_types::{BackupGroup, SnapshotPath};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::caller::Caller;
use super::{ApiError, ApiResult, may_maintain, owner_of, parse_body, parse_group, readable};
use crate::Shared;

/// Tasks remembered, finished or not.
const KEPT: usize = 100;
/// Log lines kept per task; later lines are counted, not kept.
const MAX_LOG_LINES: usize = 20_000;

#[derive(Debug, Clone, Serialize)]
struct TaskState {
    state: &'static str,
    finished: Option<i64>,
    progress: String,
    log_lines: usize,
    #[serde(skip)]
    log: Vec<String>,
    result: Option<Value>,
    error: Option<String>,
}

pub(crate) struct Task {
    id: String,
    kind: &'static str,
    /// Who started it, as shown.
    by: String,
    /// The principal that started it (who may see it besides admins).
    principal: String,
    started: i64,
    state: Mutex<TaskState>,
}

impl Task {
    fn lock(&self) -> std::sync::MutexGuard<'_, TaskState> {
        self.state.lock().expect("task lock")
    }

    pub fn log(&self, line: impl Into<String>) {
        let mut s = self.lock();
        s.log_lines += 1;
        if s.log.len() < MAX_LOG_LINES {
            s.log.push(line.into());
        }
    }

    pub fn progress(&self, text: impl Into<String>) {
        self.lock().progress = text.into();
    }

    fn end(&self, outcome: Result<Value, String>) {
        let mut s = self.lock();
        s.finished = Some(jiff::Timestamp::now().as_second());
        match outcome {
            Ok(v) => {
                s.state = "ok";
                s.result = Some(v);
            }
            Err(e) => {
                s.state = "failed";
                s.error = Some(e);
            }
        }
    }

    fn summary(&self) -> Value {
        let s = self.lock();
        json!({
            "id": self.id, "kind": self.kind, "by": self.by, "started": self.started,
            "state": s.state, "finished": s.finished, "progress": s.progress,
            "log_lines": s.log_lines, "error": s.error,
        })
    }

    fn detail(&self, since: usize) -> Value {
        let mut v = self.summary();
        let s = self.lock();
        v["log"] = json!(s.log.get(since..).unwrap_or_default());
        v["result"] = json!(s.result);
        v
    }
}

pub(crate) struct Tasks {
    next: AtomicU64,
    list: Mutex<VecDeque<Arc<Task>>>,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks {
            next: AtomicU64::new(1),
            list: Mutex::new(VecDeque::new()),
        }
    }

    /// A new task, unless a task for which `blocks` holds is listed.
    fn create_if(
        &self,
        kind: &'static str,
        caller: &Caller,
        blocks: impl Fn(&Task) -> bool,
    ) -> Option<Arc<Task>> {
        let mut list = self.list.lock().expect("tasks lock");
        if list.iter().any(|t| blocks(t)) {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let started = jiff::Timestamp::now().as_second();
        let task = Arc::new(Task {
            id: format!("{kind}-{started}-{n}"),
            kind,
            by: caller.display_name().to_string(),
            principal: caller.principal.name.clone(),
            started,
            state: Mutex::new(TaskState {
                state: "running",
                finished: None,
                progress: "starting".into(),
                log_lines: 0,
                log: Vec::new(),
                result: None,
                error: None,
            }),
        });
        list.push_back(task.clone());
        // The oldest finished tasks go first; running ones stay.
        while list.len() > KEPT {
            match list.iter().position(|t| t.lock().state != "running") {
                Some(i) => {
                    list.remove(i);
                }
                None => break,
            }
        }
        Some(task)
    }

    /// A new task of `kind`, unless the caller has one running (checked
    /// and created under one lock, so two requests cannot both pass).
    fn create_alone(&self, kind: &'static str, caller: &Caller) -> Option<Arc<Task>> {
        self.create_if(kind, caller, |t| {
            t.principal == caller.principal.name && t.kind == kind && t.lock().state == "running"
        })
    }

    /// A new task of `kind`, unless one (anyone's) is running.
    fn create_single(&self, kind: &'static str, caller: &Caller) -> Option<Arc<Task>> {
        self.create_if(kind, caller, |t| {
            t.kind == kind && t.lock().state == "running"
        })
    }

    fn visible_to(&self, principal: &Principal) -> Vec<Arc<Task>> {
        self.list
            .lock()
            .expect("tasks lock")
            .iter()
            .filter(|t| principal.role == Role::Admin || t.principal == principal.name)
            .cloned()
            .collect()
    }
}

/// Runs `work` as task `task` on a blocking thread; the result (or error)
/// ends the task, and `report` keeps the report of the run.
fn run(
    shared: Arc<Shared>,
    task: Arc<Task>,
    work: impl FnOnce(&Shared, &Task) -> Result<Value, String> + Send + 'static,
    after: impl FnOnce(&Arc<Shared>) + Send + 'static,
) {
    tokio::spawn(async move {
        let (s, t) = (shared.clone(), task.clone());
        let outcome = tokio::task::spawn_blocking(move || work(&s, &t))
            .await
            .unwrap_or_else(|e| Err(format!("the task failed: {e}")));
        match &outcome {
            Ok(_) => tracing::info!(task = %task.id, by = %task.by, "task finished"),
            Err(e) => tracing::warn!(task = %task.id, by = %task.by, "task failed: {e}"),
        }
        task.end(outcome);
        after(&shared);
    });
}

fn accepted(task: &Task) -> (StatusCode, Json<Value>) {
    (StatusCode::ACCEPTED, Json(json!({ "task": task.id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneRequest {
    group: Option<String>,
    keep: Keep,
    /// A prune removes only when asked to in so many words.
    #[serde(default = "yes")]
    dry_run: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Keep {
    #[serde(default)]
    last: u32,
    #[serde(default)]
    hourly: u32,
    #[serde(default)]
    daily: u32,
    #[serde(default)]
    weekly: u32,
    #[serde(default)]
    monthly: u32,
    #[serde(default)]
    yearly: u32,
}

pub(crate) async fn start_prune(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: PruneRequest = parse_body(&body?)?;
    let k = req.keep;
    let policy = KeepPolicy {
        last: k.last,
        hourly: k.hourly,
        daily: k.daily,
        weekly: k.weekly,
        monthly: k.monthly,
        yearly: k.yearly,
    };
    if policy.is_empty() {
        return Err(ApiError::bad(
            "a prune keeps at least one of last, hourly, daily, weekly, monthly, yearly (all zero would remove everything)",
        ));
    }
    if caller.principal.role == Role::Reader {
        return Err(ApiError::forbidden(format!(
            "{} (role reader) may not prune",
            caller.display_name()
        )));
    }
    // Removing snapshots over the network is for admins only: a backup
    // token sits on the machine it protects, where ransomware finds it
    // (docs/security.md). Others may see what a policy would do.
    if !req.dry_run {
        caller.require_admin("remove snapshots (a prune without dry_run)")?;
    }
    let group = req.group.as_deref().map(parse_group).transpose()?;
    if let Some(g) = &group {
        let (s, p, g) = (shared.clone(), caller.principal.clone(), g.clone());
        super::blocking(move || {
            let owner = readable(&s.ds, &p, &g)?;
            if may_maintain(&p, &g, &owner) {
                Ok(())
            } else {
                Err(ApiError::forbidden(format!("{} may not prune {g}", p.name)))
            }
        })
        .await?;
    }
    let Some(task) = shared.web.tasks.create_alone("prune", &caller) else {
        return Err(ApiError::conflict(
            "a prune you started is running already: follow it in /api/v1/tasks",
        ));
    };
    let principal = caller.principal.clone();
    let by = caller.display_name().to_string();
    let dry_run = req.dry_run;
    run(
        shared,
        task.clone(),
        move |s, t| {
            let ds = &s.ds;
            let filter = |g: &BackupGroup| {
                group.as_ref().is_none_or(|only| only == g)
                    && owner_of(ds, g).is_ok_and(|o| may_maintain(&principal, g, &o))
            };
            t.progress(if dry_run { "dry run" } else { "pruning" });
            let tz = jiff::tz::TimeZone::system();
            let decided = prune(ds, &policy, &filter, dry_run, &tz);
            let decisions = match decided {
                Ok(d) => d,
                Err(e) => {
                    if !dry_run {
                        ds.keep_report(ReportKind::Prune, &by, Err(e.to_string()));
                    }
                    return Err(e.to_string());
                }
            };
            for d in &decisions {
                let action = match (d.action, dry_run) {
                    ("remove", true) => "would remove",
                    ("remove", false) => "removed",
                    _ => "keep",
                };
                t.log(format!(
                    "{action:<12} {}  {}",
                    d.snapshot,
                    d.reason.describe()
                ));
            }
            let removed = decisions.iter().filter(|d| d.action == "remove").count();
            t.progress(format!(
                "{} kept, {removed} {}",
                decisions.len() - removed,
                if dry_run {
                    "would be removed"
                } else {
                    "removed"
                }
            ));
            let result = json!({"dry_run": dry_run, "policy": policy, "snapshots": decisions});
            if !dry_run {
                ds.keep_report(ReportKind::Prune, &by, Ok((result.clone(), true)));
            }
            Ok(result)
        },
        |_| {},
    );
    Ok(accepted(&task))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    group: Option<String>,
    snapshot: Option<String>,
}

/// A second verify or GC from the API, while one runs.
fn already_running(what: &str) -> ApiError {
    ApiError::conflict(format!(
        "a {what} started from the API is running already: follow it in /api/v1/tasks"
    ))
}

pub(crate) async fn start_verify(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require_admin("start a verify")?;
    let req: VerifyRequest = parse_body(&body?)?;
    let group = req.group.as_deref().map(parse_group).transpose()?;
    let snapshot: Option<SnapshotPath> = req
        .snapshot
        .as_deref()
        .map(|s| {
            s.parse()
                .map_err(|e| ApiError::bad(format!("bad snapshot {s:?}: {e}")))
        })
        .transpose()?;
    if group.is_some() && snapshot.is_some() {
        return Err(ApiError::bad("give a group or a snapshot, not both"));
    }
    if let Some(snap) = &snapshot {
        let (s, p, snap) = (shared.clone(), caller.principal.clone(), snap.clone());
        super::blocking(move || super::views::find_snapshot(&s.ds, &p, &snap).map(|_| ())).await?;
    }
    let Some(task) = shared.web.tasks.create_single("verify", &caller) else {
        return Err(already_running("verify"));
    };
    let by = caller.display_name().to_string();
    run(
        shared,
        task.clone(),
        move |s, t| {
            let select = |p: &SnapshotPath| {
                snapshot.as_ref().is_none_or(|x| x == p)
                    && group.as_ref().is_none_or(|g| *g == p.group)
            };
            let checked = AtomicU64::new(0);
            let report = verify(&s.ds, &select, &VerifyOptions::default(), &|e| match e {
                VerifyEvent::Selected {
                    snapshots,
                    references,
                } => {
                    t.log(format!(
                        "{snapshots} snapshots, {references} chunk references to check"
                    ));
                }
                VerifyEvent::Checked { bytes } => {
                    let total = checked.fetch_add(*bytes, Ordering::Relaxed) + bytes;
                    t.progress(format!("{} MiB checked", total >> 20));
                }
            });
            s.ds.keep_outcome(&by, &report);
            let report = report.map_err(|e| e.to_string())?;
            for v in &report.snapshots {
                let reason = v
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                t.log(format!("{:<7} {}{reason}", v.result, v.snapshot));
            }
            for f in &report.findings {
                t.log(format!(
                    "problem {}{}: {}",
                    f.snapshot,
                    f.file
                        .as_deref()
                        .map(|x| format!("/{x}"))
                        .unwrap_or_default(),
                    f.problem
                ));
            }
            let failed = report.failed();
            t.progress(format!(
                "{} snapshots, {failed} failed, {} chunks checked",
                report.snapshots.len(),
                report.chunks_checked
            ));
            serde_json::to_value(&report).map_err(|e| e.to_string())
        },
        |_| {},
    );
    Ok(accepted(&task))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GcRequest {}

pub(crate) async fn start_gc(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require_admin("start a GC")?;
    let GcRequest {} = parse_body(&body?)?;
    let Some(task) = shared.web.tasks.create_single("gc", &caller) else {
        return Err(already_running("GC"));
    };
    let by = caller.display_name().to_string();
    run(
        shared,
        task.clone(),
        move |s, t| {
            let report = collect_garbage(&s.ds, &GcOptions::default(), &|e| match e {
                GcEvent::Started { cutoff } => {
                    t.log(format!("cutoff {}", cutoff.as_second()));
                }
                GcEvent::Listed { snapshots, indexes } => {
                    t.log(format!("{snapshots} snapshots, {indexes} indexes to mark"));
                }
                GcEvent::Marking {
                    indexes_done,
                    indexes,
                    chunks,
                } => t.progress(format!(
                    "marking: {indexes_done}/{indexes} indexes, {chunks} chunks"
                )),
                GcEvent::Marked => t.log("marked"),
                GcEvent::Sweeping { prefixes_done } => {
                    t.progress(format!("sweeping: {prefixes_done}/256 directories"));
                }
                GcEvent::Swept => t.log("swept"),
            });
            s.ds.keep_outcome(&by, &report);
            let report = report.map_err(|e| e.to_string())?;
            t.log(format!(
                "removed {} chunks ({} MiB), kept {} chunks ({} MiB), {} missing",
                report.removed_chunks,
                report.removed_bytes >> 20,
                report.kept_chunks,
                report.kept_bytes >> 20,
                report.missing_chunks
            ));
            t.progress("done");
            serde_json::to_value(&report).map_err(|e| e.to_string())
        },
        // What GC freed shows in the usage chart at once.
        |shared| {
            let shared = shared.clone();
            tokio::spawn(async move { super::usage::sample(&shared).await });
        },
    );
    Ok(accepted(&task))
}

pub(crate) async fn list(State(shared): State<Arc<Shared>>, caller: Caller) -> Json<Value> {
    let tasks = shared.web.tasks.visible_to(&caller.principal);
    Json(Value::Array(
        tasks.iter().rev().map(|t| t.summary()).collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Since {
    #[serde(default)]
    since: usize,
}

pub(crate) async fn get(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Since>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Path(id) = path?;
    let Query(Since { since }) = query?;
    shared
        .web
        .tasks
        .visible_to(&caller.principal)
        .iter()
        .find(|t| t.id == id)
        .map(|t| Json(t.detail(since)))
        .ok_or_else(|| ApiError::not_found(format!("no task {id}")))
}

/// The request bodies of the maintenance endpoints, for the fuzz target.
pub(crate) fn fuzz(data: &[u8]) {
    let _ = parse_body::<PruneRequest>(data);
    let _ = parse_body::<VerifyRequest>(data);
    let _ = parse_body::<GcRequest>(data);
    let _ = parse_body::<Since>(data);
}
