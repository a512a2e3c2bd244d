#!/usr/bin/env bash
# Reconcile's cost on a years-long history: 10 M execution.trades rows, every one already in the
# ledger (10 M contributions), 10,000 positions and portfolio rows, a year of daily bars for 500
# symbols. Times `trading-sync reconcile` with nothing to heal, then with 1,000 new trades whose
# events were lost, then `verify`.
#
#   cargo build --release --bins --examples && scripts/bench_reconcile.sh [ROWS]
#   scripts/bench_reconcile.sh --reuse      # time again on the database filled last time
#
# Uses database ts_bench_reconcile on TEST_DATABASE_URL's cluster (dropped first). Filling it
# takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-10000000}
admin=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db_url=${admin%/*}/ts_bench_reconcile
bin=target/release/trading-sync
export DATABASE_URL=$db_url TRADING_SYNC__RECONCILE__GRACE_MS=0
unset TRADING_SYNC_CONFIG

if [ "$rows" = "--reuse" ]; then
  echo "reusing ts_bench_reconcile"
else
psql -q "$admin" -c "DROP DATABASE IF EXISTS ts_bench_reconcile WITH (FORCE)"
"$bin" --log-format text migrate 2>/dev/null
echo "filling $rows trades (a few minutes)..."
start=$(date +%s)
psql -q "$db_url" <<SQL
SET synchronous_commit = off;
-- 500 symbols x 20 accounts = 10,000 (account, symbol) keys; 50 strategies over a year.
INSERT INTO data_ingestion.symbols (symbol) SELECT 'S' || s FROM generate_series(1, 500) s;
INSERT INTO data_ingestion.market_data (symbol, "timestamp", open, high, low, close, volume)
SELECT 'S' || s, d, 100, 100, 100, 100, 1000
  FROM generate_series(1, 500) s,
       generate_series(now() - interval '365 days', now() - interval '1 day', interval '1 day') d;
-- The triggers are what is measured later, not here: the history predates them (the change log
-- and, since V24, the audit trail, which would add 10 M audit rows to the fill).
ALTER TABLE execution.trades DISABLE TRIGGER trg_trades_changes_insert;
ALTER TABLE execution.trades DISABLE TRIGGER trg_trades_audit_insert;
INSERT INTO execution.trades (trade_id, account_id, symbol, side, quantity, price, commission,
                              strategy, executed_at, realized_pnl)
SELECT 'H' || i, 'A' || (i % 20), 'S' || (i % 500 + 1),
       CASE WHEN i % 3 = 0 THEN 'sell' ELSE 'buy' END::execution.order_side,
       i % 100 + 1, 100, 1, 'st' || (i % 50), now() - interval '365 days' + (i * interval '3 seconds'),
       CASE WHEN i % 3 = 0 THEN 5 END
  FROM generate_series(1, $rows) i;
ALTER TABLE execution.trades ENABLE TRIGGER trg_trades_changes_insert;
ALTER TABLE execution.trades ENABLE TRIGGER trg_trades_audit_insert;
INSERT INTO analytics.applied_trades (trade_id, account_id, symbol, strategy, executed_at,
    net_quantity, price, total_value, realized_pnl, commission, is_win, trade_date, source)
SELECT trade_id, account_id, symbol, strategy, executed_at,
       CASE side WHEN 'sell' THEN -quantity ELSE quantity END, price,
       CASE side WHEN 'sell' THEN -quantity * price ELSE quantity * price END,
       COALESCE(realized_pnl, 0), commission, COALESCE(realized_pnl, 0) > 0,
       (executed_at AT TIME ZONE 'America/New_York')::date, 'event'
  FROM execution.trades;
INSERT INTO analytics.portfolio_summary (account_id, symbol, trade_count, net_quantity, total_value,
    realized_pnl, commission, last_trade_at, last_price, last_price_at)
SELECT account_id, symbol, count(*), sum(net_quantity), sum(total_value), sum(realized_pnl),
       sum(commission), max(executed_at), 100, date_trunc('day', now() - interval '1 day')
  FROM analytics.applied_trades GROUP BY account_id, symbol;
INSERT INTO analytics.performance_metrics (strategy, date, total_trades, winning_trades,
    realized_pnl, volume, notional, commission)
SELECT strategy, trade_date, count(*), count(*) FILTER (WHERE is_win), sum(realized_pnl),
       sum(abs(net_quantity)), sum(abs(total_value)), sum(commission)
  FROM analytics.applied_trades GROUP BY strategy, trade_date;
INSERT INTO execution.positions (account_id, symbol, quantity, avg_price, last_updated)
SELECT 'A' || a, 'S' || s, 10, 100, now() - interval '1 day'
  FROM generate_series(0, 19) a, generate_series(1, 500) s;
UPDATE analytics.portfolio_summary ps SET quantity = 10, avg_price = 100,
       position_as_of = now() - interval '1 day';
VACUUM ANALYZE;
SQL
echo "filled in $(( $(date +%s) - start )) s"
fi
"$bin" --log-format text reconcile 2>/dev/null | tail -1   # first run: caches, plans
echo "== reconcile command, nothing to heal (a new connection each: connect, plan, run) =="
for _ in 1 2 3; do
  "$bin" --log-format text reconcile 2>/dev/null | tail -1
done
echo "== the daemon's runs, nothing to heal (one connection, statements prepared once) =="
target/release/examples/bench_reconcile 20
echo "== reconcile, 1,000 trades committed whose events were lost =="
psql -q "$db_url" -c "INSERT INTO execution.trades (trade_id, account_id, symbol, side, quantity, price, executed_at)
  SELECT 'N$(date +%s)-' || i, 'A' || (i % 20), 'S' || (i % 500 + 1), 'buy', 1, 100, now() FROM generate_series(1, 1000) i"
"$bin" --log-format text reconcile 2>/dev/null | tail -1
echo "== verify =="
/usr/bin/time -f "verify: %e s, %M KiB" "$bin" --log-format text verify 2>&1 | tail -2
