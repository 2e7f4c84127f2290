//! The packet-protocol sessions now open, for `GET /api/v1/connections`
//! and the connection gauge.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LiveConnection {
    pub peer: String,
    pub principal: String,
    pub protocol: u32,
    pub since: i64,
    pub bytes_received: u64,
    pub chunks_received: u64,
    /// Snapshots the session has open for writing.
    pub backups: BTreeSet<String>,
}

/// What a session received, counted by the session itself without the
/// registry's lock (an upload is the hot path).
#[derive(Default)]
pub(crate) struct Received {
    bytes: AtomicU64,
    chunks: AtomicU64,
}

impl Received {
    pub fn chunk(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.chunks.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub(crate) struct Live {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, (LiveConnection, Arc<Received>)>>,
}

impl Live {
    /// Lists a new session; its id and its counters.
    pub fn register(
        &self,
        peer: SocketAddr,
        principal: &str,
        protocol: u32,
    ) -> (u64, Arc<Received>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let c = LiveConnection {
            peer: peer.to_string(),
            principal: principal.to_string(),
            protocol,
            since: jiff::Timestamp::now().as_second(),
            bytes_received: 0,
            chunks_received: 0,
            backups: BTreeSet::new(),
        };
        let received = Arc::new(Received::default());
        self.conns
            .lock()
            .expect("live lock")
            .insert(id, (c, received.clone()));
        (id, received)
    }

    pub fn unregister(&self, id: u64) {
        self.conns.lock().expect("live lock").remove(&id);
    }

    fn with(&self, id: u64, f: impl FnOnce(&mut LiveConnection)) {
        if let Some((c, _)) = self.conns.lock().expect("live lock").get_mut(&id) {
            f(c);
        }
    }

    pub fn backup_opened(&self, id: u64, snapshot: String) {
        self.with(id, |c| {
            c.backups.insert(snapshot);
        });
    }

    pub fn backup_closed(&self, id: u64, snapshot: &str) {
        self.with(id, |c| {
            c.backups.remove(snapshot);
        });
    }

    pub fn count(&self) -> usize {
        self.conns.lock().expect("live lock").len()
    }

    pub fn list(&self) -> Vec<LiveConnection> {
        let mut v: Vec<_> = self
            .conns
            .lock()
            .expect("live lock")
            .values()
            .map(|(c, r)| LiveConnection {
                bytes_received: r.bytes.load(Ordering::Relaxed),
                chunks_received: r.chunks.load(Ordering::Relaxed),
                ..c.clone()
            })
            .collect();
        v.sort_by(|a, b| a.since.cmp(&b.since).then(a.peer.cmp(&b.peer)));
        v
    }
}
