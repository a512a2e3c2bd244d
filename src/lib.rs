//! trading-sync: keeps a trading system's analytics in PostgreSQL true, in real time.
//!
//! The crate's public face is for the binary, the integration tests and the benches.

pub mod cli;
pub mod config;
pub mod db;
pub mod telemetry;
