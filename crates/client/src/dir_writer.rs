//! Restoring the files of several directories at once. Writing many
//! small files is kernel work (inode allocation, page cache copies) that
//! one thread does at one core's speed, while the network and the digest
//! checks deliver faster; creating entries of one directory on several
//! threads only contends on that directory's lock. So the restore thread
//! hands over batches of files *of one directory*: each batch's files
//! are created, written and given their metadata by one writer thread.
//!
//! A directory's own metadata (its mtime changes whenever an entry is
//! created in it) is set by whoever finishes with it last: the restore
//! thread once it created everything else in it, or the writer of its
//! last batch.
//!
//! Memory is bounded by the content bytes queued; file content travels
//! as slices of the downloaded chunks, never copied.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use hoard_archive::Entry;
use rustix::fs::{Mode, OFlags, Timespec, Timestamps};

use crate::error::{Error, Result};
use crate::xattrs;

/// Content bytes queued for the writers, at most (one larger batch may
/// go alone).
const QUEUED_BYTES: u64 = 64 << 20;
/// Batches queued, at most (each holds its directory open).
const QUEUED_BATCHES: usize = 64;

/// An entry's mtime as both access and modification time.
pub(crate) fn times(e: &Entry) -> Timestamps {
    let t = Timespec {
        tv_sec: e.mtime.sec,
        tv_nsec: e.mtime.nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Owner (as root), mode, extended attributes and times of an open
/// entry, in that order: chown clears setuid bits and capabilities,
/// chmod rewrites an ACL's mask. Returns what failed.
pub(crate) fn set_metadata(
    fd: impl AsFd,
    e: &Entry,
    as_root: bool,
) -> Vec<(String, std::io::Error)> {
    let mut failed = Vec::new();
    if as_root
        && let Err(err) = rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(e.uid)),
            Some(rustix::fs::Gid::from_raw(e.gid)),
        )
    {
        failed.push(("cannot set owner".to_string(), err.into()));
    }
    if let Err(err) = rustix::fs::fchmod(&fd, Mode::from_raw_mode(e.mode)) {
        failed.push(("cannot set mode".to_string(), err.into()));
    }
    for (name, err) in xattrs::set_fd(&fd, &e.xattrs) {
        failed.push((format!("cannot set extended attribute {name}"), err));
    }
    if let Err(err) = rustix::fs::futimens(&fd, &times(e)) {
        failed.push(("cannot set times".to_string(), err.into()));
    }
    failed
}

/// A directory being restored.
pub(crate) struct DirState {
    pub fd: OwnedFd,
    pub path: PathBuf,
    meta: Entry,
    /// Batches not yet written, plus one while the restore thread still
    /// creates entries in it.
    holds: AtomicUsize,
}

impl DirState {
    pub(crate) fn new(fd: OwnedFd, path: PathBuf, meta: Entry) -> Arc<DirState> {
        Arc::new(DirState {
            fd,
            path,
            meta,
            holds: AtomicUsize::new(1),
        })
    }
}

/// One file of a batch: its entry and content, each piece with its
/// offset in the file (a sparse file's holes are the gaps up to its
/// size).
pub(crate) struct FileWork {
    pub path: PathBuf,
    pub entry: Entry,
    pub pieces: Vec<(u64, Bytes)>,
    pub sparse: bool,
}

/// Files of one directory for one writer.
pub(crate) struct Batch {
    pub dir: Arc<DirState>,
    pub files: Vec<FileWork>,
    pub bytes: u64,
}

struct Shared {
    /// Batches and bytes queued or being written.
    queued: Mutex<(usize, u64)>,
    idle: Condvar,
    /// The first error a writer met.
    error: Mutex<Option<Error>>,
    /// Metadata that could not be set (each warned about).
    failed: AtomicU64,
    as_root: bool,
}

impl Shared {
    /// Drops one hold on `dir`; the last one sets its metadata.
    fn release(&self, dir: &DirState) {
        if dir.holds.fetch_sub(1, Ordering::AcqRel) == 1 {
            for (what, err) in set_metadata(&dir.fd, &dir.meta, self.as_root) {
                tracing::warn!("{}: {what}: {err}", dir.path.display());
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn write_batch(&self, batch: &Batch) -> Result<()> {
        use std::os::unix::fs::FileExt;
        for f in &batch.files {
            let target_io = |source: std::io::Error| Error::Target {
                path: f.path.clone(),
                source,
            };
            let fd = rustix::fs::openat(
                &batch.dir.fd,
                std::ffi::OsStr::from_bytes(&f.entry.name),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| target_io(e.into()))?;
            let file = std::fs::File::from(fd);
            for (at, data) in &f.pieces {
                file.write_all_at(data, *at).map_err(target_io)?;
            }
            if f.sparse {
                file.set_len(f.entry.size).map_err(target_io)?;
            }
            for (what, err) in set_metadata(&file, &f.entry, self.as_root) {
                tracing::warn!("{}: {what}: {err}", f.path.display());
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// The writer threads of one restore.
pub(crate) struct Writers {
    tx: Option<std::sync::mpsc::Sender<Batch>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Writers {
    pub(crate) fn new(threads: usize, as_root: bool) -> Writers {
        let (tx, rx) = std::sync::mpsc::channel::<Batch>();
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            queued: Mutex::new((0, 0)),
            idle: Condvar::new(),
            error: Mutex::new(None),
            failed: AtomicU64::new(0),
            as_root,
        });
        let threads = (0..threads.max(1))
            .map(|i| {
                let (rx, shared) = (rx.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("hoard-write-{i}"))
                    .spawn(move || {
                        loop {
                            let next = rx.lock().expect("lock poisoned").recv();
                            let Ok(batch) = next else { return };
                            if let Err(e) = shared.write_batch(&batch) {
                                shared.error.lock().expect("lock poisoned").get_or_insert(e);
                            }
                            shared.release(&batch.dir);
                            let mut q = shared.queued.lock().expect("lock poisoned");
                            q.0 -= 1;
                            q.1 -= batch.bytes;
                            shared.idle.notify_all();
                        }
                    })
                    .expect("spawn a writer thread")
            })
            .collect();
        Writers {
            tx: Some(tx),
            threads,
            shared,
        }
    }

    /// Queues a batch, waiting while too much is queued. Returns a
    /// writer's earlier error, if one failed.
    pub(crate) fn submit(&self, batch: Batch) -> Result<()> {
        self.check()?;
        {
            let mut q = self.shared.queued.lock().expect("lock poisoned");
            while q.0 >= QUEUED_BATCHES || (q.0 > 0 && q.1 + batch.bytes > QUEUED_BYTES) {
                q = self.shared.idle.wait(q).expect("lock poisoned");
            }
            q.0 += 1;
            q.1 += batch.bytes;
        }
        batch.dir.holds.fetch_add(1, Ordering::AcqRel);
        self.tx
            .as_ref()
            .expect("open until finished")
            .send(batch)
            .map_err(|_| Error::Protocol("the file writers stopped".into()))
    }

    /// The restore thread is done creating entries in `dir`.
    pub(crate) fn release(&self, dir: &DirState) {
        self.shared.release(dir);
    }

    /// Waits until every queued batch is written.
    pub(crate) fn drain(&self) -> Result<()> {
        let mut q = self.shared.queued.lock().expect("lock poisoned");
        while q.0 > 0 {
            q = self.shared.idle.wait(q).expect("lock poisoned");
        }
        drop(q);
        self.check()
    }

    fn check(&self) -> Result<()> {
        match self.shared.error.lock().expect("lock poisoned").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Drains, stops the writers, and returns how many metadata settings
    /// failed.
    pub(crate) fn finish(mut self) -> Result<u64> {
        let drained = self.drain();
        self.stop();
        drained?;
        Ok(self.shared.failed.load(Ordering::Relaxed))
    }

    fn stop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop();
    }
}
