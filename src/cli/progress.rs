//! How a person sees a long command's progress: a bar with a rate and an ETA on a terminal
//! (indicatif), and a plain log line every `--progress-every` seconds otherwise (journald, CI,
//! a pipe), where a bar's carriage returns would only litter the output. The jobs report
//! through [`crate::core::progress::Progress`] and know nothing of either.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::core::progress::Progress;

/// Shows one command's progress on stderr (stdout carries the command's answer).
pub struct CliProgress {
    /// The command, naming each line: "reconcile", "dead-letters replay".
    job: &'static str,
    /// Off a terminal: a line at most this often (and one at the start and the end).
    every: Duration,
    terminal: bool,
    state: Mutex<State>,
}

struct State {
    what: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_line: Instant,
    bar: Option<ProgressBar>,
    active: bool,
}

impl std::fmt::Debug for CliProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliProgress")
            .field("job", &self.job)
            .field("terminal", &self.terminal)
            .finish()
    }
}

impl CliProgress {
    /// A bar when stderr is a terminal, lines every `every` otherwise.
    pub fn new(job: &'static str, every: Duration) -> Self {
        Self::with_terminal(job, every, std::io::stderr().is_terminal())
    }

    fn with_terminal(job: &'static str, every: Duration, terminal: bool) -> Self {
        let now = Instant::now();
        CliProgress {
            job,
            every,
            terminal,
            state: Mutex::new(State {
                what: String::new(),
                total: None,
                done: 0,
                started: now,
                last_line: now,
                bar: None,
                active: false,
            }),
        }
    }

    fn line(&self, state: &State, finished: bool) {
        let line = Line::of(state, Instant::now());
        let what = state.what.as_str();
        match (finished, line.total) {
            (true, _) => tracing::info!(
                job = self.job,
                done = line.done,
                what,
                seconds = line.elapsed.as_secs_f64(),
                rate_per_sec = line.rate,
                "{}: {} {what} done in {:.1} s ({:.1}/s)",
                self.job,
                line.done,
                line.elapsed.as_secs_f64(),
                line.rate
            ),
            (false, Some(total)) => tracing::info!(
                job = self.job,
                done = line.done,
                total,
                what,
                rate_per_sec = line.rate,
                eta_secs = line.eta.map(|e| e.as_secs()),
                "{}: {}/{total} {what} ({:.1}/s, ETA {})",
                self.job,
                line.done,
                line.rate,
                line.eta
                    .map_or_else(|| "unknown".to_owned(), |e| format!("{} s", e.as_secs()))
            ),
            (false, None) => tracing::info!(
                job = self.job,
                done = line.done,
                what,
                rate_per_sec = line.rate,
                "{}: {} {what} ({:.1}/s)",
                self.job,
                line.done,
                line.rate
            ),
        }
    }
}

/// One progress line's figures, pure.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    done: u64,
    total: Option<u64>,
    elapsed: Duration,
    /// Items per second so far.
    rate: f64,
    /// At the rate so far; None before anything is done or without a total.
    eta: Option<Duration>,
}

impl Line {
    fn of(state: &State, now: Instant) -> Line {
        let elapsed = now.saturating_duration_since(state.started);
        let rate = match elapsed.as_secs_f64() {
            s if s > 0.0 => state.done as f64 / s,
            _ => 0.0,
        };
        let eta = state
            .total
            .filter(|_| rate > 0.0)
            .map(|total| Duration::from_secs_f64(total.saturating_sub(state.done) as f64 / rate));
        Line {
            done: state.done,
            total: state.total,
            elapsed,
            rate,
            eta,
        }
    }
}

impl Progress for CliProgress {
    fn start(&self, what: &str, total: Option<u64>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if total == Some(0) {
            // Nothing to do: no bar, no line; finish() stays silent too.
            state.active = false;
            return;
        }
        let now = Instant::now();
        state.what = what.to_owned();
        state.total = total;
        state.done = 0;
        state.started = now;
        state.last_line = now;
        state.active = true;
        if self.terminal {
            let bar = match total {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = match total {
                Some(_) => "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {msg} ({per_sec:1}, ETA {eta})",
                None => "{prefix} [{elapsed_precise}] {spinner} {human_pos} {msg} ({per_sec:1})",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.set_prefix(self.job);
            bar.set_message(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(200));
            state.bar = Some(bar);
        } else {
            self.line(&state, false);
        }
    }

    fn advance(&self, n: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.done += n;
        if let Some(bar) = &state.bar {
            bar.inc(n);
            return;
        }
        let now = Instant::now();
        if state.active && now.saturating_duration_since(state.last_line) >= self.every {
            state.last_line = now;
            self.line(&state, false);
        }
    }

    fn finish(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if !state.active {
            return;
        }
        state.active = false;
        match state.bar.take() {
            Some(bar) => bar.finish(),
            None => self.line(&state, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(done: u64, total: Option<u64>, started: Instant) -> State {
        State {
            what: "rows".into(),
            total,
            done,
            started,
            last_line: started,
            bar: None,
            active: true,
        }
    }

    #[test]
    fn eta_follows_the_rate_so_far() {
        let t0 = Instant::now();
        let line = Line::of(&state(25, Some(100), t0), t0 + Duration::from_secs(5));
        assert_eq!(line.rate, 5.0);
        assert_eq!(line.eta, Some(Duration::from_secs(15)));
    }

    #[test]
    fn no_eta_before_anything_is_done_or_without_a_total() {
        let t0 = Instant::now();
        assert_eq!(Line::of(&state(0, Some(10), t0), t0).eta, None);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(Line::of(&state(3, None, t0), later).eta, None);
        assert_eq!(Line::of(&state(3, None, t0), later).rate, 3.0);
    }

    #[test]
    fn finish_without_start_and_twice_is_harmless() {
        let p = CliProgress::with_terminal("test", Duration::ZERO, false);
        p.finish();
        p.start("rows", Some(2));
        p.advance(2);
        p.finish();
        p.finish();
    }
}
