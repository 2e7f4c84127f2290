//! The API token store: `tokens.json` in the server's state directory
//! (docs/format.md, "Server state").
//!
//! A token is `NAME:SECRET`. The secret is 256 random bits, shown once
//! when the token is created; the file keeps only its SHA-256 (a secret
//! this long needs no slow hash: there is nothing to guess), compared in
//! constant time. Changes go through a temp file, fsync and rename, under
//! an exclusive `flock` of `tokens.lock`, so concurrent `hoard token`
//! commands never lose one another's change and a reader never sees half
//! a file. The server reads the file on every authentication.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::access::{Principal, Role, Scope};
use crate::state_file::{self, AccessInfo, Record, RecordFile, check_new};

const FILE_NAME: &str = "tokens.json";
const LOCK_NAME: &str = "tokens.lock";
const FORMAT: &str = "hoard-tokens-1";
/// Longest token name.
pub const MAX_NAME_LEN: usize = 64;
/// Random bytes in a secret (shown as 64 hex digits).
const SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The same answer for an unknown name, a revoked token and a wrong
    /// secret, so a caller learns nothing about which names exist.
    #[error("authentication failed: token {0:?} is unknown or revoked, or its secret is wrong")]
    Rejected(String),
    #[error("authentication failed: a token has the form NAME:SECRET")]
    Malformed,
    #[error(
        "invalid token name {0:?}: 1 to 64 characters of [A-Za-z0-9_.-], starting with a letter, digit or _"
    )]
    BadName(String),
    #[error("a token named {0:?} exists already (revoke it first)")]
    Exists(String),
    #[error("no token named {0:?}")]
    NotFound(String),
    #[error("an admin token covers everything; --path is for backup and reader tokens")]
    AdminWithPaths,
    /// The same answer for an unknown user and a wrong password.
    #[error("login failed: unknown user or wrong password")]
    LoginFailed,
    #[error("a user named {0:?} exists already")]
    UserExists(String),
    #[error("no user named {0:?}")]
    NoUser(String),
    #[error("a password needs at least {min} characters")]
    WeakPassword { min: usize },
    #[error("a password has at most {max} bytes")]
    LongPassword { max: usize },
    #[error("token store {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token store {}: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// What `hoard token list` shows of a token: never its secret.
pub type TokenInfo = AccessInfo;

/// A token's secret as kept: the SHA-256 of its text, hex.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenSecret {
    secret_sha256: String,
}

/// The token file in a directory; created on first change.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadName(name.to_string()))
    }
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl TokenStore {
    /// The store in `dir` (the server's state directory).
    pub fn new(dir: &Path) -> TokenStore {
        TokenStore {
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self) -> RecordFile {
        state_file::in_dir(&self.dir, FILE_NAME, LOCK_NAME, FORMAT, "tokens")
    }

    fn path(&self) -> PathBuf {
        self.file().path()
    }

    /// Creates a token and returns `NAME:SECRET`, the only time the
    /// secret is ever shown.
    pub fn create(&self, name: &str, role: Role, scopes: &[Scope]) -> Result<String, AuthError> {
        check_new(name, role, scopes)?;
        let bytes: [u8; SECRET_BYTES] = rand::rng().random();
        let secret = hex::encode(bytes);
        let hash = TokenSecret {
            secret_sha256: hex::encode(hash_secret(&secret)),
        };
        let record = Record::new(name, role, scopes, hash);
        self.file()
            .insert(record, AuthError::Exists(name.to_string()))?;
        Ok(format!("{name}:{secret}"))
    }

    pub fn revoke(&self, name: &str) -> Result<(), AuthError> {
        self.file()
            .remove::<TokenSecret>(name, AuthError::NotFound(name.to_string()))
    }

    pub fn list(&self) -> Result<Vec<TokenInfo>, AuthError> {
        self.file().list::<TokenSecret>()
    }

    /// The principal of `NAME:SECRET`, read from the file as it is now.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let (name, secret) = token.split_once(':').ok_or(AuthError::Malformed)?;
        if check_name(name).is_err() || secret.is_empty() {
            return Err(AuthError::Malformed);
        }
        let offered = hash_secret(secret);
        let Some(record) = self.file().find::<TokenSecret>(name)? else {
            return Err(AuthError::Rejected(name.to_string()));
        };
        let stored = hex::decode(&record.secret.secret_sha256).unwrap_or_default();
        if stored.len() != 32 || !bool::from(stored.ct_eq(&offered)) {
            return Err(AuthError::Rejected(name.to_string()));
        }
        record
            .principal(name.to_string())
            .map_err(|reason| AuthError::Corrupt {
                path: self.path(),
                reason: format!("token {name}: {reason}"),
            })
    }
}

/// Creates the state directory (owner only) if needed and takes the
/// exclusive `flock` of its file `lock_name`, held while the returned
/// file lives.
pub(crate) fn lock_state_dir(dir: &Path, lock_name: &str) -> Result<File, AuthError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let lock_path = dir.join(lock_name);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    Ok(lock)
}

/// Writes `data` to `dest` readable by the owner only, through a temp
/// file in `dir`: fsync, rename, fsync the directory.
pub fn write_private_atomic(dir: &Path, dest: &Path, data: &[u8]) -> Result<(), AuthError> {
    let tag: u64 = rand::rng().random();
    let tmp = dir.join(format!(".tmp.{tag:016x}"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let token = store
            .create("ci", Role::Backup, &["vm/100".parse().unwrap()])
            .unwrap();
        let (name, secret) = token.split_once(':').unwrap();
        assert_eq!(name, "ci");
        assert_eq!(secret.len(), 64, "256 bits of secret");
        let p = store.authenticate(&token).unwrap();
        assert_eq!(p.role, Role::Backup);
        assert_eq!(p.scopes, vec!["vm/100".parse::<Scope>().unwrap()]);
        // The file never holds the secret.
        let text = fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains(secret));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "owner-only file");
        // A wrong secret, an unknown name and a malformed token.
        let wrong = format!("ci:{}", "0".repeat(64));
        assert!(matches!(
            store.authenticate(&wrong),
            Err(AuthError::Rejected(_))
        ));
        assert!(matches!(
            store.authenticate("nobody:abc"),
            Err(AuthError::Rejected(_))
        ));
        assert!(matches!(
            store.authenticate("nocolon"),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            store.create("ci", Role::Reader, &[]),
            Err(AuthError::Exists(_))
        ));
        assert_eq!(store.list().unwrap().len(), 1);
        store.revoke("ci").unwrap();
        assert!(matches!(
            store.authenticate(&token),
            Err(AuthError::Rejected(_))
        ));
        assert!(matches!(store.revoke("ci"), Err(AuthError::NotFound(_))));
    }

    #[test]
    fn names_and_admin_paths_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        for bad in ["", "a:b", "../x", "-x", "a b", &"x".repeat(65)] {
            assert!(
                matches!(
                    store.create(bad, Role::Reader, &[]),
                    Err(AuthError::BadName(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            store.create("a", Role::Admin, &[Scope::All]),
            Err(AuthError::AdminWithPaths)
        ));
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let store = TokenStore::new(dir.path());
        assert!(matches!(
            store.authenticate("a:b"),
            Err(AuthError::Corrupt { .. })
        ));
        assert!(matches!(
            store.create("a", Role::Reader, &[]),
            Err(AuthError::Corrupt { .. })
        ));
    }
}
