//! `decode` on arbitrary bytes, on each of the three channels: it must never panic, and what it
//! accepts must fit the PostgreSQL columns it is written to (the module's contract), since a
//! value that does not would fail a whole batch's transaction instead of one dead letter.

#![no_main]

use chrono::Datelike;
use libfuzzer_sys::fuzz_target;
use rust_decimal::Decimal;
use trading_sync::events::{decode, ChannelKind, DecodeLimits, Event};

fn fits_numeric_15_4(field: &str, d: Decimal) {
    assert!(
        d.scale() <= 4,
        "{field} = {d} has more than 4 decimal places"
    );
    assert!(
        d.abs() < Decimal::from(100_000_000_000i64),
        "{field} = {d} does not fit NUMERIC(15,4)"
    );
}

fn text(field: &str, s: &str, max_chars: usize) {
    assert!(!s.is_empty(), "{field} is empty");
    assert!(!s.contains('\0'), "{field} holds a NUL");
    assert!(
        s.chars().count() <= max_chars,
        "{field} is longer than {max_chars}"
    );
}

fn year(field: &str, t: chrono::DateTime<chrono::Utc>) {
    assert!((1900..=2999).contains(&t.year()), "{field} = {t}");
}

fn check(event: &Event) {
    match event {
        Event::Trade(t) => {
            text("trade_id", &t.trade_id, 100);
            text("account_id", &t.account_id, 50);
            text("symbol", &t.symbol, 20);
            if let Some(s) = &t.strategy {
                text("strategy", s, 100);
            }
            for (field, d) in [("quantity", t.quantity), ("price", t.price)] {
                if let Some(d) = d {
                    fits_numeric_15_4(field, d);
                    assert!(d > Decimal::ZERO, "{field} = {d}");
                }
            }
            fits_numeric_15_4("total_value", t.total_value);
            fits_numeric_15_4("realized_pnl", t.realized_pnl);
            fits_numeric_15_4("commission", t.commission);
            assert!(t.commission >= Decimal::ZERO);
            year("executed_at", t.executed_at);
        }
        Event::Position(p) => {
            text("account_id", &p.account_id, 50);
            text("symbol", &p.symbol, 20);
            for (field, d) in [
                ("quantity", p.quantity),
                ("avg_price", p.avg_price),
                ("market_value", p.market_value),
                ("unrealized_pnl", p.unrealized_pnl),
                ("realized_pnl", p.realized_pnl),
            ] {
                if let Some(d) = d {
                    fits_numeric_15_4(field, d);
                }
            }
            if let Some(q) = p.quantity {
                assert!(q >= Decimal::ZERO, "quantity = {q}");
            }
            year("as_of", p.as_of);
        }
        Event::MarketData(m) => {
            text("symbol", &m.symbol, 20);
            for (field, d) in [
                ("open", m.open),
                ("high", m.high),
                ("low", m.low),
                ("close", m.close),
            ] {
                fits_numeric_15_4(field, d);
                assert!(d > Decimal::ZERO, "{field} = {d}");
            }
            assert!(m.volume >= 0);
            text("data_source", &m.data_source, 50);
            year("timestamp", m.timestamp);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    for channel in ChannelKind::ALL {
        match decode(channel, data, &limits) {
            Ok(event) => {
                assert_eq!(event.channel(), channel);
                check(&event);
            }
            Err(e) => {
                // What a dead letter stores: must be writable to a text column.
                let shown = e.to_string();
                assert!(!shown.contains('\0'), "{shown:?}");
                assert!(!e.kind().is_empty());
                for context in [e.trade_id(), e.event_type()].into_iter().flatten() {
                    text("dead letter context", context, 100);
                }
            }
        }
    }
});
