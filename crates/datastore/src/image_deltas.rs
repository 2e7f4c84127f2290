//! The pass that turns a disk image's changed chunks into deltas when its
//! backup finishes: slot by slot, the new fixed index against the
//! previous backup's of the same disk; a chunk this backup stored that
//! differs from the chunk in the same slot before is kept as a delta of
//! that chunk ([`ChunkStore::make_delta`]). Indexes, the protocol and
//! dedup are unchanged: a delta is stored under its chunk's own digest.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use hoard_types::Digest;
use serde::Serialize;

use crate::chunk_store::{ChunkStore, DeltaMade};
use crate::error::Result;
use crate::fixed_index::FixedIndexReader;

/// Slots compared per block of the two indexes: memory stays constant
/// whatever the disk's size.
const BLOCK_SLOTS: usize = 4096;

/// What the pass did for one image.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeltaCounts {
    /// Changed chunks this backup stored: the candidates.
    pub tried: u64,
    /// Of those, kept as deltas.
    pub stored: u64,
    /// Their whole files' bytes, and their deltas'.
    pub whole_bytes: u64,
    pub delta_bytes: u64,
}

impl DeltaCounts {
    fn add(&mut self, made: DeltaMade) {
        self.tried += 1;
        if let DeltaMade::Stored { whole, delta } = made {
            self.stored += 1;
            self.whole_bytes += whole;
            self.delta_bytes += delta;
        }
    }
}

/// Compares `new` with `base` slot by slot and makes a delta of each
/// changed chunk for which `stored_now` is true (the chunks this backup
/// stored; a chunk that was there before may be another delta's base,
/// and stays as it is). Runs on `threads` threads; stops at the first
/// datastore error (which it returns), after which the chunks not yet
/// done stay whole.
pub fn make_deltas(
    store: &ChunkStore,
    new: &FixedIndexReader,
    base: &FixedIndexReader,
    stored_now: &(dyn Fn(&Digest) -> bool + Sync),
    threads: usize,
) -> Result<DeltaCounts> {
    let slots = new.chunk_count().min(base.chunk_count());
    let mut counts = DeltaCounts::default();
    let mut start = 0u64;
    while start < slots {
        let n = (slots - start).min(BLOCK_SLOTS as u64) as usize;
        let (now, before) = (new.digests(start, n)?, base.digests(start, n)?);
        let mut jobs: Vec<(Digest, Digest)> = now
            .iter()
            .zip(&before)
            .filter(|(d, b)| d != b && stored_now(d))
            .map(|(d, b)| (*d, *b))
            .collect();
        // A chunk in two slots of the image is one job.
        jobs.sort_unstable();
        jobs.dedup_by_key(|(d, _)| *d);
        counts_add(&mut counts, run_jobs(store, &jobs, threads)?);
        start += n as u64;
    }
    Ok(counts)
}

fn counts_add(total: &mut DeltaCounts, more: DeltaCounts) {
    total.tried += more.tried;
    total.stored += more.stored;
    total.whole_bytes += more.whole_bytes;
    total.delta_bytes += more.delta_bytes;
}

fn run_jobs(store: &ChunkStore, jobs: &[(Digest, Digest)], threads: usize) -> Result<DeltaCounts> {
    let next = AtomicUsize::new(0);
    let counts = Mutex::new(DeltaCounts::default());
    let failed = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((digest, base)) = jobs.get(i) else {
                        return;
                    };
                    match store.make_delta(digest, base) {
                        Ok(made) => counts.lock().unwrap_or_else(|p| p.into_inner()).add(made),
                        Err(e) => {
                            // The rest is not started: an error here is
                            // the datastore's (a full disk), not a chunk's.
                            next.store(jobs.len(), Ordering::Relaxed);
                            failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(counts.into_inner().unwrap_or_else(|p| p.into_inner()))
}
