//! Permits: the server's answer to "may this holder call WeChat now?". One
//! atomic update checks the lease (holder, term, enough time left) and, for
//! the one WeChat API called, the day's call ceiling, WeChat's 45009 and the
//! forced-refresh limits, and counts the call; a refusal is then explained
//! from the lease document.

use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::ReturnDocument;
use mongodb::Collection;

use super::field;
use super::quota::{self, path, quota_day, ApiQuota};
use crate::store::StoreError;
use crate::wechat::Api;

/// The answer to "may I call WeChat now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    Granted {
        calls_today: i64,
        /// How long the lease still ran when the permit was granted (by the
        /// server's clock, measured from before the request: never more
        /// than the truth). The caller turns it into a local deadline.
        lease_left: Duration,
    },
    /// Another replica holds the lease, or ours is too close to its end.
    NotHolder,
    /// The API's daily ceiling is reached, or WeChat said 45009 today.
    QuotaSpent { calls_today: i64 },
    /// A forced refresh came too soon after the previous one.
    TooSoon { retry_in: Duration },
    /// Today's forced refreshes are spent (`forced_daily_limit`).
    ForcedSpent,
}

/// What a permit asks for.
#[derive(Debug, Clone, Copy)]
pub struct PermitRules {
    /// The API to be called: its counters are the ones checked and counted.
    pub api: Api,
    /// The lease must have at least this much left on the server's clock.
    pub min_remaining: Duration,
    /// The API's daily ceiling (`refresh.daily_call_limits`).
    pub daily_limit: i64,
    /// For forced refreshes: the minimum time since the previous forced one.
    pub forced_min_interval: Option<Duration>,
    /// For forced refreshes: how many are allowed per quota day.
    pub forced_daily_limit: Option<i64>,
    /// The server's time is read afresh before the permit if the daemon's
    /// last reading is older than this.
    pub clock_max_age: Duration,
}

/// Asks for a permit on the lease matched by `held`, at server time `now`
/// (the daemon's clock: the server's last reading plus the monotonic time
/// since). One round
/// trip when the permit is granted; a refusal is explained from the lease
/// document, and the first call of a quota day starts the day first.
pub(super) async fn ask(
    leases: &Collection<Document>,
    held: Document,
    now: SystemTime,
    rules: PermitRules,
) -> Result<Permit, StoreError> {
    let today = quota_day(now);
    let mut day_started = false;
    loop {
        let (filter, update) = grant(held.clone(), now, &today, rules);
        let granted = leases
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await?;
        if let Some(lease) = granted {
            let expires_at = lease
                .get_datetime(field::EXPIRES_AT)
                .map_or(now, |at| at.to_system_time());
            return Ok(Permit::Granted {
                calls_today: ApiQuota::of(&lease, rules.api).calls,
                lease_left: expires_at.duration_since(now).unwrap_or_default(),
            });
        }
        let Some(lease) = leases.find_one(held.clone()).await? else {
            return Ok(Permit::NotHolder);
        };
        let quota = ApiQuota::of(&lease, rules.api);
        if !day_started && quota.day.as_deref() != Some(today.as_str()) {
            start_quota_day(leases, held.clone(), rules.api, &today).await?;
            day_started = true;
            continue;
        }
        return Ok(refusal(&lease, now, rules));
    }
}

/// The previous version's per-account quota fields, removed when a quota
/// day starts (README, migration notes).
const LEGACY_FIELDS: [&str; 5] = [
    "quota_day",
    "quota_calls",
    "quota_exhausted",
    "quota_forced_calls",
    "last_forced_at",
];

/// Resets the API's day counters when the quota day has changed (the
/// time of the last forced refresh stays: its spacing spans midnight).
async fn start_quota_day(
    leases: &Collection<Document>,
    mut held: Document,
    api: Api,
    today: &str,
) -> Result<(), StoreError> {
    // Only forwards: a clock a moment behind (or one replica's a moment
    // ahead, at a handover) must not take the counters back a day.
    held.insert(
        path(api, quota::field::DAY),
        doc! { "$not": { "$gte": today } },
    );
    leases
        .update_one(
            held,
            doc! {
                "$set": {
                    path(api, quota::field::DAY): today,
                    path(api, quota::field::CALLS): 0_i64,
                    path(api, quota::field::FORCED_CALLS): 0_i64,
                    path(api, quota::field::EXHAUSTED): false,
                },
                "$unset": LEGACY_FIELDS.iter().map(|f| (f.to_string(), "".into())).collect::<Document>(),
            },
        )
        .await?;
    Ok(())
}

/// The filter that matches only a lease allowed to call, and the update
/// that counts the call.
fn grant(
    mut filter: Document,
    now: SystemTime,
    today: &str,
    rules: PermitRules,
) -> (Document, Document) {
    // Enough left by the server's clock (`now`: the last reading of it
    // plus the monotonic time since, so a local clock stepped meanwhile
    // changes nothing). No `$expr` on `$$NOW`: `min_remaining` (a whole
    // call) is far more than the error of that clock, and the test server
    // scans the collection for an `$expr` (10 ms a permit instead of 1.5).
    filter.insert(
        field::EXPIRES_AT,
        doc! { "$gt": DateTime::from_system_time(now + rules.min_remaining) },
    );
    let calls = path(rules.api, quota::field::CALLS);
    let forced_calls = path(rules.api, quota::field::FORCED_CALLS);
    let last_forced_at = path(rules.api, quota::field::LAST_FORCED_AT);
    // The counters count today (a new day is started first, see `ask`).
    filter.insert(path(rules.api, quota::field::DAY), today);
    filter.insert(
        path(rules.api, quota::field::EXHAUSTED),
        doc! { "$ne": true },
    );
    filter.insert(calls.as_str(), doc! { "$lt": rules.daily_limit });
    let mut update = doc! { "$inc": { calls.as_str(): 1_i64 } };
    if let Some(interval) = rules.forced_min_interval {
        filter.insert(
            "$or",
            vec![
                doc! { last_forced_at.as_str(): { "$exists": false } },
                doc! { last_forced_at.as_str(): { "$lte": DateTime::from_system_time(now - interval) } },
            ],
        );
        update.insert(
            "$set",
            doc! { last_forced_at.as_str(): DateTime::from_system_time(now) },
        );
    }
    if let Some(limit) = rules.forced_daily_limit {
        // `$not $gte` also matches a lease written before the counter existed.
        filter.insert(forced_calls.as_str(), doc! { "$not": { "$gte": limit } });
        update.insert(
            "$inc",
            doc! { calls.as_str(): 1_i64, forced_calls.as_str(): 1_i64 },
        );
    }
    (filter, update)
}

/// Why a lease we hold got no permit.
fn refusal(lease: &Document, now: SystemTime, rules: PermitRules) -> Permit {
    let quota = ApiQuota::of(lease, rules.api);
    if quota.exhausted || quota.calls >= rules.daily_limit {
        return Permit::QuotaSpent {
            calls_today: quota.calls,
        };
    }
    if rules
        .forced_daily_limit
        .is_some_and(|limit| quota.forced_calls >= limit)
    {
        return Permit::ForcedSpent;
    }
    if let (Some(interval), Some(last)) = (rules.forced_min_interval, quota.last_forced_at) {
        let next = last + interval;
        if next > now {
            return Permit::TooSoon {
                retry_in: next.duration_since(now).unwrap_or_default(),
            };
        }
    }
    Permit::NotHolder
}
