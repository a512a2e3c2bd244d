//! trading-sync: keeps a trading system's analytics in PostgreSQL true, in real time.
//!
//! The crate's public face is for the binary, the integration tests and the benches.
//! Data path: `ingest` (Redis) → `events` (decode, pure) → `apply` (fold, pure; upsert) → PostgreSQL.

pub mod apply;
pub mod cli;
pub mod config;
pub mod core;
pub mod daemon;
pub mod db;
pub mod events;
pub mod indicators;
pub(crate) mod ingest;
pub mod logship;
pub mod maintenance;
pub mod reconcile;
pub mod telemetry;
