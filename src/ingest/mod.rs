//! Redis in: the pub/sub session and the byte-bounded queue it fills.

pub mod journal;
pub mod pubsub;
pub mod queue;
pub mod streams;
