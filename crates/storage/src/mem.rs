//! Objects in memory: the twin of the other storages for unit tests.

use std::collections::BTreeMap;
use std::ops::{ControlFlow, Range};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::{
    Counters, Error, Kind, ObjectInfo, Put, RequestCounts, Result, Storage, check_key,
    check_prefix, too_large,
};

/// A map of objects behind a mutex, with a switch that makes every
/// request fail (a service that went away).
#[derive(Debug, Default)]
pub struct MemStorage {
    objects: Mutex<BTreeMap<String, (Bytes, i64)>>,
    offline: AtomicBool,
    counts: Counters,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every request fail until set back.
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    /// Sets an object's time (tests of time-based rules).
    pub fn set_modified(&self, key: &str, modified: i64) {
        if let Some(o) = self.map().get_mut(key) {
            o.1 = modified;
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Bytes, i64)>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request(&self, kind: Kind, op: &'static str, key: &str) -> Result<()> {
        self.counts.count(kind);
        if self.offline.load(Ordering::SeqCst) {
            return Err(Error::Request {
                op,
                key: key.to_string(),
                store: self.describe(),
                message: "the storage is offline".into(),
            });
        }
        Ok(())
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Storage for MemStorage {
    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put> {
        check_key(key)?;
        self.request(Kind::Put, "put", key)?;
        let mut map = self.map();
        if map.contains_key(key) {
            return Ok(Put::Existed);
        }
        map.insert(key.to_string(), (data, now()));
        Ok(Put::Created)
    }

    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        check_key(key)?;
        self.request(Kind::Put, "put", key)?;
        self.map().insert(key.to_string(), (data, now()));
        Ok(())
    }

    fn get_bounded(&self, key: &str, max: u64) -> Result<Bytes> {
        check_key(key)?;
        self.request(Kind::Get, "get", key)?;
        let data = self
            .map()
            .get(key)
            .map(|o| o.0.clone())
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        too_large(key, data.len() as u64, max)?;
        Ok(data)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        check_key(key)?;
        self.request(Kind::Get, "get", key)?;
        let map = self.map();
        let data = &map
            .get(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))?
            .0;
        let end = (range.end as usize).min(data.len());
        let start = (range.start as usize).min(end);
        Ok(data.slice(start..end))
    }

    fn head(&self, key: &str) -> Result<ObjectInfo> {
        check_key(key)?;
        self.request(Kind::Head, "head", key)?;
        self.map()
            .get(key)
            .map(|o| ObjectInfo {
                key: key.to_string(),
                size: o.0.len() as u64,
                modified: o.1,
            })
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }

    fn list(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(ObjectInfo) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        check_prefix(prefix)?;
        self.request(Kind::List, "list", prefix)?;
        // A snapshot of the matching keys, so `each` may call back in.
        let found: Vec<ObjectInfo> = self
            .map()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| ObjectInfo {
                key: k.clone(),
                size: o.0.len() as u64,
                modified: o.1,
            })
            .collect();
        for o in found {
            if each(o)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn delete(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            check_key(key)?;
        }
        self.request(Kind::Delete, "delete", keys.first().map_or("", |k| k))?;
        let mut map = self.map();
        for key in keys {
            map.remove(key);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "memory storage".into()
    }

    fn requests(&self) -> RequestCounts {
        self.counts.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meets_the_contract() {
        crate::contract::run(&MemStorage::new());
    }

    #[test]
    fn offline_fails_every_request() {
        let s = MemStorage::new();
        s.put("k", Bytes::from_static(b"v")).unwrap();
        s.set_offline(true);
        assert!(matches!(s.get("k"), Err(Error::Request { .. })));
        s.set_offline(false);
        assert_eq!(s.get("k").unwrap(), Bytes::from_static(b"v"));
    }
}
