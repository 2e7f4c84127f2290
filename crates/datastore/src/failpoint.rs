//! Crash points for the crash harness (`crates/cli/tests/crash.rs`).
//!
//! `HOARD_FAILPOINT=POINT:N` makes the process end at once with status
//! 137, as SIGKILL would (no destructor or exit handler runs, nothing is
//! flushed or cleaned up; the kernel releases the locks), the N-th time it
//! reaches `POINT`. Points name a temp file's
//! kind and a step of making it visible: `KIND:sync` (written, before its
//! fsync), `KIND:rename` (synced, before its rename), `KIND:renamed`
//! (renamed, before its directory's fsync), where KIND is `chunk`,
//! `fidx`, `didx`, `manifest.json`, `owner`. Unset, the normal case, a
//! point costs one load of an initialised `OnceLock`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Point {
    kind: String,
    step: String,
    left: AtomicU64,
}

fn configured() -> Option<&'static Point> {
    static POINT: OnceLock<Option<Point>> = OnceLock::new();
    POINT
        .get_or_init(|| {
            let spec = std::env::var("HOARD_FAILPOINT").ok()?;
            let (point, n) = spec.rsplit_once(':')?;
            let (kind, step) = point.rsplit_once(':')?;
            Some(Point {
                kind: kind.to_string(),
                step: step.to_string(),
                left: AtomicU64::new(n.parse().ok()?),
            })
        })
        .as_ref()
}

/// Aborts the process here if this is the configured point's N-th hit.
pub(crate) fn hit(kind: &str, step: &str) {
    let Some(p) = configured() else { return };
    if p.kind == kind && p.step == step && p.left.fetch_sub(1, Ordering::SeqCst) == 1 {
        eprintln!("hoard: failpoint {kind}:{step} reached: exiting as if killed");
        // SAFETY: _exit(2) ends the process without touching its memory:
        // no Rust state can be observed in an inconsistent form after it.
        unsafe { libc::_exit(137) };
    }
}
