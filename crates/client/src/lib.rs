//! hoard's client library: everything the `hoard` command does against a
//! server, without the command line.
//!
//! - [`conn`]: one connection, many concurrent streams.
//! - [`requests`]: hash lists and the snapshot list, and choosing a base.
//! - [`backup`]: disk images as fixed-size chunks, incrementally.
//! - [`restore`]: an image back to a file, a block device or a pipe.
//! - [`tree_backup`]: directory trees as archives of two dynamic-index
//!   files, with unchanged files' chunks reused without reading them.
//! - [`remote`]: a stored file read at random offsets, chunk by chunk.
//!
//! Errors are sorted by what the user has to do ([`Error::exit_code`]).

mod archive_refs;
pub mod backup;
pub mod conn;
mod dir_writer;
mod error;
mod feed;
mod known;
pub mod progress;
pub mod remote;
pub mod requests;
pub mod restore;
pub mod seal;
mod source;
pub mod tree_backup;
pub mod tree_restore;
pub mod upload;
mod xattrs;

pub use conn::{ConnectOptions, Connection, Fingerprint, ServerTrust};
pub use error::{Error, Result};
pub use progress::Progress;
