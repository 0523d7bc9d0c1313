//! Stage timings on stderr when `QUIVER_PROFILE` is set: where a join spends its time, for
//! benchmarks and for users tuning a repository. Off by default, one env lookup per process.

use std::sync::OnceLock;
use std::time::Instant;

fn start() -> Option<Instant> {
    static START: OnceLock<Option<Instant>> = OnceLock::new();
    *START.get_or_init(|| std::env::var_os("QUIVER_PROFILE").map(|_| Instant::now()))
}

/// Whether stage timings are on.
pub fn enabled() -> bool {
    start().is_some()
}

/// Print `what` with the time since the first profiled stage of the process.
pub fn stage(what: std::fmt::Arguments<'_>) {
    if let Some(t0) = start() {
        eprintln!("[{:>8.3} s] {what}", t0.elapsed().as_secs_f64());
    }
}
