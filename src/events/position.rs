//! `position_updated`: a snapshot of one account's position in one symbol. Snapshots overwrite
//! (last writer by `as_of` wins), so their decimals are rounded to NUMERIC(15,4) as PostgreSQL
//! would store them rather than refused.
//!
//! | field | rule |
//! |---|---|
//! | `account_id` | required string ≤ 50 |
//! | `symbol` | required string ≤ 20 |
//! | `quantity` | optional decimal ≥ 0 (after rounding) |
//! | `avg_price`, `market_value`, `unrealized_pnl`, `realized_pnl` | optional decimals |
//! | `as_of` | optional timestamp, default the envelope's |

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::num::{self, Fit};
use super::trade::{ACCOUNT_ID_MAX_CHARS, SYMBOL_MAX_CHARS};
use super::{get, req_str, timestamp_or, DecodeError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionUpdated {
    pub account_id: String,
    pub symbol: String,
    pub quantity: Option<Decimal>,
    pub avg_price: Option<Decimal>,
    pub market_value: Option<Decimal>,
    pub unrealized_pnl: Option<Decimal>,
    pub realized_pnl: Option<Decimal>,
    /// The snapshot's time; an update older than the stored one is not applied.
    pub as_of: DateTime<Utc>,
}

fn opt_decimal(
    data: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<Decimal>, DecodeError> {
    get(data, field)
        .map(|v| num::decimal(field, v, Fit::Round))
        .transpose()
}

pub(crate) fn decode(
    data: &Map<String, Value>,
    envelope_ts: DateTime<Utc>,
) -> Result<PositionUpdated, DecodeError> {
    Ok(PositionUpdated {
        account_id: req_str(data, "data.account_id", ACCOUNT_ID_MAX_CHARS)?.to_owned(),
        symbol: req_str(data, "data.symbol", SYMBOL_MAX_CHARS)?.to_owned(),
        quantity: opt_decimal(data, "data.quantity")?
            .map(|q| num::require_non_negative("data.quantity", q))
            .transpose()?,
        avg_price: opt_decimal(data, "data.avg_price")?,
        market_value: opt_decimal(data, "data.market_value")?,
        unrealized_pnl: opt_decimal(data, "data.unrealized_pnl")?,
        realized_pnl: opt_decimal(data, "data.realized_pnl")?,
        as_of: timestamp_or(data, "data.as_of", envelope_ts)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_support::{edit_data, number};
    use crate::events::{decode as decode_event, ChannelKind, DecodeLimits, Event};
    use serde_json::json;
    use std::str::FromStr;

    const SNAPSHOT: &str = r#"{"type": "position_updated", "service": "execution", "data": {"account_id": "ACC-42", "symbol": "AAPL", "quantity": 150, "avg_price": 185.3333333333, "market_value": 28087.5, "unrealized_pnl": 287.5000000001, "realized_pnl": -12.25, "as_of": "2025-11-24T15:04:05.500000"}, "timestamp": "2025-11-24T15:04:05.623456"}"#;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn decode_raw(raw: &str) -> Result<PositionUpdated, DecodeError> {
        match decode_event(
            ChannelKind::Positions,
            raw.as_bytes(),
            &DecodeLimits::default(),
        )? {
            Event::Position(p) => Ok(p),
            other => panic!("{other:?}"),
        }
    }

    fn with(edits: &[(&str, Option<Value>)]) -> String {
        edit_data(SNAPSHOT, edits)
    }

    fn fails(edits: &[(&str, Option<Value>)], kind: &str, field: &str) {
        let e = decode_raw(&with(edits)).unwrap_err();
        assert_eq!((e.kind(), e.field()), (kind, Some(field)), "{e}");
        assert_eq!(e.event_type(), Some("position_updated"));
        assert_eq!(e.trade_id(), None);
    }

    #[test]
    fn snapshot_is_rounded_like_numeric_15_4() {
        let p = decode_raw(SNAPSHOT).unwrap();
        assert_eq!(
            p,
            PositionUpdated {
                account_id: "ACC-42".into(),
                symbol: "AAPL".into(),
                quantity: Some(d("150")),
                avg_price: Some(d("185.3333")),
                market_value: Some(d("28087.5")),
                unrealized_pnl: Some(d("287.5")),
                realized_pnl: Some(d("-12.25")),
                as_of: DateTime::parse_from_rfc3339("2025-11-24T15:04:05.5Z")
                    .unwrap()
                    .with_timezone(&Utc),
            }
        );
    }

    #[test]
    fn optional_fields_and_defaults() {
        let raw = r#"{"type": "position_updated", "service": null, "data": {"account_id": "A", "symbol": "S", "quantity": null}, "timestamp": "2025-11-24T15:04:05"}"#;
        let p = decode_raw(raw).unwrap();
        assert_eq!(
            (
                p.quantity,
                p.avg_price,
                p.market_value,
                p.unrealized_pnl,
                p.realized_pnl
            ),
            (None, None, None, None, None)
        );
        assert_eq!(
            p.as_of,
            DateTime::parse_from_rfc3339("2025-11-24T15:04:05Z")
                .unwrap()
                .with_timezone(&Utc)
        );
        let p = decode_raw(&with(&[
            ("quantity", Some(json!(0))),
            ("avg_price", Some(json!("101.25"))),
        ]))
        .unwrap();
        assert_eq!(p.quantity, Some(Decimal::ZERO));
        assert_eq!(p.avg_price, Some(d("101.25")));
        // Negative P&L and market value (a short) are fine.
        let p = decode_raw(&with(&[("market_value", Some(number("-5000.00005")))])).unwrap();
        assert_eq!(p.market_value, Some(d("-5000.0001")));
    }

    #[test]
    fn bad_snapshots() {
        fails(&[("account_id", None)], "missing_field", "data.account_id");
        fails(&[("symbol", None)], "missing_field", "data.symbol");
        fails(
            &[("symbol", Some(json!("X".repeat(21))))],
            "out_of_range",
            "data.symbol",
        );
        fails(
            &[("account_id", Some(json!("A\u{0}")))],
            "bad_value",
            "data.account_id",
        );
        fails(
            &[("quantity", Some(json!(-1)))],
            "out_of_range",
            "data.quantity",
        );
        for field in [
            "quantity",
            "avg_price",
            "market_value",
            "unrealized_pnl",
            "realized_pnl",
        ] {
            let f = format!("data.{field}");
            fails(&[(field, Some(number("1e400")))], "out_of_range", &f);
            fails(&[(field, Some(number("100000000000")))], "out_of_range", &f);
            fails(
                &[(field, Some(number("99999999999.99995")))],
                "out_of_range",
                &f,
            );
            fails(&[(field, Some(json!("NaN")))], "bad_value", &f);
            fails(&[(field, Some(json!(false)))], "bad_type", &f);
        }
        fails(
            &[("as_of", Some(json!("2025-11-24")))],
            "bad_value",
            "data.as_of",
        );
        fails(
            &[("as_of", Some(json!("1800-01-01T00:00:00")))],
            "out_of_range",
            "data.as_of",
        );
    }
}
