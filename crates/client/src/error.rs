//! What can go wrong on the client side, sorted by what the user has to
//! do about it: each kind has its own exit code (README, "Exit codes").

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to server {server}: {source}")]
    Connect {
        server: String,
        source: std::io::Error,
    },
    /// No pin and no CA vouches for the server's certificate.
    #[error(
        "the certificate of server {server} is not trusted; its SHA-256 fingerprint is\n  {fingerprint}\nCompare it with `hoard cert fingerprint` on the server, then pass --fingerprint (or set HOARD_FINGERPRINT), or confirm it interactively on a terminal"
    )]
    Untrusted { server: String, fingerprint: String },
    #[error(
        "server {server} presented a certificate with fingerprint\n  {seen}\nnot the expected\n  {expected}\nRefusing to connect: the server's certificate changed, or someone is in between.{hint}"
    )]
    FingerprintMismatch {
        server: String,
        expected: String,
        seen: String,
        hint: String,
    },
    /// The server refused the token, or the token may not do this.
    #[error("{0}")]
    Denied(String),
    #[error("connection to the server lost: {0}")]
    ConnectionLost(String),
    /// The server dropped the connection before the session began (a
    /// handshake evicted under load): tried again by `connect`.
    #[error("connection to the server lost: {0}")]
    Opening(String),
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    /// The server answered an Error packet.
    #[error("server refused {what}: {message}{}", if *.busy { " (busy, try again later)" } else { "" })]
    Server {
        what: String,
        message: String,
        busy: bool,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("cannot read source {}: {source}", .path.display())]
    Source {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write target {}: {source}", .path.display())]
    Target {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Damaged(String),
    #[error("{0}")]
    Usage(String),
    /// The encryption key is missing, wrong, or will not unlock.
    #[error("{0}")]
    Key(String),
    /// A stream given up because another part of the same backup failed:
    /// a consequence, never shown while its cause is known.
    #[error("{0}")]
    Abandoned(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code for this error (README, "Exit codes").
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Connect { .. }
            | Error::ConnectionLost(_)
            | Error::Opening(_)
            | Error::Protocol(_)
            | Error::Abandoned(_) => 3,
            Error::NotFound(_) => 4,
            Error::Server { .. } => 5,
            Error::Source { .. } => 6,
            Error::Target { .. } => 7,
            Error::Damaged(_) => 8,
            Error::Untrusted { .. } | Error::FingerprintMismatch { .. } => 9,
            Error::Denied(_) => 10,
            Error::Key(_) => 11,
        }
    }

    /// The error to report of several that ended one operation: the
    /// first that is not a mere consequence of another.
    pub(crate) fn first_cause(errors: impl IntoIterator<Item = Error>) -> Option<Error> {
        errors
            .into_iter()
            .min_by_key(|e| matches!(e, Error::Abandoned(_)))
    }

    pub(crate) fn source_io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Source {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn target_io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Target {
            path: path.to_path_buf(),
            source,
        }
    }
}
