//! Decoding of `data_sync:*` messages into typed events. Pure: no I/O, no async, no clock.
//!
//! The wire contract is `shared/spec/EVENTS.md`; publishers are the Python `DataSyncEventBus`,
//! which sends `json.dumps(event)` with `datetime.utcnow().isoformat()` timestamps. Every message
//! either decodes into an [`Event`] whose every value already fits the PostgreSQL columns it will
//! be written to, or fails with a [`DecodeError`] naming the reason (for the dead-letter table)
//! and a stable [`DecodeError::kind`] (for metrics). [`decode`] never panics.
//!
//! Checks run in this order, and the first failure is the one reported:
//!
//! 1. size: more than [`DecodeLimits::max_message_bytes`] → `oversized`, never parsed;
//! 2. UTF-8 → `not_utf8`;
//! 3. JSON (serde_json, whose recursion limit of 128 turns deep nesting into a clean error) →
//!    `not_json`. Python's `json.dumps` writes bare `NaN` / `Infinity` for float nan/inf, which is
//!    not JSON and lands here;
//! 4. a JSON object → `not_object`;
//! 5. `type`: a string → `missing_field` / `bad_type`; one of the three known types →
//!    `unknown_type`; the type of the channel the message came from → `wrong_channel` (a
//!    publisher bug: the channel, not the payload, decides which stream, consumer and ordering an
//!    event gets, so one on the wrong channel is not applied);
//! 6. `data` an object, `timestamp` a timestamp (see [`num::timestamp`]);
//! 7. the fields of `data`, in the order the type's module lists them.
//!
//! Common field rules:
//!
//! - JSON `null` is the same as an absent field: optional fields take their default, required
//!   ones fail with `missing_field`. (Python publishers write `None` for "not known".)
//! - Unknown fields are ignored, in the envelope and in `data`. `service` and `correlation_id` are
//!   not read at all: the idempotency key is `data.trade_id`.
//! - A duplicated key keeps its last value, as Python's `json.loads` does.
//! - Strings must be non-empty, contain no NUL (PostgreSQL text rejects it, which would fail the
//!   whole batch the row is in) and be at most the column's length in characters. They are not
//!   trimmed or case-folded: identifiers are stored as sent.
//! - Decimals are read exactly from their text and must fit NUMERIC(15,4); see [`num`].

pub(crate) mod market_data;
pub(crate) mod num;
pub(crate) mod position;
pub(crate) mod trade;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

pub use crate::core::ChannelKind;

pub(crate) use market_data::MarketDataUpdated;
pub(crate) use position::PositionUpdated;
pub use trade::{Side, TradeExecuted};

/// Default for [`DecodeLimits::max_message_bytes`]: 64 KiB, far above the ~350 bytes of a real
/// event, small enough that a runaway publisher cannot make one message cost much.
pub(crate) const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest `type` / `trade_id` text the error accessors hand back for the dead-letter row.
const MAX_CONTEXT_CHARS: usize = 100;

/// Longest excerpt of an offending value quoted in an error message.
const MAX_EXCERPT_CHARS: usize = 40;

/// Limits and settings that decoding depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Larger messages are rejected unparsed. Default [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub max_message_bytes: usize,
    /// The exchange's time zone: a trade's `trade_date` is its execution instant's date here.
    /// Default America/New_York.
    pub exchange_tz: chrono_tz::Tz,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            exchange_tz: chrono_tz::America::New_York,
        }
    }
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Trade(TradeExecuted),
    Position(PositionUpdated),
    MarketData(MarketDataUpdated),
}

/// What could be read from a message before it failed, for the dead-letter row.
///
/// A value is kept only if it can be stored as it is in a text column: no NUL, at most 100
/// characters. The error message still quotes an (escaped) excerpt of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorContext {
    /// The envelope's `type`, known or not.
    pub event_type: Option<String>,
    /// `data.trade_id`, whatever the type: a trade sent with a broken envelope is still worth
    /// finding by its id.
    pub trade_id: Option<String>,
}

impl ErrorContext {
    fn read(envelope: &Map<String, Value>) -> Self {
        let storable = |v: Option<&Value>| match v {
            Some(Value::String(s))
                if !s.is_empty() && !s.contains('\0') && s.chars().count() <= MAX_CONTEXT_CHARS =>
            {
                Some(s.clone())
            }
            _ => None,
        };
        ErrorContext {
            event_type: storable(envelope.get("type")),
            trade_id: storable(
                envelope
                    .get("data")
                    .and_then(Value::as_object)
                    .and_then(|d| d.get("trade_id")),
            ),
        }
    }
}

/// Why a message was not applied. `Display` is the reason written to the dead-letter table: it
/// never contains NUL and quotes offending values only as short escaped excerpts. Field names are
/// paths from the envelope (`data.price`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {len} bytes, over the {max}-byte limit; not parsed")]
    Oversized { len: usize, max: usize },

    #[error("message is not UTF-8 (invalid byte at offset {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },

    #[error("not JSON: {reason}")]
    NotJson { reason: String },

    #[error("message is JSON {found}, not an object")]
    NotObject { found: &'static str },

    #[error("{field}: required field is missing or null")]
    MissingField {
        field: &'static str,
        ctx: ErrorContext,
    },

    #[error("{field}: expected {expected}, found {found}")]
    BadType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
        ctx: ErrorContext,
    },

    #[error("{field}: {reason}")]
    BadValue {
        field: &'static str,
        reason: String,
        ctx: ErrorContext,
    },

    #[error("{field}: {reason}")]
    OutOfRange {
        field: &'static str,
        reason: String,
        ctx: ErrorContext,
    },

    #[error("unknown event type {shown}")]
    UnknownType {
        /// Escaped excerpt of the type, for the message.
        shown: String,
        ctx: ErrorContext,
    },

    #[error("event type {event_type} belongs on the {expected} channel, not on {channel}")]
    WrongChannel {
        event_type: &'static str,
        expected: ChannelKind,
        channel: ChannelKind,
        ctx: ErrorContext,
    },
}

impl DecodeError {
    /// Short stable label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::NotUtf8 { .. } => "not_utf8",
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::NotObject { .. } => "not_object",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::BadType { .. } => "bad_type",
            DecodeError::BadValue { .. } => "bad_value",
            DecodeError::OutOfRange { .. } => "out_of_range",
            DecodeError::UnknownType { .. } => "unknown_type",
            DecodeError::WrongChannel { .. } => "wrong_channel",
        }
    }

    /// Every label [`kind`](Self::kind) can return (a test checks the list is complete); the
    /// dead-letter counter is registered at zero for each at start.
    pub(crate) const KINDS: [&'static str; 10] = [
        "oversized",
        "not_utf8",
        "not_json",
        "not_object",
        "missing_field",
        "bad_type",
        "bad_value",
        "out_of_range",
        "unknown_type",
        "wrong_channel",
    ];

    /// The field the error is about, for errors about one field.
    #[cfg(test)]
    pub(crate) fn field(&self) -> Option<&'static str> {
        match self {
            DecodeError::MissingField { field, .. }
            | DecodeError::BadType { field, .. }
            | DecodeError::BadValue { field, .. }
            | DecodeError::OutOfRange { field, .. } => Some(field),
            _ => None,
        }
    }

    /// What was read before the failure; `None` when it failed before the envelope was an object.
    pub(crate) fn context(&self) -> Option<&ErrorContext> {
        match self {
            DecodeError::Oversized { .. }
            | DecodeError::NotUtf8 { .. }
            | DecodeError::NotJson { .. }
            | DecodeError::NotObject { .. } => None,
            DecodeError::MissingField { ctx, .. }
            | DecodeError::BadType { ctx, .. }
            | DecodeError::BadValue { ctx, .. }
            | DecodeError::OutOfRange { ctx, .. }
            | DecodeError::UnknownType { ctx, .. }
            | DecodeError::WrongChannel { ctx, .. } => Some(ctx),
        }
    }

    /// The envelope's `type`, if it was a storable string (see [`ErrorContext`]).
    pub(crate) fn event_type(&self) -> Option<&str> {
        self.context()?.event_type.as_deref()
    }

    /// `data.trade_id`, if it was a storable string (see [`ErrorContext`]).
    pub(crate) fn trade_id(&self) -> Option<&str> {
        self.context()?.trade_id.as_deref()
    }

    fn with_context(mut self, new: &ErrorContext) -> Self {
        match &mut self {
            DecodeError::MissingField { ctx, .. }
            | DecodeError::BadType { ctx, .. }
            | DecodeError::BadValue { ctx, .. }
            | DecodeError::OutOfRange { ctx, .. }
            | DecodeError::UnknownType { ctx, .. }
            | DecodeError::WrongChannel { ctx, .. } => *ctx = new.clone(),
            _ => {}
        }
        self
    }

    pub(crate) fn missing(field: &'static str) -> Self {
        DecodeError::MissingField {
            field,
            ctx: ErrorContext::default(),
        }
    }

    pub(crate) fn bad_type(field: &'static str, expected: &'static str, found: &Value) -> Self {
        DecodeError::BadType {
            field,
            expected,
            found: json_kind(found),
            ctx: ErrorContext::default(),
        }
    }

    pub(crate) fn bad_value(field: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::BadValue {
            field,
            reason: reason.into(),
            ctx: ErrorContext::default(),
        }
    }

    pub(crate) fn out_of_range(field: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::OutOfRange {
            field,
            reason: reason.into(),
            ctx: ErrorContext::default(),
        }
    }
}

/// Decodes one message that arrived on `channel`. See the module docs for the order of checks.
pub fn decode(
    channel: ChannelKind,
    raw: &[u8],
    limits: &DecodeLimits,
) -> Result<Event, DecodeError> {
    if raw.len() > limits.max_message_bytes {
        return Err(DecodeError::Oversized {
            len: raw.len(),
            max: limits.max_message_bytes,
        });
    }
    let text = std::str::from_utf8(raw).map_err(|e| DecodeError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| not_json(text, &e))?;
    let Value::Object(envelope) = value else {
        return Err(DecodeError::NotObject {
            found: json_kind(&value),
        });
    };
    decode_envelope(channel, &envelope, limits)
        .map_err(|e| e.with_context(&ErrorContext::read(&envelope)))
}

fn decode_envelope(
    channel: ChannelKind,
    envelope: &Map<String, Value>,
    limits: &DecodeLimits,
) -> Result<Event, DecodeError> {
    let type_text = match get(envelope, "type") {
        None => return Err(DecodeError::missing("type")),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(DecodeError::bad_type("type", "a string", other)),
    };
    let Some(expected) = ChannelKind::for_event_type(type_text) else {
        return Err(DecodeError::UnknownType {
            shown: excerpt(type_text),
            ctx: ErrorContext::default(),
        });
    };
    if expected != channel {
        return Err(DecodeError::WrongChannel {
            event_type: expected.event_type(),
            expected,
            channel,
            ctx: ErrorContext::default(),
        });
    }
    let data = match get(envelope, "data") {
        None => return Err(DecodeError::missing("data")),
        Some(Value::Object(data)) => data,
        Some(other) => return Err(DecodeError::bad_type("data", "an object", other)),
    };
    let envelope_ts = num::timestamp("timestamp", required(envelope, "timestamp")?, false)?;
    Ok(match channel {
        ChannelKind::Trades => Event::Trade(trade::decode(data, envelope_ts, limits)?),
        ChannelKind::Positions => Event::Position(position::decode(data, envelope_ts)?),
        ChannelKind::MarketData => Event::MarketData(market_data::decode(data)?),
    })
}

/// serde_json reports where it stopped; when that is a bare `NaN` / `Infinity` the reason says
/// so, since it is the one malformed JSON a well-meaning Python publisher produces.
fn not_json(text: &str, e: &serde_json::Error) -> DecodeError {
    let mut reason = e.to_string();
    let line_start = text
        .split_inclusive('\n')
        .take(e.line().saturating_sub(1))
        .map(str::len)
        .sum::<usize>();
    let at = line_start + e.column().saturating_sub(1);
    let around = text.get(at.saturating_sub(1)..).unwrap_or("");
    if ["NaN", "Infinity", "-Infinity"]
        .iter()
        .any(|t| around.starts_with(t) || text.get(at..).is_some_and(|r| r.starts_with(t)))
    {
        reason.push_str(
            " (bare NaN/Infinity, as Python's json.dumps writes for float nan/inf, is not JSON)",
        );
    }
    DecodeError::NotJson { reason }
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short, escaped rendering of untrusted text for error messages: `Debug` escapes NUL, quotes
/// and control characters, and the length is capped so one message cannot bloat the dead-letter
/// reason.
pub(crate) fn excerpt(s: &str) -> String {
    let mut chars = s.char_indices();
    match chars.nth(MAX_EXCERPT_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
    }
}

/// The value at the last segment of `field` (`data.price` → `price`), with `null` as absent.
pub(crate) fn get<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Option<&'a Value> {
    let key = field.rsplit('.').next().unwrap_or(field);
    obj.get(key).filter(|v| !v.is_null())
}

pub(crate) fn required<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a Value, DecodeError> {
    get(obj, field).ok_or_else(|| DecodeError::missing(field))
}

/// An optional string field, checked as described in the module docs.
pub(crate) fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
    max_chars: usize,
) -> Result<Option<&'a str>, DecodeError> {
    let Some(v) = get(obj, field) else {
        return Ok(None);
    };
    let Value::String(s) = v else {
        return Err(DecodeError::bad_type(field, "a string", v));
    };
    if s.is_empty() {
        return Err(DecodeError::bad_value(field, "must not be empty"));
    }
    if s.contains('\0') {
        return Err(DecodeError::bad_value(
            field,
            format!(
                "{} contains NUL, which PostgreSQL text cannot store",
                excerpt(s)
            ),
        ));
    }
    let chars = s.chars().count();
    if chars > max_chars {
        return Err(DecodeError::out_of_range(
            field,
            format!(
                "{} is {chars} characters, over the {max_chars}-character limit",
                excerpt(s)
            ),
        ));
    }
    Ok(Some(s))
}

pub(crate) fn req_str<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
    max_chars: usize,
) -> Result<&'a str, DecodeError> {
    opt_str(obj, field, max_chars)?.ok_or_else(|| DecodeError::missing(field))
}

/// An optional timestamp that defaults to the envelope's.
pub(crate) fn timestamp_or(
    obj: &Map<String, Value>,
    field: &'static str,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, DecodeError> {
    get(obj, field).map_or(Ok(default), |v| num::timestamp(field, v, false))
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Fixture editing for the decoder tests. The JSON itself is written by the load generator's
    //! Python-JSON writer (`loadgen::pyjson`, a dev-dependency): the project has one such
    //! writer, and it lives outside the daemon so that it cannot share the decoder's mistakes.

    use loadgen::PyDict;
    use serde_json::Value;

    /// The envelope `envelope` with its `data` edited as a Python publisher would edit the
    /// dict (a set key keeps its place, a new one goes last): `None` removes a key.
    pub(crate) fn edit_data(envelope: &str, edits: &[(&str, Option<Value>)]) -> String {
        let mut env = PyDict::parse(envelope).expect("a JSON object");
        let mut data = PyDict::parse(env.get("data").expect("data")).expect("data is an object");
        for (k, v) in edits {
            match v {
                Some(v) => data.set(k, v),
                None => data.remove(k),
            };
        }
        env.set_raw("data", data.dumps());
        env.dumps()
    }

    /// A JSON number with exactly this text (serde_json's `arbitrary_precision` keeps it, and
    /// the writer writes it back as is).
    pub(crate) fn number(text: &str) -> Value {
        Value::Number(text.parse().expect("valid JSON number"))
    }

    #[test]
    fn edit_data_keeps_order_and_text() {
        let text = r#"{"type": "t", "data": {"b": 1.50, "a": [1, 2], "d": 1e-05}, "z": null}"#;
        assert_eq!(
            edit_data(
                text,
                &[
                    ("b", None),
                    ("c", Some(serde_json::json!("x"))),
                    ("a", Some(Value::Null)),
                    ("e", Some(number("2.50"))),
                ]
            ),
            r#"{"type": "t", "data": {"a": null, "d": 1e-05, "c": "x", "e": 2.50}, "z": null}"#
        );
    }
}

impl Event {
    /// The channel this event belongs on.
    pub fn channel(&self) -> ChannelKind {
        match self {
            Event::Trade(_) => ChannelKind::Trades,
            Event::Position(_) => ChannelKind::Positions,
            Event::MarketData(_) => ChannelKind::MarketData,
        }
    }

    /// The envelope `type` it came with.
    #[cfg(test)]
    pub(crate) fn event_type(&self) -> &'static str {
        self.channel().event_type()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadgen::python_dumps;
    use proptest::prelude::*;

    const TRADE: &str = r#"{"type": "trade_executed", "service": "execution", "data": {"trade_id": "T-1", "account_id": "ACC-1", "symbol": "AAPL", "strategy": "momentum", "side": "buy", "quantity": 10, "price": 187.25, "realized_pnl": 0.0, "commission": 1.0, "win_rate": 0}, "timestamp": "2025-11-24T15:04:05.123456", "correlation_id": "T-1"}"#;
    const POSITION: &str = r#"{"type": "position_updated", "service": "execution", "data": {"account_id": "ACC-1", "symbol": "AAPL", "quantity": 10, "avg_price": 187.25}, "timestamp": "2025-11-24T15:04:05.123456"}"#;
    const BAR: &str = r#"{"type": "market_data_updated", "service": "data_ingestion", "data": {"symbol": "AAPL", "timestamp": "2025-11-24", "open": 187.44000244140625, "high": 190.0, "low": 186.5, "close": 189.1, "volume": 45123400}, "timestamp": "2025-11-24T21:10:00.000001"}"#;

    fn dec(raw: &str) -> Result<Event, DecodeError> {
        decode(
            ChannelKind::Trades,
            raw.as_bytes(),
            &DecodeLimits::default(),
        )
    }

    fn err(channel: ChannelKind, raw: &[u8]) -> DecodeError {
        decode(channel, raw, &DecodeLimits::default()).unwrap_err()
    }

    #[test]
    fn channel_suffixes() {
        for c in ChannelKind::ALL {
            assert_eq!(ChannelKind::from_suffix(c.suffix()), Some(c));
            assert_eq!(c.to_string(), c.suffix());
        }
        assert_eq!(
            ChannelKind::from_suffix("market_data"),
            Some(ChannelKind::MarketData)
        );
        assert_eq!(ChannelKind::from_suffix("Trades"), None);
        assert_eq!(ChannelKind::from_suffix("data_sync:trades"), None);
    }

    #[test]
    fn limits_default() {
        let l = DecodeLimits::default();
        assert_eq!(l.max_message_bytes, 65536);
        assert_eq!(l.exchange_tz, chrono_tz::America::New_York);
    }

    #[test]
    fn each_channel_decodes_its_type() {
        let e = dec(TRADE).unwrap();
        assert_eq!(e.channel(), ChannelKind::Trades);
        assert_eq!(e.event_type(), "trade_executed");
        let l = DecodeLimits::default();
        let p = decode(ChannelKind::Positions, POSITION.as_bytes(), &l).unwrap();
        assert_eq!(p.event_type(), "position_updated");
        let m = decode(ChannelKind::MarketData, BAR.as_bytes(), &l).unwrap();
        assert_eq!(m.event_type(), "market_data_updated");
    }

    #[test]
    fn wrong_channel() {
        let e = err(ChannelKind::Trades, POSITION.as_bytes());
        assert_eq!(e.kind(), "wrong_channel");
        assert_eq!(e.event_type(), Some("position_updated"));
        assert_eq!(
            e.to_string(),
            "event type position_updated belongs on the positions channel, not on trades"
        );
        let e = err(ChannelKind::MarketData, TRADE.as_bytes());
        assert_eq!(e.kind(), "wrong_channel");
        assert_eq!(e.trade_id(), Some("T-1"));
    }

    #[test]
    fn oversized_is_not_parsed() {
        let limits = DecodeLimits {
            max_message_bytes: 16,
            ..DecodeLimits::default()
        };
        let e = decode(ChannelKind::Trades, TRADE.as_bytes(), &limits).unwrap_err();
        assert_eq!(e.kind(), "oversized");
        assert_eq!(e.event_type(), None);
        // Even garbage is "oversized", not "not_json": the size check comes first.
        let e = decode(ChannelKind::Trades, &[0xff; 17], &limits).unwrap_err();
        assert_eq!(e.kind(), "oversized");
        assert_eq!(
            e.to_string(),
            "message is 17 bytes, over the 16-byte limit; not parsed"
        );
        // Exactly at the limit is allowed.
        let limits = DecodeLimits {
            max_message_bytes: TRADE.len(),
            ..DecodeLimits::default()
        };
        assert!(decode(ChannelKind::Trades, TRADE.as_bytes(), &limits).is_ok());
        let padded = format!("{TRADE}{}", " ".repeat(65536 - TRADE.len() + 1));
        assert_eq!(dec(&padded).unwrap_err().kind(), "oversized");
    }

    #[test]
    fn not_utf8() {
        let mut raw = TRADE.as_bytes().to_vec();
        raw[20] = 0xff;
        let e = err(ChannelKind::Trades, &raw);
        assert_eq!(e.kind(), "not_utf8");
        assert_eq!(
            e.to_string(),
            "message is not UTF-8 (invalid byte at offset 20)"
        );
        // Latin-1 "é" as a publisher with the wrong encoding would send it.
        let e = err(
            ChannelKind::Trades,
            b"{\"type\": \"trade_executed\", \"x\": \"caf\xe9\"}",
        );
        assert_eq!(e.kind(), "not_utf8");
    }

    #[test]
    fn malformed_json() {
        for raw in [
            "",
            " ",
            "{",
            "{\"type\": \"trade_executed\"",
            "{\"type\": \"trade_executed\",}",
            "{'type': 'trade_executed'}",
            "{\"type\": \"trade_executed\"} trailing",
            "{\"type\": \"trade_executed\"}{}",
            "\u{feff}{\"type\": \"trade_executed\"}",
            "{\"a\": \"\\ud800\"}",
            "{\"a\": 01}",
            "{\"a\": .5}",
        ] {
            let e = err(ChannelKind::Trades, raw.as_bytes());
            assert_eq!(e.kind(), "not_json", "{raw:?}");
            assert_eq!(e.event_type(), None);
        }
    }

    #[test]
    fn python_nan_and_infinity_are_not_json() {
        for bad in ["NaN", "Infinity", "-Infinity"] {
            let raw = TRADE.replace("\"price\": 187.25", &format!("\"price\": {bad}"));
            let e = dec(&raw).unwrap_err();
            assert_eq!(e.kind(), "not_json", "{bad}");
            assert!(e.to_string().contains("bare NaN/Infinity"), "{e}");
        }
        assert!(!dec("{").unwrap_err().to_string().contains("NaN"));
    }

    #[test]
    fn not_an_object() {
        for (raw, found) in [
            ("[]", "an array"),
            ("\"trade_executed\"", "a string"),
            ("42", "a number"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            let e = err(ChannelKind::Trades, raw.as_bytes());
            assert_eq!(e.kind(), "not_object");
            assert_eq!(
                e.to_string(),
                format!("message is JSON {found}, not an object")
            );
        }
    }

    #[test]
    fn envelope_fields() {
        let cases = [
            (
                r#"{"data": {}, "timestamp": "2025-11-24T15:04:05"}"#,
                "missing_field",
                "type: required field is missing or null",
            ),
            (
                r#"{"type": null, "data": {}, "timestamp": "2025-11-24T15:04:05"}"#,
                "missing_field",
                "type: required field is missing or null",
            ),
            (
                r#"{"type": 7, "data": {}, "timestamp": "2025-11-24T15:04:05"}"#,
                "bad_type",
                "type: expected a string, found a number",
            ),
            (
                r#"{"type": "trade_executed", "timestamp": "2025-11-24T15:04:05"}"#,
                "missing_field",
                "data: required field is missing or null",
            ),
            (
                r#"{"type": "trade_executed", "data": "x", "timestamp": "2025-11-24T15:04:05"}"#,
                "bad_type",
                "data: expected an object, found a string",
            ),
            (
                r#"{"type": "trade_executed", "data": [], "timestamp": "2025-11-24T15:04:05"}"#,
                "bad_type",
                "data: expected an object, found an array",
            ),
            (
                r#"{"type": "trade_executed", "data": {}}"#,
                "missing_field",
                "timestamp: required field is missing or null",
            ),
            (
                r#"{"type": "trade_executed", "data": {}, "timestamp": 1732460645}"#,
                "bad_type",
                "timestamp: expected an ISO 8601 timestamp string, found a number",
            ),
            (
                r#"{"type": "trade_executed", "data": {}, "timestamp": "yesterday"}"#,
                "bad_value",
                "timestamp: \"yesterday\" is not an ISO 8601 / RFC 3339 timestamp",
            ),
        ];
        for (raw, kind, msg) in cases {
            let e = dec(raw).unwrap_err();
            assert_eq!((e.kind(), e.to_string().as_str()), (kind, msg), "{raw}");
        }
    }

    #[test]
    fn optional_envelope_fields_and_unknown_fields() {
        let raw = TRADE
            .replace(r#""service": "execution""#, r#""service": null"#)
            .replace(
                r#""correlation_id": "T-1""#,
                r#""correlation_id": null, "extra": {"nested": [1, 2]}, "version": 2"#,
            );
        assert_eq!(dec(&raw).unwrap(), dec(TRADE).unwrap());
        let raw = r#"{"type": "trade_executed", "data": {"trade_id": "T-1", "account_id": "A", "symbol": "S", "new_field": "x"}, "timestamp": "2025-11-24T15:04:05"}"#;
        assert!(dec(raw).is_ok());
    }

    #[test]
    fn unknown_type() {
        let raw = TRADE.replace("trade_executed", "order_cancelled");
        let e = dec(&raw).unwrap_err();
        assert_eq!(e.kind(), "unknown_type");
        assert_eq!(e.event_type(), Some("order_cancelled"));
        assert_eq!(e.trade_id(), Some("T-1"));
        assert_eq!(e.to_string(), "unknown event type \"order_cancelled\"");
        // Case matters: types are identifiers.
        assert_eq!(
            dec(&TRADE.replace("trade_executed", "Trade_Executed"))
                .unwrap_err()
                .kind(),
            "unknown_type"
        );
    }

    #[test]
    fn context_is_only_kept_when_storable() {
        let raw = TRADE.replace("trade_executed", "bad\\u0000type");
        let e = dec(&raw).unwrap_err();
        assert_eq!(e.kind(), "unknown_type");
        assert_eq!(e.event_type(), None);
        assert_eq!(e.to_string(), "unknown event type \"bad\\0type\"");
        let long = "x".repeat(5000);
        let e = dec(&TRADE.replace("trade_executed", &long)).unwrap_err();
        assert_eq!(e.event_type(), None);
        assert!(e.to_string().len() < 100, "{e}");
        let e = dec(&TRADE.replace("\"T-1\", \"account_id\"", "\"T\\u00001\", \"account_id\""))
            .unwrap_err();
        assert_eq!(e.kind(), "bad_value");
        assert_eq!(e.field(), Some("data.trade_id"));
        assert_eq!(e.trade_id(), None);
        assert_eq!(e.event_type(), Some("trade_executed"));
    }

    #[test]
    fn nul_in_any_string_field() {
        for field in ["trade_id", "account_id", "symbol", "strategy"] {
            let raw =
                test_support::edit_data(TRADE, &[(field, Some(Value::String("A\u{0}B".into())))]);
            assert!(raw.contains("A\\u0000B"));
            let e = dec(&raw).unwrap_err();
            assert_eq!(e.kind(), "bad_value", "{field}");
            assert!(e.to_string().contains("NUL"));
            assert!(!e.to_string().contains('\0'));
        }
    }

    fn nested(depth: usize, open: &str, close: &str) -> String {
        format!("{}1{}", open.repeat(depth), close.repeat(depth))
    }

    #[test]
    fn deep_nesting_errors_cleanly() {
        let limits = DecodeLimits {
            max_message_bytes: 1 << 20,
            ..DecodeLimits::default()
        };
        for raw in [
            nested(10_000, "[", "]"),
            nested(10_000, "{\"a\": ", "}"),
            TRADE.replace(
                "\"price\": 187.25",
                &format!("\"price\": {}", nested(10_000, "[", "]")),
            ),
            // Unclosed: must not recurse either.
            "[".repeat(10_000),
        ] {
            let e = decode(ChannelKind::Trades, raw.as_bytes(), &limits).unwrap_err();
            assert_eq!(e.kind(), "not_json");
        }
        let e = decode(
            ChannelKind::Trades,
            nested(10_000, "[", "]").as_bytes(),
            &limits,
        )
        .unwrap_err();
        assert!(e.to_string().contains("recursion limit"), "{e}");
        // Depth within serde_json's limit parses, then fails on the field's type.
        let raw = TRADE.replace(
            "\"price\": 187.25",
            &format!("\"price\": {}", nested(100, "[", "]")),
        );
        assert_eq!(dec(&raw).unwrap_err().kind(), "bad_type");
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_like_python() {
        let raw = TRADE.replace("\"price\": 187.25", "\"price\": 1, \"price\": 2.5");
        let Event::Trade(t) = dec(&raw).unwrap() else {
            panic!()
        };
        assert_eq!(t.price, Some(rust_decimal::Decimal::new(25, 1)));
    }

    #[test]
    fn magic_number_object_is_still_checked() {
        // serde_json's arbitrary_precision reads this object as a number; it must still be
        // judged like any other number text.
        let raw = TRADE.replace(
            "\"price\": 187.25",
            "\"price\": {\"$serde_json::private::Number\": \"1e400\"}",
        );
        let e = dec(&raw).unwrap_err();
        assert_eq!(e.kind(), "out_of_range", "{e}");
    }

    fn assert_error_is_storable(e: &DecodeError) {
        let msg = e.to_string();
        assert!(!msg.contains('\0'), "{msg:?}");
        assert!(msg.len() <= 400, "{msg:?}");
        assert!(DecodeError::KINDS.contains(&e.kind()));
        for s in [e.event_type(), e.trade_id()].into_iter().flatten() {
            assert!(!s.contains('\0') && s.chars().count() <= MAX_CONTEXT_CHARS);
        }
    }

    fn mutate(base: &str, edits: &[(usize, u8, u8)]) -> Vec<u8> {
        const TOKENS: &[&str] = &[
            "NaN",
            "1e400",
            "-1",
            "null",
            "\\u0000",
            "[[[[",
            "}",
            "\"",
            "0.00001",
            "true",
            "1e-999999",
            "\"\"",
            "{}",
            "99999999999.99995",
            "2999-12-31T23:59:59",
            ",",
        ];
        let mut raw = base.as_bytes().to_vec();
        for &(pos, op, byte) in edits {
            let at = pos % (raw.len() + 1);
            match op % 4 {
                0 => raw.insert(at, byte),
                1 if at < raw.len() => {
                    raw.remove(at);
                }
                2 if at < raw.len() => raw[at] = byte,
                _ => {
                    let t = TOKENS[usize::from(byte) % TOKENS.len()].as_bytes();
                    raw.splice(at..at, t.iter().copied());
                }
            }
        }
        raw
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_on_arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..512), c in 0usize..3) {
            if let Err(e) = decode(ChannelKind::ALL[c], &raw, &DecodeLimits::default()) {
                assert_error_is_storable(&e);
            }
        }

        #[test]
        fn never_panics_on_mutated_payloads(
            which in 0usize..3,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
        ) {
            let (base, channel) = [(TRADE, ChannelKind::Trades), (POSITION, ChannelKind::Positions), (BAR, ChannelKind::MarketData)][which];
            let raw = mutate(base, &edits);
            match decode(channel, &raw, &DecodeLimits::default()) {
                Err(e) => assert_error_is_storable(&e),
                Ok(event) => prop_assert_eq!(event.channel(), channel),
            }
        }

        #[test]
        fn never_panics_on_replaced_field_values(
            which in 0usize..3,
            key in 0usize..16,
            value in arb_json(),
        ) {
            let (base, channel) = [(TRADE, ChannelKind::Trades), (POSITION, ChannelKind::Positions), (BAR, ChannelKind::MarketData)][which];
            let mut v: Value = serde_json::from_str(base).unwrap();
            let data_keys: Vec<String> = v["data"].as_object().unwrap().keys().cloned().collect();
            let all: Vec<String> = data_keys.iter().map(|k| format!("data.{k}")).chain(["type", "data", "timestamp", "data.executed_at", "data.as_of"].map(String::from)).collect();
            let path = &all[key % all.len()];
            match path.strip_prefix("data.") {
                Some(k) => { v["data"][k] = value; }
                None => { v[path.as_str()] = value; }
            }
            if let Err(e) = decode(channel, python_dumps(&v).as_bytes(), &DecodeLimits::default()) {
                assert_error_is_storable(&e);
            }
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            "-?[0-9]{0,20}(\\.[0-9]{0,20})?([eE][+-]?[0-9]{1,4})?"
                .prop_filter_map("JSON number", |s| s.parse().ok().map(Value::Number)),
            "\\PC{0,30}".prop_map(Value::String),
            "[\\x00-\\x7f]{0,10}".prop_map(Value::String),
            Just(Value::String("2025-11-24T15:04:05".into())),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
