//! Byte layouts of the tree archive, table by table as in
//! `docs/format.md` ("File-tree archives"). Pure encode and decode over
//! byte slices; the decoders take untrusted input (fuzzed by
//! `fuzz/archive_table`) and check every length before using it.

use crate::entry::{Entry, Kind, Timestamp, Xattr};
use crate::error::{ArchiveError, Result};

/// First bytes of a metadata stream.
pub const META_MAGIC: [u8; 8] = *b"hoardAM1";
/// Flags after the meta magic; none are defined.
pub const META_HEADER_SIZE: usize = 16;
/// First bytes of a directory table.
pub const TABLE_MAGIC: [u8; 8] = *b"hoardDT1";
pub const TABLE_HEADER_SIZE: usize = 16;
/// Last bytes of a metadata stream.
pub const TRAILER_MAGIC: [u8; 8] = *b"hoardAT1";
pub const TRAILER_SIZE: usize = 16;
/// First bytes of every payload in the data stream.
pub const PAYLOAD_MAGIC: [u8; 8] = *b"hoardPY1";
pub const PAYLOAD_HEADER_SIZE: usize = 16;

/// Fixed part of an entry, before its name.
pub const ENTRY_FIXED_SIZE: usize = 76;
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target or hard-link path (Linux's PATH_MAX).
pub const MAX_TARGET_LEN: usize = 4096;
pub const MAX_XATTR_NAME_LEN: usize = 255;
/// Linux's limit for one extended attribute value.
pub const MAX_XATTR_VALUE_LEN: usize = 64 << 10;
/// Directory nesting a restore follows at most (a deeper path would
/// exceed PATH_MAX even with one-byte names).
pub const MAX_DEPTH: usize = 2048;
/// Largest directory table: about ten million entries.
pub const MAX_TABLE_LEN: u64 = 1 << 30;
/// Extents of one sparse file's payload, at most.
pub const MAX_EXTENTS: u64 = 1 << 24;

const KIND_FILE: u8 = 1;
const KIND_DIR: u8 = 2;
const KIND_SYMLINK: u8 = 3;
const KIND_HARDLINK: u8 = 4;
const KIND_CHAR: u8 = 5;
const KIND_BLOCK: u8 = 6;
const KIND_FIFO: u8 = 7;
const KIND_SOCKET: u8 = 8;
const FLAG_SPARSE: u8 = 1;

pub fn meta_header() -> [u8; META_HEADER_SIZE] {
    let mut h = [0u8; META_HEADER_SIZE];
    h[..8].copy_from_slice(&META_MAGIC);
    h
}

pub fn check_meta_header(b: &[u8]) -> Result<()> {
    if b.len() < META_HEADER_SIZE || b[..8] != META_MAGIC {
        return Err(ArchiveError::Malformed(
            "the metadata stream does not start with hoardAM1".into(),
        ));
    }
    Ok(())
}

/// A payload's header: the magic and the length of what follows.
pub fn payload_header(len: u64) -> [u8; PAYLOAD_HEADER_SIZE] {
    let mut h = [0u8; PAYLOAD_HEADER_SIZE];
    h[..8].copy_from_slice(&PAYLOAD_MAGIC);
    h[8..].copy_from_slice(&len.to_le_bytes());
    h
}

/// Checks a payload header read at the offset an entry names; returns
/// the length it announces.
pub fn decode_payload_header(b: &[u8]) -> Result<u64> {
    if b.len() != PAYLOAD_HEADER_SIZE || b[..8] != PAYLOAD_MAGIC {
        return Err(ArchiveError::Malformed(
            "no payload header (hoardPY1) where the entry says the file's data starts".into(),
        ));
    }
    Ok(u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")))
}

/// The trailer: the length of the root entry that precedes it.
pub fn trailer(root_entry_len: u64) -> [u8; TRAILER_SIZE] {
    let mut t = [0u8; TRAILER_SIZE];
    t[..8].copy_from_slice(&root_entry_len.to_le_bytes());
    t[8..].copy_from_slice(&TRAILER_MAGIC);
    t
}

pub fn decode_trailer(b: &[u8]) -> Result<u64> {
    if b.len() != TRAILER_SIZE || b[8..] != TRAILER_MAGIC {
        return Err(ArchiveError::Malformed(
            "the metadata stream does not end with the hoardAT1 trailer (truncated or not an archive)"
                .into(),
        ));
    }
    Ok(u64::from_le_bytes(b[..8].try_into().expect("8 bytes")))
}

/// A sparse file's extent: `len` bytes of data at `offset` in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// The extent map that starts a sparse payload.
pub fn encode_extents(extents: &[Extent], out: &mut Vec<u8>) {
    out.extend_from_slice(&(extents.len() as u64).to_le_bytes());
    for e in extents {
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
}

/// Bytes of the extent map for `count` extents.
pub fn extent_map_len(count: u64) -> u64 {
    8 + 16 * count
}

/// Checks a sparse payload's extent map against the file's size: extents
/// in order, not overlapping, within the file, and adding up to the data
/// that follows (`payload_len` minus the map).
pub fn check_extents(extents: &[Extent], size: u64, payload_len: u64) -> Result<()> {
    let mut end = 0u64;
    let mut data = 0u64;
    for e in extents {
        let e_end = e.offset.checked_add(e.len);
        match e_end {
            Some(x) if e.offset >= end && x <= size && e.len > 0 => end = x,
            _ => {
                return Err(ArchiveError::Malformed(format!(
                    "sparse extent {}+{} is out of order or beyond the file's {size} bytes",
                    e.offset, e.len
                )));
            }
        }
        data += e.len;
    }
    if extent_map_len(extents.len() as u64) + data != payload_len {
        return Err(ArchiveError::Malformed(format!(
            "sparse payload of {payload_len} bytes does not match its extents ({data} bytes of data)"
        )));
    }
    Ok(())
}

/// Encodes one entry. The caller guarantees lengths within the limits
/// (the walker checks them; [`decode_table`] rejects anything else).
pub fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    let (kind, flags, r, r_len, extra): (u8, u8, u64, u64, Vec<u8>) = match &e.kind {
        Kind::File {
            payload,
            payload_len,
            sparse,
        } => (
            KIND_FILE,
            if *sparse { FLAG_SPARSE } else { 0 },
            *payload,
            *payload_len,
            Vec::new(),
        ),
        Kind::Dir { table, table_len } => (KIND_DIR, 0, *table, *table_len, Vec::new()),
        Kind::Symlink { target } => (KIND_SYMLINK, 0, 0, 0, target.clone()),
        Kind::Hardlink {
            target,
            payload,
            payload_len,
            sparse,
        } => {
            let mut x = Vec::with_capacity(2 + target.len());
            x.extend_from_slice(&(target.len() as u16).to_le_bytes());
            x.extend_from_slice(target);
            (
                KIND_HARDLINK,
                if *sparse { FLAG_SPARSE } else { 0 },
                *payload,
                *payload_len,
                x,
            )
        }
        Kind::CharDev { rdev } => (KIND_CHAR, 0, *rdev, 0, Vec::new()),
        Kind::BlockDev { rdev } => (KIND_BLOCK, 0, *rdev, 0, Vec::new()),
        Kind::Fifo => (KIND_FIFO, 0, 0, 0, Vec::new()),
        Kind::Socket => (KIND_SOCKET, 0, 0, 0, Vec::new()),
    };
    let xattr_len: usize = e
        .xattrs
        .iter()
        .map(|x| 6 + x.name.len() + x.value.len())
        .sum();
    let total = ENTRY_FIXED_SIZE + e.name.len() + extra.len() + xattr_len;
    out.reserve(total);
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
    out.extend_from_slice(&e.mode.to_le_bytes());
    out.extend_from_slice(&e.uid.to_le_bytes());
    out.extend_from_slice(&e.gid.to_le_bytes());
    out.extend_from_slice(&e.mtime.nsec.to_le_bytes());
    out.extend_from_slice(&e.mtime.sec.to_le_bytes());
    out.extend_from_slice(&e.ctime_ns.to_le_bytes());
    out.extend_from_slice(&e.inode.to_le_bytes());
    out.extend_from_slice(&e.size.to_le_bytes());
    out.extend_from_slice(&r.to_le_bytes());
    out.extend_from_slice(&r_len.to_le_bytes());
    out.extend_from_slice(&(xattr_len as u32).to_le_bytes());
    out.extend_from_slice(&e.name);
    out.extend_from_slice(&extra);
    for x in &e.xattrs {
        out.extend_from_slice(&(x.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&x.name);
        out.extend_from_slice(&(x.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&x.value);
    }
}

/// Encodes a directory table; `entries` must be sorted by name.
pub fn encode_table(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TABLE_HEADER_SIZE + entries.len() * 96);
    out.extend_from_slice(&TABLE_MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        encode_entry(e, &mut out);
    }
    out
}

/// A little-endian reader over untrusted bytes that never panics.
struct Cursor<'a> {
    b: &'a [u8],
    what: &'a str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.b.len() {
            return Err(ArchiveError::Malformed(format!(
                "{} ends early: {n} more bytes announced, {} present",
                self.what,
                self.b.len()
            )));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

fn malformed(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::Malformed(msg.into())
}

/// Checks one path component: what a restore may create in a directory.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == b"."
        || name == b".."
        || name.iter().any(|&c| c == b'/' || c == 0)
    {
        return Err(ArchiveError::BadName(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    Ok(())
}

/// Checks a hard link's target: a relative path of valid components.
pub fn check_link_path(path: &[u8]) -> Result<()> {
    if path.is_empty() || path.len() > MAX_TARGET_LEN || path[0] == b'/' {
        return Err(ArchiveError::BadName(
            String::from_utf8_lossy(path).into_owned(),
        ));
    }
    path.split(|&c| c == b'/').try_for_each(check_name)
}

/// Decodes one entry from the front of `c`. `root` allows the empty name
/// of the root entry.
fn decode_entry(c: &mut Cursor<'_>, root: bool) -> Result<Entry> {
    let total = c.u32()? as usize;
    if total < ENTRY_FIXED_SIZE {
        return Err(malformed(format!(
            "entry length {total} is below the fixed part"
        )));
    }
    let mut body = Cursor {
        b: c.take(total - 4)?,
        what: "an entry",
    };
    let kind = body.u8()?;
    let flags = body.u8()?;
    let name_len = body.u16()? as usize;
    let mode = body.u32()?;
    let uid = body.u32()?;
    let gid = body.u32()?;
    let nsec = body.u32()?;
    let sec = body.i64()?;
    let ctime_ns = body.i64()?;
    let inode = body.u64()?;
    let size = body.u64()?;
    let r = body.u64()?;
    let r_len = body.u64()?;
    let xattr_len = body.u32()? as usize;
    let name = body.take(name_len)?.to_vec();
    if root {
        if !name.is_empty() {
            return Err(malformed("the root entry has a name"));
        }
    } else {
        check_name(&name)?;
    }
    if nsec >= 1_000_000_000 || mode > 0o7777 || flags & !FLAG_SPARSE != 0 {
        return Err(malformed(format!(
            "entry {:?} has an invalid time, mode or flags",
            String::from_utf8_lossy(&name)
        )));
    }
    let sparse = flags & FLAG_SPARSE != 0;
    let kind = match kind {
        KIND_FILE => Kind::File {
            payload: r,
            payload_len: r_len,
            sparse,
        },
        KIND_DIR => Kind::Dir {
            table: r,
            table_len: r_len,
        },
        KIND_SYMLINK => {
            if size == 0 || size as usize > MAX_TARGET_LEN {
                return Err(malformed("symlink target length out of range"));
            }
            let target = body.take(size as usize)?.to_vec();
            if target.contains(&0) {
                return Err(malformed("symlink target holds a NUL byte"));
            }
            Kind::Symlink { target }
        }
        KIND_HARDLINK => {
            let len = body.u16()? as usize;
            let target = body.take(len)?.to_vec();
            check_link_path(&target)?;
            Kind::Hardlink {
                target,
                payload: r,
                payload_len: r_len,
                sparse,
            }
        }
        KIND_CHAR => Kind::CharDev { rdev: r },
        KIND_BLOCK => Kind::BlockDev { rdev: r },
        KIND_FIFO => Kind::Fifo,
        KIND_SOCKET => Kind::Socket,
        other => return Err(malformed(format!("unknown entry kind {other}"))),
    };
    if sparse && !matches!(kind, Kind::File { .. } | Kind::Hardlink { .. }) {
        return Err(malformed("sparse flag on an entry without data"));
    }
    if let Kind::File { payload_len, .. } | Kind::Hardlink { payload_len, .. } = &kind
        && !sparse
        && Some(*payload_len) != size.checked_add(PAYLOAD_HEADER_SIZE as u64)
    {
        return Err(malformed(format!(
            "file {:?} declares {size} bytes but a payload of {payload_len}",
            String::from_utf8_lossy(&name)
        )));
    }
    let mut xs = Cursor {
        b: body.take(xattr_len)?,
        what: "extended attributes",
    };
    let mut xattrs = Vec::new();
    while !xs.b.is_empty() {
        let n = xs.u16()? as usize;
        let xname = xs.take(n)?;
        let v = xs.u32()? as usize;
        if n == 0 || n > MAX_XATTR_NAME_LEN || xname.contains(&0) || v > MAX_XATTR_VALUE_LEN {
            return Err(malformed("extended attribute name or value out of range"));
        }
        let value = xs.take(v)?;
        xattrs.push(Xattr {
            name: xname.to_vec(),
            value: value.to_vec(),
        });
    }
    if !body.b.is_empty() {
        return Err(malformed(format!(
            "entry {:?} has {} bytes beyond its fields",
            String::from_utf8_lossy(&name),
            body.b.len()
        )));
    }
    Ok(Entry {
        name,
        kind,
        mode,
        uid,
        gid,
        mtime: Timestamp { sec, nsec },
        ctime_ns,
        inode,
        size,
        xattrs,
    })
}

/// Decodes the root entry (the bytes before the trailer).
pub fn decode_root(b: &[u8]) -> Result<Entry> {
    let mut c = Cursor {
        b,
        what: "the root entry",
    };
    let e = decode_entry(&mut c, true)?;
    if !c.b.is_empty() || !matches!(e.kind, Kind::Dir { .. }) {
        return Err(malformed("the root entry is not one directory entry"));
    }
    Ok(e)
}

/// Decodes a directory table located at `at` in the metadata stream.
/// Names must be strictly increasing (so a name never appears twice),
/// and every child table must lie wholly before this one, which makes the
/// tree finite and acyclic whatever the bytes say.
pub fn decode_table(b: &[u8], at: u64) -> Result<Vec<Entry>> {
    let mut c = Cursor {
        b,
        what: "a directory table",
    };
    if c.take(8)? != TABLE_MAGIC {
        return Err(malformed(format!(
            "no directory table (hoardDT1) at offset {at} of the metadata stream"
        )));
    }
    let count = c.u64()?;
    // Each entry takes at least its fixed part: a count larger than that
    // is a lie, caught before anything is allocated.
    if count > (c.b.len() / ENTRY_FIXED_SIZE) as u64 {
        return Err(malformed(format!(
            "directory table at {at} announces {count} entries in {} bytes",
            c.b.len()
        )));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let e = decode_entry(&mut c, false)?;
        if let Some(prev) = entries.last()
            && prev.name >= e.name
        {
            return Err(malformed(format!(
                "directory table at {at}: {:?} follows {:?} (names repeat or are out of order)",
                String::from_utf8_lossy(&e.name),
                String::from_utf8_lossy(&prev.name)
            )));
        }
        if let Kind::Dir { table, table_len } = e.kind {
            check_child_table(table, table_len, at)?;
        }
        entries.push(e);
    }
    if !c.b.is_empty() {
        return Err(malformed(format!(
            "directory table at {at} has {} bytes after its last entry",
            c.b.len()
        )));
    }
    Ok(entries)
}

/// A child table must end at or before its parent's start.
pub fn check_child_table(table: u64, table_len: u64, parent_at: u64) -> Result<()> {
    match table.checked_add(table_len) {
        Some(end)
            if end <= parent_at
                && table >= META_HEADER_SIZE as u64
                && (TABLE_HEADER_SIZE as u64..=MAX_TABLE_LEN).contains(&table_len) =>
        {
            Ok(())
        }
        _ => Err(malformed(format!(
            "directory table {table}+{table_len} does not lie before its parent at {parent_at}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(name: &str, kind: Kind) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 100,
            mtime: Timestamp {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            ctime_ns: 5,
            inode: 42,
            size: 0,
            xattrs: vec![Xattr {
                name: b"user.k".to_vec(),
                value: b"v".to_vec(),
            }],
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let mut f = sample(
            "a",
            Kind::File {
                payload: 0,
                payload_len: 26,
                sparse: false,
            },
        );
        f.size = 10;
        let mut l = sample(
            "b",
            Kind::Hardlink {
                target: b"x/a".to_vec(),
                payload: 0,
                payload_len: 26,
                sparse: false,
            },
        );
        l.size = 10;
        let mut s = sample(
            "c",
            Kind::Symlink {
                target: b"../t".to_vec(),
            },
        );
        s.size = 4;
        let entries = vec![
            f,
            l,
            s,
            sample("d", Kind::CharDev { rdev: 0x0103 }),
            sample("e", Kind::BlockDev { rdev: 7 }),
            sample("f", Kind::Fifo),
            sample("g", Kind::Socket),
            sample(
                "h",
                Kind::Dir {
                    table: 16,
                    table_len: 16,
                },
            ),
        ];
        let t = encode_table(&entries);
        assert_eq!(&t[..8], b"hoardDT1");
        assert_eq!(decode_table(&t, 1000).unwrap(), entries);
        // Truncated anywhere: an error, never a panic.
        for cut in 0..t.len() {
            assert!(decode_table(&t[..cut], 1000).is_err());
        }
    }

    #[test]
    fn hostile_tables_are_refused() {
        let dir = |n: &str| {
            sample(
                n,
                Kind::Dir {
                    table: 16,
                    table_len: 16,
                },
            )
        };
        for bad in ["..", ".", "a/b", ""] {
            let t = encode_table(&[dir(bad)]);
            assert!(matches!(
                decode_table(&t, 1000),
                Err(ArchiveError::BadName(_))
            ));
        }
        let t = encode_table(&[dir("a"), dir("a")]);
        assert!(decode_table(&t, 1000).is_err(), "duplicate names");
        let t = encode_table(&[dir("b"), dir("a")]);
        assert!(decode_table(&t, 1000).is_err(), "unsorted names");
        // A table that claims itself (or a later table) as a child.
        assert!(decode_table(&encode_table(&[dir("a")]), 20).is_err());
        let mut link = sample(
            "l",
            Kind::Hardlink {
                target: b"../etc/passwd".to_vec(),
                payload: 0,
                payload_len: 16,
                sparse: false,
            },
        );
        link.size = 0;
        assert!(decode_table(&encode_table(&[link]), 1000).is_err());
        // A count that lies.
        let mut t = encode_table(&[dir("a")]);
        t[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_table(&t, 1000).is_err());
        // A file whose payload length does not match its size.
        let mut f = sample(
            "f",
            Kind::File {
                payload: 0,
                payload_len: 100,
                sparse: false,
            },
        );
        f.size = 1;
        assert!(decode_table(&encode_table(&[f]), 1000).is_err());
    }

    #[test]
    fn trailer_and_payload_headers() {
        assert_eq!(decode_trailer(&trailer(77)).unwrap(), 77);
        assert!(decode_trailer(&[0u8; 16]).is_err());
        assert_eq!(decode_payload_header(&payload_header(9)).unwrap(), 9);
        assert!(decode_payload_header(&[1u8; 16]).is_err());
        let ex = [
            Extent { offset: 0, len: 4 },
            Extent {
                offset: 100,
                len: 4,
            },
        ];
        assert!(check_extents(&ex, 104, 8 + 32 + 8).is_ok());
        assert!(check_extents(&ex, 103, 8 + 32 + 8).is_err());
        assert!(check_extents(&ex, 104, 8 + 32 + 9).is_err());
        let overlapping = [ex[1], ex[0]];
        assert!(check_extents(&overlapping, 104, 8 + 32 + 8).is_err());
    }
}
