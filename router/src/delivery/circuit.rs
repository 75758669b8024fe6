//! An endpoint's circuit breaker: after enough consecutive failures, its shards go to their
//! next choice for a cooldown, then one probe decides whether they come back.
//!
//! Owns the breaker's state machine; what counts as a failure is `retry`'s call and which
//! endpoint comes next is `ring`'s.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe request is allowed through; its outcome closes or reopens the circuit.
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
pub struct Circuit {
    state: Mutex<CircuitState>,
    threshold: u32,
    cooldown: Duration,
}

impl Circuit {
    pub fn new(threshold: u32, cooldown: Duration) -> Circuit {
        Circuit {
            state: Mutex::new(CircuitState::Closed { failures: 0 }),
            threshold,
            cooldown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub fn state(&self) -> CircuitState {
        *self.lock()
    }

    /// Whether a request may go to the endpoint now. Claims the probe when half open.
    pub fn allows(&self) -> bool {
        let mut state = self.lock();
        match *state {
            CircuitState::Closed { .. } => true,
            CircuitState::Open { until } if Instant::now() >= until => {
                *state = CircuitState::HalfOpen { probing: true };
                true
            }
            CircuitState::Open { .. } => false,
            CircuitState::HalfOpen { probing } => {
                *state = CircuitState::HalfOpen { probing: true };
                !probing
            }
        }
    }

    /// Whether a request could go now, without claiming the probe (for status pages).
    pub fn would_allow(&self) -> bool {
        match *self.lock() {
            CircuitState::Closed { .. } => true,
            CircuitState::Open { until } => Instant::now() >= until,
            CircuitState::HalfOpen { probing } => !probing,
        }
    }

    /// When an open circuit will allow a probe.
    pub fn reopens_at(&self) -> Option<Instant> {
        match *self.lock() {
            CircuitState::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Records an attempt's outcome; returns true if this opened the circuit.
    pub fn record(&self, failed: bool) -> bool {
        let mut state = self.lock();
        let next = match (*state, failed) {
            (_, false) => CircuitState::Closed { failures: 0 },
            (CircuitState::Closed { failures }, true) if failures + 1 < self.threshold => {
                CircuitState::Closed {
                    failures: failures + 1,
                }
            }
            (CircuitState::Open { until }, true) => CircuitState::Open { until },
            (_, true) => CircuitState::Open {
                until: Instant::now() + self.cooldown,
            },
        };
        let opened = matches!(next, CircuitState::Open { .. })
            && !matches!(*state, CircuitState::Open { .. });
        *state = next;
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_once_and_closes() {
        let circuit = Circuit::new(3, Duration::from_secs(5));
        assert!(!circuit.record(true));
        assert!(!circuit.record(true));
        assert!(circuit.allows());
        assert!(circuit.record(true), "the third failure opens it");
        assert!(!circuit.allows());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(circuit.allows(), "the probe");
        assert!(!circuit.allows(), "only one probe at a time");
        circuit.record(false);
        assert_eq!(circuit.state(), CircuitState::Closed { failures: 0 });
        assert!(circuit.allows());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens() {
        let circuit = Circuit::new(1, Duration::from_secs(5));
        circuit.record(true);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(circuit.allows());
        assert!(circuit.record(true));
        assert!(!circuit.allows());
    }

    #[test]
    fn a_success_resets_the_count() {
        let circuit = Circuit::new(2, Duration::from_secs(5));
        circuit.record(true);
        circuit.record(false);
        assert!(!circuit.record(true));
        assert!(circuit.allows());
    }
}
