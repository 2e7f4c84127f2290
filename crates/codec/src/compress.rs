//! Chunk compression: the zstd level and the heuristic that decides
//! whether a chunk is stored compressed at all.
//!
//! A chunk is compressed only when that saves space: chunks under
//! [`MIN_COMPRESS_SIZE`] are never tried, a chunk larger than four pieces
//! first has a sample of three [`SAMPLE_PIECE`] pieces (start, middle,
//! end) compressed, which must shrink by an eighth, so incompressible data
//! (media, encrypted or already compressed files) costs almost no
//! compression time; and the whole must shrink by a 32nd. Anything else is
//! stored raw. This module never decides the blob format; it returns zstd
//! frames.

use std::cell::RefCell;
use std::fmt;
use std::io::Cursor;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Chunks shorter than this are stored raw: the frame header and the
/// work are not worth the few bytes saved.
pub const MIN_COMPRESS_SIZE: usize = 512;
/// One of the three sample pieces compressed before a large chunk.
pub const SAMPLE_PIECE: usize = 16 << 10;
/// zstd level of [`Compression::default`] and of a bare `zstd`. Chosen by
/// measurement on data like the benchmark dataset (docs/encryption.md,
/// "Compression level"): level 3 stores about 8% fewer bytes than level 1
/// for about 40% more client CPU per chunk, which pays for itself in
/// upload time on links up to about 1 Gbit/s, and keeps the space today's
/// datastores use (their server compressed at level 3); negative levels
/// were slower than level 1 on that data and compressed less.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Levels accepted: zstd's fast negative levels down to -7 (below that
/// they barely compress) and 1..=22; 0 is refused because zstd reads it as
/// "its default", which is not ours.
pub const MIN_ZSTD_LEVEL: i32 = -7;
pub const MAX_ZSTD_LEVEL: i32 = 22;

/// How chunk payloads are compressed before they are stored or encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    /// zstd at this level (validated when parsed: see [`MIN_ZSTD_LEVEL`]).
    Zstd(i32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(DEFAULT_ZSTD_LEVEL)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd(level) => write!(f, "zstd:{level}"),
        }
    }
}

impl FromStr for Compression {
    type Err = Error;

    /// `none`, `zstd` (the default level) or `zstd:N`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") {
            return Ok(Compression::None);
        }
        if s.eq_ignore_ascii_case("zstd") {
            return Ok(Compression::default());
        }
        let bad = || {
            Error::CompressionParse(format!(
                "compression {s:?} is not `none`, `zstd` or `zstd:LEVEL`"
            ))
        };
        let (name, level) = s.split_once(':').ok_or_else(bad)?;
        if !name.eq_ignore_ascii_case("zstd") {
            return Err(bad());
        }
        let level: i32 = level.trim().parse().map_err(|_| bad())?;
        Compression::zstd(level)
    }
}

impl Compression {
    /// zstd at `level`, if it is one we accept.
    pub fn zstd(level: i32) -> Result<Self> {
        if level == 0 || !(MIN_ZSTD_LEVEL..=MAX_ZSTD_LEVEL).contains(&level) {
            return Err(Error::CompressionParse(format!(
                "zstd level {level} is outside {MIN_ZSTD_LEVEL}..=-1 and 1..={MAX_ZSTD_LEVEL}"
            )));
        }
        Ok(Compression::Zstd(level))
    }

    /// The zstd frame of `data` if it is worth storing compressed (see
    /// the module doc), else `None`.
    pub fn compress(self, data: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.compress_into(data, &mut out).then_some(out)
    }

    /// Appends the zstd frame of `data` to `out` and returns true if it is
    /// worth storing compressed; otherwise leaves `out` as it was and
    /// returns false. Writing into the caller's buffer lets the encrypted
    /// encoding compress straight behind its header, without a copy.
    pub fn compress_into(self, data: &[u8], out: &mut Vec<u8>) -> bool {
        let Compression::Zstd(level) = self else {
            return false;
        };
        if data.len() < MIN_COMPRESS_SIZE {
            return false;
        }
        if data.len() > 4 * SAMPLE_PIECE && !sample_shrinks(level, data) {
            return false;
        }
        let start = out.len();
        match zstd_append(level, data, out) {
            Some(n) if n > 0 && n < data.len() - data.len() / 32 => true,
            _ => {
                out.truncate(start);
                false
            }
        }
    }
}

/// Whether three pieces of `data` (start, middle, end) shrink by an
/// eighth together.
fn sample_shrinks(level: i32, data: &[u8]) -> bool {
    let mid = data.len() / 2 - SAMPLE_PIECE / 2;
    let mut sample = Vec::with_capacity(3 * SAMPLE_PIECE);
    for at in [0, mid, data.len() - SAMPLE_PIECE] {
        sample.extend_from_slice(&data[at..at + SAMPLE_PIECE]);
    }
    let mut z = Vec::new();
    matches!(zstd_append(level, &sample, &mut z), Some(n) if n <= sample.len() - sample.len() / 8)
}

thread_local! {
    /// One compressor per level used on this thread: a zstd context costs
    /// a few hundred KiB and a millisecond to set up, a chunk is compressed
    /// every few milliseconds.
    static COMPRESSORS: RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
}

/// Appends one zstd frame of `data` to `out`; returns its length, or
/// `None` if zstd failed (it does not on valid levels and enough room).
fn zstd_append(level: i32, data: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let start = out.len();
    out.reserve(zstd::zstd_safe::compress_bound(data.len()));
    COMPRESSORS.with(|cs| {
        let mut cs = cs.borrow_mut();
        let at = match cs.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                cs.push((level, zstd::bulk::Compressor::new(level).ok()?));
                cs.len() - 1
            }
        };
        // A cursor over the Vec makes zstd write into its spare capacity
        // after `start`, so the frame lands where the caller wants it.
        let mut cursor = Cursor::new(&mut *out);
        cursor.set_position(start as u64);
        cs[at].1.compress_to_buffer(data, &mut cursor).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, mut s: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    #[test]
    fn parse_and_display() {
        assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
        assert_eq!(
            "zstd".parse::<Compression>().unwrap(),
            Compression::Zstd(DEFAULT_ZSTD_LEVEL)
        );
        assert_eq!(
            "zstd:-3".parse::<Compression>().unwrap(),
            Compression::Zstd(-3)
        );
        assert_eq!(
            "ZSTD:19".parse::<Compression>().unwrap(),
            Compression::Zstd(19)
        );
        for c in [
            Compression::None,
            Compression::Zstd(7),
            Compression::Zstd(-1),
        ] {
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
        }
        for bad in [
            "zstd:0", "zstd:23", "zstd:-8", "zstd:x", "gzip:3", "lz4", "",
        ] {
            assert!(bad.parse::<Compression>().is_err(), "{bad}");
        }
    }

    #[test]
    fn compressible_data_is_compressed_and_decompresses() {
        let data: Vec<u8> = b"INFO backup chunk index snapshot\n"
            .iter()
            .cycle()
            .take(200_000)
            .copied()
            .collect();
        for c in [
            Compression::Zstd(-5),
            Compression::Zstd(1),
            Compression::Zstd(3),
        ] {
            let z = c.compress(&data).unwrap();
            assert!(z.len() < data.len() / 10);
            assert_eq!(zstd::bulk::decompress(&z, data.len()).unwrap(), data);
        }
        assert!(Compression::None.compress(&data).is_none());
    }

    #[test]
    fn compress_into_appends_or_leaves_the_buffer() {
        let mut out = b"prefix".to_vec();
        let data = vec![7u8; 10_000];
        assert!(Compression::default().compress_into(&data, &mut out));
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(zstd::bulk::decompress(&out[6..], 10_000).unwrap(), data);
        let mut out = b"prefix".to_vec();
        assert!(!Compression::default().compress_into(&noise(10_000, 1), &mut out));
        assert_eq!(out, b"prefix");
    }

    #[test]
    fn small_and_incompressible_chunks_stay_raw() {
        assert!(Compression::default().compress(&[0u8; 511]).is_none());
        assert!(Compression::default().compress(&[0u8; 512]).is_some());
        assert!(
            Compression::default()
                .compress(&noise(1 << 20, 9))
                .is_none()
        );
        // Random data with 10% zeros outside the sampled pieces (start,
        // middle, end): the sample does not shrink, so the whole is not
        // tried: the heuristic's price for skipping media cheaply.
        let mut data = noise(1 << 20, 3);
        data[100_000..200_000].fill(0);
        assert!(Compression::default().compress(&data).is_none());
        // Mostly compressible with random pieces: compressed.
        let mut data = vec![b'a'; 1 << 20];
        data[100_000..120_000].copy_from_slice(&noise(20_000, 5));
        assert!(Compression::default().compress(&data).is_some());
    }
}
