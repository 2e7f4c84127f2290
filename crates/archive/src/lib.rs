//! hoard's file-tree archive: how a directory tree becomes two byte
//! streams, and how to read them back with random access.
//!
//! - The **metadata stream** (`NAME.hmeta`) holds one table per directory,
//!   children before parents, and ends with the root's entry and a
//!   trailer. Listing a directory or finding one file reads only the
//!   tables on its path, so only the chunks holding them.
//! - The **data stream** (`NAME.hdata`) holds the files' contents, each
//!   behind a 16-byte payload header, in the order the tree was walked.
//!   Entries point into it by offset, so a backup can splice in the
//!   chunks of an unchanged file from the previous snapshot without
//!   reading the file.
//!
//! The byte layouts are in [`format`] and `docs/format.md`. This crate
//! does no I/O: [`reader::Archive`] reads through a [`reader::RangeSource`]
//! the caller supplies (chunks fetched from a server, or a buffer).

pub mod entry;
mod error;
pub mod format;
pub mod listing;
pub mod reader;
pub mod writer;

pub use entry::{Entry, Kind, Timestamp, Xattr};
pub use error::{ArchiveError, Result};
pub use reader::{Archive, RangeSource};
pub use writer::MetaWriter;
