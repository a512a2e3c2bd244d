#!/usr/bin/env python3
"""Generate TA-Lib parity fixtures for src/indicators/step.rs.

Usage:  pip install ta-lib==0.8.2 numpy   (the wheel bundles the TA-Lib C library)
        python3 scripts/gen_indicator_fixtures.py [OUT_DIR]

OUT_DIR defaults to tests/fixtures/indicators next to this script's repository root.
Every series is synthetic and seeded, so re-running gives byte-identical CSVs with the
same numpy / TA-Lib versions. One CSV per series: date,close,volume, then one column per
indicator; an empty cell means NULL; floats are written with repr() so Rust's
`str::parse::<f64>` reads back the exact bits.

Reference values come from TA-Lib wherever TA-Lib has the column (SMA, EMA, RSI, MACD,
BBANDS, ROC). The columns the spec defines on top of TA-Lib (bb_position, bb_width,
volatility_20, avg_volume_20) are computed with numpy from TA-Lib's outputs or the raw
series, exactly as shared/spec/INDICATORS.md words them. The one place where the spec
deliberately differs from TA-Lib is RSI when every difference so far is zero: TA-Lib
prints 0, the spec says NULL, so those cells are written empty.
"""

import csv
import datetime as dt
import math
import os
import sys

import numpy as np
import talib

COLUMNS = [
    "sma_20", "sma_50", "sma_200",
    "ema_12", "ema_26", "ema_50",
    "rsi_14",
    "macd_line", "macd_signal", "macd_histogram",
    "bb_upper", "bb_middle", "bb_lower", "bb_position", "bb_width",
    "volatility_20",
    "price_change_1d", "price_change_5d", "price_change_30d",
    "avg_volume_20",
]


def business_days(n, start=dt.date(2014, 1, 2)):
    out, d = [], start
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d += dt.timedelta(days=1)
    return out


def walk(rng, n, start, sigma, mu=0.0):
    """Geometric random walk of n closes starting after `start` (start itself excluded)."""
    steps = rng.normal(mu - 0.5 * sigma * sigma, sigma, n)
    return start * np.exp(np.cumsum(steps))


def volumes(rng, n, scale=1e6):
    v = np.rint(rng.lognormal(0.0, 0.8, n) * scale).astype(np.int64)
    v[rng.integers(0, n, max(1, n // 50))] = 0  # zero-volume days happen
    return v


def cents(x):
    return np.round(x, 2)


def series():
    """name -> (closes float64[], volumes int64[])."""
    out = {}

    rng = np.random.default_rng(1)
    c = cents(np.concatenate([[100.0], walk(rng, 599, 100.0, 0.02, 0.0003)]))
    out["gbm_cents"] = (c, volumes(rng, len(c)))

    rng = np.random.default_rng(2)
    c = np.concatenate([[37.5], walk(rng, 619, 37.5, 0.035, -0.0002)])  # full precision
    out["gbm_raw"] = (c, volumes(rng, len(c), 3e5))

    # Flat from the very first bar (RSI NULL: G+L = 0; bb_position NULL: upper = lower),
    # then a walk, then a 260-bar flat stretch at a non-dyadic price (the 20-close mean is
    # then not exactly the close), then another walk.
    rng = np.random.default_rng(3)
    a = np.full(40, 10.1)
    b = cents(walk(rng, 150, 10.1, 0.025))
    f = np.full(260, b[-1])
    d = cents(walk(rng, 100, b[-1], 0.025))
    c = np.concatenate([a, b, f, d])
    out["flat_runs"] = (c, volumes(rng, len(c)))

    # 10x jump up, later a 10x drop: ROC(30) of about +900 %, volatility spikes.
    rng = np.random.default_rng(4)
    a = walk(rng, 150, 20.0, 0.015)
    b = walk(rng, 150, a[-1] * 10.0, 0.015)
    d = walk(rng, 150, b[-1] / 10.0, 0.015)
    c = cents(np.concatenate([[20.0], a, b, d]))
    out["jump_10x"] = (c, volumes(rng, len(c)))

    # Shorter than the lookbacks; 34 bars ends on MACD's first valid bar (i = 33).
    for n in (10, 30, 34):
        rng = np.random.default_rng(100 + n)
        c = cents(np.concatenate([[50.0], walk(rng, n - 1, 50.0, 0.02)]))
        out[f"short_{n}"] = (c, volumes(rng, n))

    # Sub-penny prices (1e-4) with huge volumes, and seven-figure prices.
    rng = np.random.default_rng(5)
    c = np.concatenate([[2.5e-4], walk(rng, 399, 2.5e-4, 0.04)])
    out["tiny_prices"] = (c, volumes(rng, len(c), 2e9))

    rng = np.random.default_rng(6)
    c = cents(np.concatenate([[3.2e6], walk(rng, 399, 3.2e6, 0.015)]))
    out["huge_prices"] = (c, volumes(rng, len(c), 50.0))

    return out


def compute(c, v):
    n = len(c)
    nan = np.full(n, np.nan)
    col = {}
    col["sma_20"] = talib.SMA(c, 20)
    col["sma_50"] = talib.SMA(c, 50)
    col["sma_200"] = talib.SMA(c, 200)
    col["ema_12"] = talib.EMA(c, 12)
    col["ema_26"] = talib.EMA(c, 26)
    col["ema_50"] = talib.EMA(c, 50)

    rsi = talib.RSI(c, 14)
    # Spec: NULL when G + L = 0, i.e. every close so far equals the first; TA-Lib prints 0.
    all_flat_so_far = np.logical_and.accumulate(c == c[0])
    rsi = np.where(all_flat_so_far & (rsi == 0.0), np.nan, rsi)
    col["rsi_14"] = rsi

    m, s, h = talib.MACD(c, 12, 26, 9)
    col["macd_line"], col["macd_signal"], col["macd_histogram"] = m, s, h

    up, mid, lo = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    col["bb_upper"], col["bb_middle"], col["bb_lower"] = up, mid, lo
    with np.errstate(divide="ignore", invalid="ignore"):
        col["bb_position"] = np.where(up == lo, np.nan, (c - lo) / (up - lo))
        col["bb_width"] = (up - lo) / mid * 100.0

    vol = nan.copy()
    r = np.log(c[1:] / c[:-1])  # r[j] is the return into bar j + 1
    for i in range(20, n):
        vol[i] = np.std(r[i - 20:i], ddof=1) * math.sqrt(252.0) * 100.0
    col["volatility_20"] = vol

    col["price_change_1d"] = talib.ROC(c, 1)
    col["price_change_5d"] = talib.ROC(c, 5)
    col["price_change_30d"] = talib.ROC(c, 30)

    av = nan.copy()
    vf = v.astype(np.float64)
    for i in range(19, n):
        av[i] = vf[i - 19:i + 1].mean()
    col["avg_volume_20"] = av

    for k in COLUMNS:
        assert len(col[k]) == n, k
    return col


def fmt(x):
    return "" if np.isnan(x) else repr(float(x))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "fixtures", "indicators")
    os.makedirs(out_dir, exist_ok=True)
    print(f"talib {talib.__version__} (C {talib.__ta_version__.decode()}), numpy {np.__version__}")
    for name, (c, v) in series().items():
        assert np.all(np.isfinite(c)) and np.all(c > 0), name
        col = compute(c.astype(np.float64), v)
        dates = business_days(len(c))
        path = os.path.join(out_dir, f"{name}.csv")
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["date", "close", "volume"] + COLUMNS)
            for i in range(len(c)):
                w.writerow([dates[i].isoformat(), repr(float(c[i])), int(v[i])]
                           + [fmt(col[k][i]) for k in COLUMNS])
        nulls = {k: int(np.isnan(col[k]).sum()) for k in ("rsi_14", "bb_position")}
        print(f"{path}: {len(c)} bars, NULL counts {nulls}")


if __name__ == "__main__":
    main()
