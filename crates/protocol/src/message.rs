//! Typed packets: decode one payload, encode one packet.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hoard_types::{BackupId, BackupType, DIGEST_SIZE, Digest, NameError, SourceAttributes};

use crate::consts::{
    AUTHENTICATE_HEADER_SIZE, HEADER_SIZE, HELLO_MAGIC, HELLO_SIZE, HELLO_V2_SIZE, MAX_PACKET_SIZE,
    MAX_SEAL_BODY, MAX_TOKEN_LEN, SEAL_MAC_SIZE,
};
use crate::create_backup::CreateBackup;
use crate::features::Features;
use crate::header::{Header, PacketType};
use crate::lists::{DigestList, DynamicEntryList, FixedEntryList};

/// The first byte of an Error packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorId {
    Generic = 0,
    /// Try again later: the resource is in use.
    Busy = 1,
    /// Version 2 only: the principal may not do this (a version 1 peer
    /// is sent Generic instead, the seed knowing only 0 and 1).
    Denied = 2,
}

/// One packet's meaning. Bulk data (chunk bytes, lists) stays in the
/// receive buffer as `Bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The server's first packet. Version 1 carries no features (12
    /// bytes, the seed's layout); version 2 and later carry the offered
    /// feature flags (20 bytes).
    Hello {
        version: u32,
        features: Features,
    },
    Ok,
    Error {
        id: ErrorId,
        message: String,
    },
    GetHashList {
        path: String,
    },
    HashListPart(DigestList),
    DownloadChunks(DigestList),
    Chunk {
        offset: u64,
        digest: Digest,
        data: Bytes,
    },
    UploadChunk {
        digest: Digest,
        data: Bytes,
    },
    CreateBackup(CreateBackup),
    BackupCreated {
        path: String,
    },
    BackupDataFixed(FixedEntryList),
    BackupDataDynamic(DynamicEntryList),
    BackupFinished,
    /// Extension: the snapshots matching a filter, answered by
    /// [`Message::SnapshotEntry`] packets.
    ListSnapshots(SnapshotFilter),
    /// Extension: one snapshot's manifest as JSON; an empty one ends the
    /// list.
    SnapshotEntry(Bytes),
    /// Extension: what the source of the file open on this stream looked
    /// like, recorded in the manifest.
    FileAttributes(SourceAttributes),
    /// Extension: a finished index's chunks with their end offsets,
    /// answered by [`Message::IndexPart`] packets.
    GetIndex {
        path: String,
    },
    /// Extension: entries (end offset, digest) of an index in order; an
    /// empty one ends the answer.
    IndexPart(DynamicEntryList),
    /// Version 2: the client's first packet, with the features it will use
    /// (a subset of those the Hello offered) and its API token.
    Authenticate {
        features: Features,
        token: Secret,
    },
    /// Version 2, feature ENCRYPTION: the seal of a snapshot this
    /// connection writes (its MAC and the body it covers), stored in the
    /// manifest for clients holding the key to check.
    SealSnapshot {
        snapshot: String,
        mac: [u8; SEAL_MAC_SIZE],
        body: Bytes,
    },
    /// Version 2, feature CLOSE_SNAPSHOT: closes a snapshot this
    /// connection writes; the server answers Ok once it is stored
    /// complete, or Error naming why it is not.
    CloseSnapshot {
        snapshot: String,
    },
}

/// A credential on the wire; its `Debug` never shows it, so no log line
/// or error message can leak a token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Which snapshots a [`Message::ListSnapshots`] asks for. An id without a
/// type is not expressible on the wire (the id is scoped by the type).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotFilter {
    pub ty: Option<BackupType>,
    pub id: Option<BackupId>,
}

/// Wire value of "any type" in a ListSnapshots filter.
pub const ANY_TYPE: u8 = 0xff;
/// FileAttributes payload: mtime ns i64, ctime ns i64, inode u64.
pub const FILE_ATTRIBUTES_SIZE: usize = 24;

/// A payload that does not fit its packet type. The connection survives:
/// the header's length said where the next packet starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown packet type {0}")]
    UnknownType(u8),
    #[error("{what} payload has {got} bytes, expected {expected}")]
    Length {
        what: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error("Hello has a wrong magic (expected PMXBCKUP)")]
    HelloMagic,
    #[error(
        "CreateBackup declares id length {id_len} and name length {name_len} but carries {rest} bytes"
    )]
    CreateBackupNames {
        id_len: usize,
        name_len: usize,
        rest: usize,
    },
    #[error("CreateBackup has unknown flags 0x{0:02x}")]
    UnknownFlags(u8),
    #[error("{what} declares a path of {declared} bytes but carries {got}")]
    PathLength {
        what: &'static str,
        declared: usize,
        got: usize,
    },
    #[error("SealSnapshot carries a body of {0} bytes, more than {MAX_SEAL_BODY}")]
    SealTooLarge(usize),
    #[error("{0} path is not UTF-8")]
    PathUtf8(&'static str),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("ListSnapshots names a backup id but no backup type")]
    FilterIdWithoutType,
    #[error("a version {0} Hello must carry feature flags (20 bytes)")]
    HelloFeatures(u32),
    #[error("Authenticate declares a token of {declared} bytes but carries {got}")]
    TokenLength { declared: usize, got: usize },
    #[error("Authenticate carries a token longer than {MAX_TOKEN_LEN} bytes")]
    TokenTooLong,
    #[error("Authenticate carries a token that is not UTF-8")]
    TokenUtf8,
}

fn exact(
    what: &'static str,
    expected: &'static str,
    want: usize,
    p: &[u8],
) -> Result<(), DecodeError> {
    if p.len() == want {
        Ok(())
    } else {
        Err(DecodeError::Length {
            what,
            expected,
            got: p.len(),
        })
    }
}

fn at_least(
    what: &'static str,
    expected: &'static str,
    want: usize,
    p: &[u8],
) -> Result<(), DecodeError> {
    if p.len() >= want {
        Ok(())
    } else {
        Err(DecodeError::Length {
            what,
            expected,
            got: p.len(),
        })
    }
}

fn decode_path(what: &'static str, mut p: &[u8]) -> Result<String, DecodeError> {
    at_least(what, "at least 2 bytes", 2, p)?;
    let declared = p.get_u16_le() as usize;
    if declared != p.len() {
        return Err(DecodeError::PathLength {
            what,
            declared,
            got: p.len(),
        });
    }
    String::from_utf8(p.to_vec()).map_err(|_| DecodeError::PathUtf8(what))
}

/// A version 1 Hello is the seed's 12 bytes; a later version's carries
/// feature flags after the version.
fn decode_hello(p: &[u8]) -> Result<Message, DecodeError> {
    if p.len() != HELLO_SIZE && p.len() != HELLO_V2_SIZE {
        return Err(DecodeError::Length {
            what: "Hello",
            expected: "12 or 20 bytes",
            got: p.len(),
        });
    }
    if p[..8] != HELLO_MAGIC {
        return Err(DecodeError::HelloMagic);
    }
    let version = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
    let features = match p.len() {
        HELLO_SIZE if version > 1 => return Err(DecodeError::HelloFeatures(version)),
        HELLO_SIZE => Features::NONE,
        // Version 1 is the seed's 12 bytes exactly.
        _ if version <= 1 => {
            return Err(DecodeError::Length {
                what: "Hello",
                expected: "12 bytes for version 1",
                got: p.len(),
            });
        }
        _ => Features(u64::from_le_bytes(p[12..20].try_into().expect("8 bytes"))),
    };
    Ok(Message::Hello { version, features })
}

/// SealSnapshot: path length u16, path, MAC (32 bytes), body (the rest,
/// kept as `Bytes`).
fn decode_seal(payload: &mut Bytes) -> Result<Message, DecodeError> {
    let p = &payload[..];
    at_least("SealSnapshot", "at least 34 bytes", 2 + SEAL_MAC_SIZE, p)?;
    let declared = u16::from_le_bytes([p[0], p[1]]) as usize;
    if p.len() < 2 + declared + SEAL_MAC_SIZE {
        return Err(DecodeError::PathLength {
            what: "SealSnapshot",
            declared,
            got: p.len().saturating_sub(2 + SEAL_MAC_SIZE),
        });
    }
    let snapshot = String::from_utf8(p[2..2 + declared].to_vec())
        .map_err(|_| DecodeError::PathUtf8("SealSnapshot"))?;
    let mut mac = [0u8; SEAL_MAC_SIZE];
    mac.copy_from_slice(&p[2 + declared..2 + declared + SEAL_MAC_SIZE]);
    let body = payload.split_off(2 + declared + SEAL_MAC_SIZE);
    if body.len() > MAX_SEAL_BODY {
        return Err(DecodeError::SealTooLarge(body.len()));
    }
    Ok(Message::SealSnapshot {
        snapshot,
        mac,
        body,
    })
}

fn decode_authenticate(mut p: &[u8]) -> Result<Message, DecodeError> {
    at_least(
        "Authenticate",
        "at least 10 bytes",
        AUTHENTICATE_HEADER_SIZE,
        p,
    )?;
    let features = Features(p.get_u64_le());
    let declared = p.get_u16_le() as usize;
    if declared != p.len() {
        return Err(DecodeError::TokenLength {
            declared,
            got: p.len(),
        });
    }
    if declared > MAX_TOKEN_LEN {
        return Err(DecodeError::TokenTooLong);
    }
    let token = String::from_utf8(p.to_vec()).map_err(|_| DecodeError::TokenUtf8)?;
    Ok(Message::Authenticate {
        features,
        token: Secret(token),
    })
}

fn decode_filter(mut p: &[u8]) -> Result<SnapshotFilter, DecodeError> {
    at_least("ListSnapshots", "at least 2 bytes", 2, p)?;
    let ty = p.get_u8();
    let id_len = p.get_u8() as usize;
    if id_len != p.len() {
        return Err(DecodeError::PathLength {
            what: "ListSnapshots",
            declared: id_len,
            got: p.len(),
        });
    }
    let ty = match ty {
        ANY_TYPE => None,
        t => Some(BackupType::from_u8(t)?),
    };
    let id = match p {
        [] => None,
        _ => {
            let s = std::str::from_utf8(p).map_err(|_| DecodeError::PathUtf8("ListSnapshots"))?;
            Some(BackupId::new(s)?)
        }
    };
    if id.is_some() && ty.is_none() {
        return Err(DecodeError::FilterIdWithoutType);
    }
    Ok(SnapshotFilter { ty, id })
}

fn whole<T>(
    what: &'static str,
    expected: &'static str,
    len: usize,
    v: Option<T>,
) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::Length {
        what,
        expected,
        got: len,
    })
}

impl Message {
    pub fn packet_type(&self) -> PacketType {
        use Message::*;
        match self {
            Hello { .. } => PacketType::Hello,
            Ok => PacketType::Ok,
            Error { .. } => PacketType::Error,
            GetHashList { .. } => PacketType::GetHashList,
            HashListPart(_) => PacketType::HashListPart,
            DownloadChunks(_) => PacketType::DownloadChunks,
            Chunk { .. } => PacketType::Chunk,
            UploadChunk { .. } => PacketType::UploadChunk,
            CreateBackup(_) => PacketType::CreateBackup,
            BackupCreated { .. } => PacketType::BackupCreated,
            BackupDataFixed(_) => PacketType::BackupDataFixed,
            BackupDataDynamic(_) => PacketType::BackupDataDynamic,
            BackupFinished => PacketType::BackupFinished,
            ListSnapshots(_) => PacketType::ListSnapshots,
            SnapshotEntry(_) => PacketType::SnapshotEntry,
            FileAttributes(_) => PacketType::FileAttributes,
            GetIndex { .. } => PacketType::GetIndex,
            IndexPart(_) => PacketType::IndexPart,
            Authenticate { .. } => PacketType::Authenticate,
            SealSnapshot { .. } => PacketType::SealSnapshot,
            CloseSnapshot { .. } => PacketType::CloseSnapshot,
        }
    }

    /// Decodes the payload of a packet whose header was checked by
    /// [`crate::check_frame`]. `payload` must be exactly the header's
    /// payload length.
    pub fn decode(header: &Header, mut payload: Bytes) -> Result<Message, DecodeError> {
        debug_assert_eq!(payload.len(), header.payload_len());
        let ty = header
            .packet_type()
            .ok_or(DecodeError::UnknownType(header.type_byte))?;
        let p = &payload[..];
        let len = p.len();
        Ok(match ty {
            PacketType::Hello => decode_hello(p)?,
            PacketType::Authenticate => decode_authenticate(p)?,
            PacketType::SealSnapshot => decode_seal(&mut payload)?,
            PacketType::CloseSnapshot => Message::CloseSnapshot {
                snapshot: decode_path("CloseSnapshot", p)?,
            },
            PacketType::Ok => {
                exact("Ok", "0 bytes", 0, p)?;
                Message::Ok
            }
            PacketType::Error => {
                at_least("Error", "at least 1 byte", 1, p)?;
                // An unknown error id is still an error; report it as generic.
                let id = match p[0] {
                    1 => ErrorId::Busy,
                    2 => ErrorId::Denied,
                    _ => ErrorId::Generic,
                };
                Message::Error {
                    id,
                    message: String::from_utf8_lossy(&p[1..]).into_owned(),
                }
            }
            PacketType::GetHashList => Message::GetHashList {
                path: decode_path("GetHashList", p)?,
            },
            PacketType::GetIndex => Message::GetIndex {
                path: decode_path("GetIndex", p)?,
            },
            PacketType::IndexPart => Message::IndexPart(whole(
                "IndexPart",
                "a multiple of 40 bytes",
                len,
                DynamicEntryList::from_bytes(payload),
            )?),
            PacketType::BackupCreated => Message::BackupCreated {
                path: decode_path("BackupCreated", p)?,
            },
            PacketType::HashListPart => Message::HashListPart(whole(
                "HashListPart",
                "a multiple of 32 bytes",
                len,
                DigestList::from_bytes(payload),
            )?),
            PacketType::DownloadChunks => Message::DownloadChunks(whole(
                "DownloadChunks",
                "a multiple of 32 bytes",
                len,
                DigestList::from_bytes(payload),
            )?),
            PacketType::Chunk => {
                at_least("Chunk", "at least 40 bytes", 40, p)?;
                let offset = payload.get_u64_le();
                let digest = Digest::from_slice(&payload.split_to(DIGEST_SIZE));
                Message::Chunk {
                    offset,
                    digest,
                    data: payload,
                }
            }
            PacketType::UploadChunk => {
                at_least(
                    "UploadChunk",
                    "a 32-byte digest and at least 1 byte of data",
                    33,
                    p,
                )?;
                let digest = Digest::from_slice(&payload.split_to(DIGEST_SIZE));
                Message::UploadChunk {
                    digest,
                    data: payload,
                }
            }
            PacketType::CreateBackup => Message::CreateBackup(CreateBackup::decode_payload(p)?),
            PacketType::BackupDataFixed => Message::BackupDataFixed(whole(
                "BackupDataFixed",
                "a multiple of 40 bytes",
                len,
                FixedEntryList::from_bytes(payload),
            )?),
            PacketType::BackupDataDynamic => Message::BackupDataDynamic(whole(
                "BackupDataDynamic",
                "a multiple of 40 bytes",
                len,
                DynamicEntryList::from_bytes(payload),
            )?),
            PacketType::BackupFinished => {
                exact("BackupFinished", "0 bytes", 0, p)?;
                Message::BackupFinished
            }
            PacketType::ListSnapshots => Message::ListSnapshots(decode_filter(p)?),
            PacketType::SnapshotEntry => Message::SnapshotEntry(payload),
            PacketType::FileAttributes => {
                exact("FileAttributes", "24 bytes", FILE_ATTRIBUTES_SIZE, p)?;
                Message::FileAttributes(SourceAttributes {
                    mtime_ns: payload.get_i64_le(),
                    ctime_ns: payload.get_i64_le(),
                    inode: payload.get_u64_le(),
                })
            }
        })
    }

    /// The bulk tail that [`Message::encode_head`] leaves out, so a writer
    /// can send it straight from its buffer.
    pub fn bulk(&self) -> Option<&Bytes> {
        match self {
            Message::Chunk { data, .. } | Message::UploadChunk { data, .. } => Some(data),
            Message::HashListPart(l) | Message::DownloadChunks(l) => Some(l.as_bytes()),
            Message::BackupDataFixed(l) => Some(l.as_bytes()),
            Message::BackupDataDynamic(l) | Message::IndexPart(l) => Some(l.as_bytes()),
            Message::SnapshotEntry(json) => Some(json),
            Message::SealSnapshot { body, .. } => Some(body),
            _ => None,
        }
    }

    /// Payload length without the bulk tail.
    fn head_payload_len(&self) -> usize {
        match self {
            Message::Hello { version, .. } if *version <= 1 => HELLO_SIZE,
            Message::Hello { .. } => HELLO_V2_SIZE,
            Message::Authenticate { token, .. } => AUTHENTICATE_HEADER_SIZE + token.0.len(),
            Message::Error { message, .. } => 1 + message.len(),
            Message::GetHashList { path }
            | Message::BackupCreated { path }
            | Message::GetIndex { path }
            | Message::CloseSnapshot { snapshot: path } => 2 + path.len(),
            Message::Chunk { .. } => 8 + DIGEST_SIZE,
            Message::UploadChunk { .. } => DIGEST_SIZE,
            Message::CreateBackup(c) => c.encoded_len(),
            Message::ListSnapshots(f) => 2 + f.id.as_ref().map_or(0, |id| id.as_str().len()),
            Message::FileAttributes(_) => FILE_ATTRIBUTES_SIZE,
            Message::SealSnapshot { snapshot, .. } => 2 + snapshot.len() + SEAL_MAC_SIZE,
            _ => 0,
        }
    }

    /// Whole packet length, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_SIZE + self.head_payload_len() + self.bulk().map_or(0, |b| b.len())
    }

    /// Writes the header and everything before the bulk tail into `out`.
    ///
    /// # Panics
    /// If the packet would exceed [`MAX_PACKET_SIZE`] or a path exceeds
    /// 65535 bytes: the caller sizes lists and chunks to fit.
    pub fn encode_head(&self, stream: u8, out: &mut BytesMut) {
        let total = self.encoded_len();
        assert!(
            total <= MAX_PACKET_SIZE as usize,
            "packet of {total} bytes exceeds the maximum"
        );
        let header = Header {
            stream,
            type_byte: self.packet_type().as_u8(),
            length: total as u32,
        };
        out.reserve(HEADER_SIZE + self.head_payload_len());
        out.put_slice(&header.encode());
        match self {
            Message::Hello { version, features } => {
                out.put_slice(&HELLO_MAGIC);
                out.put_u32_le(*version);
                if *version > 1 {
                    out.put_u64_le(features.0);
                }
            }
            Message::Authenticate { features, token } => {
                out.put_u64_le(features.0);
                let len = u16::try_from(token.0.len()).expect("token longer than 65535 bytes");
                out.put_u16_le(len);
                out.put_slice(token.0.as_bytes());
            }
            Message::Error { id, message } => {
                out.put_u8(*id as u8);
                out.put_slice(message.as_bytes());
            }
            Message::GetHashList { path }
            | Message::BackupCreated { path }
            | Message::GetIndex { path }
            | Message::CloseSnapshot { snapshot: path } => {
                let len = u16::try_from(path.len()).expect("path longer than 65535 bytes");
                out.put_u16_le(len);
                out.put_slice(path.as_bytes());
            }
            Message::Chunk { offset, digest, .. } => {
                out.put_u64_le(*offset);
                out.put_slice(digest.as_bytes());
            }
            Message::UploadChunk { digest, .. } => out.put_slice(digest.as_bytes()),
            Message::CreateBackup(c) => c.encode_payload(out),
            Message::ListSnapshots(f) => {
                out.put_u8(f.ty.map_or(ANY_TYPE, |t| t.as_u8()));
                let id = f.id.as_ref().map_or("", |id| id.as_str());
                out.put_u8(id.len() as u8);
                out.put_slice(id.as_bytes());
            }
            Message::FileAttributes(a) => {
                out.put_i64_le(a.mtime_ns);
                out.put_i64_le(a.ctime_ns);
                out.put_u64_le(a.inode);
            }
            Message::SealSnapshot { snapshot, mac, .. } => {
                let len = u16::try_from(snapshot.len()).expect("path longer than 65535 bytes");
                out.put_u16_le(len);
                out.put_slice(snapshot.as_bytes());
                out.put_slice(mac);
            }
            _ => {}
        }
    }

    /// The whole packet in one buffer (tests, small packets).
    pub fn encode(&self, stream: u8) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode_head(stream, &mut out);
        if let Some(b) = self.bulk() {
            out.put_slice(b);
        }
        out
    }
}
