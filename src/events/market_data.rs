//! `market_data_updated`: one price bar. trading-sync does not store it (the ingestion service
//! owns market_data); it marks positions to `close` and, for Yahoo bars, schedules indicators.
//! Prices are rounded to NUMERIC(15,4) as PostgreSQL would store them: Yahoo sends floats like
//! 187.44000244140625.
//!
//! | field | rule |
//! |---|---|
//! | `symbol` | required string ≤ 20 |
//! | `timestamp` | required: the bar's time; a bare `YYYY-MM-DD` (daily bar) is midnight UTC |
//! | `open`, `high`, `low`, `close` | required decimals > 0 (after rounding) |
//! | `volume` | required integer ≥ 0; `1234.0` and `"1234"` count as integers |
//! | `data_source` | optional string ≤ 50, default `yahoo` |
//!
//! The prices are not cross-checked (high ≥ low etc.): only `close` is used, and the ingestion
//! service is the authority on its bars.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::num::{self, Fit};
use super::trade::SYMBOL_MAX_CHARS;
use super::{opt_str, req_str, required, DecodeError};

pub(crate) const DATA_SOURCE_MAX_CHARS: usize = 50;
pub(crate) const DEFAULT_DATA_SOURCE: &str = "yahoo";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketDataUpdated {
    pub symbol: String,
    /// The bar's time.
    pub timestamp: DateTime<Utc>,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: i64,
    /// As sent (no case folding); `yahoo` when absent or null.
    pub data_source: String,
}

fn price(data: &Map<String, Value>, field: &'static str) -> Result<Decimal, DecodeError> {
    let d = num::decimal(field, required(data, field)?, Fit::Round)?;
    num::require_positive(field, d)
}

pub(crate) fn decode(data: &Map<String, Value>) -> Result<MarketDataUpdated, DecodeError> {
    Ok(MarketDataUpdated {
        symbol: req_str(data, "data.symbol", SYMBOL_MAX_CHARS)?.to_owned(),
        timestamp: num::timestamp("data.timestamp", required(data, "data.timestamp")?, true)?,
        open: price(data, "data.open")?,
        high: price(data, "data.high")?,
        low: price(data, "data.low")?,
        close: price(data, "data.close")?,
        volume: num::non_negative_i64("data.volume", required(data, "data.volume")?)?,
        data_source: opt_str(data, "data.data_source", DATA_SOURCE_MAX_CHARS)?
            .unwrap_or(DEFAULT_DATA_SOURCE)
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_support::{edit_data, number};
    use crate::events::{decode as decode_event, ChannelKind, DecodeLimits, Event};
    use loadgen::pyjson::python_float_repr;
    use serde_json::json;
    use std::str::FromStr;

    /// As `publish_market_data_event` writes a Yahoo daily bar built from float columns.
    const BAR: &str = r#"{"type": "market_data_updated", "service": "data_ingestion", "data": {"symbol": "AAPL", "timestamp": "2025-11-24T00:00:00-05:00", "open": 187.44000244140625, "high": 190.1999969482422, "low": 186.5, "close": 189.97999572753906, "volume": 45123400, "data_source": "yahoo"}, "timestamp": "2025-11-24T21:10:00.000001"}"#;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn decode_raw(raw: &str) -> Result<MarketDataUpdated, DecodeError> {
        match decode_event(
            ChannelKind::MarketData,
            raw.as_bytes(),
            &DecodeLimits::default(),
        )? {
            Event::MarketData(m) => Ok(m),
            other => panic!("{other:?}"),
        }
    }

    fn with(edits: &[(&str, Option<Value>)]) -> String {
        edit_data(BAR, edits)
    }

    fn fails(edits: &[(&str, Option<Value>)], kind: &str, field: &str) {
        let e = decode_raw(&with(edits)).unwrap_err();
        assert_eq!((e.kind(), e.field()), (kind, Some(field)), "{e}");
        assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
        assert_eq!(e.event_type(), Some("market_data_updated"));
    }

    #[test]
    fn yahoo_bar() {
        let m = decode_raw(BAR).unwrap();
        assert_eq!(
            m,
            MarketDataUpdated {
                symbol: "AAPL".into(),
                timestamp: utc("2025-11-24T05:00:00Z"),
                open: d("187.44"),
                high: d("190.2"),
                low: d("186.5"),
                close: d("189.98"),
                volume: 45_123_400,
                data_source: "yahoo".into(),
            }
        );
        // The float Yahoo's 187.44 arrives as is exactly what we round.
        assert_eq!(
            python_float_repr(f64::from(187.44f32)),
            "187.44000244140625"
        );
    }

    #[test]
    fn defaults_and_forms() {
        let m = decode_raw(&with(&[
            ("data_source", None),
            ("timestamp", Some(json!("2025-11-24"))),
        ]))
        .unwrap();
        assert_eq!(m.data_source, "yahoo");
        assert_eq!(m.timestamp, utc("2025-11-24T00:00:00Z"));
        let m = decode_raw(&with(&[("data_source", Some(Value::Null))])).unwrap();
        assert_eq!(m.data_source, "yahoo");
        let m = decode_raw(&with(&[("data_source", Some(json!("polygon")))])).unwrap();
        assert_eq!(m.data_source, "polygon");
        for (v, want) in [
            (number("1234.0"), 1234),
            (number("1.234e3"), 1234),
            (json!("1234"), 1234),
            (json!(0), 0),
            (number("9223372036854775807"), i64::MAX),
        ] {
            assert_eq!(
                decode_raw(&with(&[("volume", Some(v))])).unwrap().volume,
                want
            );
        }
        let m = decode_raw(&with(&[
            ("close", Some(json!("189.98"))),
            ("timestamp", Some(json!("2025-11-24 15:30:00"))),
        ]))
        .unwrap();
        assert_eq!(m.close, d("189.98"));
        assert_eq!(m.timestamp, utc("2025-11-24T15:30:00Z"));
    }

    #[test]
    fn bad_bars() {
        for field in [
            "symbol",
            "timestamp",
            "open",
            "high",
            "low",
            "close",
            "volume",
        ] {
            fails(&[(field, None)], "missing_field", &format!("data.{field}"));
            fails(
                &[(field, Some(Value::Null))],
                "missing_field",
                &format!("data.{field}"),
            );
        }
        for field in ["open", "high", "low", "close"] {
            let f = format!("data.{field}");
            fails(&[(field, Some(json!(0)))], "out_of_range", &f);
            fails(&[(field, Some(number("-1.5")))], "out_of_range", &f);
            // Rounds to 0.0000, which is not a price.
            fails(&[(field, Some(number("0.00004")))], "out_of_range", &f);
            fails(&[(field, Some(number("1e400")))], "out_of_range", &f);
            fails(&[(field, Some(number("123456789012")))], "out_of_range", &f);
            fails(&[(field, Some(json!("NaN")))], "bad_value", &f);
            fails(&[(field, Some(json!("")))], "bad_value", &f);
            fails(&[(field, Some(json!([1])))], "bad_type", &f);
        }
        assert_eq!(
            decode_raw(&with(&[("low", Some(number("0.00005")))]))
                .unwrap()
                .low,
            d("0.0001")
        );
        fails(
            &[("volume", Some(number("1.5")))],
            "bad_value",
            "data.volume",
        );
        fails(
            &[("volume", Some(number("-1")))],
            "out_of_range",
            "data.volume",
        );
        fails(
            &[("volume", Some(number("1e400")))],
            "out_of_range",
            "data.volume",
        );
        fails(
            &[("volume", Some(json!("12a")))],
            "bad_value",
            "data.volume",
        );
        fails(&[("volume", Some(json!(true)))], "bad_type", "data.volume");
        fails(
            &[("timestamp", Some(json!("2025-11-24T25:00:00")))],
            "bad_value",
            "data.timestamp",
        );
        fails(
            &[("timestamp", Some(json!(1_732_406_400)))],
            "bad_type",
            "data.timestamp",
        );
        fails(
            &[("timestamp", Some(json!("1899-12-31")))],
            "out_of_range",
            "data.timestamp",
        );
        fails(
            &[("data_source", Some(json!("")))],
            "bad_value",
            "data.data_source",
        );
        fails(
            &[("data_source", Some(json!("y".repeat(51))))],
            "out_of_range",
            "data.data_source",
        );
        fails(
            &[("data_source", Some(json!(1)))],
            "bad_type",
            "data.data_source",
        );
        fails(
            &[("symbol", Some(json!("AA\u{0}PL")))],
            "bad_value",
            "data.symbol",
        );
    }

    #[test]
    fn nan_volume_from_pandas_is_not_json() {
        let raw = BAR.replace("45123400", "NaN");
        let e = decode_raw(&raw).unwrap_err();
        assert_eq!(e.kind(), "not_json");
    }
}
