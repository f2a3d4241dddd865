//! The daemon under systemd (`Type=notify`), with the test as systemd: it
//! binds the notification socket, and reads `READY=1` there. READY (and
//! `/readyz`) come only once the indexes are in place.

use std::time::Duration;

use mongodb::bson::doc;

use crate::support::notify::NotifySocket;
use crate::support::store::store_token;
use crate::support::{eventually, Scenario, TestAccount, WAIT};

fn account() -> TestAccount {
    TestAccount::new("wx000000000systemd", "systemd-secret-0123")
}

/// Until its indexes are in place the daemon is neither READY for systemd
/// nor ready on `/readyz`, even with a valid token stored: here an index of
/// the same name and other options is in the way, which the daemon retries
/// (as it would an outage) until the index is dropped.
#[tokio::test]
async fn no_ready_and_no_readyz_before_the_indexes_are_in_place() {
    let notify = NotifySocket::bind();
    let env = notify.env(None);
    let s = Scenario::new()
        .account(account())
        .config(move |c| c.env.extend(env))
        .replicas(0)
        .build()
        .await;
    let id = s.id().to_owned();
    store_token(
        &s.db,
        &id,
        "STORED-TOKEN",
        Duration::ZERO,
        Duration::from_secs(7200),
    )
    .await;
    let in_the_way = doc! {
        "createIndexes": "access_tokens",
        "indexes": [{ "key": { "app_id": 1, "generation": -1 }, "name": "app_id_1_generation_-1" }],
    };
    s.db.db()
        .run_command(in_the_way)
        .await
        .expect("a non-unique index");

    let daemon = s.spawn("test-instance");
    daemon
        .wait_metrics("three failed attempts at the indexes", |m| {
            m.get(
                "wxtokend_mongodb_errors_total",
                &[("operation", "ensure_indexes")],
            )
            .unwrap_or_default()
                >= 3.0
        })
        .await;
    let (status, body) = daemon.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("indexes are created first"), "{body}");
    let said = notify.settle().await;
    assert!(!said.iter().any(|m| m.has("READY=1")), "{said:?}");

    s.db.db()
        .run_command(doc! { "dropIndexes": "access_tokens", "index": "app_id_1_generation_-1" })
        .await
        .expect("drop the index in the way");
    notify.wait_for("READY=1", 1).await;
    eventually(WAIT, "/readyz 200", || async {
        (daemon.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
}
