//! MongoDB goes away and comes back: the daemon keeps what it fetched in
//! memory, writes it when MongoDB returns, never fetches twice for it, and
//! never calls WeChat without a permit from MongoDB.

use std::time::Duration;

use crate::support::daemon::{TestAccount, TestConfig, TestDaemon};
use crate::support::eventually;
use crate::support::mongo::{tokens_at, unique_db, PrivateMongo};
use fake_wechat::{AppConfig, FakeWechat, Fault};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn token_fetched_as_mongodb_dies_is_stored_when_it_returns() {
    let mut mongo = PrivateMongo::start();
    let db = unique_db("outage");
    let fake = FakeWechat::start().await.expect("fake");
    let account = TestAccount::new("wx000000000outage1", "outage-secret-0123");
    fake.add_app(
        AppConfig::new(&account.id, &account.secret)
            .expires_in(Duration::from_secs(12))
            .overlap(Duration::from_secs(3)),
    );
    let mut config = TestConfig::new(
        &mongo.uri(),
        &db,
        &fake.url(),
        std::slice::from_ref(&account),
    );
    config.margin = "6s";
    config.request_timeout = "10s";
    let daemon = TestDaemon::spawn(&config);
    eventually(WAIT, "generation 1", || async {
        tokens_at(&mongo.uri(), &db).await.filter(|d| d.len() == 1)
    })
    .await;

    // The scheduled refresh (6 s after the first fetch) gets its permit, then
    // WeChat takes 3 s to answer, and MongoDB dies meanwhile.
    fake.push_faults(&account.id, [Fault::Delay(Duration::from_secs(3))]);
    eventually(WAIT, "the refresh call to start", || async {
        (fake.token_calls(&account.id) == 2).then_some(())
    })
    .await;
    mongo.stop();
    eventually(WAIT, "the delayed token to be issued", || async {
        (fake.tokens_issued(&account.id) == 2).then_some(())
    })
    .await;
    daemon
        .wait_for_log(
            "cannot store the fetched access_token; keeping it in memory",
            WAIT,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fake.token_calls(&account.id),
        2,
        "fetched again instead of waiting for MongoDB"
    );

    mongo.restart();
    let docs = eventually(WAIT, "generation 2 after MongoDB is back", || async {
        tokens_at(&mongo.uri(), &db).await.filter(|d| d.len() == 2)
    })
    .await;
    let issued = fake.issued_tokens(&account.id);
    assert_eq!(docs[1].get_str("access_token"), Ok(issued[1].as_str()));
    assert_eq!(docs[1].get_i64("generation"), Ok(2));
    assert_eq!(fake.token_calls(&account.id), 2, "no duplicate fetch");
    daemon
        .wait_for_log("MongoDB is reachable again", WAIT)
        .await;
    let mut secrets = issued;
    secrets.push(account.secret.clone());
    daemon.assert_logs_free_of(&secrets);
}

#[tokio::test]
async fn no_wechat_call_while_mongodb_is_down() {
    let mut mongo = PrivateMongo::start();
    let db = unique_db("no_call_when_down");
    let fake = FakeWechat::start().await.expect("fake");
    let account = TestAccount::new("wx00000000nocall01", "nocall-secret-0123");
    fake.add_app(AppConfig::new(&account.id, &account.secret).expires_in(Duration::from_secs(4)));
    let mut config = TestConfig::new(
        &mongo.uri(),
        &db,
        &fake.url(),
        std::slice::from_ref(&account),
    );
    config.margin = "2s";
    let daemon = TestDaemon::spawn(&config);
    eventually(WAIT, "generation 1", || async {
        tokens_at(&mongo.uri(), &db).await.filter(|d| d.len() == 1)
    })
    .await;
    mongo.stop();
    // The refresh falls due during the outage: without a permit from MongoDB
    // (lease and quota) the daemon must not call WeChat, since another
    // replica that can reach MongoDB may hold the account by now.
    daemon
        .wait_for_log("cannot get a permit to call WeChat", WAIT)
        .await;
    assert_eq!(fake.token_calls(&account.id), 1);
    mongo.restart();
    let docs = eventually(WAIT, "generation 2 once MongoDB is back", || async {
        tokens_at(&mongo.uri(), &db).await.filter(|d| d.len() == 2)
    })
    .await;
    assert_eq!(docs[1].get_i64("generation"), Ok(2));
    assert_eq!(fake.token_calls(&account.id), 2);
}

#[tokio::test]
async fn daemon_started_while_mongodb_is_down_waits_instead_of_fetching_blindly() {
    let mut mongo = PrivateMongo::start();
    mongo.stop();
    let db = unique_db("down_at_start");
    let fake = FakeWechat::start().await.expect("fake");
    let account = TestAccount::new("wx00000000downstart", "down-secret-0123");
    fake.add_app(AppConfig::new(&account.id, &account.secret));
    let config = TestConfig::new(
        &mongo.uri(),
        &db,
        &fake.url(),
        std::slice::from_ref(&account),
    );
    let daemon = TestDaemon::spawn(&config);
    daemon.wait_for_log("cannot create indexes", WAIT).await;
    // Without MongoDB it cannot know whether a valid token is stored: a fetch
    // now could rotate a token that services are using.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fake.token_calls(&account.id), 0);

    mongo.restart();
    let docs = eventually(WAIT, "generation 1 once MongoDB is up", || async {
        tokens_at(&mongo.uri(), &db).await.filter(|d| d.len() == 1)
    })
    .await;
    assert_eq!(docs[0].get_str("reason"), Ok("startup"));
    assert_eq!(fake.token_calls(&account.id), 1);
}
