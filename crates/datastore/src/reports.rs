//! What maintenance last did, and how the datastore grew: small JSON files
//! under `.reports/` that the web page and `/metrics` read
//! (docs/format.md, "Reports").
//!
//! - `gc.json`, `prune.json`, `verify.json`: the last report of each, by
//!   whoever ran it (a CLI command or a task of the server).
//! - `usage.json`: samples of the datastore's size over time, at most
//!   [`MAX_USAGE_SAMPLES`], oldest dropped first.
//!
//! Each is replaced atomically (temp file, fsync, rename). They are
//! records for people, not state: a missing or damaged one is reported as
//! absent and loses nothing, and a datastore without `.reports/` (every
//! earlier version) opens unchanged.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::datastore::Datastore;
use crate::error::{IoContext, Result};
use crate::fsutil::{create_dir_durable, write_atomic_as};

pub(crate) const REPORTS_DIR: &str = ".reports";
/// How the temp files of report writes begin.
pub const REPORT_TEMP: &str = "report.";
/// Samples kept in `usage.json`: hourly for about 80 days.
pub const MAX_USAGE_SAMPLES: usize = 2000;
/// Largest report file read back (a verify report of a huge damaged
/// datastore is cut to its summary before it gets near this).
const MAX_REPORT_FILE: u64 = 16 << 20;

/// Which maintenance a report is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Gc,
    Prune,
    Verify,
}

impl ReportKind {
    pub const ALL: [ReportKind; 3] = [ReportKind::Gc, ReportKind::Prune, ReportKind::Verify];

    pub fn name(self) -> &'static str {
        match self {
            ReportKind::Gc => "gc",
            ReportKind::Prune => "prune",
            ReportKind::Verify => "verify",
        }
    }
}

/// A maintenance report that says by itself whether all was well.
pub trait Outcome: Serialize {
    const KIND: ReportKind;
    /// A GC that found every chunk; a verify that found nothing wrong.
    fn ok(&self) -> bool;
}

impl Outcome for crate::gc::GcReport {
    const KIND: ReportKind = ReportKind::Gc;
    fn ok(&self) -> bool {
        self.missing_chunks == 0
    }
}

impl Outcome for crate::verify::VerifyReport {
    const KIND: ReportKind = ReportKind::Verify;
    fn ok(&self) -> bool {
        self.failed() == 0 && self.findings.is_empty()
    }
}

/// One maintenance run, as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReport {
    /// When it ended, seconds since the epoch.
    pub time: i64,
    /// Who ran it: a token or user, or `cli` for a command on the server.
    pub by: String,
    /// Whether it succeeded (a verify that found damage did not).
    pub ok: bool,
    /// Why it failed, when it did not get to a report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The report, as `--output json` prints it.
    pub report: serde_json::Value,
}

/// The datastore's size at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSample {
    pub time: i64,
    /// The file system holding the datastore.
    pub fs_total: u64,
    pub fs_used: u64,
    pub fs_avail: u64,
    /// Chunk files in `.chunks/` and the bytes they occupy.
    pub chunks: u64,
    pub chunk_bytes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsageFile {
    samples: Vec<UsageSample>,
}

impl Datastore {
    fn reports_dir(&self) -> PathBuf {
        self.root().join(REPORTS_DIR)
    }

    fn write_report_file(&self, name: &str, data: &[u8]) -> Result<()> {
        let dir = self.reports_dir();
        if !dir.is_dir() {
            create_dir_durable(&dir)?;
        }
        // Named apart from the temp files of data (chunks, indexes,
        // manifests), whose leftovers tests look for.
        write_atomic_as(
            self.tmp(),
            &dir.join(name),
            data,
            &format!("{REPORT_TEMP}{name}"),
        )
    }

    fn read_report_file<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>> {
        let path = self.reports_dir().join(name);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
        };
        if meta.len() > MAX_REPORT_FILE {
            tracing::warn!(
                "{}: {} bytes, too large to read",
                path.display(),
                meta.len()
            );
            return Ok(None);
        }
        let data = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        match serde_json::from_slice(&data) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::warn!("{} is damaged, taken as absent: {e}", path.display());
                Ok(None)
            }
        }
    }

    /// Keeps `report` as the last of its kind.
    pub fn save_report(&self, kind: ReportKind, report: &StoredReport) -> Result<()> {
        let data = serde_json::to_vec(report).expect("a report serializes");
        self.write_report_file(&format!("{}.json", kind.name()), &data)
    }

    /// Keeps how a run of `kind` by `by` ended: its report and whether it
    /// found everything well, or why it failed. Never fails the run: a
    /// report that cannot be written is logged.
    pub fn keep_report(
        &self,
        kind: ReportKind,
        by: &str,
        outcome: std::result::Result<(serde_json::Value, bool), String>,
    ) {
        let (report, ok, error) = match outcome {
            Ok((report, ok)) => (report, ok, None),
            Err(e) => (serde_json::Value::Null, false, Some(e)),
        };
        let stored = StoredReport {
            time: jiff::Timestamp::now().as_second(),
            by: by.to_string(),
            ok,
            error,
            report,
        };
        if let Err(e) = self.save_report(kind, &stored) {
            tracing::warn!("keeping the {} report: {e}", kind.name());
        }
    }

    /// Keeps how a GC or verify run by `by` ended (see [`Datastore::keep_report`]).
    pub fn keep_outcome<R: Outcome>(&self, by: &str, outcome: &Result<R>) {
        let kept = match outcome {
            Ok(r) => serde_json::to_value(r)
                .map(|v| (v, r.ok()))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        self.keep_report(R::KIND, by, kept);
    }

    /// The last report of `kind`, if one was kept and reads back.
    pub fn last_report(&self, kind: ReportKind) -> Result<Option<StoredReport>> {
        self.read_report_file(&format!("{}.json", kind.name()))
    }

    /// The usage samples, oldest first.
    pub fn usage_history(&self) -> Result<Vec<UsageSample>> {
        Ok(self
            .read_report_file::<UsageFile>("usage.json")?
            .unwrap_or_default()
            .samples)
    }

    /// Appends a sample, dropping the oldest beyond [`MAX_USAGE_SAMPLES`].
    /// One writer at a time: the server's sampler.
    pub fn record_usage(&self, sample: UsageSample) -> Result<()> {
        self.record_usage_keeping(sample, MAX_USAGE_SAMPLES)
    }

    fn record_usage_keeping(&self, sample: UsageSample, keep: usize) -> Result<()> {
        let mut samples = self.usage_history()?;
        samples.push(sample);
        if samples.len() > keep {
            samples.drain(..samples.len() - keep);
        }
        let data = serde_json::to_vec(&UsageFile { samples }).expect("samples serialize");
        self.write_report_file("usage.json", &data)
    }

    /// Measures the datastore now: its file system, and every chunk file
    /// (one pass over `.chunks/`, reading directory entries and their
    /// sizes; memory does not grow with the store).
    pub fn measure_usage(&self) -> Result<UsageSample> {
        let root = self.root();
        let st = rustix::fs::statvfs(root)
            .map_err(std::io::Error::from)
            .ctx(|| format!("statvfs {}", root.display()))?;
        let frsize = st.f_frsize;
        let fs_total = st.f_blocks.saturating_mul(frsize);
        let fs_free = st.f_bfree.saturating_mul(frsize);
        let fs_avail = st.f_bavail.saturating_mul(frsize);
        let (chunks, chunk_bytes) = self.chunks().count()?;
        Ok(UsageSample {
            time: jiff::Timestamp::now().as_second(),
            fs_total,
            fs_used: fs_total.saturating_sub(fs_free),
            fs_avail,
            chunks,
            chunk_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_damage_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open_or_create(dir.path()).unwrap();
        assert_eq!(ds.last_report(ReportKind::Gc).unwrap(), None);
        let r = StoredReport {
            time: 5,
            by: "cli".into(),
            ok: true,
            error: None,
            report: serde_json::json!({"removed_chunks": 3}),
        };
        ds.save_report(ReportKind::Gc, &r).unwrap();
        assert_eq!(ds.last_report(ReportKind::Gc).unwrap(), Some(r));
        assert_eq!(ds.last_report(ReportKind::Verify).unwrap(), None);
        fs::write(dir.path().join(".reports/gc.json"), b"{torn").unwrap();
        assert_eq!(ds.last_report(ReportKind::Gc).unwrap(), None);
    }

    #[test]
    fn usage_keeps_the_newest_samples() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open_or_create(dir.path()).unwrap();
        ds.chunks()
            .insert(
                &hoard_types::Digest::of(b"x"),
                b"x",
                ds.register_writer().unwrap().start(),
            )
            .unwrap();
        let s = ds.measure_usage().unwrap();
        assert_eq!(s.chunks, 1);
        assert!(s.chunk_bytes > 0 && s.fs_total >= s.fs_used);
        for i in 0..8 {
            ds.record_usage_keeping(UsageSample { time: i, ..s }, 5)
                .unwrap();
        }
        let h = ds.usage_history().unwrap();
        assert_eq!(
            h.iter().map(|s| s.time).collect::<Vec<_>>(),
            [3, 4, 5, 6, 7]
        );
    }
}
