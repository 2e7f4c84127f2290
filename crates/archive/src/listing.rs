//! An entry as listings show it (`hoard ls`, the HTTP API): names and
//! link targets as text, the mode as `ls -l` prints it, the time in
//! RFC 3339.

use serde::Serialize;

use crate::entry::{Entry, Kind};

/// One listed entry, as `hoard ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ListedEntry {
    pub name: String,
    pub kind: &'static str,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// RFC 3339 with nanoseconds, UTC.
    pub mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Names of extended attributes (ACLs and capabilities among them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<String>,
}

/// The listing form of `e`.
pub fn listed(e: &Entry) -> ListedEntry {
    let mtime = jiff::Timestamp::new(e.mtime.sec, e.mtime.nsec as i32)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{}.{:09}", e.mtime.sec, e.mtime.nsec));
    ListedEntry {
        name: String::from_utf8_lossy(&e.name).into_owned(),
        kind: e.kind.name(),
        mode: e.mode_string(),
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        mtime,
        target: match &e.kind {
            Kind::Symlink { target } | Kind::Hardlink { target, .. } => {
                Some(String::from_utf8_lossy(target).into_owned())
            }
            _ => None,
        },
        xattrs: e
            .xattrs
            .iter()
            .map(|x| String::from_utf8_lossy(&x.name).into_owned())
            .collect(),
    }
}
