//! Extended attributes of one file system entry, read and written
//! without following symlinks. POSIX ACLs and file capabilities are
//! among them (`system.posix_acl_access`, `security.capability`).

use std::io;
use std::path::Path;

use hoard_archive::Xattr;
use hoard_archive::format::{MAX_XATTR_NAME_LEN, MAX_XATTR_VALUE_LEN};
use rustix::io::Errno;

/// The entry's extended attributes, sorted by name (so an unchanged
/// entry encodes to the same bytes). A file system without them has
/// none.
pub fn read(path: &Path) -> io::Result<Vec<Xattr>> {
    let names = match list(path) {
        Ok(n) => n,
        Err(e) if e == Errno::NOTSUP || e == Errno::NOSYS => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for name in names.split(|&c| c == 0).filter(|n| !n.is_empty()) {
        if name.len() > MAX_XATTR_NAME_LEN {
            continue;
        }
        let value = match get(path, name) {
            Ok(v) => v,
            // Removed between listing and reading.
            Err(e) if e == Errno::NODATA => continue,
            Err(e) => return Err(e.into()),
        };
        if value.len() <= MAX_XATTR_VALUE_LEN {
            out.push(Xattr {
                name: name.to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Sizes change between the query and the read when someone writes
/// meanwhile: asks for the size, reads, and retries a few times.
fn sized(
    query: impl Fn() -> Result<usize, Errno>,
    read: impl Fn(&mut [u8]) -> Result<usize, Errno>,
) -> Result<Vec<u8>, Errno> {
    for _ in 0..4 {
        let mut buf = vec![0u8; query()?];
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

fn list(path: &Path) -> Result<Vec<u8>, Errno> {
    sized(
        || rustix::fs::llistxattr_query(path),
        |buf| rustix::fs::llistxattr(path, buf),
    )
}

fn get(path: &Path, name: &[u8]) -> Result<Vec<u8>, Errno> {
    let name = os_name(name);
    sized(
        || rustix::fs::lgetxattr_query(path, name),
        |buf| rustix::fs::lgetxattr(path, name, buf),
    )
}

/// Sets `attrs` on an open file or directory.
pub fn set_fd(fd: impl std::os::fd::AsFd, attrs: &[Xattr]) -> Vec<(String, io::Error)> {
    let mut failed = Vec::new();
    for x in attrs {
        let name = os_name(&x.name);
        if let Err(e) = rustix::fs::fsetxattr(&fd, name, &x.value, rustix::fs::XattrFlags::empty())
        {
            failed.push((String::from_utf8_lossy(&x.name).into_owned(), e.into()));
        }
    }
    failed
}

/// Sets `attrs` on the entry at `path` itself (a symlink is not followed).
pub fn set_path(path: &Path, attrs: &[Xattr]) -> Vec<(String, io::Error)> {
    let mut failed = Vec::new();
    for x in attrs {
        let name = os_name(&x.name);
        if let Err(e) = rustix::fs::lsetxattr(path, name, &x.value, rustix::fs::XattrFlags::empty())
        {
            failed.push((String::from_utf8_lossy(&x.name).into_owned(), e.into()));
        }
    }
    failed
}

fn os_name(name: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(name)
}
