//! Documents the daemon did not write: legacy ones with numbers stored as
//! doubles or int32 (JavaScript drivers, mongosh), and hostile or broken
//! ones written by hand. Readers and the refresher skip what they cannot
//! read, and new generations still go above everything stored.

use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, Bson, DateTime, Document};

use crate::support::{eventually, Scenario, TestAccount, WAIT};

const HOUR: Duration = Duration::from_secs(3600);

fn token_doc(account: &str, token: &str, generation: Bson, lifetime: Duration) -> Document {
    let now = SystemTime::now();
    doc! {
        "app_id": account,
        "access_token": token,
        "expires_in": 7200.0_f64,
        "fetched_at": DateTime::from_system_time(now),
        "expires_at": DateTime::from_system_time(now + lifetime),
        "generation": generation,
        "reason": "scheduled",
        "fetched_by": "by-hand",
    }
}

async fn insert(s: &Scenario, documents: Vec<Document>) {
    s.db.db()
        .collection::<Document>("access_tokens")
        .insert_many(documents)
        .await
        .expect("insert by hand");
}

#[tokio::test]
async fn numbers_stored_as_double_or_int32_are_read() {
    let s = Scenario::new()
        .account(TestAccount::new("wxlegacy0000000001", "legacy-secret-01"))
        .replicas(0)
        .build()
        .await;
    let id = s.id().to_owned();
    insert(
        &s,
        vec![
            token_doc(&id, "older", Bson::Int32(2), HOUR),
            token_doc(&id, "legacy", Bson::Double(3.0), HOUR),
        ],
    )
    .await;
    let token = s.reader.latest(&s.account_id()).await.expect("readable");
    assert_eq!(token.secret(), "legacy");
    assert_eq!(token.generation.0, 3);
    assert_eq!(token.expires_in, Duration::from_secs(7200));
}

#[tokio::test]
async fn malformed_newest_documents_are_skipped_and_generations_rise_above_them() {
    let mut s = Scenario::new()
        .account(TestAccount::new("wxhostile000000001", "hostile-secret-01"))
        .replicas(0)
        .build()
        .await;
    let id = s.id().to_owned();
    let mut no_token = token_doc(&id, "x", Bson::Int64(5), HOUR);
    no_token.remove("access_token");
    let mut no_date = token_doc(&id, "no-date", Bson::Double(6.0), HOUR);
    no_date.remove("fetched_at");
    let mut no_expiry = token_doc(&id, "no-expiry", Bson::Int64(8), HOUR);
    no_expiry.remove("expires_at");
    let mut documents = vec![
        token_doc(&id, "good", Bson::Int64(1), HOUR),
        no_token,
        no_date,
        no_expiry,
        // Far above anything real: not a generation.
        token_doc(&id, "huge", Bson::Int64(i64::MAX), HOUR),
    ];
    // Strings sort above every number in MongoDB's order: many of them must
    // not hide the real documents.
    documents.extend((0..40).map(|i| {
        token_doc(
            &id,
            "string-generation",
            Bson::String(format!("{}", 9 + i)),
            HOUR,
        )
    }));
    insert(&s, documents).await;

    // Readers get the newest document they can read.
    let token = s.reader.latest(&s.account_id()).await.expect("readable");
    assert_eq!(token.secret(), "good");

    // The daemon is not blocked: it reuses the good token (no call)...
    s.daemons.push(s.spawn("test-instance"));
    s.daemon()
        .wait_metrics("the stored token reused", |m| m.generation(&id) == Some(1))
        .await;
    assert_eq!(s.fake.token_calls(&id), 0);
    // ...says so once, loudly (the log line is the behaviour here)...
    let loud: Vec<_> = eventually(WAIT, "the loud log", || async {
        let loud: Vec<_> = s
            .daemon()
            .logs()
            .into_iter()
            .filter(|l| l["level"] == "ERROR")
            .collect();
        (!loud.is_empty()).then_some(loud)
    })
    .await;
    assert_eq!(loud.len(), 1, "{loud:?}");
    // The three numeric ones that cannot be read; the others are not
    // generations at all and are never looked at.
    assert_eq!(loud[0]["skipped"], 3, "{loud:?}");
    assert_eq!(loud[0]["account"], id.as_str());
    // ...and a refresh is written above every numeric generation stored.
    assert_eq!(s.run(&["refresh", &id]).0, 0);
    s.daemon()
        .wait_metrics("the refreshed token", |m| m.generation(&id) == Some(9))
        .await;
    let token = s.reader.latest(&s.account_id()).await.expect("readable");
    assert_eq!(token.generation.0, 9);
    assert_eq!(token.secret(), s.fake.issued_tokens(&id)[0]);
}
