//! A Redis connection made on first use and dropped after any failure, so that the next use
//! reconnects: the journal appender, the stream acker and the journal trim each hold one.

use redis::aio::MultiplexedConnection;

/// See the module doc. A failed command may have left the connection in any state (a timed-out
/// pipeline's replies may still arrive), so nothing is reused after an error.
#[derive(Default)]
pub struct Reconnecting {
    /// None until first use and after a failure.
    conn: Option<MultiplexedConnection>,
}

impl Reconnecting {
    /// Runs `op` on the connection, connecting first with `connect` if there is none; any
    /// error (connecting or from `op`) drops the connection.
    pub async fn run<T, E>(
        &mut self,
        connect: impl AsyncFnOnce() -> Result<MultiplexedConnection, E>,
        op: impl AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, E>,
    ) -> Result<T, E> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            none => none.insert(connect().await?),
        };
        let result = op(conn).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Drops the connection: a reply the caller could not trust.
    pub fn reset(&mut self) {
        self.conn = None;
    }
}
