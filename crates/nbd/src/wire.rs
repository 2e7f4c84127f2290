//! The NBD protocol's messages as bytes: what a client sends and how it
//! reads what a server answers, with no I/O. Numbers and layouts are the
//! protocol specification's (`doc/proto.md` of the NBD project); only
//! what a reading client needs is here: fixed-newstyle negotiation with
//! `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_SET_META_CONTEXT` and
//! `NBD_OPT_GO`, and the `READ`, `BLOCK_STATUS` and `DISC` commands with
//! simple and structured replies. All integers are big-endian.

use crate::error::{Error, Result};

/// `NBDMAGIC`, the server's first eight bytes.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle negotiation, and the prefix of every option.
pub const OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
pub const CLIENT_NO_ZEROES: u32 = 2;

/// Options.
pub const OPT_ABORT: u32 = 2;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types; errors have bit 31 set.
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR_BIT: u32 = 1 << 31;

/// `NBD_INFO_EXPORT` and `NBD_INFO_BLOCK_SIZE`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_DISC: u16 = 2;
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Structured reply chunk flag and types.
pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_ERROR_BIT | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_ERROR_BIT | 2;

/// `base:allocation` status bits.
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:NAME` status bit.
pub const STATE_DIRTY: u32 = 1;

/// Longest string (export or context name) the spec allows.
pub const MAX_STRING: usize = 4096;
/// Largest option reply a client reads: the spec bounds none, so this
/// does (an export's description or a context name fit many times).
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// Largest read a client asks for: the spec's default maximum payload.
pub const MAX_READ: u32 = 32 * 1024 * 1024;
/// Largest structured reply chunk read: one read's data and its offset.
pub const MAX_CHUNK_PAYLOAD: u32 = MAX_READ + 8;

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Reads big-endian numbers from a byte slice, failing on a short one.
pub struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, what }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Protocol(format!(
                "{} is {} bytes short",
                self.what,
                n - self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub fn rest(self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// An option: `IHAVEOPT`, option, length, data.
pub fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.len());
    put_u64(&mut out, OPTS_MAGIC);
    put_u32(&mut out, opt);
    put_u32(&mut out, data.len() as u32);
    out.extend_from_slice(data);
    out
}

/// `NBD_OPT_SET_META_CONTEXT` for `export`, asking for `contexts`.
pub fn set_meta_context(export: &str, contexts: &[String]) -> Vec<u8> {
    let mut data = Vec::new();
    put_u32(&mut data, export.len() as u32);
    data.extend_from_slice(export.as_bytes());
    put_u32(&mut data, contexts.len() as u32);
    for c in contexts {
        put_u32(&mut data, c.len() as u32);
        data.extend_from_slice(c.as_bytes());
    }
    option(OPT_SET_META_CONTEXT, &data)
}

/// `NBD_OPT_GO` for `export`, asking for its block size constraints.
pub fn go(export: &str) -> Vec<u8> {
    let mut data = Vec::new();
    put_u32(&mut data, export.len() as u32);
    data.extend_from_slice(export.as_bytes());
    put_u16(&mut data, 1);
    put_u16(&mut data, INFO_BLOCK_SIZE);
    option(OPT_GO, &data)
}

/// The fixed part of an option reply (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReply {
    pub option: u32,
    pub reply: u32,
    pub len: u32,
}

impl OptionReply {
    pub const SIZE: usize = 20;

    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut c = Cursor::new(b, "an option reply header");
        let magic = c.u64()?;
        if magic != REPLY_MAGIC {
            return Err(Error::Protocol(format!(
                "option reply magic {magic:#x}, expected {REPLY_MAGIC:#x}"
            )));
        }
        let r = OptionReply {
            option: c.u32()?,
            reply: c.u32()?,
            len: c.u32()?,
        };
        if r.len > MAX_OPTION_REPLY {
            return Err(Error::Protocol(format!(
                "an option reply of {} bytes (at most {MAX_OPTION_REPLY})",
                r.len
            )));
        }
        Ok(r)
    }

    pub fn is_error(&self) -> bool {
        self.reply & REP_ERR_BIT != 0
    }
}

/// The server's words for an option it refused.
pub fn option_error(opt: u32, reply: u32, data: &[u8]) -> Error {
    let name = match reply & !REP_ERR_BIT {
        1 => "unsupported",
        2 => "refused by policy",
        3 => "invalid",
        4 => "not supported on this platform",
        5 => "TLS required",
        6 => "unknown export",
        7 => "server shutting down",
        8 => "block size required",
        9 => "request too big",
        _ => "refused",
    };
    let text = String::from_utf8_lossy(data);
    Error::Refused(format!(
        "option {opt}: {name}{}{}",
        if text.is_empty() { "" } else { ": " },
        text
    ))
}

/// What `NBD_REP_INFO` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info {
    Export { size: u64, flags: u16 },
    BlockSize { min: u32, preferred: u32, max: u32 },
    Other(u16),
}

pub fn decode_info(data: &[u8]) -> Result<Info> {
    let mut c = Cursor::new(data, "an NBD_REP_INFO");
    Ok(match c.u16()? {
        INFO_EXPORT => Info::Export {
            size: c.u64()?,
            flags: c.u16()?,
        },
        INFO_BLOCK_SIZE => Info::BlockSize {
            min: c.u32()?,
            preferred: c.u32()?,
            max: c.u32()?,
        },
        other => Info::Other(other),
    })
}

/// What `NBD_REP_META_CONTEXT` says: the id the server gave a context.
pub fn decode_meta_context(data: &[u8]) -> Result<(u32, String)> {
    let mut c = Cursor::new(data, "an NBD_REP_META_CONTEXT");
    let id = c.u32()?;
    let name = c.rest();
    if name.len() > MAX_STRING {
        return Err(Error::Protocol("a context name over 4096 bytes".into()));
    }
    Ok((id, String::from_utf8_lossy(name).into_owned()))
}

/// A transmission request (28 bytes).
pub fn request(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(28);
    put_u32(&mut out, REQUEST_MAGIC);
    put_u16(&mut out, flags);
    put_u16(&mut out, cmd);
    put_u64(&mut out, cookie);
    put_u64(&mut out, offset);
    put_u32(&mut out, len);
    out
}

/// The header of a reply: simple (16 bytes) or a structured chunk (20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    Simple {
        error: u32,
        cookie: u64,
    },
    Chunk {
        flags: u16,
        ty: u16,
        cookie: u64,
        len: u32,
    },
}

/// The magic a reply starts with tells its kind and size.
pub fn reply_header_size(magic: u32) -> Result<usize> {
    match magic {
        SIMPLE_REPLY_MAGIC => Ok(16),
        STRUCTURED_REPLY_MAGIC => Ok(20),
        other => Err(Error::Protocol(format!("reply magic {other:#x}"))),
    }
}

/// Decodes a reply header (its magic included).
pub fn decode_reply_header(b: &[u8]) -> Result<ReplyHeader> {
    let mut c = Cursor::new(b, "a reply header");
    match c.u32()? {
        SIMPLE_REPLY_MAGIC => Ok(ReplyHeader::Simple {
            error: c.u32()?,
            cookie: c.u64()?,
        }),
        STRUCTURED_REPLY_MAGIC => {
            let h = ReplyHeader::Chunk {
                flags: c.u16()?,
                ty: c.u16()?,
                cookie: c.u64()?,
                len: c.u32()?,
            };
            if let ReplyHeader::Chunk { len, .. } = h
                && len > MAX_CHUNK_PAYLOAD
            {
                return Err(Error::Protocol(format!(
                    "a reply chunk of {len} bytes (at most {MAX_CHUNK_PAYLOAD})"
                )));
            }
            Ok(h)
        }
        other => Err(Error::Protocol(format!("reply magic {other:#x}"))),
    }
}

/// One extent of a block status reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u32,
    pub flags: u32,
}

/// A structured reply chunk's payload, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkPayload<'a> {
    None,
    Data {
        offset: u64,
        data: &'a [u8],
    },
    Hole {
        offset: u64,
        len: u32,
    },
    BlockStatus {
        context: u32,
        extents: Vec<Extent>,
    },
    Error {
        code: u32,
        message: String,
        offset: Option<u64>,
    },
    /// A type this client does not know; the spec says a client may
    /// ignore non-error ones.
    Unknown(u16),
}

/// Decodes the payload of a structured reply chunk of type `ty`.
pub fn decode_chunk(ty: u16, payload: &[u8]) -> Result<ChunkPayload<'_>> {
    let mut c = Cursor::new(payload, "a structured reply chunk");
    let out = match ty {
        REPLY_TYPE_NONE => ChunkPayload::None,
        REPLY_TYPE_OFFSET_DATA => {
            let offset = c.u64()?;
            let data = c.rest();
            if data.is_empty() {
                return Err(Error::Protocol(
                    "an empty NBD_REPLY_TYPE_OFFSET_DATA".into(),
                ));
            }
            return Ok(ChunkPayload::Data { offset, data });
        }
        REPLY_TYPE_OFFSET_HOLE => {
            let offset = c.u64()?;
            let len = c.u32()?;
            if len == 0 {
                return Err(Error::Protocol(
                    "an empty NBD_REPLY_TYPE_OFFSET_HOLE".into(),
                ));
            }
            ChunkPayload::Hole { offset, len }
        }
        REPLY_TYPE_BLOCK_STATUS => {
            let context = c.u32()?;
            let rest = c.rest();
            if rest.is_empty() || !rest.len().is_multiple_of(8) {
                return Err(Error::Protocol(format!(
                    "a block status reply of {} bytes of extents",
                    rest.len()
                )));
            }
            let extents = rest
                .chunks_exact(8)
                .map(|e| Extent {
                    len: u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
                    flags: u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
                })
                .collect();
            return Ok(ChunkPayload::BlockStatus { context, extents });
        }
        REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
            let code = c.u32()?;
            let n = c.u16()? as usize;
            let message = String::from_utf8_lossy(c.take(n)?).into_owned();
            let offset = if ty == REPLY_TYPE_ERROR_OFFSET {
                Some(c.u64()?)
            } else {
                None
            };
            ChunkPayload::Error {
                code,
                message,
                offset,
            }
        }
        other if other & REPLY_TYPE_ERROR_BIT != 0 => {
            // An error type this client does not know: still an error.
            let code = c.u32().unwrap_or(0);
            ChunkPayload::Error {
                code,
                message: format!("error reply of type {other}"),
                offset: None,
            }
        }
        other => return Ok(ChunkPayload::Unknown(other)),
    };
    if !c.is_empty() && !matches!(out, ChunkPayload::Error { .. }) {
        return Err(Error::Protocol(format!(
            "a structured reply chunk of type {ty} with trailing bytes"
        )));
    }
    Ok(out)
}

/// The name of an errno the spec lets servers send.
pub fn errno_name(code: u32) -> &'static str {
    match code {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_and_request_layouts() {
        let go = go("disk");
        assert_eq!(&go[..8], b"IHAVEOPT");
        assert_eq!(u32::from_be_bytes(go[8..12].try_into().unwrap()), OPT_GO);
        assert_eq!(
            u32::from_be_bytes(go[12..16].try_into().unwrap()),
            4 + 4 + 2 + 2
        );
        assert_eq!(&go[20..24], b"disk");
        let r = request(0, CMD_READ, 7, 4096, 512);
        assert_eq!(r.len(), 28);
        assert_eq!(&r[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(u64::from_be_bytes(r[8..16].try_into().unwrap()), 7);
        assert_eq!(u64::from_be_bytes(r[16..24].try_into().unwrap()), 4096);
    }

    #[test]
    fn structured_chunks_decode_and_lies_are_refused() {
        let mut bs = vec![0, 0, 0, 1];
        bs.extend_from_slice(&[0, 0, 16, 0, 0, 0, 0, 3]);
        match decode_chunk(REPLY_TYPE_BLOCK_STATUS, &bs).unwrap() {
            ChunkPayload::BlockStatus { context, extents } => {
                assert_eq!(context, 1);
                assert_eq!(
                    extents,
                    vec![Extent {
                        len: 4096,
                        flags: STATE_HOLE | STATE_ZERO
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(decode_chunk(REPLY_TYPE_BLOCK_STATUS, &bs[..7]).is_err());
        let mut err = 5u32.to_be_bytes().to_vec();
        err.extend_from_slice(&3u16.to_be_bytes());
        err.extend_from_slice(b"bad");
        assert_eq!(
            decode_chunk(REPLY_TYPE_ERROR, &err).unwrap(),
            ChunkPayload::Error {
                code: 5,
                message: "bad".into(),
                offset: None
            }
        );
        // A message length beyond the payload.
        err[5] = 200;
        assert!(decode_chunk(REPLY_TYPE_ERROR, &err).is_err());
        assert!(decode_chunk(REPLY_TYPE_OFFSET_HOLE, &[0; 12]).is_err());
        let mut h = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        h.extend_from_slice(&[0, 1, 0, 1]);
        h.extend_from_slice(&9u64.to_be_bytes());
        h.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            decode_reply_header(&h).is_err(),
            "a lying length is refused"
        );
    }
}
