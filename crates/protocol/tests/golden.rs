//! Golden byte vectors for every packet type, written by hand from the
//! tables in docs/protocol.md (not produced by the encoder), so that an
//! accidental layout change fails here loudly.

use bytes::Bytes;
use hoard_protocol::*;
use hoard_types::{BackupId, BackupType, Digest, FileName, SnapshotTime};

fn hexb(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).unwrap()
}

fn rep(byte: &str, n: usize) -> String {
    byte.repeat(n)
}

/// Encoding `msg` on `stream` gives `wire`, and decoding `wire` gives `msg`.
fn golden(stream: u8, msg: Message, wire: &str) {
    let wire = hexb(wire);
    assert_eq!(&msg.encode(stream)[..], &wire[..], "encode {msg:?}");
    let header = check_frame(&wire).unwrap().unwrap();
    assert_eq!(header.stream, stream);
    assert_eq!(header.length as usize, wire.len());
    let decoded = Message::decode(&header, Bytes::copy_from_slice(&wire[6..])).unwrap();
    assert_eq!(decoded, msg);
}

#[test]
fn hello() {
    golden(
        0,
        Message::Hello {
            version: 1,
            features: Features::NONE,
        },
        "00 00 12000000 504d5842434b5550 01000000",
    );
}

#[test]
fn hello_v2_carries_features() {
    golden(
        0,
        Message::Hello {
            version: 2,
            features: Features(0x0102),
        },
        "00 00 1a000000 504d5842434b5550 02000000 0201000000000000",
    );
    // A version 1 Hello with features, and a version 2 one without, are
    // malformed.
    let wire = hexb("00 00 1a000000 504d5842434b5550 01000000 0000000000000000");
    let h = check_frame(&wire).unwrap().unwrap();
    assert!(Message::decode(&h, Bytes::copy_from_slice(&wire[6..])).is_err());
    let wire = hexb("00 00 12000000 504d5842434b5550 02000000");
    let h = check_frame(&wire).unwrap().unwrap();
    assert_eq!(
        Message::decode(&h, Bytes::copy_from_slice(&wire[6..])),
        Err(DecodeError::HelloFeatures(2))
    );
}

#[test]
fn authenticate() {
    golden(
        0,
        Message::Authenticate {
            features: Features(1),
            token: Secret("a:b".into()),
        },
        "00 45 13000000 0100000000000000 0300 613a62",
    );
    // The declared token length must match what is carried.
    let wire = hexb("00 45 13000000 0100000000000000 0400 613a62");
    let h = check_frame(&wire).unwrap().unwrap();
    assert_eq!(
        Message::decode(&h, Bytes::copy_from_slice(&wire[6..])),
        Err(DecodeError::TokenLength {
            declared: 4,
            got: 3
        })
    );
}

#[test]
fn close_snapshot() {
    golden(
        3,
        Message::CloseSnapshot {
            snapshot: "vm/1/x".into(),
        },
        "03 47 0e000000 0600 766d2f312f78",
    );
}

#[test]
fn seal_snapshot() {
    let mac = [0xabu8; 32];
    golden(
        7,
        Message::SealSnapshot {
            snapshot: "vm/1/x".into(),
            mac,
            body: Bytes::from_static(b"{}"),
        },
        &format!("07 46 30000000 0600 766d2f312f78 {} 7b7d", "ab".repeat(32)),
    );
    // A path longer than what is carried.
    let wire = hexb(&format!(
        "07 46 2e000000 0700 766d2f312f78 {}",
        "ab".repeat(32)
    ));
    let h = check_frame(&wire).unwrap().unwrap();
    assert!(matches!(
        Message::decode(&h, Bytes::copy_from_slice(&wire[6..])),
        Err(DecodeError::PathLength { .. })
    ));
}

#[test]
fn ok() {
    golden(3, Message::Ok, "03 01 06000000");
}

#[test]
fn error_with_message() {
    golden(
        2,
        Message::Error {
            id: ErrorId::Busy,
            message: "x".into(),
        },
        "02 02 08000000 01 78",
    );
    golden(
        9,
        Message::Error {
            id: ErrorId::Generic,
            message: String::new(),
        },
        "09 02 07000000 00",
    );
}

#[test]
fn get_hash_list_and_backup_created() {
    golden(
        1,
        Message::GetHashList { path: "ab".into() },
        "01 03 0a000000 0200 6162",
    );
    golden(
        1,
        Message::BackupCreated { path: "ab".into() },
        "01 09 0a000000 0200 6162",
    );
}

#[test]
fn hash_list_part() {
    let d = Digest([0x11; 32]);
    golden(
        4,
        Message::HashListPart(DigestList::from_digests(&[d])),
        &format!("04 04 26000000 {}", rep("11", 32)),
    );
    golden(
        4,
        Message::HashListPart(DigestList::default()),
        "04 04 06000000",
    );
}

#[test]
fn download_chunks() {
    let ds = [Digest([0x22; 32]), Digest([0x33; 32])];
    golden(
        5,
        Message::DownloadChunks(DigestList::from_digests(&ds)),
        &format!("05 05 46000000 {}{}", rep("22", 32), rep("33", 32)),
    );
}

#[test]
fn chunk() {
    golden(
        5,
        Message::Chunk {
            offset: 0x0102,
            digest: Digest([0xaa; 32]),
            data: Bytes::from_static(b"xyz"),
        },
        &format!("05 06 31000000 0201000000000000 {} 78797a", rep("aa", 32)),
    );
}

#[test]
fn upload_chunk() {
    golden(
        7,
        Message::UploadChunk {
            digest: Digest([0xbb; 32]),
            data: Bytes::from_static(b"q"),
        },
        &format!("07 07 27000000 {} 71", rep("bb", 32)),
    );
}

#[test]
fn create_backup() {
    let msg = Message::CreateBackup(CreateBackup {
        backup_type: BackupType::Vm,
        id: BackupId::new("100").unwrap(),
        time: SnapshotTime::from_epoch(1556022216).unwrap(),
        flags: BackupFlags(BackupFlags::EXCL | BackupFlags::RAW),
        name: FileName::new("d.img").unwrap(),
        chunk_size: 4 << 20,
        file_size: 8 << 20,
    });
    // type, id len, timestamp, flags, name len, chunk size, file size, id, name
    golden(
        1,
        msg,
        "01 08 26000000 00 03 c803bf5c00000000 03 05 00004000 0000800000000000 313030 642e696d67",
    );
}

#[test]
fn backup_data_fixed_and_dynamic() {
    let d = Digest([0xcc; 32]);
    golden(
        1,
        Message::BackupDataFixed(FixedEntryList::from_entries(&[FixedEntry {
            index: 5,
            digest: d,
        }])),
        &format!("01 0a 2e000000 0500000000000000 {}", rep("cc", 32)),
    );
    golden(
        1,
        Message::BackupDataDynamic(DynamicEntryList::from_entries(&[DynamicEntry {
            offset: 0x1000,
            digest: d,
        }])),
        &format!("01 0b 2e000000 0010000000000000 {}", rep("cc", 32)),
    );
}

#[test]
fn backup_finished() {
    golden(1, Message::BackupFinished, "01 0c 06000000");
}

#[test]
fn extension_list_snapshots() {
    // filter type, id length, id
    golden(
        4,
        Message::ListSnapshots(SnapshotFilter {
            ty: Some(BackupType::Vm),
            id: Some(BackupId::new("100").unwrap()),
        }),
        "04 40 0b000000 00 03 313030",
    );
    golden(
        4,
        Message::ListSnapshots(SnapshotFilter::default()),
        "04 40 08000000 ff 00",
    );
    golden(
        4,
        Message::SnapshotEntry(Bytes::from_static(b"{}")),
        "04 41 08000000 7b7d",
    );
    golden(4, Message::SnapshotEntry(Bytes::new()), "04 41 06000000");
}

#[test]
fn extension_list_snapshots_refuses_an_id_without_type() {
    let wire = hexb("04 40 0b000000 ff 03 313030");
    let header = check_frame(&wire).unwrap().unwrap();
    assert_eq!(
        Message::decode(&header, Bytes::copy_from_slice(&wire[6..])),
        Err(DecodeError::FilterIdWithoutType)
    );
    let wire = hexb("04 40 0a000000 00 03 3130");
    let header = check_frame(&wire).unwrap().unwrap();
    assert!(Message::decode(&header, Bytes::copy_from_slice(&wire[6..])).is_err());
}

#[test]
fn extension_file_attributes() {
    // mtime ns i64, ctime ns i64, inode u64
    golden(
        2,
        Message::FileAttributes(hoard_types::SourceAttributes {
            mtime_ns: 0x0102030405060708,
            ctime_ns: -1,
            inode: 0x99,
        }),
        "02 42 1e000000 0807060504030201 ffffffffffffffff 9900000000000000",
    );
}

#[test]
fn extension_get_index() {
    // path length u16, path
    golden(
        3,
        Message::GetIndex {
            path: "ct/1/1970-01-01T00:00:00Z/r.hmeta.didx".into(),
        },
        &format!(
            "03 43 2e000000 2600 {}",
            hex::encode("ct/1/1970-01-01T00:00:00Z/r.hmeta.didx")
        ),
    );
    // end offset u64, digest; an empty part ends the answer
    let d = Digest::from_slice(&[0xcc; 32]);
    golden(
        3,
        Message::IndexPart(DynamicEntryList::from_entries(&[DynamicEntry {
            offset: 0x2000,
            digest: d,
        }])),
        &format!("03 44 2e000000 0020000000000000 {}", rep("cc", 32)),
    );
    golden(
        3,
        Message::IndexPart(DynamicEntryList::default()),
        "03 44 06000000",
    );
}
