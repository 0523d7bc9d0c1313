//! Integration tests of the offline engine, one binary for all areas.

mod common;
mod differential;
mod errors;
mod memory;
mod online;
mod reuse;
mod semantics;
mod sources;
mod versions;
