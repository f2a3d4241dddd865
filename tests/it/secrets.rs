//! Secrets audit: a full scenario with known secrets, then every log line,
//! every command's output and every MongoDB document (outside the value
//! field) is searched for the secrets and for every token and ticket WeChat
//! issued. The logs are the subject here, debug level included.

use std::time::Duration;

use fake_wechat::Fault;
use mongodb::bson::Document;
use wxtokend_reader::CredentialKind;

use crate::support::{eventually, Scenario, TestAccount, WAIT};

#[tokio::test]
async fn no_secret_or_token_escapes_anywhere() {
    use futures_util::TryStreamExt;
    let oa = TestAccount::new("wx00000000000audit1", "AUDIT-oa-secret-7f3a9c")
        .tickets(&["jsapi", "wx_card"]);
    let wecom = TestAccount::new("ww00000000auditcorp/1000009", "AUDIT-wecom-secret-b81d")
        .platform("wecom")
        .tickets(&["agent_config"]);
    let refused = TestAccount::new("wx000000000audit403", "AUDIT-refused-secret-44e0");
    let s = Scenario::new()
        .account(oa.clone())
        .account(wecom.clone())
        .account(refused.clone())
        .app_for(&oa.id, |app| {
            app.expires_in(Duration::from_secs(3))
                .ticket_expires_in(Duration::from_secs(3))
        })
        .sticky_fault(&refused.id, Fault::Errcode(40164))
        .faults(&oa.id, [Fault::Errcode(-1), Fault::Http(502)])
        .config(|c| {
            c.margin = "1s";
            c.log_level_debug = true;
        })
        .build()
        .await;

    // A few cycles, a report, a manual refresh.
    eventually(WAIT, "several OA generations", || async {
        (s.tokens_of(&oa.id).await.len() >= 4).then_some(())
    })
    .await;
    let token = s
        .reader
        .latest(&wecom.id.as_str().into())
        .await
        .expect("wecom token");
    s.reader.report_invalid(&token).await.expect("report");
    let mut outputs = Vec::new();
    for args in [
        vec!["refresh", oa.id.as_str()],
        vec!["status"],
        vec!["status", "--json"],
        vec!["check"],
        vec!["sign", oa.id.as_str(), "https://example.com/"],
        vec!["get", "wx-not-configured"],
    ] {
        let (_, out, err) = s.run(&args);
        outputs.extend([out, err]);
    }
    // The daemon acted on the manual refresh and on the report (WeCom
    // answers a refresh with the same token while it is valid: a call, no
    // new document).
    eventually(WAIT, "a manual refresh of the OA token", || async {
        let tokens = s.tokens_of(&oa.id).await;
        tokens
            .iter()
            .any(|d| d.get_str("reason") == Ok("manual"))
            .then_some(())
    })
    .await;
    s.daemon()
        .wait_metrics("the reported WeCom token refreshed", |m| {
            m.upstream_calls(&wecom.id) >= 2
        })
        .await;

    let secrets = s.secrets();
    assert!(
        secrets.len() > 10,
        "the scenario issued too little to be meaningful"
    );
    let daemon = s.daemon();
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
    let database = s.db.db();
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
