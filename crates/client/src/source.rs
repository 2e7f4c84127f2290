//! Opening what an image backup reads: a regular file or a block device.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use hoard_types::SourceAttributes;

use crate::error::{Error, Result};

pub struct Source {
    pub path: PathBuf,
    pub file: File,
    pub size: u64,
    /// Regular files only: what the next backup compares to skip reading.
    pub attrs: Option<SourceAttributes>,
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

impl Source {
    pub fn open(path: &Path) -> Result<Source> {
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
            file,
            size,
            attrs,
        })
    }

    /// The same source on a second file handle, for a reader thread.
    pub fn try_clone(&self) -> Result<Source> {
        Ok(Source {
            path: self.path.clone(),
            file: self
                .file
                .try_clone()
                .map_err(Error::source_io(&self.path))?,
            size: self.size,
            attrs: self.attrs,
        })
    }

    /// Whether `len` bytes at `offset` are a hole of a sparse file, known
    /// without reading them. Anything but a clear answer counts as data.
    pub fn is_hole(&self, offset: u64, len: u64) -> bool {
        if self.attrs.is_none() {
            return false;
        }
        match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(offset)) {
            Ok(next_data) => next_data >= offset + len,
            // ENXIO: no data at or after `offset`.
            Err(e) => e == rustix::io::Errno::NXIO,
        }
    }
}
