//! Several `wxtokend run` replicas against one database: exactly one
//! refreshes each account, accounts are spread, a dead or paused holder is
//! replaced without ever writing over a newer token, reports of a rejected
//! token cause one refresh, and the daily ceiling holds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fake_wechat::Fault;
use mongodb::bson::{doc, Document};
use serde_json::json;
use wxtokend::Api;
use wxtokend_reader::AccountId;

use crate::support::daemon::output;
use crate::support::{eventually, Scenario, TestAccount, TestConfig, WAIT};

fn generations(docs: &[Document]) -> Vec<i64> {
    docs.iter()
        .map(|d| d.get_i64("generation").expect("generation"))
        .collect()
}

#[tokio::test]
async fn three_replicas_share_accounts_and_call_wechat_once_per_cycle() {
    let s = Scenario::new()
        .accounts(6)
        .app(|app| {
            app.expires_in(Duration::from_secs(6))
                .overlap(Duration::from_secs(2))
        })
        .config(|c| c.margin = "3s")
        .replicas(3)
        .build()
        .await;

    // Converging takes a few renew ticks; a loaded CI machine slows them.
    let holders = eventually(2 * WAIT, "each replica holding two accounts", || async {
        let holders = s.holders().await;
        let mut per_replica: HashMap<&str, usize> = HashMap::new();
        for holder in holders.values() {
            *per_replica.entry(holder.as_str()).or_default() += 1;
        }
        (holders.len() == 6 && per_replica.len() == 3 && per_replica.values().all(|n| *n == 2))
            .then_some(holders)
    })
    .await;
    // The holders are the three running replicas, and each one's /metrics
    // comes to agree with the lease documents about what it holds (a lease
    // given back leaves a replica's /metrics once its refresher has ended).
    let mut names: Vec<&str> = holders.values().map(String::as_str).collect();
    names.sort();
    names.dedup();
    assert_eq!(names, ["replica-1", "replica-2", "replica-3"]);
    for replica in &s.daemons {
        replica
            .wait_metrics("/metrics agreeing with the lease documents", |m| {
                s.accounts
                    .iter()
                    .all(|a| m.lease_held(&a.id) == (holders[&a.id] == replica.instance))
            })
            .await;
    }

    // Watch several lifetimes: the newest stored token of every account is
    // always one WeChat accepts (no replica rotates another's token).
    let deadline = Instant::now() + Duration::from_secs(13);
    let mut samples = 0;
    while Instant::now() < deadline {
        for a in &s.accounts {
            let token = s
                .reader
                .latest(&a.id.as_str().into())
                .await
                .expect("a valid token at every moment");
            assert!(
                s.fake.is_accepted(token.secret()),
                "{}: newest generation {} is rejected by WeChat",
                a.id,
                token.generation
            );
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(samples > 200);

    let (mut calls, mut stored) = (0, 0);
    for a in &s.accounts {
        let gens = generations(&s.tokens_of(&a.id).await);
        assert_eq!(
            gens,
            (1..=gens.len() as i64).collect::<Vec<_>>(),
            "{}",
            a.id
        );
        assert!(gens.len() >= 4, "{}: only {} cycles", a.id, gens.len());
        let account_calls = s.fake.token_calls(&a.id) as usize;
        // One call per stored generation, plus at most one in flight now.
        assert!(
            account_calls == gens.len() || account_calls == gens.len() + 1,
            "{}: {account_calls} calls for {} generations",
            a.id,
            gens.len()
        );
        calls += account_calls;
        stored += gens.len();
    }
    eprintln!(
        "three replicas: {calls} WeChat calls for {stored} stored generations over 6 accounts"
    );
    for r in &s.daemons {
        r.assert_logs_free_of(&s.secrets());
    }
}

#[tokio::test]
async fn a_killed_holder_is_replaced_within_one_lease_period() {
    let s = Scenario::new()
        .accounts(1)
        .app(|app| app.expires_in(Duration::from_secs(3600)))
        .replicas(2)
        .build()
        .await;
    let id = s.id();
    s.wait_for_tokens(1).await;
    let before = s.wait_for_lease(id, "a holder", |l| l.valid).await;
    let other = if before.holder == "replica-1" {
        "replica-2"
    } else {
        "replica-1"
    };

    let killed_at = Instant::now();
    s.replica(&before.holder).signal("KILL");
    let after = s
        .wait_for_lease(id, "another holder", |l| {
            l.valid && l.holder != before.holder
        })
        .await;
    let failover = killed_at.elapsed();
    let lease = humantime::parse_duration(s.config.lease_duration).expect("lease");
    let renew = humantime::parse_duration(s.config.lease_renew_interval).expect("renew");
    eprintln!("failover after kill -9: {failover:?} (lease {lease:?}, renew {renew:?})");
    // One lease period, one renew interval for the successor to look, and
    // one more for a loaded machine.
    assert!(failover <= lease + 2 * renew, "failover took {failover:?}");
    // The survivor took it over, under a new term that fences the dead one.
    assert_eq!(after.holder, other);
    assert!(
        after.term > before.term,
        "{} -> {}",
        before.term,
        after.term
    );

    // The successor reuses the stored token: no new WeChat call.
    let survivor = s.replica(other);
    survivor
        .wait_metrics("the survivor holding the stored token", |m| {
            m.lease_held(id) && m.generation(id) == Some(1)
        })
        .await;
    s.wait_for_renewals(id, 2).await;
    assert_eq!(survivor.metrics().await.upstream_calls(id), 0);
    assert_eq!(s.fake.token_calls(id), 1);
}

/// A holder is paused (SIGSTOP) after WeChat issued it a token but before it
/// could store it. Another replica takes over and stores a newer token. When
/// the paused one resumes, it must not store its older token.
#[tokio::test]
async fn a_paused_holder_that_resumes_cannot_store_its_older_token() {
    let s = Scenario::new()
        .accounts(1)
        .app(|app| app.expires_in(Duration::from_secs(3600)))
        .config(|c| {
            // A call may take 5 s; the lease must outlast two of them.
            c.request_timeout = "5s";
            c.lease_duration = "11s";
            c.shutdown_timeout = "7s";
        })
        .replicas(2)
        .build()
        .await;
    let id = s.id();
    s.wait_for_tokens(1).await;
    let holder = s.wait_for_lease(id, "a holder", |l| l.valid).await.holder;
    let other = if holder == "replica-1" {
        "replica-2"
    } else {
        "replica-1"
    };
    let paused = s.replica(&holder);

    // WeChat issues X at once but the answer takes 3 s; the holder is paused meanwhile.
    s.fake
        .push_faults(id, [Fault::AnswerLate(Duration::from_secs(3))]);
    assert_eq!(s.run(&["refresh", id]).0, 0);
    eventually(WAIT, "token X issued", || async {
        (s.fake.tokens_issued(id) == 2).then_some(())
    })
    .await;
    let x = s.fake.issued_tokens(id)[1].clone();
    let calls = paused.metrics().await.access_token_calls_ended();
    paused.signal("STOP");

    s.wait_for_lease(id, "the other replica taking over", |l| {
        l.valid && l.holder == other
    })
    .await;
    assert_eq!(s.run(&["refresh", id]).0, 0);
    let docs = s.wait_for_tokens(2).await;
    assert_eq!(docs[1].get_str("fetched_by"), Ok(other));
    let z = docs[1].get_str("access_token").expect("token").to_string();
    assert_ne!(z, x);

    paused.signal("CONT");
    // Its call ends at last (with X, or timed out: the pause outlasted the
    // request timeout), and whatever it got it may not write: the end of
    // the call is the marker.
    paused
        .wait_metrics("the resumed holder's call to end", |m| {
            m.access_token_calls_ended() > calls
        })
        .await;
    let docs = s.tokens().await;
    assert_eq!(generations(&docs), vec![1, 2], "the paused holder wrote");
    assert!(docs
        .iter()
        .all(|d| d.get_str("access_token") != Ok(x.as_str())));
    let newest = s.reader.latest(&s.account_id()).await.expect("newest");
    assert_eq!(newest.secret(), z);
    assert!(s.fake.is_accepted(&z));
}

#[tokio::test]
async fn a_storm_of_reports_about_one_token_causes_one_refresh() {
    let s = Scenario::new()
        .accounts(1)
        .app(|app| app.expires_in(Duration::from_secs(3600)))
        .replicas(2)
        .build()
        .await;
    let id = s.id();
    s.wait_for_tokens(1).await;

    // 1000 services report generation 1, the documented way (one insert each)...
    let now = mongodb::bson::DateTime::now();
    let reports: Vec<Document> = (0..1000)
        .map(|i| {
            doc! {
                "app_id": id, "kind": "access_token", "reason": "reported_invalid",
                "generation": 1_i64, "requested_at": now, "requested_by": format!("service-{i}"),
            }
        })
        .collect();
    s.db.db()
        .collection::<Document>("refresh_requests")
        .insert_many(reports)
        .await
        .expect("insert reports");
    // ...and a Rust service through the reader.
    let token = s.reader.latest(&s.account_id()).await.expect("token");
    for _ in 0..5 {
        s.reader.report_invalid(&token).await.expect("report");
    }

    let docs = s.wait_for_tokens(2).await;
    assert_eq!(docs[1].get_str("reason"), Ok("reported_invalid"));
    let all_handled = || async { (s.db.count("refresh_requests").await == 0).then_some(()) };
    eventually(WAIT, "all reports handled", all_handled).await;
    // A late report about generation 1 is handled and changes nothing.
    s.reader.report_invalid(&token).await.expect("report");
    eventually(WAIT, "the late report handled", all_handled).await;
    s.wait_for_renewals(id, 2).await;
    assert_eq!(s.fake.token_calls(id), 2, "1006 reports, one refresh");
    assert_eq!(s.tokens().await.len(), 2);
}

#[tokio::test]
async fn forced_refreshes_are_rate_limited() {
    let s = Scenario::new()
        .accounts(1)
        .app(|app| app.expires_in(Duration::from_secs(3600)))
        .config(|c| c.forced_min_interval = "1h")
        .build()
        .await;
    let (id, daemon) = (s.id(), s.daemon());
    s.wait_for_tokens(1).await;
    let (code, _, err) = s.run(&["refresh", id]);
    assert_eq!(code, 0, "{err}");
    let docs = s.wait_for_tokens(2).await;
    assert_eq!(docs[1].get_str("reason"), Ok("manual"));

    let permits = daemon.metrics().await.mongodb_ops("permit");
    assert_eq!(s.run(&["refresh", id]).0, 0);
    // The daemon asks for a permit, which is refused as too soon.
    daemon
        .wait_metrics("the second forced refresh asking for a permit", |m| {
            m.mongodb_ops("permit") > permits
        })
        .await;
    // Its chance to call anyway: two lease renewals.
    s.wait_for_renewals(id, 2).await;
    assert_eq!(daemon.metrics().await.upstream_calls(id), 2);
    assert_eq!(s.fake.token_calls(id), 2);
    assert_eq!(s.tokens().await.len(), 2);
}

#[tokio::test]
async fn the_daily_call_ceiling_holds_across_restarts_and_shows_in_status() {
    let mut s = Scenario::new()
        .accounts(1)
        .app(|app| app.expires_in(Duration::from_secs(2)))
        .config(|c| {
            c.margin = "1s";
            c.daily_call_limit = 3;
        })
        .build()
        .await;
    let id = s.id().to_owned();
    // Three calls, then a fourth permit request that the ceiling refuses.
    let m = s
        .daemon()
        .wait_metrics("a permit request beyond the three calls", |m| {
            m.mongodb_ops("permit") >= 4
        })
        .await;
    assert_eq!(
        m.quota("wxtokend_quota_calls_today", &id, "token"),
        Some(3.0)
    );
    // Its chance to call again: longer than a token's refresh period (1 s).
    s.wait_for_renewals(&id, 4).await;
    assert_eq!(s.fake.token_calls(&id), 3);
    assert_eq!(
        s.lease(&id).await.expect("lease").calls_today(Api::Token),
        3
    );
    assert!(s.daemon_mut().terminate(WAIT).success());

    let again = s.spawn("restarted");
    let m = again
        .wait_metrics("the restarted daemon refused a permit", |m| {
            m.lease_held(&id) && m.mongodb_ops("permit") >= 1
        })
        .await;
    assert_eq!(
        m.quota("wxtokend_quota_calls_today", &id, "token"),
        Some(3.0)
    );
    s.wait_for_renewals(&id, 2).await;
    assert_eq!(
        s.fake.token_calls(&id),
        3,
        "the ceiling is per day, not per process"
    );

    let (code, out, _) = s.run(&["status", "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let line = &status[0];
    assert_eq!(line["account"], id.as_str());
    assert_eq!(line["generation"], 3);
    assert_eq!(line["calls_today"], 3);
    // Stopped by the ceiling, as by a 45009: in status and /metrics.
    assert_eq!(line["quota_exhausted"], true, "{line}");
    again
        .wait_metrics("the ceiling's stop exported", |m| {
            m.quota("wxtokend_quota_exhausted", &id, "token") == Some(1.0)
        })
        .await;
    assert_eq!(line["lease_holder"], "restarted");
    assert_eq!(line["lease_valid"], true);
    let (_, table, _) = s.run(&["status"]);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(&id))
        .expect("a row for the account")
        .split_whitespace()
        .collect();
    assert_eq!(row[..3], [id.as_str(), "access_token", "3"], "{table}");
    assert!(row.contains(&"3/3!"), "calls today of the limit: {table}");
}

#[tokio::test]
async fn status_shows_the_last_error() {
    let id = "wx0000000000status1";
    let s = Scenario::new()
        .account(TestAccount::new(id, "status-secret-0001"))
        .sticky_fault(id, Fault::Errcode(40164))
        .build()
        .await;
    let status = eventually(WAIT, "the error in status", || async {
        let (_, out, _) = s.run(&["status", "--json"]);
        let status: serde_json::Value = serde_json::from_str(&out).ok()?;
        status[0]["last_error"].as_str().map(str::to_owned)
    })
    .await;
    assert_eq!(
        status,
        "WeChat errcode 40164 (caller IP is not whitelisted: add this server's IP (in WeChat's errmsg) to the account's IP whitelist (mp.weixin.qq.com: 设置与开发 → 基本配置 → IP白名单)): injected by fake WeChat rid: fake"
    );
}

/// `wxtokend status --json` with `config` and no WeChat secret in the
/// environment, as a business host runs it: the lines, sorted.
fn status_without_secrets(config: &TestConfig) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = config.command(&dir, &["status", "--json"]);
    for a in &config.accounts {
        cmd.env_remove(a.secret_env());
    }
    let (code, out, err) = output(&mut cmd);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    status.as_array().expect("an array").clone()
}

/// The line of `account`'s `kind`.
fn line<'a>(lines: &'a [serde_json::Value], account: &str, kind: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["account"] == account && l["kind"] == kind)
        .unwrap_or_else(|| panic!("no line for the {kind} of {account}: {lines:#?}"))
}

#[tokio::test]
async fn status_lists_every_configured_account_with_its_limits() {
    let stable = TestAccount::new("wx00000000status02", "status-secret-0002")
        .endpoint("stable_token")
        .tickets(&["jsapi"]);
    let refused = TestAccount::new("wx00000000status03", "status-secret-0003");
    let s = Scenario::new()
        .account(stable.clone())
        .account(refused.clone())
        .sticky_fault(&refused.id, Fault::Errcode(40164))
        .config(|c| {
            c.forced_min_interval = "30s";
            c.daily_call_limit = 1000;
            // Each API its own ceiling, to see each where it belongs.
            c.api_call_limits = vec![
                ("stable_token", 1001),
                ("jsapi_ticket", 1002),
                ("wecom_token", 1003),
                ("wecom_jsapi_ticket", 1004),
                ("agent_config_ticket", 1005),
            ];
        })
        .build()
        .await;
    s.wait_for_docs("jsapi_tickets", 1).await;
    // A reported token of a stable_token account is refreshed with
    // force_refresh, which WeChat limits to 20 a day.
    let token = s
        .reader
        .latest(&AccountId::new(&stable.id))
        .await
        .expect("a token");
    s.reader.report_invalid(&token).await.expect("report");
    eventually(WAIT, "the forced refresh stored", || async {
        (s.tokens_of(&stable.id).await.len() == 2).then_some(())
    })
    .await;
    s.wait_for_lease(&refused.id, "WeChat's refusal noted", |l| {
        l.last_error.is_some()
    })
    .await;

    // The daemon's accounts, plus one no daemon has seen yet.
    let never = TestAccount::new("ww00000000status04/1000002", "status-secret-0004")
        .platform("wecom")
        .tickets(&["jsapi", "agent_config"]);
    let mut config = s.config.clone();
    config.accounts.push(never.clone());
    let lines = status_without_secrets(&config);
    let mut listed: Vec<(String, String, bool)> = lines
        .iter()
        .map(|l| {
            (
                l["account"].as_str().unwrap_or_default().to_owned(),
                l["kind"].as_str().unwrap_or_default().to_owned(),
                l["configured"] == true,
            )
        })
        .collect();
    listed.sort();
    let configured = |id: &str, kind: &str| (id.to_owned(), kind.to_owned(), true);
    assert_eq!(
        listed,
        vec![
            configured(&never.id, "access_token"),
            configured(&never.id, "agent_config_ticket"),
            configured(&never.id, "jsapi_ticket"),
            configured(&stable.id, "access_token"),
            configured(&stable.id, "jsapi_ticket"),
            configured(&refused.id, "access_token"),
        ]
    );
    let held = s.lease(&stable.id).await.expect("a lease");
    // Quotas per WeChat API: the forced count is stable_token's alone.
    for (kind, api, limit, forced, forced_limit) in [
        ("access_token", Api::StableToken, 1001, json!(1), json!(20)),
        (
            "jsapi_ticket",
            Api::JsapiTicket,
            1002,
            json!(null),
            json!(null),
        ),
    ] {
        let l = line(&lines, &stable.id, kind);
        assert_eq!(l["api"], api.as_str(), "{l}");
        assert_eq!(l["daily_call_limit"], limit, "{l}");
        assert_eq!(l["calls_today"], held.calls_today(api), "{l}");
        assert!(held.calls_today(api) >= 1, "{l}");
        assert_eq!(l["forced_calls_today"], forced, "{l}");
        assert_eq!(l["forced_call_limit"], forced_limit, "{l}");
    }
    assert_eq!(line(&lines, &stable.id, "access_token")["generation"], 2);
    // Refused by WeChat: a lease and an error, nothing stored.
    let l = line(&lines, &refused.id, "access_token");
    assert_eq!(l["generation"], serde_json::Value::Null, "{l}");
    assert_eq!(l["lease_holder"], "test-instance", "{l}");
    assert!(l["calls_today"].as_i64() >= Some(1), "{l}");
    // The token API's ceiling: this test's default for every other API.
    assert_eq!(l["daily_call_limit"], 1000, "{l}");
    assert_eq!(l["forced_calls_today"], serde_json::Value::Null, "{l}");
    assert!(
        l["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("40164")),
        "{l}"
    );
    // Never refreshed, not even leased: every kind, with its limits.
    for (kind, api, limit) in [
        ("access_token", "wecom_token", 1003),
        ("jsapi_ticket", "wecom_jsapi_ticket", 1004),
        ("agent_config_ticket", "agent_config_ticket", 1005),
    ] {
        let l = line(&lines, &never.id, kind);
        assert_eq!(l["api"], api, "{l}");
        assert_eq!(l["daily_call_limit"], limit, "{l}");
        assert_eq!(l["generation"], serde_json::Value::Null, "{l}");
        assert_eq!(l["lease_holder"], serde_json::Value::Null, "{l}");
        assert_eq!(l["lease_valid"], false, "{l}");
        assert_eq!(l["calls_today"], 0, "{l}");
        assert_eq!(l["forced_call_limit"], serde_json::Value::Null, "{l}");
    }

    // An account found in MongoDB but not in this configuration is still
    // listed, marked as such, with no limit claimed for it.
    let mut config = s.config.clone();
    config.accounts.retain(|a| a.id == stable.id);
    let lines = status_without_secrets(&config);
    let l = line(&lines, &refused.id, "access_token");
    assert_eq!(l["configured"], false, "{l}");
    assert_eq!(l["daily_call_limit"], serde_json::Value::Null, "{l}");
    assert_eq!(line(&lines, &stable.id, "access_token")["configured"], true);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let (code, table, err) = config.run(&["status"]);
    assert_eq!(code, 0, "{err}");
    let row = |id: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("a row for {id}: {table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let stable_row = row(&stable.id);
    assert_eq!(
        stable_row[..3],
        [stable.id.as_str(), "access_token", "2"],
        "{table}"
    );
    assert!(
        stable_row.contains(&format!("{}/1001", held.calls_today(Api::StableToken))),
        "{table}"
    );
    assert!(stable_row.contains(&"1/20".to_owned()), "{table}");
    assert_eq!(
        row(&refused.id)[..3],
        [refused.id.as_str(), "access_token*", "-"],
        "{table}"
    );
    assert!(
        table.contains("* not kept by this configuration"),
        "{table}"
    );
}

/// A replica that gives a lease back stops exporting the account: no stale
/// series is left behind for the replica that holds it now.
#[tokio::test]
async fn a_lease_given_back_leaves_no_series_behind() {
    let mut s = Scenario::new()
        .accounts(2)
        .app(|app| app.expires_in(Duration::from_secs(3600)))
        .build()
        .await;
    s.wait_for_tokens(2).await;
    let first = "test-instance";
    let ids: Vec<String> = s.accounts.iter().map(|a| a.id.clone()).collect();
    s.daemon()
        .wait_metrics("both accounts held", |m| {
            ids.iter()
                .all(|id| m.lease_held(id) && m.refreshes(id, "success") == 1)
        })
        .await;
    s.daemons.push(s.spawn("second"));
    let moved = eventually(WAIT, "one account moved to the second replica", || async {
        let holders = s.holders().await;
        ids.iter()
            .find(|id| holders.get(*id).map(String::as_str) == Some("second"))
            .cloned()
    })
    .await;
    let stayed = ids.iter().find(|id| **id != moved).expect("two accounts");
    let m = s
        .replica(first)
        .wait_metrics("the moved account gone", |m| !m.names_account(&moved))
        .await;
    assert!(m.lease_held(stayed), "{}", m.text());
    assert_eq!(m.refreshes(stayed, "success"), 1);
}

/// Two processes given the same `daemon.instance_id` (a misconfiguration):
/// one is paused, its twin takes the lease over. When the first resumes,
/// its renewal must not count its twin's lease as its own: renewals match
/// the term, not only the holder's name.
#[tokio::test]
async fn a_renewal_matches_the_term_not_only_the_holder_name() {
    let s = Scenario::new()
        .accounts(1)
        .app(|app| app.expires_in(Duration::from_secs(3600)))
        .replicas(0)
        .build()
        .await;
    let id = s.id();
    let first = s.spawn("twin");
    let taken = s
        .wait_for_lease(id, "the first twin's lease", |l| l.valid)
        .await;
    let second = s.spawn("twin");
    first.signal("STOP");
    s.wait_for_lease(id, "the second twin taking over", |l| {
        l.valid && l.term > taken.term
    })
    .await;
    first.signal("CONT");
    // Two more rounds of its coordinator (renew, heartbeat, ...) are the marker.
    let rounds = first.metrics().await.mongodb_ops("heartbeat");
    let m = first
        .wait_metrics("two more rounds of the resumed twin", |m| {
            m.mongodb_ops("heartbeat") >= rounds + 2
        })
        .await;
    assert!(
        !m.names_account(id),
        "the resumed twin still counts the lease as its own:\n{}",
        m.text()
    );
    drop(second);
}

/// Leases are taken in batches of at most 2,000 (one batch must end well
/// within the operation cut-off), but a turn goes on with the next batch
/// while each comes back full: 2,500 accounts are all held after the first
/// turn, not only after a second one a renew interval later (10,000
/// accounts took five renew intervals to start that way).
#[tokio::test]
async fn more_accounts_than_one_batch_are_all_taken_in_the_first_turn() {
    const ACCOUNTS: usize = 2_500;
    let s = Scenario::new()
        .accounts(ACCOUNTS)
        .app(|app| app.expires_in(Duration::from_secs(7200)))
        .config(|c| {
            // The second turn would come 5 minutes after the first.
            c.lease_duration = "900s";
            c.lease_renew_interval = "300s";
        })
        .build()
        .await;
    eventually(WAIT, "every lease held by the one replica", || async {
        let holders = s.holders().await;
        (holders.len() == ACCOUNTS).then_some(())
    })
    .await;
}
