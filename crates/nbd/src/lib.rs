//! A reading NBD client for backing up disk exports: QEMU's `qemu-nbd`
//! and `qemu-storage-daemon` (a running VM's disk, a point-in-time view
//! through a fleecing node), with the `base:allocation` and
//! `qemu:dirty-bitmap:NAME` meta contexts that let a backup skip holes
//! and read only what changed.
//!
//! [`wire`] is the protocol's bytes, with no I/O; [`client`] a blocking
//! client over TCP or a Unix socket; [`uri`] the URI forms. What of the
//! protocol is implemented, and what not, is in [`client`]'s doc.

pub mod client;
pub mod error;
pub mod uri;
pub mod wire;

pub use client::{ALLOCATION, Client, Status, bitmap_context};
pub use error::{Error, Result};
pub use uri::{Endpoint, NbdUri, is_nbd_uri};
