//! A stored dynamic-index file read at random offsets: its chunk map
//! (extension GetIndex) and the chunks covering a range, fetched on
//! demand, checked against their digests and kept in a small cache.
//! Reading a directory of an archive thus downloads only the chunks
//! holding its table.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hoard_archive::{ArchiveError, RangeSource};
use hoard_codec::{ChunkCodec, Compression, Kind};
use hoard_datastore::ManifestFile;
use hoard_protocol::consts::MAX_DIGESTS_PER_PACKET;
use hoard_protocol::{DigestList, Message};
use hoard_types::Digest;
use sha2::{Digest as _, Sha256};

use crate::conn::{Connection, unexpected};
use crate::error::{Error, Result};
use crate::requests::Listed;
use crate::seal::SealState;

/// Packets of an index listing or download that may queue.
const LIST_DEPTH: usize = 4;
/// Bytes of chunks a [`RemoteFile`] keeps for reuse.
const CACHE_BYTES: usize = 32 << 20;

/// A stored file's chunks: where each ends, and its digest.
#[derive(Debug, Clone, Default)]
pub struct ChunkMap {
    pub ends: Vec<u64>,
    pub digests: Vec<Digest>,
}

impl ChunkMap {
    pub fn size(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    pub fn start(&self, i: usize) -> u64 {
        if i == 0 { 0 } else { self.ends[i - 1] }
    }

    /// The chunk holding byte `offset` (which must be below the size).
    pub fn chunk_at(&self, offset: u64) -> usize {
        self.ends.partition_point(|&end| end <= offset)
    }

    /// The chunks covering `offset .. offset + len` (len > 0).
    pub fn covering(&self, offset: u64, len: u64) -> std::ops::RangeInclusive<usize> {
        self.chunk_at(offset)..=self.chunk_at(offset + len - 1)
    }
}

/// The chunk map of finished dynamic index `file` (at `path`, extension
/// GetIndex), checked against its manifest entry's checksum; more
/// entries than its chunk count are refused as they arrive. Ends that do
/// not strictly increase are a protocol error.
pub async fn chunk_map(conn: &Connection, path: &str, file: &ManifestFile) -> Result<ChunkMap> {
    let _turn = conn.hash_list_turn.lock().await;
    let mut stream = conn.open_stream(LIST_DEPTH)?;
    stream
        .send(Message::GetIndex {
            path: path.to_string(),
        })
        .await?;
    let what = format!("the index of {path}");
    let mut map = ChunkMap::default();
    let mut hasher = Sha256::new();
    loop {
        match stream.recv(&what).await? {
            Message::IndexPart(list) if list.is_empty() => break,
            Message::IndexPart(list) => {
                if (map.ends.len() + list.len()) as u64 > file.chunk_count {
                    return Err(Error::Damaged(format!(
                        "{path} lists more than the {} chunks its manifest entry says",
                        file.chunk_count
                    )));
                }
                // The wire entries are the index's: end offset, digest.
                hasher.update(list.as_bytes());
                for e in list.iter() {
                    if e.offset <= map.size() {
                        return Err(Error::Protocol(format!(
                            "the index of {path} has chunk ends out of order"
                        )));
                    }
                    map.ends.push(e.offset);
                    map.digests.push(e.digest);
                }
            }
            other => return Err(unexpected(&what, &other)),
        }
    }
    stream.finish();
    crate::seal::index_mismatch(path, &file.index_csum, &hasher.finalize().into())?;
    Ok(map)
}

/// Turns downloaded chunks into checked plain data, as the snapshot they
/// belong to calls for: decoded (decompressed, decrypted with the key
/// the seal names) when the session downloads chunks as stored, and
/// always checked against the digest.
#[derive(Clone)]
pub struct ChunkDecoder {
    codec: Arc<ChunkCodec>,
    encoded: bool,
}

impl ChunkDecoder {
    /// The decoder for `snap`'s chunks: the client's key for a snapshot
    /// sealed with it, none for an unsealed one. A snapshot sealed with
    /// another key, or whose seal fails, cannot be read.
    pub fn for_snapshot(conn: &Connection, snap: &Listed) -> Result<ChunkDecoder> {
        let codec = match &snap.seal {
            // Written by an encrypting client, but not sealed: cut off
            // before its seal, or altered.
            SealState::Plain if snap.manifest.encrypted => {
                return Err(Error::Damaged(format!(
                    "snapshot {} was written by an encrypting client but has no seal: it was cut off before it was sealed, or its manifest was altered",
                    snap.path
                )));
            }
            // With a key, only snapshots sealed with it are read: a server
            // must not be able to hand over unencrypted data in their place.
            SealState::Plain if conn.codec().key().is_some() => {
                return Err(Error::Key(format!(
                    "snapshot {} is not encrypted (it has no seal); with a key, hoard reads only snapshots sealed with it, so that a server cannot substitute unencrypted data. Read it without --key (unset HOARD_KEY)",
                    snap.path
                )));
            }
            SealState::Plain => Arc::new(ChunkCodec::new(Compression::None, None)),
            SealState::Ours => conn.codec().clone(),
            SealState::Foreign { key } => {
                let have = match conn.codec().key() {
                    Some(k) => format!("the key given is {}", k.fingerprint()),
                    None => "no key was given (--key or HOARD_KEY)".into(),
                };
                return Err(Error::Key(format!(
                    "snapshot {} is encrypted with key {key} (or its seal was altered); {have}",
                    snap.path
                )));
            }
            SealState::Broken { problem } => {
                return Err(Error::Damaged(format!(
                    "the seal of snapshot {} does not hold: {problem}",
                    snap.path
                )));
            }
        };
        if codec.key().is_some() && !conn.encoded() {
            return Err(Error::Usage(format!(
                "snapshot {} is encrypted, and the server does not send chunks as stored (an older hoard)",
                snap.path
            )));
        }
        Ok(ChunkDecoder {
            codec,
            encoded: conn.encoded(),
        })
    }

    pub fn codec(&self) -> &ChunkCodec {
        &self.codec
    }

    /// The decoder for the client's own chunks (a backup's base).
    pub fn own(conn: &Connection) -> ChunkDecoder {
        ChunkDecoder {
            codec: conn.codec().clone(),
            encoded: conn.encoded(),
        }
    }

    /// The plain data of a downloaded chunk of `kind` that must hash to
    /// `digest` and hold `size` bytes. Blocking: decodes and hashes.
    pub fn open(
        &self,
        kind: Kind,
        digest: &Digest,
        size: u64,
        data: Bytes,
        what: &str,
    ) -> Result<Bytes> {
        let plain = if self.encoded {
            Bytes::from(
                self.codec
                    .decode(kind, digest, &data)
                    .map_err(|e| decode_error(e, digest, what))?,
            )
        } else {
            check_chunk(&data, digest, what)?;
            data
        };
        if plain.len() as u64 != size {
            return Err(Error::Damaged(format!(
                "chunk {digest} of {what} has {} bytes, the index says {size}",
                plain.len()
            )));
        }
        Ok(plain)
    }
}

/// A chunk that does not decode, in the user's terms: an encrypted chunk
/// in a snapshot without a seal needs a key (exit 11); anything else is
/// damage (exit 8), also a chunk of another key in a snapshot the
/// client's key sealed: the seal names the key every chunk must have.
fn decode_error(e: hoard_codec::Error, digest: &Digest, what: &str) -> Error {
    use hoard_codec::Error as E;
    match e {
        E::NoKey { .. } => Error::Key(format!(
            "{what}: {e} (and the snapshot has no seal: it was not finished, or altered)"
        )),
        e => Error::Damaged(format!("chunk {digest} of {what}: {e}")),
    }
}

/// Downloads `digests` in one request per 524,287; `deliver` gets them
/// in order, as they arrived (the caller decodes and checks them with a
/// [`ChunkDecoder`]).
pub async fn download<F, Fut>(
    conn: &Connection,
    what: &str,
    wanted: &[(Digest, u64)],
    mut deliver: F,
) -> Result<()>
where
    F: FnMut(Digest, u64, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for batch in wanted.chunks(MAX_DIGESTS_PER_PACKET) {
        let mut stream = conn.open_stream(LIST_DEPTH)?;
        let list = DigestList::from_digests(batch.iter().map(|(d, _)| d));
        stream.send(Message::DownloadChunks(list)).await?;
        for &(want, size) in batch {
            let data = match stream.recv(what).await? {
                Message::Chunk { digest, data, .. } if digest == want => data,
                other => return Err(unexpected(what, &other)),
            };
            deliver(want, size, data).await?;
        }
        stream.finish();
    }
    Ok(())
}

/// Checks a downloaded chunk against its digest (blocking: hashes).
pub fn check_chunk(data: &[u8], digest: &Digest, what: &str) -> Result<()> {
    if Digest::of(data) == *digest {
        Ok(())
    } else {
        Err(Error::Damaged(format!(
            "chunk {digest} of {what} arrived damaged: its content does not match its digest"
        )))
    }
}

/// A stored file read at random offsets from a blocking thread.
pub struct RemoteFile {
    conn: Arc<Connection>,
    rt: tokio::runtime::Handle,
    decoder: ChunkDecoder,
    kind: Kind,
    name: String,
    pub map: ChunkMap,
    cache: VecDeque<(usize, Bytes)>,
    cached_bytes: usize,
    /// Chunks downloaded so far (tests assert on it).
    pub fetched: Arc<AtomicU64>,
    /// The error behind the last [`ArchiveError::Source`] this returned,
    /// so the caller can report it with its own kind (exit code); shared,
    /// so it outlives a reader that consumed this file.
    pub last_error: Arc<std::sync::Mutex<Option<Error>>>,
}

impl RemoteFile {
    pub fn new(
        conn: Arc<Connection>,
        rt: tokio::runtime::Handle,
        decoder: ChunkDecoder,
        kind: Kind,
        name: String,
        map: ChunkMap,
    ) -> RemoteFile {
        RemoteFile {
            conn,
            rt,
            decoder,
            kind,
            name,
            map,
            cache: VecDeque::new(),
            cached_bytes: 0,
            fetched: Arc::new(AtomicU64::new(0)),
            last_error: Arc::default(),
        }
    }

    fn cached(&self, i: usize) -> Option<Bytes> {
        self.cache
            .iter()
            .find(|(c, _)| *c == i)
            .map(|(_, b)| b.clone())
    }

    /// The chunks `range`, fetching the missing ones in one request.
    fn chunks(&mut self, range: std::ops::RangeInclusive<usize>) -> Result<Vec<Bytes>> {
        let missing: Vec<usize> = range
            .clone()
            .filter(|&i| self.cached(i).is_none())
            .collect();
        if !missing.is_empty() {
            let wanted: Vec<(Digest, u64)> = missing
                .iter()
                .map(|&i| (self.map.digests[i], self.map.ends[i] - self.map.start(i)))
                .collect();
            let mut got = Vec::with_capacity(missing.len());
            let what = self.name.clone();
            self.rt
                .block_on(download(&self.conn, &what, &wanted, |d, n, b| {
                    got.push((d, n, b));
                    std::future::ready(Ok(()))
                }))?;
            for (&i, (digest, size, data)) in missing.iter().zip(got) {
                let data = self
                    .decoder
                    .open(self.kind, &digest, size, data, &self.name)?;
                self.fetched.fetch_add(1, Ordering::Relaxed);
                self.cached_bytes += data.len();
                self.cache.push_back((i, data));
            }
            while self.cached_bytes > CACHE_BYTES && self.cache.len() > missing.len() {
                if let Some((_, old)) = self.cache.pop_front() {
                    self.cached_bytes -= old.len();
                }
            }
        }
        range
            .map(|i| {
                self.cached(i)
                    .ok_or_else(|| Error::Protocol(format!("chunk {i} of {} vanished", self.name)))
            })
            .collect()
    }

    /// `len` bytes at `offset`.
    pub fn read_range(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let size = self.map.size();
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(Error::Damaged(format!(
                "{} has {size} bytes; {len} bytes at {offset} were asked for",
                self.name
            )));
        }
        let mut out = Vec::with_capacity(len);
        if len == 0 {
            return Ok(out);
        }
        let range = self.map.covering(offset, len as u64);
        let first = *range.start();
        let mut pos = offset;
        let end = offset + len as u64;
        for (k, chunk) in self.chunks(range)?.into_iter().enumerate() {
            let start = self.map.start(first + k);
            let from = (pos - start) as usize;
            let to = ((end - start) as usize).min(chunk.len());
            out.extend_from_slice(&chunk[from..to]);
            pos = start + to as u64;
        }
        Ok(out)
    }
}

impl RangeSource for RemoteFile {
    fn size(&self) -> u64 {
        self.map.size()
    }

    fn read(&mut self, offset: u64, len: usize) -> hoard_archive::Result<Vec<u8>> {
        self.read_range(offset, len).map_err(|e| {
            let msg = e.to_string();
            *self.last_error.lock().expect("lock poisoned") = Some(e);
            ArchiveError::Source(msg)
        })
    }
}

/// An archive error as a client error: the stream's own failure keeps
/// its kind; a malformed or hostile archive is damage (exit 8).
pub fn archive_error(e: ArchiveError, source: &RemoteFile) -> Error {
    source_error(e, &source.last_error)
}

/// [`archive_error`] with the file's error slot.
pub fn source_error(e: ArchiveError, slot: &std::sync::Mutex<Option<Error>>) -> Error {
    match e {
        ArchiveError::Source(msg) => slot
            .lock()
            .expect("lock poisoned")
            .take()
            .unwrap_or(Error::Protocol(msg)),
        ArchiveError::NotFound(_) | ArchiveError::NotADirectory(_) => {
            Error::NotFound(e.to_string())
        }
        ArchiveError::Malformed(_) | ArchiveError::BadName(_) => Error::Damaged(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lookup() {
        let m = ChunkMap {
            ends: vec![10, 20, 35],
            digests: vec![Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c")],
        };
        assert_eq!(m.chunk_at(0), 0);
        assert_eq!(m.chunk_at(9), 0);
        assert_eq!(m.chunk_at(10), 1);
        assert_eq!(m.chunk_at(34), 2);
        assert_eq!(m.covering(5, 10), 0..=1);
        assert_eq!(m.covering(10, 10), 1..=1);
        assert_eq!(m.covering(19, 16), 1..=2);
        assert_eq!(m.start(2), 20);
    }
}
