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
/// returns how many temp files they held. Best effort: a directory that
/// cannot be swept (another sweeper took it, a file owned by another
/// user) is reported and left for the next sweep, never an error that
/// keeps a server from starting.
pub(crate) fn sweep_dead_temp_dirs(tmp_root: &Path) -> Result<u64> {
    let mut removed = 0;
    let listing = fs::read_dir(tmp_root).ctx(|| format!("listing {}", tmp_root.display()))?;
    for entry in listing {
        let entry = entry.ctx(|| format!("listing {}", tmp_root.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let being_set_up = if name.starts_with(PROC_PREFIX) {
            false
        } else if name.starts_with(NEW_PREFIX) {
            true
        } else {
            continue;
        };
        match sweep_if_dead(tmp_root, name, being_set_up) {
            Ok(n) => removed += n,
            Err(e) => tracing::warn!("temp directory {name} not swept: {e}"),
        }
    }
    Ok(removed)
}

/// Removes `tmp_root/name` with its files if its lock is free (or
/// missing): its owner is dead. A `new.*` directory must also be past
/// its setup time. Everything is opened relative to the directory's own
/// descriptor without following links, and the lock without blocking, so
/// a link or FIFO planted in `.tmp/` can neither redirect the removal nor
/// stall it.
fn sweep_if_dead(tmp_root: &Path, name: &str, being_set_up: bool) -> std::io::Result<u64> {
    use rustix::fs::{AtFlags, Mode, OFlags, openat, statat, unlinkat};
    use rustix::io::Errno;
    let gone = |e: Errno| e == Errno::NOENT;
    let root = openat(
        rustix::fs::CWD,
        tmp_root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let dir = match openat(
        &root,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) if gone(e) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    if being_set_up {
        let stat = rustix::fs::fstat(&dir)?;
        let modified = std::time::UNIX_EPOCH + Duration::from_secs(stat.st_mtime.max(0) as u64);
        let old = SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age > SETUP_GRACE);
        if !old {
            return Ok(0);
        }
    }
    // Held for the whole removal: a lock that is ours cannot be anyone's.
    let _lock = match openat(
        &dir,
        LOCK_NAME,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            if !rustix::fs::fstat(&fd)
                .is_ok_and(|s| rustix::fs::FileType::from_raw_mode(s.st_mode).is_file())
            {
                return Err(std::io::Error::other("its lock is not a regular file"));
            }
            let lock = File::from(fd);
            if !try_exclusive(&lock, name).map_err(std::io::Error::other)? {
                return Ok(0);
            }
            Some(lock)
        }
        Err(e) if gone(e) => None,
        Err(e) => return Err(e.into()),
    };
    let mut removed = 0;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." && n != LOCK_NAME.as_bytes() {
            names.push(entry.file_name().to_owned());
        }
    }
    for n in names {
        // Only files: a directory planted here is left alone.
        match statat(&dir, &n, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => continue,
            Err(e) if gone(e) => continue,
            _ => {}
        }
        match unlinkat(&dir, &n, AtFlags::empty()) {
            Ok(()) => removed += 1,
            Err(e) if gone(e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match unlinkat(&dir, LOCK_NAME, AtFlags::empty()) {
        Ok(()) => {}
        Err(e) if gone(e) => {}
        Err(e) => return Err(e.into()),
    }
    match unlinkat(&root, name, AtFlags::REMOVEDIR) {
        Ok(()) => {}
        Err(e) if gone(e) => {}
        Err(e) => return Err(e.into()),
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
