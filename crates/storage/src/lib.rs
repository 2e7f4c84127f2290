//! Where a datastore's objects are kept.
//!
//! A [`Storage`] is a flat namespace of immutable-ish objects named by
//! `/`-separated keys, with the few operations a content-addressed store
//! needs: create-if-absent (chunks), replace (manifests), whole and ranged
//! reads, size, streaming listing by prefix, and delete. Three kinds:
//! [`DirStorage`] (a directory), [`MemStorage`] (tests) and
//! [`S3Storage`] (any S3-compatible service).
//!
//! The trait is blocking on purpose: the datastore above it is blocking
//! code run on the server's blocking threads, never on the async
//! runtime's workers. [`S3Storage`] drives its requests on a runtime of
//! its own.
//!
//! What is *not* here: what a chunk is (the codec), how GC marks (the
//! datastore's strategy per kind), caching. This crate moves bytes.

mod dir;
mod error;
mod mem;
mod s3;
#[cfg(any(test, feature = "seaweedfs"))]
pub mod seaweedfs;

use std::ops::{ControlFlow, Range};

use bytes::Bytes;

pub use dir::DirStorage;
pub use error::{Error, Result};
pub use mem::MemStorage;
pub use s3::{Addressing, S3Config, S3Storage};

/// What a create-if-absent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    /// An object of that key was there; it is unchanged.
    Existed,
}

/// One listed or inspected object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key, without the storage's own prefix.
    pub key: String,
    pub size: u64,
    /// When it was last written, in seconds since the epoch, by the
    /// storage's clock.
    pub modified: i64,
}

/// Requests a storage sent, by kind (S3 counts HTTP requests, retries
/// not included; the others count calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    pub put: u64,
    pub get: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.put + self.get + self.head + self.list + self.delete
    }

    /// The requests since `earlier`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            put: self.put - earlier.put,
            get: self.get - earlier.get,
            head: self.head - earlier.head,
            list: self.list - earlier.list,
            delete: self.delete - earlier.delete,
        }
    }
}

/// Request counters by kind, for [`Storage::requests`].
#[derive(Debug, Default)]
pub(crate) struct Counters([std::sync::atomic::AtomicU64; 5]);

/// The kinds [`Counters`] tells apart.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Put,
    Get,
    Head,
    List,
    Delete,
}

impl Counters {
    pub fn count(&self, kind: Kind) {
        self.0[kind as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RequestCounts {
        let c = |k: Kind| self.0[k as usize].load(std::sync::atomic::Ordering::Relaxed);
        RequestCounts {
            put: c(Kind::Put),
            get: c(Kind::Get),
            head: c(Kind::Head),
            list: c(Kind::List),
            delete: c(Kind::Delete),
        }
    }
}

/// A place to keep objects. Every method blocks; call them from blocking
/// threads only.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Stores `data` under `key` unless an object of that key exists;
    /// atomic: of two concurrent creates exactly one is `Created`, and no
    /// reader ever sees a partial object.
    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put>;

    /// Stores `data` under `key`, replacing any object there, atomically.
    fn put(&self, key: &str, data: Bytes) -> Result<()>;

    /// The whole object; [`Error::NotFound`] if there is none.
    fn get(&self, key: &str) -> Result<Bytes> {
        self.get_bounded(key, u64::MAX)
    }

    /// The whole object if it has at most `max` bytes, else
    /// [`Error::TooLarge`] without reading it.
    fn get_bounded(&self, key: &str, max: u64) -> Result<Bytes>;

    /// Bytes `range` of the object (fewer if it is shorter).
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;

    /// The object's size and time, without its data.
    fn head(&self, key: &str) -> Result<ObjectInfo>;

    /// Calls `each` for every object whose key starts with `prefix`, in
    /// pages: memory does not grow with the number of objects. `each` may
    /// stop the listing early.
    fn list(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(ObjectInfo) -> Result<ControlFlow<()>>,
    ) -> Result<()>;

    /// Removes the objects; keys that name nothing are no error.
    fn delete(&self, keys: &[String]) -> Result<()>;

    /// Where the objects are, for messages (never credentials).
    fn describe(&self) -> String;

    /// Requests sent so far.
    fn requests(&self) -> RequestCounts;
}

/// Checks a key: `/`-separated parts, none empty or starting with `.`,
/// of letters, digits and `._:-` only. Every storage refuses other keys,
/// so no key can leave a [`DirStorage`]'s directory (or reach its
/// `.tmp/`), or mean two things.
pub fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::BadKey(key.to_string()))
    }
}

/// Whether `storage` really creates only if absent: a second create of a
/// probe key must find the first. Some S3 imitations ignore the
/// condition and overwrite; a datastore must not rely on them for it.
/// Leaves no object behind (unless its delete fails).
pub fn keeps_create_if_absent(storage: &dyn Storage) -> Result<bool> {
    let key = format!("conditional-probe-{:016x}", rand::random::<u64>());
    let first = storage.put_if_absent(&key, Bytes::from_static(b"1"));
    let second = first
        .as_ref()
        .ok()
        .map(|_| storage.put_if_absent(&key, Bytes::from_static(b"2")));
    let _ = storage.delete(std::slice::from_ref(&key));
    first?;
    match second {
        Some(Ok(Put::Existed)) => Ok(true),
        Some(Ok(Put::Created)) | None => Ok(false),
        Some(Err(e)) => Err(e),
    }
}

/// [`Error::TooLarge`] if `size` exceeds `max`.
pub(crate) fn too_large(key: &str, size: u64, max: u64) -> Result<()> {
    if size > max {
        return Err(Error::TooLarge {
            key: key.to_string(),
            size,
            max,
        });
    }
    Ok(())
}

/// Checks a listing prefix: a key, or a key followed by `/`, or empty.
pub fn check_prefix(prefix: &str) -> Result<()> {
    match prefix.strip_suffix('/') {
        Some("") => Err(Error::BadKey(prefix.to_string())),
        Some(p) => check_key(p),
        None if prefix.is_empty() => Ok(()),
        None => check_key(prefix),
    }
}

#[cfg(test)]
pub(crate) mod contract {
    //! The behaviour every storage must have; each implementation's tests
    //! run it.
    use super::*;

    pub fn run(s: &dyn Storage) {
        let b = |x: &'static [u8]| Bytes::from_static(x);
        assert!(matches!(s.get("a/x"), Err(Error::NotFound(_))));
        assert!(matches!(s.head("a/x"), Err(Error::NotFound(_))));
        assert_eq!(s.put_if_absent("a/x", b(b"one")).unwrap(), Put::Created);
        assert_eq!(s.put_if_absent("a/x", b(b"two")).unwrap(), Put::Existed);
        assert_eq!(s.get("a/x").unwrap(), b(b"one"));
        assert_eq!(s.get_range("a/x", 1..3).unwrap(), b(b"ne"));
        assert_eq!(s.head("a/x").unwrap().size, 3);
        assert!(matches!(
            s.get_bounded("a/x", 2),
            Err(Error::TooLarge { size: 3, .. })
        ));
        assert_eq!(s.get_bounded("a/x", 3).unwrap(), b(b"one"));
        s.put("a/x", b(b"three")).unwrap();
        assert_eq!(s.get("a/x").unwrap(), b(b"three"));
        s.put("a/y", b(b"y")).unwrap();
        s.put("b/deep/z", b(b"zz")).unwrap();
        s.put("ab", b(b"ab")).unwrap();
        let mut seen = Vec::new();
        s.list("a/", &mut |o| {
            seen.push((o.key, o.size));
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        seen.sort();
        assert_eq!(seen, vec![("a/x".into(), 5), ("a/y".into(), 1)]);
        let mut all = 0;
        s.list("", &mut |_| {
            all += 1;
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert_eq!(all, 4);
        let mut first = 0;
        s.list("", &mut |_| {
            first += 1;
            Ok(ControlFlow::Break(()))
        })
        .unwrap();
        assert_eq!(first, 1);
        s.delete(&["a/x".into(), "a/none".into()]).unwrap();
        assert!(matches!(s.get("a/x"), Err(Error::NotFound(_))));
        assert_eq!(s.get("b/deep/z").unwrap(), b(b"zz"));
        for bad in ["", "/a", "a//b", "../x", "a/./b", "a b", "a\\b"] {
            assert!(
                matches!(s.put(bad, b(b"x")), Err(Error::BadKey(_))),
                "{bad}"
            );
        }
        assert!(s.requests().total() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a key is made of, one that passes stays inside the
        /// directory it is joined to: every part a plain name.
        #[test]
        fn accepted_keys_stay_inside(key in "[a-z./:_\\-]{0,12}|\\PC{0,12}") {
            if check_key(&key).is_ok() {
                let joined = std::path::Path::new("/root").join(&key);
                prop_assert!(joined.starts_with("/root"));
                for c in std::path::Path::new(&key).components() {
                    prop_assert!(matches!(c, std::path::Component::Normal(_)), "{key:?}");
                }
                prop_assert!(!key.split('/').any(|p| p.starts_with('.')));
            }
        }
    }

    /// A storage that takes create-if-absent for a plain PUT, as some
    /// S3 imitations do.
    #[derive(Debug)]
    struct Overwriting(MemStorage);

    impl Storage for Overwriting {
        fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put> {
            self.0.put(key, data).map(|_| Put::Created)
        }
        fn put(&self, key: &str, data: Bytes) -> Result<()> {
            self.0.put(key, data)
        }
        fn get_bounded(&self, key: &str, max: u64) -> Result<Bytes> {
            self.0.get_bounded(key, max)
        }
        fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
            self.0.get_range(key, range)
        }
        fn head(&self, key: &str) -> Result<ObjectInfo> {
            self.0.head(key)
        }
        fn list(
            &self,
            prefix: &str,
            each: &mut dyn FnMut(ObjectInfo) -> Result<ControlFlow<()>>,
        ) -> Result<()> {
            self.0.list(prefix, each)
        }
        fn delete(&self, keys: &[String]) -> Result<()> {
            self.0.delete(keys)
        }
        fn describe(&self) -> String {
            "overwriting".into()
        }
        fn requests(&self) -> RequestCounts {
            self.0.requests()
        }
    }

    #[test]
    fn a_storage_that_overwrites_is_found_out() {
        assert!(keeps_create_if_absent(&MemStorage::new()).unwrap());
        let bad = Overwriting(MemStorage::new());
        assert!(!keeps_create_if_absent(&bad).unwrap());
        let mut left = 0;
        bad.list("", &mut |_| {
            left += 1;
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert_eq!(left, 0, "the probe cleans up");
    }

    #[test]
    fn keys_are_plain_relative_names() {
        for ok in [
            "a",
            "chunks/ab/0f",
            "vm/100/2019-04-23T12:23:36Z/manifest.json",
        ] {
            check_key(ok).unwrap();
        }
        for bad in [
            "", "/", "a/", "/a", "a//b", ".", "..", "a/../b", "é", "a\0", ".tmp/x",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        check_prefix("").unwrap();
        check_prefix("chunks/").unwrap();
        assert!(check_prefix("/").is_err());
    }
}
