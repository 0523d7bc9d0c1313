//! Integration tests of the offline engine, one binary for all areas.

mod cluster;
mod common;
mod differential;
mod errors;
mod memory;
mod objects;
mod online;
mod reuse;
mod s3;
mod semantics;
mod sources;
mod versions;
