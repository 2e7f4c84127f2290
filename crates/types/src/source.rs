//! What a client records about the file it backed up, so that the next
//! backup can tell "unchanged" without reading it.

use serde::{Deserialize, Serialize};

/// Identity and change times of a backup source (a regular file). Two
/// stats that agree on all of these (and on the size, which the index
/// records) are taken to mean the same, unmodified content: the kernel
/// moves ctime on every write and on every metadata change, and a new
/// file at the same path has a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceAttributes {
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    pub inode: u64,
}
