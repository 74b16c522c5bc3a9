//! Circuit breaker in front of the cache store.
//!
//! The cache sits on the read path: a Redis that is down or slow must cost each query at most
//! one `cache.timeout`, and after a few failures nothing at all. After `failures_to_open`
//! consecutive failures the breaker opens and every call is refused at once, without touching
//! the store, for `retry_after`; then one call is let through (half-open). Its success closes
//! the breaker, its failure opens it for another `retry_after`. So Redis coming back is noticed
//! by itself, within `retry_after`, without a background task.
//!
//! Time is passed in (`now`) so the state machine is tested without sleeping. The breaker logs
//! transitions (warn on open, info on close), never individual calls.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 5;

/// What the breaker lets through, as shown by `SHOW CACHE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go to the store.
    Closed,
    /// Calls are refused without touching the store.
    Open,
    /// `retry_after` has passed: the next call (or the one in flight) probes the store.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is in flight; everyone else is refused until it reports.
    Probing,
}

#[derive(Debug)]
pub struct Breaker {
    failures_to_open: u32,
    retry_after: Duration,
    state: Mutex<State>,
}

/// Permission for one call to use the store. Report the outcome with [`Permit::succeeded`] or
/// [`Permit::failed`]; a permit dropped without a report (the caller was cancelled) says
/// nothing about the store, but a dropped probe lets the next call probe at once, so the
/// breaker can never stay half-open forever.
#[must_use = "report the call's outcome on the permit"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    pub fn new(failures_to_open: u32, retry_after: Duration) -> Breaker {
        Breaker {
            failures_to_open: failures_to_open.max(1),
            retry_after,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A permit to call the store, or `None` when the store must be skipped.
    pub fn admit(&self, now: Instant) -> Option<Permit<'_>> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if now >= until => {
                *state = State::Probing;
                true
            }
            State::Open { .. } | State::Probing => return None,
        };
        Some(Permit {
            breaker: self,
            probe,
            reported: false,
        })
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::Probing => BreakerState::HalfOpen,
        }
    }

    fn record_success(&self, probe: bool) {
        let mut state = self.lock();
        match *state {
            State::Probing if probe => {
                *state = State::Closed { failures: 0 };
                drop(state);
                tracing::info!("cache store answering again; cache back in use");
            }
            State::Closed { .. } => *state = State::Closed { failures: 0 },
            // A call admitted before the breaker opened, finishing late: the probe decides.
            _ => {}
        }
    }

    fn record_failure(&self, probe: bool, now: Instant, error: &dyn fmt::Display) {
        let mut state = self.lock();
        match *state {
            State::Probing if probe => {
                *state = State::Open {
                    until: now + self.retry_after,
                };
                drop(state);
                tracing::debug!(error = %error, retry_after = ?self.retry_after, "cache store still failing");
            }
            State::Closed { failures } if failures + 1 >= self.failures_to_open => {
                *state = State::Open {
                    until: now + self.retry_after,
                };
                drop(state);
                tracing::warn!(
                    failures = failures + 1,
                    error = %error,
                    retry_after = ?self.retry_after,
                    "cache store failing; queries bypass the cache until it answers again"
                );
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                }
            }
            _ => {}
        }
    }
}

impl Permit<'_> {
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.record_success(self.probe);
    }

    pub fn failed(mut self, now: Instant, error: &dyn fmt::Display) {
        self.reported = true;
        self.breaker.record_failure(self.probe, now, error);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            let mut state = self.breaker.lock();
            if *state == State::Probing {
                *state = State::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_secs(5);

    fn fail(breaker: &Breaker, now: Instant) {
        breaker
            .admit(now)
            .expect("admitted")
            .failed(now, &"connection refused");
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let breaker = Breaker::new(FAILURES_TO_OPEN, RETRY);
        let t0 = Instant::now();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            fail(&breaker, t0);
        }
        // A success in between resets the count: failures must be consecutive.
        breaker.admit(t0).expect("closed").succeeded();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            fail(&breaker, t0);
        }
        assert_eq!(breaker.state(t0), BreakerState::Closed);
        fail(&breaker, t0);
        assert_eq!(breaker.state(t0), BreakerState::Open);
        assert!(breaker.admit(t0).is_none());
        assert!(breaker
            .admit(t0 + RETRY - Duration::from_millis(1))
            .is_none());
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let breaker = Breaker::new(1, RETRY);
        let t0 = Instant::now();
        fail(&breaker, t0);
        let later = t0 + RETRY;
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        let probe = breaker.admit(later).expect("probe admitted");
        assert!(
            breaker.admit(later).is_none(),
            "second caller waits for the probe"
        );
        probe.succeeded();
        assert_eq!(breaker.state(later), BreakerState::Closed);
        assert!(breaker.admit(later).is_some());
    }

    #[test]
    fn failed_probe_reopens_for_another_retry_after() {
        let breaker = Breaker::new(1, RETRY);
        let t0 = Instant::now();
        fail(&breaker, t0);
        let t1 = t0 + RETRY;
        fail(&breaker, t1);
        assert_eq!(breaker.state(t1), BreakerState::Open);
        assert!(breaker
            .admit(t1 + RETRY - Duration::from_millis(1))
            .is_none());
        assert!(breaker.admit(t1 + RETRY).is_some());
    }

    #[test]
    fn abandoned_probe_lets_the_next_call_probe() {
        let breaker = Breaker::new(1, RETRY);
        let t0 = Instant::now();
        fail(&breaker, t0);
        let probe = breaker.admit(t0 + RETRY).expect("probe");
        drop(probe);
        assert!(breaker.admit(Instant::now().max(t0 + RETRY)).is_some());
    }

    #[test]
    fn late_results_of_calls_admitted_while_closed_do_not_flip_an_open_breaker() {
        let breaker = Breaker::new(1, RETRY);
        let t0 = Instant::now();
        let slow = breaker.admit(t0).expect("closed");
        fail(&breaker, t0);
        slow.succeeded();
        assert_eq!(breaker.state(t0), BreakerState::Open);
    }
}
