//! Property tests: every message round-trips, and no byte string makes
//! the decoder panic.

use bytes::Bytes;
use hoard_protocol::*;
use hoard_types::{BackupId, BackupType, Digest, FileName, SnapshotTime};
use proptest::prelude::*;

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn data(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 1..max).prop_map(Bytes::from)
}

fn create_backup() -> impl Strategy<Value = CreateBackup> {
    (
        0u8..3,
        "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
        0u64..253_402_300_799,
        0u8..8,
        "[^/\0]{1,60}",
        any::<u32>(),
        any::<u64>(),
    )
        .prop_filter_map(
            "valid names",
            |(ty, id, ts, flags, name, chunk_size, file_size)| {
                Some(CreateBackup {
                    backup_type: BackupType::from_u8(ty).ok()?,
                    id: BackupId::new(&id).ok()?,
                    time: SnapshotTime::from_epoch(ts).ok()?,
                    flags: BackupFlags(flags),
                    name: FileName::new(&name).ok()?,
                    chunk_size,
                    file_size,
                })
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u32>(), any::<u64>()).prop_map(|(version, f)| Message::Hello {
            version,
            features: if version <= 1 {
                Features::NONE
            } else {
                Features(f)
            },
        }),
        (any::<u64>(), "[a-z:0-9]{0,100}").prop_map(|(f, token)| Message::Authenticate {
            features: Features(f),
            token: Secret(token),
        }),
        (".{0,60}", any::<[u8; 32]>(), data(300)).prop_map(|(snapshot, mac, body)| {
            Message::SealSnapshot {
                snapshot,
                mac,
                body,
            }
        }),
        ".{0,60}".prop_map(|snapshot| Message::CloseSnapshot { snapshot }),
        Just(Message::Ok),
        (any::<bool>(), ".{0,100}").prop_map(|(busy, message)| Message::Error {
            id: if busy {
                ErrorId::Busy
            } else {
                ErrorId::Generic
            },
            message
        }),
        ".{0,200}".prop_map(|path| Message::GetHashList { path }),
        ".{0,200}".prop_map(|path| Message::BackupCreated { path }),
        prop::collection::vec(digest(), 0..50)
            .prop_map(|d| Message::HashListPart(DigestList::from_digests(&d))),
        prop::collection::vec(digest(), 0..50)
            .prop_map(|d| Message::DownloadChunks(DigestList::from_digests(&d))),
        (any::<u64>(), digest(), data(4096)).prop_map(|(offset, digest, data)| Message::Chunk {
            offset,
            digest,
            data
        }),
        (digest(), data(4096)).prop_map(|(digest, data)| Message::UploadChunk { digest, data }),
        create_backup().prop_map(Message::CreateBackup),
        prop::collection::vec((any::<u64>(), digest()), 0..50).prop_map(|e| {
            let e: Vec<_> = e
                .into_iter()
                .map(|(index, digest)| FixedEntry { index, digest })
                .collect();
            Message::BackupDataFixed(FixedEntryList::from_entries(&e))
        }),
        prop::collection::vec((any::<u64>(), digest()), 0..50).prop_map(|e| {
            let e: Vec<_> = e
                .into_iter()
                .map(|(offset, digest)| DynamicEntry { offset, digest })
                .collect();
            Message::BackupDataDynamic(DynamicEntryList::from_entries(&e))
        }),
        Just(Message::BackupFinished),
        (
            prop::option::of(0u8..3),
            "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
            any::<bool>()
        )
            .prop_map(|(ty, id, with_id)| {
                let ty = ty.map(|t| BackupType::from_u8(t).unwrap());
                let id = (with_id && ty.is_some()).then(|| BackupId::new(&id).unwrap());
                Message::ListSnapshots(SnapshotFilter { ty, id })
            }),
        prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|j| Message::SnapshotEntry(Bytes::from(j))),
        (any::<i64>(), any::<i64>(), any::<u64>()).prop_map(|(mtime_ns, ctime_ns, inode)| {
            Message::FileAttributes(hoard_types::SourceAttributes {
                mtime_ns,
                ctime_ns,
                inode,
            })
        }),
        "[a-z0-9/._-]{0,80}".prop_map(|path| Message::GetIndex { path }),
        prop::collection::vec((any::<u64>(), digest()), 0..50).prop_map(|e| {
            let e: Vec<_> = e
                .into_iter()
                .map(|(offset, digest)| DynamicEntry { offset, digest })
                .collect();
            Message::IndexPart(DynamicEntryList::from_entries(&e))
        }),
    ]
}

proptest! {
    #[test]
    fn round_trip(stream in any::<u8>(), msg in message()) {
        let wire = msg.encode(stream);
        prop_assert_eq!(wire.len(), msg.encoded_len());
        let header = check_frame(&wire).unwrap().unwrap();
        prop_assert_eq!(header.stream, stream);
        prop_assert_eq!(header.length as usize, wire.len());
        let back = Message::decode(&header, wire.freeze().slice(6..)).unwrap();
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        // Split the input into packets the way a reader would.
        let mut rest = &bytes[..];
        while let Ok(Some(h)) = check_frame(rest) {
            if rest.len() < h.length as usize { break; }
            let payload = Bytes::copy_from_slice(&rest[6..h.length as usize]);
            let _ = Message::decode(&h, payload);
            rest = &rest[h.length as usize..];
        }
    }

    #[test]
    fn arbitrary_payload_for_each_type(ty in 0u8..=255, payload in prop::collection::vec(any::<u8>(), 0..300)) {
        let h = Header { stream: 0, type_byte: ty, length: 6 + payload.len() as u32 };
        if let Ok(msg) = Message::decode(&h, Bytes::from(payload.clone())) {
            // Anything accepted re-encodes to the same bytes, except Error
            // packets whose message is repaired to UTF-8 and ids folded.
            if !matches!(msg, Message::Error { .. }) {
                prop_assert_eq!(&msg.encode(0)[6..], &payload[..]);
            }
        }
    }
}

#[test]
fn lying_lengths_are_refused() {
    // CreateBackup declaring more name bytes than it carries.
    let mut p = vec![0u8; 24];
    p[1] = 3; // id length
    p[11] = 5; // name length
    p.extend_from_slice(b"100d.im");
    let h = Header {
        stream: 1,
        type_byte: 8,
        length: 6 + p.len() as u32,
    };
    assert!(matches!(
        Message::decode(&h, Bytes::from(p)),
        Err(DecodeError::CreateBackupNames { .. })
    ));
    // GetHashList whose u16 length disagrees with the packet.
    let p = vec![9, 0, b'a'];
    let h = Header {
        stream: 1,
        type_byte: 3,
        length: 9,
    };
    assert!(matches!(
        Message::decode(&h, Bytes::from(p)),
        Err(DecodeError::PathLength { .. })
    ));
    // Lists that are not whole entries.
    for ty in [4u8, 5, 10, 11] {
        let p = vec![0u8; 33];
        let h = Header {
            stream: 1,
            type_byte: ty,
            length: 39,
        };
        assert!(
            matches!(
                Message::decode(&h, Bytes::from(p)),
                Err(DecodeError::Length { .. })
            ),
            "type {ty}"
        );
    }
    // Empty upload.
    let h = Header {
        stream: 1,
        type_byte: 7,
        length: 38,
    };
    assert!(Message::decode(&h, Bytes::from(vec![0u8; 32])).is_err());
    // Unknown flags and types.
    let mut p = vec![0u8; 24];
    p[1] = 1;
    p[10] = 0x80;
    p[11] = 1;
    p.extend_from_slice(b"1a");
    let h = Header {
        stream: 1,
        type_byte: 8,
        length: 6 + p.len() as u32,
    };
    assert_eq!(
        Message::decode(&h, Bytes::from(p)),
        Err(DecodeError::UnknownFlags(0x80))
    );
    let h = Header {
        stream: 1,
        type_byte: 13,
        length: 6,
    };
    assert_eq!(
        Message::decode(&h, Bytes::new()),
        Err(DecodeError::UnknownType(13))
    );
}
