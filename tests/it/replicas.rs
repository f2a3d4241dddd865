//! Several `wxtokend run` replicas against one database: exactly one
//! refreshes each account, accounts are spread, a dead or paused holder is
//! replaced without ever writing over a newer token, reports of a rejected
//! token cause one refresh, and the daily ceiling holds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::daemon::{TestAccount, TestConfig, TestDaemon};
use crate::support::eventually;
use crate::support::mongo::TestDb;
use fake_wechat::{AppConfig, FakeWechat, Fault};
use mongodb::bson::{doc, Document};
use wxtokend::domain::{AccountId, CredentialKind, RefreshReason};
use wxtokend::reader::Reader;
use wxtokend::store::lease::LeaseInfo;
use wxtokend::store::Store;

const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    db: TestDb,
    store: Store,
    fake: FakeWechat,
    accounts: Vec<TestAccount>,
    config: TestConfig,
}

impl Cluster {
    async fn new(test: &str, n_accounts: usize, app: impl Fn(AppConfig) -> AppConfig) -> Cluster {
        let db = TestDb::new(test).await;
        let store = db.store().await;
        let fake = FakeWechat::start().await.expect("fake");
        let accounts: Vec<TestAccount> = (0..n_accounts)
            .map(|i| {
                TestAccount::new(
                    &format!("wxreplica{i:09}"),
                    &format!("replica-secret-{i:04}"),
                )
            })
            .collect();
        for a in &accounts {
            fake.add_app(app(AppConfig::new(&a.id, &a.secret)));
        }
        let config = TestConfig::new(&db.uri, &db.name, &fake.url(), &accounts);
        Cluster {
            db,
            store,
            fake,
            accounts,
            config,
        }
    }

    fn spawn(&self, instance: &str) -> TestDaemon {
        let mut config = self.config.clone();
        config.instance_id = instance.into();
        TestDaemon::spawn(&config)
    }

    async fn leases(&self) -> Vec<LeaseInfo> {
        self.store.lease_infos(&[]).await.expect("leases")
    }

    /// Holder of each account whose lease is valid now.
    async fn holders(&self) -> HashMap<String, String> {
        let now = self.store.server_time().await.expect("server time");
        self.leases()
            .await
            .into_iter()
            .filter(|l| l.expires_at > now)
            .map(|l| (l.app_id.to_string(), l.holder))
            .collect()
    }

    async fn tokens(&self, account: &str) -> Vec<Document> {
        use futures_util::TryStreamExt;
        self.db
            .db()
            .collection::<Document>("access_tokens")
            .find(doc! { "app_id": account })
            .sort(doc! { "generation": 1 })
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("collect")
    }

    async fn file(&self, account: &str, reason: RefreshReason, generation: Option<i64>) {
        self.store
            .file_request(
                &AccountId::new(account),
                CredentialKind::AccessToken,
                reason,
                generation.map(wxtokend::domain::Generation),
                "test",
            )
            .await
            .expect("file request");
    }

    fn all_secrets(&self) -> Vec<String> {
        let mut all = Vec::new();
        for a in &self.accounts {
            all.push(a.secret.clone());
            all.extend(self.fake.issued_tokens(&a.id));
        }
        all
    }
}

fn generations(docs: &[Document]) -> Vec<i64> {
    docs.iter()
        .map(|d| d.get_i64("generation").expect("generation"))
        .collect()
}

#[tokio::test]
async fn three_replicas_share_accounts_and_call_wechat_once_per_cycle() {
    let cluster = Cluster::new("three_replicas", 6, |a| {
        a.expires_in(Duration::from_secs(6))
            .overlap(Duration::from_secs(2))
    })
    .await;
    let mut config = cluster.config.clone();
    config.margin = "3s";
    let cluster = Cluster { config, ..cluster };
    let replicas: Vec<TestDaemon> = (1..=3)
        .map(|i| cluster.spawn(&format!("replica-{i}")))
        .collect();

    // Converging takes a few renew ticks; a loaded CI machine slows them.
    let spread = eventually(2 * WAIT, "each replica holding two accounts", || async {
        let holders = cluster.holders().await;
        let mut per_replica: HashMap<String, usize> = HashMap::new();
        for holder in holders.values() {
            *per_replica.entry(holder.clone()).or_default() += 1;
        }
        (holders.len() == 6 && per_replica.len() == 3 && per_replica.values().all(|n| *n == 2))
            .then_some(per_replica)
    })
    .await;
    assert_eq!(spread.len(), 3);

    // Watch several lifetimes: the newest stored token of every account is
    // always one WeChat accepts (no replica rotates another's token).
    let reader = Reader::connect(&cluster.db.uri, &cluster.db.name)
        .await
        .expect("reader");
    let deadline = Instant::now() + Duration::from_secs(13);
    let mut samples = 0;
    while Instant::now() < deadline {
        for a in &cluster.accounts {
            let token = reader
                .latest(&AccountId::new(&a.id))
                .await
                .expect("a valid token at every moment");
            assert!(
                cluster.fake.is_accepted(token.secret()),
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
    for a in &cluster.accounts {
        let docs = cluster.tokens(&a.id).await;
        let gens = generations(&docs);
        assert_eq!(
            gens,
            (1..=gens.len() as i64).collect::<Vec<_>>(),
            "{}",
            a.id
        );
        assert!(gens.len() >= 4, "{}: only {} cycles", a.id, gens.len());
        let account_calls = cluster.fake.token_calls(&a.id) as usize;
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
    for r in &replicas {
        r.assert_logs_free_of(&cluster.all_secrets());
    }
}

#[tokio::test]
async fn a_killed_holder_is_replaced_within_one_lease_period() {
    let cluster = Cluster::new("failover", 1, |a| a.expires_in(Duration::from_secs(3600))).await;
    let account = cluster.accounts[0].id.clone();
    let replicas: HashMap<String, TestDaemon> = ["a", "b"]
        .iter()
        .map(|n| (n.to_string(), cluster.spawn(n)))
        .collect();
    let holder = eventually(WAIT, "a holder", || async {
        cluster.holders().await.get(&account).cloned()
    })
    .await;
    eventually(WAIT, "generation 1", || async {
        (cluster.tokens(&account).await.len() == 1).then_some(())
    })
    .await;

    let killed_at = Instant::now();
    replicas.get(&holder).expect("holder").signal("KILL");
    let successor = eventually(WAIT, "another replica holding the lease", || async {
        cluster
            .holders()
            .await
            .get(&account)
            .filter(|h| **h != holder)
            .cloned()
    })
    .await;
    let failover = killed_at.elapsed();
    eprintln!("failover after kill -9: {failover:?} (lease 3s, renew 500ms)");
    // One lease period (3 s) plus one renew interval for the successor to look.
    assert!(
        failover <= Duration::from_millis(4500),
        "failover took {failover:?}"
    );
    assert_ne!(successor, holder);
    // The successor reuses the stored token: no new WeChat call.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cluster.fake.token_calls(&account), 1);
    let survivor = &replicas[&successor];
    survivor
        .wait_for_log("reusing the stored access_token", WAIT)
        .await;
}

/// A holder is paused (SIGSTOP) after WeChat issued it a token but before it
/// could store it. Another replica takes over and stores a newer token. When
/// the paused one resumes, it must not store its older token.
#[tokio::test]
async fn a_paused_holder_that_resumes_cannot_store_its_older_token() {
    let cluster = Cluster::new("paused_holder", 1, |a| {
        a.expires_in(Duration::from_secs(3600))
    })
    .await;
    let mut config = cluster.config.clone();
    config.request_timeout = "30s";
    let cluster = Cluster { config, ..cluster };
    let account = cluster.accounts[0].id.clone();
    let replicas: HashMap<String, TestDaemon> = ["a", "b"]
        .iter()
        .map(|n| (n.to_string(), cluster.spawn(n)))
        .collect();
    eventually(WAIT, "generation 1", || async {
        (cluster.tokens(&account).await.len() == 1).then_some(())
    })
    .await;
    let holder = cluster.holders().await[&account].clone();
    let other = if holder == "a" { "b" } else { "a" };

    // WeChat issues X at once but the answer takes 6 s; the holder is paused meanwhile.
    cluster
        .fake
        .push_faults(&account, [Fault::AnswerLate(Duration::from_secs(6))]);
    cluster.file(&account, RefreshReason::Manual, None).await;
    eventually(WAIT, "token X issued", || async {
        (cluster.fake.tokens_issued(&account) == 2).then_some(())
    })
    .await;
    let x = cluster.fake.issued_tokens(&account)[1].clone();
    replicas[&holder].signal("STOP");

    eventually(WAIT, "the other replica taking over", || async {
        (cluster.holders().await.get(&account).map(String::as_str) == Some(other)).then_some(())
    })
    .await;
    cluster.file(&account, RefreshReason::Manual, None).await;
    let docs = eventually(WAIT, "generation 2 from the new holder", || async {
        let docs = cluster.tokens(&account).await;
        (docs.len() == 2).then_some(docs)
    })
    .await;
    assert_eq!(docs[1].get_str("fetched_by"), Ok(other));
    let z = docs[1].get_str("access_token").expect("token").to_string();
    assert_ne!(z, x);

    replicas[&holder].signal("CONT");
    replicas[&holder]
        .wait_for_log(
            "lost the lease before storing the fetched access_token",
            WAIT,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let docs = cluster.tokens(&account).await;
    assert_eq!(generations(&docs), vec![1, 2], "the paused holder wrote");
    assert!(docs
        .iter()
        .all(|d| d.get_str("access_token") != Ok(x.as_str())));
    let reader = Reader::connect(&cluster.db.uri, &cluster.db.name)
        .await
        .expect("reader");
    let newest = reader
        .latest(&AccountId::new(&account))
        .await
        .expect("newest");
    assert_eq!(newest.secret(), z);
    assert!(cluster.fake.is_accepted(&z));
}

#[tokio::test]
async fn a_storm_of_reports_about_one_token_causes_one_refresh() {
    let cluster = Cluster::new("report_storm", 1, |a| {
        a.expires_in(Duration::from_secs(3600))
    })
    .await;
    let account = cluster.accounts[0].id.clone();
    let _replicas: Vec<TestDaemon> = ["a", "b"].iter().map(|n| cluster.spawn(n)).collect();
    eventually(WAIT, "generation 1", || async {
        (cluster.tokens(&account).await.len() == 1).then_some(())
    })
    .await;

    // 1000 services report generation 1, the documented way (one insert each)...
    let now = mongodb::bson::DateTime::now();
    let reports: Vec<Document> = (0..1000)
        .map(|i| {
            doc! {
                "app_id": &account, "kind": "access_token", "reason": "reported_invalid",
                "generation": 1_i64, "requested_at": now, "requested_by": format!("service-{i}"),
            }
        })
        .collect();
    cluster
        .db
        .db()
        .collection::<Document>("refresh_requests")
        .insert_many(reports)
        .await
        .expect("insert reports");
    // ...and a Rust service through the reader.
    let reader = Reader::connect(&cluster.db.uri, &cluster.db.name)
        .await
        .expect("reader");
    let token = reader
        .latest(&AccountId::new(&account))
        .await
        .expect("token");
    for _ in 0..5 {
        reader.report_invalid(&token).await.expect("report");
    }

    let docs = eventually(WAIT, "generation 2", || async {
        let docs = cluster.tokens(&account).await;
        (docs.len() == 2).then_some(docs)
    })
    .await;
    assert_eq!(docs[1].get_str("reason"), Ok("reported_invalid"));
    eventually(WAIT, "all reports handled", || async {
        let left = cluster
            .db
            .db()
            .collection::<Document>("refresh_requests")
            .count_documents(doc! {})
            .await
            .expect("count");
        (left == 0).then_some(())
    })
    .await;
    // Late reports about generation 1 change nothing.
    cluster
        .file(&account, RefreshReason::ReportedInvalid, Some(1))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cluster.fake.token_calls(&account),
        2,
        "1005 reports, one refresh"
    );
    assert_eq!(cluster.tokens(&account).await.len(), 2);
}

#[tokio::test]
async fn forced_refreshes_are_rate_limited() {
    let cluster = Cluster::new("manual_rate", 1, |a| {
        a.expires_in(Duration::from_secs(3600))
    })
    .await;
    let mut config = cluster.config.clone();
    config.forced_min_interval = "1h";
    let cluster = Cluster { config, ..cluster };
    let account = cluster.accounts[0].id.clone();
    let daemon = cluster.spawn("solo");
    eventually(WAIT, "generation 1", || async {
        (cluster.tokens(&account).await.len() == 1).then_some(())
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = cluster
        .config
        .command(&dir, &["refresh", &account])
        .output()
        .expect("refresh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = eventually(WAIT, "generation 2", || async {
        let docs = cluster.tokens(&account).await;
        (docs.len() == 2).then_some(docs)
    })
    .await;
    assert_eq!(docs[1].get_str("reason"), Ok("manual"));
    cluster.file(&account, RefreshReason::Manual, None).await;
    daemon.wait_for_log("forced refresh postponed", WAIT).await;
    assert_eq!(cluster.fake.token_calls(&account), 2);
}

#[tokio::test]
async fn the_daily_call_ceiling_holds_across_restarts_and_shows_in_status() {
    let cluster = Cluster::new("ceiling", 1, |a| a.expires_in(Duration::from_secs(2))).await;
    let mut config = cluster.config.clone();
    config.margin = "1s";
    config.daily_call_limit = 3;
    let cluster = Cluster { config, ..cluster };
    let account = cluster.accounts[0].id.clone();
    let mut daemon = cluster.spawn("solo");
    let line = daemon
        .wait_for_log("daily quota for the token call is spent", WAIT)
        .await;
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["calls_today"], 3);
    assert!(daemon.terminate(WAIT).success());
    assert_eq!(cluster.fake.token_calls(&account), 3);

    let again = cluster.spawn("solo-restarted");
    again
        .wait_for_log("daily quota for the token call is spent", WAIT)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        cluster.fake.token_calls(&account),
        3,
        "the ceiling is per day, not per process"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let out = cluster
        .config
        .command(&dir, &["status", "--json"])
        .output()
        .expect("status");
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let line = &status[0];
    assert_eq!(line["account"], account.as_str());
    assert_eq!(line["generation"], 3);
    assert_eq!(line["calls_today"], 3);
    assert_eq!(line["lease_holder"], "solo-restarted");
    assert_eq!(line["lease_valid"], true);
    let table = cluster
        .config
        .command(&dir, &["status"])
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&account) && table.contains("3/3"), "{table}");
}

#[tokio::test]
async fn status_shows_the_last_error() {
    let cluster = Cluster::new("status_error", 1, |a| a).await;
    let account = cluster.accounts[0].id.clone();
    cluster
        .fake
        .set_sticky_fault(&account, Some(Fault::Errcode(40164)));
    let daemon = cluster.spawn("solo");
    daemon.wait_for_log("refused by WeChat", WAIT).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let status = eventually(WAIT, "the error in status", || async {
        let out = cluster
            .config
            .command(&dir, &["status", "--json"])
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        status[0]["last_error"].as_str().map(str::to_owned)
    })
    .await;
    assert!(status.contains("40164"), "{status}");
    assert!(!status.contains(&cluster.accounts[0].secret));
}
