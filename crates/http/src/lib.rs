//! Quiver over HTTP: a feature server with the routes and JSON shapes of Feast's Python
//! feature server, so a client written for Feast — Feast's own `remote` online store among
//! them — reads Quiver's without change. Routes ([`server::router`]):
//!
//! - `POST /get-online-features`: `{"features": ["view:feat", ...] | "feature_service": "...",
//!   "entities": {"user_id": [1, 2]}, "full_feature_names": false}` → `metadata.feature_names`
//!   (join keys first) and `results`, column-major, each with `values`, `statuses`
//!   (`PRESENT`, `NOT_FOUND`, `NULL_VALUE`, `OUTSIDE_MAX_AGE`) and `event_timestamps`;
//! - `POST /push`: `{"push_source_name", "df": {column: [values]}, "to": "online" |
//!   "offline" | "online_and_offline"}`;
//! - `POST /write-to-online-store`: `{"feature_view_name", "df"}`;
//! - `POST /materialize` (`start_ts`, `end_ts`, `feature_views`) and
//!   `POST /materialize-incremental` (`end_ts`, `feature_views`);
//! - `GET /health`.
//!
//! Behind a guard ([`server::router_with`]): bearer tokens and roles (`reader` looks up,
//! `writer` pushes and materializes; health is open), a bound on requests in flight, request
//! metrics, and the audit log of every write; TLS when asked ([`tls`]). `serve_metrics`
//! serves Prometheus text on its own address.
//!
//! Bodies are read as JSON whatever their content type (older Feast clients send none) and
//! unknown fields are ignored, as Feast's server does. Errors become statuses in one place
//! ([`status`]).

pub mod feast;
pub mod server;
pub mod status;
pub mod tls;

pub use status::HttpError;
