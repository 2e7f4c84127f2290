//! Snapshot naming: `type/id/time`, and the names of files inside a snapshot.
//!
//! These strings become directory and file names on the server, so their
//! rules are what keeps a client from writing outside the datastore.

use std::fmt;
use std::str::FromStr;

/// Longest backup id, in bytes.
pub const MAX_BACKUP_ID_LEN: usize = 128;
/// Longest file name, in bytes. The protocol allows 255 (a u8 length), but
/// the stored index adds a 5-byte suffix (`.fidx`) and Linux limits a path
/// component to 255 bytes.
pub const MAX_FILE_NAME_LEN: usize = 250;

/// Why a name was refused; the message names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("unknown backup type {0} (expected 0 vm, 1 ct or 2 host)")]
    UnknownTypeId(u8),
    #[error("unknown backup type {0:?} (expected vm, ct or host)")]
    UnknownTypeName(String),
    #[error(
        "invalid backup id {0:?}: must match [A-Za-z0-9_][A-Za-z0-9._-]* and be at most 128 bytes"
    )]
    BackupId(String),
    #[error("invalid file name {0:?}: must be 1 to 250 bytes, not '.' or '..', without '/' or NUL")]
    FileName(String),
    #[error("invalid snapshot time {0}: must be between 1970 and 9999")]
    TimeOutOfRange(u64),
    #[error("invalid snapshot time {0:?}: expected RFC 3339 UTC like 2019-04-23T12:23:36Z")]
    TimeSyntax(String),
    #[error("invalid snapshot path {0:?}: expected TYPE/ID/TIME")]
    SnapshotPath(String),
    #[error("invalid backup group {0:?}: expected TYPE/ID")]
    Group(String),
}

/// What kind of machine a snapshot is of; the first path component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackupType {
    Vm = 0,
    Ct = 1,
    Host = 2,
}

impl BackupType {
    pub const ALL: [BackupType; 3] = [BackupType::Vm, BackupType::Ct, BackupType::Host];

    pub fn from_u8(v: u8) -> Result<Self, NameError> {
        match v {
            0 => Ok(BackupType::Vm),
            1 => Ok(BackupType::Ct),
            2 => Ok(BackupType::Host),
            n => Err(NameError::UnknownTypeId(n)),
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Vm => "vm",
            BackupType::Ct => "ct",
            BackupType::Host => "host",
        }
    }
}

impl fmt::Display for BackupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackupType {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vm" => Ok(BackupType::Vm),
            "ct" => Ok(BackupType::Ct),
            "host" => Ok(BackupType::Host),
            other => Err(NameError::UnknownTypeName(other.to_string())),
        }
    }
}

/// The id of a backed-up machine, e.g. `100` or `web1.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupId(String);

impl BackupId {
    pub fn new(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let rest_ok = b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if first_ok && rest_ok && b.len() <= MAX_BACKUP_ID_LEN {
            Ok(BackupId(s.to_string()))
        } else {
            Err(NameError::BackupId(s.to_string()))
        }
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, NameError> {
        match std::str::from_utf8(b) {
            Ok(s) => Self::new(s),
            Err(_) => Err(NameError::BackupId(String::from_utf8_lossy(b).into_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of one file of a snapshot, e.g. `drive-scsi0.img`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileName(String);

impl FileName {
    pub fn new(s: &str) -> Result<Self, NameError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_FILE_NAME_LEN
            && s != "."
            && s != ".."
            && !s.bytes().any(|c| c == b'/' || c == 0);
        if ok {
            Ok(FileName(s.to_string()))
        } else {
            Err(NameError::FileName(s.to_string()))
        }
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, NameError> {
        match std::str::from_utf8(b) {
            Ok(s) => Self::new(s),
            Err(_) => Err(NameError::FileName(String::from_utf8_lossy(b).into_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A snapshot's time: whole seconds since the epoch, shown as RFC 3339 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotTime(i64);

impl SnapshotTime {
    pub fn from_epoch(secs: u64) -> Result<Self, NameError> {
        let s = i64::try_from(secs).map_err(|_| NameError::TimeOutOfRange(secs))?;
        jiff::Timestamp::from_second(s).map_err(|_| NameError::TimeOutOfRange(secs))?;
        Ok(SnapshotTime(s))
    }

    pub fn epoch(self) -> u64 {
        self.0 as u64
    }

    /// The current time, to the second.
    pub fn now() -> Self {
        SnapshotTime(jiff::Timestamp::now().as_second().max(0))
    }

    pub fn timestamp(self) -> jiff::Timestamp {
        // The constructor checked the range.
        jiff::Timestamp::from_second(self.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }
}

impl fmt::Display for SnapshotTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.timestamp().strftime("%Y-%m-%dT%H:%M:%SZ"))
    }
}

impl FromStr for SnapshotTime {
    type Err = NameError;
    /// Accepts only the canonical form this type prints, so that one time
    /// has exactly one directory name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || NameError::TimeSyntax(s.to_string());
        let ts: jiff::Timestamp = s.parse().map_err(|_| err())?;
        let secs = u64::try_from(ts.as_second()).map_err(|_| err())?;
        let t = SnapshotTime::from_epoch(secs).map_err(|_| err())?;
        if t.to_string() == s {
            Ok(t)
        } else {
            Err(err())
        }
    }
}

/// `type/id`: the snapshots of one machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupGroup {
    pub ty: BackupType,
    pub id: BackupId,
}

impl fmt::Display for BackupGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ty, self.id)
    }
}

impl FromStr for BackupGroup {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ty, id) = s
            .split_once('/')
            .ok_or_else(|| NameError::Group(s.to_string()))?;
        Ok(BackupGroup {
            ty: ty.parse()?,
            id: BackupId::new(id)?,
        })
    }
}

/// `type/id/time`: one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotPath {
    pub group: BackupGroup,
    pub time: SnapshotTime,
}

impl fmt::Display for SnapshotPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.time)
    }
}

impl FromStr for SnapshotPath {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (group, time) = s
            .rsplit_once('/')
            .ok_or_else(|| NameError::SnapshotPath(s.to_string()))?;
        Ok(SnapshotPath {
            group: group.parse()?,
            time: time.parse()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backup_ids() {
        for ok in ["100", "_x", "web1.example-com", &"a".repeat(128)] {
            assert!(BackupId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-a",
            ".a",
            "a/b",
            "a b",
            "ä",
            &"a".repeat(129),
        ] {
            assert!(BackupId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names() {
        for ok in ["drive-scsi0.img", ".hidden", "a..b", &"n".repeat(250)] {
            assert!(FileName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/", "a\0b", &"n".repeat(251)] {
            assert!(FileName::new(bad).is_err(), "{bad:?}");
        }
        assert!(FileName::from_bytes(&[0xff]).is_err());
    }

    #[test]
    fn snapshot_time_format() {
        let t = SnapshotTime::from_epoch(1556022216).unwrap();
        assert_eq!(t.to_string(), "2019-04-23T12:23:36Z");
        assert_eq!("2019-04-23T12:23:36Z".parse::<SnapshotTime>().unwrap(), t);
        // Non-canonical spellings of a valid time are refused.
        for bad in [
            "2019-04-23T12:23:36+00:00",
            "2019-04-23T12:23:36.0Z",
            "2019-04-23 12:23:36Z",
            "..",
            "",
        ] {
            assert!(bad.parse::<SnapshotTime>().is_err(), "{bad}");
        }
        assert!(SnapshotTime::from_epoch(u64::MAX).is_err());
        assert!(SnapshotTime::from_epoch(253_402_300_800).is_err()); // year 10000
    }

    #[test]
    fn snapshot_path_round_trip() {
        let p: SnapshotPath = "vm/100/2019-04-23T12:23:36Z".parse().unwrap();
        assert_eq!(p.group.ty, BackupType::Vm);
        assert_eq!(p.to_string(), "vm/100/2019-04-23T12:23:36Z");
        for bad in [
            "vm/100",
            "xx/100/2019-04-23T12:23:36Z",
            "vm/../2019-04-23T12:23:36Z",
            "vm/a/b/2019-04-23T12:23:36Z",
        ] {
            assert!(bad.parse::<SnapshotPath>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn valid_names_never_escape(s in "\\PC{0,300}") {
            if let Ok(n) = FileName::new(&s) {
                prop_assert!(!n.as_str().contains('/') && n.as_str() != ".." && n.as_str() != ".");
            }
            if let Ok(id) = BackupId::new(&s) {
                prop_assert!(!id.as_str().starts_with('.') && !id.as_str().contains('/'));
            }
        }

        #[test]
        fn time_round_trip(secs in 0u64..253_402_300_799) {
            let t = SnapshotTime::from_epoch(secs).unwrap();
            prop_assert_eq!(t.to_string().parse::<SnapshotTime>().unwrap(), t);
        }
    }
}
