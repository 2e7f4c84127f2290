//! Durable file creation: temp name, fsync, rename, fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::error::{IoContext, Result};
use crate::failpoint;

/// Opens a file for reading without following a symbolic link in its
/// last component: a link planted in the datastore is refused (ELOOP),
/// never served.
pub(crate) fn open_nofollow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Refuses `root/a`, `root/a/b`, … (each of `parts` in turn) if one is
/// a symbolic link. Missing components are fine: they are created later
/// as real directories.
pub(crate) fn refuse_symlinks(root: &Path, parts: &[&str]) -> Result<()> {
    let mut path = root.to_path_buf();
    for part in parts {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(crate::error::Error::Symlink(path));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx(|| format!("checking {}", path.display())),
        }
    }
    Ok(())
}

/// fsync a directory so that renames and creations in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

/// Creates `dir` and any missing parents, fsyncing each parent that gained
/// an entry, so that the new directory survives a crash.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // A relative path's last parent is "", which is the current directory.
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e).ctx(|| format!("creating directory {}", dir.display())),
    }
    fsync_dir(parent.unwrap_or(Path::new(".")))
}

/// A file under the datastore's `.tmp/` that is removed on drop unless
/// [`TempFile::persist`] moved it to its final name.
pub(crate) struct TempFile {
    pub file: File,
    path: PathBuf,
    /// What it will be (`chunk`, `fidx`, …), for the crash points.
    kind: String,
    persisted: bool,
}

impl TempFile {
    pub fn create(tmp_dir: &Path, hint: &str) -> Result<Self> {
        let tag: u64 = rand::rng().random();
        let path = tmp_dir.join(format!("{hint}.{tag:016x}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        Ok(TempFile {
            file,
            path,
            kind: hint.to_string(),
            persisted: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// fsync, rename to `dest`, fsync `dest`'s directory.
    pub fn persist(self, dest: &Path) -> Result<()> {
        self.sync()?;
        let kind = self.kind.clone();
        self.rename(dest)?;
        failpoint::write_step(&kind, "renamed")
            .ctx(|| format!("syncing the directory of {}", dest.display()))?;
        fsync_dir(dest.parent().unwrap_or(Path::new(".")))
    }

    pub fn sync(&self) -> Result<()> {
        failpoint::write_step(&self.kind, "sync")
            .ctx(|| format!("syncing {}", self.path.display()))?;
        self.file
            .sync_all()
            .ctx(|| format!("syncing {}", self.path.display()))
    }

    /// Renames to `dest`; the caller has synced the file and syncs the
    /// directory.
    pub fn rename(mut self, dest: &Path) -> Result<()> {
        failpoint::write_step(&self.kind, "rename")
            .ctx(|| format!("renaming to {}", dest.display()))?;
        fs::rename(&self.path, dest).ctx(|| format!("renaming to {}", dest.display()))?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `data` to `dest` atomically and durably via a temp file.
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, data: &[u8]) -> Result<()> {
    let kind = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("atomic");
    write_atomic_as(tmp_dir, dest, data, kind)
}

/// [`write_atomic`] with the temp file named after `hint`.
pub(crate) fn write_atomic_as(tmp_dir: &Path, dest: &Path, data: &[u8], hint: &str) -> Result<()> {
    let mut t = TempFile::create(tmp_dir, hint)?;
    t.file
        .write_all(data)
        .ctx(|| format!("writing {}", dest.display()))?;
    t.persist(dest)
}
