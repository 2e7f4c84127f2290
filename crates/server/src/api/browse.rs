//! A tree archive's directories, one of its files, and whole disk images,
//! read from the datastore the way a client restores them: indexes
//! checked against the manifest, every chunk checked against its digest.
//!
//! Listing reads only the metadata chunks on the path (the archive's
//! random access). Downloads stream: a blocking thread reads one chunk at
//! a time into a small channel that the response body drains, so memory
//! stays at a few chunks per download whatever the file's size, and a
//! client that stops reading stops the reader. The snapshot is pinned
//! while it is read, so prune leaves it (and GC its chunks) alone.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hoard_archive::format::Extent;
use hoard_archive::listing::listed;
use hoard_archive::reader::{LayoutError, payload_layout};
use hoard_archive::{Archive, ArchiveError, Entry, RangeSource};
use hoard_datastore::{ChunkClass, Datastore, DynamicIndexReader, IndexReader, SnapshotInfo};
use hoard_types::{ARCHIVE_META_SUFFIX, Digest, SnapshotPath};
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::warn;

use super::caller::Caller;
use super::views::find_snapshot;
use super::{ApiError, ApiResult, blocking, parse_snapshot};
use crate::Shared;

const DATA_SUFFIX: &str = ".hdata";
/// Chunks a download may have read ahead of the client.
const READ_AHEAD: usize = 4;
/// Longest path asked for.
const MAX_PATH: usize = 4096;
/// Chunk digests looked up per index read.
const BATCH: usize = 64;
/// Largest piece of metadata (a directory table, an extent map) read
/// into memory for one request.
const MAX_READ: usize = 64 << 20;
const TOO_LARGE: &str = "more than the server reads at once";

type ArchivePath = Path<(String, String, String, String)>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathQuery {
    #[serde(default)]
    path: String,
    /// Listings: the first entry to answer (pages of [`MAX_LISTED`]).
    #[serde(default)]
    offset: usize,
}

/// Entries one listing answers at most; `offset` pages through more.
const MAX_LISTED: usize = 10_000;
/// Extents of a sparse file downloaded here at most (its map is held
/// while the file streams); `hoard restore` takes any.
const MAX_EXTENTS: u64 = 1 << 20;

#[derive(serde::Serialize)]
struct ListingPage {
    path: String,
    /// Entries in the directory.
    total: usize,
    offset: usize,
    entries: Vec<hoard_archive::listing::ListedEntry>,
}

/// A path inside an archive, refused if it could mean anything but a
/// walk down from the root.
pub(crate) fn archive_path(p: &str) -> ApiResult<String> {
    if p.len() > MAX_PATH {
        return Err(ApiError::bad(format!(
            "a path has at most {MAX_PATH} bytes"
        )));
    }
    if p.contains('\0') {
        return Err(ApiError::bad("a path may not hold NUL"));
    }
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == ".." || *c == ".") {
        return Err(ApiError::bad(format!(
            "path {p:?} holds `.` or `..`: paths go down from the archive's root"
        )));
    }
    Ok(parts.join("/"))
}

/// One chunk, read and checked against its digest.
fn read_chunk(ds: &Datastore, digest: &Digest, what: &str) -> Result<Vec<u8>, String> {
    let blob = ds
        .chunks()
        .load_blob(digest, ChunkClass::Plain)
        .map_err(|e| format!("{what}: chunk {digest}: {e}"))?;
    hoard_codec::blob::decode_plain(digest, &blob)
        .map_err(|e| format!("{what}: chunk {digest}: {e}"))
}

/// A dynamic index's stream, read at offsets: a binary search over the
/// index's entries (on disk) finds the chunk, and the last chunk read is
/// kept for the next read.
struct IndexSource {
    ds: Datastore,
    index: DynamicIndexReader,
    size: u64,
    what: String,
    /// Index, start offset and data of the last chunk read.
    last: Option<(u64, u64, Arc<Vec<u8>>)>,
}

impl IndexSource {
    fn open(ds: &Datastore, info: &SnapshotInfo, stored: &str) -> ApiResult<IndexSource> {
        let rel = format!("{}/{stored}", info.path);
        let index = match open_checked(ds, info, stored)? {
            IndexReader::Dynamic(d) => d,
            IndexReader::Fixed(_) => {
                return Err(ApiError::conflict(format!("{rel} is not a stream")));
            }
        };
        Ok(IndexSource {
            ds: ds.clone(),
            size: index.file_size(),
            index,
            what: rel,
            last: None,
        })
    }

    fn entry(&self, i: u64) -> Result<(u64, Digest), String> {
        self.index
            .entries(i, 1)
            .map_err(|e| format!("{}: {e}", self.what))?
            .pop()
            .ok_or_else(|| format!("{}: entry {i} missing", self.what))
    }

    /// The chunk holding byte `offset`: its index, start and data.
    fn chunk_at(&mut self, offset: u64) -> Result<(u64, u64, Arc<Vec<u8>>), String> {
        if let Some((i, start, data)) = &self.last
            && offset >= *start
            && offset < start + data.len() as u64
        {
            return Ok((*i, *start, data.clone()));
        }
        // The first entry whose end lies beyond `offset`.
        let (mut lo, mut hi) = (0u64, self.index.chunk_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.0 > offset {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let (end, digest) = self.entry(lo)?;
        let start = if lo == 0 { 0 } else { self.entry(lo - 1)?.0 };
        let data = read_chunk(&self.ds, &digest, &self.what)?;
        if data.len() as u64 != end.saturating_sub(start) {
            return Err(format!(
                "{}: chunk {digest} has {} bytes, the index says {}",
                self.what,
                data.len(),
                end.saturating_sub(start)
            ));
        }
        let data = Arc::new(data);
        self.last = Some((lo, start, data.clone()));
        Ok((lo, start, data))
    }

    /// Calls `sink` with the bytes `at..at+len`, a chunk's piece at a time.
    fn pieces(
        &mut self,
        mut at: u64,
        len: u64,
        sink: &mut dyn FnMut(Bytes) -> Result<(), String>,
    ) -> Result<(), String> {
        let end = at + len;
        while at < end {
            let (_, start, data) = self.chunk_at(at)?;
            let from = (at - start) as usize;
            let to = ((end - start) as usize).min(data.len());
            sink(Bytes::copy_from_slice(&data[from..to]))?;
            at += (to - from) as u64;
        }
        Ok(())
    }
}

impl RangeSource for IndexSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&mut self, offset: u64, len: usize) -> hoard_archive::Result<Vec<u8>> {
        // A directory table or extent map larger than this is refused
        // rather than held in memory (an archive allows 1 GiB).
        if len > MAX_READ {
            return Err(ArchiveError::Source(format!(
                "{}: a read of {len} bytes at {offset} is {TOO_LARGE} ({MAX_READ}); use `hoard ls` or `hoard restore`",
                self.what
            )));
        }
        let mut out = Vec::with_capacity(len);
        self.pieces(offset, len as u64, &mut |b| {
            out.extend_from_slice(&b);
            Ok(())
        })
        .map_err(ArchiveError::Source)?;
        Ok(out)
    }
}

/// Index `stored` of a snapshot, checked as a restore checks it: its
/// header against the manifest's checksum (in `open_index`), its entries
/// against the header, its size against the manifest's.
fn open_checked(ds: &Datastore, info: &SnapshotInfo, stored: &str) -> ApiResult<IndexReader> {
    let rel = format!("{}/{stored}", info.path);
    let file = info
        .manifest
        .file(stored)
        .ok_or_else(|| ApiError::not_found(format!("{} has no {stored}", info.path)))?;
    let index = ds
        .open_index(&rel)
        .map_err(|e| ApiError::internal("opening an index", e))?;
    index
        .verify_checksum()
        .map_err(|e| ApiError::internal("checking an index", e))?;
    if index.file_size() != file.file_size || index.chunk_count() != file.chunk_count {
        return Err(ApiError::internal(
            "checking an index",
            format!("{rel}: its size or chunk count differs from the manifest's"),
        ));
    }
    Ok(index)
}

fn archive_error(e: ArchiveError, what: &str) -> ApiError {
    match e {
        ArchiveError::NotFound(p) => ApiError::not_found(format!("{p}: not in archive {what}")),
        ArchiveError::NotADirectory(p) => {
            ApiError::conflict(format!("{p} is not a directory in archive {what}"))
        }
        ArchiveError::BadName(_) => ApiError::bad(e.to_string()),
        ArchiveError::Source(m) if m.contains(TOO_LARGE) => ApiError::conflict(m),
        other => ApiError::internal(&format!("reading archive {what}"), other),
    }
}

/// The snapshot and archive a request names, checked readable and
/// browsable.
fn open_archive(
    ds: &Datastore,
    caller: &Caller,
    snap: &SnapshotPath,
    name: &str,
) -> ApiResult<(SnapshotInfo, Archive<IndexSource>, IndexSource)> {
    let (info, _) = find_snapshot(ds, &caller.principal, snap)?;
    let meta = format!("{name}{ARCHIVE_META_SUFFIX}.didx");
    let data = format!("{name}{DATA_SUFFIX}.didx");
    if info.manifest.file(&meta).is_none() || info.manifest.file(&data).is_none() {
        return Err(ApiError::not_found(format!("{snap} has no archive {name}")));
    }
    refuse_encrypted(&info)?;
    let meta_src = IndexSource::open(ds, &info, &meta)?;
    let data_src = IndexSource::open(ds, &info, &data)?;
    let what = format!("{snap}/{name}");
    let archive = Archive::open(meta_src, data_src.size).map_err(|e| archive_error(e, &what))?;
    Ok((info, archive, data_src))
}

fn refuse_encrypted(info: &SnapshotInfo) -> ApiResult<()> {
    if info.manifest.encrypted {
        return Err(ApiError::conflict(format!(
            "{} is encrypted: the server cannot read it; restore it with the client and its key",
            info.path
        )));
    }
    Ok(())
}

fn request(
    path: Result<ArchivePath, PathRejection>,
    query: Result<Query<PathQuery>, QueryRejection>,
) -> ApiResult<(SnapshotPath, String, String, usize)> {
    let Path((ty, id, time, name)) = path?;
    let Query(q) = query?;
    Ok((
        parse_snapshot(&ty, &id, &time)?,
        name,
        archive_path(&q.path)?,
        q.offset,
    ))
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    path: Result<ArchivePath, PathRejection>,
    query: Result<Query<PathQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let (snap, name, dir, offset) = request(path, query)?;
    let reading = super::reading(&shared).await?;
    let ds = shared.ds.clone();
    blocking(move || {
        // The place goes with the work (see `reading`).
        let _reading = reading;
        let (_, mut archive, _) = open_archive(&ds, &caller, &snap, &name)?;
        let what = format!("{snap}/{name}");
        let entry = archive.lookup(&dir).map_err(|e| archive_error(e, &what))?;
        let entries = if entry.is_dir() {
            archive
                .read_dir(&entry)
                .map_err(|e| archive_error(e, &what))?
        } else {
            vec![entry]
        };
        let total = entries.len();
        let entries = entries
            .iter()
            .skip(offset)
            .take(MAX_LISTED)
            .map(listed)
            .collect();
        let page = ListingPage {
            path: dir,
            total,
            offset,
            entries,
        };
        Ok(axum::Json(page).into_response())
    })
    .await
}

/// A body fed by a blocking reader through a bounded channel; the
/// permit (a place among the downloads running) and the snapshot's pin
/// live until the reader ends.
fn stream_body<F>(permit: DownloadSlot, pin: hoard_datastore::SnapshotPin, produce: F) -> Body
where
    F: FnOnce(&mut dyn FnMut(Bytes) -> Result<(), String>) -> Result<(), String> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let _held = (permit, pin);
        let sent = produce(&mut |b| {
            tx.blocking_send(Ok(b))
                .map_err(|_| "the client went away".to_string())
        });
        if let Err(e) = sent
            && e != "the client went away"
        {
            warn!("download ended early: {e}");
            // An error in the body makes hyper cut the response short, so
            // the client sees a truncated download, never a
            // complete-looking wrong one.
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn download_headers(response: &mut Response, file_name: &str, len: u64) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // RFC 6266: an ASCII fallback, and the exact name percent-encoded.
    let ascii: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let exact =
        percent_encoding::utf8_percent_encode(file_name, percent_encoding::NON_ALPHANUMERIC);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{exact}"
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
}

type DownloadSlot = super::slots::Slot<String>;

fn download_slot(shared: &Shared, caller: &Caller) -> ApiResult<DownloadSlot> {
    shared
        .web
        .downloads
        .take(caller.principal.name.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many downloads at once (yours, or in all): try again when one has finished",
            )
        })
}

/// Pins a snapshot the caller was found allowed to read, so prune leaves
/// it (and GC its chunks) alone while it is read; refuses one being
/// written.
fn pin(ds: &Datastore, snap: &SnapshotPath) -> ApiResult<hoard_datastore::SnapshotPin> {
    match ds.writer_active(snap) {
        Ok(false) => {}
        Ok(true) => {
            return Err(ApiError::conflict(format!(
                "{snap} is being written; download it when its backup has finished"
            )));
        }
        Err(e) => return Err(ApiError::internal("reading a snapshot's lock", e)),
    }
    match ds.pin_snapshot(snap) {
        Ok(p) => Ok(p),
        Err(hoard_datastore::Error::SnapshotNotFound(_)) => {
            Err(ApiError::not_found(format!("no snapshot {snap}")))
        }
        Err(e) => Err(ApiError::internal("pinning a snapshot", e)),
    }
}

/// The extents of a file's content in the data stream: where each piece
/// lies in the stream and the extent (the holes of a sparse file are
/// zeros the body sends itself).
fn file_extents(data: &mut IndexSource, e: &Entry) -> Result<Vec<(u64, Extent)>, String> {
    let layout = payload_layout(e, MAX_EXTENTS, &mut |at, len| {
        data.read(at, len as usize).map_err(|x| x.to_string())
    })
    .map_err(|x| match x {
        LayoutError::Source(e) => e,
        LayoutError::Malformed(why)
            if why.contains(&format!("more than {MAX_EXTENTS} extents")) =>
        {
            format!("{why}: {TOO_LARGE} for one download; use `hoard restore`")
        }
        LayoutError::Malformed(why) => why,
    })?;
    let mut pos = layout.data_at;
    let mut out = Vec::with_capacity(layout.extents.len());
    for ex in layout.extents {
        out.push((pos, ex));
        pos += ex.len;
    }
    Ok(out)
}

/// Sends `n` zero bytes in pieces of at most 1 MiB.
fn zeros(mut n: u64, sink: &mut dyn FnMut(Bytes) -> Result<(), String>) -> Result<(), String> {
    const PIECE: u64 = 1 << 20;
    let piece = Bytes::from(vec![0u8; PIECE.min(n) as usize]);
    while n > 0 {
        let k = PIECE.min(n);
        sink(piece.slice(..k as usize))?;
        n -= k;
    }
    Ok(())
}

pub(crate) async fn file(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    path: Result<ArchivePath, PathRejection>,
    query: Result<Query<PathQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let (snap, name, file, _) = request(path, query)?;
    if file.is_empty() {
        return Err(ApiError::bad("name a file with ?path="));
    }
    let permit = download_slot(&shared, &caller)?;
    let reading = super::reading(&shared).await?;
    let ds = shared.ds.clone();
    blocking(move || {
        // The place goes with the work (see `reading`).
        let _reading = reading;
        // Allowed first: a snapshot the caller may not read is answered
        // as missing, whether it exists or not.
        let (_, mut archive, mut data) = open_archive(&ds, &caller, &snap, &name)?;
        let pinned = pin(&ds, &snap)?;
        let what = format!("{snap}/{name}");
        let entry = archive.lookup(&file).map_err(|e| archive_error(e, &what))?;
        if entry.payload().is_none() {
            return Err(ApiError::conflict(format!(
                "{file} is a {} in {what}, not a regular file",
                entry.kind.name()
            )));
        }
        let extents = file_extents(&mut data, &entry).map_err(|e| {
            if e.contains(TOO_LARGE) {
                ApiError::conflict(format!("{file} of {what}: {e}"))
            } else {
                ApiError::internal(&format!("reading {file} of {what}"), e)
            }
        })?;
        let size = entry.size;
        let base = file.rsplit('/').next().unwrap_or(&file).to_string();
        let body = stream_body(permit, pinned, move |sink| {
            let mut done = 0u64;
            for (at, ex) in extents {
                zeros(ex.offset - done, sink)?;
                data.pieces(at, ex.len, sink)?;
                done = ex.offset + ex.len;
            }
            zeros(size - done, sink)
        });
        let mut response = Response::new(body);
        download_headers(&mut response, &base, size);
        Ok(response)
    })
    .await
}

pub(crate) async fn image(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    path: Result<ArchivePath, PathRejection>,
) -> ApiResult<Response> {
    let Path((ty, id, time, name)) = path?;
    let snap = parse_snapshot(&ty, &id, &time)?;
    let permit = download_slot(&shared, &caller)?;
    let reading = super::reading(&shared).await?;
    let ds = shared.ds.clone();
    blocking(move || {
        // The place goes with the work (see `reading`).
        let _reading = reading;
        let (info, _) = find_snapshot(&ds, &caller.principal, &snap)?;
        let stored = format!("{name}.fidx");
        if info.manifest.file(&stored).is_none() {
            return Err(ApiError::not_found(format!("{snap} has no image {name}")));
        }
        refuse_encrypted(&info)?;
        let pinned = pin(&ds, &snap)?;
        let rel = format!("{snap}/{stored}");
        let index = open_checked(&ds, &info, &stored)?;
        let size = index.file_size();
        let count = index.chunk_count();
        let body = stream_body(permit, pinned, move |sink| {
            let mut start = 0u64;
            while start < count {
                let n = (BATCH as u64).min(count - start) as usize;
                let batch = index
                    .sized_digests(start, n)
                    .map_err(|e| format!("{rel}: {e}"))?;
                for (digest, want) in batch {
                    let data = read_chunk(&ds, &digest, &rel)?;
                    if data.len() as u64 != want {
                        return Err(format!(
                            "{rel}: chunk {digest} has {} bytes, the index says {want}",
                            data.len()
                        ));
                    }
                    sink(Bytes::from(data))?;
                }
                start += n as u64;
            }
            Ok(())
        });
        let mut response = Response::new(body);
        download_headers(&mut response, &name, size);
        Ok(response)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_go_down_only() {
        assert_eq!(archive_path("").unwrap(), "");
        assert_eq!(archive_path("/etc//hosts/").unwrap(), "etc/hosts");
        for bad in ["..", "etc/../..", "./x", "a\0b"] {
            let e = archive_path(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(archive_path(&"a/".repeat(3000)).is_err());
    }
}
