//! Quiver's data model and the rules every path shares.
//!
//! `quiver-core` holds what the offline engine, the online store and the registry must agree
//! on: the feature repository file (`quiver.yaml`) and its validation, durations and instants,
//! the point-in-time semantics of DESIGN §3 (windows, aggregates, result types, key matching,
//! output naming) and the error type that reports mistakes with the file and field they are in.
//! It depends on no engine, server or store.
//!
//! ```
//! use quiver_core::{Duration, semantics::{Closed, Window}};
//! let w = Window { length: Some(Duration::parse("30d").unwrap()), offset: Duration::ZERO, closed: Closed::Right };
//! let t = 100 * 86_400_000_000;
//! // (t − 30d, t]: an event exactly 30 days old is out, one at t is in.
//! assert!(!w.contains(t, t - 30 * 86_400_000_000));
//! assert!(w.contains(t, t));
//! ```

pub mod config;
pub mod duration;
pub mod error;
pub mod hash;
pub mod semantics;
pub mod store;
pub mod time;

pub use config::{Feature, FeatureKind, FeatureRef, FeatureView, Repo, Source};
pub use duration::Duration;
pub use error::{Error, Result};
