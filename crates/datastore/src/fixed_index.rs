//! Fixed index (`.fidx`): the digests of a disk image cut into equal
//! chunks, slot `i` covering bytes `i*chunk_size ..`. Entries are 32-byte
//! digests; the header is in [`crate::index_file`].
//!
//! The writer keeps no per-slot state in memory: it pre-sizes the temp
//! file and an all-zero entry marks a slot not yet sent (no data hashes to
//! zero, and the store never holds such a chunk), so memory stays constant
//! whatever the image size.

use std::os::unix::fs::FileExt;
use std::path::Path;

use hoard_types::{DIGEST_SIZE, Digest, MAX_CHUNK_SIZE};
use sha2::{Digest as _, Sha256};

use crate::INDEX_HEADER_SIZE;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::TempFile;
use crate::index_file::{IndexFile, IndexHeader, IndexSummary, finish_index, scan_entries};

pub const FIXED_INDEX_MAGIC: [u8; 8] = *b"hoardFI1";
/// Most slots in one fixed index (32 GiB of entries).
pub const MAX_FIXED_CHUNKS: u64 = 1 << 30;
/// Smallest fixed chunk size.
pub const MIN_FIXED_CHUNK_SIZE: u32 = 4096;

pub struct FixedIndexWriter {
    tmp: TempFile,
    header: IndexHeader,
    /// One bit per 4 KiB page of entries that has been written to, and how
    /// many: a client that scatters entries far apart would otherwise make
    /// the server write a page per 40-byte entry (see [`Self::set`]).
    pages: Vec<u64>,
    pages_touched: u64,
    entries_set: u64,
}

/// Entries in one 4 KiB page of a fixed index.
const ENTRIES_PER_PAGE: u64 = 4096 / DIGEST_SIZE as u64;
/// Pages a writer may touch beyond one per [`MIN_ENTRIES_PER_PAGE`]
/// entries sent: room for the parallel, roughly ordered writes of any
/// real client (1 MiB of index, 32,768 slots).
const PAGE_ALLOWANCE: u64 = 256;
/// Entries a touched page must average (of the 128 it holds), past the
/// allowance.
const MIN_ENTRIES_PER_PAGE: u64 = 8;

impl FixedIndexWriter {
    /// Checks declared sizes: the chunk size is in range and the slot count
    /// bounded. Returns the slot count.
    pub fn check_sizes(file_size: u64, chunk_size: u32) -> Result<u64> {
        if !(MIN_FIXED_CHUNK_SIZE..=MAX_CHUNK_SIZE as u32).contains(&chunk_size) {
            return Err(Error::FixedChunkSize(chunk_size));
        }
        let count = file_size.div_ceil(chunk_size as u64);
        if count > MAX_FIXED_CHUNKS {
            return Err(Error::TooManyChunks {
                file_size,
                chunk_size,
                max: MAX_FIXED_CHUNKS,
            });
        }
        Ok(count)
    }

    /// Checks the declared sizes before anything is allocated on disk.
    pub fn create(tmp_dir: &Path, file_size: u64, chunk_size: u32) -> Result<Self> {
        let count = Self::check_sizes(file_size, chunk_size)?;
        debug_assert_eq!(ENTRIES_PER_PAGE, 128);
        let tmp = TempFile::create(tmp_dir, "fidx")?;
        tmp.file
            .set_len(INDEX_HEADER_SIZE as u64 + count * DIGEST_SIZE as u64)
            .ctx(|| "sizing a new fixed index".to_string())?;
        let mut header = IndexHeader::new(FIXED_INDEX_MAGIC);
        header.file_size = file_size;
        header.chunk_count = count;
        header.chunk_size = chunk_size;
        let pages = (INDEX_HEADER_SIZE as u64 + count * DIGEST_SIZE as u64).div_ceil(4096);
        Ok(FixedIndexWriter {
            tmp,
            header,
            pages: vec![0; pages.div_ceil(64) as usize],
            pages_touched: 0,
            entries_set: 0,
        })
    }

    pub fn chunk_count(&self) -> u64 {
        self.header.chunk_count
    }

    /// The size the chunk in slot `index` must have, or an error if the
    /// slot is beyond the file.
    pub fn slot_size(&self, index: u64) -> Result<u64> {
        let h = &self.header;
        if index >= h.chunk_count {
            return Err(Error::SlotOutOfRange {
                index,
                last: h.chunk_count as i128 - 1,
            });
        }
        let start = index * h.chunk_size as u64;
        Ok((h.file_size - start).min(h.chunk_size as u64))
    }

    /// Fills slot `index`; a slot may be filled again (last one wins).
    ///
    /// Slots may come in any order, but not scattered: a writer whose
    /// entries touch more than one new 4 KiB page of the index per
    /// [`MIN_ENTRIES_PER_PAGE`] entries (beyond a first allowance) is
    /// refused, so that a few KB of packets cannot make the server write
    /// megabytes of temp file.
    pub fn set(&mut self, index: u64, digest: &Digest) -> Result<()> {
        self.slot_size(index)?;
        let off = INDEX_HEADER_SIZE as u64 + index * DIGEST_SIZE as u64;
        self.entries_set += 1;
        for page in [off / 4096, (off + DIGEST_SIZE as u64 - 1) / 4096] {
            let (word, bit) = ((page / 64) as usize, page % 64);
            if self.pages[word] & (1 << bit) == 0 {
                self.pages[word] |= 1 << bit;
                self.pages_touched += 1;
            }
        }
        let allowed = PAGE_ALLOWANCE + self.entries_set.div_ceil(MIN_ENTRIES_PER_PAGE);
        if self.pages_touched > allowed {
            return Err(Error::ScatteredSlots {
                pages: self.pages_touched,
                entries: self.entries_set,
            });
        }
        self.tmp
            .file
            .write_all_at(digest.as_bytes(), off)
            .ctx(|| "writing a fixed index entry".to_string())
    }

    /// Checks every slot is filled, writes the header and moves the index
    /// durably to `dest`.
    pub fn finish(mut self, dest: &Path) -> Result<IndexSummary> {
        let mut hasher = Sha256::new();
        let mut slot = 0u64;
        scan_entries(
            &self.tmp.file,
            DIGEST_SIZE,
            self.header.chunk_count,
            "new fixed index",
            &mut |block| {
                for d in block.chunks_exact(DIGEST_SIZE) {
                    if d.iter().all(|b| *b == 0) {
                        return Err(Error::SlotMissing(slot));
                    }
                    slot += 1;
                }
                hasher.update(block);
                Ok(())
            },
        )?;
        self.header.csum = hasher.finalize().into();
        finish_index(self.tmp, &self.header, dest)
    }
}

/// A finished fixed index, opened and checked for truncation and kind.
#[derive(Debug)]
pub struct FixedIndexReader {
    pub(crate) inner: IndexFile,
}

impl FixedIndexReader {
    pub fn open(path: &Path, name: &str) -> Result<Self> {
        let inner = IndexFile::open(path, name, FIXED_INDEX_MAGIC, DIGEST_SIZE)?;
        let h = &inner.header;
        let consistent = (MIN_FIXED_CHUNK_SIZE..=MAX_CHUNK_SIZE as u32).contains(&h.chunk_size)
            && h.file_size.div_ceil(h.chunk_size as u64) == h.chunk_count;
        if !consistent {
            return Err(Error::IndexCorrupt {
                path: name.to_string(),
                reason: format!(
                    "file size {} and chunk size {} do not give {} chunks",
                    h.file_size, h.chunk_size, h.chunk_count
                ),
            });
        }
        Ok(FixedIndexReader { inner })
    }

    pub fn file_size(&self) -> u64 {
        self.inner.header.file_size
    }

    pub fn chunk_size(&self) -> u32 {
        self.inner.header.chunk_size
    }

    pub fn chunk_count(&self) -> u64 {
        self.inner.header.chunk_count
    }

    pub fn verify_checksum(&self) -> Result<()> {
        self.inner.verify_checksum()
    }

    /// Digests of slots `start..start+n`.
    pub fn digests(&self, start: u64, n: usize) -> Result<Vec<Digest>> {
        let mut buf = Vec::new();
        self.inner.read_entries(start, n, &mut buf)?;
        Ok(buf
            .chunks_exact(DIGEST_SIZE)
            .map(Digest::from_slice)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_round_trip_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FixedIndexWriter::create(dir.path(), 10_000, 4096).unwrap();
        assert_eq!(w.chunk_count(), 3);
        assert_eq!(w.slot_size(2).unwrap(), 10_000 - 8192);
        assert!(matches!(w.slot_size(3), Err(Error::SlotOutOfRange { .. })));
        let ds: Vec<Digest> = (0..3u8).map(|i| Digest::of(&[i])).collect();
        for i in [2usize, 0, 1] {
            w.set(i as u64, &ds[i]).unwrap();
        }
        let dest = dir.path().join("x.fidx");
        let s = w.finish(&dest).unwrap();
        assert_eq!(s.chunk_count, 3);
        let r = FixedIndexReader::open(&dest, "x.fidx").unwrap();
        r.verify_checksum().unwrap();
        assert_eq!(r.digests(0, 3).unwrap(), ds);
        assert_eq!(r.file_size(), 10_000);
    }

    #[test]
    fn scattered_slots_are_refused_early() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"x");
        // 2^30 slots, entries 128 slots (one page) apart.
        let mut w = FixedIndexWriter::create(dir.path(), (1 << 30) * 4096, 4096).unwrap();
        let mut refused_at = None;
        for i in 0..10_000u64 {
            if let Err(e) = w.set(i * 128, &d) {
                assert!(matches!(e, Error::ScatteredSlots { .. }));
                refused_at = Some(i);
                break;
            }
        }
        let n = refused_at.expect("refused");
        assert!(n <= PAGE_ALLOWANCE + 40, "refused after {n} entries");
        // In order, the same index takes a million entries without complaint.
        let mut w = FixedIndexWriter::create(dir.path(), (1 << 30) * 4096, 4096).unwrap();
        for i in 0..1_000_000u64 {
            w.set(i, &d).unwrap();
        }
        // Parallel writers that interleave a few regions are fine too.
        let mut w = FixedIndexWriter::create(dir.path(), (1 << 20) * 4096, 4096).unwrap();
        for i in 0..100_000u64 {
            let region = i % 16;
            w.set(region * 65_536 + i / 16, &d).unwrap();
        }
    }

    #[test]
    fn missing_slot_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FixedIndexWriter::create(dir.path(), 8192, 4096).unwrap();
        w.set(0, &Digest::of(b"a")).unwrap();
        let dest = dir.path().join("y.fidx");
        assert!(matches!(w.finish(&dest), Err(Error::SlotMissing(1))));
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn declared_sizes_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            FixedIndexWriter::create(dir.path(), 1, 0),
            Err(Error::FixedChunkSize(0))
        ));
        assert!(matches!(
            FixedIndexWriter::create(dir.path(), u64::MAX, 4096),
            Err(Error::TooManyChunks { .. })
        ));
        let w = FixedIndexWriter::create(dir.path(), 0, 4096).unwrap();
        assert_eq!(w.chunk_count(), 0);
    }

    #[test]
    fn truncated_and_foreign_files_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FixedIndexWriter::create(dir.path(), 4096, 4096).unwrap();
        w.set(0, &Digest::of(b"a")).unwrap();
        let dest = dir.path().join("z.fidx");
        w.finish(&dest).unwrap();
        let raw = std::fs::read(&dest).unwrap();
        std::fs::write(&dest, &raw[..raw.len() - 1]).unwrap();
        assert!(matches!(
            FixedIndexReader::open(&dest, "z"),
            Err(Error::IndexCorrupt { .. })
        ));
        let mut foreign = raw.clone();
        foreign[..8].copy_from_slice(b"hoardDI1");
        std::fs::write(&dest, &foreign).unwrap();
        assert!(matches!(
            FixedIndexReader::open(&dest, "z"),
            Err(Error::IndexCorrupt { .. })
        ));
        let mut flipped = raw;
        flipped[INDEX_HEADER_SIZE] ^= 1;
        std::fs::write(&dest, &flipped).unwrap();
        let r = FixedIndexReader::open(&dest, "z").unwrap();
        assert!(r.verify_checksum().is_err());
    }
}
