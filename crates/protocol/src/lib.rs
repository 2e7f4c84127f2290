//! hoard's packet protocol, versions 1 and 2: pure encode and decode.
//!
//! Byte-exact with the seed's protocol so that a client written from the
//! seed alone talks to our server. This crate owns the layout of every
//! packet and the checks that make a packet well-formed; it never touches a
//! socket or a file. `docs/protocol.md` mirrors [`consts`] table by table.
//!
//! Reading a stream of packets is two steps: [`check_frame`] looks at a
//! buffer and says "incomplete", "here is a header" or "fatal framing
//! error" without allocating; [`Message::decode`] turns one complete
//! payload into a typed message, borrowing bulk data (`Bytes`) rather than
//! copying it.

pub mod consts;
mod create_backup;
mod features;
mod header;
mod lists;
mod message;

pub use create_backup::{BackupFlags, CreateBackup};
pub use features::Features;
pub use header::{FrameError, Header, PacketType, Sender, check_frame};
pub use lists::{DigestList, DynamicEntry, DynamicEntryList, FixedEntry, FixedEntryList};
pub use message::{
    ANY_TYPE, DecodeError, ErrorId, FILE_ATTRIBUTES_SIZE, Message, Secret, SnapshotFilter,
};
