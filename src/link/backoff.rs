//! Reconnect delays for a link: immediate retry after a working connection, then exponential
//! backoff with jitter.
//!
//! The first retry is immediate because most drops on a bench are one-off (an instrument rebooted,
//! a switch port flapped) and the operator wants readings back at once. After that, delays double
//! up to a cap so a dead instrument costs little. Each delay is spread by +-10 % so that fifty links
//! losing the same switch do not reconnect in lockstep and hit a serial server all at once.

use std::time::Duration;

/// Relative spread applied to every non-zero delay.
const JITTER: f64 = 0.10;

/// Reconnect delay generator; one per link.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// `initial` is the delay before the second attempt; delays never exceed `max` by more than
    /// the jitter. An `initial` above `max` is treated as `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// Like [`Backoff::new`] with a fixed jitter seed, for reproducible tests.
    pub fn with_seed(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            rng: fastrand::Rng::with_seed(seed),
            ..Backoff::new(initial, max)
        }
    }

    /// The delay to wait before the next connection attempt; counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        if attempt == 0 {
            return Duration::ZERO;
        }
        // Shift at most 31 places: beyond that the cap has long been reached anyway.
        let factor = 1u32 << (attempt - 1).min(31);
        let base = self.initial.saturating_mul(factor).min(self.max);
        // Jitter after the cap: clamping afterwards would put every capped link back in lockstep.
        let spread = 1.0 + JITTER * (2.0 * self.rng.f64() - 1.0);
        base.mul_f64(spread)
    }

    /// Call once a connection has worked, so the next drop retries at once.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays have been handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within_jitter(got: Duration, nominal: Duration) -> bool {
        let g = got.as_secs_f64();
        let n = nominal.as_secs_f64();
        g >= n * (1.0 - JITTER) - 1e-9 && g <= n * (1.0 + JITTER) + 1e-9
    }

    #[test]
    fn first_delay_is_immediate_then_doubles_to_cap() {
        let mut b = Backoff::with_seed(Duration::from_millis(100), Duration::from_secs(1), 7);
        assert_eq!(b.next_delay(), Duration::ZERO);
        let nominal = [100, 200, 400, 800, 1000, 1000, 1000];
        for ms in nominal {
            let d = b.next_delay();
            assert!(
                within_jitter(d, Duration::from_millis(ms)),
                "{d:?} vs {ms} ms"
            );
        }
        assert_eq!(b.attempt(), 8);
    }

    #[test]
    fn reset_makes_next_retry_immediate() {
        let mut b = Backoff::with_seed(Duration::from_millis(100), Duration::from_secs(5), 1);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(), Duration::ZERO);
        assert!(within_jitter(b.next_delay(), Duration::from_millis(100)));
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(30), 3);
        let mut last = Duration::ZERO;
        for _ in 0..10_000 {
            last = b.next_delay();
        }
        assert!(within_jitter(last, Duration::from_secs(30)), "{last:?}");
    }

    #[test]
    fn initial_above_max_is_capped() {
        let mut b = Backoff::with_seed(Duration::from_secs(60), Duration::from_secs(10), 3);
        b.next_delay();
        assert!(within_jitter(b.next_delay(), Duration::from_secs(10)));
    }

    #[test]
    fn jitter_spreads_links_apart() {
        // Fifty links dropping together must not all pick the same delay.
        let delays: std::collections::BTreeSet<Duration> = (0..50)
            .map(|seed| {
                let mut b =
                    Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(30), seed);
                b.next_delay();
                b.next_delay()
            })
            .collect();
        assert!(delays.len() > 40, "only {} distinct delays", delays.len());
        assert!(
            delays
                .iter()
                .all(|d| within_jitter(*d, Duration::from_secs(1)))
        );
    }
}
