//! The local cache of an object-storage datastore's chunks: `.cache/NAME`,
//! whole chunk blobs as stored in the bucket, at most `limit` bytes,
//! least recently used out first.
//!
//! Nothing here needs to be durable: every entry is checked (header and
//! CRC) when it is read, and one that fails is dropped and fetched from
//! the bucket again. So entries are written without fsync, and a crash
//! that tears one costs a download, never data.
//!
//! Memory is one LRU entry per cached chunk, bounded by the limit, not by
//! the datastore's size.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lru::LruCache;

use crate::error::{IoContext, Result};

#[derive(Debug)]
pub(crate) struct ChunkCache {
    dir: PathBuf,
    tmp: PathBuf,
    limit: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Name to size.
    lru: LruCache<String, u64>,
    bytes: u64,
}

impl ChunkCache {
    /// Opens the cache in `dir` (creating it), taking in what an earlier
    /// run left, oldest first, within `limit`.
    pub fn open(dir: &Path, tmp: &Path, limit: u64) -> Result<ChunkCache> {
        crate::fsutil::create_dir_durable(dir)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let Ok(meta) = entry.metadata() else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if meta.is_file() {
                let used = meta.accessed().or_else(|_| meta.modified()).ok();
                found.push((used, name, meta.len()));
            }
        }
        found.sort();
        let cache = ChunkCache {
            dir: dir.to_path_buf(),
            tmp: tmp.to_path_buf(),
            limit,
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
        };
        {
            let mut s = cache.lock();
            for (_, name, size) in found {
                s.lru.put(name, size);
                s.bytes += size;
            }
            cache.evict(&mut s);
        }
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn evict(&self, s: &mut State) {
        while s.bytes > self.limit {
            let Some((name, size)) = s.lru.pop_lru() else {
                break;
            };
            s.bytes -= size;
            let _ = fs::remove_file(self.dir.join(name));
        }
    }

    /// The cached blob, if there is one; the caller checks it and calls
    /// [`ChunkCache::remove`] if it is damaged.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        // Looked up (and made the most recent) before the file is read.
        self.lock().lru.get(name)?;
        match fs::read(self.dir.join(name)) {
            Ok(blob) => Some(blob),
            Err(_) => {
                self.remove(name);
                None
            }
        }
    }

    /// Caches a blob (best effort: a cache that cannot be written only
    /// costs downloads later).
    pub fn insert(&self, name: &str, blob: &[u8]) {
        let size = blob.len() as u64;
        if size > self.limit || self.lock().lru.contains(name) {
            return;
        }
        let tmp = self
            .tmp
            .join(format!("cache.{:016x}", rand::random::<u64>()));
        let dest = self.dir.join(name);
        let written = fs::write(&tmp, blob).and_then(|_| fs::rename(&tmp, &dest));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            tracing::debug!("caching chunk {name}: {e}");
            return;
        }
        let mut s = self.lock();
        if s.lru.put(name.to_string(), size).is_none() {
            s.bytes += size;
        }
        self.evict(&mut s);
    }

    pub fn remove(&self, name: &str) {
        let mut s = self.lock();
        if let Some(size) = s.lru.pop(name) {
            s.bytes -= size;
        }
        let _ = fs::remove_file(self.dir.join(name));
    }

    /// Bytes cached now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_limit_least_recently_used_out_first() {
        let d = tempfile::tempdir().unwrap();
        let (dir, tmp) = (d.path().join("cache"), d.path().join("tmp"));
        fs::create_dir(&tmp).unwrap();
        let c = ChunkCache::open(&dir, &tmp, 300).unwrap();
        c.insert("a", &[1; 100]);
        c.insert("b", &[2; 100]);
        c.insert("c", &[3; 100]);
        assert!(c.get("a").is_some()); // a is now the most recent
        c.insert("d", &[4; 100]);
        assert_eq!(c.bytes(), 300);
        assert!(c.get("b").is_none(), "b was the least recently used");
        assert_eq!(c.get("a").unwrap(), vec![1; 100]);
        assert!(!dir.join("b").exists());
        // Too big to cache at all.
        c.insert("huge", &[5; 301]);
        assert!(c.get("huge").is_none());
        // Reopened: the files are taken in again, within a smaller limit.
        drop(c);
        let c = ChunkCache::open(&dir, &tmp, 200).unwrap();
        assert_eq!(c.bytes(), 200);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    }
}
