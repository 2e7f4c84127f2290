//! Who gets a connection: the total cap, the cap per principal, and the
//! queue of connections still handshaking, of which the oldest is dropped
//! when a new one needs room (what OpenSSH calls MaxStartups). An
//! attacker who opens thousands of idle connections therefore holds at
//! most `max_pending_handshakes` of them, each for a moment, and a real
//! client's connect, being the newest, gets through.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::Limits;

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
    /// Handshakes in progress, oldest first: an id and the sender whose
    /// drop tells that handshake it was evicted.
    pending: VecDeque<(u64, oneshot::Sender<()>)>,
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

    /// Enters the handshake queue, evicting the oldest handshake if the
    /// queue is full.
    pub fn begin_handshake(&self) -> Pending {
        let mut s = self.state();
        while s.pending.len() >= self.max_pending {
            // Dropping the sender wakes the evicted handshake.
            s.pending.pop_front();
        }
        let id = s.next_id;
        s.next_id += 1;
        let (tx, rx) = oneshot::channel();
        s.pending.push_back((id, tx));
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
        s.pending.retain(|(id, _)| *id != self.id);
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

    #[tokio::test]
    async fn the_oldest_handshake_makes_room() {
        let a = Admission::new(&limits(10, 10, 2));
        let mut first = a.begin_handshake();
        let mut second = a.begin_handshake();
        let _third = a.begin_handshake();
        tokio::time::timeout(std::time::Duration::from_secs(1), first.evicted())
            .await
            .expect("the oldest is evicted");
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), second.evicted()).await;
        assert!(waited.is_err(), "the second stays");
        drop(second);
        assert_eq!(a.state().pending.len(), 1);
    }
}
