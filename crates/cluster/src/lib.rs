//! Quiver's point-in-time join on an Apache DataFusion Ballista 55 cluster.
//!
//! The client plans a join exactly as it does locally and submits the physical plan
//! ([`Cluster`], a [`quiver_offline::runner::PlanRunner`]); Ballista's scheduler cuts it into
//! stages at the hash repartitions, and executors run the stages, exchanging the shuffle
//! through Arrow Flight. Quiver's operators travel through [`QuiverCodec`], which the client,
//! the scheduler ([`scheduler`]) and every executor ([`executor`]) register. No scheduler or
//! shuffle of Quiver's own: only the codec and the settings the processes start with.

mod client;
mod codec;
mod error;
mod serve;
mod settings;

pub use client::Cluster;
pub use codec::QuiverCodec;
pub use error::{Error, Result};
pub use serve::{ExecutorHandle, ExecutorOptions, SchedulerHandle, executor, scheduler};
pub use settings::StorageOptions;
