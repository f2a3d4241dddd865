//! Every credential kind: JS-SDK and card tickets, stable_token, WeCom, mixed
//! account lists, and JS-SDK signatures for pages.

use std::time::Duration;

use crate::support::daemon::{TestAccount, TestConfig, TestDaemon};
use crate::support::eventually;
use crate::support::mongo::TestDb;
use fake_wechat::{AppConfig, FakeWechat};
use mongodb::bson::Document;
use sha1::{Digest, Sha1};
use wxtokend::domain::AccountId;
use wxtokend::reader::Reader;

const WAIT: Duration = Duration::from_secs(30);

async fn docs_at_least(db: &TestDb, collection: &str, n: usize) -> Vec<Document> {
    eventually(WAIT, &format!("{n} documents in {collection}"), || async {
        let docs = db.docs(collection).await;
        (docs.len() >= n).then_some(docs)
    })
    .await
}

fn run(config: &TestConfig, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = config.command(&dir, args).output().expect("run wxtokend");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn tickets_are_fetched_with_a_valid_token_and_refreshed_on_their_own_expiry() {
    let db = TestDb::new("tickets").await;
    let fake = FakeWechat::start().await.expect("fake");
    let account =
        TestAccount::new("wx0000000000ticket1", "ticket-secret-001").tickets(&["jsapi", "wx_card"]);
    fake.add_app(
        AppConfig::new(&account.id, &account.secret).ticket_expires_in(Duration::from_secs(4)),
    );
    let mut config = TestConfig::new(
        &db.uri,
        &db.name,
        &fake.url(),
        std::slice::from_ref(&account),
    );
    config.margin = "2s";
    let daemon = TestDaemon::spawn(&config);

    let jsapi = docs_at_least(&db, "jsapi_tickets", 3).await;
    let cards = docs_at_least(&db, "wx_card_tickets", 2).await;
    // Tickets live on their own schedule: the token (7200 s) was fetched once.
    assert_eq!(db.docs("access_tokens").await.len(), 1);
    assert_eq!(fake.tokens_issued(&account.id), 1);
    let fields: Vec<&str> = jsapi[0].keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "_id",
            "app_id",
            "ticket",
            "expires_in",
            "fetched_at",
            "expires_at",
            "generation",
            "reason",
            "fetched_by"
        ]
    );
    let issued = fake.issued_tickets(&account.id, "jsapi");
    let stored: Vec<&str> = jsapi
        .iter()
        .map(|d| d.get_str("ticket").expect("ticket"))
        .collect();
    assert_eq!(
        stored,
        issued[..stored.len()]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let gens: Vec<i64> = jsapi
        .iter()
        .map(|d| d.get_i64("generation").expect("gen"))
        .collect();
    assert_eq!(gens[..3], [1, 2, 3]);
    assert_eq!(
        cards[0].get_str("ticket"),
        Ok(fake.issued_tickets(&account.id, "wx_card")[0].as_str())
    );

    let (code, out, err) = run(&config, &["get", &account.id, "--kind", "jsapi-ticket"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        fake.is_accepted(out.trim()),
        "get printed a ticket WeChat does not know"
    );

    let mut secrets = fake.issued_tokens(&account.id);
    secrets.extend(fake.issued_tickets(&account.id, "jsapi"));
    secrets.push(account.secret.clone());
    daemon.assert_logs_free_of(&secrets);
}

#[tokio::test]
async fn a_ticket_call_refused_for_a_stale_token_gets_the_token_refreshed() {
    let db = TestDb::new("ticket_stale_token").await;
    let fake = FakeWechat::start().await.expect("fake");
    let account = TestAccount::new("wx000000000stale01", "stale-secret-0001").tickets(&["jsapi"]);
    fake.add_app(
        AppConfig::new(&account.id, &account.secret).ticket_expires_in(Duration::from_secs(3)),
    );
    let mut config = TestConfig::new(
        &db.uri,
        &db.name,
        &fake.url(),
        std::slice::from_ref(&account),
    );
    config.margin = "1s";
    let _daemon = TestDaemon::spawn(&config);
    docs_at_least(&db, "jsapi_tickets", 1).await;
    // WeChat kills the token early (someone else fetched one with our secret).
    fake.invalidate_tokens(&account.id);
    let tokens = docs_at_least(&db, "access_tokens", 2).await;
    assert_eq!(tokens[1].get_str("reason"), Ok("reported_invalid"));
    let before = db.docs("jsapi_tickets").await.len();
    docs_at_least(&db, "jsapi_tickets", before + 1).await;
    let reader = Reader::connect(&db.uri, &db.name).await.expect("reader");
    let ticket = reader
        .latest_of(
            wxtokend::domain::CredentialKind::JsapiTicket,
            &AccountId::new(&account.id),
        )
        .await
        .expect("a valid ticket");
    assert!(fake.is_accepted(ticket.secret()));
}

#[tokio::test]
async fn stable_token_is_reused_until_its_last_minutes_and_forced_only_when_reported() {
    let db = TestDb::new("stable").await;
    let fake = FakeWechat::start().await.expect("fake");
    let account =
        TestAccount::new("wx0000000000stable1", "stable-secret-001").endpoint("stable_token");
    fake.add_app(
        AppConfig::new(&account.id, &account.secret)
            .expires_in(Duration::from_secs(8))
            .stable_window(Duration::from_secs(3)),
    );
    let mut config = TestConfig::new(
        &db.uri,
        &db.name,
        &fake.url(),
        std::slice::from_ref(&account),
    );
    config.margin = "5s";
    config.forced_min_interval = "30s";
    let _daemon = TestDaemon::spawn(&config);
    let docs = docs_at_least(&db, "access_tokens", 3).await;
    let gens: Vec<i64> = docs
        .iter()
        .map(|d| d.get_i64("generation").expect("gen"))
        .collect();
    assert_eq!(gens, (1..=gens.len() as i64).collect::<Vec<_>>());
    let (calls, forced) = fake.stable_calls(&account.id);
    assert!(
        calls > docs.len() as u32,
        "WeChat answered some calls with the same token: {calls} calls"
    );
    assert_eq!(forced, 0, "force_refresh without a report");
    assert_eq!(
        fake.token_calls(&account.id),
        0,
        "the classic endpoint was used"
    );

    let reader = Reader::connect(&db.uri, &db.name).await.expect("reader");
    let token = reader
        .latest(&AccountId::new(&account.id))
        .await
        .expect("token");
    reader.report_invalid(&token).await.expect("report");
    let reported = eventually(WAIT, "a forced refresh", || async {
        db.docs("access_tokens")
            .await
            .into_iter()
            .find(|d| d.get_str("reason") == Ok("reported_invalid"))
    })
    .await;
    assert!(reported.get_i64("generation").expect("gen") > token.generation.0);
    assert_eq!(fake.stable_calls(&account.id).1, 1);
}

#[tokio::test]
async fn wecom_app_with_tickets_survives_early_invalidation_and_signs_agent_config() {
    let db = TestDb::new("wecom").await;
    let fake = FakeWechat::start().await.expect("fake");
    let account = TestAccount::new("ww00000000000corp1/1000002", "wecom-app-secret-01")
        .platform("wecom")
        .tickets(&["jsapi", "agent_config"]);
    fake.add_app(AppConfig::wecom(&account.id, &account.secret));
    let config = TestConfig::new(
        &db.uri,
        &db.name,
        &fake.url(),
        std::slice::from_ref(&account),
    );
    let daemon = TestDaemon::spawn(&config);
    let tokens = docs_at_least(&db, "access_tokens", 1).await;
    assert_eq!(tokens[0].get_str("app_id"), Ok(account.id.as_str()));
    docs_at_least(&db, "jsapi_tickets", 1).await;
    let agent = docs_at_least(&db, "agent_config_tickets", 1).await;
    assert_eq!(
        agent[0].get_str("ticket"),
        Ok(fake.issued_tickets(&account.id, "agent_config")[0].as_str())
    );

    // WeCom kills the token early; a service sees 42001 and reports it.
    fake.invalidate_tokens(&account.id);
    let reader = Reader::connect(&db.uri, &db.name).await.expect("reader");
    let id = AccountId::new(&account.id);
    let stale = reader.latest(&id).await.expect("token");
    assert!(!fake.is_accepted(stale.secret()));
    reader.report_invalid(&stale).await.expect("report");
    let tokens = docs_at_least(&db, "access_tokens", 2).await;
    assert_eq!(tokens[1].get_str("reason"), Ok("reported_invalid"));
    assert!(fake.is_accepted(tokens[1].get_str("access_token").expect("token")));

    let url = "https://oa.example.com/approve?id=7#top";
    let (code, out, err) = run(
        &config,
        &["sign", &account.id, url, "--kind", "agent-config-ticket"],
    );
    assert_eq!(code, 0, "{err}");
    let signed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(signed["appId"], "ww00000000000corp1");
    let ticket = db
        .docs("agent_config_tickets")
        .await
        .last()
        .expect("ticket")
        .get_str("ticket")
        .expect("t")
        .to_string();
    let expected = sha1_hex(&format!(
        "jsapi_ticket={ticket}&noncestr={}&timestamp={}&url=https://oa.example.com/approve?id=7",
        signed["nonceStr"].as_str().expect("nonceStr"),
        signed["timestamp"].as_u64().expect("timestamp"),
    ));
    assert_eq!(signed["signature"], expected);
    let mut secrets = fake.all_issued_tokens(&account.id);
    secrets.push(account.secret.clone());
    daemon.assert_logs_free_of(&secrets);
}

fn sha1_hex(text: &str) -> String {
    Sha1::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_mixed_account_list_is_served_and_pages_can_be_signed() {
    let db = TestDb::new("mixed").await;
    let fake = FakeWechat::start().await.expect("fake");
    let oa = TestAccount::new("wx00000000000mixoa1", "mixed-oa-secret-01").tickets(&["jsapi"]);
    let mp = TestAccount::new("wx00000000000mixmp1", "mixed-mp-secret-01").platform("mini_program");
    let wecom =
        TestAccount::new("ww0000000000mixcorp/1000005", "mixed-wecom-secret-1").platform("wecom");
    fake.add_app(AppConfig::new(&oa.id, &oa.secret));
    fake.add_app(AppConfig::new(&mp.id, &mp.secret));
    fake.add_app(AppConfig::wecom(&wecom.id, &wecom.secret));
    let config = TestConfig::new(
        &db.uri,
        &db.name,
        &fake.url(),
        &[oa.clone(), mp.clone(), wecom.clone()],
    );
    let daemon = TestDaemon::spawn(&config);
    let addr = daemon.admin_addr().await;
    eventually(WAIT, "/readyz 200 for every account and ticket", || async {
        let status = reqwest::get(format!("http://{addr}/readyz"))
            .await
            .ok()?
            .status();
        (status == 200).then_some(())
    })
    .await;
    let tokens = db.docs("access_tokens").await;
    let mut ids: Vec<&str> = tokens
        .iter()
        .map(|d| d.get_str("app_id").expect("id"))
        .collect();
    ids.sort();
    let mut expected = [oa.id.as_str(), mp.id.as_str(), wecom.id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);

    let url = "https://shop.example.com/item?id=42#reviews";
    let (code, out, err) = run(&config, &["sign", &oa.id, url]);
    assert_eq!(code, 0, "{err}");
    let signed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(signed["appId"], oa.id.as_str());
    let ticket = db.docs("jsapi_tickets").await[0]
        .get_str("ticket")
        .expect("ticket")
        .to_string();
    let expected = sha1_hex(&format!(
        "jsapi_ticket={ticket}&noncestr={}&timestamp={}&url=https://shop.example.com/item?id=42",
        signed["nonceStr"].as_str().expect("nonceStr"),
        signed["timestamp"].as_u64().expect("timestamp"),
    ));
    assert_eq!(signed["signature"], expected);
    // The mini program has no ticket: signing is refused with exit 5.
    assert_eq!(run(&config, &["sign", &mp.id, url]).0, 5);

    let (code, out, _) = run(&config, &["status", "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let kinds: Vec<String> = status
        .as_array()
        .expect("array")
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["account"].as_str().unwrap_or(""),
                l["kind"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        kinds.contains(&format!("{} jsapi_ticket", oa.id)),
        "{kinds:?}"
    );
    assert_eq!(kinds.len(), 4, "{kinds:?}");
}
