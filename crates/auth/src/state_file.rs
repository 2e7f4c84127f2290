//! The record files of the server's state directory (`tokens.json`,
//! `users.json`): `{"format": FORMAT, KEY: [records]}`, read whole on
//! every use, changed under an exclusive `flock` of a lock file beside
//! them and written through a temp file, fsync and rename.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::access::{Principal, Role, Scope};
use crate::tokens::{AuthError, check_name, io, lock_state_dir, write_private_atomic};

/// What `hoard token list` and `hoard user list` show of an entry: never
/// its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessInfo {
    pub name: String,
    pub role: String,
    pub paths: Vec<String>,
    pub created: String,
}

/// One entry of a record file: a token or a user, with its secret `S`
/// (a token's hash, a user's password hash) in its own members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record<S> {
    pub name: String,
    pub role: String,
    pub paths: Vec<String>,
    #[serde(flatten)]
    pub secret: S,
    pub created: String,
}

/// Checks what a new entry declares, before its secret is made.
pub(crate) fn check_new(name: &str, role: Role, scopes: &[Scope]) -> Result<(), AuthError> {
    check_name(name)?;
    if role == Role::Admin && !scopes.is_empty() {
        return Err(AuthError::AdminWithPaths);
    }
    Ok(())
}

impl<S> Record<S> {
    /// A new entry, created now.
    pub fn new(name: &str, role: Role, scopes: &[Scope], secret: S) -> Record<S> {
        Record {
            name: name.to_string(),
            role: role.as_str().to_string(),
            paths: scopes.iter().map(|s| s.to_string()).collect(),
            secret,
            created: jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or_default()
                .to_string(),
        }
    }

    fn info(&self) -> AccessInfo {
        AccessInfo {
            name: self.name.clone(),
            role: self.role.clone(),
            paths: self.paths.clone(),
            created: self.created.clone(),
        }
    }

    /// The entry's role and paths acting as `principal`; why not, if the
    /// file holds something that does not parse.
    pub fn principal(&self, principal: String) -> Result<Principal, String> {
        let role: Role = self.role.parse()?;
        let scopes = self
            .paths
            .iter()
            .map(|p| p.parse::<Scope>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Principal::new(principal, role, scopes))
    }
}

pub(crate) struct RecordFile {
    pub dir: PathBuf,
    pub file: &'static str,
    pub lock: &'static str,
    pub format: &'static str,
    /// The member holding the records.
    pub key: &'static str,
}

impl RecordFile {
    pub fn path(&self) -> PathBuf {
        self.dir.join(self.file)
    }

    fn corrupt(&self, reason: String) -> AuthError {
        AuthError::Corrupt {
            path: self.path(),
            reason,
        }
    }

    /// The records; none if the file does not exist. A file that does not
    /// parse is an error, never an empty store.
    pub fn load<R: DeserializeOwned>(&self) -> Result<Vec<R>, AuthError> {
        let path = self.path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut file: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&text).map_err(|e| self.corrupt(e.to_string()))?;
        let format = file.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format != self.format {
            return Err(self.corrupt(format!(
                "unknown format {format:?} (expected {})",
                self.format
            )));
        }
        let records = file.remove(self.key).unwrap_or_default();
        serde_json::from_value(records).map_err(|e| self.corrupt(e.to_string()))
    }

    /// Runs `change` on the records under the lock and writes the result
    /// durably.
    pub fn update<R: Serialize + DeserializeOwned, T>(
        &self,
        change: impl FnOnce(&mut Vec<R>) -> Result<T, AuthError>,
    ) -> Result<T, AuthError> {
        let _lock = lock_state_dir(&self.dir, self.lock)?;
        let mut records = self.load()?;
        let out = change(&mut records)?;
        let file = serde_json::json!({ "format": self.format, self.key: records });
        let text = serde_json::to_vec_pretty(&file).expect("records serialize");
        write_private_atomic(&self.dir, &self.path(), &text)?;
        Ok(out)
    }
}

impl RecordFile {
    /// Adds `record`, or `exists` if an entry of its name is there.
    pub fn insert<S: Serialize + DeserializeOwned>(
        &self,
        record: Record<S>,
        exists: AuthError,
    ) -> Result<(), AuthError> {
        self.update(|records: &mut Vec<Record<S>>| {
            if records.iter().any(|r| r.name == record.name) {
                return Err(exists);
            }
            records.push(record);
            Ok(())
        })
    }

    /// Removes entry `name`, or `missing` if there is none.
    pub fn remove<S: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        missing: AuthError,
    ) -> Result<(), AuthError> {
        self.update(|records: &mut Vec<Record<S>>| {
            let before = records.len();
            records.retain(|r| r.name != name);
            if records.len() == before {
                return Err(missing);
            }
            Ok(())
        })
    }

    /// Every entry, by name.
    pub fn list<S: DeserializeOwned>(&self) -> Result<Vec<AccessInfo>, AuthError> {
        let mut out: Vec<AccessInfo> = self.load::<Record<S>>()?.iter().map(Record::info).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Entry `name`, if there is one.
    pub fn find<S: DeserializeOwned>(&self, name: &str) -> Result<Option<Record<S>>, AuthError> {
        Ok(self
            .load::<Record<S>>()?
            .into_iter()
            .find(|r| r.name == name))
    }
}

/// The record file `file` in `dir`.
pub(crate) fn in_dir(
    dir: &Path,
    file: &'static str,
    lock: &'static str,
    format: &'static str,
    key: &'static str,
) -> RecordFile {
    RecordFile {
        dir: dir.to_path_buf(),
        file,
        lock,
        format,
        key,
    }
}
