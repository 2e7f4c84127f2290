//! Packets over a byte stream. [`protocol`](hoard_protocol) knows what the
//! bytes of one packet mean; this crate moves whole packets across a tokio
//! socket, in the same way for the server and the client:
//! [`FrameReader`] reads one packet at a time and is cancel-safe (it can
//! sit in a `select!`), and [`writer::run`] drains a bounded queue of
//! messages to the socket, sending bulk data straight from its buffer.

mod frame_reader;
pub mod writer;

pub use frame_reader::{FrameReader, ReadError};
pub use writer::{OUTBOX_DEPTH, Outbox};
