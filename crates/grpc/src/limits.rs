//! The server's bounds on what one request may carry and on requests at once: read by the
//! server that applies them and by the guard that names them in its refusals.

/// Largest lookup, push or job request accepted by default (16 MiB): a lookup is a few
/// hundred entities, a push some thousands of rows, neither a bulk load.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Largest model registration accepted (256 MiB): it carries the artifact.
pub const MAX_ARTIFACT_BYTES: usize = 256 << 20;

/// Largest Flight message accepted (64 MiB): one record batch of an uploaded spine.
pub const MAX_FLIGHT_MESSAGE_BYTES: usize = 64 << 20;

/// Most requests answered at once by default.
pub const MAX_IN_FLIGHT: usize = 512;
