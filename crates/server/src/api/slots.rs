//! Places counted in all and per key (a principal, an address), taken
//! without waiting and given back when their guard drops.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

struct Counts<K> {
    total: usize,
    by: HashMap<K, usize>,
}

/// An address as the HTTP connection cap counts it: an IPv4 address, or
/// the /64 network of an IPv6 one (what one host is normally given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AddressKey(u128);

impl From<std::net::IpAddr> for AddressKey {
    fn from(ip: std::net::IpAddr) -> AddressKey {
        match ip {
            std::net::IpAddr::V4(v4) => AddressKey(u32::from(v4) as u128),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey(u32::from(v4) as u128),
                None => AddressKey((u128::from(v6) >> 64 << 64) | (1 << 32)),
            },
        }
    }
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
    fn an_ipv6_64_is_one_address() {
        let a: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(AddressKey::from(a), AddressKey::from(b));
        assert_ne!(AddressKey::from(a), AddressKey::from(c));
        let v4: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(AddressKey::from(v4), AddressKey::from(mapped));
    }

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
