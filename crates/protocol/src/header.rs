//! The 6-byte packet header and the framing checks on it.

use crate::consts::{HEADER_SIZE, MAX_PACKET_SIZE};

/// Packet types by their wire number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Hello = 0,
    Ok = 1,
    Error = 2,
    GetHashList = 3,
    HashListPart = 4,
    DownloadChunks = 5,
    Chunk = 6,
    UploadChunk = 7,
    CreateBackup = 8,
    BackupCreated = 9,
    BackupDataFixed = 10,
    BackupDataDynamic = 11,
    BackupFinished = 12,
    // hoard extensions (docs/protocol.md, "Extensions"). Version 1 peers
    // never send them; a server without them answers Error.
    ListSnapshots = 64,
    SnapshotEntry = 65,
    FileAttributes = 66,
    GetIndex = 67,
    IndexPart = 68,
    // Version 2 (docs/protocol.md, "Version 2").
    Authenticate = 69,
    /// Version 2, feature ENCRYPTION: a snapshot's manifest seal.
    SealSnapshot = 70,
    /// Version 2, feature CLOSE_SNAPSHOT: the client's last word on a
    /// snapshot, answered once its final state is durable.
    CloseSnapshot = 71,
}

/// Which side of a connection may send a packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Server,
    Client,
}

impl PacketType {
    pub fn from_u8(v: u8) -> Option<Self> {
        use PacketType::*;
        Some(match v {
            0 => Hello,
            1 => Ok,
            2 => Error,
            3 => GetHashList,
            4 => HashListPart,
            5 => DownloadChunks,
            6 => Chunk,
            7 => UploadChunk,
            8 => CreateBackup,
            9 => BackupCreated,
            10 => BackupDataFixed,
            11 => BackupDataDynamic,
            12 => BackupFinished,
            64 => ListSnapshots,
            65 => SnapshotEntry,
            66 => FileAttributes,
            67 => GetIndex,
            68 => IndexPart,
            69 => Authenticate,
            70 => SealSnapshot,
            71 => CloseSnapshot,
            _ => return None,
        })
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// One of hoard's extension packets (64–68), which a version 2
    /// session uses only when it negotiated [`crate::Features::EXTENSIONS`].
    pub fn is_extension(self) -> bool {
        (64..=68).contains(&self.as_u8())
    }

    pub fn sender(self) -> Sender {
        use PacketType::*;
        match self {
            Hello | Ok | Error | HashListPart | Chunk | BackupCreated | SnapshotEntry
            | IndexPart => Sender::Server,
            GetHashList | DownloadChunks | UploadChunk | CreateBackup | BackupDataFixed
            | BackupDataDynamic | BackupFinished | ListSnapshots | FileAttributes | GetIndex
            | Authenticate | SealSnapshot | CloseSnapshot => Sender::Client,
        }
    }
}

/// A decoded header. `length` is the whole packet, header included, and
/// has been checked to lie in `6..=MAX_PACKET_SIZE`. The type byte is kept
/// raw: an unknown type is a per-stream error, not a framing error, because
/// the length still says where the next packet starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub stream: u8,
    pub type_byte: u8,
    pub length: u32,
}

impl Header {
    pub fn packet_type(&self) -> Option<PacketType> {
        PacketType::from_u8(self.type_byte)
    }

    pub fn payload_len(&self) -> usize {
        self.length as usize - HEADER_SIZE
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let l = self.length.to_le_bytes();
        [self.stream, self.type_byte, l[0], l[1], l[2], l[3]]
    }
}

/// A header that makes the rest of the byte stream unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("packet length {0} is below the 6-byte header")]
    TooShort(u32),
    #[error("packet length {0} exceeds the maximum of 16777216 bytes")]
    TooLong(u32),
}

/// Looks at the start of `buf`: `Ok(None)` if fewer than 6 bytes are there,
/// the header if they are, or the framing error that ends the connection.
/// Allocates nothing and does not need the payload to be present.
pub fn check_frame(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_SIZE {
        return Ok(None);
    }
    let length = u32::from_le_bytes([buf[2], buf[3], buf[4], buf[5]]);
    if (length as usize) < HEADER_SIZE {
        return Err(FrameError::TooShort(length));
    }
    if length > MAX_PACKET_SIZE {
        return Err(FrameError::TooLong(length));
    }
    Ok(Some(Header {
        stream: buf[0],
        type_byte: buf[1],
        length,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_and_others_are_unknown() {
        let known: Vec<u8> = (0..=12u8).chain(64..=71).collect();
        for v in 0..=255u8 {
            match PacketType::from_u8(v) {
                Some(t) => {
                    assert!(known.contains(&v), "{v}");
                    assert_eq!(t.as_u8(), v);
                }
                None => assert!(!known.contains(&v), "{v}"),
            }
        }
    }

    #[test]
    fn framing_limits() {
        assert_eq!(check_frame(&[1, 2, 3]), Ok(None));
        assert_eq!(
            check_frame(&[0, 1, 5, 0, 0, 0]),
            Err(FrameError::TooShort(5))
        );
        assert_eq!(
            check_frame(&[0, 1, 1, 0, 0, 1]),
            Err(FrameError::TooLong(16 * 1024 * 1024 + 1))
        );
        let h = check_frame(&[7, 1, 0, 0, 0, 1]).unwrap().unwrap();
        assert_eq!(h.length, 16 * 1024 * 1024);
        assert_eq!(h.stream, 7);
        assert_eq!(h.encode(), [7, 1, 0, 0, 0, 1]);
    }
}
