//! Random access to an archive's metadata stream: the root, one
//! directory's entries, one path's entry. Reads only the tables on the
//! way, through a [`RangeSource`].

use crate::entry::{Entry, Kind};
use crate::error::{ArchiveError, Result};
use crate::format::{
    MAX_DEPTH, META_HEADER_SIZE, PAYLOAD_HEADER_SIZE, TRAILER_SIZE, check_child_table,
    check_meta_header, decode_root, decode_table, decode_trailer,
};

/// Bytes at offsets of a stream of known size: chunks fetched from a
/// server on demand, or a buffer in tests.
pub trait RangeSource {
    fn size(&self) -> u64;
    /// Exactly `len` bytes at `offset`; the caller has checked the range
    /// lies within [`RangeSource::size`].
    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>>;
}

impl RangeSource for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        Ok(self[offset as usize..offset as usize + len].to_vec())
    }
}

/// The largest root entry: the fixed part, xattrs and slack.
const MAX_ROOT_ENTRY: u64 = 1 << 24;

pub struct Archive<S> {
    meta: S,
    root: Entry,
    /// Where the root entry starts: every table lies before it.
    root_at: u64,
    data_size: u64,
}

impl<S: RangeSource> Archive<S> {
    /// Opens an archive whose data stream has `data_size` bytes: reads the
    /// header, the trailer and the root entry, and checks they agree.
    pub fn open(mut meta: S, data_size: u64) -> Result<Archive<S>> {
        let size = meta.size();
        let min = (META_HEADER_SIZE + TRAILER_SIZE) as u64;
        if size < min {
            return Err(ArchiveError::Malformed(format!(
                "the metadata stream has {size} bytes, fewer than header and trailer"
            )));
        }
        check_meta_header(&meta.read(0, META_HEADER_SIZE)?)?;
        let root_len = decode_trailer(&meta.read(size - TRAILER_SIZE as u64, TRAILER_SIZE)?)?;
        if root_len > MAX_ROOT_ENTRY || root_len > size - min {
            return Err(ArchiveError::Malformed(format!(
                "the trailer announces a root entry of {root_len} bytes in a stream of {size}"
            )));
        }
        let root_at = size - TRAILER_SIZE as u64 - root_len;
        let root = decode_root(&meta.read(root_at, root_len as usize)?)?;
        if let Kind::Dir { table, table_len } = root.kind {
            check_child_table(table, table_len, root_at)?;
        }
        if root.size != data_size {
            return Err(ArchiveError::Malformed(format!(
                "the metadata stream describes a data stream of {} bytes, the data stream has {data_size}",
                root.size
            )));
        }
        Ok(Archive {
            meta,
            root,
            root_at,
            data_size,
        })
    }

    pub fn root(&self) -> &Entry {
        &self.root
    }

    pub fn source(&mut self) -> &mut S {
        &mut self.meta
    }

    /// The entries of directory `dir`, sorted by name, each checked to
    /// point within the streams.
    pub fn read_dir(&mut self, dir: &Entry) -> Result<Vec<Entry>> {
        let Kind::Dir { table, table_len } = dir.kind else {
            return Err(ArchiveError::NotADirectory(
                String::from_utf8_lossy(&dir.name).into_owned(),
            ));
        };
        // The parent's decoder checked the table lies before the parent
        // table; the root's lies before the root entry.
        if table
            .checked_add(table_len)
            .is_none_or(|end| end > self.root_at)
        {
            return Err(ArchiveError::Malformed(format!(
                "directory table {table}+{table_len} lies beyond the metadata stream"
            )));
        }
        let bytes = self.meta.read(table, table_len as usize)?;
        let entries = decode_table(&bytes, table)?;
        for e in &entries {
            if let Some((at, len, sparse)) = e.payload() {
                let fits = at.checked_add(len).is_some_and(|end| end <= self.data_size);
                if !fits || len < PAYLOAD_HEADER_SIZE as u64 || (!sparse && len < e.size) {
                    return Err(ArchiveError::Malformed(format!(
                        "file {:?} points at payload {at}+{len}, beyond the data stream of {} bytes",
                        String::from_utf8_lossy(&e.name),
                        self.data_size
                    )));
                }
            }
        }
        Ok(entries)
    }

    /// The entry at `path` (components separated by `/`; empty or `/`
    /// is the root). Reads one table per directory on the way.
    pub fn lookup(&mut self, path: &str) -> Result<Entry> {
        let mut current = self.root.clone();
        let mut walked = String::new();
        for (depth, part) in path.split('/').filter(|p| !p.is_empty()).enumerate() {
            if depth >= MAX_DEPTH {
                return Err(ArchiveError::Malformed(format!(
                    "{path} is nested deeper than {MAX_DEPTH}"
                )));
            }
            if !current.is_dir() {
                return Err(ArchiveError::NotADirectory(walked));
            }
            let entries = self.read_dir(&current)?;
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(part);
            let found = entries
                .binary_search_by(|e| e.name.as_slice().cmp(part.as_bytes()))
                .map_err(|_| ArchiveError::NotFound(walked.clone()))?;
            current = entries.into_iter().nth(found).expect("index from search");
        }
        Ok(current)
    }
}

/// Where a file's content lies in the data stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadLayout {
    /// Stream offset of the first extent's bytes; each next extent's
    /// bytes follow the previous one's.
    pub data_at: u64,
    /// The file's extents, in order; one covering the whole file if it
    /// is dense.
    pub extents: Vec<crate::format::Extent>,
    pub sparse: bool,
}

/// Why a payload's layout could not be read: the stream failed (the
/// caller's error), or the bytes are not a valid payload.
#[derive(Debug)]
pub enum LayoutError<E> {
    Source(E),
    Malformed(String),
}

/// Reads and checks the payload header (and, for a sparse file, the
/// extent map, refused if it has more than `max_extents`) of file entry
/// `e` through `read(offset, len)` on the data stream.
pub fn payload_layout<E>(
    e: &Entry,
    max_extents: u64,
    read: &mut dyn FnMut(u64, u64) -> std::result::Result<Vec<u8>, E>,
) -> std::result::Result<PayloadLayout, LayoutError<E>> {
    use crate::format::{self, Extent, decode_payload_header};
    let malformed = |x: ArchiveError| LayoutError::Malformed(x.to_string());
    let (at, len, sparse) = e
        .payload()
        .ok_or_else(|| LayoutError::Malformed("not a file with content".into()))?;
    let header = read(at, PAYLOAD_HEADER_SIZE as u64).map_err(LayoutError::Source)?;
    let body = decode_payload_header(&header).map_err(malformed)?;
    if body != len - PAYLOAD_HEADER_SIZE as u64 {
        return Err(LayoutError::Malformed(format!(
            "payload header says {body} bytes, the entry {}",
            len - PAYLOAD_HEADER_SIZE as u64
        )));
    }
    let mut data_at = at + PAYLOAD_HEADER_SIZE as u64;
    let extents = if sparse {
        let raw = read(data_at, 8).map_err(LayoutError::Source)?;
        let count = raw
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| LayoutError::Malformed("short sparse map".into()))?;
        if count > format::MAX_EXTENTS.min(max_extents) || format::extent_map_len(count) > body {
            return Err(LayoutError::Malformed(format!(
                "sparse map of {count} extents does not fit its payload, or is more than {max_extents} extents"
            )));
        }
        let raw = read(data_at + 8, 16 * count).map_err(LayoutError::Source)?;
        let extents: Vec<Extent> = raw
            .chunks_exact(16)
            .map(|x| Extent {
                offset: u64::from_le_bytes(x[..8].try_into().expect("8 of 16 bytes")),
                len: u64::from_le_bytes(x[8..].try_into().expect("8 of 16 bytes")),
            })
            .collect();
        format::check_extents(&extents, e.size, body).map_err(malformed)?;
        data_at += format::extent_map_len(count);
        extents
    } else {
        vec![Extent {
            offset: 0,
            len: e.size,
        }]
    };
    Ok(PayloadLayout {
        data_at,
        extents,
        sparse,
    })
}
