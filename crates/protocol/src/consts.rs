//! Every constant of the wire format, in the order of `docs/protocol.md`.

/// Size of the packet header: stream id u8, type u8, length u32 LE.
pub const HEADER_SIZE: usize = 6;
/// Largest packet, header included. A larger declared length is fatal.
pub const MAX_PACKET_SIZE: u32 = 16 * 1024 * 1024;
/// Magic at the start of the server's Hello.
pub const HELLO_MAGIC: [u8; 8] = *b"PMXBCKUP";
/// The seed's protocol version: a Hello of [`HELLO_SIZE`] bytes, no
/// authentication packet (the transport authenticated the peer, or the
/// operator opened a plain listener for it).
pub const PROTOCOL_VERSION: u32 = 1;
/// Version 2: the Hello carries feature flags and the client's first
/// packet is an Authenticate (docs/protocol.md, "Version 2").
pub const PROTOCOL_VERSION_2: u32 = 2;
/// Version 1 Hello payload: magic, version u32.
pub const HELLO_SIZE: usize = 12;
/// Version 2 Hello payload: magic, version u32, features u64.
pub const HELLO_V2_SIZE: usize = 20;
/// Authenticate payload before the token: features u64, token length u16.
pub const AUTHENTICATE_HEADER_SIZE: usize = 10;
/// Longest token in an Authenticate packet (`NAME:SECRET`).
pub const MAX_TOKEN_LEN: usize = 512;
/// Largest packet a server reads before the peer authenticated: room for
/// an Authenticate with the longest token, nothing a flood could use.
pub const MAX_PREAUTH_PACKET_SIZE: u32 = 1024;
/// TLS ALPN protocol id of version 2 of the packet protocol. A TLS client
/// that offers no ALPN (or `http/1.1`) speaks HTTP on the same port.
pub const ALPN_V2: &[u8] = b"hoard/2";
/// SealSnapshot payload before the body: path length u16 … then the MAC.
pub const SEAL_MAC_SIZE: usize = 32;
/// Longest seal body: a manifest of the most files a snapshot may hold
/// fits many times over.
pub const MAX_SEAL_BODY: usize = 1 << 20;
/// Stream id of the server's Hello.
pub const HELLO_STREAM: u8 = 0;
/// Fixed part of a CreateBackup payload (id and name follow).
pub const CREATE_BACKUP_HEADER_SIZE: usize = 24;
/// One BackupDataFixed entry: chunk index u64, digest.
pub const FIXED_ENTRY_SIZE: usize = 40;
/// One BackupDataDynamic entry: start offset u64, digest.
pub const DYNAMIC_ENTRY_SIZE: usize = 40;
/// Chunk packet before the data: header, offset u64, digest.
pub const CHUNK_PACKET_OVERHEAD: usize = HEADER_SIZE + 8 + 32;
/// Largest chunk: one that still fits in a Chunk packet when downloaded.
pub const MAX_CHUNK_SIZE: usize = hoard_types::MAX_CHUNK_SIZE;
const _: () = assert!(MAX_CHUNK_SIZE == MAX_PACKET_SIZE as usize - CHUNK_PACKET_OVERHEAD);
/// Most digests in one HashListPart or DownloadChunks packet.
pub const MAX_DIGESTS_PER_PACKET: usize = (MAX_PACKET_SIZE as usize - HEADER_SIZE) / 32;
/// Most entries in one BackupData packet.
pub const MAX_ENTRIES_PER_PACKET: usize = (MAX_PACKET_SIZE as usize - HEADER_SIZE) / 40;
