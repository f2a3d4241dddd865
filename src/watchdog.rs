//! systemd's watchdog (`WatchdogSec=` in the unit, `WATCHDOG_USEC` in our
//! environment): `WATCHDOG=1` is sent only while the coordinator loop makes
//! progress, so that systemd restarts a replica whose loop hangs.
//!
//! Progress is what the loop does, not whether MongoDB answers: starting a
//! turn and finishing a MongoDB operation count, failed ones too. A MongoDB
//! outage must not get the daemon killed (a fetched token not yet stored
//! lives only in its memory until MongoDB is back); a loop stuck for half
//! the watchdog interval without finishing anything is not progress. Every
//! MongoDB operation of the loop is cut off (one that hangs fails like any
//! other: `Settings::mongodb_operation_timeout`), so only a bug stalls it
//! for long.
//! The same measure answers `/healthz`, for supervisors without systemd.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// Room for a loaded machine on top of the longest legitimate stretch.
const SLACK: Duration = Duration::from_secs(5);

/// When the coordinator loop last made progress.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    /// Milliseconds from `origin` to the start of the current stretch of
    /// work, plus one; 0 while the loop waits for its next tick.
    busy_since: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            busy_since: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    /// The loop started a turn or finished a MongoDB operation (whether it
    /// succeeded or not).
    pub fn progress(&self) {
        let millis = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.busy_since.store(millis + 1, Ordering::Relaxed);
    }

    /// The loop waits for its next tick: nothing can be stuck.
    pub fn idle(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
    }

    /// How long the loop has worked without progress (zero while idle).
    pub fn stuck_for(&self) -> Duration {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => {
                let since = self.origin + Duration::from_millis(since - 1);
                since.elapsed()
            }
        }
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this
/// process), if any.
pub fn interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero())
}

/// The longest the coordinator loop legitimately works without progress:
/// one MongoDB operation, which it cuts off after
/// [`Settings::mongodb_operation_timeout`] (taking leases one by one notes
/// progress after each), plus room for a loaded machine. `/healthz`
/// answers 503 past it.
pub fn longest_stretch(settings: &Settings) -> Duration {
    settings.mongodb_operation_timeout() + SLACK
}

/// The shortest `WatchdogSec=` these settings tolerate: pings stop after
/// half the interval without progress.
pub fn minimum(settings: &Settings) -> Duration {
    longest_stretch(settings) * 2
}

/// Sends `WATCHDOG=1` every quarter of `interval` while the loop has made
/// progress within half of it, until shutdown.
pub async fn run(liveness: Arc<Liveness>, interval: Duration, shutdown: CancellationToken) {
    let allowed = interval / 2;
    let mut tick = tokio::time::interval(interval / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stuck = liveness.stuck_for();
        if stuck < allowed {
            if silent {
                tracing::info!("the coordinator makes progress again; watchdog pings resume");
                silent = false;
            }
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        } else if !silent {
            silent = true;
            tracing::error!(
                stuck_s = stuck.as_secs(),
                watchdog_s = interval.as_secs(),
                "the coordinator has made no progress for half the watchdog interval; \
                 no more WATCHDOG=1, so systemd restarts this replica"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_never_stuck_and_work_is_stuck_since_its_last_progress() {
        let liveness = Liveness::default();
        assert_eq!(liveness.stuck_for(), Duration::ZERO);
        liveness.progress();
        std::thread::sleep(Duration::from_millis(20));
        assert!(liveness.stuck_for() >= Duration::from_millis(20));
        liveness.idle();
        assert_eq!(liveness.stuck_for(), Duration::ZERO);
    }
}
