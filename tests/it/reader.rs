//! What business code sees through `wxtokend::reader`.

use std::time::{Duration, SystemTime};

use crate::support::mongo::TestDb;
use wxtokend::domain::Generation;
use wxtokend::reader::{ReadError, Reader};
use wxtokend::store::Store;

async fn store(db: &TestDb) -> Store {
    let store = db.store().await;
    store
        .ensure_indexes(Duration::from_secs(86_400))
        .await
        .expect("indexes");
    store
}

/// Stores a token fetched `age` ago that lives `lifetime`.
async fn put(
    store: &Store,
    account: &str,
    token: &str,
    age: Duration,
    lifetime: Duration,
) -> Generation {
    crate::support::store_token(store, account, token, age, lifetime).await
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn latest_returns_the_newest_generation_of_that_account() {
    let db = TestDb::new("reader_newest").await;
    let store = store(&db).await;
    assert_eq!(
        put(&store, "wxA", "A1", Duration::ZERO, HOUR).await,
        Generation(1)
    );
    assert_eq!(
        put(&store, "wxA", "A2", Duration::ZERO, HOUR).await,
        Generation(2)
    );
    put(&store, "wxB", "B1", Duration::ZERO, HOUR).await;
    let reader = Reader::connect(&db.uri, &db.name).await.expect("reader");
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
    let db = TestDb::new("reader_idempotent").await;
    let store = store(&db).await;
    assert_eq!(
        put(&store, "wxA", "same", Duration::ZERO, HOUR).await,
        Generation(1)
    );
    assert_eq!(
        put(&store, "wxA", "same", Duration::ZERO, HOUR).await,
        Generation(1)
    );
    assert_eq!(db.docs("access_tokens").await.len(), 1);
}

#[tokio::test]
async fn missing_and_expired_are_told_apart() {
    let db = TestDb::new("reader_errors").await;
    let store = store(&db).await;
    put(
        &store,
        "wxOld",
        "old",
        Duration::from_secs(7300),
        Duration::from_secs(7200),
    )
    .await;
    let reader = Reader::connect(&db.uri, &db.name).await.expect("reader");
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

#[tokio::test]
async fn cache_serves_repeated_reads_but_refreshes_after_max_age() {
    let db = TestDb::new("reader_cache_age").await;
    let store = store(&db).await;
    put(&store, "wxA", "first", Duration::ZERO, HOUR).await;
    let reader = Reader::connect(&db.uri, &db.name)
        .await
        .expect("reader")
        .with_cache(Duration::from_millis(500));
    assert_eq!(
        reader.latest(&"wxA".into()).await.expect("read").secret(),
        "first"
    );
    put(&store, "wxA", "second", Duration::ZERO, HOUR).await;
    assert_eq!(
        reader.latest(&"wxA".into()).await.expect("cached").secret(),
        "first"
    );
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
    let db = TestDb::new("reader_cache_expiry").await;
    let store = store(&db).await;
    // Lives 2 s more.
    put(
        &store,
        "wxA",
        "short",
        Duration::from_secs(7198),
        Duration::from_secs(7200),
    )
    .await;
    let reader = Reader::connect(&db.uri, &db.name)
        .await
        .expect("reader")
        .with_cache(Duration::from_secs(60));
    assert_eq!(
        reader.latest(&"wxA".into()).await.expect("read").secret(),
        "short"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(matches!(
        reader.latest(&"wxA".into()).await,
        Err(ReadError::Expired { .. })
    ));
}
