//! Standard output that a closed pipe ends quietly.
//!
//! `println!` panics when the reader has gone away (`hoard snapshots |
//! head -1`). Commands print through [`outln!`] instead, which returns
//! [`StdoutClosed`] for a broken pipe; `main` ends such a run quietly, as
//! `cat` or `grep` do. Signals stay as they are: a closed connection to
//! the server must remain an error, not a silent SIGPIPE death.

use std::io::Write;

/// The reader of standard output closed it.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Writes `args` to standard output, followed by `end`.
pub fn write(args: std::fmt::Arguments, end: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let result = out
        .write_fmt(args)
        .and_then(|()| out.write_all(end.as_bytes()));
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::anyhow!("cannot write to standard output: {e}")),
    }
}

/// Whether `e` ended the run only because standard output was closed.
pub fn closed(e: &anyhow::Error) -> bool {
    if e.downcast_ref::<StdoutClosed>().is_some() {
        return true;
    }
    // An image restored to `-` whose reader stopped reading.
    matches!(
        e.downcast_ref::<hoard_client::Error>(),
        Some(hoard_client::Error::Target { path, source })
            if path.as_os_str() == "-" && source.kind() == std::io::ErrorKind::BrokenPipe
    )
}

/// `println!` that returns [`StdoutClosed`] instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*), "\n")
    };
}

/// `print!` that returns [`StdoutClosed`] instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*), "")
    };
}
