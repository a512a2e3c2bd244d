#!/usr/bin/env python3
"""Baseline for examples/bench_indicators.rs: the straightforward Python indicator pipeline.

pandas + TA-Lib + psycopg, one symbol at a time, as the seed's indicator job is written:

  --mode full         every bar of every yahoo symbol, all rows COPYed into
                      analytics.technical_indicators, the newest into ..._latest;
  --mode incremental  the last 300 bars of every symbol, only the newest row upserted into both
                      tables (no persisted state: EMAs and Wilder averages restart inside the
                      window, which is why PITFALLS.md finds ema_50 off in the 4th decimal).

Prints `seconds=<wall time of the pipeline>` (imports and connecting excluded).
Needs: pip install ta-lib==0.8.2 pandas "psycopg[binary]"
"""

import argparse
import math
import time

import numpy as np
import pandas as pd
import psycopg
import talib

COLUMNS = [
    "sma_20", "sma_50", "sma_200", "ema_12", "ema_26", "ema_50", "rsi", "rsi_14",
    "macd_line", "macd_signal", "macd_histogram", "bb_upper", "bb_middle", "bb_lower",
    "bb_position", "bb_width", "volatility_20", "price_change_1d", "price_change_5d",
    "price_change_30d", "avg_volume_20", "current_volume",
]

BARS_SQL = """
SELECT ("timestamp" AT TIME ZONE 'America/New_York')::date AS date, close::float8 AS close, volume
  FROM data_ingestion.market_data
 WHERE symbol = %s AND data_source = 'yahoo' AND close IS NOT NULL
 ORDER BY "timestamp"
"""

LAST_BARS_SQL = """
SELECT date, close, volume FROM (
    SELECT ("timestamp" AT TIME ZONE 'America/New_York')::date AS date, close::float8 AS close,
           volume, "timestamp"
      FROM data_ingestion.market_data
     WHERE symbol = %s AND data_source = 'yahoo' AND close IS NOT NULL
     ORDER BY "timestamp" DESC LIMIT 300) b
 ORDER BY "timestamp"
"""


def indicators(df: pd.DataFrame) -> pd.DataFrame:
    c = df["close"].to_numpy(dtype=float)
    v = df["volume"].to_numpy(dtype=float)
    out = pd.DataFrame({"date": df["date"]})
    out["sma_20"] = talib.SMA(c, 20)
    out["sma_50"] = talib.SMA(c, 50)
    out["sma_200"] = talib.SMA(c, 200)
    out["ema_12"] = talib.EMA(c, 12)
    out["ema_26"] = talib.EMA(c, 26)
    out["ema_50"] = talib.EMA(c, 50)
    rsi = talib.RSI(c, 14)
    out["rsi"] = rsi
    out["rsi_14"] = rsi
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    out["macd_line"], out["macd_signal"], out["macd_histogram"] = macd, signal, hist
    upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    out["bb_upper"], out["bb_middle"], out["bb_lower"] = upper, middle, lower
    width = upper - lower
    with np.errstate(divide="ignore", invalid="ignore"):
        out["bb_position"] = np.where(width != 0, (c - lower) / width, np.nan)
        out["bb_width"] = width / middle * 100
    returns = np.log(pd.Series(c) / pd.Series(c).shift(1))
    out["volatility_20"] = (returns.rolling(20).std() * math.sqrt(252) * 100).to_numpy()
    out["price_change_1d"] = talib.ROC(c, 1)
    out["price_change_5d"] = talib.ROC(c, 5)
    out["price_change_30d"] = talib.ROC(c, 30)
    out["avg_volume_20"] = pd.Series(v).rolling(20).mean().round().to_numpy()
    out["current_volume"] = v
    return out


def clean(row) -> list:
    values = []
    for col in COLUMNS:
        x = row[col]
        if x is None or (isinstance(x, float) and math.isnan(x)):
            values.append(None)
        elif col in ("avg_volume_20", "current_volume"):
            values.append(int(x))
        else:
            values.append(float(x))
    return values


def upsert_latest(cur, symbol, date, values):
    cols = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * len(COLUMNS))
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS)
    cur.execute(
        f"INSERT INTO analytics.technical_indicators_latest (symbol, calculated_date, {cols}) "
        f"VALUES (%s, %s, {marks}) ON CONFLICT (symbol) DO UPDATE SET "
        f"calculated_date = EXCLUDED.calculated_date, {sets}",
        [symbol, date, *values],
    )


def full(conn, symbols):
    cols = ", ".join(COLUMNS)
    for symbol in symbols:
        with conn.cursor() as cur:
            cur.execute(BARS_SQL, [symbol])
            df = pd.DataFrame(cur.fetchall(), columns=["date", "close", "volume"])
            if df.empty:
                continue
            ind = indicators(df)
            cur.execute("DELETE FROM analytics.technical_indicators WHERE symbol = %s", [symbol])
            with cur.copy(f"COPY analytics.technical_indicators (symbol, date, {cols}) FROM STDIN") as copy:
                for row in ind.to_dict("records"):
                    copy.write_row([symbol, row["date"], *clean(row)])
            last = ind.iloc[-1]
            upsert_latest(cur, symbol, last["date"], clean(last))
        conn.commit()


def incremental(conn, symbols):
    cols = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * len(COLUMNS))
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS)
    for symbol in symbols:
        with conn.cursor() as cur:
            cur.execute(LAST_BARS_SQL, [symbol])
            df = pd.DataFrame(cur.fetchall(), columns=["date", "close", "volume"])
            if df.empty:
                continue
            last = indicators(df).iloc[-1]
            values = clean(last)
            cur.execute(
                f"INSERT INTO analytics.technical_indicators (symbol, date, {cols}) "
                f"VALUES (%s, %s, {marks}) ON CONFLICT (symbol, date) DO UPDATE SET {sets}",
                [symbol, last["date"], *values],
            )
            upsert_latest(cur, symbol, last["date"], values)
        conn.commit()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--mode", choices=["full", "incremental"], required=True)
    args = parser.parse_args()
    with psycopg.connect(args.dsn) as conn:
        started = time.monotonic()
        with conn.cursor() as cur:
            cur.execute(
                "SELECT s.symbol FROM data_ingestion.symbols s WHERE EXISTS ("
                " SELECT 1 FROM data_ingestion.market_data m"
                " WHERE m.symbol = s.symbol AND m.data_source = 'yahoo') ORDER BY s.symbol"
            )
            symbols = [r[0] for r in cur.fetchall()]
        conn.commit()
        (full if args.mode == "full" else incremental)(conn, symbols)
        print(f"symbols={len(symbols)}")
        print(f"seconds={time.monotonic() - started:.3f}")


if __name__ == "__main__":
    main()
