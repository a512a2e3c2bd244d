//! Reading a database the daemon wrote into and checking it against [`Expected`].
//!
//! It owns the SQL that reads the ledger and the aggregates; it must not import `trading-sync`
//! (the rows are read with plain queries, not through the daemon's store).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::expected::{
    compare, Expected, MetricsRow, PortfolioRow, PositionRow, Report, Stored, StoredPortfolio,
};

/// The range of ledger ids a prefix can have: `<prefix>-0000000000 ..= <prefix>-9999999999`.
fn id_range(id_prefix: &str) -> (String, String) {
    (
        format!("{id_prefix}-{:010}", 0),
        format!("{id_prefix}-{}", "9".repeat(10)),
    )
}

/// Ledger rows with ids of the workload.
pub async fn ledger_count(
    client: &tokio_postgres::Client,
    expected: &Expected,
) -> Result<u64, tokio_postgres::Error> {
    let from = expected.trade_id(expected.first_seq);
    let to = expected.trade_id(expected.last_seq);
    count_between(client, &from, &to).await
}

/// Ledger rows with trade ids in `from..=to`.
async fn count_between(
    client: &tokio_postgres::Client,
    from: &str,
    to: &str,
) -> Result<u64, tokio_postgres::Error> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM analytics.applied_trades WHERE trade_id BETWEEN $1 AND $2",
            &[&from, &to],
        )
        .await?
        .get(0);
    Ok(n as u64)
}

/// The highest trade seq of `id_prefix` in the ledger: with one FIFO writer (batches too small
/// to be split across writer connections), every trade published before it is committed too. A backward scan of the primary key: cheap enough to
/// poll every millisecond.
pub async fn max_applied_seq(
    client: &tokio_postgres::Client,
    id_prefix: &str,
) -> Result<Option<u64>, tokio_postgres::Error> {
    let (from, to) = id_range(id_prefix);
    let max: Option<String> = client
        .query_one(
            "SELECT max(trade_id) FROM analytics.applied_trades WHERE trade_id BETWEEN $1 AND $2",
            &[&from, &to],
        )
        .await?
        .get(0);
    Ok(max.and_then(|id| {
        id.strip_prefix(id_prefix)?
            .strip_prefix('-')?
            .parse::<u64>()
            .ok()
    }))
}

/// Ledger rows whose trade id has `id_prefix`.
pub async fn applied_count(
    client: &tokio_postgres::Client,
    id_prefix: &str,
) -> Result<u64, tokio_postgres::Error> {
    let (from, to) = id_range(id_prefix);
    count_between(client, &from, &to).await
}

/// Reads the ledger count and the aggregates and compares them with `expected`.
pub async fn verify(
    client: &tokio_postgres::Client,
    expected: &Expected,
) -> Result<Report, tokio_postgres::Error> {
    let ledger = ledger_count(client, expected).await?;
    let portfolio = client
        .query(
            "SELECT account_id, symbol, trade_count, net_quantity, total_value, realized_pnl, \
                    commission, last_trade_at, quantity, avg_price, position_realized_pnl, \
                    reported_market_value, reported_unrealized_pnl, position_as_of, \
                    last_price, last_price_at \
             FROM analytics.portfolio_summary",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let last_trade_at: Option<DateTime<Utc>> = r.get(7);
            let position_as_of: Option<DateTime<Utc>> = r.get(13);
            let last_price: Option<Decimal> = r.get(14);
            let last_price_at: Option<DateTime<Utc>> = r.get(15);
            let zero_if_null = |i: usize| r.get::<_, Option<Decimal>>(i).unwrap_or_default();
            StoredPortfolio {
                trades: PortfolioRow {
                    account_id: r.get(0),
                    symbol: r.get(1),
                    trade_count: r.get(2),
                    net_quantity: r.get(3),
                    total_value: r.get(4),
                    realized_pnl: r.get(5),
                    commission: r.get(6),
                    last_trade_at: last_trade_at.unwrap_or_default(),
                },
                has_last_trade_at: last_trade_at.is_some(),
                position: position_as_of.map(|as_of| PositionRow {
                    account_id: r.get(0),
                    symbol: r.get(1),
                    quantity: zero_if_null(8),
                    avg_price: zero_if_null(9),
                    realized_pnl: zero_if_null(10),
                    market_value: zero_if_null(11),
                    unrealized_pnl: zero_if_null(12),
                    as_of,
                }),
                mark: last_price.zip(last_price_at),
            }
        })
        .collect();
    let metrics = client
        .query(
            "SELECT strategy, date, total_trades, winning_trades, realized_pnl, volume, \
                    notional, commission \
             FROM analytics.performance_metrics",
            &[],
        )
        .await?
        .iter()
        .map(|r| MetricsRow {
            strategy: r.get(0),
            date: r.get(1),
            total_trades: r.get(2),
            winning_trades: r.get(3),
            realized_pnl: r.get(4),
            volume: r.get(5),
            notional: r.get(6),
            commission: r.get(7),
        })
        .collect();
    Ok(compare(
        expected,
        &Stored {
            ledger,
            portfolio,
            metrics,
        },
    ))
}

/// Waits until the ledger holds every expected trade, or has not grown for `settle`.
pub async fn wait_for_ledger(
    client: &tokio_postgres::Client,
    expected: &Expected,
    settle: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let mut last = (u64::MAX, Instant::now());
    loop {
        let n = ledger_count(client, expected).await?;
        if n >= expected.trades {
            return Ok(n);
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() >= settle {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
