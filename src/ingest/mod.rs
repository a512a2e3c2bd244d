//! Redis in: the pub/sub session, the stream consumer and the pub/sub journal. They fill the
//! byte-bounded queue of [`crate::core::queue`].

mod connection;
pub mod journal;
pub mod pubsub;
pub mod streams;
