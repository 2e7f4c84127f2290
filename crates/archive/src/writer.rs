//! Laying out a metadata stream: the header, directory tables children
//! first, then the root entry and the trailer. Keeps the offsets; the
//! caller moves the bytes.

use crate::entry::{Entry, Kind};
use crate::format::{META_HEADER_SIZE, encode_entry, encode_table, meta_header, trailer};

pub struct MetaWriter {
    offset: u64,
}

impl MetaWriter {
    /// A writer and the stream's first bytes.
    pub fn start() -> (MetaWriter, [u8; META_HEADER_SIZE]) {
        (
            MetaWriter {
                offset: META_HEADER_SIZE as u64,
            },
            meta_header(),
        )
    }

    /// Encodes the table of a directory whose entries (sorted by name,
    /// child tables already written) are `entries`; returns its bytes and
    /// the [`Kind`] by which its parent refers to it.
    pub fn table(&mut self, entries: &[Entry]) -> (Vec<u8>, Kind) {
        let bytes = encode_table(entries);
        let kind = Kind::Dir {
            table: self.offset,
            table_len: bytes.len() as u64,
        };
        self.offset += bytes.len() as u64;
        (bytes, kind)
    }

    /// The root entry (its `kind` from [`MetaWriter::table`] of the root
    /// table, its `size` the data stream's length) and the trailer.
    pub fn finish(self, root: &Entry) -> Vec<u8> {
        let mut out = Vec::new();
        encode_entry(root, &mut out);
        let len = out.len() as u64;
        out.extend_from_slice(&trailer(len));
        out
    }
}
