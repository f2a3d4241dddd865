//! One clock for every time the daemon stamps or compares with what it
//! stores: the MongoDB server's. Each time the server's time is read (each
//! heartbeat and lease operation, at least once per renew interval), the
//! reading is kept with the monotonic instant it was taken at;
//! [`Clock::now`] is that reading plus the monotonic time since. A replica
//! whose own clock is minutes off, or is stepped between readings, then
//! still writes `fetched_at` and `expires_at` that readers with a correct
//! clock can trust, and judges its leases by the server's time (a permit
//! needs the lease to outlast the call by this clock: see `permit`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Readings slower than this do not move the clock.
pub const MAX_ROUND_TRIP: Duration = Duration::from_secs(1);

/// The server's time, as seen from this process. Cheap to share.
#[derive(Debug, Default)]
pub struct Clock {
    /// The server's time at the last reading, and when (monotonic) that was.
    reading: Mutex<Option<(SystemTime, Instant)>>,
    /// Server minus local at the last reading, in milliseconds.
    offset_ms: AtomicI64,
}

impl Clock {
    /// The server's time now (the local time until the first reading).
    pub fn now(&self) -> SystemTime {
        let reading = *self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        match reading {
            Some((server, at)) => server + at.elapsed(),
            None => SystemTime::now(),
        }
    }

    /// Records that the server said `server` while the local clock read
    /// between `sent` and `received` (just now): the answer is taken as
    /// given halfway. A reading whose round trip took longer than
    /// [`MAX_ROUND_TRIP`] (it waited for a server) says too little and is
    /// ignored.
    pub fn observe(&self, server: SystemTime, sent: SystemTime, received: SystemTime) {
        let trip = received.duration_since(sent).unwrap_or_default();
        if trip > MAX_ROUND_TRIP {
            return;
        }
        let half_trip = trip / 2;
        let local = sent + half_trip;
        self.offset_ms
            .store(millis(server) - millis(local), Ordering::Relaxed);
        // The server's time as the answer arrived (now).
        *self.reading.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((server + half_trip, Instant::now()));
    }

    /// How far the local clock was from the server's at the last reading
    /// (server minus local).
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
            skew > Duration::from_secs(299) && skew <= Duration::from_millis(300_100),
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
