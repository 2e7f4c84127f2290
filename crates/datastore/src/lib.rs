//! hoard's datastore: one directory holding a content-addressed chunk
//! store (or a bucket holding its chunks) and the snapshots (index files
//! and manifests) that refer to it.
//!
//! This crate owns every on-disk format (`docs/format.md`) and the rules
//! that keep the directory consistent across crashes. It knows nothing of
//! sockets: the server, and later maintenance commands, drive it.
//!
//! # Layout
//! ```text
//! DATASTORE/
//!   .hoard-datastore            marker: format name and version
//!   .chunks/ab/abcd…(64 hex)    one file per chunk, named by its digest
//!   .reports/                   the last GC, prune and verify reports; usage over time
//!   .tmp/proc.RAND/             each process's files being written (recovery.rs)
//!   .server/                    the server's TLS key, certificate and tokens (not this crate's)
//!   vm/100/owner                the group's owner (a token name)
//!   vm/100/2019-04-23T12:23:36Z/
//!     manifest.json             the snapshot's files, sizes, checksums, state
//!     .lock                     flock(2) of the writer of this snapshot
//!     drive-scsi0.img.fidx      fixed index
//!     root.pxar.didx            dynamic index
//! ```
//!
//! A datastore whose chunks are in an S3-compatible bucket has the same
//! directory, with a stub per chunk under `.chunks/`, a chunk cache in
//! `.cache/` and its configuration in `.storage.json`; the bucket holds
//! the chunks and a copy of the metadata (`backend.rs`, `object_chunks.rs`,
//! docs/storage.md).
//!
//! # Locks
//! | lock | held by | while | conflict |
//! |---|---|---|---|
//! | `flock(SNAPSHOT/.lock, EX)` | a [`SnapshotWriter`] | files are being added to the snapshot | a second writer gets [`Error::SnapshotBusy`] |
//!
//! Locks are `flock`s on open files, so a process that dies releases them.
//!
//! # Why a finished file is never lost or half-visible
//! Every file is written under `.tmp/`, fsynced, renamed to its final name
//! and the directory fsynced. Renames are atomic, so a name that exists
//! refers to complete, durable contents. A chunk is durable before the
//! Ok that acknowledges it; an index is durable before the manifest names
//! it; the manifest is durable before the client's BackupFinished is
//! answered. A crash leaves at most files under `.tmp/` and snapshots
//! still marked `writing`; the next start or GC settles both.

mod backend;
mod chunk_cache;
mod chunk_store;
mod datastore;
pub mod delta;
mod dynamic_index;
mod error;
mod failpoint;
mod fixed_index;
mod fsutil;
pub mod gc;
mod image_deltas;
mod index_file;
mod locks;
mod manifest;
mod object_chunks;
pub mod prune;
mod recovery;
pub mod reports;
pub mod verify;

pub use backend::{Backend, DEFAULT_CACHE_BYTES, ObjectOptions};
pub use chunk_store::{
    Checked, ChunkClass, ChunkProblem, ChunkStore, DELTA_SUFFIX, DeltaMade, Inserted, MAX_CHAIN,
    MAX_CHAIN_READ, Marked, SweepCounts,
};
pub use datastore::{
    Datastore, FileWriter, IndexReader, MAX_CLOCK_SKEW_SECS, MAX_FILES_PER_SNAPSHOT, Removal,
    SnapshotInfo, SnapshotWriter, check_new_file,
};
pub use dynamic_index::{DYNAMIC_INDEX_MAGIC, DynamicIndexReader, DynamicIndexWriter};
pub use error::{Error, Result};
pub use fixed_index::{
    FIXED_INDEX_MAGIC, FixedIndexReader, FixedIndexWriter, MAX_FIXED_CHUNKS, MIN_FIXED_CHUNK_SIZE,
};
pub use hoard_codec::blob::{BlobHeader, HEADER_SIZE as CHUNK_HEADER_SIZE};
pub use hoard_storage as storage;
pub use image_deltas::DeltaCounts;
pub use index_file::IndexSummary;
pub use locks::{FsTime, SnapshotPin, WriterRegistration};
pub use manifest::{
    FileKind, MANIFEST_MAGIC, MANIFEST_NAME, Manifest, ManifestFile, Seal, SnapshotState,
    Verification, VerifyState,
};
pub use recovery::{Recovery, Settled};

/// Index files start with this many header bytes, entries follow.
pub const INDEX_HEADER_SIZE: usize = 128;
