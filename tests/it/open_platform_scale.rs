//! The Open Platform at scale (issue 15): many authorizers over three
//! replicas, short token lives, a replica killed mid-run. Every sample (one
//! query) must find every authorizer's newest token valid and accepted by
//! WeChat, each refresh one call, and refresh tokens WeChat rotates stored
//! without loss. Sizes from the environment for longer runs by hand:
//! `WXT_OP_AUTHORIZERS` (default 1000), `WXT_OP_RUN_S` (180),
//! `WXT_OP_LIFE_S` (120).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use fake_wechat::component::{Component, ComponentConfig};
use fake_wechat::{AppConfig, Endpoint};
use mongodb::bson::{doc, DateTime, Document};

use crate::support::{eventually, Scenario, TestAccount, TestConfig};

const COMPONENT: &str = "wxcomponentscale001";
const COMPONENT_SECRET: &str = "component-secret-scale";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn authorizer(n: u64) -> String {
    format!("wxauthorizer{n:06}")
}

/// `[open_platform]` with the receiver on a free port and a sealing key.
fn open_platform(config: &ComponentConfig) -> impl FnOnce(&mut TestConfig) {
    let config = config.clone();
    move |c: &mut TestConfig| {
        let path = crate::open_platform::refresh_token_key_file();
        c.extra_toml.push_str(&format!(
            "\n[open_platform]\ncomponent_appid = \"{COMPONENT}\"\n\
             component_secret_env = \"WXT_COMPONENT_SECRET\"\ntoken_env = \"WXT_COMPONENT_TOKEN\"\n\
             encoding_aes_key_env = \"WXT_COMPONENT_AES_KEY\"\nlisten = \"127.0.0.1:0\"\n\
             refresh_token_key_file = \"{}\"\n",
            path.display()
        ));
        c.env.extend([
            ("WXT_COMPONENT_SECRET", COMPONENT_SECRET.to_owned()),
            ("WXT_COMPONENT_TOKEN", config.token.clone()),
            ("WXT_COMPONENT_AES_KEY", config.encoding_aes_key.clone()),
        ]);
    }
}

/// Each replica's callback URL, from its start-up line.
async fn callback_urls(s: &Scenario) -> Vec<String> {
    let mut urls = Vec::new();
    for daemon in &s.daemons {
        urls.push(crate::open_platform::callback_url(daemon).await);
    }
    urls
}

/// One sample, one query: the newest valid token of each authorizer.
async fn newest_valid(s: &Scenario) -> HashMap<String, (i64, String)> {
    let now = DateTime::from_system_time(SystemTime::now());
    let docs: Vec<Document> =
        s.db.try_find(
            "authorizer_access_tokens",
            doc! { "component_appid": COMPONENT, "expires_at": { "$gt": now } },
        )
        .await
        .unwrap_or_default();
    let mut newest: HashMap<String, (i64, String)> = HashMap::new();
    for d in docs {
        let (Ok(app_id), Ok(generation), Ok(token)) = (
            d.get_str("app_id"),
            d.get_i64("generation"),
            d.get_str("authorizer_access_token"),
        ) else {
            continue;
        };
        let entry = newest
            .entry(app_id.to_owned())
            .or_insert((0, String::new()));
        if generation > entry.0 {
            *entry = (generation, token.to_owned());
        }
    }
    newest
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_authorizers_over_three_replicas_stay_valid_through_a_kill() {
    let n = env_or("WXT_OP_AUTHORIZERS", 1000);
    let run = Duration::from_secs(env_or("WXT_OP_RUN_S", 180));
    let life = Duration::from_secs(env_or("WXT_OP_LIFE_S", 120));
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = Scenario::new()
        .account(TestAccount::numbered(1))
        .config(open_platform(&config))
        .config(move |c: &mut TestConfig| {
            c.margin = "60s";
            // A killed replica's leases are taken within about 25 s,
            // well inside the margin.
            c.lease_duration = "20s";
            c.lease_renew_interval = "4s";
        })
        .replicas(3)
        .build()
        .await;
    s.fake
        .add_component(AppConfig::new(COMPONENT, COMPONENT_SECRET));
    let urls = callback_urls(&s).await;
    s.fake.pushed_verify_ticket(COMPONENT, "ticket@@@scale");
    let now = SystemTime::now();
    let push = component.verify_ticket("ticket@@@scale", now, now);
    assert!(push.send(&urls[0]).await.expect("sent").delivered());

    let started = Instant::now();
    for i in 0..n {
        let appid = authorizer(i);
        let code = s.fake.authorize(COMPONENT, &appid);
        s.fake
            .set_behaviour(&appid, Endpoint::AuthorizerToken, |b| b.expires_in = life);
        // A tenth of them have WeChat rotate the refresh token every call.
        if i % 10 == 0 {
            s.fake.rotate_refresh_tokens(COMPONENT, &appid, true);
        }
        let event = component.authorized(&appid, &code, SystemTime::now());
        let url = &urls[(i as usize) % urls.len()];
        let answer = event.send(url).await.expect("sent");
        assert!(answer.delivered(), "{answer:?}");
    }
    let pushed = started.elapsed();
    eventually(
        Duration::from_secs(300),
        "every authorizer's first token",
        || async { (newest_valid(&s).await.len() as u64 == n).then_some(()) },
    )
    .await;
    let first_tokens = started.elapsed();

    let run_started = Instant::now();
    let mut samples = 0;
    let mut gaps = 0;
    let mut refused = 0;
    let mut killed = false;
    while run_started.elapsed() < run {
        if !killed && run_started.elapsed() >= run / 3 {
            s.daemons[1].signal("KILL");
            killed = true;
        }
        let newest = newest_valid(&s).await;
        samples += 1;
        gaps += n - newest.len() as u64;
        refused += newest
            .values()
            .filter(|(_, token)| !s.fake.is_accepted(token))
            .count();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // One call per refresh: the first token came from the code's exchange.
    let newest = newest_valid(&s).await;
    let mut cycles = 0;
    let mut calls = 0;
    let mut over = Vec::new();
    for i in 0..n {
        let appid = authorizer(i);
        let generation = newest.get(&appid).map_or(0, |(g, _)| *g);
        let made = s.fake.calls(&appid, Endpoint::AuthorizerToken) as i64;
        cycles += generation;
        calls += made;
        if made > generation + 1 {
            over.push((appid, made, generation));
        }
    }
    let needs_reauthorization =
        s.db.try_find("authorizers", doc! { "state": { "$ne": "active" } })
            .await
            .expect("the directory");
    let rss: Vec<u64> = s.daemons.iter().filter_map(|d| d.rss_kib()).collect();
    println!(
        "open platform scale: {n} authorizers, 3 replicas (one killed at {:?}), lives {life:?}: \
         events pushed in {pushed:?}, every first token after {first_tokens:?}; {samples} samples \
         over {run:?}: {gaps} gaps, {refused} tokens WeChat refused; {cycles} generations, {calls} \
         api_authorizer_token calls; {} authorizers not active; RSS of the live replicas {rss:?} KiB",
        run / 3,
        needs_reauthorization.len(),
    );
    assert_eq!(gaps, 0, "an authorizer without a valid token at a sample");
    assert_eq!(refused, 0, "a stored newest token WeChat refuses");
    assert!(
        over.is_empty(),
        "more calls than refreshes: {:?}",
        &over[..over.len().min(5)]
    );
    assert!(
        needs_reauthorization.is_empty(),
        "rotated refresh tokens lost (61023): {needs_reauthorization:?}"
    );
}
