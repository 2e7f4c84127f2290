//! Packed arrays carried by list packets, kept as the received bytes.
//!
//! Decoding a list checks only that its length is a whole number of
//! entries; iterating reads entries out of the buffer without allocating,
//! so a 16 MiB list costs no more memory than the packet that brought it.

use bytes::{BufMut, Bytes, BytesMut};
use hoard_types::{DIGEST_SIZE, Digest};

use crate::consts::{DYNAMIC_ENTRY_SIZE, FIXED_ENTRY_SIZE};

/// Digests back to back (HashListPart, DownloadChunks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DigestList(Bytes);

impl DigestList {
    /// `None` if `raw` is not a whole number of digests.
    pub fn from_bytes(raw: Bytes) -> Option<Self> {
        raw.len()
            .is_multiple_of(DIGEST_SIZE)
            .then_some(DigestList(raw))
    }

    pub fn from_digests<'a>(digests: impl IntoIterator<Item = &'a Digest>) -> Self {
        let mut buf = BytesMut::new();
        for d in digests {
            buf.put_slice(d.as_bytes());
        }
        DigestList(buf.freeze())
    }

    pub fn len(&self) -> usize {
        self.0.len() / DIGEST_SIZE
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Digest> + '_ {
        self.0.chunks_exact(DIGEST_SIZE).map(Digest::from_slice)
    }
}

/// One slot of a fixed index: which chunk of the file, and its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedEntry {
    pub index: u64,
    pub digest: Digest,
}

/// One chunk of a dynamic index: where it starts in the file, its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynamicEntry {
    pub offset: u64,
    pub digest: Digest,
}

fn entry_at(raw: &[u8]) -> (u64, Digest) {
    let mut n = [0u8; 8];
    n.copy_from_slice(&raw[..8]);
    (u64::from_le_bytes(n), Digest::from_slice(&raw[8..40]))
}

macro_rules! entry_list {
    ($list:ident, $entry:ident, $field:ident, $size:expr) => {
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $list(Bytes);

        impl $list {
            /// `None` if `raw` is not a whole number of entries.
            pub fn from_bytes(raw: Bytes) -> Option<Self> {
                raw.len().is_multiple_of($size).then_some($list(raw))
            }

            pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a $entry>) -> Self {
                let mut buf = BytesMut::new();
                for e in entries {
                    buf.put_u64_le(e.$field);
                    buf.put_slice(e.digest.as_bytes());
                }
                $list(buf.freeze())
            }

            pub fn len(&self) -> usize {
                self.0.len() / $size
            }

            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            pub fn as_bytes(&self) -> &Bytes {
                &self.0
            }

            pub fn iter(&self) -> impl ExactSizeIterator<Item = $entry> + '_ {
                self.0.chunks_exact($size).map(|raw| {
                    let ($field, digest) = entry_at(raw);
                    $entry { $field, digest }
                })
            }
        }
    };
}

entry_list!(FixedEntryList, FixedEntry, index, FIXED_ENTRY_SIZE);
entry_list!(DynamicEntryList, DynamicEntry, offset, DYNAMIC_ENTRY_SIZE);
