//! Opening what an image backup reads: a regular file, a block device,
//! or an NBD export (`nbd://HOST[:PORT]/EXPORT`,
//! `nbd+unix:///EXPORT?socket=PATH`; crate `hoard-nbd`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hoard_nbd::{ALLOCATION, NbdUri};
use hoard_types::SourceAttributes;

use crate::error::{Error, Result};

pub struct Source {
    pub path: PathBuf,
    pub reader: Reader,
    pub size: u64,
    /// Regular files: what the next backup compares to skip reading. NBD
    /// exports: the mark of the dirty bitmap started at this backup
    /// ([`bitmap_mark`]), if the URI names one.
    pub attrs: Option<SourceAttributes>,
    /// NBD exports: the dirty bitmap that holds what changed since the
    /// previous backup (`?bitmap=NAME`).
    pub bitmap: Option<String>,
}

/// Chunks past which an export gets no per-chunk map of zeros or
/// unwritten blocks.
const MAX_MAPPED_CHUNKS: u64 = 1 << 24;

/// `ctime_ns` of a [`bitmap_mark`]: no file has this status change time.
pub const BITMAP_MARK: i64 = i64::MIN;

/// What a backup of an NBD export records (as the file's source
/// attributes, which a manifest keeps and a seal covers) when the
/// operator started dirty bitmap `name` at its point in time: the next
/// backup reads only the blocks that bitmap marks, and only on top of
/// the snapshot that recorded it. The name is hashed: `inode` is the
/// first 8 bytes of SHA-256("hoard nbd bitmap\0" ‖ name), big-endian.
pub fn bitmap_mark(name: &str) -> SourceAttributes {
    let mut tagged = b"hoard nbd bitmap\0".to_vec();
    tagged.extend_from_slice(name.as_bytes());
    let d = hoard_types::Digest::of(&tagged);
    let mut h = [0u8; 8];
    h.copy_from_slice(&d.as_bytes()[..8]);
    SourceAttributes {
        mtime_ns: 0,
        ctime_ns: BITMAP_MARK,
        inode: u64::from_be_bytes(h),
    }
}

/// Where an image's bytes come from.
pub enum Reader {
    /// A regular file or a block device.
    File(File),
    /// An NBD export: one connection, shared by the handles of a source.
    Nbd(Arc<Mutex<hoard_nbd::Client>>),
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

impl Source {
    pub fn open(path: &Path) -> Result<Source> {
        if let Some(uri) = path.to_str().filter(|p| hoard_nbd::is_nbd_uri(p)) {
            return Source::open_nbd(path, uri);
        }
        // Checked before opening: opening a fifo would wait for a writer.
        let ft = std::fs::metadata(path)
            .map_err(Error::source_io(path))?
            .file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(Error::Source {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "is neither a regular file nor a block device",
                ),
            });
        }
        let err = Error::source_io(path);
        let mut file = File::open(path).map_err(err)?;
        let meta = file.metadata().map_err(Error::source_io(path))?;
        let ft = meta.file_type();
        let (size, attrs) = if ft.is_file() {
            let attrs = SourceAttributes {
                mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
                ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
                inode: meta.ino(),
            };
            (meta.len(), Some(attrs))
        } else if ft.is_block_device() {
            // A block device's size is where seeking to its end lands.
            let size = file
                .seek(SeekFrom::End(0))
                .map_err(Error::source_io(path))?;
            (size, None)
        } else {
            let what = if ft.is_dir() {
                "is a directory, not a disk image"
            } else {
                "is neither a regular file nor a block device"
            };
            return Err(Error::Source {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, what),
            });
        };
        Ok(Source {
            path: path.to_path_buf(),
            reader: Reader::File(file),
            size,
            attrs,
            bitmap: None,
        })
    }

    /// A regular file or block device (whose attributes, for a file, the
    /// metadata shortcut may trust).
    pub fn is_file(&self) -> bool {
        matches!(self.reader, Reader::File(_))
    }

    /// For each chunk of `chunk_size`: whether the export's dirty bitmap
    /// marks none of its blocks. One pass over the bitmap, a window of
    /// 1 GiB per request, instead of a request per chunk. `None` if the
    /// source has no bitmap or the pass fails: then every chunk counts as
    /// written.
    pub fn clean_chunks(&self, chunk_size: u32) -> Option<Vec<bool>> {
        let b = self.bitmap.as_ref()?;
        let ctx = hoard_nbd::bitmap_context(b);
        let dirty = |flags: u32| flags & hoard_nbd::wire::STATE_DIRTY != 0;
        // A chunk is clean when no extent over it is dirty.
        self.chunk_pass(&ctx, chunk_size, true, |clean, f| *clean &= !dirty(f))
    }

    /// For each chunk: whether the export says it reads as zeros
    /// (`base:allocation`), in one pass as [`Source::clean_chunks`].
    /// `None` for files (their holes are found by `is_hole`) and on any
    /// doubt.
    pub fn zero_chunks(&self, chunk_size: u32) -> Option<Vec<bool>> {
        let zero = |flags: u32| flags & hoard_nbd::wire::STATE_ZERO != 0;
        self.chunk_pass(ALLOCATION, chunk_size, true, |all, f| *all &= zero(f))
    }

    /// Folds the flags of every extent of meta context `ctx` into one
    /// value per chunk, starting from `init`.
    fn chunk_pass(
        &self,
        ctx: &str,
        chunk_size: u32,
        init: bool,
        fold: impl Fn(&mut bool, u32),
    ) -> Option<Vec<bool>> {
        let Reader::Nbd(c) = &self.reader else {
            return None;
        };
        let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
        if !c.has_context(ctx) {
            return None;
        }
        let cs = u64::from(chunk_size);
        let chunks = self.size.div_ceil(cs);
        // One flag per chunk: 16 MiB for 64 TiB of 4 MiB chunks; beyond
        // that, no map (every chunk is read).
        if chunks > MAX_MAPPED_CHUNKS {
            return None;
        }
        let mut out = vec![init; chunks as usize];
        let window = (1u64 << 30) / cs * cs;
        let mut at = 0;
        while at < self.size {
            let len = window.min(self.size - at);
            for s in c.block_status(ctx, at, len).ok()? {
                // The client returns extents that tile the range; a gap
                // would leave chunks at `init`, so it is checked anyway.
                if s.offset != at || s.len == 0 {
                    return None;
                }
                let (first, last) = (s.offset / cs, (s.offset + s.len - 1) / cs);
                for v in &mut out[first as usize..=last as usize] {
                    fold(v, s.flags);
                }
                at += s.len;
            }
        }
        Some(out)
    }

    /// Why the export's dirty bitmap cannot be read, if it cannot.
    pub fn bitmap_missing(&self) -> Option<String> {
        let (Reader::Nbd(c), Some(b)) = (&self.reader, &self.bitmap) else {
            return None;
        };
        let c = c.lock().unwrap_or_else(|p| p.into_inner());
        let ctx = hoard_nbd::bitmap_context(b);
        (!c.has_context(&ctx)).then(|| format!("the export offers no dirty bitmap {b} ({ctx})"))
    }

    /// Connects to the NBD export `uri` names.
    fn open_nbd(path: &Path, uri: &str) -> Result<Source> {
        let nbd = |e: hoard_nbd::Error| Error::Source {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        };
        let parsed = NbdUri::parse(uri).map_err(nbd)?;
        let client = hoard_nbd::Client::connect(&parsed).map_err(nbd)?;
        Ok(Source {
            path: path.to_path_buf(),
            size: client.size(),
            reader: Reader::Nbd(Arc::new(Mutex::new(client))),
            attrs: parsed.new_bitmap.as_deref().map(bitmap_mark),
            bitmap: parsed.bitmap.clone(),
        })
    }

    /// The same source on a second handle, for a reader thread.
    pub fn try_clone(&self) -> Result<Source> {
        let reader = match &self.reader {
            Reader::File(f) => Reader::File(f.try_clone().map_err(Error::source_io(&self.path))?),
            Reader::Nbd(c) => Reader::Nbd(c.clone()),
        };
        Ok(Source {
            path: self.path.clone(),
            reader,
            size: self.size,
            attrs: self.attrs,
            bitmap: self.bitmap.clone(),
        })
    }

    /// Whether `len` bytes at `offset` are a hole of a sparse file, known
    /// without reading them (an export's zeros: [`Source::zero_chunks`]).
    /// Anything but a clear answer counts as data.
    pub fn is_hole(&self, offset: u64, len: u64) -> bool {
        match &self.reader {
            Reader::File(file) => {
                if self.attrs.is_none() {
                    return false;
                }
                match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(offset)) {
                    Ok(next_data) => next_data >= offset + len,
                    // ENXIO: no data at or after `offset`.
                    Err(e) => e == rustix::io::Errno::NXIO,
                }
            }
            // Exports: [`Source::zero_chunks`], once for the whole disk.
            Reader::Nbd(_) => false,
        }
    }

    /// `len` bytes at `offset`. A source that ends early is an error: the
    /// index must cover the size announced in CreateBackup.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let fail = |e: std::io::Error| Error::Source {
            path: self.path.clone(),
            source: std::io::Error::new(e.kind(), format!("at offset {offset}: {e}")),
        };
        match &self.reader {
            Reader::File(file) => {
                // Into spare capacity: no zero-filling of a buffer about
                // to be overwritten.
                let mut buf = Vec::with_capacity(len);
                let mut file = file;
                file.seek(SeekFrom::Start(offset)).map_err(fail)?;
                file.take(len as u64).read_to_end(&mut buf).map_err(fail)?;
                if buf.len() != len {
                    return Err(fail(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the source ended after {} bytes", offset + buf.len() as u64),
                    )));
                }
                Ok(buf)
            }
            Reader::Nbd(c) => c
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read(offset, len)
                .map_err(|e| fail(std::io::Error::other(e.to_string()))),
        }
    }

    /// Tells the kernel a file will be read in order.
    pub fn advise_sequential(&self) {
        if let Reader::File(f) = &self.reader {
            let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::Sequential);
        }
    }
}
