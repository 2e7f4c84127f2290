//! Feature flags of protocol version 2: the server offers a set in its
//! Hello, the client picks a subset in its Authenticate, and both sides
//! then use exactly that subset. No feature is detected by trying a
//! packet and catching the Error.

/// A set of feature bits (docs/protocol.md, "Feature flags").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Features(pub u64);

impl Features {
    /// hoard's extension packets 64–68 (ListSnapshots, SnapshotEntry,
    /// FileAttributes, GetIndex, IndexPart).
    pub const EXTENSIONS: Features = Features(1 << 0);
    /// Chunks travel encoded, as they are stored (docs/format.md, "Chunk
    /// file"): UploadChunk and Chunk carry a chunk file's bytes, so the
    /// client compresses (and the server checks and stores as sent).
    pub const ENCODED_CHUNKS: Features = Features(1 << 1);
    /// Client-side encryption: the server accepts encrypted chunks, whose
    /// keyed digests it cannot check, and SealSnapshot. Needs
    /// [`Features::ENCODED_CHUNKS`].
    pub const ENCRYPTION: Features = Features(1 << 2);
    /// CloseSnapshot: the client closes each snapshot it wrote and hears
    /// its final state, durable, before it reports the backup done; without
    /// it the connection's end closes them, unanswered.
    pub const CLOSE_SNAPSHOT: Features = Features(1 << 3);
    /// What this version of hoard implements.
    pub const SUPPORTED: Features = Features(
        Features::EXTENSIONS.0
            | Features::ENCODED_CHUNKS.0
            | Features::ENCRYPTION.0
            | Features::CLOSE_SNAPSHOT.0,
    );
    pub const NONE: Features = Features(0);

    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersect(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }

    /// The bits of `self` that `offered` lacks.
    pub fn beyond(self, offered: Features) -> Features {
        Features(self.0 & !offered.0)
    }

    pub fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets() {
        let offered = Features::EXTENSIONS;
        assert!(offered.contains(Features::EXTENSIONS));
        assert!(!offered.contains(Features::ENCRYPTION));
        let asked = Features(Features::EXTENSIONS.0 | Features::ENCRYPTION.0);
        assert_eq!(asked.beyond(offered), Features::ENCRYPTION);
        assert_eq!(asked.intersect(offered), Features::EXTENSIONS);
        assert!(Features::SUPPORTED.contains(asked));
        assert!(Features::NONE.is_empty());
    }
}
