//! What fixed and dynamic index files share: a 128-byte header, then
//! `chunk_count` fixed-size entries, and the checks done on open.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic: `hoardFI1` fixed, `hoardDI1` dynamic |
//! | 8 | 16 | unique id (random), tells two indexes of equal content apart |
//! | 24 | 8 | creation time, seconds since the epoch, i64 LE |
//! | 32 | 8 | file size in bytes, u64 LE |
//! | 40 | 8 | chunk count, u64 LE |
//! | 48 | 32 | SHA-256 of the entry region |
//! | 80 | 4 | fixed: chunk size, u32 LE; dynamic: 0 |
//! | 84 | 44 | zero |
//! | 128 | … | entries |

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::INDEX_HEADER_SIZE;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::TempFile;

/// Entries are read and hashed in blocks of about this size.
const SCAN_BLOCK_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexHeader {
    pub magic: [u8; 8],
    pub uuid: [u8; 16],
    pub ctime: i64,
    pub file_size: u64,
    pub chunk_count: u64,
    pub csum: [u8; 32],
    pub chunk_size: u32,
}

impl IndexHeader {
    pub fn encode(&self) -> [u8; INDEX_HEADER_SIZE] {
        let mut b = [0u8; INDEX_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.magic);
        b[8..24].copy_from_slice(&self.uuid);
        b[24..32].copy_from_slice(&self.ctime.to_le_bytes());
        b[32..40].copy_from_slice(&self.file_size.to_le_bytes());
        b[40..48].copy_from_slice(&self.chunk_count.to_le_bytes());
        b[48..80].copy_from_slice(&self.csum);
        b[80..84].copy_from_slice(&self.chunk_size.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; INDEX_HEADER_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let mut h = IndexHeader {
            magic: [0; 8],
            uuid: [0; 16],
            ctime: u64_at(24) as i64,
            file_size: u64_at(32),
            chunk_count: u64_at(40),
            csum: [0; 32],
            chunk_size: u32::from_le_bytes([b[80], b[81], b[82], b[83]]),
        };
        h.magic.copy_from_slice(&b[0..8]);
        h.uuid.copy_from_slice(&b[8..24]);
        h.csum.copy_from_slice(&b[48..80]);
        h
    }

    pub fn new(magic: [u8; 8]) -> Self {
        IndexHeader {
            magic,
            uuid: rand::random(),
            ctime: jiff::Timestamp::now().as_second(),
            file_size: 0,
            chunk_count: 0,
            csum: [0; 32],
            chunk_size: 0,
        }
    }
}

/// An index file opened for reading, its header checked against the
/// file's length so that a truncated or foreign file fails here.
#[derive(Debug)]
pub(crate) struct IndexFile {
    pub file: File,
    pub name: String,
    pub header: IndexHeader,
    pub entry_size: usize,
}

impl IndexFile {
    pub fn open(path: &Path, name: &str, magic: [u8; 8], entry_size: usize) -> Result<Self> {
        let corrupt = |reason: String| Error::IndexCorrupt {
            path: name.to_string(),
            reason,
        };
        let file = crate::fsutil::open_nofollow(path).ctx(|| format!("opening index {name}"))?;
        let len = file
            .metadata()
            .ctx(|| format!("reading index {name}"))?
            .len();
        let mut raw = [0u8; INDEX_HEADER_SIZE];
        if len < INDEX_HEADER_SIZE as u64 {
            return Err(corrupt(format!(
                "{len} bytes is shorter than the 128-byte header"
            )));
        }
        file.read_exact_at(&mut raw, 0)
            .ctx(|| format!("reading index {name}"))?;
        let header = IndexHeader::decode(&raw);
        if header.magic != magic {
            return Err(corrupt(format!(
                "wrong magic {:?} (expected {:?})",
                String::from_utf8_lossy(&header.magic),
                String::from_utf8_lossy(&magic)
            )));
        }
        let want = header
            .chunk_count
            .checked_mul(entry_size as u64)
            .and_then(|n| n.checked_add(INDEX_HEADER_SIZE as u64));
        if want != Some(len) {
            return Err(corrupt(format!(
                "{len} bytes does not hold the {} entries the header announces (truncated?)",
                header.chunk_count
            )));
        }
        Ok(IndexFile {
            file,
            name: name.to_string(),
            header,
            entry_size,
        })
    }

    /// Calls `f` with successive blocks of whole entries, in order.
    pub fn scan(&self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        scan_entries(
            &self.file,
            self.entry_size,
            self.header.chunk_count,
            &self.name,
            &mut f,
        )
    }

    /// Reads entries `start..start+n` into `buf` (replacing its content).
    pub fn read_entries(&self, start: u64, n: usize, buf: &mut Vec<u8>) -> Result<()> {
        buf.resize(n * self.entry_size, 0);
        let off = INDEX_HEADER_SIZE as u64 + start * self.entry_size as u64;
        self.file
            .read_exact_at(buf, off)
            .ctx(|| format!("reading index {}", self.name))
    }

    /// Recomputes the entry checksum and compares it with the header's.
    pub fn verify_checksum(&self) -> Result<()> {
        let mut h = Sha256::new();
        self.scan(|block| {
            h.update(block);
            Ok(())
        })?;
        let got: [u8; 32] = h.finalize().into();
        if got == self.header.csum {
            Ok(())
        } else {
            Err(Error::IndexCorrupt {
                path: self.name.clone(),
                reason: "entry checksum mismatch".into(),
            })
        }
    }
}

/// What a finished index looks like, for the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSummary {
    pub file_size: u64,
    pub chunk_count: u64,
    pub csum: [u8; 32],
    pub uuid: [u8; 16],
}

/// Writes the final header into `tmp` and moves it durably to `dest`.
pub(crate) fn finish_index(
    tmp: TempFile,
    header: &IndexHeader,
    dest: &Path,
) -> Result<IndexSummary> {
    tmp.file
        .write_all_at(&header.encode(), 0)
        .ctx(|| format!("writing the header of {}", dest.display()))?;
    tmp.persist(dest)?;
    Ok(IndexSummary {
        file_size: header.file_size,
        chunk_count: header.chunk_count,
        csum: header.csum,
        uuid: header.uuid,
    })
}

pub(crate) fn scan_entries(
    file: &File,
    entry_size: usize,
    count: u64,
    name: &str,
    f: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let per_block = (SCAN_BLOCK_BYTES / entry_size) as u64;
    let mut buf = vec![0u8; per_block as usize * entry_size];
    let mut done = 0u64;
    while done < count {
        let n = per_block.min(count - done) as usize;
        let block = &mut buf[..n * entry_size];
        file.read_exact_at(block, INDEX_HEADER_SIZE as u64 + done * entry_size as u64)
            .ctx(|| format!("reading index {name}"))?;
        f(block)?;
        done += n as u64;
    }
    Ok(())
}
