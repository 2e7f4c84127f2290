//! The rule that keeps a restore proportional to its archive: every
//! directory table and every payload is referenced once.
//!
//! The archive format lets an entry point anywhere before it, so a
//! hostile archive could reference one table from many directories, or
//! one payload from many files, and turn a few bytes of metadata into an
//! unbounded tree. A writer never does: it writes each directory's table
//! after its subtree's (post-order), and each file's payload in walk
//! order. So, walking in table order:
//!
//! - **Tables.** Each directory owns a region of the metadata stream that
//!   ends with its own table; its subdirectories' regions follow one
//!   another inside it. A subdirectory's table must lie at or after the
//!   end of the previous subdirectory's table (or the start of the
//!   parent's region, its *floor*): regions are disjoint, so no table is
//!   reached twice. The decoder already checks a table lies before its
//!   parent's.
//! - **Payloads.** A file's payload must start at or after the end of the
//!   previous file's: none is restored twice.
//! - **Hard links** are excepted by their own mechanism. Inside the
//!   restored subtree they become links. One whose target lies outside it
//!   (a partial restore) is restored as a copy once per payload, and
//!   later links to that payload link to the copy; copies may not overlap
//!   one another.
//!
//! Memory is the nesting depth, plus one record per outside target (their
//! paths bounded by `MAX_OUTSIDE_PATH_BYTES`).

use std::collections::BTreeMap;

use hoard_archive::format::META_HEADER_SIZE;
use hoard_archive::{Entry, Kind};

use crate::error::{Error, Result};

/// Where the first table of a walk may start.
pub(crate) const FIRST_FLOOR: u64 = META_HEADER_SIZE as u64;

/// What a walk has referenced so far.
#[derive(Debug, Default)]
pub(crate) struct Refs {
    /// End of the last file payload, in walk order.
    payload_end: u64,
    /// Copies made for hard links whose target is outside the restored
    /// subtree, by payload offset: payload end, archive path of the copy.
    outside: BTreeMap<u64, (u64, Vec<u8>)>,
    /// Bytes of the paths `outside` holds.
    outside_path_bytes: usize,
}

/// The paths of copies made for hard links out of the restored subtree
/// are kept to link the later ones to; a hostile archive could make them
/// long (2,048 levels of 255-byte names) and many. This bounds them: a
/// real tree reaches it with about half a million such links.
const MAX_OUTSIDE_PATH_BYTES: usize = 64 << 20;

/// What to do with a hard link whose target is outside the subtree.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outside {
    /// The first for its payload: restore a copy.
    Copy,
    /// Link to the copy already restored at this archive path.
    LinkTo(Vec<u8>),
}

fn hostile(rel: &[u8], why: String) -> Error {
    Error::Damaged(format!(
        "the archive is malformed: {}: {why}",
        String::from_utf8_lossy(rel)
    ))
}

impl Refs {
    /// The floor of each of `children`'s tables (for non-directories,
    /// unused), after checking that their tables follow one another from
    /// `floor` on. `rel` names the parent, for the error.
    pub fn child_floors(children: &[Entry], floor: u64, rel: &[u8]) -> Result<Vec<u64>> {
        let mut next = floor;
        let mut floors = Vec::with_capacity(children.len());
        for child in children {
            floors.push(next);
            if let Kind::Dir { table, table_len } = child.kind {
                if table < next {
                    return Err(hostile(
                        rel,
                        format!(
                            "the table of {:?} at {table} overlaps another directory's (a table is referenced once)",
                            String::from_utf8_lossy(&child.name)
                        ),
                    ));
                }
                // The decoder checked table + table_len does not overflow.
                next = table.saturating_add(table_len);
            }
        }
        Ok(floors)
    }

    /// A file's payload, `len` bytes at `at`, in walk order.
    pub fn file_payload(&mut self, rel: &[u8], at: u64, len: u64) -> Result<()> {
        if at < self.payload_end {
            return Err(hostile(
                rel,
                format!(
                    "its payload at {at} overlaps an earlier file's, which ends at {} (a payload is referenced once)",
                    self.payload_end
                ),
            ));
        }
        self.payload_end = at.saturating_add(len);
        Ok(())
    }

    /// A hard link at `rel` whose target lies outside the restored
    /// subtree, with the target's payload `len` bytes at `at`.
    pub fn outside_link(&mut self, rel: &[u8], at: u64, len: u64) -> Result<Outside> {
        let end = at.saturating_add(len);
        if let Some((seen_end, copy)) = self.outside.get(&at) {
            if *seen_end != end {
                return Err(hostile(
                    rel,
                    format!("its payload at {at} has another length than a link before it"),
                ));
            }
            return Ok(Outside::LinkTo(copy.clone()));
        }
        let before = self.outside.range(..at).next_back();
        let after = self.outside.range(at..).next();
        if before.is_some_and(|(_, (e, _))| *e > at) || after.is_some_and(|(s, _)| *s < end) {
            return Err(hostile(
                rel,
                format!("its payload at {at} overlaps another hard link's"),
            ));
        }
        self.outside_path_bytes += rel.len();
        if self.outside_path_bytes > MAX_OUTSIDE_PATH_BYTES {
            return Err(hostile(
                rel,
                format!(
                    "more than {} MiB of paths of hard links out of the restored subtree",
                    MAX_OUTSIDE_PATH_BYTES >> 20
                ),
            ));
        }
        self.outside.insert(at, (end, rel.to_vec()));
        Ok(Outside::Copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoard_archive::Timestamp;

    fn entry(name: &str, kind: Kind) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Timestamp { sec: 0, nsec: 0 },
            ctime_ns: 0,
            inode: 0,
            size: 0,
            xattrs: Vec::new(),
        }
    }

    fn dir(name: &str, table: u64, table_len: u64) -> Entry {
        entry(name, Kind::Dir { table, table_len })
    }

    #[test]
    fn sibling_tables_must_follow_one_another() {
        let file = entry(
            "f",
            Kind::File {
                payload: 0,
                payload_len: 16,
                sparse: false,
            },
        );
        let ok = [dir("a", 100, 50), file.clone(), dir("b", 150, 20)];
        assert_eq!(
            Refs::child_floors(&ok, 16, b"d").unwrap(),
            vec![16, 150, 150]
        );
        // b's subtree may lie between a's table and b's own.
        let ok = [dir("a", 100, 50), dir("b", 400, 20)];
        assert_eq!(Refs::child_floors(&ok, 16, b"d").unwrap(), vec![16, 150]);
        // The same table twice, or overlapping, or below the floor.
        for bad in [
            vec![dir("a", 100, 50), dir("b", 100, 50)],
            vec![dir("a", 100, 50), dir("b", 149, 20)],
            vec![dir("a", 10, 50)],
        ] {
            let e = Refs::child_floors(&bad, 16, b"d").unwrap_err();
            assert!(e.to_string().contains("referenced once"), "{e}");
            assert_eq!(e.exit_code(), 8);
        }
    }

    #[test]
    fn payloads_are_referenced_once() {
        let mut r = Refs::default();
        r.file_payload(b"a", 0, 100).unwrap();
        r.file_payload(b"b", 100, 16).unwrap();
        r.file_payload(b"c", 200, 16).unwrap();
        let e = r.file_payload(b"d", 200, 16).unwrap_err();
        assert!(e.to_string().contains("d: its payload at 200"), "{e}");
        let e = r.file_payload(b"e", 0, 16).unwrap_err();
        assert_eq!(e.exit_code(), 8);
    }

    #[test]
    fn outside_links_copy_once_and_never_overlap() {
        let mut r = Refs::default();
        assert_eq!(r.outside_link(b"x/1", 100, 50).unwrap(), Outside::Copy);
        assert_eq!(
            r.outside_link(b"x/2", 100, 50).unwrap(),
            Outside::LinkTo(b"x/1".to_vec())
        );
        assert_eq!(r.outside_link(b"x/3", 0, 100).unwrap(), Outside::Copy);
        assert_eq!(r.outside_link(b"x/4", 150, 10).unwrap(), Outside::Copy);
        for (at, len) in [(120, 10), (90, 20), (100, 49), (140, 20)] {
            assert!(r.outside_link(b"y", at, len).is_err(), "{at}+{len}");
        }
    }
}
