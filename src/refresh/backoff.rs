//! Retry timing: jittered exponential backoff, and the refresh margin rule.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter: the n-th delay is drawn between half and
/// all of `min(initial * 2^n, max)`, so retries of many accounts spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        let cap = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        half + rand::rng().random_range(Duration::ZERO..=cap - half)
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The refresh margin actually used for a token: the configured margin,
/// capped at half the token's lifetime so a short-lived token cannot make
/// the daemon refresh in a loop.
pub fn effective_margin(margin: Duration, lifetime: Duration) -> Duration {
    margin.min(lifetime / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        let caps = [1, 2, 4, 8, 8, 8];
        for (d, cap) in delays.iter().zip(caps) {
            let cap = Duration::from_secs(cap);
            assert!(
                *d >= cap / 2 && *d <= cap,
                "{d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn margin_is_capped_at_half_the_lifetime() {
        let ten_min = Duration::from_secs(600);
        assert_eq!(
            effective_margin(ten_min, Duration::from_secs(7200)),
            ten_min
        );
        assert_eq!(
            effective_margin(ten_min, Duration::from_secs(60)),
            Duration::from_secs(30)
        );
    }
}
