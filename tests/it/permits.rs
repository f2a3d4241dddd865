//! The permit rules, against MongoDB directly: who may call WeChat, and how
//! often.

use std::time::Duration;

use crate::support::mongo::TestDb;
use wxtokend::domain::AccountId;
use wxtokend::store::lease::{Permit, PermitRules};
use wxtokend::store::Store;

async fn store(test: &str) -> Store {
    TestDb::new(test).await.store().await
}

const NORMAL: PermitRules = PermitRules {
    min_remaining: Duration::from_secs(1),
    daily_limit: 100,
    forced_min_interval: None,
    forced_daily_limit: None,
};

#[tokio::test]
async fn only_the_current_holder_gets_a_permit() {
    let store = store("permit_holder").await;
    let id = AccountId::new("wxpermit1");
    let grant = store
        .try_acquire(&id, "a", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("free");
    assert!(store
        .try_acquire(&id, "b", Duration::from_secs(30))
        .await
        .expect("acquire")
        .is_none());
    assert!(matches!(
        store.permit(&id, "a", grant, NORMAL).await,
        Ok(Permit::Granted { calls_today: 1 })
    ));
    assert_eq!(
        store.permit(&id, "b", grant, NORMAL).await.expect("permit"),
        Permit::NotHolder
    );
    // A lease with less than min_remaining left gives no permit.
    let short = PermitRules {
        min_remaining: Duration::from_secs(60),
        ..NORMAL
    };
    assert_eq!(
        store.permit(&id, "a", grant, short).await.expect("permit"),
        Permit::NotHolder
    );
    store.release(&id, "a", grant).await.expect("release");
    let next = store
        .try_acquire(&id, "b", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("released");
    assert!(next > grant);
    assert_eq!(
        store.permit(&id, "a", grant, NORMAL).await.expect("permit"),
        Permit::NotHolder
    );
}

#[tokio::test]
async fn daily_and_forced_limits_are_counted() {
    let store = store("permit_limits").await;
    let id = AccountId::new("wxpermit2");
    let grant = store
        .try_acquire(&id, "a", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("free");
    let forced = PermitRules {
        forced_min_interval: Some(Duration::ZERO),
        forced_daily_limit: Some(2),
        ..NORMAL
    };
    for _ in 0..2 {
        assert!(matches!(
            store.permit(&id, "a", grant, forced).await,
            Ok(Permit::Granted { .. })
        ));
    }
    assert_eq!(
        store.permit(&id, "a", grant, forced).await.expect("permit"),
        Permit::ForcedSpent
    );
    // Ordinary refreshes are still allowed, up to the daily ceiling.
    let ceiling = PermitRules {
        daily_limit: 4,
        ..NORMAL
    };
    assert!(matches!(
        store.permit(&id, "a", grant, ceiling).await,
        Ok(Permit::Granted { calls_today: 3 })
    ));
    assert!(matches!(
        store.permit(&id, "a", grant, ceiling).await,
        Ok(Permit::Granted { calls_today: 4 })
    ));
    assert_eq!(
        store
            .permit(&id, "a", grant, ceiling)
            .await
            .expect("permit"),
        Permit::QuotaSpent { calls_today: 4 }
    );
    // Forced refreshes wait for forced_min_interval.
    let id2 = AccountId::new("wxpermit3");
    let g2 = store
        .try_acquire(&id2, "a", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("free");
    let spaced = PermitRules {
        forced_min_interval: Some(Duration::from_secs(60)),
        ..NORMAL
    };
    assert!(matches!(
        store.permit(&id2, "a", g2, spaced).await,
        Ok(Permit::Granted { .. })
    ));
    match store.permit(&id2, "a", g2, spaced).await.expect("permit") {
        Permit::TooSoon { retry_in } => assert!(retry_in > Duration::from_secs(50)),
        other => panic!("expected TooSoon, got {other:?}"),
    }
}
