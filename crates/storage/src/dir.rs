//! Objects as files under a directory: `ROOT/KEY`.
//!
//! Writes go to `ROOT/.tmp/`, are fsynced, and appear under their key by
//! `link(2)` (create-if-absent: fails if the name exists) or `rename(2)`
//! (replace), then the directory is fsynced, so an object that exists is
//! complete and durable.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::{ControlFlow, Range};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::{
    Error, ObjectInfo, Put, RequestCounts, Result, Storage, check_key, check_prefix, too_large,
};

#[derive(Debug)]
pub struct DirStorage {
    root: PathBuf,
    calls: AtomicU64,
}

impl DirStorage {
    /// Opens (creating if needed) the directory `root`.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join(".tmp")).map_err(|e| io("open", root, &e))?;
        Ok(DirStorage {
            root: root.to_path_buf(),
            calls: AtomicU64::new(0),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(self.root.join(key))
    }

    /// Writes `data` to a synced temp file.
    fn temp(&self, data: &[u8]) -> std::io::Result<PathBuf> {
        let path = self
            .root
            .join(".tmp")
            .join(format!("put.{:016x}", rand::random::<u64>()));
        let mut f = File::options().write(true).create_new(true).open(&path)?;
        let written = f.write_all(data).and_then(|_| f.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    fn parent_of(&self, dest: &Path) -> std::io::Result<PathBuf> {
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent)?;
        Ok(parent)
    }

    fn write(&self, key: &str, data: &[u8], replace: bool) -> Result<Put> {
        let dest = self.path(key)?;
        let err = |e: std::io::Error| io("put", &dest, &e);
        let parent = self.parent_of(&dest).map_err(err)?;
        let tmp = self.temp(data).map_err(err)?;
        let placed = if replace {
            fs::rename(&tmp, &dest).map(|_| Put::Created)
        } else {
            let linked = match fs::hard_link(&tmp, &dest) {
                Ok(()) => Ok(Put::Created),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Put::Existed),
                Err(e) => Err(e),
            };
            let _ = fs::remove_file(&tmp);
            linked
        };
        let placed = placed.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err(e)
        })?;
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(placed)
    }
}

fn io(op: &'static str, path: &Path, e: &std::io::Error) -> Error {
    Error::Request {
        op,
        key: path.display().to_string(),
        store: "directory storage".into(),
        message: e.to_string(),
    }
}

fn not_found_or(op: &'static str, key: &str, path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::NotFound(key.to_string())
    } else {
        io(op, path, &e)
    }
}

fn info(key: String, meta: &fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        key,
        size: meta.len(),
        modified: meta.mtime(),
    }
}

impl Storage for DirStorage {
    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put> {
        self.write(key, &data, false)
    }

    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.write(key, &data, true).map(|_| ())
    }

    fn get_bounded(&self, key: &str, max: u64) -> Result<Bytes> {
        let path = self.path(key)?;
        let mut f = File::open(&path).map_err(|e| not_found_or("get", key, &path, e))?;
        let len = f.metadata().map_err(|e| io("get", &path, &e))?.len();
        too_large(key, len, max)?;
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf).map_err(|e| io("get", &path, &e))?;
        Ok(Bytes::from(buf))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        let read = || -> std::io::Result<Vec<u8>> {
            let mut f = File::open(&path)?;
            f.seek(SeekFrom::Start(range.start))?;
            let mut buf = Vec::new();
            f.take(range.end.saturating_sub(range.start))
                .read_to_end(&mut buf)?;
            Ok(buf)
        };
        read()
            .map(Bytes::from)
            .map_err(|e| not_found_or("get", key, &path, e))
    }

    fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = self.path(key)?;
        fs::symlink_metadata(&path)
            .map(|m| info(key.to_string(), &m))
            .map_err(|e| not_found_or("head", key, &path, e))
    }

    fn list(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(ObjectInfo) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        check_prefix(prefix)?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        // Walk the deepest directory the prefix names whole, filter by the
        // rest. One directory's listing at a time is held.
        let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let mut stack = vec![dir_part.to_string()];
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() {
                self.root.clone()
            } else {
                self.root.join(&rel)
            };
            let entries = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("list", &dir, &e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io("list", &dir, &e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if check_key(&key).is_err() {
                    continue; // .tmp and anything no key could name
                }
                let meta = entry.metadata().map_err(|e| io("list", &dir, &e))?;
                if meta.is_dir() {
                    if prefix.starts_with(&key) || key.starts_with(prefix) {
                        stack.push(key);
                    }
                } else if meta.is_file()
                    && key.starts_with(prefix)
                    && each(info(key, &meta))?.is_break()
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn delete(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            let path = self.path(key)?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("delete", &path, &e)),
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    fn requests(&self) -> RequestCounts {
        // Calls are not told apart: a directory has no request cost.
        RequestCounts {
            get: self.calls.load(Ordering::Relaxed),
            ..RequestCounts::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meets_the_contract() {
        let d = tempfile::tempdir().unwrap();
        crate::contract::run(&DirStorage::open(d.path()).unwrap());
    }

    #[test]
    fn leaves_no_temp_files_and_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStorage::open(&d.path().join("objects")).unwrap();
        s.put_if_absent("k/v", Bytes::from_static(b"1")).unwrap();
        s.put_if_absent("k/v", Bytes::from_static(b"2")).unwrap();
        assert_eq!(
            fs::read_dir(d.path().join("objects/.tmp")).unwrap().count(),
            0
        );
        assert!(s.put("../escape", Bytes::from_static(b"x")).is_err());
        assert!(!d.path().join("escape").exists());
    }
}
