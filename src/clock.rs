//! One clock for every time the daemon stamps or compares with what it
//! stores: the MongoDB server's. Each time the server's time is read (every
//! permit and lease operation), the offset of the local clock from it is
//! remeasured; [`Clock::now`] is the local clock corrected by that offset.
//! A replica whose own clock is minutes off then still writes `fetched_at`
//! and `expires_at` that readers with a correct clock can trust.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Readings slower than this do not move the offset.
pub const MAX_ROUND_TRIP: Duration = Duration::from_secs(1);

/// The server's time, as seen from this process. Cheap to share.
#[derive(Debug, Default)]
pub struct Clock {
    /// Server minus local, in milliseconds (0 until first measured).
    offset_ms: AtomicI64,
}

impl Clock {
    /// The server's time now (the local time until the first measurement).
    pub fn now(&self) -> SystemTime {
        shift(SystemTime::now(), self.offset_ms.load(Ordering::Relaxed))
    }

    /// Records that the server said `server` while the local clock read
    /// between `sent` and `received`: the answer is taken as given halfway.
    /// A reading whose round trip took longer than [`MAX_ROUND_TRIP`] (it
    /// waited for a server) says too little and is ignored.
    pub fn observe(&self, server: SystemTime, sent: SystemTime, received: SystemTime) {
        let trip = received.duration_since(sent).unwrap_or_default();
        if trip > MAX_ROUND_TRIP {
            return;
        }
        let half_trip = trip / 2;
        let local = sent + half_trip;
        self.offset_ms
            .store(millis(server) - millis(local), Ordering::Relaxed);
    }

    /// How far the local clock is from the server's (server minus local).
    pub fn offset(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

fn millis(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn shift(at: SystemTime, ms: i64) -> SystemTime {
    let by = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        at + by
    } else {
        at - by
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_follows_the_servers_clock() {
        let clock = Clock::default();
        let local = SystemTime::now();
        // The server is five minutes ahead; the round trip took 40 ms.
        let server = local + Duration::from_secs(300);
        clock.observe(
            server + Duration::from_millis(20),
            local,
            local + Duration::from_millis(40),
        );
        assert_eq!(clock.offset(), 300_000);
        let skew = clock
            .now()
            .duration_since(SystemTime::now())
            .expect("ahead");
        assert!(
            skew > Duration::from_secs(299) && skew <= Duration::from_secs(300),
            "{skew:?}"
        );
        // Behind works the same way.
        clock.observe(local - Duration::from_secs(60), local, local);
        assert_eq!(clock.offset(), -60_000);
        // A reading that waited seconds for a server is ignored.
        clock.observe(local, local, local + Duration::from_secs(3));
        assert_eq!(clock.offset(), -60_000);
    }
}
