//! Every credential kind: JS-SDK and card tickets, stable_token, WeCom, mixed
//! account lists, and JS-SDK signatures for pages.

use std::time::Duration;

use sha1::{Digest, Sha1};
use wxtokend_reader::CredentialKind;

use crate::support::{eventually, Scenario, TestAccount, WAIT};

fn generations(docs: &[mongodb::bson::Document]) -> Vec<i64> {
    docs.iter()
        .map(|d| d.get_i64("generation").expect("generation"))
        .collect()
}

#[tokio::test]
async fn tickets_are_fetched_with_a_valid_token_and_refreshed_on_their_own_expiry() {
    let s = Scenario::new()
        .account(
            TestAccount::new("wx0000000000ticket1", "ticket-secret-001")
                .tickets(&["jsapi", "wx_card"]),
        )
        .app(|app| app.ticket_expires_in(Duration::from_secs(4)))
        .config(|c| c.margin = "2s")
        .build()
        .await;
    let id = s.id();

    let jsapi = s.wait_for_docs("jsapi_tickets", 3).await;
    let cards = s.wait_for_docs("wx_card_tickets", 2).await;
    // Tickets live on their own schedule: the token (7200 s) was fetched once.
    assert_eq!(s.tokens().await.len(), 1);
    assert_eq!(s.fake.tokens_issued(id), 1);
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
    let issued = s.fake.issued_tickets(id, "jsapi");
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
    assert_eq!(generations(&jsapi)[..3], [1, 2, 3]);
    assert_eq!(
        cards[0].get_str("ticket"),
        Ok(s.fake.issued_tickets(id, "wx_card")[0].as_str())
    );

    let (code, out, err) = s.run(&["get", id, "--kind", "jsapi-ticket"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        s.fake.is_accepted(out.trim()),
        "get printed a ticket WeChat does not know"
    );
    s.daemon().assert_logs_free_of(&s.secrets());
}

#[tokio::test]
async fn a_ticket_call_refused_for_a_stale_token_gets_the_token_refreshed() {
    let s = Scenario::new()
        .account(TestAccount::new("wx000000000stale01", "stale-secret-0001").tickets(&["jsapi"]))
        .app(|app| app.ticket_expires_in(Duration::from_secs(3)))
        .config(|c| c.margin = "1s")
        .build()
        .await;
    s.wait_for_docs("jsapi_tickets", 1).await;
    // WeChat kills the token early (someone else fetched one with our secret).
    s.fake.invalidate_tokens(s.id());
    let tokens = s.wait_for_tokens(2).await;
    assert_eq!(tokens[1].get_str("reason"), Ok("reported_invalid"));
    let before = s.db.docs("jsapi_tickets").await.len();
    s.wait_for_docs("jsapi_tickets", before + 1).await;
    let ticket = s
        .reader
        .latest_of(CredentialKind::JsapiTicket, &s.account_id())
        .await
        .expect("a valid ticket");
    assert!(s.fake.is_accepted(ticket.secret()));
}

#[tokio::test]
async fn stable_token_is_reused_until_its_last_minutes_and_forced_only_when_reported() {
    let s = Scenario::new()
        .account(
            TestAccount::new("wx0000000000stable1", "stable-secret-001").endpoint("stable_token"),
        )
        .app(|app| {
            app.expires_in(Duration::from_secs(8))
                .stable_window(Duration::from_secs(3))
        })
        .config(|c| {
            c.margin = "5s";
            c.forced_min_interval = "30s";
        })
        .build()
        .await;
    let id = s.id();
    let docs = s.wait_for_tokens(3).await;
    let gens = generations(&docs);
    assert_eq!(gens, (1..=gens.len() as i64).collect::<Vec<_>>());
    let (calls, forced) = s.fake.stable_calls(id);
    assert!(
        calls > docs.len() as u32,
        "WeChat answered some calls with the same token: {calls} calls"
    );
    assert_eq!(forced, 0, "force_refresh without a report");
    assert_eq!(s.fake.token_calls(id), 0, "the classic endpoint was used");

    let token = s.reader.latest(&s.account_id()).await.expect("token");
    s.reader.report_invalid(&token).await.expect("report");
    let reported = eventually(WAIT, "a forced refresh", || async {
        s.tokens()
            .await
            .into_iter()
            .find(|d| d.get_str("reason") == Ok("reported_invalid"))
    })
    .await;
    assert!(reported.get_i64("generation").expect("gen") > token.generation.0);
    // Forced only if a plain request answered the reported token again,
    // which it does unless the report came in that token's last window
    // (the forced case is pinned down in `modes::`).
    assert!(s.fake.stable_calls(id).1 <= 1);
}

#[tokio::test]
async fn wecom_app_with_tickets_survives_early_invalidation_and_signs_agent_config() {
    let s = Scenario::new()
        .account(
            TestAccount::new("ww00000000000corp1/1000002", "wecom-app-secret-01")
                .platform("wecom")
                .tickets(&["jsapi", "agent_config"]),
        )
        .build()
        .await;
    let id = s.id();
    let tokens = s.wait_for_tokens(1).await;
    assert_eq!(tokens[0].get_str("app_id"), Ok(id));
    s.wait_for_docs("jsapi_tickets", 1).await;
    let agent = s.wait_for_docs("agent_config_tickets", 1).await;
    assert_eq!(
        agent[0].get_str("ticket"),
        Ok(s.fake.issued_tickets(id, "agent_config")[0].as_str())
    );

    // WeCom kills the token early; a service sees 42001 and reports it.
    s.fake.invalidate_tokens(id);
    let stale = s.reader.latest(&s.account_id()).await.expect("token");
    assert!(!s.fake.is_accepted(stale.secret()));
    s.reader.report_invalid(&stale).await.expect("report");
    let tokens = s.wait_for_tokens(2).await;
    assert_eq!(tokens[1].get_str("reason"), Ok("reported_invalid"));
    assert!(s
        .fake
        .is_accepted(tokens[1].get_str("access_token").expect("token")));

    let url = "https://oa.example.com/approve?id=7#top";
    let (code, out, err) = s.run(&["sign", id, url, "--kind", "agent-config-ticket"]);
    assert_eq!(code, 0, "{err}");
    let signed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    // What wx.agentConfig takes: corpid and agentid, not appId.
    let mut fields: Vec<&str> = signed
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["agentid", "corpid", "nonceStr", "signature", "timestamp"]
    );
    assert_eq!(signed["corpid"], "ww00000000000corp1");
    assert_eq!(signed["agentid"], "1000002");
    // Only tickets sign pages; an id without an agentid has no agentConfig.
    assert_eq!(s.run(&["sign", id, url, "--kind", "access-token"]).0, 2);
    assert_eq!(
        s.run(&[
            "sign",
            "ww00000000000corp1",
            url,
            "--kind",
            "agent-config-ticket"
        ])
        .0,
        2
    );
    let ticket =
        s.db.docs("agent_config_tickets")
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
    s.daemon().assert_logs_free_of(&s.secrets());
}

fn sha1_hex(text: &str) -> String {
    Sha1::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_mixed_account_list_is_served_and_pages_can_be_signed() {
    let oa = TestAccount::new("wx00000000000mixoa1", "mixed-oa-secret-01").tickets(&["jsapi"]);
    let mp = TestAccount::new("wx00000000000mixmp1", "mixed-mp-secret-01").platform("mini_program");
    let wecom =
        TestAccount::new("ww0000000000mixcorp/1000005", "mixed-wecom-secret-1").platform("wecom");
    let s = Scenario::new()
        .account(oa.clone())
        .account(mp.clone())
        .account(wecom.clone())
        .build()
        .await;
    let daemon = s.daemon();
    eventually(WAIT, "/readyz 200 for every account and ticket", || async {
        (daemon.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let tokens = s.tokens().await;
    let mut ids: Vec<&str> = tokens
        .iter()
        .map(|d| d.get_str("app_id").expect("id"))
        .collect();
    ids.sort();
    let mut expected = [oa.id.as_str(), mp.id.as_str(), wecom.id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);

    let url = "https://shop.example.com/item?id=42#reviews";
    let (code, out, err) = s.run(&["sign", &oa.id, url]);
    assert_eq!(code, 0, "{err}");
    let signed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(signed["appId"], oa.id.as_str());
    let ticket = s.db.docs("jsapi_tickets").await[0]
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
    assert_eq!(s.run(&["sign", &mp.id, url]).0, 5);

    let (code, out, _) = s.run(&["status", "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let mut lines: Vec<(&str, &str)> = status
        .as_array()
        .expect("array")
        .iter()
        .map(|l| {
            (
                l["account"].as_str().unwrap_or(""),
                l["kind"].as_str().unwrap_or(""),
            )
        })
        .collect();
    lines.sort();
    let mut expected = vec![
        (oa.id.as_str(), "access_token"),
        (oa.id.as_str(), "jsapi_ticket"),
        (mp.id.as_str(), "access_token"),
        (wecom.id.as_str(), "access_token"),
    ];
    expected.sort();
    assert_eq!(lines, expected);
}

/// A manual refresh of a stable_token account asks without force_refresh
/// (WeChat answers the current token until its last minutes), so it does
/// not use one of the 20 forced refreshes a day.
#[tokio::test]
async fn a_manual_refresh_of_a_stable_token_spends_no_forced_refresh() {
    let s = Scenario::new()
        .account(
            TestAccount::new("wx0000000000stable2", "stable-secret-002").endpoint("stable_token"),
        )
        .config(|c| c.forced_min_interval = "30s")
        .build()
        .await;
    let id = s.id();
    s.wait_for_tokens(1).await;
    let calls = s.fake.stable_calls(id).0;
    assert_eq!(s.run(&["refresh", id]).0, 0);
    eventually(WAIT, "the manual refresh's call", || async {
        (s.fake.stable_calls(id).0 > calls).then_some(())
    })
    .await;
    assert_eq!(s.fake.stable_calls(id).1, 0, "force_refresh was sent");
    let (code, out, err) = s.run(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let line = status
        .as_array()
        .expect("lines")
        .iter()
        .find(|l| l["account"] == id && l["kind"] == "access_token")
        .expect("the account's line");
    assert_eq!(line["forced_calls_today"], 0, "{line}");
}
