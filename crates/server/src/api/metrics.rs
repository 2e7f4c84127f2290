//! `/metrics` in the OpenMetrics text format (which Prometheus scrapes
//! natively), through the Prometheus project's own client crate.
//!
//! Counters are bumped where the work happens (uploads, snapshots,
//! connections, HTTP requests); the datastore's gauges are set from the
//! usage count and the last reports when a scrape comes in, so a scrape
//! never walks the chunk store.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hoard_datastore::reports::ReportKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::caller::Caller;
use super::{ApiError, ApiResult};
use crate::Shared;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    status: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub(crate) struct Metrics {
    registry: Registry,
    pub chunk_bytes_received: Counter,
    pub chunks_received: Counter,
    pub chunks_deduplicated: Counter,
    pub backups_started: Counter,
    pub backups_finished: Counter,
    pub backups_failed: Counter,
    pub connections: Gauge,
    pub connections_opened: Counter,
    http: Family<HttpLabels, Histogram, fn() -> Histogram>,
    fs_bytes: Gauge,
    fs_avail_bytes: Gauge,
    chunks: Gauge,
    chunk_bytes: Gauge,
    last_gc_time: Gauge,
    last_gc_success: Gauge,
    last_verify_time: Gauge,
    last_verify_success: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hoard");
        let http: Family<HttpLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let m = Metrics {
            chunk_bytes_received: Counter::default(),
            chunks_received: Counter::default(),
            chunks_deduplicated: Counter::default(),
            backups_started: Counter::default(),
            backups_finished: Counter::default(),
            backups_failed: Counter::default(),
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            http: http.clone(),
            fs_bytes: Gauge::default(),
            fs_avail_bytes: Gauge::default(),
            chunks: Gauge::default(),
            chunk_bytes: Gauge::default(),
            last_gc_time: Gauge::default(),
            last_gc_success: Gauge::default(),
            last_verify_time: Gauge::default(),
            last_verify_success: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "chunk_bytes_received",
            "Chunk bytes uploaded by clients",
            m.chunk_bytes_received.clone(),
        );
        r.register(
            "chunks_received",
            "Chunks uploaded by clients",
            m.chunks_received.clone(),
        );
        r.register(
            "chunks_deduplicated",
            "Uploaded chunks the store already held",
            m.chunks_deduplicated.clone(),
        );
        r.register(
            "backups_started",
            "Snapshots created",
            m.backups_started.clone(),
        );
        r.register(
            "backups_finished",
            "Snapshots closed complete",
            m.backups_finished.clone(),
        );
        r.register(
            "backups_failed",
            "Snapshots closed incomplete",
            m.backups_failed.clone(),
        );
        r.register(
            "connections",
            "Packet-protocol sessions open",
            m.connections.clone(),
        );
        r.register(
            "connections_opened",
            "Packet-protocol sessions opened",
            m.connections_opened.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP requests by method and status",
            http,
        );
        r.register(
            "datastore_fs_bytes",
            "Size of the datastore's file system",
            m.fs_bytes.clone(),
        );
        r.register(
            "datastore_fs_avail_bytes",
            "Bytes available to the datastore on its file system",
            m.fs_avail_bytes.clone(),
        );
        r.register(
            "datastore_chunks",
            "Chunks in the store at the last count",
            m.chunks.clone(),
        );
        r.register(
            "datastore_chunk_bytes",
            "Bytes the chunks occupied at the last count",
            m.chunk_bytes.clone(),
        );
        r.register(
            "last_gc_timestamp_seconds",
            "When the last GC ended",
            m.last_gc_time.clone(),
        );
        r.register(
            "last_gc_success",
            "1 if the last GC succeeded and found every chunk",
            m.last_gc_success.clone(),
        );
        r.register(
            "last_verify_timestamp_seconds",
            "When the last verify ended",
            m.last_verify_time.clone(),
        );
        r.register(
            "last_verify_success",
            "1 if the last verify found nothing wrong",
            m.last_verify_success.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn http_request(&self, method: &str, status: u16, took: Duration) {
        self.http
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                status: status.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) async fn scrape(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> ApiResult<Response> {
    // The counters are server-wide: whoever reads them learns of every
    // group's backups, and the deduplication counter says whether an
    // upload was new. So: admins, and readers of everything (who may
    // read all of it anyway); never a backup token on a client.
    let everything = super::sees_server_wide(&caller.principal);
    if !everything {
        return Err(ApiError::forbidden(format!(
            "{} may not read the metrics: they take an admin, or a reader of every path",
            caller.display_name()
        )));
    }
    let s = shared.clone();
    let reports = super::blocking(move || {
        let gc = s.ds.last_report(ReportKind::Gc);
        let verify = s.ds.last_report(ReportKind::Verify);
        match (gc, verify) {
            (Ok(g), Ok(v)) => Ok((g, v)),
            (Err(e), _) | (_, Err(e)) => Err(ApiError::internal("reading the reports", e)),
        }
    })
    .await?;
    let m = &shared.web.metrics;
    m.connections.set(gauge(shared.web.live.count() as u64));
    if let Some(u) = shared.web.usage.latest() {
        m.fs_bytes.set(gauge(u.fs_total));
        m.fs_avail_bytes.set(gauge(u.fs_avail));
        m.chunks.set(gauge(u.chunks));
        m.chunk_bytes.set(gauge(u.chunk_bytes));
    }
    if let Some(g) = reports.0 {
        m.last_gc_time.set(g.time);
        m.last_gc_success.set(g.ok as i64);
    }
    if let Some(v) = reports.1 {
        m.last_verify_time.set(v.time);
        m.last_verify_success.set(v.ok as i64);
    }
    let text = m
        .encode()
        .map_err(|e| ApiError::internal("encoding the metrics", e))?;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
