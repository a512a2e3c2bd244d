//! The integration tests, one binary: each module is one area, `common` holds the harness
//! (a fresh database per test cloned from a migrated template, `spawn_app`, child-process
//! daemons and private Redis servers). One binary instead of one per area: the library and the
//! harness are linked once, and `cargo test --test it <area>::` still runs one area.

mod common;

mod architecture;
mod check_config;
mod daemon;
mod dead_letters;
mod failover;
mod faults;
mod indicator_replica;
mod indicators;
mod journal;
mod loadgen_oracle;
mod logs;
mod maintenance;
mod migrate;
mod observability;
mod oversized;
mod reconcile;
mod refusals;
mod schema;
mod security;
mod status;
mod streams;
mod sync;
mod systemd;
mod tls;
mod verify;
