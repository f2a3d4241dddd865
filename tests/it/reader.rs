//! What business code sees through the `wxtokend-reader` crate.

use std::time::{Duration, SystemTime};

use mongodb::bson::Document;
use secrecy::SecretString;
use wxtokend_reader::{AccountId, Credential, CredentialKind, Generation, Owner, RefreshReason};
use wxtokend_reader::{ReadError, Reader, HANDOVER_WAIT};

use crate::support::mongo::TestDb;
use crate::support::store::{ensure_indexes, store_token};

const HOUR: Duration = Duration::from_secs(3600);

/// A fresh database with the daemon's indexes.
async fn database() -> TestDb {
    let db = TestDb::new().await;
    ensure_indexes(&db).await;
    db
}

async fn reader(db: &TestDb) -> Reader {
    Reader::connect(&db.uri, &db.name).await.expect("reader")
}

#[tokio::test]
async fn latest_returns_the_newest_generation_of_that_account() {
    let db = database().await;
    assert_eq!(
        store_token(&db, "wxA", "A1", Duration::ZERO, HOUR).await,
        Generation(1)
    );
    assert_eq!(
        store_token(&db, "wxA", "A2", Duration::ZERO, HOUR).await,
        Generation(2)
    );
    store_token(&db, "wxB", "B1", Duration::ZERO, HOUR).await;
    let reader = reader(&db).await;
    let token = reader.latest(&"wxA".into()).await.expect("valid token");
    assert_eq!(token.secret(), "A2");
    assert_eq!(token.generation, Generation(2));
    assert!(token.time_left(SystemTime::now()) > HOUR - Duration::from_secs(60));
    assert_eq!(
        reader.latest(&"wxB".into()).await.expect("B").secret(),
        "B1"
    );
    assert!(
        !format!("{token:?}").contains("A2"),
        "Debug shows the token"
    );
}

#[tokio::test]
async fn storing_the_same_token_twice_keeps_one_generation() {
    let db = database().await;
    assert_eq!(
        store_token(&db, "wxA", "same", Duration::ZERO, HOUR).await,
        Generation(1)
    );
    assert_eq!(
        store_token(&db, "wxA", "same", Duration::ZERO, HOUR).await,
        Generation(1)
    );
    assert_eq!(db.docs("access_tokens").await.len(), 1);
}

#[tokio::test]
async fn missing_and_expired_are_told_apart() {
    let db = database().await;
    let (age, lifetime) = (Duration::from_secs(7300), Duration::from_secs(7200));
    store_token(&db, "wxOld", "old", age, lifetime).await;
    let reader = reader(&db).await;
    match reader.latest(&"wxNone".into()).await {
        Err(ReadError::NotFound { account, .. }) => assert_eq!(account.as_str(), "wxNone"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match reader.latest(&"wxOld".into()).await {
        Err(e @ ReadError::Expired { .. }) => {
            assert!(e.to_string().contains("not refreshing"), "{e}");
            assert!(!e.to_string().contains("old"), "error shows the token: {e}");
        }
        other => panic!("expected Expired, got {other:?}"),
    }
}

/// Where WeChat repeats a value until it dies, the next one is stored a
/// call after the stored one expired: a read in that moment waits for it
/// (at most `HANDOVER_WAIT` past the expiry) instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_just_after_an_expiry_waits_for_the_next_value() {
    let db = database().await;
    let reader = reader(&db).await;
    // Values living two seconds: each expires two seconds after its store,
    // whatever the setup took before.
    let (lifetime, age) = (Duration::from_secs(2), Duration::ZERO);
    store_token(&db, "wxEdge", "dying", age, lifetime).await;
    let dying = reader.latest(&"wxEdge".into()).await.expect("still valid");
    let expiry = dying.expires_at;
    let until = |at: SystemTime| at.duration_since(SystemTime::now()).unwrap_or_default();
    let edge = "wxEdge".into();
    let (token, next) = tokio::join!(
        async {
            tokio::time::sleep(until(expiry + Duration::from_millis(10))).await;
            reader.latest(&edge).await
        },
        async {
            tokio::time::sleep(until(expiry + Duration::from_millis(100))).await;
            store_token(&db, "wxEdge", "next", Duration::ZERO, HOUR).await
        }
    );
    assert_eq!(token.expect("the next value").secret(), "next");
    assert_eq!(next, Generation(2));

    // Nothing comes: the read gives up HANDOVER_WAIT after the expiry,
    // saying the value expired.
    store_token(&db, "wxLate", "dying", age, lifetime).await;
    let expiry = reader
        .latest(&"wxLate".into())
        .await
        .expect("still valid")
        .expires_at;
    tokio::time::sleep(until(expiry + Duration::from_millis(10))).await;
    match reader.latest(&"wxLate".into()).await {
        Err(ReadError::Expired { .. }) => {}
        other => panic!("expected Expired, got {other:?}"),
    }
    assert!(SystemTime::now() >= expiry + HANDOVER_WAIT, "gave up early");
}

#[tokio::test]
async fn cache_serves_repeated_reads_but_refreshes_after_max_age() {
    let db = database().await;
    store_token(&db, "wxA", "first", Duration::ZERO, HOUR).await;
    let reader = reader(&db).await.with_cache(Duration::from_millis(500));
    assert_eq!(
        reader.latest(&"wxA".into()).await.expect("read").secret(),
        "first"
    );
    store_token(&db, "wxA", "second", Duration::ZERO, HOUR).await;
    assert_eq!(
        reader.latest(&"wxA".into()).await.expect("cached").secret(),
        "first"
    );
    // The passing of the cache's max age is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        reader
            .latest(&"wxA".into())
            .await
            .expect("re-read")
            .secret(),
        "second"
    );
}

#[tokio::test]
async fn cache_never_returns_an_expired_token() {
    let db = database().await;
    // Lives 2 s more.
    let (age, lifetime) = (Duration::from_secs(7198), Duration::from_secs(7200));
    store_token(&db, "wxA", "short", age, lifetime).await;
    let reader = reader(&db).await.with_cache(Duration::from_secs(60));
    assert_eq!(
        reader.latest(&"wxA".into()).await.expect("read").secret(),
        "short"
    );
    // The token's expiry, well within the cache's age, is the behaviour
    // under test.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(matches!(
        reader.latest(&"wxA".into()).await,
        Err(ReadError::Expired { .. })
    ));
}

/// After a service reported a token WeChat rejected, the cache never holds
/// that generation (or an older one) again: the next reads go to MongoDB
/// until the daemon's refresh lands, and see it at once.
#[tokio::test]
async fn a_reported_generation_is_never_cached_again() {
    let db = database().await;
    store_token(&db, "wxA", "rejected", Duration::ZERO, HOUR).await;
    let reader = reader(&db).await.with_cache(Duration::from_secs(60));
    let rejected = reader.latest(&"wxA".into()).await.expect("read");
    reader.report_invalid(&rejected).await.expect("report");
    // Still the newest in MongoDB, so still what a read returns...
    let again = reader.latest(&"wxA".into()).await.expect("re-read");
    assert_eq!(again.generation, rejected.generation);
    // ...but not cached: the refresh is seen by the very next read.
    store_token(&db, "wxA", "refreshed", Duration::ZERO, HOUR).await;
    assert_eq!(
        reader.latest(&"wxA".into()).await.expect("read").secret(),
        "refreshed"
    );
}

/// Stores `value` as `owner`'s generation `generation` of `kind`, valid for
/// an hour, as the daemon writes it.
async fn store_owned(
    db: &TestDb,
    kind: CredentialKind,
    owner: &Owner,
    value: &str,
    generation: i64,
) {
    let now = SystemTime::now();
    let credential = Credential {
        app_id: owner.app_id.clone(),
        component_appid: owner.component_appid.clone(),
        kind,
        value: SecretString::from(value.to_owned()),
        expires_in: HOUR,
        fetched_at: now,
        expires_at: now + HOUR,
        generation: Generation(generation),
        reason: Some(RefreshReason::Scheduled),
        fetched_by: "test-writer".into(),
    };
    db.db()
        .collection::<Document>(kind.collection())
        .insert_one(wxtokend_reader::document::to_document(&credential))
        .await
        .expect("insert");
}

/// One appid, three owners: the account itself and the account as it
/// authorized two Open Platform components (each holds tokens of its own).
/// Each read returns its owner's token, from MongoDB and from the cache
/// alike, and a report about one never touches the others' cache.
#[tokio::test]
async fn an_account_and_its_authorizations_of_two_components_are_read_and_cached_apart() {
    let db = database().await;
    let app: AccountId = "wxA".into();
    let (c1, c2): (AccountId, AccountId) = ("wxC1".into(), "wxC2".into());
    let via = |c: &AccountId| Owner::authorizer(c.clone(), app.clone());
    let authorizer_token = CredentialKind::AuthorizerAccessToken;
    store_token(&db, "wxA", "account-token", Duration::ZERO, HOUR).await;
    store_owned(&db, authorizer_token, &via(&c1), "via-c1", 1).await;
    store_owned(&db, authorizer_token, &via(&c2), "via-c2", 1).await;
    let reader = reader(&db).await.with_cache(Duration::from_secs(60));

    // Twice each: the second read of each comes from the cache.
    for _ in 0..2 {
        assert_eq!(
            reader.latest(&app).await.expect("account").secret(),
            "account-token"
        );
        let first = reader.latest_authorizer(&c1, &app).await.expect("via C1");
        assert_eq!(first.secret(), "via-c1");
        assert_eq!(first.component_appid.as_ref(), Some(&c1));
        let second = reader.latest_authorizer(&c2, &app).await.expect("via C2");
        assert_eq!(second.secret(), "via-c2");
        assert_eq!(second.component_appid.as_ref(), Some(&c2));
        let owned = reader.latest_owned(authorizer_token, &via(&c2)).await;
        assert_eq!(owned.expect("via C2").secret(), "via-c2");
        let account = Owner::account(app.clone());
        let owned = reader
            .latest_owned(CredentialKind::AccessToken, &account)
            .await;
        assert_eq!(owned.expect("account").secret(), "account-token");
    }

    // A component the account never authorized has nothing, and says whose.
    match reader.latest_authorizer(&"wxC3".into(), &app).await {
        Err(e @ ReadError::NotFound { .. }) => {
            assert!(e.to_string().contains("wxA (component wxC3)"), "{e}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // An authorizer kind read without a component matches no document.
    assert!(matches!(
        reader
            .latest_owned(authorizer_token, &Owner::account(app.clone()))
            .await,
        Err(ReadError::NotFound { .. })
    ));

    // C1's token is rejected and refreshed: C1's next read sees the new
    // one at once; C2's cached token and the account's are untouched.
    let rejected = reader.latest_authorizer(&c1, &app).await.expect("via C1");
    reader.report_invalid(&rejected).await.expect("report");
    store_owned(&db, authorizer_token, &via(&c1), "via-c1-refreshed", 2).await;
    store_owned(&db, authorizer_token, &via(&c2), "via-c2-newer", 2).await;
    let refreshed = reader.latest_authorizer(&c1, &app).await.expect("via C1");
    assert_eq!(refreshed.secret(), "via-c1-refreshed");
    let cached = reader.latest_authorizer(&c2, &app).await.expect("via C2");
    assert_eq!(cached.secret(), "via-c2", "still cached");
}

/// An authorizer's token reported invalid is filed with its component,
/// so that the daemon's holder of that authorizer gets the request; an
/// account's report keeps the fields it always had.
#[tokio::test]
async fn a_report_of_an_authorizers_token_names_its_component() {
    let db = database().await;
    let app: AccountId = "wxA".into();
    let owner = Owner::authorizer("wxC".into(), app.clone());
    store_token(&db, "wxA", "account-token", Duration::ZERO, HOUR).await;
    store_owned(
        &db,
        CredentialKind::AuthorizerAccessToken,
        &owner,
        "authorizer-token",
        4,
    )
    .await;
    let reader = reader(&db).await;
    let account = reader.latest(&app).await.expect("account");
    let authorizer = reader
        .latest_authorizer(&"wxC".into(), &app)
        .await
        .expect("authorizer");
    reader.report_invalid(&account).await.expect("report");
    reader.report_invalid(&authorizer).await.expect("report");

    let requests = db.docs("refresh_requests").await;
    let filed = |kind: &str| {
        requests
            .iter()
            .find(|d| d.get_str("kind") == Ok(kind))
            .unwrap_or_else(|| panic!("a {kind} request: {requests:?}"))
    };
    let of_account = filed("access_token");
    let fields: Vec<&str> = of_account.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "_id",
            "app_id",
            "kind",
            "reason",
            "requested_at",
            "requested_by",
            "generation"
        ],
        "{of_account}"
    );
    let of_authorizer = filed("authorizer_access_token");
    assert_eq!(of_authorizer.get_str("app_id"), Ok("wxA"));
    assert_eq!(
        of_authorizer.get_str("component_appid"),
        Ok("wxC"),
        "{of_authorizer}"
    );
    assert_eq!(of_authorizer.get_str("reason"), Ok("reported_invalid"));
    assert_eq!(of_authorizer.get_i64("generation"), Ok(4));
    assert!(!format!("{requests:?}").contains("-token"), "a value filed");
}
