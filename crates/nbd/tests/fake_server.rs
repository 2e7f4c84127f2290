//! The client against a scripted server on a socket pair: what the spec
//! lets a server send (replies split in several chunks, holes, errors,
//! several contexts) is handled, and what it forbids (chunks outside the
//! request, foreign cookies, lying lengths) is refused with a clear
//! error. `crates/cli/tests/nbd_source.rs` runs the real `qemu-nbd`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use hoard_nbd::wire::*;
use hoard_nbd::{Client, Error, Status};

const SIZE: u64 = 1 << 20;

fn be16(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}
fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}
fn be64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn opt_reply(s: &mut UnixStream, opt: u32, ty: u32, data: &[u8]) {
    let mut out = be64(REPLY_MAGIC).to_vec();
    out.extend_from_slice(&be32(opt));
    out.extend_from_slice(&be32(ty));
    out.extend_from_slice(&be32(data.len() as u32));
    out.extend_from_slice(data);
    s.write_all(&out).unwrap();
}

/// A structured reply chunk.
fn chunk(s: &mut UnixStream, flags: u16, ty: u16, cookie: u64, payload: &[u8]) {
    let mut out = be32(STRUCTURED_REPLY_MAGIC).to_vec();
    out.extend_from_slice(&be16(flags));
    out.extend_from_slice(&be16(ty));
    out.extend_from_slice(&be64(cookie));
    out.extend_from_slice(&be32(payload.len() as u32));
    out.extend_from_slice(payload);
    s.write_all(&out).unwrap();
}

/// A request as the server reads it: (command, cookie, offset, length).
fn request(s: &mut UnixStream) -> Option<(u16, u64, u64, u32)> {
    let mut r = [0u8; 28];
    s.read_exact(&mut r).ok()?;
    assert_eq!(&r[..4], &be32(REQUEST_MAGIC));
    Some((
        u16::from_be_bytes([r[6], r[7]]),
        u64::from_be_bytes(r[8..16].try_into().unwrap()),
        u64::from_be_bytes(r[16..24].try_into().unwrap()),
        u32::from_be_bytes(r[24..28].try_into().unwrap()),
    ))
}

/// Negotiates as a fixed-newstyle server with `contexts` (name, id) and
/// export "disk", then hands each request to `serve` until it says stop.
fn server(
    contexts: Vec<(&'static str, u32)>,
    mut serve: impl FnMut(&mut UnixStream, u16, u64, u64, u32) -> bool + Send + 'static,
) -> (Client, JoinHandle<()>) {
    let (mut s, c) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut hello = be64(INIT_MAGIC).to_vec();
        hello.extend_from_slice(&be64(OPTS_MAGIC));
        hello.extend_from_slice(&be16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
        s.write_all(&hello).unwrap();
        let mut flags = [0u8; 4];
        s.read_exact(&mut flags).unwrap();
        loop {
            let mut h = [0u8; 16];
            s.read_exact(&mut h).unwrap();
            let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
            let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).unwrap();
            match opt {
                OPT_STRUCTURED_REPLY => opt_reply(&mut s, opt, REP_ACK, &[]),
                OPT_SET_META_CONTEXT => {
                    for (name, id) in &contexts {
                        let mut d = be32(*id).to_vec();
                        d.extend_from_slice(name.as_bytes());
                        opt_reply(&mut s, opt, REP_META_CONTEXT, &d);
                    }
                    opt_reply(&mut s, opt, REP_ACK, &[]);
                }
                OPT_GO => {
                    let name_len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                    if &data[4..4 + name_len] != b"disk" {
                        opt_reply(&mut s, opt, (1 << 31) | 6, b"no such export");
                        continue;
                    }
                    let mut info = be16(INFO_EXPORT).to_vec();
                    info.extend_from_slice(&be64(SIZE));
                    info.extend_from_slice(&be16(1));
                    opt_reply(&mut s, opt, REP_INFO, &info);
                    opt_reply(&mut s, opt, REP_ACK, &[]);
                    break;
                }
                _ => opt_reply(&mut s, opt, (1 << 31) | 1, &[]),
            }
        }
        while let Some((cmd, cookie, offset, len)) = request(&mut s) {
            if cmd == CMD_DISC || !serve(&mut s, cmd, cookie, offset, len) {
                return;
            }
        }
    });
    let client = Client::handshake(
        Box::new(c),
        "disk",
        &["base:allocation".into(), "qemu:dirty-bitmap:b".into()],
    )
    .unwrap();
    (client, t)
}

fn data_at(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8)
        .collect()
}

#[test]
fn a_read_answered_in_several_chunks_out_of_order_with_a_hole() {
    let (mut c, t) = server(
        vec![("base:allocation", 1)],
        |s, cmd, cookie, offset, len| {
            assert_eq!(cmd, CMD_READ);
            let half = len as u64 / 2;
            // Second half first, as data; then the first half: a hole and data.
            let mut p = be64(offset + half).to_vec();
            p.extend_from_slice(&data_at(offset + half, (len as u64 - half) as usize));
            chunk(s, 0, REPLY_TYPE_OFFSET_DATA, cookie, &p);
            let mut h = be64(offset).to_vec();
            h.extend_from_slice(&be32(100));
            chunk(s, 0, REPLY_TYPE_OFFSET_HOLE, cookie, &h);
            let mut p = be64(offset + 100).to_vec();
            p.extend_from_slice(&data_at(offset + 100, (half - 100) as usize));
            chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, &p);
            true
        },
    );
    assert_eq!(c.size(), SIZE);
    assert!(c.has_context("base:allocation"));
    assert!(!c.has_context("qemu:dirty-bitmap:b"));
    let got = c.read(4096, 8192).unwrap();
    let mut want = data_at(4096, 8192);
    want[..100].fill(0);
    assert_eq!(got, want);
    c.disconnect();
    t.join().unwrap();
}

#[test]
fn block_status_of_the_asked_context_covers_the_range() {
    let (mut c, t) = server(
        vec![("base:allocation", 1), ("qemu:dirty-bitmap:b", 2)],
        |s, cmd, cookie, _offset, len| {
            assert_eq!(cmd, CMD_BLOCK_STATUS);
            // Both contexts answer, in separate chunks; the first extent
            // list covers less than asked, the client asks again.
            let mut a = be32(1).to_vec();
            a.extend_from_slice(&be32(4096));
            a.extend_from_slice(&be32(STATE_HOLE | STATE_ZERO));
            chunk(s, 0, REPLY_TYPE_BLOCK_STATUS, cookie, &a);
            let mut b = be32(2).to_vec();
            b.extend_from_slice(&be32(len.min(8192)));
            b.extend_from_slice(&be32(STATE_DIRTY));
            chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie, &b);
            true
        },
    );
    let st = c.block_status("qemu:dirty-bitmap:b", 0, 20_000).unwrap();
    assert_eq!(
        st,
        vec![
            Status {
                offset: 0,
                len: 8192,
                flags: STATE_DIRTY
            },
            Status {
                offset: 8192,
                len: 8192,
                flags: STATE_DIRTY
            },
            Status {
                offset: 16384,
                len: 20_000 - 16384,
                flags: STATE_DIRTY
            },
        ]
    );
    assert!(matches!(
        c.block_status("qemu:dirty-bitmap:other", 0, 10),
        Err(Error::Refused(_))
    ));
    drop(c);
    t.join().unwrap();
}

#[test]
fn errors_and_lies_are_clear_errors() {
    // An error chunk (with a message and offset) fails the read.
    let (mut c, _t) = server(vec![], |s, _cmd, cookie, offset, _len| {
        let mut e = be32(5).to_vec();
        e.extend_from_slice(&be16(7));
        e.extend_from_slice(b"bad sec");
        e.extend_from_slice(&be64(offset + 512));
        chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_ERROR_OFFSET, cookie, &e);
        true
    });
    let e = c.read(0, 4096).unwrap_err().to_string();
    assert!(
        e.contains("EIO") && e.contains("bad sec") && e.contains("512"),
        "{e}"
    );
    // A read past the end is refused before anything is sent.
    assert!(matches!(c.read(SIZE - 10, 20), Err(Error::Range { .. })));

    // Data for bytes outside the request.
    let (mut c, _t) = server(vec![], |s, _cmd, cookie, offset, len| {
        let mut p = be64(offset + 1).to_vec();
        p.extend_from_slice(&vec![1u8; len as usize]);
        chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, &p);
        true
    });
    let e = c.read(0, 4096).unwrap_err().to_string();
    assert!(e.contains("outside the request"), "{e}");

    // The same data twice, leaving a gap: the lengths add up, the
    // pieces do not tile the request.
    let (mut c, _t) = server(vec![], |s, _cmd, cookie, offset, len| {
        let mut p = be64(offset).to_vec();
        p.extend_from_slice(&vec![1u8; len as usize / 2]);
        chunk(s, 0, REPLY_TYPE_OFFSET_DATA, cookie, &p);
        chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, &p);
        true
    });
    let e = c.read(0, 4096).unwrap_err().to_string();
    assert!(e.contains("overlap"), "{e}");
    // After a protocol error the connection is not used again.
    let e = c.read(0, 10).unwrap_err().to_string();
    assert!(e.contains("unusable"), "{e}");

    // A reply that covers only part of the request.
    let (mut c, _t) = server(vec![], |s, _cmd, cookie, offset, _len| {
        let mut p = be64(offset).to_vec();
        p.extend_from_slice(&[1u8; 10]);
        chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, &p);
        true
    });
    let e = c.read(0, 4096).unwrap_err().to_string();
    assert!(e.contains("answered with 10"), "{e}");

    // Another request's cookie.
    let (mut c, _t) = server(vec![], |s, _cmd, cookie, _offset, _len| {
        chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie + 1, &[]);
        true
    });
    let e = c.read(0, 10).unwrap_err().to_string();
    assert!(e.contains("while waiting for"), "{e}");

    // A chunk that says it is 4 GiB long.
    let (mut c, _t) = server(vec![], |s, _cmd, cookie, _offset, _len| {
        let mut out = be32(STRUCTURED_REPLY_MAGIC).to_vec();
        out.extend_from_slice(&be16(REPLY_FLAG_DONE));
        out.extend_from_slice(&be16(REPLY_TYPE_OFFSET_DATA));
        out.extend_from_slice(&be64(cookie));
        out.extend_from_slice(&be32(u32::MAX));
        s.write_all(&out).unwrap();
        true
    });
    assert!(matches!(c.read(0, 10), Err(Error::Protocol(_))));

    // The server hangs up mid-reply.
    let (mut c, _t) = server(vec![], |s, _cmd, cookie, offset, _len| {
        let mut p = be64(offset).to_vec();
        p.extend_from_slice(&[1u8; 10]);
        let mut out = be32(STRUCTURED_REPLY_MAGIC).to_vec();
        out.extend_from_slice(&be16(REPLY_FLAG_DONE));
        out.extend_from_slice(&be16(REPLY_TYPE_OFFSET_DATA));
        out.extend_from_slice(&be64(cookie));
        out.extend_from_slice(&be32(4096 + 8));
        out.extend_from_slice(&p);
        s.write_all(&out).unwrap();
        false
    });
    assert!(matches!(c.read(0, 4096), Err(Error::Io { .. })));
}

#[test]
fn an_unknown_export_is_refused_by_name() {
    let (mut s, c) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut hello = be64(INIT_MAGIC).to_vec();
        hello.extend_from_slice(&be64(OPTS_MAGIC));
        hello.extend_from_slice(&be16(FLAG_FIXED_NEWSTYLE));
        s.write_all(&hello).unwrap();
        let mut flags = [0u8; 4];
        s.read_exact(&mut flags).unwrap();
        for _ in 0..2 {
            let mut h = [0u8; 16];
            s.read_exact(&mut h).unwrap();
            let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
            let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).unwrap();
            match opt {
                OPT_STRUCTURED_REPLY => opt_reply(&mut s, opt, (1 << 31) | 1, &[]),
                _ => opt_reply(&mut s, opt, (1 << 31) | 6, b"export 'nope' not found"),
            }
        }
    });
    let e = Client::handshake(Box::new(c), "nope", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown export") && e.contains("not found"),
        "{e}"
    );
    t.join().unwrap();
}
