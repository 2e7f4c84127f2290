//! The content-addressed chunk store: `.chunks/PP/DIGEST`.
//!
//! A chunk's file name is its SHA-256, checked against the data before
//! anything is written, so a name always matches its content unless the
//! disk damaged it (which the CRC in the header catches). Files appear
//! atomically; a zero-length file (a crash leftover on some filesystems)
//! counts as missing and is overwritten by the next insert.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hoard_types::zero::nonzero_runs;
use hoard_types::{Digest, MAX_CHUNK_SIZE};

use crate::chunk_file::{CHUNK_HEADER_SIZE, ChunkHeader};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{TempFile, create_dir_durable};

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Existed,
}

#[derive(Debug, Clone)]
pub struct ChunkStore {
    base: PathBuf,
    tmp: PathBuf,
}

/// Zero runs of at least this many bytes are holes in a chunk file.
const SPARSE_BLOCK: usize = 4096;

/// Hex digits of the digest that name a chunk's directory: 256
/// directories, pre-created with the datastore. restic uses the same
/// fan-out; ext4, XFS and ZFS index large directories, so millions of
/// chunks stay cheap to look up, and a fresh datastore creates no
/// directory per chunk (that was 15% of ingest CPU with 65,536 lazily
/// created ones).
pub const PREFIX_DIGITS: usize = 2;

impl ChunkStore {
    pub(crate) fn new(base: PathBuf, tmp: PathBuf) -> Self {
        ChunkStore { base, tmp }
    }

    /// Where the chunk with this digest lives.
    pub fn chunk_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.base.join(&hex[..PREFIX_DIGITS]).join(hex)
    }

    /// Creates the 256 prefix directories, so that storing a chunk never
    /// has to create (and fsync) a directory. Idempotent.
    pub(crate) fn create_prefix_dirs(&self) -> Result<()> {
        for p in 0..=0xffu32 {
            let dir = self.base.join(format!("{p:02x}"));
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).ctx(|| format!("creating {}", dir.display())),
            }
        }
        crate::fsutil::fsync_dir(&self.base)
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Verifies `data` against `digest` and stores it durably unless a
    /// chunk with that digest exists. Blocking: hashing and fsync.
    pub fn insert(&self, digest: &Digest, data: &[u8]) -> Result<Inserted> {
        if data.is_empty() || data.len() > MAX_CHUNK_SIZE {
            return Err(Error::ChunkSize {
                size: data.len(),
                max: MAX_CHUNK_SIZE,
            });
        }
        let actual = Digest::of(data);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                declared: *digest,
                actual,
            });
        }
        let path = self.chunk_path(digest);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.len() > 0) {
            return Ok(Inserted::Existed);
        }
        let tmp = TempFile::create(&self.tmp, "chunk")?;
        let ctx = || format!("writing chunk {digest}");
        tmp.file
            .write_all_at(&ChunkHeader::for_raw(data).encode(), 0)
            .ctx(ctx)?;
        // Zero blocks of the data stay holes: a disk image's chunk is
        // often mostly zeros, and those bytes then cost neither page cache
        // nor disk. Readers see zeros either way.
        for (start, run) in nonzero_runs(data, SPARSE_BLOCK) {
            tmp.file
                .write_all_at(run, (CHUNK_HEADER_SIZE + start) as u64)
                .ctx(ctx)?;
        }
        tmp.file
            .set_len((CHUNK_HEADER_SIZE + data.len()) as u64)
            .ctx(ctx)?;
        if let Some(dir) = path.parent() {
            create_dir_durable(dir)?;
        }
        tmp.persist(&path)?;
        Ok(Inserted::New)
    }

    fn open(&self, digest: &Digest) -> Result<(File, ChunkHeader)> {
        let path = self.chunk_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ChunkMissing(*digest));
            }
            Err(e) => return Err(e).ctx(|| format!("opening chunk {digest}")),
        };
        let len = file
            .metadata()
            .ctx(|| format!("reading chunk {digest}"))?
            .len();
        if len == 0 {
            return Err(Error::ChunkMissing(*digest));
        }
        let mut head = [0u8; CHUNK_HEADER_SIZE];
        let n = file
            .read_at(&mut head, 0)
            .ctx(|| format!("reading chunk {digest}"))?;
        let header = ChunkHeader::decode(digest, &head[..n], len)?;
        Ok((file, header))
    }

    /// The length of the chunk's plain data, from its header only.
    pub fn raw_size(&self, digest: &Digest) -> Result<u64> {
        Ok(self.open(digest)?.1.raw_size as u64)
    }

    /// Whether a usable chunk with this digest is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.open(digest).is_ok()
    }

    /// Reads a chunk's plain data, checking its CRC.
    pub fn load(&self, digest: &Digest) -> Result<Vec<u8>> {
        let (file, header) = self.open(digest)?;
        let size = header.raw_size as usize;
        // Read into spare capacity: no zero-filling of a buffer that is
        // overwritten right away.
        let mut data = Vec::with_capacity(size);
        let mut payload = std::io::Read::take(&file, size as u64);
        std::io::Seek::seek(
            &mut payload.get_mut(),
            std::io::SeekFrom::Start(CHUNK_HEADER_SIZE as u64),
        )
        .and_then(|_| payload.read_to_end(&mut data))
        .ctx(|| format!("reading chunk {digest}"))?;
        if data.len() != size {
            return Err(Error::ChunkCorrupt {
                digest: *digest,
                reason: format!("{} bytes of data, the header says {size}", data.len()),
            });
        }
        header.check_payload(digest, &data)?;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ChunkStore) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let s = ChunkStore::new(dir.path().join("chunks"), dir.path().join("tmp"));
        (dir, s)
    }

    #[test]
    fn zero_blocks_are_holes_and_read_back_as_zeros() {
        use std::os::unix::fs::MetadataExt;
        let (_d, s) = store();
        // 1 MiB of zeros with data at the start, in the middle and at the
        // very end.
        let mut data = vec![0u8; 1 << 20];
        data[..100].fill(7);
        data[500_000..500_010].fill(8);
        let end = data.len();
        data[end - 3..].fill(9);
        let dg = Digest::of(&data);
        assert_eq!(s.insert(&dg, &data).unwrap(), Inserted::New);
        let meta = fs::metadata(s.chunk_path(&dg)).unwrap();
        assert_eq!(meta.len(), (CHUNK_HEADER_SIZE + data.len()) as u64);
        assert!(
            meta.blocks() * 512 <= 64 * 1024,
            "{} bytes allocated",
            meta.blocks() * 512
        );
        assert_eq!(s.load(&dg).unwrap(), data);
        // Trailing zeros: the file still has its full length.
        let mut tail_zero = vec![0u8; 10_000];
        tail_zero[0] = 1;
        let dg = Digest::of(&tail_zero);
        s.insert(&dg, &tail_zero).unwrap();
        assert_eq!(s.load(&dg).unwrap(), tail_zero);
    }

    #[test]
    fn insert_load_and_dedup() {
        let (_d, s) = store();
        let data = b"some chunk data".to_vec();
        let dg = Digest::of(&data);
        assert_eq!(s.insert(&dg, &data).unwrap(), Inserted::New);
        assert_eq!(s.insert(&dg, &data).unwrap(), Inserted::Existed);
        assert_eq!(s.load(&dg).unwrap(), data);
        assert_eq!(s.raw_size(&dg).unwrap(), data.len() as u64);
        assert!(
            s.chunk_path(&dg)
                .to_string_lossy()
                .contains(&dg.to_hex()[..PREFIX_DIGITS])
        );
    }

    #[test]
    fn refuses_wrong_digest_and_sizes() {
        let (_d, s) = store();
        let dg = Digest::of(b"a");
        assert!(matches!(
            s.insert(&dg, b"b"),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(matches!(s.insert(&dg, b""), Err(Error::ChunkSize { .. })));
        assert!(!s.chunk_path(&dg).exists());
        // No temp file left behind.
        assert_eq!(fs::read_dir(_d.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn zero_length_leftover_counts_as_missing_and_heals() {
        let (_d, s) = store();
        let data = b"x".repeat(100);
        let dg = Digest::of(&data);
        let p = s.chunk_path(&dg);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        File::create(&p).unwrap();
        assert!(matches!(s.load(&dg), Err(Error::ChunkMissing(_))));
        assert_eq!(s.insert(&dg, &data).unwrap(), Inserted::New);
        assert_eq!(s.load(&dg).unwrap(), data);
    }

    #[test]
    fn bit_rot_is_detected() {
        let (_d, s) = store();
        let data = b"y".repeat(100);
        let dg = Digest::of(&data);
        s.insert(&dg, &data).unwrap();
        let p = s.chunk_path(&dg);
        let mut raw = fs::read(&p).unwrap();
        raw[50] ^= 1;
        fs::write(&p, raw).unwrap();
        assert!(matches!(s.load(&dg), Err(Error::ChunkCorrupt { .. })));
    }
}
