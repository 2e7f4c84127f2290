//! The one rule for which chunks the server holds, shared by every file
//! of a run (images and trees alike).
//!
//! A digest is known when the server listed it in an index this run
//! uses as a base, or once an upload of it was queued on this
//! connection. Queued, not merely decided: the outbox sends packets in
//! the order they were queued, and the server orders a connection's
//! references after its uploads, so a reference sent by another stream
//! after [`KnownChunks::queued`] can never overtake the upload. Two
//! streams that decide to upload the same new chunk at once both send
//! it; the server keeps one copy.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use hoard_types::Digest;

#[derive(Debug, Clone, Default)]
pub(crate) struct KnownChunks(Arc<Mutex<HashSet<Digest>>>);

impl KnownChunks {
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.0.lock().expect("lock poisoned").contains(digest)
    }

    /// The chunks of a base's index, as the server listed them.
    pub(crate) fn extend(&self, digests: impl IntoIterator<Item = Digest>) {
        self.0.lock().expect("lock poisoned").extend(digests);
    }

    /// A base turned out damaged: its chunks may be what is missing, so
    /// they are uploaded again when they recur.
    pub(crate) fn forget<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) {
        let mut set = self.0.lock().expect("lock poisoned");
        for d in digests {
            set.remove(d);
        }
    }

    /// An upload of `digest` is queued on the connection.
    pub(crate) fn queued(&self, digest: Digest) {
        self.0.lock().expect("lock poisoned").insert(digest);
    }
}
