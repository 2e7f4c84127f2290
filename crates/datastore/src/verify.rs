//! Verify: reads every chunk the selected snapshots reference, checks it
//! against its digest, and records the outcome in each snapshot's
//! manifest. Damaged chunks are moved to `.bad/` (never deleted), so the
//! next backup that has their data uploads them again and heals the store.
//!
//! Besides chunks it checks each snapshot's files against its manifest:
//! a listed index that is missing, truncated, foreign (wrong magic),
//! replaced (checksum differs from the manifest) or internally damaged
//! (entry checksum), and sizes that differ from the manifest's. Every
//! finding names the snapshot and file it hurts.
//!
//! Each distinct chunk is read once, however many snapshots share it. The
//! set of distinct digests is built in passes over digest ranges, so at
//! most [`PASS_DIGESTS`] of them are in memory whatever the datastore's
//! size; indexes are small next to chunks, so reading them once per pass
//! costs little.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hoard_types::{Digest, SnapshotPath};
use serde::Serialize;

use crate::chunk_store::{Checked, ChunkClass, ChunkProblem};
use crate::datastore::{Datastore, IndexReader};
use crate::error::{Error, Result};
use crate::manifest::{FileKind, MANIFEST_NAME, ManifestFile, Verification, VerifyState};

/// Distinct digests held in memory at once (about 40 MiB).
pub const PASS_DIGESTS: u64 = 512 * 1024;
/// Digests read from an index per block.
const READ_BLOCK: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub threads: usize,
    /// Skip snapshots whose last verification passed less than this ago.
    pub skip_verified_within: Option<Duration>,
    /// "Now", seconds since the epoch: the time recorded, and the base of
    /// `skip_verified_within`.
    pub now: i64,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            skip_verified_within: None,
            now: jiff::Timestamp::now().as_second(),
        }
    }
}

/// Progress, reported from any of verify's threads.
#[derive(Debug, Clone)]
pub enum VerifyEvent {
    /// Snapshots selected and their files checked; `references` is the
    /// number of chunk references to check (distinct chunks are fewer).
    Selected { snapshots: u64, references: u64 },
    /// One more chunk read and checked.
    Checked { bytes: u64 },
}

/// Something wrong with a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct Finding {
    pub snapshot: String,
    /// The file of the snapshot concerned, if it is about one.
    pub file: Option<String>,
    /// The chunk concerned, if it is about one.
    pub digest: Option<String>,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotVerdict {
    pub snapshot: String,
    /// "ok", "failed" or "skipped".
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the outcome was written to the manifest.
    pub recorded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadChunk {
    pub digest: String,
    pub problem: String,
    /// Where the damaged file went, if it was moved aside.
    pub moved_to: Option<String>,
    /// `snapshot/file` that reference it.
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub snapshots: Vec<SnapshotVerdict>,
    pub findings: Vec<Finding>,
    pub bad_chunks: Vec<BadChunk>,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    /// Of the chunks checked, those encrypted by their client: their
    /// digests are keyed, so the server checked their structure and CRC
    /// only (a client holding the key checks their content on restore).
    pub chunks_encrypted: u64,
    /// Observations that fail nothing (an index file no manifest lists).
    pub notes: Vec<String>,
}

impl VerifyReport {
    pub fn failed(&self) -> usize {
        self.snapshots
            .iter()
            .filter(|s| s.result == "failed")
            .count()
    }
}

/// An index that passed its own checks; its chunks are checked next.
struct GoodIndex {
    snapshot: usize,
    name: String,
    kind: FileKind,
    /// The class of the snapshot's chunks (encrypted ones have their own
    /// names).
    class: ChunkClass,
}

/// What one pass knows of a distinct digest.
struct Seen {
    /// Size the first reference expects.
    expected: u64,
    /// Some reference expects another size.
    conflict: bool,
    /// Plain size and encoding as stored, or why it is unusable; set by
    /// the check.
    result: Option<std::result::Result<Checked, ChunkProblem>>,
}

/// Verifies every snapshot `select` accepts.
pub fn verify(
    ds: &Datastore,
    select: &dyn Fn(&SnapshotPath) -> bool,
    opts: &VerifyOptions,
    on_event: &(dyn Fn(&VerifyEvent) + Sync),
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut chosen: Vec<SnapshotPath> = Vec::new();
    let mut findings: BTreeSet<Finding> = BTreeSet::new();
    let mut good: Vec<GoodIndex> = Vec::new();
    let mut references = 0u64;

    for info in ds.list_snapshots()? {
        if !select(&info.path) {
            continue;
        }
        let name = info.path.to_string();
        if ds.writer_active(&info.path)? {
            report.snapshots.push(skipped(name, "being written".into()));
            continue;
        }
        if let (Some(within), Some(v)) = (opts.skip_verified_within, &info.manifest.verification)
            && v.state == VerifyState::Ok
            && v.time >= opts.now - within.as_secs() as i64
        {
            report.snapshots.push(skipped(
                name,
                format!("verified ok at {}", fmt_time(v.time)),
            ));
            continue;
        }
        let idx = chosen.len();
        chosen.push(info.path.clone());
        let dir = ds.snapshot_dir(&info.path);
        for file in &info.manifest.files {
            match check_index(&dir.join(&file.name), &name, file) {
                Ok(reader) => {
                    references += reader.chunk_count();
                    good.push(GoodIndex {
                        snapshot: idx,
                        name: file.name.clone(),
                        kind: file.kind,
                        class: info.manifest.chunk_class(),
                    });
                }
                Err(problem) => {
                    findings.insert(Finding {
                        snapshot: name.clone(),
                        file: Some(file.name.clone()),
                        digest: None,
                        problem,
                    });
                }
            }
        }
        for extra in unlisted_files(&dir, &info.manifest.files) {
            report
                .notes
                .push(format!("{name}: {extra} is not listed in the manifest"));
        }
    }
    on_event(&VerifyEvent::Selected {
        snapshots: chosen.len() as u64,
        references,
    });

    let passes = references.div_ceil(PASS_DIGESTS).max(1) as usize;
    let mut bad: BTreeMap<(Digest, ChunkClass), (ChunkProblem, BTreeSet<String>)> = BTreeMap::new();
    for pass in 0..passes.min(256) {
        let lo = pass * 256 / passes.min(256);
        let hi = (pass + 1) * 256 / passes.min(256);
        let in_range = |d: &Digest| (lo..hi).contains(&(d.0[0] as usize));

        let mut seen: HashMap<(Digest, ChunkClass), Seen> = HashMap::new();
        for g in &good {
            for_each_ref(ds, &chosen, g, &mut |d, size| {
                if in_range(&d) {
                    let e = seen.entry((d, g.class)).or_insert(Seen {
                        expected: size,
                        conflict: false,
                        result: None,
                    });
                    e.conflict |= e.expected != size;
                }
            })?;
        }

        let chunks: Vec<(Digest, ChunkClass)> = seen.keys().copied().collect();
        let results = check_chunks(ds, &chunks, opts.threads, on_event, &mut report);
        let mut suspicious = false;
        for (key, r) in chunks.iter().zip(results) {
            let e = seen.get_mut(key).expect("collected above");
            suspicious |= e.conflict || r.as_ref().map_or(true, |c| c.size != e.expected);
            e.result = Some(r);
        }
        if !suspicious {
            continue;
        }
        // Something is wrong in this range: read the indexes again to say
        // which snapshots and files it hurts.
        for g in &good {
            let snap = chosen[g.snapshot].to_string();
            for_each_ref(ds, &chosen, g, &mut |d, size| {
                let Some(e) = seen.get(&(d, g.class)) else {
                    return;
                };
                let problem = match e.result.as_ref().expect("checked above") {
                    Ok(c) if c.size == size => return,
                    Ok(c) => format!("chunk has {} bytes, the index expects {size}", c.size),
                    Err(p) => {
                        bad.entry((d, g.class))
                            .or_insert_with(|| (p.clone(), BTreeSet::new()))
                            .1
                            .insert(format!("{snap}/{}", g.name));
                        format!("chunk {p}")
                    }
                };
                findings.insert(Finding {
                    snapshot: snap.clone(),
                    file: Some(g.name.clone()),
                    digest: Some(d.to_hex()),
                    problem,
                });
            })?;
        }
    }

    for ((digest, class), (problem, used_by)) in bad {
        let moved_to = match problem {
            ChunkProblem::Corrupt(_) | ChunkProblem::ZeroLength => {
                ds.chunks().quarantine(&digest, class)?
            }
            // Nothing to move, or an I/O error that may pass.
            ChunkProblem::Missing | ChunkProblem::Unreadable(_) => None,
        };
        report.bad_chunks.push(BadChunk {
            digest: digest.to_hex(),
            problem: problem.to_string(),
            moved_to,
            used_by: used_by.into_iter().collect(),
        });
    }

    for snap in chosen {
        let name = snap.to_string();
        let failed = findings.iter().any(|f| f.snapshot == name);
        let state = if failed {
            VerifyState::Failed
        } else {
            VerifyState::Ok
        };
        let verdict = match ds.update_manifest(&snap, |m| {
            m.verification = Some(Verification {
                state,
                time: opts.now,
            })
        }) {
            Ok(()) => SnapshotVerdict {
                snapshot: name,
                result: if failed { "failed" } else { "ok" },
                reason: None,
                recorded: true,
            },
            Err(Error::SnapshotNotFound(_)) => {
                // Pruned while being verified: what was found about it no
                // longer matters.
                findings.retain(|f| f.snapshot != name);
                report
                    .bad_chunks
                    .iter_mut()
                    .for_each(|b| b.used_by.retain(|u| !u.starts_with(&format!("{name}/"))));
                skipped(name, "removed while being verified".into())
            }
            Err(e) => SnapshotVerdict {
                snapshot: name,
                result: if failed { "failed" } else { "ok" },
                reason: Some(format!("result not recorded: {e}")),
                recorded: false,
            },
        };
        report.snapshots.push(verdict);
    }
    report.bad_chunks.retain(|b| !b.used_by.is_empty());
    report.findings = findings.into_iter().collect();
    report.snapshots.sort_by(|a, b| a.snapshot.cmp(&b.snapshot));
    Ok(report)
}

fn skipped(snapshot: String, reason: String) -> SnapshotVerdict {
    SnapshotVerdict {
        snapshot,
        result: "skipped",
        reason: Some(reason),
        recorded: false,
    }
}

fn fmt_time(t: i64) -> String {
    jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |ts| ts.to_string())
}

/// Checks an index file on its own and against its manifest entry.
fn check_index(
    path: &std::path::Path,
    snap: &str,
    entry: &ManifestFile,
) -> std::result::Result<IndexReader, String> {
    if !path.exists() {
        return Err("listed in the manifest but missing".into());
    }
    let display = format!("{snap}/{}", entry.name);
    let reader = IndexReader::open_file(entry.kind, path, &display).map_err(|e| e.to_string())?;
    if reader.csum_hex() != entry.index_csum {
        return Err(
            "index checksum differs from the manifest (the file was replaced or is foreign)".into(),
        );
    }
    reader.verify_checksum().map_err(|e| e.to_string())?;
    if reader.file_size() != entry.file_size || reader.chunk_count() != entry.chunk_count {
        return Err(format!(
            "index holds {} bytes in {} chunks, the manifest says {} in {}",
            reader.file_size(),
            reader.chunk_count(),
            entry.file_size,
            entry.chunk_count
        ));
    }
    Ok(reader)
}

/// Index files in a snapshot directory that its manifest does not list.
fn unlisted_files(dir: &std::path::Path, listed: &[ManifestFile]) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != MANIFEST_NAME && n != ".lock")
        .filter(|n| !listed.iter().any(|f| &f.name == n))
        .collect();
    out.sort();
    out
}

/// Calls `f` with every (digest, expected size) of an index, in blocks.
/// An index whose snapshot was pruned meanwhile is passed over.
fn for_each_ref(
    ds: &Datastore,
    chosen: &[SnapshotPath],
    g: &GoodIndex,
    f: &mut dyn FnMut(Digest, u64),
) -> Result<()> {
    let snap = &chosen[g.snapshot];
    match read_refs(ds, snap, g, f) {
        Err(_) if !ds.snapshot_dir(snap).join(MANIFEST_NAME).exists() => Ok(()),
        other => other,
    }
}

fn read_refs(
    ds: &Datastore,
    snap: &SnapshotPath,
    g: &GoodIndex,
    f: &mut dyn FnMut(Digest, u64),
) -> Result<()> {
    let path = ds.snapshot_dir(snap).join(&g.name);
    let reader = IndexReader::open_file(g.kind, &path, &format!("{snap}/{}", g.name))?;
    let count = reader.chunk_count();
    let mut start = 0;
    while start < count {
        let n = (count - start).min(READ_BLOCK as u64) as usize;
        for (d, size) in reader.sized_digests(start, n)? {
            f(d, size);
        }
        start += n as u64;
    }
    Ok(())
}

/// Reads and checks `digests` on `threads` threads.
fn check_chunks(
    ds: &Datastore,
    digests: &[(Digest, ChunkClass)],
    threads: usize,
    on_event: &(dyn Fn(&VerifyEvent) + Sync),
    report: &mut VerifyReport,
) -> Vec<std::result::Result<Checked, ChunkProblem>> {
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let encrypted = AtomicU64::new(0);
    let transient: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let results: Mutex<Vec<Option<std::result::Result<Checked, ChunkProblem>>>> =
        Mutex::new(vec![None; digests.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut local = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= digests.len() {
                        break;
                    }
                    let (digest, class) = digests[i];
                    let mut r = ds.chunks().check(&digest, class);
                    // Read again before condemning: a read that failed
                    // or came back wrong once (a flaky cable, a transient
                    // I/O error) is no damage if the next one is right.
                    if let Err(first @ (ChunkProblem::Corrupt(_) | ChunkProblem::Unreadable(_))) = &r
                    {
                        let again = ds.chunks().check(&digest, class);
                        if again.is_ok() {
                            transient.lock().unwrap_or_else(|p| p.into_inner()).push(format!(
                                "chunk {digest}: {first} on a first read, right on the second: a transient read error"
                            ));
                            r = again;
                        }
                    }
                    if let Ok(c) = r {
                        bytes.fetch_add(c.size, Ordering::Relaxed);
                        if c.class == ChunkClass::Encrypted {
                            encrypted.fetch_add(1, Ordering::Relaxed);
                        }
                        on_event(&VerifyEvent::Checked { bytes: c.size });
                    }
                    local.push((i, r));
                }
                let mut all = results.lock().unwrap_or_else(|p| p.into_inner());
                for (i, r) in local {
                    all[i] = Some(r);
                }
            });
        }
    });
    report.chunks_checked += digests.len() as u64;
    report.bytes_checked += bytes.into_inner();
    report.chunks_encrypted += encrypted.into_inner();
    report
        .notes
        .extend(transient.into_inner().unwrap_or_else(|p| p.into_inner()));
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.expect("every digest checked"))
        .collect()
}
