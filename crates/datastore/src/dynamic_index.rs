//! Dynamic index (`.didx`): the chunks of an archive cut at content-defined
//! boundaries. Each 40-byte entry is the chunk's **end** offset in the file
//! (u64 LE) and its digest, so a chunk's size is the difference of two
//! neighbouring ends and a byte offset is found by binary search. The
//! protocol sends start offsets; the writer checks they run on without
//! gaps and stores ends. The header is in [`crate::index_file`].

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use hoard_types::Digest;
use sha2::{Digest as _, Sha256};

use crate::INDEX_HEADER_SIZE;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::TempFile;
use crate::index_file::{IndexFile, IndexHeader, IndexSummary, finish_index};

pub const DYNAMIC_INDEX_MAGIC: [u8; 8] = *b"hoardDI1";
pub const DYNAMIC_ENTRY_SIZE: usize = 40;

pub struct DynamicIndexWriter {
    tmp: TempFile,
    out: BufWriter<std::fs::File>,
    hasher: Sha256,
    header: IndexHeader,
}

impl DynamicIndexWriter {
    pub fn create(tmp_dir: &Path) -> Result<Self> {
        let tmp = TempFile::create(tmp_dir, "didx")?;
        let mut file = tmp
            .file
            .try_clone()
            .ctx(|| "opening a new dynamic index".to_string())?;
        file.seek(SeekFrom::Start(INDEX_HEADER_SIZE as u64))
            .ctx(|| "opening a new dynamic index".to_string())?;
        Ok(DynamicIndexWriter {
            tmp,
            out: BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            header: IndexHeader::new(DYNAMIC_INDEX_MAGIC),
        })
    }

    /// The offset the next chunk must start at.
    pub fn next_offset(&self) -> u64 {
        self.header.file_size
    }

    /// Appends the chunk of `size` bytes starting at `offset`.
    pub fn push(&mut self, offset: u64, digest: &Digest, size: u64) -> Result<()> {
        if offset != self.header.file_size {
            return Err(Error::DynamicOffset {
                expected: self.header.file_size,
                got: offset,
            });
        }
        let end = offset.checked_add(size).ok_or(Error::DynamicOffset {
            expected: self.header.file_size,
            got: offset,
        })?;
        let mut entry = [0u8; DYNAMIC_ENTRY_SIZE];
        entry[..8].copy_from_slice(&end.to_le_bytes());
        entry[8..].copy_from_slice(digest.as_bytes());
        self.out
            .write_all(&entry)
            .ctx(|| "writing a dynamic index entry".to_string())?;
        self.hasher.update(entry);
        self.header.file_size = end;
        self.header.chunk_count += 1;
        Ok(())
    }

    pub fn finish(mut self, dest: &Path) -> Result<IndexSummary> {
        self.out
            .flush()
            .ctx(|| "writing a dynamic index".to_string())?;
        self.header.csum = self.hasher.finalize().into();
        finish_index(self.tmp, &self.header, dest)
    }
}

/// A finished dynamic index, opened and checked for truncation and kind.
#[derive(Debug)]
pub struct DynamicIndexReader {
    pub(crate) inner: IndexFile,
}

impl DynamicIndexReader {
    pub fn open(path: &Path, name: &str) -> Result<Self> {
        Ok(DynamicIndexReader {
            inner: IndexFile::open(path, name, DYNAMIC_INDEX_MAGIC, DYNAMIC_ENTRY_SIZE)?,
        })
    }

    pub fn file_size(&self) -> u64 {
        self.inner.header.file_size
    }

    pub fn chunk_count(&self) -> u64 {
        self.inner.header.chunk_count
    }

    pub fn verify_checksum(&self) -> Result<()> {
        self.inner.verify_checksum()
    }

    /// Entries `start..start+n` as (end offset, digest).
    pub fn entries(&self, start: u64, n: usize) -> Result<Vec<(u64, Digest)>> {
        let mut buf = Vec::new();
        self.inner.read_entries(start, n, &mut buf)?;
        Ok(buf
            .chunks_exact(DYNAMIC_ENTRY_SIZE)
            .map(|e| {
                let mut end = [0u8; 8];
                end.copy_from_slice(&e[..8]);
                (u64::from_le_bytes(end), Digest::from_slice(&e[8..]))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_must_run_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = DynamicIndexWriter::create(dir.path()).unwrap();
        let a = Digest::of(b"a");
        w.push(0, &a, 100).unwrap();
        assert!(matches!(
            w.push(99, &a, 1),
            Err(Error::DynamicOffset {
                expected: 100,
                got: 99
            })
        ));
        assert!(matches!(
            w.push(101, &a, 1),
            Err(Error::DynamicOffset { .. })
        ));
        w.push(100, &a, 50).unwrap();
        let dest = dir.path().join("t.didx");
        let s = w.finish(&dest).unwrap();
        assert_eq!((s.file_size, s.chunk_count), (150, 2));
        let r = DynamicIndexReader::open(&dest, "t.didx").unwrap();
        r.verify_checksum().unwrap();
        assert_eq!(r.entries(0, 2).unwrap(), vec![(100, a), (150, a)]);
    }

    #[test]
    fn empty_index_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let w = DynamicIndexWriter::create(dir.path()).unwrap();
        let dest = dir.path().join("e.didx");
        w.finish(&dest).unwrap();
        let r = DynamicIndexReader::open(&dest, "e").unwrap();
        assert_eq!(r.chunk_count(), 0);
        r.verify_checksum().unwrap();
    }
}
