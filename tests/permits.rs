//! The permit rules, against MongoDB directly: who may call WeChat, and how
//! often.

mod support;

use std::time::Duration;

use std::sync::Arc;
use support::mongo::TestDb;

use wxtokend::coordination::{Lease, Leases, Permit, PermitRules};
use wxtokend_reader::AccountId;

async fn leases(test: &str) -> Leases {
    TestDb::new(test).await.store().await.leases()
}

async fn acquire(leases: &Leases, id: &AccountId, holder: &str) -> Option<Lease> {
    let holder: Arc<str> = holder.into();
    leases
        .acquire(id, &holder, Duration::from_secs(30))
        .await
        .expect("acquire")
}

const NORMAL: PermitRules = PermitRules {
    min_remaining: Duration::from_secs(1),
    daily_limit: 100,
    forced_min_interval: None,
    forced_daily_limit: None,
};

#[tokio::test]
async fn only_the_current_holder_gets_a_permit() {
    let leases = leases("permit_holder").await;
    let id = AccountId::new("wxpermit1");
    let a = acquire(&leases, &id, "a").await.expect("free");
    assert!(acquire(&leases, &id, "b").await.is_none());
    assert!(matches!(
        a.permit(NORMAL).await,
        Ok(Permit::Granted { calls_today: 1 })
    ));
    // A lease with less than min_remaining left gives no permit.
    let short = PermitRules {
        min_remaining: Duration::from_secs(60),
        ..NORMAL
    };
    assert_eq!(a.permit(short).await.expect("permit"), Permit::NotHolder);
    // A lease that moved on gives its former holder nothing, whatever it still holds.
    let stale = a.clone();
    a.release().await.expect("release");
    let b = acquire(&leases, &id, "b").await.expect("released");
    assert!(b.term() > stale.term());
    assert_eq!(
        stale.permit(NORMAL).await.expect("permit"),
        Permit::NotHolder
    );
    assert!(matches!(b.permit(NORMAL).await, Ok(Permit::Granted { .. })));
}

#[tokio::test]
async fn daily_and_forced_limits_are_counted() {
    let leases = leases("permit_limits").await;
    let id = AccountId::new("wxpermit2");
    let lease = acquire(&leases, &id, "a").await.expect("free");
    let forced = PermitRules {
        forced_min_interval: Some(Duration::ZERO),
        forced_daily_limit: Some(2),
        ..NORMAL
    };
    for _ in 0..2 {
        assert!(matches!(
            lease.permit(forced).await,
            Ok(Permit::Granted { .. })
        ));
    }
    assert_eq!(
        lease.permit(forced).await.expect("permit"),
        Permit::ForcedSpent
    );
    // Ordinary refreshes are still allowed, up to the daily ceiling.
    let ceiling = PermitRules {
        daily_limit: 4,
        ..NORMAL
    };
    assert!(matches!(
        lease.permit(ceiling).await,
        Ok(Permit::Granted { calls_today: 3 })
    ));
    assert!(matches!(
        lease.permit(ceiling).await,
        Ok(Permit::Granted { calls_today: 4 })
    ));
    assert_eq!(
        lease.permit(ceiling).await.expect("permit"),
        Permit::QuotaSpent { calls_today: 4 }
    );
    // Forced refreshes wait for forced_min_interval.
    let id2 = AccountId::new("wxpermit3");
    let lease2 = acquire(&leases, &id2, "a").await.expect("free");
    let spaced = PermitRules {
        forced_min_interval: Some(Duration::from_secs(60)),
        ..NORMAL
    };
    assert!(matches!(
        lease2.permit(spaced).await,
        Ok(Permit::Granted { .. })
    ));
    match lease2.permit(spaced).await.expect("permit") {
        Permit::TooSoon { retry_in } => assert!(retry_in > Duration::from_secs(50)),
        other => panic!("expected TooSoon, got {other:?}"),
    }
}
