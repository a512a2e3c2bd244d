//! `trade_executed`: one execution, applied to the aggregates exactly once per `trade_id`.
//!
//! | field | rule |
//! |---|---|
//! | `trade_id` | required string ≤ 100 chars: the idempotency key |
//! | `account_id` | required string ≤ 50 |
//! | `symbol` | required string ≤ 20 |
//! | `strategy` | optional string ≤ 100; `""` means none (no performance_metrics row) |
//! | `side` | optional `buy` / `sell`, any letter case |
//! | `quantity`, `price` | optional exact decimal > 0 |
//! | `total_value` | optional exact decimal, taken as sent (sign included); when absent see [`TradeExecuted::total_value`] |
//! | `realized_pnl` | exact decimal, default 0 |
//! | `commission` | exact decimal ≥ 0, default 0 |
//! | `win_rate` | optional number in [0, 1]; see [`TradeExecuted::is_win`] |
//! | `executed_at` | optional timestamp, default the envelope's |
//!
//! "Exact" decimals are refused rather than rounded when they have more than 4 fractional digits:
//! they are summed, and the sums must equal the publishers' own to the last digit.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Map, Value};

use super::num::{self, Fit};
use super::{get, opt_str, req_str, timestamp_or, DecodeError, DecodeLimits};

pub(crate) const TRADE_ID_MAX_CHARS: usize = 100;
pub(crate) const ACCOUNT_ID_MAX_CHARS: usize = 50;
pub(crate) const SYMBOL_MAX_CHARS: usize = 20;
pub(crate) const STRATEGY_MAX_CHARS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Buy,
    Sell,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeExecuted {
    pub trade_id: String,
    pub account_id: String,
    pub symbol: String,
    /// `None` when absent, null or `""`.
    pub strategy: Option<String>,
    pub side: Option<Side>,
    pub quantity: Option<Decimal>,
    pub price: Option<Decimal>,
    /// As sent; when absent, quantity × price rounded half away from zero to 4 places, negated for
    /// a sell, and 0 when either is absent. A sent value is not sign-checked against `side`: the
    /// publisher's books are what the aggregates must match.
    pub total_value: Decimal,
    pub realized_pnl: Decimal,
    pub commission: Decimal,
    /// `win_rate >= 0.5` when sent (the seed sends 1 or 0), else `realized_pnl > 0`.
    pub is_win: bool,
    pub executed_at: DateTime<Utc>,
    /// `executed_at`'s date in the exchange time zone: the performance_metrics day, which is
    /// neither the UTC date nor the processing date.
    pub trade_date: NaiveDate,
}

impl TradeExecuted {
    /// +quantity for a buy, −quantity for a sell, 0 when the quantity is absent. A quantity with
    /// no side counts as a buy, since publishers that omit the side only report acquisitions.
    pub(crate) fn signed_quantity(&self) -> Decimal {
        match (self.side, self.quantity) {
            (_, None) => Decimal::ZERO,
            (Some(Side::Sell), Some(q)) => -q,
            (_, Some(q)) => q,
        }
    }
}

/// A committed fill as `execution.trades` stores it, with the side and strategy of its order
/// where the row has none: what `reconcile` turns into the trade its event would have been.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fill {
    pub trade_id: String,
    pub account_id: String,
    pub symbol: String,
    pub strategy: Option<String>,
    pub side: Option<Side>,
    pub quantity: Decimal,
    pub price: Decimal,
    pub commission: Decimal,
    /// NULL in the row means 0, as an absent `realized_pnl` does in an event.
    pub realized_pnl: Option<Decimal>,
    pub executed_at: DateTime<Utc>,
}

/// Why a fill cannot become a trade. Never guessed around: reported with its trade_id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FillError {
    #[error("no side: neither the trade row nor its order says buy or sell")]
    NoSide,
    #[error("{0}")]
    OutOfRange(String),
}

impl FillError {
    /// Short stable label for metrics and output.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            FillError::NoSide => "no_side",
            FillError::OutOfRange(_) => "out_of_range",
        }
    }
}

impl TradeExecuted {
    /// The trade a fill's event would have been, by EVENTS.md's rules: total_value = quantity ×
    /// price (negative for a sell), the win from realized_pnl > 0, the trading date in
    /// `exchange_tz`. A fill without a side is refused, not taken for a buy as an event would be.
    pub(crate) fn from_fill(fill: Fill, exchange_tz: &chrono_tz::Tz) -> Result<Self, FillError> {
        let side = fill.side.ok_or(FillError::NoSide)?;
        let total_value = gross_value(Some(side), Some(fill.quantity), Some(fill.price))
            .map_err(|e| FillError::OutOfRange(e.to_string()))?;
        let realized_pnl = fill.realized_pnl.unwrap_or(Decimal::ZERO);
        Ok(TradeExecuted {
            trade_id: fill.trade_id,
            account_id: fill.account_id,
            symbol: fill.symbol,
            strategy: fill.strategy.filter(|s| !s.is_empty()),
            side: Some(side),
            quantity: Some(fill.quantity),
            price: Some(fill.price),
            total_value,
            realized_pnl,
            commission: fill.commission,
            is_win: realized_pnl > Decimal::ZERO,
            executed_at: fill.executed_at,
            trade_date: fill.executed_at.with_timezone(exchange_tz).date_naive(),
        })
    }
}

fn opt_decimal(
    data: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<Decimal>, DecodeError> {
    get(data, field)
        .map(|v| num::decimal(field, v, Fit::Exact))
        .transpose()
}

pub(crate) fn decode(
    data: &Map<String, Value>,
    envelope_ts: DateTime<Utc>,
    limits: &DecodeLimits,
) -> Result<TradeExecuted, DecodeError> {
    let trade_id = req_str(data, "data.trade_id", TRADE_ID_MAX_CHARS)?;
    let account_id = req_str(data, "data.account_id", ACCOUNT_ID_MAX_CHARS)?;
    let symbol = req_str(data, "data.symbol", SYMBOL_MAX_CHARS)?;
    let strategy = match get(data, "data.strategy") {
        Some(Value::String(s)) if s.is_empty() => None,
        _ => opt_str(data, "data.strategy", STRATEGY_MAX_CHARS)?,
    };
    let side = match get(data, "data.side") {
        None => None,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("buy") => Some(Side::Buy),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("sell") => Some(Side::Sell),
        Some(Value::String(s)) => {
            return Err(DecodeError::bad_value(
                "data.side",
                format!("{} is not \"buy\" or \"sell\"", super::excerpt(s)),
            ))
        }
        Some(other) => return Err(DecodeError::bad_type("data.side", "a string", other)),
    };
    let quantity = opt_decimal(data, "data.quantity")?
        .map(|q| num::require_positive("data.quantity", q))
        .transpose()?;
    let price = opt_decimal(data, "data.price")?
        .map(|p| num::require_positive("data.price", p))
        .transpose()?;
    let total_value = match opt_decimal(data, "data.total_value")? {
        Some(v) => v,
        None => gross_value(side, quantity, price)?,
    };
    let realized_pnl = opt_decimal(data, "data.realized_pnl")?.unwrap_or(Decimal::ZERO);
    let commission = opt_decimal(data, "data.commission")?
        .map(|c| num::require_non_negative("data.commission", c))
        .transpose()?
        .unwrap_or(Decimal::ZERO);
    let is_win = match get(data, "data.win_rate") {
        Some(v) => num::ratio_at_least_half("data.win_rate", v)?,
        None => realized_pnl > Decimal::ZERO,
    };
    let executed_at = timestamp_or(data, "data.executed_at", envelope_ts)?;
    Ok(TradeExecuted {
        trade_id: trade_id.to_owned(),
        account_id: account_id.to_owned(),
        symbol: symbol.to_owned(),
        strategy: strategy.map(str::to_owned),
        side,
        quantity,
        price,
        total_value,
        realized_pnl,
        commission,
        is_win,
        executed_at,
        trade_date: executed_at.with_timezone(&limits.exchange_tz).date_naive(),
    })
}

fn gross_value(
    side: Option<Side>,
    quantity: Option<Decimal>,
    price: Option<Decimal>,
) -> Result<Decimal, DecodeError> {
    let (Some(q), Some(p)) = (quantity, price) else {
        return Ok(Decimal::ZERO);
    };
    // Both have ≤ 4 places and |x| < 10^11, so any product below 10^11 is exact in a Decimal;
    // a larger one may lose digits in checked_mul, but it is refused anyway.
    let gross = q
        .checked_mul(p)
        .map(|v| {
            v.round_dp_with_strategy(num::NUMERIC_SCALE, RoundingStrategy::MidpointAwayFromZero)
        })
        .filter(num::fits_numeric)
        .ok_or_else(|| {
            DecodeError::out_of_range(
                "data.total_value",
                format!("absent, and quantity × price = {q} × {p} does not fit NUMERIC(15,4)"),
            )
        })?;
    let signed = if side == Some(Side::Sell) {
        -gross
    } else {
        gross
    };
    Ok(signed.normalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_support::{edit_data, number};
    use crate::events::{decode as decode_event, ChannelKind, Event};
    use chrono::{NaiveDateTime, TimeZone};
    use loadgen::pyjson::{python_float_repr, PyDict};
    use proptest::prelude::*;
    use serde_json::json;
    use std::str::FromStr;

    /// Exactly what `DataSyncEventBus.publish_trade_event` writes for this dict in CPython.
    const SEED_TRADE: &str = r#"{"type": "trade_executed", "service": "execution", "data": {"trade_id": "T-000123", "account_id": "ACC-42", "symbol": "AAPL", "strategy": "mean_reversion", "side": "sell", "quantity": 100, "price": 187.25, "total_value": -18725.0, "realized_pnl": 412.5, "commission": 1.25, "win_rate": 1}, "timestamp": "2025-11-24T15:04:05.123456", "correlation_id": "T-000123"}"#;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn decode_raw(raw: &str) -> Result<TradeExecuted, DecodeError> {
        decode_with(raw, &DecodeLimits::default())
    }

    fn decode_with(raw: &str, limits: &DecodeLimits) -> Result<TradeExecuted, DecodeError> {
        match decode_event(ChannelKind::Trades, raw.as_bytes(), limits)? {
            Event::Trade(t) => Ok(t),
            other => panic!("{other:?}"),
        }
    }

    /// The seed trade with `data` edited: `None` removes a field.
    fn with(edits: &[(&str, Option<Value>)]) -> String {
        edit_data(SEED_TRADE, edits)
    }

    fn fails(edits: &[(&str, Option<Value>)], kind: &str, field: &str) -> DecodeError {
        let e = decode_raw(&with(edits)).unwrap_err();
        assert_eq!((e.kind(), e.field()), (kind, Some(field)), "{e}");
        assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
        e
    }

    #[test]
    fn seed_payload() {
        let t = decode_raw(SEED_TRADE).unwrap();
        assert_eq!(
            t,
            TradeExecuted {
                trade_id: "T-000123".into(),
                account_id: "ACC-42".into(),
                symbol: "AAPL".into(),
                strategy: Some("mean_reversion".into()),
                side: Some(Side::Sell),
                quantity: Some(d("100")),
                price: Some(d("187.25")),
                total_value: d("-18725"),
                realized_pnl: d("412.5"),
                commission: d("1.25"),
                is_win: true,
                executed_at: utc("2025-11-24T15:04:05.123456Z"),
                trade_date: NaiveDate::from_ymd_opt(2025, 11, 24).unwrap(),
            }
        );
        assert_eq!(t.signed_quantity(), d("-100"));
    }

    #[test]
    fn minimal_trade_and_defaults() {
        let raw = r#"{"type": "trade_executed", "service": "execution", "data": {"trade_id": "T-1", "account_id": "A", "symbol": "AAPL"}, "timestamp": "2025-11-24T15:04:05", "correlation_id": "T-1"}"#;
        let t = decode_raw(raw).unwrap();
        assert_eq!(t.strategy, None);
        assert_eq!(t.side, None);
        assert_eq!((t.quantity, t.price), (None, None));
        assert_eq!(t.total_value, Decimal::ZERO);
        assert_eq!(t.realized_pnl, Decimal::ZERO);
        assert_eq!(t.commission, Decimal::ZERO);
        assert!(!t.is_win);
        assert_eq!(t.executed_at, utc("2025-11-24T15:04:05Z"));
        assert_eq!(t.signed_quantity(), Decimal::ZERO);
        // Python's None is the same as absent.
        let nulls = with(&[
            ("strategy", Some(Value::Null)),
            ("side", Some(Value::Null)),
            ("total_value", Some(Value::Null)),
            ("win_rate", Some(Value::Null)),
            ("commission", Some(Value::Null)),
            ("executed_at", Some(Value::Null)),
        ]);
        let t = decode_raw(&nulls).unwrap();
        assert_eq!(t.strategy, None);
        assert_eq!(t.side, None);
        assert_eq!(t.total_value, d("18725"));
        assert!(t.is_win, "realized_pnl 412.5 > 0");
        assert_eq!(t.commission, Decimal::ZERO);
    }

    #[test]
    fn strategy_empty_means_none() {
        let t = decode_raw(&with(&[("strategy", Some(json!("")))])).unwrap();
        assert_eq!(t.strategy, None);
    }

    #[test]
    fn side_is_case_insensitive() {
        for (s, side) in [
            ("buy", Side::Buy),
            ("BUY", Side::Buy),
            ("Sell", Side::Sell),
            ("SELL", Side::Sell),
        ] {
            assert_eq!(
                decode_raw(&with(&[("side", Some(json!(s)))])).unwrap().side,
                Some(side)
            );
        }
        fails(&[("side", Some(json!("short")))], "bad_value", "data.side");
        fails(&[("side", Some(json!("")))], "bad_value", "data.side");
        fails(&[("side", Some(json!(" buy")))], "bad_value", "data.side");
        fails(&[("side", Some(json!(1)))], "bad_type", "data.side");
    }

    #[test]
    fn signed_quantity() {
        let q = |side: Option<&str>| {
            let side = side.map(|s| json!(s));
            decode_raw(&with(&[("side", side), ("quantity", Some(json!(3)))]))
                .unwrap()
                .signed_quantity()
        };
        assert_eq!(q(Some("buy")), d("3"));
        assert_eq!(q(Some("sell")), d("-3"));
        assert_eq!(q(None), d("3"));
    }

    #[test]
    fn total_value_when_absent() {
        let tv = |edits: &[(&str, Option<Value>)]| {
            let mut all = vec![("total_value", None)];
            all.extend_from_slice(edits);
            decode_raw(&with(&all)).map(|t| t.total_value)
        };
        assert_eq!(tv(&[]).unwrap(), d("-18725"));
        assert_eq!(tv(&[("side", Some(json!("buy")))]).unwrap(), d("18725"));
        assert_eq!(tv(&[("side", None)]).unwrap(), d("18725"));
        assert_eq!(tv(&[("quantity", None)]).unwrap(), Decimal::ZERO);
        assert_eq!(tv(&[("price", None)]).unwrap(), Decimal::ZERO);
        // 0.3333 × 0.3333 = 0.11108889 → 0.1111 (half away from zero).
        assert_eq!(
            tv(&[
                ("side", Some(json!("buy"))),
                ("quantity", Some(number("0.3333"))),
                ("price", Some(number("0.3333")))
            ])
            .unwrap(),
            d("0.1111")
        );
        // 0.0005 × 0.1 = 0.00005 → 0.0001; for a sell, −0.0001 (away from zero).
        assert_eq!(
            tv(&[
                ("quantity", Some(number("0.0005"))),
                ("price", Some(number("0.1")))
            ])
            .unwrap(),
            d("-0.0001")
        );
        // Rounds to zero: no negative zero.
        let z = tv(&[
            ("quantity", Some(number("0.0001"))),
            ("price", Some(number("0.0001"))),
        ])
        .unwrap();
        assert!(z.is_zero() && !z.is_sign_negative());
        let e = tv(&[
            ("quantity", Some(number("1000000"))),
            ("price", Some(number("100000"))),
        ])
        .unwrap_err();
        assert_eq!(
            (e.kind(), e.field()),
            ("out_of_range", Some("data.total_value"))
        );
        let e = tv(&[
            ("quantity", Some(number("99999999999.9999"))),
            ("price", Some(number("99999999999.9999"))),
        ])
        .unwrap_err();
        assert_eq!(e.kind(), "out_of_range");
        assert_eq!(
            tv(&[
                ("side", Some(json!("buy"))),
                ("quantity", Some(number("99999999999.9999"))),
                ("price", Some(number("1")))
            ])
            .unwrap(),
            d("99999999999.9999")
        );
    }

    #[test]
    fn sent_total_value_is_taken_as_is() {
        let t = decode_raw(&with(&[("total_value", Some(json!("18725.00")))])).unwrap();
        assert_eq!(t.total_value, d("18725"));
    }

    #[test]
    fn win_rate() {
        let w = |v: Value| decode_raw(&with(&[("win_rate", Some(v))])).map(|t| t.is_win);
        assert!(w(json!(1)).unwrap());
        assert!(w(number("1.0")).unwrap());
        assert!(!w(json!(0)).unwrap());
        assert!(!w(number("0.0")).unwrap());
        assert!(w(number("0.5")).unwrap());
        assert!(!w(number("0.49999")).unwrap());
        assert!(!w(json!("0")).unwrap());
        // A sent win_rate wins over realized_pnl.
        assert!(
            !decode_raw(&with(&[
                ("win_rate", Some(json!(0))),
                ("realized_pnl", Some(json!(5)))
            ]))
            .unwrap()
            .is_win
        );
        assert_eq!(w(json!(2)).unwrap_err().kind(), "out_of_range");
        assert_eq!(w(number("-0.5")).unwrap_err().kind(), "out_of_range");
        assert_eq!(w(json!(true)).unwrap_err().kind(), "bad_type");
        assert_eq!(w(json!("NaN")).unwrap_err().kind(), "bad_value");
        // Absent: realized_pnl decides.
        let p = |pnl: &str| {
            decode_raw(&with(&[
                ("win_rate", None),
                ("realized_pnl", Some(number(pnl))),
            ]))
            .unwrap()
            .is_win
        };
        assert!(p("0.0001"));
        assert!(!p("0"));
        assert!(!p("-3.5"));
    }

    #[test]
    fn required_fields() {
        for field in ["trade_id", "account_id", "symbol"] {
            let e = fails(&[(field, None)], "missing_field", &format!("data.{field}"));
            assert_eq!(
                e.to_string(),
                format!("data.{field}: required field is missing or null")
            );
            fails(
                &[(field, Some(Value::Null))],
                "missing_field",
                &format!("data.{field}"),
            );
            fails(
                &[(field, Some(json!("")))],
                "bad_value",
                &format!("data.{field}"),
            );
            fails(
                &[(field, Some(json!(123)))],
                "bad_type",
                &format!("data.{field}"),
            );
            fails(
                &[(field, Some(json!(["x"])))],
                "bad_type",
                &format!("data.{field}"),
            );
        }
        let e = fails(
            &[("trade_id", Some(json!(123)))],
            "bad_type",
            "data.trade_id",
        );
        assert_eq!(
            e.to_string(),
            "data.trade_id: expected a string, found a number"
        );
        assert_eq!(e.trade_id(), None);
        assert_eq!(e.event_type(), Some("trade_executed"));
    }

    #[test]
    fn string_lengths_in_characters() {
        for (field, max) in [
            ("trade_id", 100),
            ("account_id", 50),
            ("symbol", 20),
            ("strategy", 100),
        ] {
            let ok = "é".repeat(max);
            assert!(
                decode_raw(&with(&[(field, Some(json!(ok)))])).is_ok(),
                "{field}"
            );
            let long = "é".repeat(max + 1);
            let e = fails(
                &[(field, Some(json!(long)))],
                "out_of_range",
                &format!("data.{field}"),
            );
            assert!(
                e.to_string().contains(&format!(
                    "{} characters, over the {max}-character limit",
                    max + 1
                )),
                "{e}"
            );
        }
        // Identifiers are stored as sent, spaces and case included.
        let t = decode_raw(&with(&[("symbol", Some(json!(" brk.b ")))])).unwrap();
        assert_eq!(t.symbol, " brk.b ");
    }

    #[test]
    fn amounts() {
        for field in ["quantity", "price"] {
            let f = format!("data.{field}");
            fails(&[(field, Some(json!(0)))], "out_of_range", &f);
            fails(&[(field, Some(number("-1")))], "out_of_range", &f);
        }
        for field in [
            "quantity",
            "price",
            "total_value",
            "realized_pnl",
            "commission",
        ] {
            let f = format!("data.{field}");
            fails(&[(field, Some(number("1e400")))], "out_of_range", &f);
            fails(&[(field, Some(number("100000000000")))], "out_of_range", &f);
            fails(&[(field, Some(json!("NaN")))], "bad_value", &f);
            fails(&[(field, Some(json!("Infinity")))], "bad_value", &f);
            fails(&[(field, Some(json!("")))], "bad_value", &f);
            fails(&[(field, Some(json!(true)))], "bad_type", &f);
            fails(&[(field, Some(json!({"v": 1})))], "bad_type", &f);
            let e = fails(&[(field, Some(number("1.23456")))], "bad_value", &f);
            assert_eq!(
                e.to_string(),
                format!("{f}: \"1.23456\" would be rounded by NUMERIC(15,4); trade amounts must be exact")
            );
            // Python float arithmetic noise is refused, not rounded.
            fails(
                &[(field, Some(number(&python_float_repr(0.1 + 0.2))))],
                "bad_value",
                &f,
            );
            // Exponent forms that fit are fine.
            let t = decode_raw(&with(&[(field, Some(number("1.5E-2")))])).unwrap();
            let got = match field {
                "quantity" => t.quantity.unwrap(),
                "price" => t.price.unwrap(),
                "total_value" => t.total_value,
                "realized_pnl" => t.realized_pnl,
                _ => t.commission,
            };
            assert_eq!(got, d("0.015"));
        }
        fails(
            &[("commission", Some(number("-0.01")))],
            "out_of_range",
            "data.commission",
        );
        let t = decode_raw(&with(&[("realized_pnl", Some(json!("-99999999999.9999")))])).unwrap();
        assert_eq!(t.realized_pnl, d("-99999999999.9999"));
        // Python writes large floats in exponent form.
        let t = decode_raw(&with(&[(
            "total_value",
            Some(number(&python_float_repr(2.5e10))),
        )]))
        .unwrap();
        assert_eq!(t.total_value, d("25000000000"));
        let t = decode_raw(&with(&[(
            "commission",
            Some(number(&python_float_repr(0.0001))),
        )]))
        .unwrap();
        assert_eq!(t.commission, d("0.0001"));
    }

    #[test]
    fn decimal_text_is_exact_across_trades() {
        let pnl = |text: &str| {
            decode_raw(&with(&[("realized_pnl", Some(number(text)))]))
                .unwrap()
                .realized_pnl
        };
        assert_eq!(pnl("0.1") + pnl("0.2"), d("0.3"));
        let sum: Decimal = (0..10).map(|_| pnl("0.1")).sum();
        assert_eq!(sum, Decimal::ONE);
        let sum: Decimal = ["1234.5678", "-0.0001", "0.0003"]
            .iter()
            .map(|t| pnl(t))
            .sum();
        assert_eq!(sum, d("1234.5680"));
    }

    #[test]
    fn executed_at_and_trade_date() {
        let at = |ts: &str| decode_raw(&with(&[("executed_at", Some(json!(ts)))])).unwrap();
        // After midnight UTC but before midnight in New York: still the previous exchange day.
        let t = at("2025-11-25T03:30:00Z");
        assert_eq!(t.executed_at, utc("2025-11-25T03:30:00Z"));
        assert_eq!(t.trade_date, NaiveDate::from_ymd_opt(2025, 11, 24).unwrap());
        assert_eq!(
            at("2025-11-25T04:59:59.999999").trade_date,
            NaiveDate::from_ymd_opt(2025, 11, 24).unwrap()
        );
        assert_eq!(
            at("2025-11-25T05:00:00").trade_date,
            NaiveDate::from_ymd_opt(2025, 11, 25).unwrap()
        );
        // In summer (EDT, UTC−4) the day turns an hour earlier in UTC terms.
        assert_eq!(
            at("2025-07-01T03:59:59").trade_date,
            NaiveDate::from_ymd_opt(2025, 6, 30).unwrap()
        );
        assert_eq!(
            at("2025-07-01T04:00:00").trade_date,
            NaiveDate::from_ymd_opt(2025, 7, 1).unwrap()
        );
        // Across the 2025-03-09 spring-forward change: 04:30Z is 23:30 EST on the 8th, 05:30Z
        // is 00:30 EST on the 9th, and on the 10th 03:30Z is 23:30 EDT on the 9th.
        assert_eq!(
            at("2025-03-09T04:30:00").trade_date,
            NaiveDate::from_ymd_opt(2025, 3, 8).unwrap()
        );
        assert_eq!(
            at("2025-03-09T05:30:00").trade_date,
            NaiveDate::from_ymd_opt(2025, 3, 9).unwrap()
        );
        assert_eq!(
            at("2025-03-10T03:30:00").trade_date,
            NaiveDate::from_ymd_opt(2025, 3, 9).unwrap()
        );
        assert_eq!(
            at("2025-03-10T04:00:00").trade_date,
            NaiveDate::from_ymd_opt(2025, 3, 10).unwrap()
        );
        // And the 2025-11-02 fall-back: the repeated 01:xx hour stays on the 2nd.
        assert_eq!(
            at("2025-11-02T05:30:00").trade_date,
            NaiveDate::from_ymd_opt(2025, 11, 2).unwrap()
        );
        assert_eq!(
            at("2025-11-02T06:30:00").trade_date,
            NaiveDate::from_ymd_opt(2025, 11, 2).unwrap()
        );
        assert_eq!(
            at("2025-11-03T04:30:00").trade_date,
            NaiveDate::from_ymd_opt(2025, 11, 2).unwrap()
        );
        // Offsets are honoured.
        assert_eq!(
            at("2025-11-24T23:30:00-05:00").executed_at,
            utc("2025-11-25T04:30:00Z")
        );
        assert_eq!(
            at("2025-11-24T23:30:00-05:00").trade_date,
            NaiveDate::from_ymd_opt(2025, 11, 24).unwrap()
        );
        // The envelope timestamp is the default, with the same rule.
        let raw = SEED_TRADE.replace("2025-11-24T15:04:05.123456", "2025-11-25T02:00:00");
        assert_eq!(
            decode_raw(&raw).unwrap().trade_date,
            NaiveDate::from_ymd_opt(2025, 11, 24).unwrap()
        );
        // Another exchange.
        let tokyo = DecodeLimits {
            exchange_tz: chrono_tz::Asia::Tokyo,
            ..DecodeLimits::default()
        };
        assert_eq!(
            decode_with(&raw, &tokyo).unwrap().trade_date,
            NaiveDate::from_ymd_opt(2025, 11, 25).unwrap()
        );
    }

    #[test]
    fn bad_executed_at() {
        fails(
            &[("executed_at", Some(json!("2025-11-24")))],
            "bad_value",
            "data.executed_at",
        );
        fails(
            &[("executed_at", Some(json!("soon")))],
            "bad_value",
            "data.executed_at",
        );
        fails(
            &[("executed_at", Some(json!(1_732_460_645)))],
            "bad_type",
            "data.executed_at",
        );
        fails(
            &[("executed_at", Some(json!("1899-12-31T23:59:59Z")))],
            "out_of_range",
            "data.executed_at",
        );
        fails(
            &[("executed_at", Some(json!("3000-01-01T00:00:00")))],
            "out_of_range",
            "data.executed_at",
        );
        assert!(decode_raw(&with(&[(
            "executed_at",
            Some(json!("1970-01-01T00:00:00Z"))
        )]))
        .is_ok());
    }

    #[test]
    fn error_context() {
        let e = fails(
            &[("price", Some(number("1e400")))],
            "out_of_range",
            "data.price",
        );
        assert_eq!(e.event_type(), Some("trade_executed"));
        assert_eq!(e.trade_id(), Some("T-000123"));
        assert_eq!(
            e.to_string(),
            "data.price: \"1e+400\" does not fit NUMERIC(15,4) (|v| < 10^11)"
        );
    }

    // ---- round trip of generated trades, serialized as the Python publisher would ----

    #[derive(Debug, Clone, Copy)]
    enum Style {
        JsonNumber,
        JsonString,
        Exponent,
        PythonFloat,
    }

    fn arb_decimal(positive: bool) -> impl Strategy<Value = Decimal> {
        (0u32..=4).prop_flat_map(move |scale| {
            let max = 10i64.pow(11 + scale) - 1;
            let lo = if positive { 1 } else { -max };
            (lo..=max).prop_map(move |m| Decimal::new(m, scale))
        })
    }

    fn arb_style() -> impl Strategy<Value = Style> {
        prop_oneof![
            Just(Style::JsonNumber),
            Just(Style::JsonString),
            Just(Style::Exponent),
            Just(Style::PythonFloat),
        ]
    }

    fn render(d: Decimal, style: Style) -> Value {
        match style {
            Style::JsonNumber => number(&d.to_string()),
            Style::JsonString => Value::String(d.to_string()),
            Style::Exponent => number(&format!("{}e-{}", d.mantissa(), d.scale())),
            // ≤ 15 significant digits survive f64, and repr gives back the shortest such text.
            Style::PythonFloat => number(&python_float_repr(d.to_string().parse::<f64>().unwrap())),
        }
    }

    fn arb_time() -> impl Strategy<Value = NaiveDateTime> {
        (
            0i64..4_102_444_800,
            prop_oneof![Just(0u32), 0u32..1_000_000],
        )
            .prop_map(|(s, us)| DateTime::from_timestamp(s, us * 1000).unwrap().naive_utc())
    }

    /// `datetime.isoformat()`: microseconds only when non-zero; an aware one adds its offset.
    fn isoformat(t: NaiveDateTime, offset_minutes: Option<i32>) -> String {
        let base = |t: NaiveDateTime| {
            if t.and_utc().timestamp_subsec_micros() == 0 {
                t.format("%Y-%m-%dT%H:%M:%S").to_string()
            } else {
                t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
            }
        };
        match offset_minutes {
            None => base(t),
            Some(m) => {
                let off = chrono::FixedOffset::east_opt(m * 60).unwrap();
                off.from_utc_datetime(&t)
                    .format("%Y-%m-%dT%H:%M:%S%.6f%:z")
                    .to_string()
            }
        }
    }

    prop_compose! {
        fn arb_trade()(
            trade_id in "[A-Za-z0-9_:-]{1,100}",
            account_id in "\\PC{1,50}",
            symbol in "[A-Z.^=-]{1,20}",
            strategy in proptest::option::of("\\PC{0,100}"),
            side in proptest::option::of(prop_oneof![Just("buy"), Just("sell"), Just("BUY"), Just("Sell")]),
            quantity in proptest::option::of((arb_decimal(true), arb_style())),
            price in proptest::option::of((arb_decimal(true), arb_style())),
            total_value in proptest::option::of((arb_decimal(false), arb_style())),
            realized_pnl in proptest::option::of((arb_decimal(false), arb_style())),
            commission in proptest::option::of((arb_decimal(true), arb_style())),
            win_rate in proptest::option::of(prop_oneof![Just(number("1")), Just(number("0")), (0.0f64..=1.0).prop_map(|f| number(&python_float_repr(f)))]),
            executed_at in proptest::option::of((arb_time(), proptest::option::of(-720i32..=840))),
            envelope_ts in arb_time(),
        ) -> (String, Value, Value) {
            let mut data = serde_json::Map::new();
            let mut ordered = PyDict::default();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    ordered.set(k, &v);
                    data.insert(k.into(), v);
                }
            };
            put("trade_id", Some(json!(trade_id)));
            put("account_id", Some(json!(account_id)));
            put("symbol", Some(json!(symbol)));
            put("strategy", strategy.map(Value::String));
            put("side", side.map(|s| json!(s)));
            put("quantity", quantity.map(|(d, s)| render(d, s)));
            put("price", price.map(|(d, s)| render(d, s)));
            put("total_value", total_value.map(|(d, s)| render(d, s)));
            put("realized_pnl", realized_pnl.map(|(d, s)| render(d, s)));
            put("commission", commission.map(|(d, s)| render(d, s)));
            put("win_rate", win_rate);
            put("executed_at", executed_at.map(|(t, off)| json!(isoformat(t, off))));
            let raw = PyDict::default()
                .set("type", &json!("trade_executed"))
                .set("service", &json!("execution"))
                .set_raw("data", ordered.dumps())
                .set("timestamp", &json!(isoformat(envelope_ts, None)))
                .set("correlation_id", &data["trade_id"])
                .dumps();
            let data = Value::Object(data);
            let expected = json!({
                "quantity": quantity.map(|(d, _)| d.to_string()),
                "price": price.map(|(d, _)| d.to_string()),
                "total_value": total_value.map(|(d, _)| d.to_string()),
                "realized_pnl": realized_pnl.map(|(d, _)| d.to_string()),
                "commission": commission.map(|(d, _)| d.to_string()),
                "executed_at": executed_at.map(|(t, _)| t.and_utc().to_rfc3339()).unwrap_or_else(|| envelope_ts.and_utc().to_rfc3339()),
            });
            (raw, data, expected)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn generated_trades_round_trip((raw, data, expected) in arb_trade()) {
            prop_assert!(raw.is_ascii());
            let side = data.get("side").and_then(Value::as_str).map(|s| if s.eq_ignore_ascii_case("buy") { Side::Buy } else { Side::Sell });
            let dec = |k: &str| expected[k].as_str().map(d);
            let want_total = match (dec("total_value"), dec("quantity"), dec("price")) {
                (Some(v), _, _) => Some(v),
                (None, Some(q), Some(p)) => {
                    let g = q.checked_mul(p).unwrap().round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero);
                    if g.abs() >= d("100000000000") { None } else if side == Some(Side::Sell) { Some(-g) } else { Some(g) }
                }
                _ => Some(Decimal::ZERO),
            };
            let Some(want_total) = want_total else {
                let e = decode_raw(&raw).unwrap_err();
                prop_assert_eq!((e.kind(), e.field()), ("out_of_range", Some("data.total_value")));
                return Ok(());
            };
            let t = decode_raw(&raw).map_err(|e| TestCaseError::fail(format!("{e} in {raw}")))?;
            prop_assert_eq!(&t.trade_id, data["trade_id"].as_str().unwrap());
            prop_assert_eq!(&t.account_id, data["account_id"].as_str().unwrap());
            prop_assert_eq!(&t.symbol, data["symbol"].as_str().unwrap());
            prop_assert_eq!(t.strategy.as_deref(), data.get("strategy").and_then(Value::as_str).filter(|s| !s.is_empty()));
            prop_assert_eq!(t.side, side);
            prop_assert_eq!(t.quantity, dec("quantity"));
            prop_assert_eq!(t.price, dec("price"));
            prop_assert_eq!(t.realized_pnl, dec("realized_pnl").unwrap_or_default());
            prop_assert_eq!(t.commission, dec("commission").unwrap_or_default());
            prop_assert_eq!(t.total_value, want_total);
            let want_win = match data.get("win_rate") {
                Some(w) => w.as_number().unwrap().as_str().parse::<f64>().unwrap() >= 0.5,
                None => t.realized_pnl > Decimal::ZERO,
            };
            prop_assert_eq!(t.is_win, want_win);
            prop_assert_eq!(t.executed_at, utc(expected["executed_at"].as_str().unwrap()));
            prop_assert_eq!(t.trade_date, t.executed_at.with_timezone(&chrono_tz::America::New_York).date_naive());
        }
    }

    fn arb_fill() -> impl Strategy<Value = Fill> {
        (
            (
                0u32..1_000_000,
                0usize..3,
                prop::option::of(0usize..3),
                prop::option::of(any::<bool>()),
            ),
            (1i64..1_000_000_000, 1i64..10_000_000, 0i64..100_000),
            (
                prop::option::of(-10_000_000i64..10_000_000),
                0i64..4_000_000_000,
            ),
        )
            .prop_map(
                |((id, sym, strat, sell), (qty, price, fee), (pnl, secs))| Fill {
                    trade_id: format!("T-{id}"),
                    account_id: format!("ACC-{}", id % 7),
                    symbol: ["AAPL", "BRK.B", "SPY"][sym].into(),
                    strategy: strat.map(|s| ["alpha", "", "mean_reversion"][s].to_owned()),
                    side: sell.map(|s| if s { Side::Sell } else { Side::Buy }),
                    quantity: Decimal::new(qty, 4),
                    price: Decimal::new(price, 4),
                    commission: Decimal::new(fee, 4),
                    realized_pnl: pnl.map(|p| Decimal::new(p, 4)),
                    executed_at: DateTime::from_timestamp(secs, 123_456_000).unwrap(),
                },
            )
    }

    proptest! {
        /// A committed fill becomes exactly the trade its seed-style event decodes to (the
        /// publisher sends side, quantity, price, commission, realized_pnl and executed_at; no
        /// total_value, no win_rate): whichever arrives first, the books get the same trade.
        #[test]
        fn a_fill_becomes_the_trade_its_event_would_have_been(fill in arb_fill()) {
            let tz = chrono_tz::America::New_York;
            let from_row = TradeExecuted::from_fill(fill.clone(), &tz);
            let Some(side) = fill.side else {
                prop_assert_eq!(from_row, Err(FillError::NoSide));
                return Ok(());
            };
            let mut data = json!({
                "trade_id": fill.trade_id, "account_id": fill.account_id, "symbol": fill.symbol,
                "side": if side == Side::Sell { "sell" } else { "buy" },
                "quantity": number(&fill.quantity.to_string()),
                "price": number(&fill.price.to_string()),
                "commission": number(&fill.commission.to_string()),
                "executed_at": fill.executed_at.to_rfc3339(),
            });
            if let Some(s) = &fill.strategy {
                data["strategy"] = json!(s);
            }
            if let Some(p) = fill.realized_pnl {
                data["realized_pnl"] = number(&p.to_string());
            }
            let raw = serde_json::to_string(&json!({
                "type": "trade_executed", "data": data, "timestamp": "2025-11-24T15:04:05"
            })).unwrap();
            match (decode_raw(&raw), from_row) {
                (Ok(event), Ok(row)) => prop_assert_eq!(row, event),
                (Err(e), Err(FillError::OutOfRange(_))) => {
                    prop_assert_eq!(e.field(), Some("data.total_value"));
                }
                (event, row) => prop_assert!(false, "event {:?} but row {:?}", event, row),
            }
        }
    }
}
