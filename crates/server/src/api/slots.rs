//! Places counted in all and per key (a principal, an address), taken
//! without waiting and given back when their guard drops.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

struct Counts<K> {
    total: usize,
    by: HashMap<K, usize>,
}

pub(crate) struct Slots<K: Eq + Hash + Clone> {
    inner: Arc<Mutex<Counts<K>>>,
    max: usize,
    per_key: usize,
}

/// A place taken; given back on drop.
pub(crate) struct Slot<K: Eq + Hash + Clone> {
    inner: Arc<Mutex<Counts<K>>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    pub fn new(max: usize, per_key: usize) -> Slots<K> {
        Slots {
            inner: Arc::new(Mutex::new(Counts {
                total: 0,
                by: HashMap::new(),
            })),
            max,
            per_key,
        }
    }

    /// A place for `key`, or `None` when all places or all of `key`'s
    /// are taken.
    pub fn take(&self, key: K) -> Option<Slot<K>> {
        let mut c = self.inner.lock().expect("slots lock");
        let mine = c.by.get(&key).copied().unwrap_or(0);
        if c.total >= self.max || mine >= self.per_key {
            return None;
        }
        c.total += 1;
        *c.by.entry(key.clone()).or_default() += 1;
        Some(Slot {
            inner: self.inner.clone(),
            key,
        })
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut c = self.inner.lock().expect("slots lock");
        c.total -= 1;
        if let Some(n) = c.by.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.by.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_in_all_and_per_key() {
        let s = Slots::new(3, 2);
        let a1 = s.take("a").unwrap();
        let _a2 = s.take("a").unwrap();
        assert!(s.take("a").is_none(), "a has its share");
        let _b1 = s.take("b").unwrap();
        assert!(s.take("c").is_none(), "all are taken");
        drop(a1);
        assert!(s.take("c").is_some());
    }
}
