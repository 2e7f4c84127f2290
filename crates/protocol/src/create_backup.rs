//! The CreateBackup request: its 24-byte fixed part, then id and name.

use bytes::{Buf, BufMut, BytesMut};
use hoard_types::{BackupId, BackupType, FileName, SnapshotTime};

use crate::consts::CREATE_BACKUP_HEADER_SIZE;
use crate::message::DecodeError;

/// The flag byte of CreateBackup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackupFlags(pub u8);

impl BackupFlags {
    /// The snapshot must not exist yet.
    pub const EXCL: u8 = 0x01;
    /// The data is a raw file (a disk image), not an archive.
    pub const RAW: u8 = 0x02;
    /// Content-defined chunks: a dynamic index.
    pub const DYNAMIC_CHUNKS: u8 = 0x04;
    /// Every flag version 1 defines; other bits are refused.
    pub const KNOWN: u8 = Self::EXCL | Self::RAW | Self::DYNAMIC_CHUNKS;

    pub fn excl(self) -> bool {
        self.0 & Self::EXCL != 0
    }
    pub fn raw(self) -> bool {
        self.0 & Self::RAW != 0
    }
    pub fn dynamic(self) -> bool {
        self.0 & Self::DYNAMIC_CHUNKS != 0
    }
}

/// Creates one file of a snapshot. Names are validated on decode, so a
/// decoded request can be turned into paths without further checks.
/// Semantic checks that need the datastore (sizes against limits, the
/// snapshot's existence) are the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateBackup {
    pub backup_type: BackupType,
    pub id: BackupId,
    pub time: SnapshotTime,
    pub flags: BackupFlags,
    pub name: FileName,
    pub chunk_size: u32,
    pub file_size: u64,
}

impl CreateBackup {
    pub(crate) fn encode_payload(&self, out: &mut BytesMut) {
        out.put_u8(self.backup_type.as_u8());
        out.put_u8(self.id.as_str().len() as u8);
        out.put_u64_le(self.time.epoch());
        out.put_u8(self.flags.0);
        out.put_u8(self.name.as_str().len() as u8);
        out.put_u32_le(self.chunk_size);
        out.put_u64_le(self.file_size);
        out.put_slice(self.id.as_str().as_bytes());
        out.put_slice(self.name.as_str().as_bytes());
    }

    pub(crate) fn encoded_len(&self) -> usize {
        CREATE_BACKUP_HEADER_SIZE + self.id.as_str().len() + self.name.as_str().len()
    }

    pub(crate) fn decode_payload(mut p: &[u8]) -> Result<Self, DecodeError> {
        if p.len() < CREATE_BACKUP_HEADER_SIZE {
            return Err(DecodeError::Length {
                what: "CreateBackup",
                expected: "at least 24 bytes",
                got: p.len(),
            });
        }
        let ty = p.get_u8();
        let id_len = p.get_u8() as usize;
        let timestamp = p.get_u64_le();
        let flags = p.get_u8();
        let name_len = p.get_u8() as usize;
        let chunk_size = p.get_u32_le();
        let file_size = p.get_u64_le();
        if p.len() != id_len + name_len {
            return Err(DecodeError::CreateBackupNames {
                id_len,
                name_len,
                rest: p.len(),
            });
        }
        if flags & !BackupFlags::KNOWN != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        Ok(CreateBackup {
            backup_type: BackupType::from_u8(ty)?,
            id: BackupId::from_bytes(&p[..id_len])?,
            time: SnapshotTime::from_epoch(timestamp)?,
            flags: BackupFlags(flags),
            name: FileName::from_bytes(&p[id_len..])?,
            chunk_size,
            file_size,
        })
    }
}
