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
    /// Reserved for client-compressed chunk uploads (not offered yet).
    pub const RESERVED_CLIENT_COMPRESSION: Features = Features(1 << 1);
    /// Reserved for client-encrypted chunks and indexes (not offered yet).
    pub const RESERVED_ENCRYPTION: Features = Features(1 << 2);
    /// What this version of hoard implements.
    pub const SUPPORTED: Features = Features::EXTENSIONS;
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

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets() {
        let offered = Features::SUPPORTED;
        assert!(offered.contains(Features::EXTENSIONS));
        assert!(!offered.contains(Features::RESERVED_ENCRYPTION));
        let asked = Features(Features::EXTENSIONS.0 | Features::RESERVED_ENCRYPTION.0);
        assert_eq!(asked.beyond(offered), Features::RESERVED_ENCRYPTION);
        assert_eq!(asked.intersect(offered), Features::EXTENSIONS);
        assert!(Features::NONE.is_empty());
    }
}
