//! The HTTP API, the web page and `/metrics` on the TLS port
//! (docs/api.md).
//!
//! [`crate::http`] reads the first request head of every TLS connection
//! that did not choose the packet protocol by ALPN; the seed's version 1
//! upgrade and ticket login stay there, and everything else comes here:
//! hyper serves the connection (keep-alive, bodies, timeouts) and axum
//! routes each request. Every handler learns its caller from [`Caller`]
//! (a token, or a user's session with its CSRF token checked on every
//! change), asks [`hoard_auth`] what that caller may do, and does its
//! datastore work on blocking threads.
//!
//! - [`sessions`]: who is logged in, and their CSRF tokens.
//! - [`caller`]: turning a request's credentials into a principal.
//! - [`views`]: read-only endpoints: status, usage, groups, snapshots,
//!   reports, connections, tokens.
//! - [`browse`]: a tree archive's directories, one file, a whole image.
//! - [`tasks`]: prune, verify and GC run as tasks that outlive the request.
//! - [`metrics`]: counters the packet protocol updates, and `/metrics`.
//! - [`page`]: the page's three static files.

pub(crate) mod browse;
pub(crate) mod caller;
pub(crate) mod idle;
pub(crate) mod live;
pub(crate) mod metrics;
pub(crate) mod page;
pub(crate) mod sessions;
pub(crate) mod slots;
pub(crate) mod tasks;
pub(crate) mod usage;
pub(crate) mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hoard_auth::{GroupOwner, Principal};
use hoard_datastore::Datastore;
use hoard_types::{BackupGroup, SnapshotPath};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::Shared;

/// Downloads running at once, all callers together (a principal holds at
/// most a quarter).
const MAX_DOWNLOADS: usize = 32;
/// HTTP connections at once (and never more than a quarter of the
/// server's connection limit, so they never crowd out backups), and from
/// one address (an IPv6 /64 counts as one).
const MAX_HTTP_CONNECTIONS: usize = 256;
const MAX_HTTP_PER_ADDRESS: usize = 32;
/// Listings and archive reads running at once.
const MAX_READS: usize = 4;
/// Largest request body (logins, prune and verify requests).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// A request head must arrive whole this long after the previous
/// response (or the connection) began; idle keep-alive connections close.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// An HTTP connection that moves no byte either way this long is closed
/// (or sooner, with a shorter `--idle-timeout`).
const MAX_IDLE: Duration = Duration::from_secs(60);
/// After this an HTTP connection takes no new request.
const MAX_LIFETIME: Duration = Duration::from_secs(600);

/// An error answered as `{"error": "…"}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }
    /// A datastore error: its text names files, so it goes to the log,
    /// and the caller learns only what failed.
    pub fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
        warn!("{what}: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} failed; the server's log says why"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Rejections of axum's extractors (a bad query, path or body) as JSON
/// errors with their status (400, 413, …).
macro_rules! from_rejection {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(r: $t) -> ApiError {
                ApiError::new(r.status(), r.body_text())
            }
        }
    )*};
}
from_rejection!(
    axum::extract::rejection::QueryRejection,
    axum::extract::rejection::PathRejection,
    axum::extract::rejection::BytesRejection
);

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A JSON body: at most [`MAX_BODY`], unknown fields refused.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let body = if body.is_empty() {
        b"{}" as &[u8]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("bad request body: {e}")))
}

/// A place among the listings and archive reads running at once (waited
/// for: a burst of requests queues instead of taking every blocking
/// thread).
///
/// The caller moves the permit into the blocking work it guards: a
/// client that hangs up drops its handler, never the work, and the place
/// must stay taken until the work ends.
pub(crate) async fn reading(shared: &Shared) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
    shared
        .web
        .reads
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal("a request", e))
}

/// Whether `p` may see server-wide figures (metrics, the chunk store's
/// size and history): they speak of every group's backups, so admins and
/// readers of every path only, never a backup token on a client.
pub(crate) fn sees_server_wide(p: &Principal) -> bool {
    use hoard_auth::{Role, Scope};
    p.role == Role::Admin
        || (p.role == Role::Reader && (p.scopes.is_empty() || p.scopes.contains(&Scope::All)))
}

/// Runs datastore work on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal("a request", e))?
}

pub(crate) fn parse_group(s: &str) -> ApiResult<BackupGroup> {
    s.parse()
        .map_err(|e| ApiError::bad(format!("bad group {s:?}: {e}")))
}

pub(crate) fn parse_snapshot(ty: &str, id: &str, time: &str) -> ApiResult<SnapshotPath> {
    let s = format!("{ty}/{id}/{time}");
    s.parse()
        .map_err(|e| ApiError::bad(format!("bad snapshot {s:?}: {e}")))
}

/// The owner of `group` as authorization needs it.
pub(crate) fn owner_of(ds: &Datastore, group: &BackupGroup) -> ApiResult<GroupOwner> {
    match ds.group_owner(group) {
        Ok(Some(o)) => Ok(GroupOwner::Owned(o)),
        Ok(None) => match ds.group_exists(group) {
            Ok(true) => Ok(GroupOwner::Unowned),
            Ok(false) => Ok(GroupOwner::New),
            Err(e) => Err(ApiError::internal("reading a group", e)),
        },
        Err(e) => Err(ApiError::internal("reading a group's owner", e)),
    }
}

/// Checks `principal` may read `group`; a group it may not read is
/// answered as missing, so names outside its paths cannot be probed.
pub(crate) fn readable(
    ds: &Datastore,
    principal: &Principal,
    group: &BackupGroup,
) -> ApiResult<GroupOwner> {
    let owner = owner_of(ds, group)?;
    if owner == GroupOwner::New || principal.may_read(group, &owner).is_err() {
        return Err(ApiError::not_found(format!("no group {group}")));
    }
    Ok(owner)
}

/// Whether `principal` may protect, unprotect and prune in `group`:
/// admins anywhere, backup principals in the groups they own within
/// their paths.
pub(crate) fn may_maintain(principal: &Principal, group: &BackupGroup, owner: &GroupOwner) -> bool {
    use hoard_auth::Role;
    match principal.role {
        Role::Admin => true,
        Role::Backup => {
            principal.covers(group) && matches!(owner, GroupOwner::Owned(o) if *o == principal.name)
        }
        Role::Reader => false,
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/login", post(caller::login))
        .route("/logout", post(caller::logout))
        .route("/me", get(caller::me))
        .route("/status", get(views::status))
        .route("/usage", get(views::usage))
        .route("/groups", get(views::groups))
        .route("/snapshots", get(views::snapshots))
        .route("/snapshots/{ty}/{id}/{time}", get(views::snapshot))
        .route("/snapshots/{ty}/{id}/{time}/protect", post(views::protect))
        .route(
            "/snapshots/{ty}/{id}/{time}/unprotect",
            post(views::unprotect),
        )
        .route(
            "/snapshots/{ty}/{id}/{time}/archives/{name}/list",
            get(browse::list),
        )
        .route(
            "/snapshots/{ty}/{id}/{time}/archives/{name}/file",
            get(browse::file),
        )
        .route(
            "/snapshots/{ty}/{id}/{time}/images/{name}",
            get(browse::image),
        )
        .route("/prune", post(tasks::start_prune))
        .route("/verify", post(tasks::start_verify))
        .route("/gc", post(tasks::start_gc))
        .route("/tasks", get(tasks::list))
        .route("/tasks/{id}", get(tasks::get))
        .route("/reports", get(views::reports))
        .route("/connections", get(views::connections))
        .route("/tokens", get(views::tokens))
        .fallback(|| async { ApiError::not_found("no such endpoint") });
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics::scrape))
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        .fallback(|| async { ApiError::not_found("no such page") })
        .layer(middleware::from_fn_with_state(shared.clone(), observe))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// Every response: its latency in the metrics, and headers that keep
/// browsers from caching API answers, sniffing types or framing the page.
async fn observe(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // A bounded label: a peer chooses the method.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        _ => "other",
    };
    let mut response = match same_origin(&req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    shared
        .web
        .metrics
        .http_request(method, response.status().as_u16(), started.elapsed());
    let h = response.headers_mut();
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    response
}

/// Every request that changes something must be JSON (a form of another
/// site cannot send that without the browser asking this server first,
/// which it never allows), and must come from this server's own page if
/// the browser says where it comes from. With the CSRF token this keeps
/// other sites from logging a browser in or acting with its session.
fn same_origin(req: &Request) -> ApiResult<()> {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return Ok(());
    }
    let h = req.headers();
    let json = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a request that changes something is JSON (Content-Type: application/json)",
        ));
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
        let ours =
            host.is_some_and(|host| origin.as_bytes() == format!("https://{host}").as_bytes());
        if !ours {
            return Err(ApiError::forbidden(
                "a request from another site's page is refused",
            ));
        }
    }
    Ok(())
}

/// Where a request came from (for the log and login throttling).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

/// Serves HTTP on one TLS connection until the peer closes, a request
/// head times out, or the server stops.
pub(crate) async fn serve<IO>(
    io: IO,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // No progress either way this long ends the connection: an idle
    // keep-alive, a body that stops half-way, a download nobody reads.
    let shared_idle = shared.config.limits.idle_timeout.min(MAX_IDLE);
    let app = router(shared).layer(axum::Extension(Peer(peer)));
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    let idle = shared_idle;
    let io = idle::Idle::new(io, idle);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let stopping = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                info!(%peer, "HTTP connection ended: {e}");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => true,
        // Keep-alive connections are recycled: the request in flight (a
        // long download, say) finishes, then the connection closes, so
        // no one holds a place by asking something now and then.
        _ = tokio::time::sleep(MAX_LIFETIME) => false,
    };
    conn.as_mut().graceful_shutdown();
    if stopping {
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    } else {
        let _ = conn.await;
    }
}

/// Everything the API parses of a peer's bytes before any datastore work
/// (credentials, archive paths, request bodies), for the fuzz target.
pub(crate) fn fuzz(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = browse::archive_path(&text) {
        assert!(!p.split('/').any(|c| c == ".." || c == "."));
    }
    caller::fuzz(data);
    tasks::fuzz(data);
}

/// Counts a snapshot a session closed, and takes it off the session's
/// list of backups.
pub(crate) fn snapshot_closed(
    shared: &Shared,
    live_id: u64,
    path: &SnapshotPath,
    closed: &hoard_datastore::Result<hoard_datastore::SnapshotState>,
) {
    let m = &shared.web.metrics;
    match closed {
        Ok(hoard_datastore::SnapshotState::Complete) => m.backups_finished.inc(),
        _ => m.backups_failed.inc(),
    };
    shared.web.live.backup_closed(live_id, &path.to_string());
}

/// Server-wide state of the HTTP side.
pub(crate) struct WebState {
    pub sessions: sessions::Sessions,
    pub tasks: tasks::Tasks,
    pub metrics: metrics::Metrics,
    pub live: live::Live,
    pub usage: usage::UsageCache,
    /// When the server started, seconds since the epoch.
    pub started: i64,
    /// Logins being checked at once (each Argon2id takes 19 MiB).
    pub logins: Arc<tokio::sync::Semaphore>,
    /// File and image downloads at once (each holds a few chunks), all
    /// callers and per principal.
    pub downloads: slots::Slots<String>,
    /// HTTP connections at once, all and per address: browsers and
    /// scripts never take the places of backup connections.
    pub http_connections: slots::Slots<slots::AddressKey>,
    /// Requests that list snapshots or read archives at once (each reads
    /// manifests or tables on a blocking thread); the rest wait.
    pub reads: Arc<tokio::sync::Semaphore>,
    /// Failed logins by address, for the backoff.
    pub failed_logins: caller::Failures,
}

impl WebState {
    pub fn new(limits: &crate::Limits) -> WebState {
        WebState {
            sessions: sessions::Sessions::new(),
            tasks: tasks::Tasks::new(),
            metrics: metrics::Metrics::new(),
            live: live::Live::default(),
            usage: usage::UsageCache::default(),
            started: jiff::Timestamp::now().as_second(),
            logins: Arc::new(tokio::sync::Semaphore::new(4)),
            downloads: slots::Slots::new(MAX_DOWNLOADS, MAX_DOWNLOADS / 4),
            http_connections: slots::Slots::new(
                MAX_HTTP_CONNECTIONS.min(limits.max_connections / 4).max(1),
                MAX_HTTP_PER_ADDRESS,
            ),
            reads: Arc::new(tokio::sync::Semaphore::new(MAX_READS)),
            failed_logins: caller::Failures::default(),
        }
    }
}
