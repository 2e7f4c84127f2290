//! What a process that died mid-write leaves behind, and putting it right.
//!
//! A server killed while writing leaves two things: snapshots whose
//! manifest still says `writing`, and temp files. Both are recognised by
//! a lock their owner held for its lifetime and the kernel released when
//! it died, never by age, so they are settled on the next start (or GC)
//! rather than an hour later, and never while their owner lives.
//!
//! - **Temp files** live in a directory per process, `.tmp/proc.RAND/`,
//!   holding a `lock` file that the process keeps flocked. A `proc.*`
//!   directory whose lock can be taken belongs to a dead process: its
//!   files are removed. The directory is made under a `new.*` name and
//!   renamed to `proc.*` only once locked, so no sweeper sees a `proc.*`
//!   directory before its owner holds it.
//! - **Snapshots**: a manifest says `writing` only while its writer holds
//!   `SNAPSHOT/.lock` (it is written under that lock, and the writer
//!   stores the final state before releasing it). So `writing` with the
//!   lock free means the writer is gone: the snapshot becomes
//!   `incomplete`, keeping the files it finished, or is removed if it
//!   finished none.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::error::{IoContext, Result};
use crate::locks::try_exclusive;

/// Prefix of a live (or dead) process's temp directory.
const PROC_PREFIX: &str = "proc.";
/// Prefix of a temp directory being set up.
const NEW_PREFIX: &str = "new.";
const LOCK_NAME: &str = "lock";
/// A `new.*` directory older than this was abandoned while being set up
/// (setting one up takes microseconds).
const SETUP_GRACE: Duration = Duration::from_secs(60);

/// This process's temp directory under `.tmp/`, locked while it lives.
/// Removed when the last clone of its datastore is dropped.
#[derive(Debug)]
pub(crate) struct ProcessTemp {
    dir: PathBuf,
    _lock: File,
}

impl ProcessTemp {
    pub fn create(tmp_root: &Path) -> Result<Self> {
        let tag: u64 = rand::rng().random();
        let new = tmp_root.join(format!("{NEW_PREFIX}{tag:016x}"));
        fs::create_dir(&new).ctx(|| format!("creating {}", new.display()))?;
        let lock = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(new.join(LOCK_NAME))
            .ctx(|| format!("creating the lock in {}", new.display()))?;
        // Nobody else knows the new name yet: the lock is free.
        lock.lock()
            .ctx(|| format!("locking the lock in {}", new.display()))?;
        let dir = tmp_root.join(format!("{PROC_PREFIX}{tag:016x}"));
        fs::rename(&new, &dir).ctx(|| format!("renaming {}", new.display()))?;
        Ok(ProcessTemp { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ProcessTemp {
    fn drop(&mut self) {
        // Temp files remove themselves when dropped; if one is still here
        // the directory stays, and the next sweep takes it.
        // A directory without its lock reads as dead.
        let _ = fs::remove_file(self.dir.join(LOCK_NAME));
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Removes the temp directories of dead processes under `tmp_root`;
/// returns how many temp files they held.
pub(crate) fn sweep_dead_temp_dirs(tmp_root: &Path) -> Result<u64> {
    let mut removed = 0;
    let listing = fs::read_dir(tmp_root).ctx(|| format!("listing {}", tmp_root.display()))?;
    for entry in listing {
        let entry = entry.ctx(|| format!("listing {}", tmp_root.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_dir() {
            continue;
        }
        let dir = entry.path();
        if name.starts_with(PROC_PREFIX) {
            removed += sweep_if_dead(&dir, false)?;
        } else if name.starts_with(NEW_PREFIX) {
            removed += sweep_if_dead(&dir, true)?;
        }
    }
    Ok(removed)
}

/// Removes `dir` with its files if its lock is free (or missing): its
/// owner is dead. A `new.*` directory must also be past its setup time.
fn sweep_if_dead(dir: &Path, being_set_up: bool) -> Result<u64> {
    if being_set_up {
        let old = fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > SETUP_GRACE);
        if !old {
            return Ok(0);
        }
    }
    // Held for the whole removal: a lock that is ours cannot be anyone's.
    let _lock = match File::open(dir.join(LOCK_NAME)) {
        Ok(lock) => {
            if !try_exclusive(&lock, &format!("temp directory {}", dir.display()))? {
                return Ok(0);
            }
            Some(lock)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).ctx(|| format!("opening the lock of {}", dir.display())),
    };
    let mut removed = 0;
    for entry in fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        if entry.file_name() == LOCK_NAME {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx(|| format!("removing {}", entry.path().display())),
        }
    }
    let _ = fs::remove_file(dir.join(LOCK_NAME));
    match fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).ctx(|| format!("removing {}", dir.display())),
    }
    Ok(removed)
}

/// What [`crate::Datastore::recover`] put right.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recovery {
    /// Snapshots left `writing` by a dead writer, now `incomplete`.
    pub snapshots_incomplete: Vec<String>,
    /// Snapshots left by a dead writer with no finished file, removed.
    pub snapshots_removed: Vec<String>,
    /// Temp files of dead processes, removed.
    pub temp_files_removed: u64,
}

impl Recovery {
    pub fn is_empty(&self) -> bool {
        self.snapshots_incomplete.is_empty()
            && self.snapshots_removed.is_empty()
            && self.temp_files_removed == 0
    }
}

/// What settling one snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Not abandoned: finished, or its writer is alive.
    Untouched,
    /// Its writer died after finishing some files.
    MadeIncomplete,
    /// Its writer died before finishing any file.
    Removed,
}
