//! The permit rules, against MongoDB directly: who may call WeChat, and how
//! often. The lease API is reached through `support::store` only.

use std::time::Duration;

use crate::support::mongo::TestDb;
use crate::support::store::{permit, Leases, Permit, PermitRules};

const NORMAL: PermitRules = PermitRules {
    min_remaining: Duration::from_secs(1),
    daily_limit: 100,
    forced_min_interval: None,
    forced_daily_limit: None,
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
    assert_eq!(permit(&a, NORMAL).await, Permit::Granted { calls_today: 1 });
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
    assert_eq!(permit(&b, NORMAL).await, Permit::Granted { calls_today: 2 });
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
    for calls_today in 1..=2 {
        assert_eq!(
            permit(&lease, forced).await,
            Permit::Granted { calls_today }
        );
    }
    assert_eq!(permit(&lease, forced).await, Permit::ForcedSpent);
    // Ordinary refreshes are still allowed, up to the daily ceiling.
    let ceiling = PermitRules {
        daily_limit: 4,
        ..NORMAL
    };
    assert_eq!(
        permit(&lease, ceiling).await,
        Permit::Granted { calls_today: 3 }
    );
    assert_eq!(
        permit(&lease, ceiling).await,
        Permit::Granted { calls_today: 4 }
    );
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
    assert_eq!(
        permit(&lease2, spaced).await,
        Permit::Granted { calls_today: 1 }
    );
    match permit(&lease2, spaced).await {
        Permit::TooSoon { retry_in } => assert!(retry_in > Duration::from_secs(50)),
        other => panic!("expected TooSoon, got {other:?}"),
    }
}
