//! Secrets audit: a full scenario with known secrets, then every log line,
//! every command's output and every MongoDB document (outside the value
//! field) is searched for the secrets and for every token and ticket WeChat
//! issued.

use std::time::Duration;

use crate::support::daemon::{TestAccount, TestConfig, TestDaemon};
use crate::support::eventually;
use crate::support::mongo::TestDb;
use fake_wechat::{AppConfig, FakeWechat, Fault};
use mongodb::bson::Document;
use wxtokend::domain::{AccountId, CredentialKind};
use wxtokend::reader::Reader;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn no_secret_or_token_escapes_anywhere() {
    use futures_util::TryStreamExt;
    let db = TestDb::new("secrets_audit").await;
    let fake = FakeWechat::start().await.expect("fake");
    let oa = TestAccount::new("wx00000000000audit1", "AUDIT-oa-secret-7f3a9c")
        .tickets(&["jsapi", "wx_card"]);
    let wecom = TestAccount::new("ww00000000auditcorp/1000009", "AUDIT-wecom-secret-b81d")
        .platform("wecom")
        .tickets(&["agent_config"]);
    let refused = TestAccount::new("wx000000000audit403", "AUDIT-refused-secret-44e0");
    fake.add_app(
        AppConfig::new(&oa.id, &oa.secret)
            .expires_in(Duration::from_secs(3))
            .ticket_expires_in(Duration::from_secs(3)),
    );
    fake.add_app(AppConfig::wecom(&wecom.id, &wecom.secret));
    fake.add_app(AppConfig::new(&refused.id, &refused.secret));
    fake.set_sticky_fault(&refused.id, Some(Fault::Errcode(40164)));
    fake.push_faults(&oa.id, [Fault::Errcode(-1), Fault::Http(502)]);
    let accounts = [oa.clone(), wecom.clone(), refused.clone()];
    let mut config = TestConfig::new(&db.uri, &db.name, &fake.url(), &accounts);
    config.margin = "1s";
    config.log_level_debug = true;
    let daemon = TestDaemon::spawn(&config);

    // A few cycles, a report, a manual refresh.
    eventually(WAIT, "several OA generations", || async {
        (db.docs("access_tokens").await.len() >= 4).then_some(())
    })
    .await;
    let reader = Reader::connect(&db.uri, &db.name).await.expect("reader");
    let token = reader
        .latest(&AccountId::new(&wecom.id))
        .await
        .expect("wecom token");
    reader.report_invalid(&token).await.expect("report");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut outputs = Vec::new();
    for args in [
        vec!["refresh", oa.id.as_str()],
        vec!["status"],
        vec!["status", "--json"],
        vec!["check"],
        vec!["sign", oa.id.as_str(), "https://example.com/"],
        vec!["get", "wx-not-configured"],
    ] {
        let out = config.command(&dir, &args).output().expect("run");
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut secrets: Vec<String> = accounts.iter().map(|a| a.secret.clone()).collect();
    for a in &accounts {
        secrets.extend(fake.all_issued_tokens(&a.id));
        for t in ["jsapi", "wx_card", "agent_config"] {
            secrets.extend(fake.issued_tickets(&a.id, t));
        }
    }
    assert!(
        secrets.len() > 10,
        "the scenario issued too little to be meaningful"
    );

    daemon.assert_logs_free_of(&secrets);
    assert!(daemon.raw_lines().iter().all(|l| !l.contains("panicked")));
    for output in &outputs {
        for secret in &secrets {
            assert!(
                !output.contains(secret.as_str()),
                "a command printed a secret: {output}"
            );
        }
    }
    let database = db.db();
    let mut scanned = 0;
    for name in database.list_collection_names().await.expect("collections") {
        let value_field = CredentialKind::ALL
            .into_iter()
            .find(|k| k.collection() == name)
            .map(|k| k.value_field());
        let docs: Vec<Document> = database
            .collection::<Document>(&name)
            .find(mongodb::bson::doc! {})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("collect");
        for mut doc in docs {
            if let Some(field) = value_field {
                doc.remove(field);
            }
            let text = format!("{doc:?}");
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{name} holds a secret outside its value field: {text}"
                );
            }
            scanned += 1;
        }
    }
    assert!(scanned > 10, "only {scanned} documents scanned");
}
