//! The one place where the server decides whether a request may run
//! (docs/security.md). Roles and paths are [`hoard_auth`]'s; this module
//! looks up what they need on disk (a group's owner) and keeps the
//! known-chunks state of a connection.
//!
//! **Known chunks.** A connection that is not an admin may reference in
//! BackupData only chunks it uploaded on this connection or that an index
//! it was allowed to read listed (the group's previous snapshot, for an
//! incremental backup), and may download only the latter. So a token
//! cannot learn whether the datastore holds a chunk it does not own by
//! referencing its digest, nor read another group's data by digest.
//! An encrypted upload proves nothing about its content (its digest is
//! keyed), but it can only ever take the name of another encrypted chunk,
//! never an unencrypted one's: what it can reach is ciphertext.

use std::collections::HashSet;

use hoard_auth::{Denied, GroupOwner, Principal};
use hoard_protocol::Message;
use hoard_types::{BackupGroup, Digest, SnapshotPath};
use tokio::task::block_in_place;

use crate::connection::Connection;

/// What a connection may reference and download.
pub(crate) struct KnownChunks {
    /// Admins see every chunk: nothing is tracked.
    unrestricted: bool,
    /// Listed by indexes this connection read.
    readable: HashSet<Digest>,
    /// Uploaded on this connection.
    uploaded: HashSet<Digest>,
    cap: usize,
}

impl KnownChunks {
    pub fn new(principal: &Principal, cap: usize) -> KnownChunks {
        KnownChunks {
            unrestricted: principal.sees_every_chunk(),
            readable: HashSet::new(),
            uploaded: HashSet::new(),
            cap,
        }
    }

    fn room(&self, more: usize) -> Result<(), String> {
        if self.readable.len() + self.uploaded.len() + more > self.cap {
            return Err(format!(
                "this connection has learned {} chunks, the most it may; use a new connection",
                self.cap
            ));
        }
        Ok(())
    }

    /// Chunks listed by an index the connection was allowed to read.
    pub fn learn(&mut self, digests: &[u8]) -> Result<(), String> {
        if self.unrestricted {
            return Ok(());
        }
        self.room(digests.len() / 32)?;
        self.readable
            .extend(digests.chunks_exact(32).map(Digest::from_slice));
        Ok(())
    }

    /// Like [`KnownChunks::learn`], from 40-byte (end offset, digest)
    /// entries.
    pub fn learn_entries(&mut self, entries: &[u8]) -> Result<(), String> {
        if self.unrestricted {
            return Ok(());
        }
        self.room(entries.len() / 40)?;
        self.readable.extend(
            entries
                .chunks_exact(40)
                .map(|e| Digest::from_slice(&e[8..])),
        );
        Ok(())
    }

    /// A chunk uploaded on this connection.
    pub fn uploaded(&mut self, digest: Digest) -> Result<(), String> {
        if self.unrestricted || self.uploaded.contains(&digest) {
            return Ok(());
        }
        self.room(1)?;
        self.uploaded.insert(digest);
        Ok(())
    }

    /// The first of `digests` the connection may not reference (none,
    /// at once, for an admin).
    pub fn first_unreferenceable(&self, digests: &[Digest]) -> Option<Digest> {
        if self.unrestricted {
            return None;
        }
        digests.iter().find(|d| !self.may_reference(d)).copied()
    }

    pub fn may_reference(&self, d: &Digest) -> bool {
        self.unrestricted || self.uploaded.contains(d) || self.readable.contains(d)
    }

    pub fn may_download(&self, d: &Digest) -> bool {
        self.unrestricted || self.readable.contains(d)
    }
}

/// The group an index path (`TYPE/ID/TIME/NAME`) belongs to.
pub(crate) fn group_of_index(path: &str) -> Option<BackupGroup> {
    let (snap, _) = path.rsplit_once('/')?;
    snap.parse::<SnapshotPath>().ok().map(|s| s.group)
}

impl Connection {
    /// Whether the session's principal may run `msg` (packets that only
    /// act on a stream the connection opened itself always may). May
    /// record the principal as the owner of a group it creates.
    pub(crate) fn authorize(&mut self, msg: &Message) -> Result<(), Denied> {
        let p = self.principal.clone();
        match msg {
            Message::UploadChunk { .. } => p.may_upload(),
            Message::CreateBackup(req) => {
                self.claim = None;
                let snap = SnapshotPath {
                    group: BackupGroup {
                        ty: req.backup_type,
                        id: req.id.clone(),
                    },
                    time: req.time,
                };
                if self.snapshots.contains_key(&snap) {
                    return Ok(());
                }
                let owner = self.owner_of(&snap.group)?;
                // A new group becomes the principal's once the request
                // has passed its other checks (the handler claims it).
                self.claim = p
                    .may_create(&snap.group, &owner)?
                    .then(|| snap.group.clone());
                Ok(())
            }
            // BackupData's digests are checked against the known chunks by
            // its handler, once the uploads in flight that they may name
            // have landed (`Connection::unknown_reference`): checking here
            // too would only do it twice.
            Message::GetHashList { .. } | Message::GetIndex { .. } if p.sees_every_chunk() => {
                Ok(())
            }
            Message::GetHashList { path } | Message::GetIndex { path } => {
                match group_of_index(path) {
                    Some(group) => {
                        let owner = self.owner_of(&group)?;
                        p.may_read(&group, &owner)
                    }
                    // Not an index path: the request fails as not found.
                    None => Ok(()),
                }
            }
            Message::DownloadChunks(list) => {
                let known = self.known.lock().expect("lock poisoned");
                match list.iter().find(|d| !known.may_download(d)) {
                    None => Ok(()),
                    Some(d) => Err(Denied(format!(
                        "{} may not download chunk {d}: it is in no index this connection has read",
                        p.name
                    ))),
                }
            }
            _ => Ok(()),
        }
    }

    /// The first of `digests` this connection may not reference, now that
    /// no upload of them is in flight.
    pub(crate) fn unknown_reference(&self, digests: &[Digest]) -> Option<Digest> {
        self.known
            .lock()
            .expect("lock poisoned")
            .first_unreferenceable(digests)
    }

    /// The group's owner as found on disk.
    pub(crate) fn owner_of(&self, group: &BackupGroup) -> Result<GroupOwner, Denied> {
        let found = block_in_place(|| -> hoard_datastore::Result<GroupOwner> {
            Ok(match self.ds.group_owner(group)? {
                Some(o) => GroupOwner::Owned(o),
                None if self.ds.group_exists(group)? => GroupOwner::Unowned,
                None => GroupOwner::New,
            })
        });
        found.map_err(|e| Denied(format!("cannot tell who owns {group}: {e}")))
    }
}

/// Group name to its owner (if it has one).
pub(crate) type Owners = std::collections::BTreeMap<String, Option<String>>;

/// The snapshots of the groups `principal` may list and `wanted` asks
/// for, with each group's owner: the one listing rule of the packet
/// protocol's ListSnapshots and the HTTP API. Groups are chosen before
/// any manifest is read, so a listing costs what the caller may see, not
/// what the datastore holds; a group whose owner cannot be read, or a
/// snapshot whose manifest cannot, is skipped and logged.
pub(crate) fn visible_snapshots(
    ds: &hoard_datastore::Datastore,
    principal: &Principal,
    wanted: impl Fn(&BackupGroup) -> bool,
) -> hoard_datastore::Result<(Vec<hoard_datastore::SnapshotInfo>, Owners)> {
    let mut owners = Owners::new();
    let keep = |group: &BackupGroup| {
        if !wanted(group) {
            return false;
        }
        let owner = match ds.group_owner(group) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("listing snapshots: skipping {group}: {e}");
                return false;
            }
        };
        let as_owner = owner.clone().map_or(GroupOwner::Unowned, GroupOwner::Owned);
        let may = principal.may_list(group, &as_owner);
        if may {
            owners.insert(group.to_string(), owner);
        }
        may
    };
    let list = ds.list_snapshots_where(keep, |path, e| {
        tracing::warn!("listing snapshots: skipping {path}: {e}");
    })?;
    Ok((list, owners))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoard_auth::Role;

    #[test]
    fn known_chunks_follow_the_rule() {
        let backup = Principal::new("b", Role::Backup, vec![]);
        let mut k = KnownChunks::new(&backup, 3);
        let (a, b, c) = (Digest([1; 32]), Digest([2; 32]), Digest([3; 32]));
        assert!(!k.may_reference(&a) && !k.may_download(&a));
        k.uploaded(a).unwrap();
        assert!(k.may_reference(&a));
        assert!(!k.may_download(&a), "uploading is not reading");
        let mut listed = Vec::new();
        listed.extend_from_slice(b.as_bytes());
        listed.extend_from_slice(c.as_bytes());
        k.learn(&listed).unwrap();
        assert!(k.may_reference(&b) && k.may_download(&c));
        assert_eq!(
            k.first_unreferenceable(&[a, b, Digest([9; 32])]),
            Some(Digest([9; 32]))
        );
        assert!(k.uploaded(Digest([4; 32])).is_err(), "capped");
        let admin = Principal::new("a", Role::Admin, vec![]);
        let k = KnownChunks::new(&admin, 0);
        assert!(k.may_reference(&a) && k.may_download(&a));
    }

    #[test]
    fn index_paths_name_their_group() {
        assert_eq!(
            group_of_index("vm/100/2019-04-23T12:23:36Z/d.img.fidx"),
            Some("vm/100".parse().unwrap())
        );
        assert_eq!(group_of_index("../etc/passwd"), None);
        assert_eq!(group_of_index("vm/100"), None);
    }
}
