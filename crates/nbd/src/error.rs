//! What can go wrong talking to an NBD server.

/// An NBD client's error; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad NBD URI {0}")]
    Uri(String),
    #[error("cannot reach the NBD server at {0}")]
    Connect(String),
    #[error("NBD server refused: {0}")]
    Refused(String),
    #[error("NBD protocol error: {0}")]
    Protocol(String),
    #[error("NBD server error {name} ({code}){}{}", if message.is_empty() { String::new() } else { format!(": {message}") }, offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
    Server {
        code: u32,
        name: &'static str,
        message: String,
        offset: Option<u64>,
    },
    #[error("bytes {offset}+{len} are outside the export of {size} bytes")]
    Range { offset: u64, len: u64, size: u64 },
    #[error("NBD connection failed while {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
