//! Progress of a long one-shot job, reported through a trait the caller passes in: the jobs
//! (indicators, reconcile, dead-letter replay) say how far they are, and only the command line
//! decides how a person sees it (a bar on a terminal, periodic lines otherwise). The daemon
//! passes [`NoProgress`]: its runs log their own summaries.

use std::fmt::Debug;

/// What a job reports. Calls are cheap and may come from several tasks at once.
pub trait Progress: Send + Sync + Debug {
    /// A phase of the job begins: `what` names the items counted ("symbols", "trades"),
    /// `total` is their number when known up front.
    fn start(&self, what: &str, total: Option<u64>);
    /// `n` more items are done.
    fn advance(&self, n: u64);
    /// The phase is over (completed, failed or cancelled).
    fn finish(&self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: Option<u64>) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}
