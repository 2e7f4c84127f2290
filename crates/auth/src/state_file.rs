//! The record files of the server's state directory (`tokens.json`,
//! `users.json`): `{"format": FORMAT, KEY: [records]}`, read whole on
//! every use, changed under an exclusive `flock` of a lock file beside
//! them and written through a temp file, fsync and rename.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::tokens::{AuthError, io, lock_state_dir, write_private_atomic};

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
