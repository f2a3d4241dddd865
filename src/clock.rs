//! One clock for every time the daemon stamps or compares with what it
//! stores: the MongoDB server's. Each time the server's time is read (each
//! heartbeat and lease operation, at least once per renew interval), the
//! reading is kept with the local instants it was taken at; [`Clock::now`]
//! is that reading plus the time since (see `Reading::elapsed`: a wall
//! clock stepped back, or a suspended host, cannot make it lag). A replica
//! whose own clock is minutes off then still writes `fetched_at` and
//! `expires_at` that readers with a correct clock can trust, and judges its
//! leases by the server's time (a permit needs the lease to outlast the
//! call by this clock, read afresh if the last reading is old: see
//! `Lease::permit`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Readings slower than this do not move the clock.
pub const MAX_ROUND_TRIP: Duration = Duration::from_secs(1);

/// The server's time, as seen from this process. Cheap to share.
#[derive(Debug, Default)]
pub struct Clock {
    reading: Mutex<Option<Reading>>,
    /// Server minus local at the last reading, in milliseconds.
    offset_ms: AtomicI64,
}

/// The server's time at a reading, and when that was by both local clocks.
#[derive(Debug, Clone, Copy)]
struct Reading {
    server: SystemTime,
    monotonic: Instant,
    wall: SystemTime,
}

impl Reading {
    /// Time since the reading: the longer of the monotonic clock's (which
    /// a stepped wall clock cannot move) and the wall clock's (which goes
    /// on while the host is suspended, when the monotonic one stops). Never
    /// less than the truth, short of a wall clock stepped forward: a lease
    /// then looks older than it is, the safe side.
    fn elapsed(&self) -> Duration {
        let wall = SystemTime::now()
            .duration_since(self.wall)
            .unwrap_or_default();
        self.monotonic.elapsed().max(wall)
    }
}

impl Clock {
    /// The server's time now (the local time until the first reading).
    pub fn now(&self) -> SystemTime {
        match self.last() {
            Some(reading) => reading.server + reading.elapsed(),
            None => SystemTime::now(),
        }
    }

    /// How long ago the server's time was last read (`None`: never).
    pub fn age(&self) -> Option<Duration> {
        self.last().map(|reading| reading.elapsed())
    }

    fn last(&self) -> Option<Reading> {
        *self.reading.lock().unwrap_or_else(PoisonError::into_inner)
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
        *self.reading.lock().unwrap_or_else(PoisonError::into_inner) = Some(Reading {
            server: server + half_trip,
            monotonic: Instant::now(),
            wall: received,
        });
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

    #[test]
    fn a_suspended_host_or_a_stepped_wall_clock_never_makes_it_lag() {
        let now = SystemTime::now();
        // Suspended for ten minutes: the monotonic clock stood still, the
        // wall clock went on.
        let suspended = Reading {
            server: now,
            monotonic: Instant::now(),
            wall: now - Duration::from_secs(600),
        };
        assert!(suspended.elapsed() >= Duration::from_secs(600));
        // The wall clock stepped back an hour: the monotonic time counts.
        let stepped = Reading {
            server: now,
            monotonic: Instant::now(),
            wall: now + Duration::from_secs(3600),
        };
        assert!(stepped.elapsed() < Duration::from_secs(1));
    }
}
