//! What can be wrong with an archive.

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The bytes do not follow the format (truncated, lying lengths,
    /// references out of range).
    #[error("malformed archive: {0}")]
    Malformed(String),
    /// A name a restore must never create: empty, `.`, `..`, holding `/`
    /// or NUL, or an absolute or escaping link path.
    #[error("archive entry name {0:?} is not allowed (path escape)")]
    BadName(String),
    #[error("{0}: no such file or directory in the archive")]
    NotFound(String),
    #[error("{0} is not a directory in the archive")]
    NotADirectory(String),
    /// Reading the underlying stream failed (network, damaged chunk).
    #[error("{0}")]
    Source(String),
}

pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;
