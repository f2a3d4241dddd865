//! WeChat's quota day: daily quotas reset at midnight Beijing time (UTC+8,
//! no daylight saving).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Beijing time's offset from UTC.
pub const QUOTA_DAY_UTC_OFFSET: Duration = Duration::from_secs(8 * 3600);

/// The quota day at `at`, as `YYYY-MM-DD` in Beijing time (a server clock
/// before 1970 counts as 1970-01-01 rather than panicking).
pub fn quota_day(at: SystemTime) -> String {
    let at = at.max(UNIX_EPOCH) + QUOTA_DAY_UTC_OFFSET;
    let text = humantime::format_rfc3339_seconds(at).to_string();
    text[..10].to_string()
}

/// When the quota day after the one holding `now` begins.
pub fn next_quota_reset(now: SystemTime) -> SystemTime {
    const DAY: u64 = 86_400;
    let offset = QUOTA_DAY_UTC_OFFSET.as_secs();
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let local_day = (secs + offset) / DAY;
    UNIX_EPOCH + Duration::from_secs((local_day + 1) * DAY - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-24 15:59:59 UTC is 23:59:59 in Beijing.
    const LAST_SECOND: u64 = 1_795_535_999;

    #[test]
    fn quota_day_is_the_beijing_date() {
        let before = UNIX_EPOCH + Duration::from_secs(LAST_SECOND);
        assert_eq!(quota_day(before), "2026-11-24");
        assert_eq!(quota_day(before + Duration::from_secs(1)), "2026-11-25");
    }

    #[test]
    fn a_clock_before_1970_does_not_panic() {
        assert_eq!(
            quota_day(UNIX_EPOCH - Duration::from_secs(86_400)),
            "1970-01-01"
        );
    }

    #[test]
    fn quota_resets_at_beijing_midnight() {
        let before = UNIX_EPOCH + Duration::from_secs(LAST_SECOND);
        let reset = next_quota_reset(before);
        assert_eq!(reset, before + Duration::from_secs(1));
        assert_eq!(quota_day(reset), "2026-11-25");
        // At the reset itself the next one is a day away.
        assert_eq!(next_quota_reset(reset), reset + Duration::from_secs(86_400));
    }
}
