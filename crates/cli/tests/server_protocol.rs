//! The real server on a loopback port, driven with raw packets the way a
//! client written from the seed alone would: every path of the version 1
//! contract and every error case of it.

mod common;

use bytes::Bytes;
use common::{
    Conn, Server, T0, count_files, create, download, dynamic, expect_created, fixed, hash_list,
    noise, pattern, upload,
};
use hoard_protocol::consts::MAX_PACKET_SIZE;
use hoard_protocol::*;
use hoard_types::{BackupId, BackupType, Digest};

/// Writes a complete 3-chunk fixed file; returns its path and data.
fn write_fixed(c: &mut Conn, stream: u8, id: &str, name: &str) -> (String, Vec<u8>) {
    let data = pattern(4096 * 2 + 1000, stream);
    c.send(
        stream,
        &create(
            BackupType::Vm,
            id,
            T0,
            BackupFlags::RAW,
            name,
            4096,
            data.len() as u64,
        ),
    );
    let path = expect_created(c, stream);
    let ds: Vec<Digest> = data.chunks(4096).map(|ch| upload(c, stream, ch)).collect();
    // Out of order and over two packets.
    c.send(stream, &fixed(&[(2, ds[2]), (0, ds[0])]));
    c.send(stream, &fixed(&[(1, ds[1])]));
    c.send(stream, &Message::BackupFinished);
    c.expect_ok(stream);
    (path, data)
}

#[test]
fn fixed_file_written_listed_and_read_back() {
    let server = Server::start();
    let mut c = server.connect();
    let (path, data) = write_fixed(&mut c, 1, "100", "drive-scsi0.img");
    assert_eq!(path, "vm/100/2019-04-23T12:23:36Z/drive-scsi0.img.fidx");
    let digests = hash_list(&mut c, 2, &path);
    assert_eq!(digests.len(), 3);
    assert_eq!(download(&mut c, 3, &digests), data);
    // The same stream ids can be reused once their requests are done.
    assert_eq!(hash_list(&mut c, 2, &path), digests);
    assert_eq!(download(&mut c, 3, &digests[1..]), data[4096..]);
    drop(c);
    // The manifest says what the snapshot holds.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let m = std::fs::read_to_string(
        server
            .datastore()
            .join("vm/100/2019-04-23T12:23:36Z/manifest.json"),
    )
    .unwrap();
    assert!(m.contains("\"state\": \"complete\""), "{m}");
    assert!(m.contains("\"raw\": true"), "{m}");
    assert_eq!(server.temp_files(), 0);
}

#[test]
fn dynamic_file_written_listed_and_read_back() {
    let server = Server::start();
    let mut c = server.connect();
    c.send(
        5,
        &create(
            BackupType::Ct,
            "101",
            T0,
            BackupFlags::DYNAMIC_CHUNKS | BackupFlags::EXCL,
            "root.pxar",
            0,
            0,
        ),
    );
    let path = expect_created(&mut c, 5);
    assert_eq!(path, "ct/101/2019-04-23T12:23:36Z/root.pxar.didx");
    let parts = [
        pattern(700, 1),
        pattern(3000, 2),
        pattern(1, 3),
        pattern(700, 1),
    ];
    let mut offset = 0u64;
    let mut entries = Vec::new();
    for p in &parts {
        let d = Digest::of(p);
        c.send(
            5,
            &Message::UploadChunk {
                digest: d,
                data: Bytes::copy_from_slice(p),
            },
        );
        entries.push((offset, d));
        offset += p.len() as u64;
    }
    // Pipelined: the entries follow the uploads without waiting for Ok.
    c.send(5, &dynamic(&entries[..2]));
    c.send(5, &dynamic(&entries[2..]));
    c.send(5, &Message::BackupFinished);
    for _ in 0..4 {
        c.expect_ok(5);
    }
    c.expect_ok(5);
    let digests = hash_list(&mut c, 6, &path);
    assert_eq!(digests, entries.iter().map(|e| e.1).collect::<Vec<_>>());
    assert_eq!(download(&mut c, 7, &digests), parts.concat());
    // Extension GetIndex: each chunk's end offset with its digest.
    let ends: Vec<(u64, Digest)> = parts
        .iter()
        .scan(0u64, |end, p| {
            *end += p.len() as u64;
            Some((*end, Digest::of(p)))
        })
        .collect();
    assert_eq!(get_index(&mut c, 8, &path), ends);
}

/// Extension GetIndex: the IndexPart entries until the empty one.
fn get_index(c: &mut Conn, stream: u8, path: &str) -> Vec<(u64, Digest)> {
    c.send(stream, &Message::GetIndex { path: path.into() });
    let mut out = Vec::new();
    loop {
        match c.recv() {
            (s, Message::IndexPart(l)) if s == stream => {
                if l.is_empty() {
                    return out;
                }
                out.extend(l.iter().map(|e| (e.offset, e.digest)));
            }
            other => panic!("expected IndexPart, got {other:?}"),
        }
    }
}

#[test]
fn extension_get_index_of_fixed_files_and_errors() {
    let server = Server::start();
    let mut c = server.connect();
    let (path, data) = write_fixed(&mut c, 1, "100", "d.img");
    let got = get_index(&mut c, 2, &path);
    let want: Vec<(u64, Digest)> = data
        .chunks(4096)
        .scan(0u64, |end, ch| {
            *end += ch.len() as u64;
            Some((*end, Digest::of(ch)))
        })
        .collect();
    assert_eq!(got, want);
    for bad in [
        "vm/100/2019-04-23T12:23:36Z/nope.didx",
        "../etc/passwd",
        "vm/100/2019-04-23T12:23:36Z/manifest.json",
    ] {
        c.send(3, &Message::GetIndex { path: bad.into() });
        c.expect_error(3, "");
    }
    // The connection goes on.
    assert_eq!(get_index(&mut c, 4, &path).len(), 3);
}

#[test]
fn framing_errors_close_the_connection() {
    let server = Server::start();
    // Length below the header.
    let mut c = server.connect();
    c.send_raw(&[9, 1, 5, 0, 0, 0]);
    c.expect_error(9, "below the 6-byte header");
    assert!(c.closed());
    // Length above 16 MiB: refused before anything is allocated.
    let mut c = server.connect();
    let too_long = (MAX_PACKET_SIZE + 1).to_le_bytes();
    c.send_raw(&[4, 7, too_long[0], too_long[1], too_long[2], too_long[3]]);
    c.expect_error(4, "exceeds the maximum");
    assert!(c.closed());
    // The server is still fine.
    let mut c = server.connect();
    write_fixed(&mut c, 1, "1", "a");
}

#[test]
fn unknown_and_server_only_types_are_errors() {
    let server = Server::start();
    let mut c = server.connect();
    c.send_raw(&[3, 13, 8, 0, 0, 0, 0xde, 0xad]);
    c.expect_error(3, "unknown packet type 13");
    c.send_raw(&[3, 255, 6, 0, 0, 0]);
    c.expect_error(3, "unknown packet type 255");
    let server_only = [
        Message::Hello {
            version: 1,
            features: Features::NONE,
        },
        Message::Ok,
        Message::Error {
            id: ErrorId::Generic,
            message: "x".into(),
        },
        Message::HashListPart(DigestList::default()),
        Message::Chunk {
            offset: 0,
            digest: Digest([1; 32]),
            data: Bytes::from_static(b"x"),
        },
        Message::BackupCreated { path: "x".into() },
        Message::SnapshotEntry(Bytes::new()),
    ];
    for m in server_only {
        c.send(8, &m);
        c.expect_error(8, "sent by the server only");
    }
    // The connection still works.
    write_fixed(&mut c, 1, "2", "b");
}

#[test]
fn upload_errors() {
    let server = Server::start();
    let mut c = server.connect();
    // Digest does not match the data.
    c.send(
        1,
        &Message::UploadChunk {
            digest: Digest([7; 32]),
            data: Bytes::from_static(b"data"),
        },
    );
    c.expect_error(1, "digest mismatch");
    // Empty chunk.
    c.send_raw(
        &[1, 7, 38, 0, 0, 0]
            .iter()
            .copied()
            .chain([0u8; 32])
            .collect::<Vec<_>>(),
    );
    c.expect_error(1, "at least 1 byte of data");
    // Larger than a downloadable chunk (but within the packet limit).
    let big = vec![1u8; hoard_types::MAX_CHUNK_SIZE + 1];
    c.send(
        2,
        &Message::UploadChunk {
            digest: Digest::of(&big),
            data: Bytes::from(big),
        },
    );
    c.expect_error(2, "outside 1..=16777170");
    // The largest allowed chunk is fine, twice (the second is cheap).
    let max = vec![2u8; hoard_types::MAX_CHUNK_SIZE];
    upload(&mut c, 3, &max);
    upload(&mut c, 3, &max);
    assert_eq!(count_files(&server.datastore().join(".chunks"), ""), 1);
    assert_eq!(server.temp_files(), 0);
}

#[test]
fn create_backup_errors() {
    let server = Server::start();
    let mut c = server.connect();
    let raw_create = |ty: u8, id: &[u8], ts: u64, flags: u8, name: &[u8], chunk: u32, size: u64| {
        let mut p = vec![ty, id.len() as u8];
        p.extend_from_slice(&ts.to_le_bytes());
        p.push(flags);
        p.push(name.len() as u8);
        p.extend_from_slice(&chunk.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(id);
        p.extend_from_slice(name);
        let mut pkt = vec![1u8, 8];
        pkt.extend_from_slice(&(6 + p.len() as u32).to_le_bytes());
        pkt.extend_from_slice(&p);
        pkt
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            raw_create(3, b"100", T0, 0, b"d", 4096, 1),
            "unknown backup type 3",
        ),
        (
            raw_create(0, b"../x", T0, 0, b"d", 4096, 1),
            "invalid backup id",
        ),
        (
            raw_create(0, b"", T0, 0, b"d", 4096, 1),
            "invalid backup id",
        ),
        (
            raw_create(0, b"100", T0, 0, b"a/b", 4096, 1),
            "invalid file name",
        ),
        (
            raw_create(0, b"100", T0, 0, b"..", 4096, 1),
            "invalid file name",
        ),
        (
            raw_create(0, b"100", T0, 0, b"a\0", 4096, 1),
            "invalid file name",
        ),
        (
            raw_create(0, b"100", T0, 0, b"", 4096, 1),
            "invalid file name",
        ),
        (
            raw_create(0, b"100", u64::MAX, 0, b"d", 4096, 1),
            "invalid snapshot time",
        ),
        (
            raw_create(0, b"100", T0, 0x40, b"d", 4096, 1),
            "unknown flags",
        ),
        (raw_create(0, b"100", T0, 0, b"d", 0, 1), "chunk size 0"),
        (
            raw_create(0, b"100", T0, 0, b"d", 1 << 24, 1),
            "chunk size 16777216",
        ),
        (
            raw_create(0, b"100", T0, 0, b"d", 4096, u64::MAX),
            "more than",
        ),
        (
            raw_create(0, b"100", T0, BackupFlags::DYNAMIC_CHUNKS, b"d", 0, 5),
            "file size must be 0",
        ),
    ];
    for (pkt, needle) in cases {
        c.send_raw(&pkt);
        c.expect_error(1, needle);
    }
    // Declared lengths that lie about the bytes that follow.
    let mut lying = raw_create(0, b"100", T0, 0, b"d", 4096, 1);
    lying[7] = 9; // id length 9, only 4 bytes follow
    c.send_raw(&lying);
    c.expect_error(1, "declares id length 9");
    let short = [1u8, 8, 10, 0, 0, 0, 0, 0, 0, 0];
    c.send_raw(&short);
    c.expect_error(1, "at least 24 bytes");
    // Nothing was created by any of them.
    assert!(!server.datastore().join("vm").exists());

    // A stream id already in use.
    c.send(
        1,
        &create(
            BackupType::Vm,
            "100",
            T0,
            BackupFlags::EXCL,
            "d",
            4096,
            4096,
        ),
    );
    expect_created(&mut c, 1);
    c.send(1, &create(BackupType::Vm, "100", T0, 0, "e", 4096, 4096));
    c.expect_error(1, "stream 1 is in use");
    // Same name twice at once on two streams.
    c.send(
        2,
        &create(
            BackupType::Vm,
            "100",
            T0,
            BackupFlags::EXCL,
            "f",
            4096,
            4096,
        ),
    );
    expect_created(&mut c, 2);
    c.send(3, &create(BackupType::Vm, "100", T0, 0, "f", 4096, 4096));
    assert_eq!(c.expect_error(3, "already being written"), ErrorId::Busy);
    drop(c);

    // EXCL on a snapshot that exists from an earlier connection.
    let mut c = server.connect();
    write_fixed(&mut c, 1, "200", "a");
    drop(c);
    // The server releases the snapshot when it sees the connection end.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut c = server.connect();
    c.send(
        1,
        &create(
            BackupType::Vm,
            "200",
            T0,
            BackupFlags::EXCL,
            "b",
            4096,
            4096,
        ),
    );
    c.expect_error(1, "exists already");
    // Without EXCL neither: a finished snapshot is immutable, so no file
    // is added to it or restarted in it.
    c.send(1, &create(BackupType::Vm, "200", T0, 0, "a", 4096, 4096));
    c.expect_error(1, "immutable");
    c.send(2, &create(BackupType::Vm, "200", T0, 0, "b", 4096, 4096));
    c.expect_error(2, "immutable");
    let m = std::fs::read_to_string(
        server
            .datastore()
            .join("vm/200/2019-04-23T12:23:36Z/manifest.json"),
    )
    .unwrap();
    assert!(m.contains("\"complete\"") && !m.contains("b.fidx"), "{m}");
}

#[test]
fn backup_data_errors() {
    let server = Server::start();
    let mut c = server.connect();
    let a = upload(&mut c, 1, &pattern(4096, 1));
    let small = upload(&mut c, 1, &pattern(10, 2));
    // Data on a stream with nothing open.
    c.send(4, &fixed(&[(0, a)]));
    c.expect_error(4, "has no backup open");
    c.send(4, &dynamic(&[(0, a)]));
    c.expect_error(4, "has no backup open");
    c.send(4, &Message::BackupFinished);
    c.expect_error(4, "has no backup open");

    c.send(1, &create(BackupType::Vm, "1", T0, 0, "img", 4096, 8192));
    expect_created(&mut c, 1);
    c.send(1, &fixed(&[(2, a)]));
    c.expect_error(1, "beyond the last chunk");
    // The Error cancelled the stream.
    c.send(1, &fixed(&[(0, a)]));
    c.expect_error(1, "has no backup open");

    c.send(1, &create(BackupType::Vm, "1", T0, 0, "img2", 4096, 8192));
    expect_created(&mut c, 1);
    c.send(1, &fixed(&[(0, Digest([0x42; 32]))]));
    c.expect_error(1, "is not in the chunk store");

    c.send(1, &create(BackupType::Vm, "1", T0, 0, "img3", 4096, 8192));
    expect_created(&mut c, 1);
    c.send(1, &fixed(&[(1, small)]));
    c.expect_error(1, "needs 4096");

    c.send(1, &create(BackupType::Vm, "1", T0, 0, "img4", 4096, 8192));
    expect_created(&mut c, 1);
    c.send_raw(
        &[1, 10, 6 + 39, 0, 0, 0]
            .iter()
            .copied()
            .chain([0u8; 39])
            .collect::<Vec<_>>(),
    );
    c.expect_error(1, "multiple of 40");

    c.send(1, &create(BackupType::Vm, "1", T0, 0, "img5", 4096, 8192));
    expect_created(&mut c, 1);
    c.send(1, &dynamic(&[(0, a)]));
    c.expect_error(1, "does not match the kind");

    // Fixed file with a slot never sent.
    c.send(1, &create(BackupType::Vm, "1", T0, 0, "img6", 4096, 8192));
    let path = expect_created(&mut c, 1);
    c.send(1, &fixed(&[(0, a)]));
    c.send(1, &Message::BackupFinished);
    c.expect_error(1, "chunk 1 was never sent");
    c.send(2, &Message::GetHashList { path });
    c.expect_error(2, "not a finished index");

    // Dynamic: gaps, overlaps, unknown chunks.
    for (entries, needle) in [
        (
            vec![(0, small), (11, small)],
            "does not continue the file at offset 10",
        ),
        (
            vec![(0, small), (9, small)],
            "does not continue the file at offset 10",
        ),
        (vec![(5, small)], "does not continue the file at offset 0"),
        (vec![(0, Digest([3; 32]))], "is not in the chunk store"),
    ] {
        c.send(
            1,
            &create(
                BackupType::Ct,
                "1",
                T0,
                BackupFlags::DYNAMIC_CHUNKS,
                "tree",
                0,
                0,
            ),
        );
        expect_created(&mut c, 1);
        c.send(1, &dynamic(&entries));
        c.expect_error(1, needle);
    }
    assert_eq!(count_files(&server.datastore(), ".fidx"), 0);
    assert_eq!(count_files(&server.datastore(), ".didx"), 0);
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Snapshots that ended with no file at all are removed again.
    assert!(
        !server
            .datastore()
            .join("vm/1/2019-04-23T12:23:36Z")
            .exists()
    );
    assert_eq!(server.temp_files(), 0);
}

#[test]
fn hash_list_and_download_errors() {
    let server = Server::start();
    let mut c = server.connect();
    let (path, _) = write_fixed(&mut c, 1, "9", "disk");
    for bad in [
        "../../etc/passwd",
        "/etc/passwd",
        "vm/9/2019-04-23T12:23:36Z/../../../../etc/passwd",
        "vm/9/2019-04-23T12:23:36Z/manifest.json",
        "vm/9/2019-04-23T12:23:36Z/nope.fidx",
        "vm/9/2019-04-23T12:23:37Z/disk.fidx",
        "",
    ] {
        c.send(2, &Message::GetHashList { path: bad.into() });
        c.expect_error(2, "not a finished index");
    }
    // u16 length that lies.
    c.send_raw(&[2, 3, 9, 0, 0, 0, 9, 0, b'a']);
    c.expect_error(2, "declares a path of 9 bytes");

    // A second hash list while one is running is Busy. Make the first one
    // long enough (a big index) that it is still running.
    let chunk = pattern(4096, 9);
    let d = upload(&mut c, 1, &chunk);
    let slots = 600_000u64; // > one HashListPart
    c.send(
        1,
        &create(BackupType::Vm, "9", T0, 0, "big", 4096, slots * 4096),
    );
    let big = expect_created(&mut c, 1);
    let entries: Vec<(u64, Digest)> = (0..slots).map(|i| (i, d)).collect();
    for part in entries.chunks(100_000) {
        c.send(1, &fixed(part));
    }
    c.send(1, &Message::BackupFinished);
    c.expect_ok(1);
    c.send(3, &Message::GetHashList { path: big.clone() });
    c.send(4, &Message::GetHashList { path: path.clone() });
    let mut got = 0usize;
    let mut busy = false;
    loop {
        match c.recv() {
            (3, Message::HashListPart(l)) if l.is_empty() => break,
            (3, Message::HashListPart(l)) => got += l.len(),
            (
                4,
                Message::Error {
                    id: ErrorId::Busy, ..
                },
            ) => busy = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(busy, "second hash list was not refused as Busy");
    assert_eq!(got, slots as usize);

    // Downloads: a missing chunk, and a list that is not whole digests.
    c.send(
        5,
        &Message::DownloadChunks(DigestList::from_digests(&[d, Digest([1; 32])])),
    );
    match c.recv() {
        (5, Message::Chunk { offset: 0, .. }) => {}
        other => panic!("{other:?}"),
    }
    c.expect_error(5, "is not in the chunk store");
    c.send_raw(
        &[5, 5, 6 + 31, 0, 0, 0]
            .iter()
            .copied()
            .chain([0u8; 31])
            .collect::<Vec<_>>(),
    );
    c.expect_error(5, "multiple of 32");
}

#[test]
fn disconnect_mid_stream_leaves_nothing_visible() {
    let server = Server::start();
    let mut c = server.connect();
    let (done_path, _) = write_fixed(&mut c, 1, "7", "done");
    c.send(2, &create(BackupType::Vm, "7", T0, 0, "half", 4096, 8192));
    let half = expect_created(&mut c, 2);
    let a = upload(&mut c, 2, &pattern(4096, 5));
    c.send(2, &fixed(&[(0, a)]));
    // A packet cut off in the middle.
    c.send_raw(&[2, 7, 100, 0, 0, 0, 1, 2, 3]);
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut c = server.connect();
    c.send(1, &Message::GetHashList { path: half });
    c.expect_error(1, "not a finished index");
    assert_eq!(hash_list(&mut c, 1, &done_path).len(), 3);
    let m = std::fs::read_to_string(
        server
            .datastore()
            .join("vm/7/2019-04-23T12:23:36Z/manifest.json"),
    )
    .unwrap();
    assert!(m.contains("\"state\": \"incomplete\""), "{m}");
    assert_eq!(count_files(&server.datastore(), ".fidx"), 1);
    assert_eq!(server.temp_files(), 0);
}

#[test]
fn connections_are_isolated_and_snapshots_locked() {
    let server = Server::start();
    let mut a = server.connect();
    let mut b = server.connect();
    a.send(
        1,
        &create(
            BackupType::Host,
            "h1",
            T0,
            BackupFlags::DYNAMIC_CHUNKS,
            "root",
            0,
            0,
        ),
    );
    expect_created(&mut a, 1);
    // Another connection may not write into a snapshot being written.
    b.send(
        1,
        &create(
            BackupType::Host,
            "h1",
            T0,
            BackupFlags::DYNAMIC_CHUNKS,
            "etc",
            0,
            0,
        ),
    );
    assert_eq!(
        b.expect_error(1, "being written by another connection"),
        ErrorId::Busy
    );
    // A broken third connection does not disturb the first.
    let mut bad = server.connect();
    bad.send_raw(&[0, 0, 0xff, 0xff, 0xff, 0xff]);
    let d = upload(&mut a, 1, &pattern(5000, 4));
    a.send(1, &dynamic(&[(0, d)]));
    a.send(1, &Message::BackupFinished);
    a.expect_ok(1);
    assert!(
        bad.try_recv()
            .is_some_and(|(_, m)| matches!(m, Message::Error { .. }))
    );
    drop(a);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Once the first connection is gone, the snapshot is finished and
    // immutable: no connection adds to it.
    b.send(
        2,
        &create(
            BackupType::Host,
            "h1",
            T0,
            BackupFlags::DYNAMIC_CHUNKS,
            "etc",
            0,
            0,
        ),
    );
    b.expect_error(2, "immutable");
    let m = std::fs::read_to_string(
        server
            .datastore()
            .join("host/h1/2019-04-23T12:23:36Z/manifest.json"),
    )
    .unwrap();
    assert!(m.contains("\"complete\"") && !m.contains("etc"), "{m}");
}

#[test]
fn interrupt_shuts_down_cleanly_without_partial_files() {
    let mut server = Server::start();
    let mut c = server.connect();
    write_fixed(&mut c, 1, "5", "whole");
    c.send(
        2,
        &create(BackupType::Vm, "5", T0, 0, "partial", 4096, 8192),
    );
    expect_created(&mut c, 2);
    let a = upload(&mut c, 2, &pattern(4096, 6));
    c.send(2, &fixed(&[(0, a)]));
    let status = server.interrupt();
    assert!(status.success(), "server exited with {status}");
    assert!(c.closed());
    assert_eq!(server.temp_files(), 0);
    assert_eq!(count_files(&server.datastore(), ".fidx"), 1);
    let m = std::fs::read_to_string(
        server
            .datastore()
            .join("vm/5/2019-04-23T12:23:36Z/manifest.json"),
    )
    .unwrap();
    assert!(m.contains("\"state\": \"incomplete\""), "{m}");
    assert!(!m.contains("partial"));
}

#[test]
fn full_disk_is_a_clear_error_and_loses_nothing() {
    let server = Server::start_on_small_disk("3m");
    let mut c = server.connect();
    let (path, data) = write_fixed(&mut c, 1, "full", "before");
    // Upload distinct 512 KiB chunks until the 3 MiB file system is full.
    let mut refused = None;
    for i in 0..16u8 {
        let chunk = noise(512 * 1024, i as u64 + 100);
        c.send(
            2,
            &Message::UploadChunk {
                digest: Digest::of(&chunk),
                data: Bytes::from(chunk),
            },
        );
        match c.recv() {
            (2, Message::Ok) => {}
            (2, Message::Error { message, .. }) => {
                refused = Some(message);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let message = refused.expect("the small disk never filled up");
    assert!(message.contains("No space left on device"), "{message}");
    assert!(
        message.contains("chunk"),
        "the error names the chunk: {message}"
    );
    // A file finished when the disk is full fails with the same clarity.
    c.send(
        3,
        &create(BackupType::Vm, "full", T0 + 1, 0, "after", 4096, 4096),
    );
    match c.recv() {
        (3, Message::BackupCreated { .. }) => {
            let d = Digest::of(&data[..4096]);
            c.send(3, &fixed(&[(0, d)]));
            c.send(3, &Message::BackupFinished);
            match c.recv() {
                (3, Message::Ok) => {}
                (3, Message::Error { message, .. }) => {
                    assert!(message.contains("No space left on device"), "{message}")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (3, Message::Error { message, .. }) => {
            assert!(message.contains("No space left on device"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // What was finished before is intact and readable.
    let digests = hash_list(&mut c, 4, &path);
    assert_eq!(download(&mut c, 5, &digests), data);
}

/// Collects a ListSnapshots answer: one manifest per entry, then an empty
/// entry.
fn list(c: &mut Conn, stream: u8, filter: SnapshotFilter) -> Vec<serde_json::Value> {
    c.send(stream, &Message::ListSnapshots(filter));
    let mut out = Vec::new();
    loop {
        match c.recv() {
            (s, Message::SnapshotEntry(j)) if s == stream && j.is_empty() => return out,
            (s, Message::SnapshotEntry(j)) if s == stream => {
                out.push(serde_json::from_slice(&j).unwrap())
            }
            other => panic!("expected SnapshotEntry on {stream}, got {other:?}"),
        }
    }
}

#[test]
fn extension_list_snapshots_and_file_attributes() {
    let server = Server::start();
    let mut c = server.connect();
    // Attributes sent after CreateBackup land in the manifest entry.
    let data = pattern(5000, 1);
    c.send(
        1,
        &create(
            BackupType::Vm,
            "7",
            T0,
            BackupFlags::RAW,
            "d.img",
            4096,
            5000,
        ),
    );
    expect_created(&mut c, 1);
    let attrs = hoard_types::SourceAttributes {
        mtime_ns: 1_700_000_000_123_456_789,
        ctime_ns: -5,
        inode: 42,
    };
    c.send(1, &Message::FileAttributes(attrs));
    let d0 = upload(&mut c, 1, &data[..4096]);
    let d1 = upload(&mut c, 1, &data[4096..]);
    c.send(1, &fixed(&[(0, d0), (1, d1)]));
    c.send(1, &Message::BackupFinished);
    c.expect_ok(1);
    write_fixed(&mut c, 2, "8", "e.img");

    // While the writer holds them, the snapshots are listed as writing.
    let all = list(&mut c, 3, SnapshotFilter::default());
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["snapshot"], "vm/7/2019-04-23T12:23:36Z");
    assert_eq!(all[0]["state"], "writing");
    let file = &all[0]["files"][0];
    assert_eq!(file["name"], "d.img.fidx");
    assert_eq!(file["source"]["inode"], 42);
    assert_eq!(file["source"]["mtime_ns"], 1_700_000_000_123_456_789i64);
    assert_eq!(file["source"]["ctime_ns"], -5);
    let only = list(
        &mut c,
        3,
        SnapshotFilter {
            ty: Some(BackupType::Vm),
            id: Some(BackupId::new("8").unwrap()),
        },
    );
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["snapshot"], "vm/8/2019-04-23T12:23:36Z");
    assert!(
        list(
            &mut c,
            3,
            SnapshotFilter {
                ty: Some(BackupType::Ct),
                id: None
            }
        )
        .is_empty()
    );

    // Errors: attributes with no backup open; a malformed filter; a bad id.
    c.send(4, &Message::FileAttributes(attrs));
    c.expect_error(4, "no backup open");
    c.send_raw(&[5, 64, 8, 0, 0, 0, 9, 0]);
    c.expect_error(5, "backup type");
    c.send_raw(&[5, 64, 11, 0, 0, 0, 0, 3, b'.', b'.', b'/']);
    c.expect_error(5, "");
    c.send_raw(&[5, 64, 10, 0, 0, 0, 0, 9, b'a', b'b']);
    c.expect_error(5, "declares");
    c.send_raw(&[5, 66, 10, 0, 0, 0, 1, 2, 3, 4]);
    c.expect_error(5, "FileAttributes payload has 4 bytes");
    // A client that half-closes and waits for the server to close finds
    // its snapshots complete.
    c.sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed());
    let mut c = server.connect();
    let all = list(&mut c, 1, SnapshotFilter::default());
    assert!(all.iter().all(|s| s["state"] == "complete"), "{all:?}");
}

#[test]
fn close_snapshot_answers_once_the_snapshot_is_stored_complete() {
    let server = Server::start();
    let close = |c: &mut Conn, stream: u8, snap: &str| {
        c.send(
            stream,
            &Message::CloseSnapshot {
                snapshot: snap.into(),
            },
        )
    };
    let manifest = |snap: &str| -> serde_json::Value {
        let raw = std::fs::read(server.datastore().join(snap).join("manifest.json")).unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    let chosen = Features(Features::EXTENSIONS.0 | Features::CLOSE_SNAPSHOT.0);
    let mut c = server.connect_v2_with(&server.token, chosen);
    let snap = "vm/100/2019-04-23T12:23:36Z";
    // Not a snapshot, and one this connection does not write.
    close(&mut c, 1, "vm/100");
    c.expect_error(1, "not a snapshot");
    close(&mut c, 1, snap);
    c.expect_error(1, "does not write");
    // A file open: refused, and the file goes on.
    c.send(
        2,
        &create(
            BackupType::Vm,
            "100",
            T0,
            BackupFlags::RAW,
            "d.img",
            4096,
            4096,
        ),
    );
    expect_created(&mut c, 2);
    close(&mut c, 1, snap);
    c.expect_error(1, "has a file open on stream 2");
    let d = upload(&mut c, 2, &[7u8; 4096]);
    c.send(2, &fixed(&[(0, d)]));
    c.send(2, &Message::BackupFinished);
    c.expect_ok(2);
    assert_eq!(manifest(snap)["state"], "writing");
    // Closed: complete on disk while the connection is still open, and
    // it takes no more files.
    close(&mut c, 1, snap);
    c.expect_ok(1);
    assert_eq!(manifest(snap)["state"], "complete");
    close(&mut c, 1, snap);
    c.expect_error(1, "does not write");
    c.send(
        3,
        &create(
            BackupType::Vm,
            "100",
            T0,
            BackupFlags::RAW,
            "e.img",
            4096,
            0,
        ),
    );
    c.expect_error(3, "exists");
    // A snapshot whose file was started and abandoned is not complete.
    c.send(
        4,
        &create(
            BackupType::Vm,
            "101",
            T0,
            BackupFlags::RAW,
            "d.img",
            4096,
            4096,
        ),
    );
    expect_created(&mut c, 4);
    c.send(4, &Message::BackupFinished);
    c.expect_error(4, "");
    close(&mut c, 1, "vm/101/2019-04-23T12:23:36Z");
    c.expect_error(1, "is not complete");
    // A session that chose the feature and ends without closing a
    // snapshot leaves it incomplete, though its one file is finished: it
    // may have meant to add more.
    let mut cut = server.connect_v2_with(&server.token, chosen);
    cut.send(
        1,
        &create(
            BackupType::Vm,
            "102",
            T0,
            BackupFlags::RAW,
            "d.img",
            4096,
            4096,
        ),
    );
    expect_created(&mut cut, 1);
    let d = upload(&mut cut, 1, &[8u8; 4096]);
    cut.send(1, &fixed(&[(0, d)]));
    cut.send(1, &Message::BackupFinished);
    cut.expect_ok(1);
    cut.sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(cut.closed());
    assert_eq!(
        manifest("vm/102/2019-04-23T12:23:36Z")["state"],
        "incomplete"
    );
    // A session that did not choose the feature may not send it.
    let mut plain = server.connect_v2(&server.token);
    close(&mut plain, 1, snap);
    plain.expect_error(1, "close-snapshot feature");
}
