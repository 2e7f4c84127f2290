//! Crash and fault points for the reliability harness
//! (`crates/cli/tests/crash.rs`, `crates/cli/tests/faults.rs`).
//!
//! `HOARD_FAILPOINT=KIND:STEP:N[:ACTION]` acts the N-th time the process
//! reaches point `KIND:STEP`, once:
//!
//! - `exit` (the default) ends the process at once with status 137, as
//!   SIGKILL would: no destructor or exit handler runs, nothing is flushed
//!   or cleaned up, the kernel releases the locks;
//! - `enospc`, `eio` make that step fail with "No space left on device"
//!   or "Input/output error";
//! - on a read step, `short` returns half the bytes and `flip` flips a
//!   bit of what was read, as a failing disk or cable might.
//!
//! Points name a file's kind and a step: writes `KIND:sync` (written,
//! before its fsync), `KIND:rename` (synced, before its rename) and
//! `KIND:renamed` (renamed, before its directory's fsync), where KIND is
//! `chunk`, `fidx`, `didx`, `manifest.json` or `owner`; reads
//! `chunk:read`. Unset, the normal case, a point costs one load of an
//! initialised `OnceLock`. A testing aid: never set it on a real server.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a point does when it fires (other than ending the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    NoSpace,
    Io,
    Short,
    Flip,
}

struct Point {
    kind: String,
    step: String,
    left: AtomicU64,
    /// `None`: end the process.
    fault: Option<Fault>,
}

fn configured() -> Option<&'static Point> {
    static POINT: OnceLock<Option<Point>> = OnceLock::new();
    POINT
        .get_or_init(|| {
            let spec = std::env::var("HOARD_FAILPOINT").ok()?;
            let mut parts = spec.split(':');
            let (kind, step, n) = (parts.next()?, parts.next()?, parts.next()?);
            let fault = match parts.next() {
                None | Some("exit") => None,
                Some("enospc") => Some(Fault::NoSpace),
                Some("eio") => Some(Fault::Io),
                Some("short") => Some(Fault::Short),
                Some("flip") => Some(Fault::Flip),
                Some(_) => return None,
            };
            Some(Point {
                kind: kind.to_string(),
                step: step.to_string(),
                left: AtomicU64::new(n.parse().ok()?),
                fault,
            })
        })
        .as_ref()
}

/// Acts if this is the configured point's N-th hit: ends the process, or
/// returns the fault the caller must simulate.
pub(crate) fn hit(kind: &str, step: &str) -> Option<Fault> {
    let p = configured()?;
    if p.kind != kind || p.step != step || p.left.fetch_sub(1, Ordering::SeqCst) != 1 {
        return None;
    }
    match p.fault {
        None => {
            eprintln!("hoard: failpoint {kind}:{step} reached: exiting as if killed");
            // SAFETY: _exit(2) ends the process without touching its
            // memory: no Rust state can be observed in an inconsistent
            // form after it.
            unsafe { libc::_exit(137) }
        }
        Some(f) => {
            eprintln!("hoard: failpoint {kind}:{step} reached: {f:?}");
            Some(f)
        }
    }
}

/// A write step: `Err` if the point makes it fail.
pub(crate) fn write_step(kind: &str, step: &str) -> std::io::Result<()> {
    match hit(kind, step) {
        Some(Fault::NoSpace) => Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        Some(Fault::Io) => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        _ => Ok(()),
    }
}

/// A read step over `data` just read: may fail it, shorten it or flip a
/// bit of it.
pub(crate) fn read_step(kind: &str, data: &mut Vec<u8>) -> std::io::Result<()> {
    match hit(kind, "read") {
        Some(Fault::Io) | Some(Fault::NoSpace) => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        Some(Fault::Short) => {
            data.truncate(data.len() / 2);
            Ok(())
        }
        Some(Fault::Flip) => {
            let middle = data.len() / 2;
            if let Some(b) = data.get_mut(middle) {
                *b ^= 0x10;
            }
            Ok(())
        }
        None => Ok(()),
    }
}
