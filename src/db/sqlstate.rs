//! What a database error says about what to do next, sorted once from its SQLSTATE: the writer
//! and the schedulers retry, split or give up by the same reading of the same codes.

/// The kinds of database failure, by what makes them go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The connection, or the server behind it, is gone or not the one to write to: no SQLSTATE
    /// (the connection broke or could not be made), 08 (connection exception), 53 (insufficient
    /// resources: too many connections, disk full), 57 other than 57014 (admin shutdown,
    /// crash shutdown, a server starting up), 25006 (a read-only server: a demoted primary, a
    /// standby before its promotion). A new connection, once the server or a new primary is
    /// back, gets through.
    Connection,
    /// 57014: the statement outlived its limit (statement_timeout) or was cancelled. Retried
    /// as it was, it would most likely time out again.
    Slow,
    /// Contention or a passing state of the server, on a connection that still works: 40
    /// (deadlock, serialization failure), 55 (lock_timeout's 55P03; 55000, a database closed
    /// to connections), 25 other than 25006, 58 (system errors).
    Contention,
    /// 22 and 23: the data's fault, not the server's.
    Data,
    /// Only an operator can fix it: 42 (a revoked grant, a dropped table), 28 (a rotated
    /// password), 3D (a dropped database), XX (internal errors) and anything unknown.
    Operator,
}

impl ErrorClass {
    /// From a SQLSTATE, or None for an error that carries none (I/O, protocol, TLS).
    pub fn of_sqlstate(code: Option<&str>) -> ErrorClass {
        let Some(code) = code else {
            return ErrorClass::Connection;
        };
        if code == "57014" {
            return ErrorClass::Slow;
        }
        if code == "25006" {
            return ErrorClass::Connection;
        }
        match code.get(..2).unwrap_or("") {
            "08" | "53" | "57" => ErrorClass::Connection,
            "40" | "55" | "25" | "58" => ErrorClass::Contention,
            "22" | "23" => ErrorClass::Data,
            _ => ErrorClass::Operator,
        }
    }

    pub fn of(error: &tokio_postgres::Error) -> ErrorClass {
        ErrorClass::of_sqlstate(error.code().map(|c| c.code()))
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorClass::{self, *};

    #[test]
    fn codes_are_sorted_by_what_makes_them_go_away() {
        for (code, class) in [
            (None, Connection),
            (Some("08006"), Connection), // connection failure
            (Some("08P01"), Connection), // protocol violation
            (Some("57P01"), Connection), // admin shutdown (a failover's fast stop)
            (Some("57P02"), Connection), // crash shutdown
            (Some("57P03"), Connection), // the server is starting
            (Some("53300"), Connection), // too many connections
            (Some("53100"), Connection), // disk full
            (Some("25006"), Connection), // read-only: a standby, a demoted primary
            (Some("57014"), Slow),
            (Some("40P01"), Contention), // deadlock
            (Some("40001"), Contention), // serialization failure
            (Some("55P03"), Contention), // lock_timeout
            (Some("55000"), Contention), // database closed to connections
            (Some("25P02"), Contention), // in a failed transaction
            (Some("58030"), Contention), // I/O error
            (Some("22003"), Data),
            (Some("23505"), Data),
            (Some("28P01"), Operator), // bad password
            (Some("42501"), Operator), // missing grant
            (Some("42P01"), Operator), // dropped table
            (Some("3D000"), Operator), // dropped database
            (Some("XX000"), Operator),
            (Some("X"), Operator),
            (Some(""), Operator),
        ] {
            assert_eq!(ErrorClass::of_sqlstate(code), class, "{code:?}");
        }
    }
}
