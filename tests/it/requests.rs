//! `refresh_requests` as other programs fill it: junk, requests for
//! accounts no daemon keeps, requests without a date. None of it may hide
//! a real request from the daemon holding its account.

use std::time::{Duration, Instant, SystemTime};

use fake_wechat::{Endpoint, Fault};
use mongodb::bson::{doc, DateTime, Document};

use crate::support::mongo::TestDb;
use crate::support::{eventually, Scenario, TestAccount, WAIT};

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
    let served = started.elapsed();
    eprintln!("a real request behind 20,000 junk ones served after {served:?}");
    // "Within seconds": ten polls of 1,000 clear the junk for the account
    // (about 2 s here); the bound is generous for a loaded machine.
    assert!(served < Duration::from_secs(20), "served after {served:?}");

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

/// `wxtokend refresh` means now: after a permanent error the daemon waits
/// `refresh.permanent_error_retry` (an hour here) before trying again, but
/// an operator who fixed the cause need not wait.
#[tokio::test]
async fn refresh_means_now_even_after_a_permanent_error() {
    let account = TestAccount::new("wxrefreshnow000001", "refresh-now-secret").tickets(&["jsapi"]);
    let id = account.id.clone();
    let s = Scenario::new()
        .account(account)
        .app(|app| app.expires_in(Duration::from_secs(3600)))
        .sticky_fault(&id, Fault::Errcode(40164))
        .build()
        .await;
    // The first fetch is refused: the caller's IP is not whitelisted.
    s.wait_for_lease(&id, "the refusal noted", |l| {
        l.last_error.as_deref().is_some_and(|e| e.contains("40164"))
    })
    .await;
    // The operator whitelists the IP and asks for a refresh.
    s.fake.set_sticky_fault(&id, None);
    assert_eq!(s.run(&["refresh", &id]).0, 0);
    s.wait_for_tokens(1).await;
    // Any kind: a ticket, asked for on request. WeChat answers the same
    // ticket while it is valid, so nothing new is stored.
    let tickets = s.wait_for_docs("jsapi_tickets", 1).await;
    assert_eq!(tickets.len(), 1);
    let calls = s.fake.calls(&id, Endpoint::GetTicket);
    let (code, out, _) = s.run(&["refresh", &id, "--kind", "jsapi-ticket"]);
    assert_eq!(code, 0, "{out}");
    eventually(WAIT, "the requested ticket call", || async {
        (s.fake.calls(&id, Endpoint::GetTicket) > calls).then_some(())
    })
    .await;
    s.wait_for_renewals(&id, 2).await;
    assert_eq!(
        s.db.docs("jsapi_tickets").await.len(),
        1,
        "a repeat was stored"
    );
}

/// An account and an authorizer of the same appid are held apart, maybe
/// by two replicas: each holder reads (and then deletes) its own requests
/// only, never the other's.
#[tokio::test]
async fn a_holder_reads_only_its_own_owners_requests_when_appids_are_shared() {
    use wxtokend::coordination::Requests;
    use wxtokend_reader::requests::{file, NewRequest};
    use wxtokend_reader::{AccountId, CredentialKind, Owner, RefreshReason};

    let db = TestDb::new().await;
    let (app, component): (AccountId, AccountId) = ("wxA".into(), "wxC".into());
    for (component, kind) in [
        (None, CredentialKind::AccessToken),
        (Some(&component), CredentialKind::AuthorizerAccessToken),
    ] {
        let request = NewRequest {
            app_id: &app,
            component_appid: component,
            kind,
            reason: RefreshReason::Manual,
            generation: None,
            requested_by: "test",
        };
        file(&db.db(), &request).await.expect("filed");
    }
    let requests = Requests::new(&db.db());
    let read = |owners: Vec<Owner>| {
        let requests = requests.clone();
        async move {
            let open = requests.open(&owners, 100).await.expect("open");
            assert!(open.unreadable.is_empty(), "{:?}", open.unreadable);
            let mut kinds: Vec<CredentialKind> = open.requests.iter().map(|r| r.kind).collect();
            kinds.sort_by_key(|k| k.index());
            kinds
        }
    };
    let account = Owner::account(app.clone());
    let authorizer = Owner::authorizer(component.clone(), app.clone());
    let other = Owner::authorizer("wxD".into(), app.clone());
    assert_eq!(
        read(vec![account.clone()]).await,
        [CredentialKind::AccessToken]
    );
    assert_eq!(
        read(vec![authorizer.clone()]).await,
        [CredentialKind::AuthorizerAccessToken]
    );
    assert_eq!(read(vec![other]).await, []);
    assert_eq!(
        read(vec![account, authorizer]).await,
        [
            CredentialKind::AccessToken,
            CredentialKind::AuthorizerAccessToken
        ]
    );
}
