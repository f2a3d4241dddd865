//! The permit rules, against MongoDB directly: who may call WeChat, and how
//! often. The lease API is reached through `support::store` only.

use std::time::Duration;

use crate::support::mongo::TestDb;
use wxtokend_reader::Generation;

use crate::support::store::{
    insert, insert_knowing, permit, Api, Inserted, Leases, Permit, PermitRules,
};

/// The day's count of a granted permit; `None` for a refusal.
fn calls_today(permit: Permit) -> Option<i64> {
    match permit {
        Permit::Granted { calls_today, .. } => Some(calls_today),
        _ => None,
    }
}

const NORMAL: PermitRules = PermitRules {
    api: Api::Token,
    min_remaining: Duration::from_secs(1),
    daily_limit: 100,
    forced_min_interval: None,
    forced_daily_limit: None,
    clock_max_age: Duration::from_secs(15),
};

#[tokio::test]
async fn only_the_current_holder_gets_a_permit() {
    let leases = Leases::new(&TestDb::new().await).await;
    let id = "wxpermit1";
    let a = leases.acquire(id, "a").await.expect("free");
    assert!(
        leases.acquire(id, "b").await.is_none(),
        "b took a held lease"
    );
    match permit(&a, NORMAL).await {
        // The lease was taken for 30 s a moment ago.
        Permit::Granted {
            calls_today,
            lease_left,
        } => {
            assert_eq!(calls_today, 1);
            assert!(lease_left <= Duration::from_secs(30), "{lease_left:?}");
            assert!(lease_left > Duration::from_secs(20), "{lease_left:?}");
        }
        other => panic!("expected a permit, got {other:?}"),
    }
    // A lease with less than min_remaining left gives no permit.
    let short = PermitRules {
        min_remaining: Duration::from_secs(60),
        ..NORMAL
    };
    assert_eq!(permit(&a, short).await, Permit::NotHolder);
    // Once the lease moved on, what the former holder kept gives nothing.
    let stale = a.clone();
    a.release().await.expect("release");
    let b = leases.acquire(id, "b").await.expect("released");
    assert!(b.term() > stale.term());
    assert_eq!(permit(&stale, NORMAL).await, Permit::NotHolder);
    assert_eq!(calls_today(permit(&b, NORMAL).await), Some(2));
}

#[tokio::test]
async fn daily_and_forced_limits_are_counted() {
    let leases = Leases::new(&TestDb::new().await).await;
    let id = "wxpermit2";
    let lease = leases.acquire(id, "a").await.expect("free");
    let forced = PermitRules {
        forced_min_interval: Some(Duration::ZERO),
        forced_daily_limit: Some(2),
        ..NORMAL
    };
    for n in 1..=2 {
        assert_eq!(calls_today(permit(&lease, forced).await), Some(n));
    }
    assert_eq!(permit(&lease, forced).await, Permit::ForcedSpent);
    // Ordinary refreshes are still allowed, up to the daily ceiling.
    let ceiling = PermitRules {
        daily_limit: 4,
        ..NORMAL
    };
    assert_eq!(calls_today(permit(&lease, ceiling).await), Some(3));
    assert_eq!(calls_today(permit(&lease, ceiling).await), Some(4));
    assert_eq!(
        permit(&lease, ceiling).await,
        Permit::QuotaSpent { calls_today: 4 }
    );
    // Forced refreshes wait for forced_min_interval.
    let id2 = "wxpermit3";
    let lease2 = leases.acquire(id2, "a").await.expect("free");
    let spaced = PermitRules {
        forced_min_interval: Some(Duration::from_secs(60)),
        ..NORMAL
    };
    assert_eq!(calls_today(permit(&lease2, spaced).await), Some(1));
    match permit(&lease2, spaced).await {
        Permit::TooSoon { retry_in } => assert!(retry_in > Duration::from_secs(50)),
        other => panic!("expected TooSoon, got {other:?}"),
    }
}

/// WeChat counts quotas per API, and so do permits: one API's ceiling,
/// 45009 stop and forced refreshes leave every other API of the account
/// alone.
#[tokio::test]
async fn each_api_has_its_own_ceiling_stop_and_forced_count() {
    let leases = Leases::new(&TestDb::new().await).await;
    let lease = leases.acquire("wxpermit5", "a").await.expect("free");
    let token = PermitRules {
        daily_limit: 2,
        ..NORMAL
    };
    let ticket = PermitRules {
        api: Api::JsapiTicket,
        daily_limit: 2,
        ..NORMAL
    };
    assert_eq!(calls_today(permit(&lease, ticket).await), Some(1));
    assert_eq!(calls_today(permit(&lease, ticket).await), Some(2));
    assert_eq!(
        permit(&lease, ticket).await,
        Permit::QuotaSpent { calls_today: 2 }
    );
    // The ticket calls did not count against the token's ceiling.
    assert_eq!(calls_today(permit(&lease, token).await), Some(1));

    // WeChat's 45009 from getticket stops getticket only.
    let cards = PermitRules {
        api: Api::WxCardTicket,
        ..NORMAL
    };
    assert_eq!(calls_today(permit(&lease, cards).await), Some(1));
    lease
        .mark_quota_exhausted(Api::WxCardTicket)
        .await
        .expect("mark");
    assert_eq!(
        permit(&lease, cards).await,
        Permit::QuotaSpent { calls_today: 1 }
    );
    assert_eq!(calls_today(permit(&lease, token).await), Some(2));

    // Forced refreshes are counted and spaced per API too.
    let forced = |api| PermitRules {
        api,
        forced_min_interval: Some(Duration::from_secs(60)),
        forced_daily_limit: Some(1),
        ..NORMAL
    };
    assert_eq!(
        calls_today(permit(&lease, forced(Api::StableToken)).await),
        Some(1)
    );
    assert!(matches!(
        permit(&lease, forced(Api::StableToken)).await,
        Permit::ForcedSpent
    ));
    assert_eq!(
        calls_today(permit(&lease, forced(Api::WecomToken)).await),
        Some(1)
    );
}

/// A stop ends with WeChat's quota day, or when `wxtokend quota --clear`
/// lifts it; the forced-refresh count is not WeChat's to clear.
#[tokio::test]
async fn a_stop_ends_with_the_quota_day_or_a_clear() {
    let db = TestDb::new().await;
    let leases = Leases::new(&db).await;
    let id = "wxpermit6";
    let lease = leases.acquire(id, "a").await.expect("free");
    let collection = db.db().collection::<mongodb::bson::Document>("leases");
    // The previous version's per-account fields are removed when a day
    // of the new per-API counters starts.
    collection
        .update_one(
            mongodb::bson::doc! { "_id": id },
            mongodb::bson::doc! { "$set": { "quota_day": "2026-11-26", "quota_calls": 9_i64, "quota_exhausted": true } },
        )
        .await
        .expect("an old-shaped lease");
    let ticket = PermitRules {
        api: Api::JsapiTicket,
        ..NORMAL
    };
    assert_eq!(calls_today(permit(&lease, ticket).await), Some(1));
    let stored = collection
        .find_one(mongodb::bson::doc! { "_id": id })
        .await
        .expect("read")
        .expect("the lease");
    for old in ["quota_day", "quota_calls", "quota_exhausted"] {
        assert!(!stored.contains_key(old), "{old} left: {stored}");
    }
    lease
        .mark_quota_exhausted(Api::JsapiTicket)
        .await
        .expect("mark");
    assert!(matches!(
        permit(&lease, ticket).await,
        Permit::QuotaSpent { .. }
    ));
    // Yesterday's stop: a new day starts from zero.
    collection
        .update_one(
            mongodb::bson::doc! { "_id": id },
            mongodb::bson::doc! { "$set": { "quota.jsapi_ticket.day": "2000-01-01" } },
        )
        .await
        .expect("age the stop");
    assert_eq!(calls_today(permit(&lease, ticket).await), Some(1));

    // Stopped again today, then cleared.
    lease
        .mark_quota_exhausted(Api::JsapiTicket)
        .await
        .expect("mark");
    let forced = PermitRules {
        api: Api::StableToken,
        forced_min_interval: Some(Duration::ZERO),
        forced_daily_limit: Some(1),
        ..NORMAL
    };
    assert_eq!(calls_today(permit(&lease, forced).await), Some(1));
    assert_eq!(permit(&lease, forced).await, Permit::ForcedSpent);
    let mut cleared = leases.clear_quota_stops(id).await;
    cleared.sort();
    assert_eq!(cleared, [Api::StableToken, Api::JsapiTicket]);
    assert_eq!(calls_today(permit(&lease, ticket).await), Some(1));
    assert_eq!(permit(&lease, forced).await, Permit::ForcedSpent);
    assert!(leases.clear_quota_stops("wxnolease").await.is_empty());
}

/// The write fence: what a former holder kept of a lease that moved on
/// writes nothing, and the new holder's generation follows the newest.
#[tokio::test]
async fn a_lease_that_moved_on_cannot_write() {
    use crate::support::store::{insert, Inserted};
    let leases = Leases::new(&TestDb::new().await).await;
    let id = "wxpermit4";
    let a = leases.acquire(id, "a").await.expect("free");
    let stale = a.clone();
    assert_eq!(insert(&a, "first").await, Inserted::Stored(Generation(1)));
    a.release().await.expect("release");
    let b = leases.acquire(id, "b").await.expect("released");
    assert_eq!(insert(&stale, "late").await, Inserted::Fenced);
    assert_eq!(insert(&b, "second").await, Inserted::Stored(Generation(2)));
}

/// A refresh on the happy path costs three MongoDB round trips: the permit
/// (one `findAndModify`, which also checks the quota), the generation's
/// reservation (one fenced `findAndModify`) and the insert; a value WeChat
/// answered again costs the permit only. The first call of a quota day
/// starts the day first; a write after a failed one reads back what is
/// stored first.
#[tokio::test]
async fn a_refresh_costs_three_round_trips() {
    let db = TestDb::new().await;
    let (leases, sent) = Leases::counted(&db).await;
    let id = "wxroundtrips";
    let lease = leases.acquire(id, "a").await.expect("free");
    let take = || std::mem::take(&mut *sent.lock().expect("lock"));
    take();

    // The first permit of the day starts the day.
    assert_eq!(calls_today(permit(&lease, NORMAL).await), Some(1));
    let first_day = take();
    assert!(first_day.len() > 1, "{first_day:?}");
    // Nothing known: read back, then reserve and insert.
    let Inserted::Stored(first) = insert(&lease, "TOKEN-1").await else {
        panic!("not stored");
    };
    take();

    assert_eq!(calls_today(permit(&lease, NORMAL).await), Some(2));
    let Inserted::Stored(second) =
        insert_knowing(&lease, "TOKEN-2", Some((first, "TOKEN-1"))).await
    else {
        panic!("not stored");
    };
    assert!(second > first);
    assert_eq!(take(), ["findAndModify", "findAndModify", "insert"]);

    // WeChat answers the stored value again: nothing is written.
    assert_eq!(calls_today(permit(&lease, NORMAL).await), Some(3));
    let repeat = insert_knowing(&lease, "TOKEN-2", Some((second, "TOKEN-2"))).await;
    assert!(matches!(repeat, Inserted::Repeat { generation, .. } if generation == second));
    assert_eq!(take(), ["findAndModify"]);
}

/// The permit reads the server's time afresh when the daemon's last reading
/// is older than the rules allow (a paused process, a suspended host), so
/// that a lease is never judged alive by a clock that stood still.
#[tokio::test]
async fn a_permit_after_a_pause_reads_the_servers_time_first() {
    let db = TestDb::new().await;
    let (leases, sent) = Leases::counted(&db).await;
    let lease = leases.acquire("wxclockage", "a").await.expect("free");
    assert_eq!(calls_today(permit(&lease, NORMAL).await), Some(1));
    sent.lock().expect("lock").clear();
    let stale = PermitRules {
        clock_max_age: Duration::ZERO,
        ..NORMAL
    };
    assert_eq!(calls_today(permit(&lease, stale).await), Some(2));
    assert_eq!(
        std::mem::take(&mut *sent.lock().expect("lock")),
        ["hello", "findAndModify"]
    );
}

/// A holder that knows generation N as the newest, while a former holder's
/// late insert stored N+1 meanwhile: its reservation is not N+1, so it reads
/// what is stored first, and a value WeChat answered again is not written
/// twice.
#[tokio::test]
async fn a_late_insert_by_someone_else_is_read_before_writing() {
    let db = TestDb::new().await;
    let leases = Leases::new(&db).await;
    let lease = leases.acquire("wxlateinsert", "a").await.expect("free");
    let Inserted::Stored(first) = insert(&lease, "TOKEN-1").await else {
        panic!("not stored");
    };
    // Written by another path (here the same lease, not telling the caller).
    let Inserted::Stored(second) = insert(&lease, "TOKEN-2").await else {
        panic!("not stored");
    };
    // WeChat answers TOKEN-2; the caller still believes TOKEN-1 is newest.
    let repeat = insert_knowing(&lease, "TOKEN-2", Some((first, "TOKEN-1"))).await;
    assert!(
        matches!(repeat, Inserted::Repeat { generation, .. } if generation == second),
        "{repeat:?}"
    );
}
