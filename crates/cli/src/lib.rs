//! The jobs behind the `quiver` command line, composed from the offline engine and the online
//! store (which never depend on each other): materializing feature views into the online store
//! and serving lookups from it.

pub mod online;
