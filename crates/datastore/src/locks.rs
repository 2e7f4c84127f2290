//! The locks that let backups, restores and maintenance share one
//! datastore across processes (docs/maintenance.md has the argument).
//!
//! All of them are `flock(2)` locks on open files, so a process that dies,
//! however it dies, releases them; nothing ever has to be "unlocked" by
//! hand. None is global: the widest, the GC lock, only keeps two GCs
//! apart.
//!
//! | lock | shared by | exclusive by |
//! |---|---|---|
//! | `.locks/chunks/PP` | a chunk operation of a writer (insert, reference) in prefix `PP` | GC sweeping `PP`, verify moving a bad chunk aside |
//! | `.locks/writers/ID` | — | a connection that writes, for its lifetime; its ctime is the writer's start |
//! | `.locks/groups/TYPE-ID` | — | prune of that group |
//! | `.locks/gc` | — | GC |
//! | snapshot directory | a reader: base of a running backup, restore, verify | prune removing the snapshot |
//! | `SNAPSHOT/.lock` | — | the snapshot's writer; a manifest update (verify, protect) |

use std::fs::{self, File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::Rng;

use crate::error::{Error, IoContext, Result};
use crate::fsutil::create_dir_durable;

pub(crate) const LOCKS_DIR: &str = ".locks";

/// A file-system timestamp in nanoseconds since the epoch.
///
/// GC compares the times the kernel stamps on files (chunk mtimes, the
/// ctime of a writer's registration) with each other only, never with a
/// clock read by a process, so the coarse clock the kernel stamps files
/// with cannot make a fresh chunk look older than a cutoff taken later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FsTime(pub i128);

impl FsTime {
    pub fn mtime(meta: &fs::Metadata) -> FsTime {
        FsTime(meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128)
    }

    pub fn ctime(meta: &fs::Metadata) -> FsTime {
        FsTime(meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128)
    }

    /// Whole seconds since the epoch (for reports).
    pub fn as_second(self) -> i64 {
        self.0.div_euclid(1_000_000_000) as i64
    }

    pub fn minus(self, d: std::time::Duration) -> FsTime {
        FsTime(self.0 - d.as_nanos() as i128)
    }
}

/// Sets a file's mtime to the kernel's "now" (atime untouched).
pub(crate) fn touch(file: &File) -> std::io::Result<()> {
    use rustix::fs::{Timespec, Timestamps, UTIME_NOW, UTIME_OMIT, futimens};
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
    };
    futimens(file, &ts).map_err(std::io::Error::from)
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx(|| format!("opening lock {}", path.display()))
}

/// Takes `file`'s flock exclusively without waiting; `Ok(false)` if
/// someone else holds it.
pub(crate) fn try_exclusive(file: &File, what: &str) -> Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e).ctx(|| format!("locking {what}")),
    }
}

/// The datastore's `.locks/` directory and what lives in it.
#[derive(Debug)]
pub(crate) struct Locks {
    dir: PathBuf,
    prefixes: Vec<Mutex<PrefixSlot>>,
}

/// This process's share of one prefix lock. flock is per open file, so
/// the threads of one process share a single descriptor and count
/// themselves: the first takes the shared flock, the last releases it.
#[derive(Debug, Default)]
struct PrefixSlot {
    holders: usize,
    file: Option<File>,
}

impl Locks {
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join(LOCKS_DIR);
        for sub in ["chunks", "writers", "groups"] {
            create_dir_durable(&dir.join(sub))?;
        }
        Ok(Locks {
            dir,
            prefixes: (0..256)
                .map(|_| Mutex::new(PrefixSlot::default()))
                .collect(),
        })
    }

    fn prefix_path(&self, prefix: u8) -> PathBuf {
        self.dir.join("chunks").join(format!("{prefix:02x}"))
    }

    /// Shares prefix `prefix` with other writers until the guard drops;
    /// waits while a GC sweeps it.
    pub fn share_prefix(&self, prefix: u8) -> Result<PrefixShared<'_>> {
        let slot = &self.prefixes[prefix as usize];
        let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
        if s.holders == 0 {
            if s.file.is_none() {
                s.file = Some(open_lock_file(&self.prefix_path(prefix))?);
            }
            let file = s.file.as_ref().expect("opened above");
            file.lock_shared()
                .ctx(|| format!("locking chunk prefix {prefix:02x}"))?;
        }
        s.holders += 1;
        Ok(PrefixShared { slot })
    }

    /// Takes prefix `prefix` for itself, waiting for writers to leave it.
    /// A separate open file, so it also excludes this process's writers.
    pub fn exclusive_prefix(&self, prefix: u8) -> Result<File> {
        let file = open_lock_file(&self.prefix_path(prefix))?;
        file.lock()
            .ctx(|| format!("locking chunk prefix {prefix:02x}"))?;
        Ok(file)
    }

    /// Registers a writer. Until the registration drops, GC keeps every
    /// chunk stamped at or after its start.
    ///
    /// The file is locked under a dot name and only then renamed into
    /// place, so GC never sees an unlocked registration of a live writer;
    /// the rename sets its ctime, which is the start GC reads.
    pub fn register_writer(&self) -> Result<WriterRegistration> {
        let dir = self.dir.join("writers");
        let tag: u64 = rand::rng().random();
        let staging = dir.join(format!(".new-{tag:016x}"));
        let path = dir.join(format!("{tag:016x}"));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&staging)
            .ctx(|| format!("creating {}", staging.display()))?;
        file.lock()
            .ctx(|| format!("locking {}", staging.display()))?;
        fs::rename(&staging, &path).ctx(|| format!("registering writer {}", path.display()))?;
        let start = FsTime::ctime(
            &file
                .metadata()
                .ctx(|| format!("reading {}", path.display()))?,
        );
        Ok(WriterRegistration {
            path,
            start,
            _file: file,
        })
    }

    /// The start of the oldest live writer. Registrations of dead writers
    /// (their lock is free) are removed.
    pub fn oldest_writer(&self) -> Result<Option<FsTime>> {
        let dir = self.dir.join("writers");
        let mut oldest: Option<FsTime> = None;
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                // Being registered: it is renamed into place before its
                // writer touches any chunk.
                continue;
            }
            let path = entry.path();
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx(|| format!("opening {}", path.display())),
            };
            match file.try_lock_shared() {
                Ok(()) => {
                    // Its writer is gone.
                    let _ = fs::remove_file(&path);
                }
                Err(TryLockError::WouldBlock) => {
                    let start = FsTime::ctime(
                        &file
                            .metadata()
                            .ctx(|| format!("reading {}", path.display()))?,
                    );
                    oldest = Some(oldest.map_or(start, |o| o.min(start)));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(e).ctx(|| format!("locking {}", path.display()));
                }
            }
        }
        Ok(oldest)
    }

    /// The GC lock, taken without waiting, and the file-system time now
    /// (the lock file is stamped and read back).
    pub fn gc(&self) -> Result<(File, FsTime)> {
        let path = self.dir.join("gc");
        let file = open_lock_file(&path)?;
        if !try_exclusive(&file, "the GC lock")? {
            return Err(Error::Busy("another garbage collection is running".into()));
        }
        touch(&file).ctx(|| format!("stamping {}", path.display()))?;
        let now = FsTime::mtime(
            &file
                .metadata()
                .ctx(|| format!("reading {}", path.display()))?,
        );
        Ok((file, now))
    }

    /// The delta commit lock (`.locks/deltas`), waiting for it: delta
    /// commits run one at a time across every process on the datastore,
    /// so none can close a cycle with another, and a commit, which holds
    /// one prefix exclusively while it takes others shared, never waits
    /// for another commit's prefix.
    pub fn delta_commit(&self) -> Result<File> {
        let path = self.dir.join("deltas");
        let file = open_lock_file(&path)?;
        file.lock().ctx(|| format!("locking {}", path.display()))?;
        Ok(file)
    }

    /// A group's maintenance lock (prune), waiting for it.
    pub fn group(&self, ty: &str, id: &str) -> Result<File> {
        let path = self.dir.join("groups").join(format!("{ty}-{id}"));
        let file = open_lock_file(&path)?;
        file.lock().ctx(|| format!("locking group {ty}/{id}"))?;
        Ok(file)
    }
}

/// A writer's share of a chunk prefix.
pub(crate) struct PrefixShared<'a> {
    slot: &'a Mutex<PrefixSlot>,
}

impl Drop for PrefixShared<'_> {
    fn drop(&mut self) {
        let mut s = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        s.holders -= 1;
        if s.holders == 0
            && let Some(f) = &s.file
        {
            let _ = f.unlock();
        }
    }
}

/// A live writer, known to GC by its file in `.locks/writers/`.
#[derive(Debug)]
pub struct WriterRegistration {
    path: PathBuf,
    start: FsTime,
    _file: File,
}

impl WriterRegistration {
    /// When the writer registered, on the file system's clock.
    pub fn start(&self) -> FsTime {
        self.start
    }
}

impl Drop for WriterRegistration {
    fn drop(&mut self) {
        // Removed while still locked; a registration left by a crash is
        // removed by the next GC.
        let _ = fs::remove_file(&self.path);
    }
}

/// A reader's hold on a snapshot: prune cannot remove it meanwhile.
#[derive(Debug)]
pub struct SnapshotPin {
    _dir: File,
}

impl SnapshotPin {
    /// Shares `dir`'s lock. The caller checks the snapshot still exists
    /// *after* this returns: a prune that got in first has removed it.
    pub(crate) fn take(dir: &Path, what: &str) -> Result<Option<SnapshotPin>> {
        let file = match File::open(dir) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("opening snapshot {what}")),
        };
        file.lock_shared()
            .ctx(|| format!("locking snapshot {what}"))?;
        Ok(Some(SnapshotPin { _dir: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_share_excludes_other_descriptors_until_the_last_holder_leaves() {
        let d = tempfile::tempdir().unwrap();
        let locks = Locks::open(d.path()).unwrap();
        let a = locks.share_prefix(7).unwrap();
        let b = locks.share_prefix(7).unwrap();
        let other = open_lock_file(&locks.prefix_path(7)).unwrap();
        assert!(!try_exclusive(&other, "t").unwrap());
        drop(a);
        assert!(!try_exclusive(&other, "t").unwrap(), "b still holds it");
        drop(b);
        assert!(try_exclusive(&other, "t").unwrap());
        other.unlock().unwrap();
        // Another prefix is independent.
        let _c = locks.share_prefix(8).unwrap();
        assert!(try_exclusive(&other, "t").unwrap());
    }

    #[test]
    fn writers_are_seen_while_alive_and_their_leftovers_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let locks = Locks::open(d.path()).unwrap();
        assert_eq!(locks.oldest_writer().unwrap(), None);
        let w1 = locks.register_writer().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let w2 = locks.register_writer().unwrap();
        assert!(w2.start() >= w1.start());
        assert_eq!(locks.oldest_writer().unwrap(), Some(w1.start()));
        drop(w1);
        assert_eq!(locks.oldest_writer().unwrap(), Some(w2.start()));
        // A registration whose process died: present but unlocked.
        let stale = d.path().join(".locks/writers/00000000deadbeef");
        fs::write(&stale, b"").unwrap();
        assert_eq!(locks.oldest_writer().unwrap(), Some(w2.start()));
        assert!(!stale.exists());
        drop(w2);
        assert_eq!(locks.oldest_writer().unwrap(), None);
        assert_eq!(
            fs::read_dir(d.path().join(".locks/writers"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn one_gc_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let locks = Locks::open(d.path()).unwrap();
        let (g, _now) = locks.gc().unwrap();
        assert!(matches!(locks.gc(), Err(Error::Busy(_))));
        drop(g);
        locks.gc().unwrap();
    }
}
