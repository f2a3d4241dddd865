//! WeChat's quotas as a lease document keeps them: one sub-document per
//! WeChat API under `quota.<api>` (WeChat counts each API apart), with the
//! Beijing-time day it counts, calls made, forced refreshes, and whether
//! WeChat answered 45009 that day. WeChat's quota day ends at midnight
//! Beijing time (UTC+8, no daylight saving).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongodb::bson::Document;
use serde::Serialize;
use wxtokend_reader::document::integer;

use crate::wechat::Api;

/// Beijing time's offset from UTC.
pub const QUOTA_DAY_UTC_OFFSET: Duration = Duration::from_secs(8 * 3600);

/// The lease document's field holding one sub-document per API.
pub const QUOTA: &str = "quota";

/// Field names inside `quota.<api>`.
pub mod field {
    /// Beijing-time day (`YYYY-MM-DD`) the counters below count.
    pub const DAY: &str = "day";
    pub const CALLS: &str = "calls";
    /// Set when WeChat answered 45009 on `day`.
    pub const EXHAUSTED: &str = "exhausted";
    /// `force_refresh` calls on `day` (stable_token).
    pub const FORCED_CALLS: &str = "forced_calls";
    /// When the last forced refresh was allowed (across days).
    pub const LAST_FORCED_AT: &str = "last_forced_at";
}

/// The dotted path of `name` in `api`'s quota sub-document.
pub fn path(api: Api, name: &str) -> String {
    format!("{QUOTA}.{}.{name}", api.as_str())
}

/// An API's counters at the start of quota day `day`.
pub fn started(day: &str) -> Document {
    let mut counters = Document::new();
    counters.insert(field::DAY, day);
    counters.insert(field::CALLS, 0_i64);
    counters.insert(field::FORCED_CALLS, 0_i64);
    counters.insert(field::EXHAUSTED, false);
    counters
}

/// One API's counters for one account, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApiQuota {
    /// The quota day the counters count; `None` before the first call.
    pub day: Option<String>,
    pub calls: i64,
    pub forced_calls: i64,
    /// WeChat answered 45009 on `day`.
    pub exhausted: bool,
    /// When the last forced refresh was allowed (its spacing spans days).
    #[serde(skip)]
    pub last_forced_at: Option<SystemTime>,
}

impl ApiQuota {
    /// `api`'s counters in a lease document.
    pub fn of(lease: &Document, api: Api) -> Self {
        let Ok(quota) = lease
            .get_document(QUOTA)
            .and_then(|q| q.get_document(api.as_str()))
        else {
            return Self::default();
        };
        Self {
            day: quota.get_str(field::DAY).ok().map(str::to_owned),
            calls: integer(quota, field::CALLS).unwrap_or_default(),
            forced_calls: integer(quota, field::FORCED_CALLS).unwrap_or_default(),
            exhausted: quota.get_bool(field::EXHAUSTED).unwrap_or(false),
            last_forced_at: quota
                .get_datetime(field::LAST_FORCED_AT)
                .ok()
                .map(|at| at.to_system_time()),
        }
    }

    /// The counters as they stand on `today`: all zero if they count
    /// another day (WeChat has reset them since).
    pub fn on(&self, today: &str) -> Self {
        if self.day.as_deref() == Some(today) {
            self.clone()
        } else {
            Self {
                day: Some(today.to_owned()),
                last_forced_at: self.last_forced_at,
                ..Self::default()
            }
        }
    }
}

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
    fn counters_of_another_day_count_as_zero() {
        let lease = mongodb::bson::doc! { "quota": {
            "token": { "day": "2026-11-24", "calls": 7_i64, "exhausted": true },
            "jsapi_ticket": { "day": "2026-11-25", "calls": 2_i32 },
        } };
        let token = ApiQuota::of(&lease, Api::Token);
        assert_eq!((token.calls, token.exhausted), (7, true));
        assert_eq!(token.on("2026-11-25").calls, 0);
        assert!(!token.on("2026-11-25").exhausted);
        assert_eq!(
            ApiQuota::of(&lease, Api::JsapiTicket)
                .on("2026-11-25")
                .calls,
            2
        );
        assert_eq!(ApiQuota::of(&lease, Api::WxCardTicket), ApiQuota::default());
        assert_eq!(
            path(Api::WxCardTicket, field::CALLS),
            "quota.wx_card_ticket.calls"
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
