//! One entry of a directory table: a file, directory, link, device,
//! fifo or socket with its metadata.

/// A modification time, as `stat` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// An extended attribute, stored raw: POSIX ACLs (`system.posix_acl_*`)
/// and file capabilities (`security.capability`) are extended attributes
/// too, so they travel the same way `tar --xattrs --acls` and rsync carry
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file; its payload is `payload_len` bytes at `payload` in
    /// the data stream (header included).
    File {
        payload: u64,
        payload_len: u64,
        sparse: bool,
    },
    /// A directory; its table is `table_len` bytes at `table` in the
    /// metadata stream.
    Dir {
        table: u64,
        table_len: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A further name of a file met earlier in the walk: `target` is that
    /// file's path from the archive root. The payload is the target's, so
    /// a partial restore that lacks the target can still write the data.
    Hardlink {
        target: Vec<u8>,
        payload: u64,
        payload_len: u64,
        sparse: bool,
    },
    CharDev {
        rdev: u64,
    },
    BlockDev {
        rdev: u64,
    },
    Fifo,
    Socket,
}

impl Kind {
    /// The kind's name in listings (`hoard ls --output-format json`).
    pub fn name(&self) -> &'static str {
        match self {
            Kind::File { .. } => "file",
            Kind::Dir { .. } => "dir",
            Kind::Symlink { .. } => "symlink",
            Kind::Hardlink { .. } => "hardlink",
            Kind::CharDev { .. } => "chardev",
            Kind::BlockDev { .. } => "blockdev",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// One path component (empty only for the root).
    pub name: Vec<u8>,
    pub kind: Kind,
    /// Permission bits, setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// Change detection only (not restored): ctime in nanoseconds.
    pub ctime_ns: i64,
    /// Change detection only: the source's inode number.
    pub inode: u64,
    /// Files and hard links: content bytes; symlinks: target length;
    /// the root: the data stream's length; otherwise 0.
    pub size: u64,
    pub xattrs: Vec<Xattr>,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir { .. })
    }

    /// The payload this entry's content lives in, if it has one.
    pub fn payload(&self) -> Option<(u64, u64, bool)> {
        match self.kind {
            Kind::File {
                payload,
                payload_len,
                sparse,
            }
            | Kind::Hardlink {
                payload,
                payload_len,
                sparse,
                ..
            } => Some((payload, payload_len, sparse)),
            _ => None,
        }
    }

    /// `ls -l` style type and permission string, e.g. `drwxr-xr-x`.
    pub fn mode_string(&self) -> String {
        let t = match self.kind {
            Kind::File { .. } | Kind::Hardlink { .. } => '-',
            Kind::Dir { .. } => 'd',
            Kind::Symlink { .. } => 'l',
            Kind::CharDev { .. } => 'c',
            Kind::BlockDev { .. } => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
        };
        let m = self.mode;
        let bit = |mask: u32, c: char| if m & mask != 0 { c } else { '-' };
        let special = |x: u32, s: u32, lower: char, upper: char| match (m & x != 0, m & s != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        };
        [
            t,
            bit(0o400, 'r'),
            bit(0o200, 'w'),
            special(0o100, 0o4000, 's', 'S'),
            bit(0o040, 'r'),
            bit(0o020, 'w'),
            special(0o010, 0o2000, 's', 'S'),
            bit(0o004, 'r'),
            bit(0o002, 'w'),
            special(0o001, 0o1000, 't', 'T'),
        ]
        .iter()
        .collect()
    }
}
