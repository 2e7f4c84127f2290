//! Chunks kept as deltas (`DIGEST.d`, format in [`crate::delta`]): how
//! they are made, read, stamped by writers, marked by GC and set aside by
//! verify. Only plain chunks of a datastore on local disk become deltas;
//! the server cannot compare encrypted ones, and a bucket's chunks stay
//! whole (docs/format.md, "Delta chunk file").
//!
//! Safety (docs/maintenance.md, "Deltas"): a delta is live only with its
//! whole chain, so everything that keeps a delta keeps its chain first.
//! Writers stamp the chain before the delta, GC marks every link of the
//! chain of every delta it marks, and a delta replaces its whole chunk
//! under the chunk's exclusive prefix lock after its chain was stamped
//! under the same lock.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use hoard_codec::blob::{self, HEADER_SIZE as CHUNK_HEADER_SIZE};
use hoard_types::Digest;

use super::{ChunkClass, ChunkStore, Marked, read_file, stamp_file};
use crate::datastore::{DELTA_MARKER_CONTENT, MARKER_NAME};
use crate::delta::{self, BLOCK, DeltaHead};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{TempFile, fsync_dir, open_nofollow, write_atomic};
use crate::locks::{FsTime, touch};

/// The suffix of a delta chunk's file name.
pub const DELTA_SUFFIX: &str = ".d";
/// Links a new delta's chain may have: past this, a new delta is made
/// against the chain's whole root instead (one link again), so reading
/// any chunk reads at most this many small delta files besides its root.
pub const MAX_CHAIN: usize = 16;
/// Links a reader follows before it calls a chain damaged: more than any
/// chain made here (a chunk that becomes a delta after others were made
/// against it adds its own links), and a bound on a cycle.
pub const MAX_CHAIN_READ: usize = 64;
/// A whole chunk file smaller than this is not worth a delta.
const MIN_WHOLE: u64 = 16 * 1024;
/// zstd level of delta block data: the server's at-rest level.
const DELTA_LEVEL: i32 = 3;

/// The head a damaged link is marked with (only its file name matters).
const NO_HEAD: DeltaHead = DeltaHead {
    raw_size: 0,
    base: Digest([0; 32]),
};

/// What [`ChunkStore::make_delta`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaMade {
    /// The whole chunk of `whole` bytes is now a delta of `delta` bytes.
    Stored { whole: u64, delta: u64 },
    /// Left whole, and why.
    Skipped(&'static str),
}

/// One link of a chain: a stored chunk, whole or a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Whole,
    Delta(DeltaHead),
}

impl ChunkStore {
    /// Where the delta of this plain chunk lives.
    pub fn delta_path(&self, digest: &Digest) -> PathBuf {
        let mut p = self.chunk_path(digest).into_os_string();
        p.push(DELTA_SUFFIX);
        PathBuf::from(p)
    }

    /// Whether the plain chunk is kept as a delta (no whole file, a delta
    /// file). Deltas exist only on local disk.
    pub fn is_delta(&self, digest: &Digest) -> bool {
        self.objects.is_none()
            && !self.chunk_path(digest).exists()
            && self.delta_path(digest).exists()
    }

    /// The fixed part of the chunk's delta file, if it has one.
    pub(super) fn delta_head(&self, digest: &Digest) -> Result<Option<DeltaHead>> {
        let path = self.delta_path(digest);
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("opening delta {digest}")),
        };
        let mut head = [0u8; delta::FIXED_SIZE];
        let n = std::os::unix::fs::FileExt::read_at(&file, &mut head, 0)
            .ctx(|| format!("reading delta {digest}"))?;
        delta::decode_head(&head[..n])
            .map(Some)
            .map_err(|e| Error::ChunkCorrupt {
                digest: *digest,
                reason: e.to_string(),
            })
    }

    /// What is stored for `digest`: whole (preferred, as readers do) or a
    /// delta, or nothing.
    fn link(&self, digest: &Digest) -> Result<Option<Link>> {
        match fs::metadata(self.chunk_path(digest)) {
            Ok(m) if m.len() > 0 => return Ok(Some(Link::Whole)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx(|| format!("reading chunk {digest}")),
        }
        Ok(self.delta_head(digest)?.map(Link::Delta))
    }

    /// The chain below a delta with head `head`: its base first, the whole
    /// root last. A missing link, a damaged delta file or a chain longer
    /// than [`MAX_CHAIN_READ`] makes the chunk `digest` unreadable.
    fn chain_below(&self, digest: &Digest, head: DeltaHead) -> Result<Vec<(Digest, Link)>> {
        let mut chain = Vec::new();
        let mut cur = head.base;
        loop {
            if chain.len() >= MAX_CHAIN_READ || cur == *digest {
                return Err(Error::ChunkCorrupt {
                    digest: *digest,
                    reason: format!("its delta chain is longer than {MAX_CHAIN_READ} or cyclic"),
                });
            }
            let link = match self.link(&cur) {
                Ok(Some(l)) => l,
                Ok(None) => return Err(base_error(digest, &cur, Error::ChunkMissing(cur))),
                Err(e) => return Err(base_error(digest, &cur, e)),
            };
            chain.push((cur, link));
            match link {
                Link::Whole => return Ok(chain),
                Link::Delta(h) => cur = h.base,
            }
        }
    }

    /// A delta's plain data: its chain's root decoded, then every link's
    /// blocks applied from the root up, one delta file in memory at a
    /// time. The caller checks the digest where the data is not handed
    /// to a reader that checks it (verify does).
    pub(super) fn load_delta(&self, digest: &Digest) -> Result<Vec<u8>> {
        match self.try_load_delta(digest) {
            // A link became a delta between reading the chain and reading
            // the link (a commit removes the whole file last): once more.
            Err(Error::ChunkCorrupt { .. }) => self.try_load_delta(digest),
            other => other,
        }
    }

    fn try_load_delta(&self, digest: &Digest) -> Result<Vec<u8>> {
        let Some(head) = self.delta_head(digest)? else {
            return Err(Error::ChunkMissing(*digest));
        };
        let chain = self.chain_below(digest, head)?;
        let Some((root, _)) = chain.last() else {
            return Err(Error::ChunkCorrupt {
                digest: *digest,
                reason: "its delta chain is empty".into(),
            });
        };
        let mut data = self
            .load_whole(root)
            .map_err(|e| base_error(digest, root, e))?;
        let above_root = chain.iter().rev().skip(1).map(|(d, _)| d);
        for link in above_root.chain(std::iter::once(digest)) {
            let delta = self.read_delta(link).map_err(|e| match link == digest {
                true => e,
                false => base_error(digest, link, e),
            })?;
            delta.apply(&mut data).map_err(|e| Error::ChunkCorrupt {
                digest: *digest,
                reason: format!("applying delta {link}: {e}"),
            })?;
        }
        Ok(data)
    }

    /// A whole chunk's plain data, its CRC checked; `ChunkMissing` if
    /// there is no whole file.
    pub(super) fn load_whole(&self, digest: &Digest) -> Result<Vec<u8>> {
        let (file, header) = self.open(digest, ChunkClass::Plain)?;
        let mut blob = read_file(&file, digest)?;
        let corrupt = |e: hoard_codec::Error| Error::ChunkCorrupt {
            digest: *digest,
            reason: e.to_string(),
        };
        header
            .check_crc(&blob[CHUNK_HEADER_SIZE..])
            .map_err(corrupt)?;
        // The payload moves out of the file buffer without a copy.
        let payload = blob.split_off(CHUNK_HEADER_SIZE);
        blob::decode_payload_plain(&header, payload).map_err(corrupt)
    }

    /// A delta file, read whole and checked; `ChunkMissing` if there is
    /// none.
    fn read_delta(&self, digest: &Digest) -> Result<delta::Delta> {
        let path = self.delta_path(digest);
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ChunkMissing(*digest));
            }
            Err(e) => return Err(e).ctx(|| format!("opening delta {digest}")),
        };
        let len = file
            .metadata()
            .ctx(|| format!("reading delta {digest}"))?
            .len();
        if len > delta::MAX_FILE_SIZE {
            return Err(Error::ChunkCorrupt {
                digest: *digest,
                reason: format!("a delta file of {len} bytes"),
            });
        }
        let bytes = read_file(&file, digest)?;
        delta::decode(&bytes).map_err(|e| Error::ChunkCorrupt {
            digest: *digest,
            reason: e.to_string(),
        })
    }

    /// A writer's use of a chunk kept as a delta (W1 finding it stored,
    /// W2 referencing it): stamps every link of its chain, root first,
    /// each under its own prefix's shared lock, then the delta under its
    /// own. Returns the raw size, or `None` if the delta or a link of its
    /// chain is gone (then the chunk counts as not stored: an upload
    /// stores it whole again, which heals what depended on a lost base).
    pub(super) fn stamp_delta(&self, digest: &Digest, since: FsTime) -> Result<Option<u64>> {
        let head = match self.delta_head(digest) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            // A damaged delta counts as not stored, so an upload stores
            // the chunk whole (and reads prefer that) until verify moves
            // the delta aside.
            Err(Error::ChunkCorrupt { reason, .. }) => {
                tracing::warn!(
                    "chunk {digest} counts as not stored: its delta is damaged: {reason}"
                );
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // Twice: a link whose whole file a commit removed between the
        // walk and its stamp is a delta by then.
        for _ in 0..2 {
            let chain = match self.chain_below(digest, head) {
                Ok(c) => c,
                Err(Error::ChunkCorrupt { reason, .. }) => {
                    tracing::warn!("chunk {digest} counts as not stored: {reason}");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let mut whole_chain = true;
            for (d, link) in chain.iter().rev() {
                if !self.stamp_link(d, *link, since, None)? {
                    whole_chain = false;
                    break;
                }
            }
            if whole_chain {
                let stamped = self.stamp_link(digest, Link::Delta(head), since, None)?;
                return Ok(stamped.then_some(u64::from(head.raw_size)));
            }
        }
        Ok(None)
    }

    /// Stamps one link if it is older than `since` (always, with
    /// `FsTime(i128::MAX)`), under its prefix's shared lock unless the
    /// caller holds prefix `held` exclusively. False if it is gone.
    fn stamp_link(
        &self,
        digest: &Digest,
        link: Link,
        since: FsTime,
        held: Option<u8>,
    ) -> Result<bool> {
        let prefix = Self::prefix(digest);
        let _shared = if held == Some(prefix) {
            None
        } else {
            Some(self.locks.share_prefix(prefix)?)
        };
        let path = match link {
            Link::Whole => self.chunk_path(digest),
            Link::Delta(_) => self.delta_path(digest),
        };
        stamp_file(&path, digest, since)
    }

    /// GC's mark of a chunk kept as a delta: every link of its chain, then
    /// the delta. The chain is marked even when the delta is recent: the
    /// delta's stamp says nothing about its chain's (a GC that died
    /// between the two), and marking is what keeps the chain.
    pub(super) fn mark_delta(&self, digest: &Digest, cutoff: FsTime) -> Result<Marked> {
        let chain = match self.delta_head(digest) {
            Ok(None) => return Ok(Marked::Missing),
            Ok(Some(head)) => self.chain_below(digest, head).map(|c| (head, c)),
            Err(e) => Err(e),
        };
        let (head, chain) = match chain {
            Ok(c) => c,
            // Damage (never an I/O error, which stops the GC as anywhere
            // else): every file of the chain that is there is kept, as
            // far as it can be followed; verify reports the damage, and
            // nothing more is lost meanwhile.
            Err(Error::ChunkCorrupt { reason, .. }) => {
                tracing::warn!("GC: chunk {digest} is unreadable: {reason}");
                self.mark_surviving(digest, cutoff)?;
                return Ok(Marked::Missing);
            }
            Err(e) => return Err(e),
        };
        for (d, link) in chain.iter().rev() {
            self.mark_link(d, *link, cutoff)?;
        }
        self.mark_link(digest, Link::Delta(head), cutoff)
    }

    /// Marks the files of a damaged chain, from `digest` down, as far as
    /// the chain can be followed: a whole file ends it, a delta whose
    /// fixed part is damaged is marked and ends it, a missing link ends
    /// it. I/O errors stop the GC.
    fn mark_surviving(&self, digest: &Digest, cutoff: FsTime) -> Result<()> {
        let mut cur = *digest;
        for _ in 0..=MAX_CHAIN_READ {
            if self.mark_link(&cur, Link::Whole, cutoff)? != Marked::Missing {
                return Ok(());
            }
            let marked = self.mark_link(&cur, Link::Delta(NO_HEAD), cutoff)?;
            if marked == Marked::Missing {
                return Ok(());
            }
            match self.delta_head(&cur) {
                Ok(Some(h)) => cur = h.base,
                Ok(None) | Err(Error::ChunkCorrupt { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn mark_link(&self, digest: &Digest, link: Link, cutoff: FsTime) -> Result<Marked> {
        let path = match link {
            Link::Whole => self.chunk_path(digest),
            Link::Delta(_) => self.delta_path(digest),
        };
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Marked::Missing),
            Err(e) => return Err(e).ctx(|| format!("opening chunk {digest}")),
        };
        let meta = file.metadata().ctx(|| format!("reading chunk {digest}"))?;
        if meta.len() == 0 {
            // A crash leftover: counts as missing, as everywhere.
            return Ok(Marked::Missing);
        }
        if FsTime::mtime(&meta) >= cutoff {
            return Ok(Marked::Recent);
        }
        touch(&file).ctx(|| format!("stamping chunk {digest}"))?;
        Ok(Marked::Touched)
    }

    /// Keeps the plain chunk `digest`, stored whole, as a delta against
    /// `base` (the chunk at the same place in the previous backup of the
    /// same disk) if that saves at least a quarter of its file. Called by
    /// a registered writer that references the chunk (docs/maintenance.md,
    /// "Deltas").
    ///
    /// Never fails a backup for want of a saving: every reason not to is
    /// a [`DeltaMade::Skipped`]; errors are I/O errors of the datastore.
    pub fn make_delta(&self, digest: &Digest, base: &Digest) -> Result<DeltaMade> {
        if self.objects.is_some() {
            return Ok(DeltaMade::Skipped("chunks on object storage stay whole"));
        }
        if digest == base {
            return Ok(DeltaMade::Skipped("unchanged"));
        }
        let whole = match fs::metadata(self.chunk_path(digest)) {
            Ok(m) if m.len() > 0 => m.len(),
            Ok(_) => return Ok(DeltaMade::Skipped("not stored")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DeltaMade::Skipped("not stored whole"));
            }
            Err(e) => return Err(e).ctx(|| format!("reading chunk {digest}")),
        };
        if whole < MIN_WHOLE {
            return Ok(DeltaMade::Skipped("small"));
        }
        // What cannot be read is skipped, whatever the reason: only a
        // failing write ends the pass.
        let Ok(Some(base)) = self.pick_base(digest, base) else {
            return Ok(DeltaMade::Skipped("no usable base"));
        };
        // The new chunk was checked against its digest when it was
        // uploaded, and its CRC on this read.
        let Ok(new) = self.load_whole(digest) else {
            return Ok(DeltaMade::Skipped("unreadable"));
        };
        let Ok(old) = self.load(&base) else {
            return Ok(DeltaMade::Skipped("base unreadable"));
        };
        // A base rebuilt from a chain is checked against its digest: a
        // delta is made only against the data its base's name promises.
        if self.is_delta(&base) && Digest::of(&old) != base {
            return Ok(DeltaMade::Skipped("base rebuilds wrong data"));
        }
        if old.len() != new.len() {
            return Ok(DeltaMade::Skipped("base of another size"));
        }
        let blocks = delta::diff_blocks(&old, &new);
        if blocks.is_empty() || blocks.len() * BLOCK * 2 > new.len() {
            return Ok(DeltaMade::Skipped("changed in more than half its blocks"));
        }
        let file = delta::encode(&base, &new, &blocks, DELTA_LEVEL);
        if file.len() as u64 > whole - whole / 4 {
            return Ok(DeltaMade::Skipped("saves less than a quarter"));
        }
        // The whole file goes only for a delta proven to rebuild it.
        let mut rebuilt = old;
        let decoded = delta::decode(&file).map_err(|e| Error::ChunkCorrupt {
            digest: *digest,
            reason: format!("a new delta does not decode: {e}"),
        })?;
        if decoded.apply(&mut rebuilt).is_err() || rebuilt != new {
            return Err(Error::ChunkCorrupt {
                digest: *digest,
                reason: "a new delta does not rebuild its chunk".into(),
            });
        }
        let tmp = TempFile::create(self.tmp.path(), "delta")?;
        std::os::unix::fs::FileExt::write_all_at(&tmp.file, &file, 0)
            .ctx(|| format!("writing delta {digest}"))?;
        tmp.sync()?;
        if !self.commit_delta(digest, &base, tmp)? {
            return Ok(DeltaMade::Skipped("changed meanwhile"));
        }
        Ok(DeltaMade::Stored {
            whole,
            delta: file.len() as u64,
        })
    }

    /// The base to diff against: `base` itself, or its chain's root if its
    /// chain is [`MAX_CHAIN`] links long already. None if it is not
    /// stored, its chain is broken, or `digest` is in it (a cycle).
    fn pick_base(&self, digest: &Digest, base: &Digest) -> Result<Option<Digest>> {
        let chain = match self.link(base)? {
            None => return Ok(None),
            Some(Link::Whole) => return Ok(Some(*base)),
            Some(Link::Delta(head)) => match self.chain_below(base, head) {
                Ok(c) => c,
                Err(Error::ChunkCorrupt { .. }) => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        if chain.iter().any(|(d, _)| d == digest) {
            return Ok(None);
        }
        if chain.len() >= MAX_CHAIN {
            return Ok(chain.last().map(|(root, _)| *root));
        }
        Ok(Some(*base))
    }

    /// Puts a synced delta file in place of the whole chunk, atomically:
    /// under the chunk's exclusive prefix lock (no writer can find the
    /// chunk meanwhile), the base's chain is walked again, checked free of
    /// `digest`, and stamped; then the delta is renamed in and stamped,
    /// and only then is the whole file removed. At every instant one of
    /// the two files holds the chunk. Deltas are committed one at a time
    /// across processes (`.locks/deltas`), so no two commits can close a
    /// cycle between them, nor wait for each other's prefixes.
    fn commit_delta(&self, digest: &Digest, base: &Digest, tmp: TempFile) -> Result<bool> {
        let _one = self.locks.delta_commit()?;
        let prefix = Self::prefix(digest);
        let _excl = self.locks.exclusive_prefix(prefix)?;
        let whole = self.chunk_path(digest);
        match fs::metadata(&whole) {
            Ok(m) if m.len() > 0 => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).ctx(|| format!("reading chunk {digest}")),
        }
        let Some(base_link) = self.link(base)? else {
            return Ok(false);
        };
        let mut chain = vec![(*base, base_link)];
        if let Link::Delta(head) = base_link {
            match self.chain_below(base, head) {
                Ok(c) => chain.extend(c),
                Err(Error::ChunkCorrupt { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if chain.len() >= MAX_CHAIN_READ || chain.iter().any(|(d, _)| d == digest) {
            return Ok(false);
        }
        self.raise_format()?;
        // Stamped now, not merely if older than some writer's start: a
        // writer that found the whole chunk before this lock was taken
        // relied on it, and that passes to the chain and the delta here.
        for (d, link) in chain.iter().rev() {
            if !self.stamp_link(d, *link, FsTime(i128::MAX), Some(prefix))? {
                return Ok(false);
            }
        }
        let dest = self.delta_path(digest);
        tmp.rename(&dest)?;
        let placed = open_nofollow(&dest).ctx(|| format!("opening delta {digest}"))?;
        touch(&placed).ctx(|| format!("stamping delta {digest}"))?;
        crate::failpoint::write_step("delta", "renamed")
            .ctx(|| format!("replacing chunk {digest} by its delta"))?;
        fs::remove_file(&whole).ctx(|| format!("removing whole chunk {digest}"))?;
        drop(_excl);
        fsync_dir(whole.parent().unwrap_or(&self.base))?;
        Ok(true)
    }

    /// Before the first delta: marks the datastore as version 3, which a
    /// hoard that predates deltas refuses to open (its GC would remove
    /// bases that only deltas reference). The datastore lives in the
    /// parent of the chunk directory.
    fn raise_format(&self) -> Result<()> {
        if self.delta_format.load(Ordering::Acquire) {
            return Ok(());
        }
        let root = self.base.parent().unwrap_or(&self.base);
        let marker = root.join(MARKER_NAME);
        let found = fs::read_to_string(&marker).ctx(|| format!("reading {}", marker.display()))?;
        if found != DELTA_MARKER_CONTENT {
            write_atomic(self.tmp.path(), &marker, DELTA_MARKER_CONTENT.as_bytes())?;
        }
        self.delta_format.store(true, Ordering::Release);
        Ok(())
    }

    /// Verify's quarantine of a chunk kept as a delta: whichever file of
    /// its chain is damaged is moved aside (the delta's own, or the first
    /// damaged link below it), so that the next backup holding the data
    /// stores it whole again.
    pub(super) fn quarantine_delta(&self, digest: &Digest) -> Result<Option<String>> {
        // Down the chain: the first file that does not decode is moved.
        let mut links = Vec::new();
        let mut cur = *digest;
        loop {
            if links.len() > MAX_CHAIN_READ {
                return Ok(None);
            }
            match self.link(&cur) {
                Ok(Some(Link::Whole)) if cur == *digest => return Ok(None),
                Ok(Some(Link::Whole)) => {
                    if let Some(moved) = self.quarantine(&cur, ChunkClass::Plain)? {
                        return Ok(Some(moved));
                    }
                    break;
                }
                Ok(Some(Link::Delta(h))) => match self.read_delta(&cur) {
                    Ok(_) => {
                        links.push(cur);
                        cur = h.base;
                    }
                    Err(Error::ChunkCorrupt { .. }) => return self.set_aside_delta(&cur),
                    Err(_) => return Ok(None),
                },
                Err(Error::ChunkCorrupt { .. }) => return self.set_aside_delta(&cur),
                _ => return Ok(None),
            }
        }
        // Every file decodes and the root checks: up the chain, the first
        // delta that does not rebuild its own data is the damaged one.
        for link in links.iter().rev() {
            if let Some(moved) = self.set_aside_delta(link)? {
                return Ok(Some(moved));
            }
        }
        Ok(None)
    }

    /// Moves a delta file found damaged to `.bad/`, under its prefix's
    /// exclusive lock, after checking it once more there: unreadable, or
    /// rebuilding to data that does not hash to its name.
    fn set_aside_delta(&self, digest: &Digest) -> Result<Option<String>> {
        let _excl = self.locks.exclusive_prefix(Self::prefix(digest))?;
        let damaged = match self.read_delta(digest) {
            Err(Error::ChunkCorrupt { .. }) => true,
            Err(_) => false,
            // Its own file decodes: does it rebuild its data? (Links
            // below it were checked first, so a failure here is its own.)
            Ok(_) => match self.load_delta(digest) {
                Ok(data) => Digest::of(&data) != *digest,
                Err(Error::ChunkCorrupt { .. }) => true,
                Err(_) => false,
            },
        };
        if !damaged {
            return Ok(None);
        }
        let path = self.delta_path(digest);
        self.move_aside(&path, digest).map(Some)
    }
}

/// A chunk unreadable because of its base: the chunk is what is damaged
/// for its readers, and the reason names the base.
/// An I/O error stays one (it may pass; verify tells the two apart).
fn base_error(digest: &Digest, base: &Digest, e: Error) -> Error {
    let reason = match e {
        Error::ChunkCorrupt { reason, .. } => reason,
        Error::ChunkMissing(_) | Error::ChunkEncrypted(_) => "missing".into(),
        e => return e,
    };
    Error::ChunkCorrupt {
        digest: *digest,
        reason: format!("its delta base {base}: {reason}"),
    }
}
