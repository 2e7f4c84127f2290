//! Garbage collection: removes the chunks no snapshot references, while
//! backups keep running. The argument for its safety is in
//! docs/maintenance.md; in short:
//!
//! 1. Take the GC lock and read the file-system clock: `now`.
//! 2. `cutoff` = min(`now`, start of the oldest live writer) − grace.
//! 3. Mark: every chunk referenced by an index of any snapshot with a
//!    manifest gets an mtime ≥ `cutoff` (stamped unless it has one).
//! 4. Sweep: per prefix directory, under its exclusive lock, remove every
//!    chunk whose mtime is < `cutoff`.
//!
//! Writers stamp every chunk they upload or reference (under the prefix's
//! shared lock) unless its mtime is at or after their start, which is ≥
//! `cutoff` for any writer alive during the GC. So a chunk some writer
//! touched, or some listed snapshot references, is never swept.
//!
//! Memory does not depend on the datastore's size: the mark streams each
//! index in blocks and keeps its state in the file system (mtimes), the
//! sweep streams each directory.

use std::fs;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use hoard_types::SnapshotPath;
use serde::Serialize;

use crate::chunk_store::{ChunkClass, Marked, SweepCounts};
use crate::datastore::Datastore;
use crate::error::{Error, IoContext, Result};
use crate::locks::FsTime;
use crate::manifest::MANIFEST_NAME;

/// Digests read from an index per block of work.
const MARK_BLOCK: usize = 16 * 1024;
/// Temp files older than the cutoff by this much are left over from a
/// crash (every live writer's are younger than the cutoff; this margin
/// covers the short-lived temp files of maintenance commands).
const TEMP_FILE_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Extra age a chunk must have before it may be removed. Guards
    /// against the system clock being set back by less than this.
    pub grace: Duration,
    /// Threads for mark and sweep.
    pub threads: usize,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Progress, and the points where tests interleave other work.
#[derive(Debug, Clone)]
pub enum GcEvent {
    /// The cutoff is fixed; nothing is listed yet.
    Started { cutoff: FsTime },
    /// Snapshots listed; marking begins.
    Listed { snapshots: u64, indexes: u64 },
    /// One more index marked.
    Marking {
        indexes_done: u64,
        indexes: u64,
        chunks: u64,
    },
    /// Marking done; sweeping begins.
    Marked,
    /// One more of the 256 prefix directories swept.
    Sweeping { prefixes_done: u32 },
    /// Sweep done.
    Swept,
}

/// What a GC did. Times are seconds since the epoch.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    pub cutoff: i64,
    /// Start of the oldest writer alive when GC began, if any.
    pub oldest_writer: Option<i64>,
    pub snapshots: u64,
    pub indexes: u64,
    /// Indexes removed (by prune) between listing and marking.
    pub vanished_indexes: u64,
    /// Chunk references marked (a chunk shared by N indexes counts N).
    pub references: u64,
    /// Referenced chunks that were not in the store (verify says which).
    pub missing_chunks: u64,
    pub removed_chunks: u64,
    pub removed_bytes: u64,
    pub kept_chunks: u64,
    pub kept_bytes: u64,
    /// Temp files removed: those of dead processes, and loose ones older
    /// than an hour past the cutoff (written by earlier versions).
    pub temp_files_removed: u64,
    /// Snapshots whose writer died, settled before marking.
    pub snapshots_made_incomplete: Vec<String>,
    pub snapshots_removed_empty: Vec<String>,
}

/// Runs a garbage collection; `on_event` sees its progress (from any of
/// its threads).
pub fn collect_garbage(
    ds: &Datastore,
    opts: &GcOptions,
    on_event: &(dyn Fn(&GcEvent) + Sync),
) -> Result<GcReport> {
    let (_gc_lock, now) = ds.locks().gc()?;
    // On object storage: only the directory that holds the bucket
    // collects (checked again before every deletion).
    ds.check_lease()?;
    let oldest = ds.locks().oldest_writer()?;
    let cutoff = oldest.map_or(now, |o| o.min(now)).minus(opts.grace);
    on_event(&GcEvent::Started { cutoff });
    let mut report = GcReport {
        cutoff: cutoff.as_second(),
        oldest_writer: oldest.map(FsTime::as_second),
        ..GcReport::default()
    };
    // Settled first, so that the listing below sees what is really there.
    let recovered = ds.recover()?;
    report.temp_files_removed = recovered.temp_files_removed;
    report.snapshots_made_incomplete = recovered.snapshots_incomplete;
    report.snapshots_removed_empty = recovered.snapshots_removed;

    let snapshots = ds.list_snapshots()?;
    let indexes: Vec<(SnapshotPath, String, ChunkClass)> = snapshots
        .iter()
        .flat_map(|s| {
            let class = s.manifest.chunk_class();
            s.manifest
                .files
                .iter()
                .map(move |f| (s.path.clone(), f.name.clone(), class))
        })
        .collect();
    report.snapshots = snapshots.len() as u64;
    report.indexes = indexes.len() as u64;
    drop(snapshots);
    on_event(&GcEvent::Listed {
        snapshots: report.snapshots,
        indexes: report.indexes,
    });

    let threads = opts.threads.max(1);
    let references = AtomicU64::new(0);
    let missing = AtomicU64::new(0);
    for (done, (snap, name, class)) in indexes.iter().enumerate() {
        let rel = format!("{snap}/{name}");
        let reader = match ds.open_index(&rel) {
            Ok(r) => r,
            Err(e) => {
                if !ds.snapshot_dir(snap).join(MANIFEST_NAME).exists() {
                    report.vanished_indexes += 1;
                    continue;
                }
                // Its chunks cannot be marked, so none may be removed.
                return Err(Error::Unsafe(format!(
                    "cannot read index {rel} ({e}); garbage collection stopped before \
                     removing anything. Run `hoard verify {snap}`"
                )));
            }
        };
        let count = reader.chunk_count();
        let next = AtomicU64::new(0);
        let failure = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let start = next.fetch_add(MARK_BLOCK as u64, Ordering::Relaxed);
                        if start >= count {
                            return;
                        }
                        let n = (count - start).min(MARK_BLOCK as u64) as usize;
                        let result = reader.digests(start, n).and_then(|digests| {
                            for d in &digests {
                                if ds.chunks().mark(d, *class, cutoff)? == Marked::Missing {
                                    missing.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(())
                        });
                        if let Err(e) = result {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            next.store(count, Ordering::Relaxed);
                            return;
                        }
                        references.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(Error::Unsafe(format!(
                "marking the chunks of {rel} failed ({e}); garbage collection stopped \
                 before removing anything"
            )));
        }
        on_event(&GcEvent::Marking {
            indexes_done: done as u64 + 1,
            indexes: report.indexes,
            chunks: references.load(Ordering::Relaxed),
        });
    }
    report.references = references.into_inner();
    report.missing_chunks = missing.into_inner();
    on_event(&GcEvent::Marked);

    let next_prefix = AtomicU32::new(0);
    let swept = AtomicU32::new(0);
    let totals = Mutex::new(SweepCounts::default());
    let failure = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let p = next_prefix.fetch_add(1, Ordering::Relaxed);
                    if p > 0xff {
                        return;
                    }
                    match ds.chunks().sweep_prefix(p as u8, cutoff) {
                        Ok(c) => totals.lock().unwrap_or_else(|e| e.into_inner()).add(&c),
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            next_prefix.store(0x100, Ordering::Relaxed);
                            return;
                        }
                    }
                    let done = swept.fetch_add(1, Ordering::Relaxed) + 1;
                    on_event(&GcEvent::Sweeping {
                        prefixes_done: done,
                    });
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let totals = totals.into_inner().unwrap_or_else(|p| p.into_inner());
    report.removed_chunks = totals.removed;
    report.removed_bytes = totals.removed_bytes;
    report.kept_chunks = totals.kept;
    report.kept_bytes = totals.kept_bytes;
    on_event(&GcEvent::Swept);

    report.temp_files_removed += remove_old_temp_files(ds, cutoff.minus(TEMP_FILE_AGE))?;
    Ok(report)
}

fn remove_old_temp_files(ds: &Datastore, before: FsTime) -> Result<u64> {
    let dir = ds.root().join(".tmp");
    let mut n = 0;
    for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && FsTime::mtime(&meta) < before && fs::remove_file(entry.path()).is_ok()
        {
            n += 1;
        }
    }
    Ok(n)
}
