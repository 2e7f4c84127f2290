//! Sessions of logged-in users: in memory only, so a restart logs
//! everyone out, and nothing on disk can be stolen to resume one.
//!
//! A session id is 256 random bits sent once in the `Set-Cookie` of the
//! login; the table is keyed by its SHA-256, so neither lookups nor a
//! dump of memory hand out a usable cookie. Each session has its own CSRF
//! token (another 256 random bits) that requests which change something
//! must echo in `X-CSRF-Token`; a page of another origin can make the
//! browser send the cookie (`SameSite=Strict` already stops that in
//! current browsers) but can never read the token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};

/// A session ends after this long without a request…
pub(crate) const IDLE: Duration = Duration::from_secs(3600);
/// …and this long after its login, whatever it does.
pub(crate) const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions at once; past this a login ends the least recently used.
const MAX_SESSIONS: usize = 10_000;
/// Sessions of one user; past this the user's least recently used ends
/// (so one user logging in again and again ends only their own).
const MAX_PER_USER: usize = 64;

/// What a request learns of its session.
#[derive(Debug, Clone)]
pub(crate) struct SessionView {
    pub user: String,
    /// The stamp of the user's password at login (see
    /// [`hoard_auth::UserStore::current`]).
    pub stamp: [u8; 32],
    pub csrf: String,
}

struct Session {
    view: SessionView,
    created: Instant,
    last: Instant,
}

pub(crate) struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
    lifetime: Duration,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions::with_times(IDLE, LIFETIME)
    }

    pub fn with_times(idle: Duration, lifetime: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle,
            lifetime,
        }
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last) < self.idle && now.duration_since(s.created) < self.lifetime
    }

    /// Starts a session; returns its id (for the cookie) and its view.
    pub fn create(&self, user: &str, stamp: [u8; 32]) -> (String, SessionView) {
        let id = random_hex();
        let view = SessionView {
            user: user.to_string(),
            stamp,
            csrf: random_hex(),
        };
        let now = Instant::now();
        let mut map = self.map.lock().expect("sessions lock");
        map.retain(|_, s| self.live(s, now));
        let mine: Vec<([u8; 32], Instant)> = map
            .iter()
            .filter(|(_, s)| s.view.user == user)
            .map(|(k, s)| (*k, s.last))
            .collect();
        if mine.len() >= MAX_PER_USER
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, last)| *last)
        {
            map.remove(oldest);
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            key(&id),
            Session {
                view: view.clone(),
                created: now,
                last: now,
            },
        );
        (id, view)
    }

    /// The live session of cookie value `id`, touched; an expired one is
    /// removed.
    pub fn get(&self, id: &str) -> Option<SessionView> {
        let now = Instant::now();
        let k = key(id);
        let mut map = self.map.lock().expect("sessions lock");
        let s = map.get_mut(&k)?;
        if !self.live(s, now) {
            map.remove(&k);
            return None;
        }
        s.last = now;
        Some(s.view.clone())
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().expect("sessions lock").remove(&key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_live_expire_and_end() {
        let s = Sessions::new();
        let (id, view) = s.create("alice", [1; 32]);
        assert_eq!(id.len(), 64);
        assert_ne!(id, view.csrf);
        let got = s.get(&id).unwrap();
        assert_eq!(got.user, "alice");
        assert_eq!(got.csrf, view.csrf);
        assert!(s.get("nope").is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());

        // One user's logins end only their own oldest sessions.
        let (other, _) = s.create("bob", [2; 32]);
        let first = s.create("carol", [3; 32]).0;
        for _ in 0..MAX_PER_USER {
            s.create("carol", [3; 32]);
        }
        assert!(s.get(&first).is_none(), "carol's oldest ended");
        assert!(s.get(&other).is_some(), "bob's stays");

        let quick = Sessions::with_times(Duration::from_millis(20), Duration::from_secs(60));
        let (id3, _) = quick.create("carol", [3; 32]);
        std::thread::sleep(Duration::from_millis(40));
        assert!(quick.get(&id3).is_none(), "idle sessions end");
        let short = Sessions::with_times(Duration::from_secs(60), Duration::from_millis(20));
        let (id4, _) = short.create("dave", [4; 32]);
        std::thread::sleep(Duration::from_millis(40));
        assert!(short.get(&id4).is_none(), "old sessions end");
    }
}
