//! A small, blocking NBD client: the fixed-newstyle handshake, then one
//! request at a time. Blocking because its one user, the image backup's
//! reader thread, reads in order and already runs on a thread of its own;
//! the hashing and uploading it feeds run in parallel behind it.
//!
//! What it implements of the protocol (`doc/proto.md` of the NBD
//! project): fixed newstyle negotiation (oldstyle is refused), the
//! options `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_SET_META_CONTEXT` and
//! `NBD_OPT_GO` (with `NBD_INFO_BLOCK_SIZE`); the commands `READ`,
//! `BLOCK_STATUS` and `DISC`; simple replies, and structured replies in
//! any number of chunks (data, holes, block status, errors, in any
//! order). Not implemented: TLS, writes, extended headers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::uri::{Endpoint, NbdUri};
use crate::wire::{self, ChunkPayload, Info, OptionReply, ReplyHeader};

/// How long a reply may take before the export counts as stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest block status range asked at once.
const MAX_STATUS_RANGE: u64 = 1 << 30;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Reply chunks one request may get: far more than any server sends
/// (one per extent of a 32 MiB read at 512 bytes), and a bound on one
/// that never says it is done.
const MAX_CHUNKS_PER_REPLY: u32 = 1 << 17;
/// Meta context replies a handshake takes.
const MAX_CONTEXTS: usize = 64;

/// A byte stream to an NBD server.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One extent of a block status answer, in absolute offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub offset: u64,
    pub len: u64,
    pub flags: u32,
}

/// A connection to one export, after the handshake.
pub struct Client {
    sock: Box<dyn Stream>,
    size: u64,
    structured: bool,
    /// Meta contexts the server agreed to, by name.
    contexts: HashMap<String, u32>,
    max_read: u32,
    cookie: u64,
    /// An error left the stream in an unknown state: nothing more is
    /// sent on it.
    broken: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("size", &self.size)
            .field("structured", &self.structured)
            .field("contexts", &self.contexts)
            .finish()
    }
}

impl Client {
    /// Connects to the export `uri` names and negotiates; asks for the
    /// meta contexts `base:allocation` and, if the URI names a bitmap,
    /// `qemu:dirty-bitmap:NAME`.
    pub fn connect(uri: &NbdUri) -> Result<Client> {
        let sock: Box<dyn Stream> = match &uri.endpoint {
            Endpoint::Tcp { host, port } => {
                let unreachable = |e: std::io::Error| Error::Connect(format!("{host}:{port}: {e}"));
                let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port))
                    .map_err(unreachable)?;
                let mut last = None;
                let mut sock = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            sock = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = sock.ok_or_else(|| {
                    unreachable(last.unwrap_or_else(|| std::io::Error::other("no address")))
                })?;
                s.set_nodelay(true).ok();
                s.set_read_timeout(Some(REPLY_TIMEOUT)).ok();
                Box::new(s)
            }
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path)
                    .map_err(|e| Error::Connect(format!("{}: {e}", path.display())))?;
                s.set_read_timeout(Some(REPLY_TIMEOUT)).ok();
                Box::new(s)
            }
        };
        let mut contexts = vec![ALLOCATION.to_string()];
        if let Some(b) = &uri.bitmap {
            contexts.push(bitmap_context(b));
        }
        Client::handshake(sock, &uri.export, &contexts)
    }

    /// The handshake over an open stream.
    pub fn handshake(
        mut sock: Box<dyn Stream>,
        export: &str,
        contexts: &[String],
    ) -> Result<Client> {
        let mut head = [0u8; 18];
        read_exact(&mut sock, &mut head, "the server's greeting")?;
        let mut c = wire::Cursor::new(&head, "the greeting");
        if c.u64()? != wire::INIT_MAGIC {
            return Err(Error::Protocol("not an NBD server (no NBDMAGIC)".into()));
        }
        if c.u64()? != wire::OPTS_MAGIC {
            return Err(Error::Protocol(
                "the server speaks oldstyle negotiation, which is not supported".into(),
            ));
        }
        let flags = c.u16()?;
        if flags & wire::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(Error::Protocol(
                "the server does not offer fixed newstyle negotiation".into(),
            ));
        }
        let mut cflags = wire::CLIENT_FIXED_NEWSTYLE;
        if flags & wire::FLAG_NO_ZEROES != 0 {
            cflags |= wire::CLIENT_NO_ZEROES;
        }
        write_all(&mut sock, &cflags.to_be_bytes())?;

        // Structured replies: needed for block status, and they let the
        // server send holes as holes.
        write_all(&mut sock, &wire::option(wire::OPT_STRUCTURED_REPLY, &[]))?;
        let (r, data) = read_option_reply(&mut sock, wire::OPT_STRUCTURED_REPLY)?;
        let structured = match r.reply {
            wire::REP_ACK => true,
            _ if r.is_error() => false,
            other => return Err(unexpected_reply(r.option, other, &data)),
        };

        let mut agreed = HashMap::new();
        if structured && !contexts.is_empty() {
            write_all(&mut sock, &wire::set_meta_context(export, contexts))?;
            loop {
                let (r, data) = read_option_reply(&mut sock, wire::OPT_SET_META_CONTEXT)?;
                match r.reply {
                    wire::REP_META_CONTEXT => {
                        let (id, name) = wire::decode_meta_context(&data)?;
                        if !contexts.contains(&name) {
                            return Err(Error::Protocol(format!(
                                "meta context {name} was not asked for"
                            )));
                        }
                        if agreed.values().any(|&v| v == id) || agreed.len() >= MAX_CONTEXTS {
                            return Err(Error::Protocol(format!(
                                "meta context id {id} given twice"
                            )));
                        }
                        agreed.insert(name, id);
                    }
                    wire::REP_ACK => break,
                    // Meta contexts are optional: without them every
                    // block counts as allocated and dirty.
                    _ if r.is_error() => break,
                    other => return Err(unexpected_reply(r.option, other, &data)),
                }
            }
        }

        write_all(&mut sock, &wire::go(export))?;
        let mut size = None;
        let mut max_read = wire::MAX_READ;
        loop {
            let (r, data) = read_option_reply(&mut sock, wire::OPT_GO)?;
            match r.reply {
                wire::REP_INFO => match wire::decode_info(&data)? {
                    Info::Export { size: s, .. } => size = Some(s),
                    Info::BlockSize { max, .. } => {
                        max_read = max.clamp(4096, wire::MAX_READ);
                    }
                    Info::Other(_) => {}
                },
                wire::REP_ACK => break,
                _ if r.is_error() => return Err(wire::option_error(r.option, r.reply, &data)),
                other => return Err(unexpected_reply(r.option, other, &data)),
            }
        }
        let size =
            size.ok_or_else(|| Error::Protocol("the server never said the export's size".into()))?;
        Ok(Client {
            sock,
            size,
            structured,
            contexts: agreed,
            max_read,
            cookie: 0,
            broken: false,
        })
    }

    /// Runs one request; any protocol or I/O error breaks the client, so
    /// that nothing is read from a stream out of step.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        if self.broken {
            return Err(Error::Protocol(
                "an earlier error left the connection unusable".into(),
            ));
        }
        let r = f(self);
        if matches!(r, Err(Error::Protocol(_) | Error::Io { .. })) {
            self.broken = true;
        }
        r
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the server agreed to meta context `name`.
    pub fn has_context(&self, name: &str) -> bool {
        self.contexts.contains_key(name)
    }

    fn next_cookie(&mut self) -> u64 {
        self.cookie = self.cookie.wrapping_add(1);
        self.cookie
    }

    /// Reads `len` bytes at `offset`, in requests the server accepts.
    pub fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        check_range(offset, len as u64, self.size)?;
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(self.max_read as usize);
            let at = offset + done as u64;
            self.guarded(|c| c.read_into(at, &mut out[done..done + n]))?;
            done += n;
        }
        Ok(out)
    }

    fn read_into(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let cookie = self.next_cookie();
        let len = buf.len() as u32;
        write_all(
            &mut self.sock,
            &wire::request(0, wire::CMD_READ, cookie, offset, len),
        )?;
        // The pieces data and hole chunks cover: they must tile the
        // request exactly, without overlap.
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        let mut failure = None;
        for _ in 0..MAX_CHUNKS_PER_REPLY {
            match read_reply_header(&mut self.sock)? {
                ReplyHeader::Simple { error, cookie: c } => {
                    check_cookie(c, cookie)?;
                    if error != 0 {
                        return Err(server_error(error, "", Some(offset)));
                    }
                    read_exact(&mut self.sock, buf, "read data")?;
                    return Ok(());
                }
                ReplyHeader::Chunk {
                    flags,
                    ty,
                    cookie: c,
                    len: plen,
                } => {
                    check_cookie(c, cookie)?;
                    if ty == wire::REPLY_TYPE_OFFSET_DATA {
                        // Read straight into place, after its offset.
                        if plen < 9 {
                            return Err(Error::Protocol("a data chunk without data".into()));
                        }
                        let mut off = [0u8; 8];
                        read_exact(&mut self.sock, &mut off, "a data chunk")?;
                        let at = u64::from_be_bytes(off);
                        let n = (plen - 8) as u64;
                        let range = place(at, n, offset, buf.len() as u64)?;
                        pieces.push((range.start as u64, range.end as u64));
                        read_exact(&mut self.sock, &mut buf[range], "read data")?;
                    } else {
                        let payload = read_payload(&mut self.sock, plen)?;
                        match wire::decode_chunk(ty, &payload)? {
                            ChunkPayload::Hole { offset: at, len: n } => {
                                let range = place(at, n as u64, offset, buf.len() as u64)?;
                                pieces.push((range.start as u64, range.end as u64));
                                buf[range].fill(0);
                            }
                            ChunkPayload::Error {
                                code,
                                message,
                                offset: at,
                            } => {
                                failure.get_or_insert(server_error(code, &message, at));
                            }
                            ChunkPayload::None | ChunkPayload::Unknown(_) => {}
                            other => {
                                return Err(Error::Protocol(format!(
                                    "a read answered with {other:?}"
                                )));
                            }
                        }
                    }
                    if flags & wire::REPLY_FLAG_DONE != 0 {
                        if let Some(e) = failure {
                            return Err(e);
                        }
                        return check_tiling(pieces, buf.len() as u64, offset);
                    }
                }
            }
        }
        Err(Error::Protocol(format!(
            "a reply of more than {MAX_CHUNKS_PER_REPLY} chunks"
        )))
    }

    /// The status of `[offset, offset + len)` in meta context `context`,
    /// as extents covering exactly that range. A server that did not
    /// agree to the context is an error: callers ask first.
    pub fn block_status(&mut self, context: &str, offset: u64, len: u64) -> Result<Vec<Status>> {
        check_range(offset, len, self.size)?;
        let id = *self
            .contexts
            .get(context)
            .ok_or_else(|| Error::Refused(format!("the server did not agree to {context}")))?;
        let end = offset + len;
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let ask = (end - at).min(MAX_STATUS_RANGE);
            let extents = self.guarded(|c| c.status_once(id, at, ask))?;
            let mut got = 0u64;
            for e in extents {
                if e.len == 0 {
                    return Err(Error::Protocol("an empty block status extent".into()));
                }
                let n = (e.len as u64).min(end - at);
                out.push(Status {
                    offset: at,
                    len: n,
                    flags: e.flags,
                });
                at += n;
                got += n;
                if at == end {
                    break;
                }
            }
            if got == 0 {
                return Err(Error::Protocol(
                    "a block status reply with no extent".into(),
                ));
            }
        }
        Ok(out)
    }

    fn status_once(&mut self, id: u32, offset: u64, len: u64) -> Result<Vec<wire::Extent>> {
        let cookie = self.next_cookie();
        write_all(
            &mut self.sock,
            &wire::request(0, wire::CMD_BLOCK_STATUS, cookie, offset, len as u32),
        )?;
        let mut extents = None;
        let mut failure = None;
        for _ in 0..MAX_CHUNKS_PER_REPLY {
            match read_reply_header(&mut self.sock)? {
                ReplyHeader::Simple { error, cookie: c } => {
                    check_cookie(c, cookie)?;
                    return Err(if error != 0 {
                        server_error(error, "", Some(offset))
                    } else {
                        Error::Protocol("block status answered with a simple reply".into())
                    });
                }
                ReplyHeader::Chunk {
                    flags,
                    ty,
                    cookie: c,
                    len: plen,
                } => {
                    check_cookie(c, cookie)?;
                    let payload = read_payload(&mut self.sock, plen)?;
                    match wire::decode_chunk(ty, &payload)? {
                        ChunkPayload::BlockStatus {
                            context,
                            extents: e,
                        } if context == id => {
                            extents = Some(e);
                        }
                        // Another context's answer: not asked, ignored.
                        ChunkPayload::BlockStatus { .. } => {}
                        ChunkPayload::Error {
                            code,
                            message,
                            offset: at,
                        } => {
                            failure.get_or_insert(server_error(code, &message, at));
                        }
                        ChunkPayload::None | ChunkPayload::Unknown(_) => {}
                        other => {
                            return Err(Error::Protocol(format!(
                                "block status answered with {other:?}"
                            )));
                        }
                    }
                    if flags & wire::REPLY_FLAG_DONE != 0 {
                        if let Some(e) = failure {
                            return Err(e);
                        }
                        return extents.ok_or_else(|| {
                            Error::Protocol("block status answered without extents".into())
                        });
                    }
                }
            }
        }
        Err(Error::Protocol(format!(
            "a reply of more than {MAX_CHUNKS_PER_REPLY} chunks"
        )))
    }

    /// Says goodbye (`NBD_CMD_DISC`); the server closes the connection.
    pub fn disconnect(mut self) {
        let cookie = self.next_cookie();
        let _ = write_all(
            &mut self.sock,
            &wire::request(0, wire::CMD_DISC, cookie, 0, 0),
        );
    }
}

/// The meta context that tells holes and zeros from data.
pub const ALLOCATION: &str = "base:allocation";

/// The meta context of QEMU's dirty bitmap `name`.
pub fn bitmap_context(name: &str) -> String {
    format!("qemu:dirty-bitmap:{name}")
}

fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::Range { offset, len, size }),
    }
}

/// The pieces of a read's reply (offsets in the request) must cover
/// `[0, len)` exactly once.
fn check_tiling(mut pieces: Vec<(u64, u64)>, len: u64, offset: u64) -> Result<()> {
    pieces.sort_unstable();
    let mut next = 0;
    for (start, end) in pieces {
        if start != next {
            return Err(Error::Protocol(format!(
                "a read of {len} bytes at {offset} was answered with {} at {start}",
                if start < next { "an overlap" } else { "a gap" }
            )));
        }
        next = end;
    }
    if next != len {
        return Err(Error::Protocol(format!(
            "a read of {len} bytes at {offset} was answered with {next}"
        )));
    }
    Ok(())
}

fn check_cookie(got: u64, want: u64) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Protocol(format!(
            "a reply for request {got} while waiting for {want}"
        )))
    }
}

/// Where a chunk covering `[at, at + n)` goes in a buffer for
/// `[offset, offset + len)`; a chunk outside the request is refused.
fn place(at: u64, n: u64, offset: u64, len: u64) -> Result<std::ops::Range<usize>> {
    match at.checked_sub(offset) {
        Some(start) if start.checked_add(n).is_some_and(|e| e <= len) => {
            Ok(start as usize..(start + n) as usize)
        }
        _ => Err(Error::Protocol(format!(
            "a reply chunk for bytes {at}+{n} outside the request {offset}+{len}"
        ))),
    }
}

fn server_error(code: u32, message: &str, offset: Option<u64>) -> Error {
    Error::Server {
        code,
        name: wire::errno_name(code),
        message: message.to_string(),
        offset,
    }
}

fn unexpected_reply(option: u32, reply: u32, data: &[u8]) -> Error {
    let _ = data;
    Error::Protocol(format!("option {option} answered with reply type {reply}"))
}

fn read_exact(sock: &mut Box<dyn Stream>, buf: &mut [u8], what: &str) -> Result<()> {
    sock.read_exact(buf).map_err(|e| Error::Io {
        what: what.to_string(),
        source: e,
    })
}

fn write_all(sock: &mut Box<dyn Stream>, buf: &[u8]) -> Result<()> {
    sock.write_all(buf)
        .and_then(|_| sock.flush())
        .map_err(|e| Error::Io {
            what: "sending to the server".into(),
            source: e,
        })
}

fn read_option_reply(sock: &mut Box<dyn Stream>, opt: u32) -> Result<(OptionReply, Vec<u8>)> {
    let mut head = [0u8; OptionReply::SIZE];
    read_exact(sock, &mut head, "an option reply")?;
    let r = OptionReply::decode(&head)?;
    if r.option != opt {
        return Err(Error::Protocol(format!(
            "a reply to option {} while waiting for {opt}",
            r.option
        )));
    }
    let mut data = vec![0u8; r.len as usize];
    read_exact(sock, &mut data, "an option reply")?;
    Ok((r, data))
}

fn read_reply_header(sock: &mut Box<dyn Stream>) -> Result<ReplyHeader> {
    let mut head = [0u8; 20];
    read_exact(sock, &mut head[..4], "a reply")?;
    let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let size = wire::reply_header_size(magic)?;
    read_exact(sock, &mut head[4..size], "a reply")?;
    wire::decode_reply_header(&head[..size])
}

/// The largest chunk other than data: a block status of 1 GiB in 4 KiB
/// extents is 2 MiB.
const MAX_SMALL_CHUNK: u32 = 4 << 20;

fn read_payload(sock: &mut Box<dyn Stream>, len: u32) -> Result<Vec<u8>> {
    // Data chunks are read in place; any other chunk is small.
    if len > MAX_SMALL_CHUNK {
        return Err(Error::Protocol(format!(
            "a reply chunk of {len} bytes that is not data"
        )));
    }
    let mut payload = vec![0u8; len as usize];
    read_exact(sock, &mut payload, "a reply chunk")?;
    Ok(payload)
}
