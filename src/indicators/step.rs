//! Pure, incremental technical indicators. The contract is `shared/spec/INDICATORS.md`
//! (version [`SPEC_VERSION`]), which reproduces TA-Lib 0.8 with its unstable period at 0.
//!
//! [`step`] is the only place the math lives. A backfill folds it from
//! [`IndicatorState::new`] ([`full`]); the daily run folds it from the persisted state over
//! the new bars only. Both must give identical bits, so every output is a deterministic
//! function of the state's fields and the bar alone: nothing depends on where a run started,
//! on a buffer's capacity or layout, or on the CPU (no fast-math; `mul_add` is exactly
//! rounded whether or not the CPU has FMA).

use std::collections::VecDeque;

use chrono::NaiveDate;

/// Version of INDICATORS.md this module implements. A persisted state with another version
/// must not be stepped: recompute the symbol from its first bar.
pub(crate) const SPEC_VERSION: i32 = 1;

/// Closes kept: the longest window (sma_200). Also covers every seed (≤ 50 closes), ROC(30)
/// and the 21 closes behind volatility_20's returns.
pub(crate) const CLOSE_WINDOW: usize = 200;
/// Volumes kept: avg_volume_20.
pub(crate) const VOLUME_WINDOW: usize = 20;
/// Log returns kept: volatility_20.
pub(crate) const RETURN_WINDOW: usize = 20;

const K12: f64 = 2.0 / 13.0;
const K26: f64 = 2.0 / 27.0;
const K50: f64 = 2.0 / 51.0;
const K_SIGNAL: f64 = 2.0 / 10.0;
const RSI_R: f64 = 1.0 / 14.0;
/// √252, correctly rounded (`f64::sqrt` is not `const`).
const SQRT_252: f64 = 15.874_507_866_387_544;

/// i at which TA-Lib's MACD fast EMA is seeded: the slow EMA's first bar.
const MACD_FAST_SEED_I: i64 = 25;
/// i at which the MACD signal is seeded: 25 + 9 − 1.
const MACD_SIGNAL_SEED_I: i64 = 33;
const RSI_SEED_I: i64 = 14;

/// Everything [`step`] needs to continue a symbol's series, and nothing more.
///
/// Every field is plain data so the store can persist it losslessly (`float8`, `float8[]`,
/// `date[]`, `bigint[]`; never NUMERIC) and rebuild the struct field by field. Windows are
/// ordered oldest first. A state rebuilt from its fields steps to the same bits as the
/// original: buffer capacity and layout never influence a result.
#[derive(Debug, Clone, PartialEq)]
pub struct IndicatorState {
    /// Spec version that produced this state; a mismatch forces a full recompute.
    pub spec_version: i32,
    /// Date of the symbol's first valid bar (i = 0). A different first date in the database
    /// means history was revised and the symbol must be recomputed.
    pub first_date: Option<NaiveDate>,
    /// Date of the last consumed bar; the next bar must be strictly later.
    pub last_date: Option<NaiveDate>,
    /// Number of valid bars consumed, i.e. the i of the next bar. Decides which columns are
    /// still NULL and when each seed happens; also the cheap revision check against the
    /// database's bar count.
    pub bars_consumed: i64,
    /// Last ≤ 200 valid closes: the SMA / Bollinger windows, the EMA and RSI seeds, the ROC
    /// bases and the previous close for RSI and returns.
    pub closes: VecDeque<f64>,
    /// Dates of `closes`, same length: lets the revision check compare the stored tail with
    /// the database without reading the output table.
    pub close_dates: VecDeque<NaiveDate>,
    /// Last ≤ 20 volumes (avg_volume_20). Integers, so their sum is exact in any order.
    pub volumes: VecDeque<i64>,
    /// Cache of the last ≤ 20 log returns ln(cᵢ/cᵢ₋₁), so each `ln` is taken once rather
    /// than 20 times per bar. Not part of the spec's state: it is a pure function of
    /// `closes`, and [`step`] rebuilds it (to the same bits) whenever it is shorter than
    /// `closes` allows, so the store may persist it or leave it empty.
    pub log_returns: VecDeque<f64>,
    /// ema_12 after the last bar; None before i = 11.
    pub ema12: Option<f64>,
    /// ema_26 after the last bar (also MACD's slow EMA); None before i = 25.
    pub ema26: Option<f64>,
    /// ema_50 after the last bar; None before i = 49.
    pub ema50: Option<f64>,
    /// TA-Lib MACD's own fast EMA12, seeded at i = 25 with mean(c₁₄..c₂₅). It differs from
    /// `ema12` for the whole series, which is why it is kept separately. None before i = 25.
    pub macd_fast: Option<f64>,
    /// MACD signal (EMA9 of raw MACD) after the last bar; None before i = 33.
    pub macd_signal: Option<f64>,
    /// Running sum of raw MACD over i = 25..=33, oldest first, from 0.0: the signal's seed is
    /// this sum / 9 at i = 33. Raw MACD values are not kept anywhere else, so a run that stops
    /// inside 25..33 needs it. Stays at its final value afterwards (unused).
    pub macd_seed_sum: f64,
    /// Wilder average gain G after the last bar; None before i = 14.
    pub avg_gain: Option<f64>,
    /// Wilder average loss L after the last bar; None before i = 14.
    pub avg_loss: Option<f64>,
}

impl Default for IndicatorState {
    fn default() -> Self {
        Self::new()
    }
}

impl IndicatorState {
    /// The state before a symbol's first bar.
    pub(crate) fn new() -> Self {
        Self {
            spec_version: SPEC_VERSION,
            first_date: None,
            last_date: None,
            bars_consumed: 0,
            closes: VecDeque::new(),
            close_dates: VecDeque::new(),
            volumes: VecDeque::new(),
            log_returns: VecDeque::new(),
            ema12: None,
            ema26: None,
            ema50: None,
            macd_fast: None,
            macd_signal: None,
            macd_seed_sum: 0.0,
            avg_gain: None,
            avg_loss: None,
        }
    }

    /// Whether a state (typically one just loaded from the database) is one [`step`] could
    /// have produced, structurally: right spec version, window lengths matching
    /// `bars_consumed`, dates strictly increasing, closes valid, each `Option` present
    /// exactly from its seed bar on. A state that fails this should be discarded and the
    /// symbol recomputed from its first bar; stepping it would give wrong numbers silently.
    pub(crate) fn is_consistent(&self) -> bool {
        let n = self.bars_consumed;
        if self.spec_version != SPEC_VERSION || n < 0 {
            return false;
        }
        let kept = |cap: usize| usize::try_from(n).map_or(cap, |n| n.min(cap));
        let present = |o: Option<f64>, seed_i: i64| o.is_some() == (n > seed_i);
        self.closes.len() == kept(CLOSE_WINDOW)
            && self.close_dates.len() == self.closes.len()
            && self.volumes.len() == kept(VOLUME_WINDOW)
            && self.log_returns.len() <= self.closes.len().saturating_sub(1).min(RETURN_WINDOW)
            && self.first_date.is_some() == (n > 0)
            && self.last_date == self.close_dates.back().copied()
            && self.first_date <= self.close_dates.front().copied()
            && self
                .close_dates
                .iter()
                .zip(self.close_dates.iter().skip(1))
                .all(|(a, b)| a < b)
            && self.closes.iter().all(|&c| is_valid_close(c))
            && present(self.ema12, 11)
            && present(self.ema26, 25)
            && present(self.ema50, 49)
            && present(self.macd_fast, MACD_FAST_SEED_I)
            && present(self.macd_signal, MACD_SIGNAL_SEED_I)
            && present(self.avg_gain, RSI_SEED_I)
            && present(self.avg_loss, RSI_SEED_I)
    }

    /// Close of the last consumed bar. Derived from `closes`, so a stored copy (the
    /// `prev_close` column) is redundant and is never read back by [`step`].
    pub(crate) fn prev_close(&self) -> Option<f64> {
        self.closes.back().copied()
    }

    /// Rebuilds the `log_returns` cache from `closes` if it holds fewer returns than the
    /// closes allow (e.g. the store did not persist it). Uses the exact expression `step`
    /// uses, so the rebuilt values are the same bits.
    fn ensure_log_returns(&mut self) {
        let want = self.closes.len().saturating_sub(1).min(RETURN_WINDOW);
        if self.log_returns.len() == want {
            return;
        }
        self.log_returns.clear();
        let w = self.closes.make_contiguous();
        let tail = &w[w.len() - (want + 1).min(w.len())..];
        self.log_returns
            .extend(tail.windows(2).map(|p| log_return(p[0], p[1])));
    }
}

/// One daily bar as read from `market_data` (the close as `close::float8` gives it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub date: NaiveDate,
    pub close: f64,
    pub volume: i64,
}

/// One output row. `None` is SQL NULL: too few bars for the column, or the spec's explicit
/// NULL cases (RSI when G + L = 0, bb_position when upper = lower). Values are raw f64;
/// rounding to NUMERIC (and NULL-with-warning on overflow, including the non-finite values
/// only absurd inputs such as closes 1e300 apart can produce) is the writer's job.
#[derive(Debug, Clone, PartialEq)]
pub struct IndicatorRow {
    pub date: NaiveDate,
    pub sma_20: Option<f64>,
    pub sma_50: Option<f64>,
    pub sma_200: Option<f64>,
    pub ema_12: Option<f64>,
    pub ema_26: Option<f64>,
    pub ema_50: Option<f64>,
    /// Written to both the `rsi` and `rsi_14` columns.
    pub rsi_14: Option<f64>,
    pub macd_line: Option<f64>,
    pub macd_signal: Option<f64>,
    pub macd_histogram: Option<f64>,
    pub bb_upper: Option<f64>,
    pub bb_middle: Option<f64>,
    pub bb_lower: Option<f64>,
    pub bb_position: Option<f64>,
    pub bb_width: Option<f64>,
    pub volatility_20: Option<f64>,
    pub price_change_1d: Option<f64>,
    pub price_change_5d: Option<f64>,
    pub price_change_30d: Option<f64>,
    pub avg_volume_20: Option<f64>,
    pub current_volume: i64,
}

impl IndicatorRow {
    /// The INDICATORS.md names of [`IndicatorRow::values`], in table order.
    pub const VALUE_NAMES: [&'static str; 20] = [
        "sma_20",
        "sma_50",
        "sma_200",
        "ema_12",
        "ema_26",
        "ema_50",
        "rsi_14",
        "macd_line",
        "macd_signal",
        "macd_histogram",
        "bb_upper",
        "bb_middle",
        "bb_lower",
        "bb_position",
        "bb_width",
        "volatility_20",
        "price_change_1d",
        "price_change_5d",
        "price_change_30d",
        "avg_volume_20",
    ];

    /// The f64 columns in table order (named by [`IndicatorRow::VALUE_NAMES`]): what the
    /// writer encodes, row after row, without the names.
    #[inline]
    pub fn values(&self) -> [Option<f64>; 20] {
        [
            self.sma_20,
            self.sma_50,
            self.sma_200,
            self.ema_12,
            self.ema_26,
            self.ema_50,
            self.rsi_14,
            self.macd_line,
            self.macd_signal,
            self.macd_histogram,
            self.bb_upper,
            self.bb_middle,
            self.bb_lower,
            self.bb_position,
            self.bb_width,
            self.volatility_20,
            self.price_change_1d,
            self.price_change_5d,
            self.price_change_30d,
            self.avg_volume_20,
        ]
    }

    /// The f64 columns with their INDICATORS.md names, in table order, so writers and tests
    /// need not list the fields again.
    pub fn named_values(&self) -> [(&'static str, Option<f64>); 20] {
        let values = self.values();
        std::array::from_fn(|i| (Self::VALUE_NAMES[i], values[i]))
    }
}

/// Why [`try_step`] refused a bar. Either way the state is untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkipReason {
    /// NaN, ±inf, 0 or negative close: not a bar. The spec says skip it, count it, log it.
    InvalidClose,
    /// Date on or before `last_date`. Never a normal event: the caller re-sent old bars or
    /// history was revised, and the remedy is a recompute from the first bar, not a skip.
    /// Refusing (rather than panicking or debug-asserting) keeps a daemon alive and lets
    /// the caller choose that remedy.
    NotAfterLastDate,
}

/// The spec's test for "is a bar": finite and strictly positive.
pub(crate) fn is_valid_close(close: f64) -> bool {
    close.is_finite() && close > 0.0
}

/// Consumes one bar. Returns `None`, leaving the state untouched, when the bar is refused:
/// an invalid close (the caller counts and logs these), or a date not strictly after
/// `state.last_date` (a revision: recompute the symbol). [`try_step`] tells the two apart.
///
/// Expects a state from [`IndicatorState::new`] or from earlier steps (after a database
/// round trip, check [`IndicatorState::is_consistent`]); an inconsistent one gives
/// meaningless numbers but never a panic.
#[inline]
pub fn step(state: &mut IndicatorState, bar: &Bar) -> Option<IndicatorRow> {
    try_step(state, bar).ok()
}

/// Folds [`step`] over `bars` from an empty state. Refused bars produce no row.
pub fn full(bars: &[Bar]) -> (IndicatorState, Vec<IndicatorRow>) {
    let mut state = IndicatorState::new();
    let mut rows = Vec::with_capacity(bars.len());
    rows.extend(bars.iter().filter_map(|bar| step(&mut state, bar)));
    (state, rows)
}

/// [`step`] that says why a bar was refused. The state changes only on `Ok`.
pub(crate) fn try_step(state: &mut IndicatorState, bar: &Bar) -> Result<IndicatorRow, SkipReason> {
    let c = bar.close;
    if !is_valid_close(c) {
        return Err(SkipReason::InvalidClose);
    }
    if state.last_date.is_some_and(|last| bar.date <= last) {
        return Err(SkipReason::NotAfterLastDate);
    }
    // Accepted: nothing below can fail, so the state is never left half-updated.

    state.ensure_log_returns();
    // A window's worth of slack in the rings that get `make_contiguous`: they then wrap (and
    // copy) once per window length instead of on every bar, also for a state the store
    // rebuilt from exact-size Vecs. The other rings only push and pop.
    reserve_slack(&mut state.closes, CLOSE_WINDOW);
    reserve_slack(&mut state.log_returns, RETURN_WINDOW);

    let i = state.bars_consumed;
    let prev = state.closes.back().copied();
    push_bounded(&mut state.closes, c, CLOSE_WINDOW);
    push_bounded(&mut state.close_dates, bar.date, CLOSE_WINDOW);
    push_bounded(&mut state.volumes, bar.volume, VOLUME_WINDOW);
    if let Some(p) = prev {
        push_bounded(&mut state.log_returns, log_return(p, c), RETURN_WINDOW);
    }
    state.first_date.get_or_insert(bar.date);
    state.last_date = Some(bar.date);
    state.bars_consumed = i + 1;

    // All window math reads one contiguous slice so that the summation order is a function
    // of the window's contents only, never of where the ring buffer happens to wrap.
    let w: &[f64] = state.closes.make_contiguous();
    let n = w.len();
    let last = |len: usize| (n >= len).then(|| &w[n - len..]);

    let sma = |len: usize| last(len).map(|s| lane_sum(s) / len as f64);
    let sma_20 = sma(20);
    let sma_50 = sma(50);
    let sma_200 = sma(200);

    let ema_12 = ema_update(&mut state.ema12, i, w, 12, K12, c);
    let ema_26 = ema_update(&mut state.ema26, i, w, 26, K26, c);
    let ema_50 = ema_update(&mut state.ema50, i, w, 50, K50, c);

    // TA-Lib's MACD runs its own EMA12 that starts where the slow EMA starts (i = 25),
    // seeded with the mean of the 12 closes up to there.
    if i == MACD_FAST_SEED_I {
        state.macd_fast = last(12).map(|s| seq_sum(s) / 12.0);
    } else if i > MACD_FAST_SEED_I {
        state.macd_fast = state.macd_fast.map(|e| (c - e).mul_add(K12, e));
    }
    let raw_macd = match (state.macd_fast, ema_26) {
        (Some(fast), Some(slow)) => Some(fast - slow),
        _ => None,
    };
    if let Some(raw) = raw_macd {
        if i <= MACD_SIGNAL_SEED_I {
            state.macd_seed_sum += raw;
        }
        if i == MACD_SIGNAL_SEED_I {
            state.macd_signal = Some(state.macd_seed_sum / 9.0);
        } else if i > MACD_SIGNAL_SEED_I {
            state.macd_signal = state.macd_signal.map(|s| (raw - s).mul_add(K_SIGNAL, s));
        }
    }
    let (macd_line, macd_signal, macd_histogram) = match (raw_macd, state.macd_signal) {
        (Some(raw), Some(sig)) => (Some(raw), Some(sig), Some(raw - sig)),
        _ => (None, None, None),
    };

    if i == RSI_SEED_I {
        let (mut gains, mut losses) = (0.0, 0.0);
        for d in last(15).unwrap_or_default().windows(2).map(|p| p[1] - p[0]) {
            gains += d.max(0.0);
            losses += (-d).max(0.0);
        }
        state.avg_gain = Some(gains * RSI_R);
        state.avg_loss = Some(losses * RSI_R);
    } else if let (true, Some(p), Some(g), Some(l)) =
        (i > RSI_SEED_I, prev, state.avg_gain, state.avg_loss)
    {
        let d = c - p;
        state.avg_gain = Some((g * 13.0 + d.max(0.0)) * RSI_R);
        state.avg_loss = Some((l * 13.0 + (-d).max(0.0)) * RSI_R);
    }
    let rsi_14 = match (state.avg_gain, state.avg_loss) {
        (Some(g), Some(l)) if g + l != 0.0 => Some(100.0 * g / (g + l)),
        _ => None,
    };

    let (mut bb_upper, mut bb_lower, mut bb_position, mut bb_width) = (None, None, None, None);
    if let (Some(s), Some(mid)) = (last(20), sma_20) {
        // A flat window has σ = 0 exactly, but sum/20 of a non-dyadic close (12.34) is not
        // always that close, and the two-pass deviations would leave a σ of a few ulps and a
        // meaningless bb_position. TA-Lib also returns upper = lower there.
        let sd = if s.iter().all(|&x| x == s[0]) {
            0.0
        } else {
            (lane_sum_sq_dev(s, mid) / 20.0).sqrt()
        };
        let upper = mid + 2.0 * sd;
        let lower = mid - 2.0 * sd;
        bb_upper = Some(upper);
        bb_lower = Some(lower);
        bb_width = Some((upper - lower) / mid * 100.0);
        bb_position = (upper != lower).then(|| (c - lower) / (upper - lower));
    }

    let volatility_20 = (state.log_returns.len() == RETURN_WINDOW).then(|| {
        let r: &[f64] = state.log_returns.make_contiguous();
        let mean = lane_sum(r) / RETURN_WINDOW as f64;
        (lane_sum_sq_dev(r, mean) / (RETURN_WINDOW - 1) as f64).sqrt() * SQRT_252 * 100.0
    });

    let roc = |k: usize| (n > k).then(|| (c - w[n - 1 - k]) / w[n - 1 - k] * 100.0);

    let avg_volume_20 = (state.volumes.len() == VOLUME_WINDOW).then(|| {
        // The integer sum is exact, so only the conversion and the division round. i128 only
        // when i64 would overflow, because its conversion to f64 is a slow library call.
        let total = match state
            .volumes
            .iter()
            .try_fold(0i64, |a, &v| a.checked_add(v))
        {
            Some(t) => t as f64,
            None => state.volumes.iter().map(|&v| i128::from(v)).sum::<i128>() as f64,
        };
        total / VOLUME_WINDOW as f64
    });

    Ok(IndicatorRow {
        date: bar.date,
        sma_20,
        sma_50,
        sma_200,
        ema_12,
        ema_26,
        ema_50,
        rsi_14,
        macd_line,
        macd_signal,
        macd_histogram,
        bb_upper,
        bb_middle: sma_20,
        bb_lower,
        bb_position,
        bb_width,
        volatility_20,
        price_change_1d: roc(1),
        price_change_5d: roc(5),
        price_change_30d: roc(30),
        avg_volume_20,
        current_volume: bar.volume,
    })
}

/// EMA of period `len` whose bar i has just been pushed onto `w`: seeded at i = len − 1 with
/// the mean of the first `len` closes (summed oldest first, as TA-Lib does), then
/// `e = (c − e)·k + e` with a single rounding (the spec's `mul_add` form).
#[inline]
fn ema_update(e: &mut Option<f64>, i: i64, w: &[f64], len: usize, k: f64, c: f64) -> Option<f64> {
    let seed_i = len as i64 - 1;
    if i == seed_i {
        *e = w
            .len()
            .checked_sub(len)
            .map(|from| seq_sum(&w[from..]) / len as f64);
    } else if i > seed_i {
        *e = e.map(|prev| (c - prev).mul_add(k, prev));
    }
    *e
}

#[inline]
fn log_return(prev: f64, c: f64) -> f64 {
    (c / prev).ln()
}

#[inline]
fn push_bounded<T>(ring: &mut VecDeque<T>, value: T, cap: usize) {
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(value);
}

#[inline]
fn reserve_slack<T>(ring: &mut VecDeque<T>, window: usize) {
    if ring.capacity() < 2 * window {
        ring.reserve_exact(2 * window - ring.len());
    }
}

/// Plain left-to-right sum, for one-off seeds where TA-Lib's own order is cheap to match.
#[inline]
fn seq_sum(xs: &[f64]) -> f64 {
    xs.iter().fold(0.0, |acc, &x| acc + x)
}

/// Number of interleaved accumulators in the window sums.
const LANES: usize = 8;

/// Window sum in a fixed order: element j (counted from the window's oldest element) goes
/// to accumulator j mod 8, and the accumulators are combined pairwise. The order depends
/// only on the window, so the result is reproducible bit for bit; and it breaks the
/// 200-long chain of dependent additions that a left-to-right sum would be (a whole step
/// took 2× as long with left-to-right sums), with an error bound no worse. It is not TA-Lib's
/// running sum, whose error grows with history; the spec's tolerance covers the difference.
#[inline]
fn lane_sum(xs: &[f64]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    for (a, &x) in acc.iter_mut().zip(rest) {
        *a += x;
    }
    combine(acc)
}

/// Σ (x − mean)², same fixed lane order as [`lane_sum`] (second pass of a two-pass σ).
#[inline]
fn lane_sum_sq_dev(xs: &[f64], mean: f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            let d = x - mean;
            *a += d * d;
        }
    }
    for (a, &x) in acc.iter_mut().zip(rest) {
        let d = x - mean;
        *a += d * d;
    }
    combine(acc)
}

#[inline]
fn combine(a: [f64; LANES]) -> f64 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- TA-Lib fixtures (generated by scripts/gen_indicator_fixtures.py) ----

    const FIXTURES: &[(&str, &str)] = &[
        (
            "gbm_cents",
            include_str!("../../tests/fixtures/indicators/gbm_cents.csv"),
        ),
        (
            "gbm_raw",
            include_str!("../../tests/fixtures/indicators/gbm_raw.csv"),
        ),
        (
            "flat_runs",
            include_str!("../../tests/fixtures/indicators/flat_runs.csv"),
        ),
        (
            "jump_10x",
            include_str!("../../tests/fixtures/indicators/jump_10x.csv"),
        ),
        (
            "short_10",
            include_str!("../../tests/fixtures/indicators/short_10.csv"),
        ),
        (
            "short_30",
            include_str!("../../tests/fixtures/indicators/short_30.csv"),
        ),
        (
            "short_34",
            include_str!("../../tests/fixtures/indicators/short_34.csv"),
        ),
        (
            "tiny_prices",
            include_str!("../../tests/fixtures/indicators/tiny_prices.csv"),
        ),
        (
            "huge_prices",
            include_str!("../../tests/fixtures/indicators/huge_prices.csv"),
        ),
    ];

    struct Fixture {
        bars: Vec<Bar>,
        header: Vec<String>,
        /// Per bar, per indicator column (header order after date,close,volume).
        expected: Vec<Vec<Option<f64>>>,
    }

    fn parse_fixture(text: &str) -> Fixture {
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap()
            .split(',')
            .map(str::to_owned)
            .collect();
        assert_eq!(header[..3], ["date", "close", "volume"]);
        let (mut bars, mut expected) = (Vec::new(), Vec::new());
        for line in lines.filter(|l| !l.is_empty()) {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), header.len(), "{line}");
            bars.push(Bar {
                date: cells[0].parse().unwrap(),
                close: cells[1].parse().unwrap(),
                volume: cells[2].parse().unwrap(),
            });
            expected.push(
                cells[3..]
                    .iter()
                    .map(|s| (!s.is_empty()).then(|| s.parse::<f64>().unwrap()))
                    .collect(),
            );
        }
        Fixture {
            bars,
            header: header[3..].to_vec(),
            expected,
        }
    }

    /// INDICATORS.md: |Δ| ≤ 1e-9·max(|ref|, s), s = close for the MACD columns, else 0;
    /// 1e-8 instead of 1e-9 for bb_width and bb_position.
    ///
    /// bb_position gets s = 1 (its unit is the band width): its error is TA-Lib's absolute
    /// middle-band error over the band width, so a purely relative bound fails whenever the
    /// close sits on the lower band. jump_10x i=444: TA-Lib's running sum still carries
    /// drift from the 10× era (middle 22.369999999999987, exact 22.370000000000000107), giving
    /// bb_position 0.0031451769043 where the exact value is 0.0031451768688 and ours is
    /// 0.0031451768688: relative Δ 1.1e-8, absolute 3.6e-11.
    fn tolerance(column: &str, reference: f64, close: f64) -> f64 {
        match column {
            "bb_position" => 1e-8 * reference.abs().max(1.0),
            "bb_width" => 1e-8 * reference.abs(),
            c if c.starts_with("macd_") => 1e-9 * reference.abs().max(close),
            _ => 1e-9 * reference.abs(),
        }
    }

    #[test]
    fn matches_talib_fixtures() {
        let mut failures = Vec::new();
        let mut checked = 0usize;
        // Per column: largest |Δ| / tolerance seen, and where (printed with --nocapture).
        let mut worst = std::collections::BTreeMap::<&str, (f64, &str)>::new();
        for (name, text) in FIXTURES {
            let fx = parse_fixture(text);
            let (state, rows) = full(&fx.bars);
            assert_eq!(
                rows.len(),
                fx.bars.len(),
                "{name}: every fixture bar is valid"
            );
            assert_eq!(state.bars_consumed, fx.bars.len() as i64);
            assert!(state.is_consistent(), "{name}");
            for (i, (row, want)) in rows.iter().zip(&fx.expected).enumerate() {
                let bar = &fx.bars[i];
                assert_eq!(row.date, bar.date);
                assert_eq!(row.current_volume, bar.volume);
                let got = row.named_values();
                assert_eq!(got.len(), fx.header.len(), "{name}: fixture columns");
                for ((col, value), (head, reference)) in got.iter().zip(fx.header.iter().zip(want))
                {
                    assert_eq!(col, head, "{name}: column order");
                    checked += 1;
                    let ok = match (value, reference) {
                        (None, None) => true,
                        (Some(v), Some(r)) => {
                            let tol = tolerance(col, *r, bar.close);
                            let ratio = if tol > 0.0 { (v - r).abs() / tol } else { 0.0 };
                            let w = worst.entry(*col).or_insert((0.0, ""));
                            if ratio > w.0 {
                                *w = (ratio, name);
                            }
                            (v - r).abs() <= tol
                        }
                        _ => false,
                    };
                    if !ok {
                        failures.push(format!(
                            "{name} i={i} {col}: got {value:?}, talib {reference:?}"
                        ));
                    }
                }
            }
        }
        for (col, (ratio, name)) in &worst {
            println!("{col:>16}: worst |Δ|/tolerance {ratio:.3e} ({name})");
        }
        assert!(checked > 50_000, "fixtures look truncated: {checked} cells");
        assert!(
            failures.is_empty(),
            "{} mismatches:\n{}",
            failures.len(),
            failures[..failures.len().min(40)].join("\n")
        );
    }

    #[test]
    fn first_valid_index_per_column() {
        // Independent of TA-Lib: the spec's "first valid i" table.
        let bars = dated(
            &(0..260)
                .map(|i| 50.0 + (i as f64 * 0.7).sin())
                .collect::<Vec<_>>(),
        );
        let (_, rows) = full(&bars);
        let first = |col: &str| {
            rows.iter()
                .position(|r| {
                    r.named_values()
                        .iter()
                        .any(|(c, v)| *c == col && v.is_some())
                })
                .unwrap()
        };
        for (col, i) in [
            ("sma_20", 19),
            ("sma_50", 49),
            ("sma_200", 199),
            ("ema_12", 11),
            ("ema_26", 25),
            ("ema_50", 49),
            ("rsi_14", 14),
            ("macd_line", 33),
            ("macd_signal", 33),
            ("macd_histogram", 33),
            ("bb_upper", 19),
            ("bb_middle", 19),
            ("bb_lower", 19),
            ("bb_position", 19),
            ("bb_width", 19),
            ("volatility_20", 20),
            ("price_change_1d", 1),
            ("price_change_5d", 5),
            ("price_change_30d", 30),
            ("avg_volume_20", 19),
        ] {
            assert_eq!(first(col), i, "{col}");
        }
    }

    #[test]
    fn flat_series_gives_spec_nulls() {
        let bars = dated(&[12.34; 60]);
        let (_, rows) = full(&bars);
        for r in &rows[19..] {
            assert_eq!(r.bb_upper, r.bb_lower);
            assert_eq!(r.bb_position, None);
            assert_eq!(r.bb_width, Some(0.0));
            assert_eq!(r.rsi_14, None);
        }
        assert_eq!(rows[59].volatility_20, Some(0.0));
        assert_eq!(rows[59].price_change_30d, Some(0.0));
    }

    #[test]
    fn refused_bars_leave_state_untouched() {
        let bars = dated(&[10.0, 11.0, 10.5]);
        let (mut state, _) = full(&bars);
        let before = state_bits(&state);
        let date = bars[2].date.succ_opt().unwrap();
        for close in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, -1.0] {
            let bar = Bar {
                date,
                close,
                volume: 7,
            };
            assert_eq!(try_step(&mut state, &bar), Err(SkipReason::InvalidClose));
            assert_eq!(state_bits(&state), before);
        }
        for date in [bars[2].date, bars[0].date] {
            let bar = Bar {
                date,
                close: 10.0,
                volume: 7,
            };
            assert_eq!(
                try_step(&mut state, &bar),
                Err(SkipReason::NotAfterLastDate)
            );
            assert_eq!(state_bits(&state), before);
        }
        // The smallest positive subnormal is a (silly) valid close.
        assert!(step(
            &mut state,
            &Bar {
                date,
                close: f64::from_bits(1),
                volume: 0
            }
        )
        .is_some());
    }

    #[test]
    fn avg_volume_survives_i64_overflow() {
        let mut bars = dated(&[5.0; 20]);
        for b in &mut bars {
            b.volume = i64::MAX;
        }
        let (_, rows) = full(&bars);
        let want = (i128::from(i64::MAX) * 20) as f64 / 20.0;
        assert_eq!(rows[19].avg_volume_20, Some(want));
    }

    #[test]
    fn long_series_incremental_equals_full() {
        // Longer than the proptest series: several ring wrap-arounds and > 2520 bars.
        let mut c = 80.0f64;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let closes: Vec<f64> = (0..3000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                if i % 400 < 25 {
                    return c; // flat stretch
                }
                c *= (0.05 * u).exp();
                (c * 100.0).round() / 100.0
            })
            .collect();
        let bars = dated(&closes);
        let (state, rows) = full(&bars);
        for k in [0, 1, 14, 25, 33, 34, 199, 200, 201, 777, 2520, 2999, 3000] {
            check_split(&bars, k, &state, &rows, k % 2 == 0);
        }
    }

    // ---- property tests ----

    fn dated(closes: &[f64]) -> Vec<Bar> {
        let d0 = NaiveDate::from_ymd_opt(2010, 1, 4).unwrap();
        closes
            .iter()
            .enumerate()
            .map(|(i, &close)| Bar {
                date: d0 + chrono::Days::new(i as u64 * 2),
                close,
                volume: (i as i64 * 7919) % 100_003,
            })
            .collect()
    }

    type StateBits = (
        i32,
        Option<NaiveDate>,
        Option<NaiveDate>,
        i64,
        Vec<u64>,
        Vec<NaiveDate>,
        Vec<i64>,
        Vec<u64>,
        [Option<u64>; 7],
        u64,
    );

    fn state_bits(s: &IndicatorState) -> StateBits {
        let b = |o: Option<f64>| o.map(f64::to_bits);
        (
            s.spec_version,
            s.first_date,
            s.last_date,
            s.bars_consumed,
            s.closes.iter().map(|x| x.to_bits()).collect(),
            s.close_dates.iter().copied().collect(),
            s.volumes.iter().copied().collect(),
            s.log_returns.iter().map(|x| x.to_bits()).collect(),
            [
                b(s.ema12),
                b(s.ema26),
                b(s.ema50),
                b(s.macd_fast),
                b(s.macd_signal),
                b(s.avg_gain),
                b(s.avg_loss),
            ],
            s.macd_seed_sum.to_bits(),
        )
    }

    fn row_bits(r: &IndicatorRow) -> (NaiveDate, i64, Vec<Option<u64>>) {
        let v = r
            .named_values()
            .iter()
            .map(|(_, v)| v.map(f64::to_bits))
            .collect();
        (r.date, r.current_volume, v)
    }

    /// What the store does: every field out as plain values and back, with exact-size
    /// buffers; optionally without the log-return cache.
    fn persist_roundtrip(s: &IndicatorState, drop_cache: bool) -> IndicatorState {
        let f = |v: &VecDeque<f64>| -> VecDeque<f64> {
            v.iter()
                .map(|x| f64::from_bits(x.to_bits()))
                .collect::<Vec<_>>()
                .into()
        };
        IndicatorState {
            closes: f(&s.closes),
            close_dates: s.close_dates.iter().copied().collect::<Vec<_>>().into(),
            volumes: s.volumes.iter().copied().collect::<Vec<_>>().into(),
            log_returns: if drop_cache {
                VecDeque::new()
            } else {
                f(&s.log_returns)
            },
            ..s.clone()
        }
    }

    fn check_split(
        bars: &[Bar],
        k: usize,
        whole: &IndicatorState,
        rows: &[IndicatorRow],
        drop_cache: bool,
    ) {
        let (head_state, head_rows) = full(&bars[..k]);
        assert!(head_state.is_consistent(), "k={k}");
        let mut state = persist_roundtrip(&head_state, drop_cache && k < bars.len());
        assert!(state.is_consistent(), "k={k}");
        let mut all: Vec<_> = head_rows.iter().map(row_bits).collect();
        all.extend(
            bars[k..]
                .iter()
                .filter_map(|b| step(&mut state, b))
                .map(|r| row_bits(&r)),
        );
        let want: Vec<_> = rows.iter().map(row_bits).collect();
        assert_eq!(all, want, "rows differ, split k={k}");
        assert_eq!(
            state_bits(&state),
            state_bits(whole),
            "state differs, split k={k}"
        );
    }

    /// Positive series built from segments: walks, flat runs (also at the very start, for
    /// RSI's G + L = 0), 10× jumps and drops, optionally rounded to cents.
    fn series() -> impl Strategy<Value = Vec<f64>> {
        let segment = (0u8..4, 1usize..45, 0.0f64..0.08, any::<u64>());
        (
            1e-3f64..1e5,
            any::<bool>(),
            prop::collection::vec(segment, 1..20),
        )
            .prop_map(|(start, cents, segments)| {
                let mut c = start;
                let mut out = Vec::new();
                for (kind, len, sigma, seed) in segments {
                    let mut x = seed | 1;
                    for j in 0..len {
                        match kind {
                            0 | 1 => {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                let u = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                                c *= (2.0 * sigma * u).exp();
                            }
                            2 => {}
                            _ if j == 0 => c *= if seed % 2 == 0 { 10.0 } else { 0.1 },
                            _ => {}
                        }
                        let v = if cents {
                            ((c * 100.0).round() / 100.0).max(0.01)
                        } else {
                            c
                        };
                        out.push(v);
                    }
                }
                out.truncate(300);
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        #[test]
        fn incremental_equals_full_at_every_split(closes in series()) {
            let bars = dated(&closes);
            let (state, rows) = full(&bars);
            prop_assert_eq!(rows.len(), bars.len());
            for k in 0..=bars.len() {
                check_split(&bars, k, &state, &rows, k % 3 == 1);
            }
        }

        #[test]
        fn invalid_closes_are_skipped_without_effect(
            closes in series(),
            junk in prop::collection::vec((any::<prop::sample::Index>(), 0usize..6), 0..20),
        ) {
            let clean = dated(&closes);
            let (want_state, want_rows) = full(&clean);
            // Interleave refused bars; give them dates between and on valid ones.
            let mut mixed = clean.clone();
            for (at, kind) in junk {
                let pos = at.index(mixed.len() + 1);
                let anchor = mixed.get(pos).or(mixed.last()).map(|b| b.date).unwrap();
                let close = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, -3.5][kind];
                mixed.insert(pos, Bar { date: anchor, close, volume: 1 });
            }
            let mut state = IndicatorState::new();
            let mut rows = Vec::new();
            for bar in &mixed {
                let before = state_bits(&state);
                match step(&mut state, bar) {
                    Some(r) => rows.push(row_bits(&r)),
                    None => {
                        prop_assert!(!is_valid_close(bar.close));
                        prop_assert_eq!(&state_bits(&state), &before);
                    }
                }
                prop_assert!(state.is_consistent());
            }
            prop_assert_eq!(rows, want_rows.iter().map(row_bits).collect::<Vec<_>>());
            prop_assert_eq!(state_bits(&state), state_bits(&want_state));
        }
    }
}
