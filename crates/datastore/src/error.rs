//! The datastore's errors, worded for the operator and the client.

use std::path::PathBuf;

use hoard_types::{Digest, NameError, SnapshotPath};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not empty and not a hoard datastore (no .hoard-datastore marker)")]
    NotADatastore(PathBuf),
    #[error("no datastore at {0} (`hoard serve --datastore {0}` creates one)")]
    NoDatastore(PathBuf),
    #[error("{path}: unsupported datastore format {found:?}")]
    UnsupportedFormat { path: PathBuf, found: String },
    #[error(
        "snapshot {0} exists already; a snapshot is written by one connection and is immutable after"
    )]
    SnapshotExists(SnapshotPath),
    #[error("snapshot time {time} is not newer than the group's newest snapshot {newest}")]
    SnapshotNotNewer {
        time: SnapshotPath,
        newest: SnapshotPath,
    },
    #[error(
        "snapshot time {time} lies more than {skew_secs} s in the future of the server's clock ({now})"
    )]
    SnapshotInFuture {
        time: SnapshotPath,
        now: String,
        skew_secs: u64,
    },
    #[error("refusing {}: a symbolic link inside the datastore (hoard never follows links there)", .0.display())]
    Symlink(PathBuf),
    #[error("group {group}: {reason}")]
    Owner { group: String, reason: String },
    #[error("snapshot {0} is being written by another connection")]
    SnapshotBusy(SnapshotPath),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(SnapshotPath),
    #[error("file {name} exists already in snapshot {snapshot}")]
    FileExists {
        snapshot: SnapshotPath,
        name: String,
    },
    #[error("snapshot {snapshot} has {max} files, the most a snapshot may hold")]
    TooManyFiles { snapshot: SnapshotPath, max: usize },
    #[error("file {name} is already being written in snapshot {snapshot}")]
    FileBusy {
        snapshot: SnapshotPath,
        name: String,
    },
    #[error("digest mismatch: data hashes to {actual}, not the declared {declared}")]
    DigestMismatch { declared: Digest, actual: Digest },
    #[error("chunk of {size} bytes is outside 1..={max}")]
    ChunkSize { size: usize, max: usize },
    #[error("chunk {0} is not in the chunk store")]
    ChunkMissing(Digest),
    #[error("chunk {digest} is damaged: {reason}")]
    ChunkCorrupt { digest: Digest, reason: String },
    #[error("chunk {digest} refused: {reason}")]
    BlobRejected { digest: Digest, reason: String },
    #[error(
        "chunk {0} is encrypted: only a session of a client holding its key reads or references it"
    )]
    ChunkEncrypted(Digest),
    #[error("fixed index: chunk size {0} is outside 4096..=16777170")]
    FixedChunkSize(u32),
    #[error(
        "fixed index: {file_size} bytes in chunks of {chunk_size} makes more than {max} chunks"
    )]
    TooManyChunks {
        file_size: u64,
        chunk_size: u32,
        max: u64,
    },
    #[error("dynamic index: file size must be 0 in CreateBackup, got {0}")]
    DynamicFileSize(u64),
    #[error("fixed index: chunk index {index} is beyond the last chunk ({last})")]
    SlotOutOfRange { index: u64, last: i128 },
    #[error("chunk {digest} has {got} bytes but slot {index} needs {expected}")]
    SlotSize {
        index: u64,
        digest: Digest,
        expected: u64,
        got: u64,
    },
    #[error("dynamic index: chunk at offset {got} does not continue the file at offset {expected}")]
    DynamicOffset { expected: u64, got: u64 },
    #[error(
        "fixed index: {entries} entries scattered over {pages} pages of the index; send slots roughly in order"
    )]
    ScatteredSlots { pages: u64, entries: u64 },
    #[error("fixed index incomplete: chunk {0} was never sent")]
    SlotMissing(u64),
    #[error("index {path}: {reason}")]
    IndexCorrupt { path: String, reason: String },
    #[error("{0} is not a finished index in this datastore")]
    IndexNotFound(String),
    #[error("manifest {path}: {reason}")]
    Manifest { path: String, reason: String },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Unsafe(String),
    /// The object storage under the datastore failed a request (after its
    /// retries) or is misconfigured.
    #[error("object storage: {0}")]
    Storage(#[from] hoard_storage::Error),
    /// Another server uses the datastore's bucket.
    #[error(
        "{store} is in use by the datastore directory {other_id} on {host} (since {since}); two servers never share a bucket. If that server is gone for good, start this one with --take-over"
    )]
    InUse {
        store: String,
        other_id: String,
        host: String,
        since: String,
    },
}

/// Adds "what was being done" to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}
