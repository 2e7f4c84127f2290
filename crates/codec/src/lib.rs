//! How a chunk is encoded and what the client's key is.
//!
//! This crate owns every byte layout that carries chunk data or key
//! material: the chunk blob (stored file == bytes on the wire, raw, zstd
//! or AES-256-GCM encrypted), the keyed digest that names an encrypted
//! backup's chunks, the key file and its paper copy, the master key's
//! recovery blob and the manifest seal. `docs/encryption.md` is the
//! specification; the constants here mirror its tables.
//!
//! It never does I/O: callers read and write files and sockets and hand
//! bytes in. It never logs or prints a secret: [`Key`] and
//! [`MasterSecret`] show only fingerprints in `Debug`, and wipe their
//! bytes when dropped.
//!
//! | module | owns |
//! |---|---|
//! | [`blob`] | the 16-byte chunk header, plain encodings, structural checks a server can do without a key |
//! | [`compress`] | the zstd level and the "is it worth compressing" heuristic |
//! | [`key`] | the 32-byte secret, its subkeys, keyed digests, chunk encryption |
//! | [`codec`] | what the client calls per chunk, with or without a key |
//! | [`keyfile`] | the key file (JSON, passphrase-wrapped) and the paper key |
//! | [`master`] | X25519 master key pair, recovery blobs |
//! | [`seal`] | HMAC of a snapshot manifest |

pub mod blob;
pub mod codec;
pub mod compress;
mod error;
pub mod key;
pub mod keyfile;
pub mod master;
pub mod seal;
mod wrap;

pub use blob::{BlobHeader, Encoding};
pub use codec::ChunkCodec;
pub use compress::Compression;
pub use error::{Error, Result};
pub use key::{Key, KeyFingerprint, KeyId, Kind};
pub use keyfile::{Argon2Params, KeyFile, from_paper, paper};
pub use master::{MasterPublic, MasterSecret, MasterSecretFile};
