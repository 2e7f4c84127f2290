//! Who gets a connection: the total cap, the cap per principal, and the
//! set of connections still handshaking. When that set is full, a new
//! connection takes the place of a random one (OpenSSH's MaxStartups
//! drops at random too), or of the oldest from its own address once that
//! address has [`PER_ADDRESS_PENDING`] of them. An attacker who opens
//! thousands of idle connections therefore holds at most
//! `max_pending_handshakes` of them, each for a moment; a real client's
//! handshake survives a burst of N others with probability about
//! (1 − 1/max)^N, and a flood from one address never evicts another
//! address's handshakes once it is at its own cap.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rand::Rng;

use tokio::sync::oneshot;

use crate::Limits;

/// Handshakes in progress from one address at most.
pub const PER_ADDRESS_PENDING: usize = 16;

#[derive(Clone)]
pub struct Admission {
    inner: Arc<Mutex<State>>,
    max_connections: usize,
    max_per_principal: usize,
    max_pending: usize,
}

struct State {
    connections: usize,
    per_principal: HashMap<String, usize>,
    /// Handshakes in progress, oldest first: an id, the peer's address,
    /// and the sender whose drop tells that handshake it was evicted.
    pending: VecDeque<(u64, IpAddr, oneshot::Sender<()>)>,
    next_id: u64,
}

/// One admitted connection; dropping it gives the place back.
pub struct Slot {
    admission: Admission,
}

/// A connection in its handshake; [`Pending::evicted`] completes when a
/// newer one took its place.
pub struct Pending {
    admission: Admission,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

/// An authenticated connection's place in its principal's count.
pub struct PrincipalSlot {
    admission: Admission,
    name: String,
}

impl Admission {
    pub fn new(limits: &Limits) -> Admission {
        Admission {
            inner: Arc::new(Mutex::new(State {
                connections: 0,
                per_principal: HashMap::new(),
                pending: VecDeque::new(),
                next_id: 0,
            })),
            max_connections: limits.max_connections.max(1),
            max_per_principal: limits.max_connections_per_principal.max(1),
            max_pending: limits.max_pending_handshakes.max(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().expect("lock poisoned")
    }

    /// Counts a new connection in, unless the server is full.
    pub fn connect(&self) -> Result<Slot, String> {
        let mut s = self.state();
        if s.connections >= self.max_connections {
            return Err(format!(
                "the server has {} connections, its limit",
                s.connections
            ));
        }
        s.connections += 1;
        Ok(Slot {
            admission: self.clone(),
        })
    }

    /// Enters the set of handshakes in progress, making room if needed
    /// (see the module documentation). Dropping an entry's sender wakes
    /// the evicted handshake.
    pub fn begin_handshake(&self, addr: IpAddr) -> Pending {
        let mut s = self.state();
        let from_addr = s.pending.iter().filter(|(_, a, _)| *a == addr).count();
        if from_addr >= PER_ADDRESS_PENDING {
            if let Some(i) = s.pending.iter().position(|(_, a, _)| *a == addr) {
                s.pending.remove(i);
            }
        } else if s.pending.len() >= self.max_pending {
            let i = rand::rng().random_range(0..s.pending.len());
            s.pending.remove(i);
        }
        let id = s.next_id;
        s.next_id += 1;
        let (tx, rx) = oneshot::channel();
        s.pending.push_back((id, addr, tx));
        Pending {
            admission: self.clone(),
            id,
            evicted: rx,
        }
    }

    /// Counts an authenticated connection against its principal.
    pub fn enter(&self, principal: &str) -> Result<PrincipalSlot, String> {
        let mut s = self.state();
        let n = s.per_principal.entry(principal.to_string()).or_default();
        if *n >= self.max_per_principal {
            return Err(format!("{principal} has {n} connections open, its limit"));
        }
        *n += 1;
        Ok(PrincipalSlot {
            admission: self.clone(),
            name: principal.to_string(),
        })
    }

    /// Connections counted in now (for tests and logs).
    pub fn connections(&self) -> usize {
        self.state().connections
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.state().connections -= 1;
    }
}

impl Pending {
    /// Completes when a newer handshake evicted this one.
    pub async fn evicted(&mut self) {
        let _ = (&mut self.evicted).await;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut s = self.admission.state();
        s.pending.retain(|(id, _, _)| *id != self.id);
    }
}

impl Drop for PrincipalSlot {
    fn drop(&mut self) {
        let mut s = self.admission.state();
        if let Some(n) = s.per_principal.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                s.per_principal.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per: usize, pending: usize) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_principal: per,
            max_pending_handshakes: pending,
            ..Limits::default()
        }
    }

    #[test]
    fn caps_count_and_release() {
        let a = Admission::new(&limits(2, 1, 4));
        let s1 = a.connect().unwrap();
        let _s2 = a.connect().unwrap();
        assert!(a.connect().is_err());
        drop(s1);
        let _s3 = a.connect().unwrap();
        let p = a.enter("t").unwrap();
        assert!(a.enter("t").is_err());
        let _q = a.enter("u").unwrap();
        drop(p);
        a.enter("t").unwrap();
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test]
    async fn a_flood_from_one_address_evicts_only_its_own() {
        let a = Admission::new(&limits(1000, 10, 100));
        let mut real = a.begin_handshake(ip(1));
        let mut flood: Vec<Pending> = (0..500).map(|_| a.begin_handshake(ip(2))).collect();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), real.evicted()).await;
        assert!(waited.is_err(), "another address's handshake stays");
        assert_eq!(a.state().pending.len(), 1 + PER_ADDRESS_PENDING);
        // The flood's oldest were the ones evicted.
        tokio::time::timeout(std::time::Duration::from_secs(1), flood[0].evicted())
            .await
            .expect("evicted");
        drop(flood);
        assert_eq!(a.state().pending.len(), 1);
    }

    #[tokio::test]
    async fn a_full_set_makes_room_at_random() {
        let a = Admission::new(&limits(1000, 10, 4));
        let mut all: Vec<Pending> = (0..4).map(|i| a.begin_handshake(ip(i))).collect();
        let _new = a.begin_handshake(ip(9));
        assert_eq!(a.state().pending.len(), 4);
        let mut evicted = 0;
        for p in &mut all {
            if tokio::time::timeout(std::time::Duration::from_millis(5), p.evicted())
                .await
                .is_ok()
            {
                evicted += 1;
            }
        }
        assert_eq!(evicted, 1);
    }
}
