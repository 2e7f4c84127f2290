//! What can go wrong talking to a storage.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object {0} not found")]
    NotFound(String),
    /// A key that is not a plain relative name (`check_key`).
    #[error("invalid object key {0:?}")]
    BadKey(String),
    /// An object larger than its reader allows (damage, or a hostile
    /// bucket): refused before it is read.
    #[error("object {key} has {size} bytes, more than the {max} expected")]
    TooLarge { key: String, size: u64, max: u64 },
    /// A request that failed after its retries, or could not be sent.
    #[error("{op} of {key} on {store} failed: {message}")]
    Request {
        op: &'static str,
        key: String,
        store: String,
        message: String,
    },
    /// The configuration cannot work (missing credentials, bad endpoint,
    /// a provider without conditional writes).
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
