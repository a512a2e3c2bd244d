//! Load generator: a deterministic (seeded) stream of `data_sync` events written byte for byte as
//! the Python publishers' `json.dumps` writes them, the aggregates they must produce, and a check
//! of a database against those aggregates.
//!
//! Used by the `loadgen` binary of this crate, trading-sync's `bench_sync` example and its
//! integration tests, and — for its Python-JSON writer — trading-sync's decoder tests.
//!
//! This crate is an oracle independent of the daemon, and must stay one: it must not depend on
//! the `trading-sync` library. It writes the bytes and sums what they must produce on its own,
//! so a bug in the daemon's decoder or fold shows up as a mismatch instead of being mirrored by
//! the check. (trading-sync's `tests/loadgen_oracle.rs` is where the two are cross-checked.)
//!
//! - [`pyjson`]: the Python-JSON writer;
//! - [`generate`]: the seeded workload and its messages;
//! - [`expected`]: the aggregates a workload must produce, and the comparison with stored rows;
//! - [`check`]: reading those rows from PostgreSQL;
//! - [`publish`]: sending a workload to Redis.

pub mod check;
pub mod expected;
pub mod generate;
pub mod publish;
pub mod pyjson;

pub use check::{applied_count, ledger_count, max_applied_seq, verify, wait_for_ledger};
pub use expected::{
    compare, published, Expected, MarkRow, MetricsRow, PortfolioRow, PositionRow, Published,
    Report, Stored, StoredPortfolio,
};
pub use generate::{workload, Channel, Generator, Message, MessageKind, Rng, Spec};
pub use publish::{connect_client, connect_redis, publish_burst, publish_paced, xadd_burst};
pub use pyjson::{python_dumps, Py, PyDict};
