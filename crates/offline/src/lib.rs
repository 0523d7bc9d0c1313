//! Quiver's offline engine: point-in-time correct training sets from Parquet and CSV sources.
//!
//! The point-in-time join is a DataFusion extension (DESIGN §4): a logical node
//! ([`plan::PitJoinNode`]), an extension planner and a physical operator
//! ([`plan::PitJoinExec`]) that asks DataFusion for both inputs hash-partitioned on the entity
//! key and sweeps each partition once ([`sweep`]). [`Engine`] resolves a request against a
//! [`quiver_core::Repo`], checks every column before reading data, prunes scans to the needed
//! columns and to the spine's time range, and returns the training set in spine order.
//!
//! ```no_run
//! # async fn f() -> quiver_offline::Result<()> {
//! use quiver_offline::{Engine, EngineOptions, JoinRequest};
//! let repo = quiver_core::Repo::load("sample-data")?;
//! let features = repo.service("churn_v1")?;
//! let engine = Engine::new(repo, EngineOptions::default())?;
//! let out = engine
//!     .join_file("sample-data/spine.csv".as_ref(), &JoinRequest { features, ..Default::default() })
//!     .await?;
//! println!("{} rows", out.batch.num_rows());
//! # Ok(()) }
//! ```

mod dd;
pub mod delta;
mod engine;
mod error;
pub mod gate;
pub mod layout;
pub mod objects;
mod pack;
pub mod plan;
pub mod profile;
pub mod reuse;
pub mod runner;
pub mod source;
mod spill_dir;
pub mod state;
pub mod stats;
pub mod sweep;
pub mod table;

pub use engine::{
    Engine, EngineOptions, JoinOutput, JoinRequest, SourceVersion, session, spine_time_column,
};
pub use error::{Error, ObjectFault, Result};
pub use table::{Columns, TrainingSet};
