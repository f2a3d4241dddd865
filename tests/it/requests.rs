//! `refresh_requests` as other programs fill it: junk, requests for
//! accounts no daemon keeps, requests without a date. None of it may hide
//! a real request from the daemon holding its account.

use std::time::{Duration, Instant, SystemTime};

use mongodb::bson::{doc, DateTime, Document};

use crate::support::{eventually, Scenario, WAIT};

#[tokio::test]
async fn a_real_request_behind_twenty_thousand_junk_ones_is_served_within_seconds() {
    let s = Scenario::new()
        .accounts(1)
        .app(|app| app.expires_in(Duration::from_secs(3600)))
        .build()
        .await;
    let id = s.id();
    s.wait_for_tokens(1).await;
    let requests = s.db.db().collection::<Document>("refresh_requests");
    let an_hour_ago = DateTime::from_system_time(SystemTime::now() - Duration::from_secs(3600));
    let junk: Vec<Document> = (0..20_000)
        .map(|i| match i % 4 {
            0 => doc! { "app_id": id, "kind": "bogus", "reason": "manual", "requested_at": an_hour_ago },
            1 => doc! { "app_id": id, "reason": "reported_invalid", "requested_at": an_hour_ago },
            2 => doc! { "app_id": format!("wxnobody{i:010}"), "reason": "manual", "requested_at": an_hour_ago },
            _ => doc! { "app_id": "wxundated", "reason": "manual" },
        })
        .collect();
    requests.insert_many(junk).await.expect("junk");

    let started = Instant::now();
    assert_eq!(s.run(&["refresh", id]).0, 0);
    s.wait_for_tokens(2).await;
    eprintln!(
        "a real request behind 20,000 junk ones served after {:?}",
        started.elapsed()
    );

    // The unreadable requests for the held account are gone; requests for
    // other accounts stay for their holders, and the undated ones now
    // carry a date, so the TTL index removes them.
    let count = |filter: Document| {
        let requests = requests.clone();
        async move { requests.count_documents(filter).await.expect("count") }
    };
    eventually(WAIT, "the junk for the held account deleted", || async {
        (count(doc! { "app_id": id }).await == 0).then_some(())
    })
    .await;
    eventually(WAIT, "the undated requests dated", || async {
        (count(doc! { "requested_at": { "$exists": false } }).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        count(doc! { "app_id": { "$regex": "^wxnobody" } }).await,
        5_000
    );
    assert_eq!(
        s.fake.token_calls(id),
        2,
        "one refresh for the one real request"
    );
}
