//! Domain types shared by the wire protocol and the datastore.
//!
//! Each kind of name has its own type whose constructor is the only place
//! its rules are checked, so a value that exists is valid: a [`BackupId`]
//! can never hold `..`, a [`FileName`] never a `/`. Both the server (which
//! receives names from the network) and the datastore (which turns them
//! into paths) rely on that. This crate does no I/O.

mod digest;
mod names;
mod source;
pub mod zero;

pub use digest::{DIGEST_SIZE, Digest, DigestParseError};
pub use names::{
    BackupGroup, BackupId, BackupType, FileName, MAX_BACKUP_ID_LEN, MAX_FILE_NAME_LEN, NameError,
    SnapshotPath, SnapshotTime,
};
pub use source::SourceAttributes;

/// Largest chunk, in bytes: one that still fits a protocol Chunk packet
/// (16 MiB minus a 46-byte packet head). The protocol crate asserts this.
pub const MAX_CHUNK_SIZE: usize = 16 * 1024 * 1024 - 46;

/// The suffix of a file-tree archive's metadata stream (`root.hmeta`,
/// stored as `root.hmeta.didx`; docs/format.md, "File-tree archives").
/// Every incremental backup of the tree reads it again, so a datastore on
/// object storage keeps its chunks in the local cache.
pub const ARCHIVE_META_SUFFIX: &str = ".hmeta";
