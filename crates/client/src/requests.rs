//! The read-only requests: a finished file's digests (GetHashList) and
//! the snapshot list (extension ListSnapshots), and the choices built on
//! them: which snapshot is "latest", which is an incremental base.

use hoard_datastore::{FileKind, Manifest, ManifestFile};
use hoard_protocol::{Message, SnapshotFilter};
use hoard_types::{BackupGroup, Digest, SnapshotPath};
use sha2::{Digest as _, Sha256};

use hoard_codec::Key;

use crate::conn::{Connection, unexpected};
use crate::error::{Error, Result};
use crate::seal::SealState;

/// Packets of a hash list or listing that may queue before the reader
/// waits for us; each is at most one packet (16 MiB) of digests.
const LIST_DEPTH: usize = 4;

/// The digests of finished fixed index `file` (at `index_path`), in
/// index order, checked against its manifest entry's checksum; more than
/// its chunk count is refused as it arrives.
pub async fn hash_list(
    conn: &Connection,
    index_path: &str,
    file: &ManifestFile,
) -> Result<Vec<Digest>> {
    let _turn = conn.hash_list_turn.lock().await;
    let mut stream = conn.open_stream(LIST_DEPTH)?;
    stream
        .send(Message::GetHashList {
            path: index_path.to_string(),
        })
        .await?;
    let what = format!("the hash list of {index_path}");
    let mut out = Vec::new();
    let mut hasher = Sha256::new();
    loop {
        match stream.recv(&what).await? {
            Message::HashListPart(list) if list.is_empty() => break,
            Message::HashListPart(list) => {
                if (out.len() + list.len()) as u64 > file.chunk_count {
                    return Err(Error::Damaged(format!(
                        "{index_path} lists more than the {} chunks its manifest entry says",
                        file.chunk_count
                    )));
                }
                hasher.update(list.as_bytes());
                out.extend(list.iter());
            }
            other => return Err(unexpected(&what, &other)),
        }
    }
    stream.finish();
    crate::seal::index_mismatch(index_path, &file.index_csum, &hasher.finalize().into())?;
    Ok(out)
}

/// A snapshot as listed by the server.
#[derive(Debug, Clone)]
pub struct Listed {
    pub path: SnapshotPath,
    /// With [`SealState::Ours`], its files are the sealed ones.
    pub manifest: Manifest,
    /// How the snapshot's seal relates to the client's key.
    pub seal: SealState,
}

impl Listed {
    /// Whether a backup with (`keyed`) or without a key may build on this
    /// snapshot: finished, not known to be damaged, and encrypted with
    /// the same key (its seal verified) or, for a plain backup, not
    /// encrypted at all.
    pub fn usable_as_base(&self, keyed: bool) -> bool {
        self.manifest.usable_as_base()
            && match self.seal {
                SealState::Ours => keyed,
                // An encrypting client's snapshot without its seal is no
                // one's base.
                SealState::Plain => !keyed && !self.manifest.encrypted,
                SealState::Foreign { .. } | SealState::Broken { .. } => false,
            }
    }
}

/// One SnapshotEntry payload: a manifest as JSON, from the server (so
/// untrusted: fuzzed by `fuzz/snapshot_entry`), its seal checked against
/// `key`.
pub fn parse_entry(json: &[u8], key: Option<&Key>) -> Result<Listed> {
    let mut manifest: Manifest = serde_json::from_slice(json)
        .map_err(|e| Error::Protocol(format!("unreadable snapshot entry: {e}")))?;
    let path = manifest.snapshot.parse().map_err(|e| {
        Error::Protocol(format!("snapshot entry names {:?}: {e}", manifest.snapshot))
    })?;
    let seal = crate::seal::check(&path, &mut manifest, key);
    Ok(Listed {
        path,
        manifest,
        seal,
    })
}

/// Every snapshot matching `filter`, oldest first within each group.
pub async fn list_snapshots(conn: &Connection, filter: SnapshotFilter) -> Result<Vec<Listed>> {
    let mut stream = conn.open_stream(LIST_DEPTH)?;
    stream.send(Message::ListSnapshots(filter)).await?;
    let what = "the snapshot list";
    let mut out = Vec::new();
    loop {
        match stream.recv(what).await? {
            Message::SnapshotEntry(json) if json.is_empty() => break,
            Message::SnapshotEntry(json) => {
                out.push(parse_entry(&json, conn.codec().key().map(|k| &**k))?);
            }
            other => return Err(unexpected(what, &other)),
        }
    }
    stream.finish();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The names a user may give for a stored file: its stored name
/// (`disk.img.fidx`) or the name it was backed up under (`disk.img`);
/// for a tree archive its name (`root`), which finds its metadata
/// stream (`root.hmeta.didx`).
pub fn find_file<'a>(manifest: &'a Manifest, name: &str) -> Option<&'a ManifestFile> {
    manifest.file(name).or_else(|| {
        [FileKind::Fixed, FileKind::Dynamic]
            .iter()
            .find_map(|k| manifest.file(&format!("{name}{}", k.suffix())))
            .or_else(|| manifest.file(&format!("{name}{}.didx", crate::tree_backup::META_SUFFIX)))
    })
}

/// The name a file was backed up under (its stored name without suffix).
pub fn display_name(file: &ManifestFile) -> &str {
    file.name
        .strip_suffix(file.kind.suffix())
        .unwrap_or(&file.name)
}

/// The newest snapshot of `group` that is complete and holds `name`;
/// with a key (`keyed`), the newest sealed with it, so that a server
/// cannot make "latest" an unencrypted or foreign snapshot.
pub fn latest<'a>(
    list: &'a [Listed],
    group: &BackupGroup,
    name: &str,
    keyed: bool,
) -> Option<&'a Listed> {
    list.iter().rev().find(|s| {
        s.path.group == *group
            && s.manifest.state == hoard_datastore::SnapshotState::Complete
            && (!keyed || s.seal == SealState::Ours)
            && find_file(&s.manifest, name).is_some()
    })
}

/// The incremental base for file `stored_name` of a new snapshot of
/// `group`: the newest snapshot that is complete, not known to be
/// damaged, older than `before`, holds that file, and is encrypted with
/// the backup's key (`keyed`) or not at all (see [`Listed::usable_as_base`]).
pub fn find_base<'a>(
    list: &'a [Listed],
    group: &BackupGroup,
    before: &SnapshotPath,
    stored_name: &str,
    keyed: bool,
) -> Option<(&'a Listed, &'a ManifestFile)> {
    list.iter()
        .rev()
        .filter(|s| s.path.group == *group && s.path.time < before.time)
        .filter(|s| s.usable_as_base(keyed))
        .find_map(|s| s.manifest.file(stored_name).map(|f| (s, f)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoard_datastore::{SnapshotState, Verification, VerifyState};

    fn listed(path: &str, state: SnapshotState, failed: bool, files: &[&str]) -> Listed {
        let mut manifest = Manifest::new(path.to_string());
        manifest.state = state;
        manifest.verification = failed.then_some(Verification {
            state: VerifyState::Failed,
            time: 0,
        });
        manifest.files = files
            .iter()
            .map(|n| ManifestFile {
                name: format!("{n}.fidx"),
                kind: FileKind::Fixed,
                raw: true,
                file_size: 1,
                chunk_size: Some(4096),
                chunk_count: 1,
                index_csum: String::new(),
                index_uuid: String::new(),
                source: None,
            })
            .collect();
        Listed {
            path: path.parse().unwrap(),
            manifest,
            seal: SealState::Plain,
        }
    }

    #[test]
    fn base_is_the_newest_usable_snapshot_with_the_file() {
        let list = vec![
            listed(
                "vm/1/2026-01-01T00:00:00Z",
                SnapshotState::Complete,
                false,
                &["a", "b"],
            ),
            listed(
                "vm/1/2026-01-02T00:00:00Z",
                SnapshotState::Complete,
                false,
                &["a"],
            ),
            listed(
                "vm/1/2026-01-03T00:00:00Z",
                SnapshotState::Complete,
                true,
                &["a", "b"],
            ),
            listed(
                "vm/1/2026-01-04T00:00:00Z",
                SnapshotState::Incomplete,
                false,
                &["a", "b"],
            ),
            listed(
                "vm/1/2026-01-05T00:00:00Z",
                SnapshotState::Writing,
                false,
                &["a", "b"],
            ),
            listed(
                "vm/2/2026-01-06T00:00:00Z",
                SnapshotState::Complete,
                false,
                &["a", "b"],
            ),
        ];
        let group = list[0].path.group.clone();
        let now: SnapshotPath = "vm/1/2026-02-01T00:00:00Z".parse().unwrap();
        let (s, _) = find_base(&list, &group, &now, "a.fidx", false).unwrap();
        assert_eq!(s.path.to_string(), "vm/1/2026-01-02T00:00:00Z");
        let (s, _) = find_base(&list, &group, &now, "b.fidx", false).unwrap();
        assert_eq!(s.path.to_string(), "vm/1/2026-01-01T00:00:00Z");
        assert!(find_base(&list, &group, &now, "c.fidx", false).is_none());
        let early: SnapshotPath = "vm/1/2026-01-01T00:00:00Z".parse().unwrap();
        assert!(find_base(&list, &group, &early, "a.fidx", false).is_none());

        let l = latest(&list, &group, "a", false).unwrap();
        assert!(latest(&list, &group, "a", true).is_none());
        assert_eq!(l.path.to_string(), "vm/1/2026-01-03T00:00:00Z");
        assert_eq!(display_name(find_file(&l.manifest, "a").unwrap()), "a");
    }
}
