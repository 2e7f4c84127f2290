//! Users of the web page: `users.json` in the server's state directory
//! (docs/format.md, "Server state"), changed by `hoard user` on the
//! server's machine.
//!
//! A user has a role and paths like a token, and a password that people
//! choose, so unlike a token secret it can be guessed: the file keeps
//! only Argon2id of it (RFC 9106; OWASP's parameters for logins, 19 MiB
//! and two passes, about 40 ms here), with a random salt per user. Login
//! answers the same for an unknown name and a wrong password, and spends
//! the same work on both.
//!
//! A session remembers the [`UserInfo::stamp`] of the record it logged in
//! with; the server reads the file again on every request of a session,
//! so removing a user or changing a password ends their sessions, and a
//! new role holds at once.

use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::access::{Principal, Role, Scope};
use crate::state_file::{self, AccessInfo, Record, RecordFile, check_new};
use crate::tokens::AuthError;

const FILE_NAME: &str = "users.json";
const LOCK_NAME: &str = "users.lock";
const FORMAT: &str = "hoard-users-1";
/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password hashed (a longer one is refused before any work).
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Prefix of a user's principal name: `~` is not a token character, so a
/// user never acts as (or owns the groups of) a token of the same name.
pub const USER_PREFIX: char = '~';

/// Argon2id parameters of a password hash, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl HashParams {
    /// OWASP's Argon2id recommendation for password storage.
    pub const DEFAULT: HashParams = HashParams {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };
    /// Bounds on what a (damaged) file may ask of a login.
    const MAX_M_KIB: u32 = 1 << 20;
    const MAX_T: u32 = 16;
    const MAX_P: u32 = 8;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PasswordHash {
    #[serde(flatten)]
    params: HashParams,
    /// 16 random bytes, hex.
    salt: String,
    /// 32 bytes of Argon2id output, hex.
    hash: String,
}

/// A user's secret as kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserSecret {
    argon2id: PasswordHash,
}

type UserRecord = Record<UserSecret>;

/// What `hoard user list` shows of a user.
pub type UserInfo = AccessInfo;

/// A logged-in user as the file says now: the principal to act as, and
/// the stamp a session compares with the one it logged in with.
#[derive(Debug, Clone)]
pub struct UserSession {
    pub principal: Principal,
    /// SHA-256 of the stored password hash: changes with the password.
    pub stamp: [u8; 32],
}

/// The user file in a directory; created on first change.
#[derive(Debug, Clone)]
pub struct UserStore {
    dir: PathBuf,
    params: HashParams,
}

fn argon2(params: HashParams) -> Result<Argon2<'static>, String> {
    let p = Params::new(params.m_kib, params.t, params.p, Some(32)).map_err(|e| e.to_string())?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, p))
}

fn stretch(params: HashParams, password: &str, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    if params.m_kib > HashParams::MAX_M_KIB
        || params.t > HashParams::MAX_T
        || params.p > HashParams::MAX_P
    {
        return Err(format!("Argon2id parameters {params:?} beyond the allowed"));
    }
    let mut out = Zeroizing::new([0u8; 32]);
    argon2(params)?
        .hash_password_into(password.as_bytes(), salt, out.as_mut())
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn stamp_of(h: &PasswordHash) -> [u8; 32] {
    Sha256::digest(format!("{}:{}", h.salt, h.hash).as_bytes()).into()
}

fn check_password(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(AuthError::WeakPassword {
            min: MIN_PASSWORD_LEN,
        });
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AuthError::LongPassword {
            max: MAX_PASSWORD_LEN,
        });
    }
    Ok(())
}

impl UserStore {
    /// The store in `dir` (the server's state directory).
    pub fn new(dir: &Path) -> UserStore {
        UserStore {
            dir: dir.to_path_buf(),
            params: HashParams::DEFAULT,
        }
    }

    /// The same store hashing new passwords with `params` (tests use
    /// small ones; logins always use what the record says).
    pub fn with_params(mut self, params: HashParams) -> UserStore {
        self.params = params;
        self
    }

    fn file(&self) -> RecordFile {
        state_file::in_dir(&self.dir, FILE_NAME, LOCK_NAME, FORMAT, "users")
    }

    fn path(&self) -> PathBuf {
        self.file().path()
    }

    fn find(&self, name: &str) -> Result<Option<UserRecord>, AuthError> {
        self.file().find(name)
    }

    fn hash_new(&self, password: &str) -> Result<PasswordHash, AuthError> {
        check_password(password)?;
        let salt: [u8; 16] = rand::rng().random();
        let hash = stretch(self.params, password, &salt).map_err(|reason| AuthError::Corrupt {
            path: self.path(),
            reason,
        })?;
        Ok(PasswordHash {
            params: self.params,
            salt: hex::encode(salt),
            hash: hex::encode(hash.as_ref()),
        })
    }

    pub fn add(
        &self,
        name: &str,
        role: Role,
        scopes: &[Scope],
        password: &str,
    ) -> Result<(), AuthError> {
        check_new(name, role, scopes)?;
        let argon2id = self.hash_new(password)?;
        let record = Record::new(name, role, scopes, UserSecret { argon2id });
        self.file()
            .insert(record, AuthError::UserExists(name.to_string()))
    }

    /// Sets a new password; the user's sessions end.
    pub fn set_password(&self, name: &str, password: &str) -> Result<(), AuthError> {
        let argon2id = self.hash_new(password)?;
        self.file().update(|records: &mut Vec<UserRecord>| {
            let r = records
                .iter_mut()
                .find(|r| r.name == name)
                .ok_or_else(|| AuthError::NoUser(name.to_string()))?;
            r.secret.argon2id = argon2id;
            Ok(())
        })
    }

    pub fn remove(&self, name: &str) -> Result<(), AuthError> {
        self.file()
            .remove::<UserSecret>(name, AuthError::NoUser(name.to_string()))
    }

    pub fn list(&self) -> Result<Vec<UserInfo>, AuthError> {
        self.file().list::<UserSecret>()
    }

    fn session_of(&self, r: &UserRecord) -> Result<UserSession, AuthError> {
        let principal = r
            .principal(format!("{USER_PREFIX}{}", r.name))
            .map_err(|reason| AuthError::Corrupt {
                path: self.path(),
                reason: format!("user {}: {reason}", r.name),
            })?;
        Ok(UserSession {
            principal,
            stamp: stamp_of(&r.secret.argon2id),
        })
    }

    /// Checks a password (slow by design: run it off the async workers).
    pub fn login(&self, name: &str, password: &str) -> Result<UserSession, AuthError> {
        if password.len() > MAX_PASSWORD_LEN {
            return Err(AuthError::LoginFailed);
        }
        let Some(record) = self.find(name)? else {
            // The same work as a real check, so timing tells no names.
            let _ = stretch(self.params, password, &[0u8; 16]);
            return Err(AuthError::LoginFailed);
        };
        let h = &record.secret.argon2id;
        let corrupt = |reason: String| AuthError::Corrupt {
            path: self.path(),
            reason: format!("user {name}: {reason}"),
        };
        let salt = hex::decode(&h.salt).map_err(|e| corrupt(e.to_string()))?;
        let stored = hex::decode(&h.hash).map_err(|e| corrupt(e.to_string()))?;
        let offered = stretch(h.params, password, &salt).map_err(corrupt)?;
        if stored.len() != 32 || !bool::from(stored.ct_eq(offered.as_ref())) {
            return Err(AuthError::LoginFailed);
        }
        self.session_of(&record)
    }

    /// The user `name` as the file says now, if it still has the password
    /// whose stamp a session holds.
    pub fn current(&self, name: &str, stamp: &[u8; 32]) -> Result<UserSession, AuthError> {
        let record = self.find(name)?.ok_or(AuthError::LoginFailed)?;
        let session = self.session_of(&record)?;
        if !bool::from(session.stamp.ct_eq(stamp)) {
            return Err(AuthError::LoginFailed);
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: HashParams = HashParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn add_login_change_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::new(dir.path()).with_params(FAST);
        store
            .add(
                "alice",
                Role::Reader,
                &["vm".parse().unwrap()],
                "correct horse",
            )
            .unwrap();
        let s = store.login("alice", "correct horse").unwrap();
        assert_eq!(s.principal.name, "~alice");
        assert_eq!(s.principal.role, Role::Reader);
        assert!(store.current("alice", &s.stamp).is_ok());
        // The file holds neither the password nor anything unsalted.
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains("correct horse"));
        assert!(matches!(
            store.login("alice", "wrong horse"),
            Err(AuthError::LoginFailed)
        ));
        assert!(matches!(
            store.login("bob", "correct horse"),
            Err(AuthError::LoginFailed)
        ));
        // A new password ends the old sessions.
        store.set_password("alice", "battery staple").unwrap();
        assert!(store.current("alice", &s.stamp).is_err());
        assert!(store.login("alice", "correct horse").is_err());
        let s2 = store.login("alice", "battery staple").unwrap();
        store.remove("alice").unwrap();
        assert!(store.current("alice", &s2.stamp).is_err());
        assert!(matches!(store.remove("alice"), Err(AuthError::NoUser(_))));
    }

    #[test]
    fn bad_names_passwords_and_duplicates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::new(dir.path()).with_params(FAST);
        assert!(matches!(
            store.add("a", Role::Admin, &[], "short"),
            Err(AuthError::WeakPassword { .. })
        ));
        assert!(matches!(
            store.add("../x", Role::Admin, &[], "long enough"),
            Err(AuthError::BadName(_))
        ));
        assert!(matches!(
            store.add("a", Role::Admin, &[Scope::All], "long enough"),
            Err(AuthError::AdminWithPaths)
        ));
        store.add("a", Role::Admin, &[], "long enough").unwrap();
        assert!(matches!(
            store.add("a", Role::Reader, &[], "long enough"),
            Err(AuthError::UserExists(_))
        ));
        assert!(matches!(
            store.login("a", &"x".repeat(MAX_PASSWORD_LEN + 1)),
            Err(AuthError::LoginFailed)
        ));
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn default_parameters_are_owasps() {
        assert_eq!(HashParams::DEFAULT.m_kib, 19456);
        assert_eq!(HashParams::DEFAULT.t, 2);
        // A damaged file cannot make a login allocate gigabytes.
        let huge = HashParams {
            m_kib: u32::MAX,
            t: 1,
            p: 1,
        };
        assert!(stretch(huge, "x", &[0; 16]).is_err());
    }
}
