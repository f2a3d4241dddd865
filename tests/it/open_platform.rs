//! The Open Platform callback receiver (issue 15): WeChat's pushes to the
//! platform's callback URL, sent by the fake WeChat's component model with
//! its own implementation of WeChat's message crypto.

use std::time::{Duration, SystemTime};

use fake_wechat::component::{Answer, Component, ComponentConfig, Push};
use mongodb::bson::Document;

use crate::support::store::newest_verify_ticket;
use crate::support::{eventually, Scenario, TestAccount, TestConfig, TestDaemon, WAIT};

pub(crate) const COMPONENT: &str = "wxcomponent00000001";
const COMPONENT_SECRET: &str = "component-secret-never-logged";
pub(crate) const TICKETS: &str = "component_verify_tickets";

/// `[open_platform]` for `component`, its secrets in the environment; the
/// receiver on a free port when `listen`.
pub(crate) fn open_platform(
    component: &ComponentConfig,
    listen: bool,
) -> impl FnOnce(&mut TestConfig) {
    let component = component.clone();
    move |config: &mut TestConfig| {
        config.extra_toml.push_str(&format!(
            "\n[open_platform]\ncomponent_appid = \"{}\"\n\
             component_secret_env = \"WXT_COMPONENT_SECRET\"\ntoken_env = \"WXT_COMPONENT_TOKEN\"\n\
             encoding_aes_key_env = \"WXT_COMPONENT_AES_KEY\"\nmax_body_bytes = 2048\n\
             refresh_token_key_file = \"{}\"\n{}",
            component.appid,
            refresh_token_key_file().display(),
            if listen {
                "listen = \"127.0.0.1:0\"\n"
            } else {
                ""
            },
        ));
        config.env.extend([
            ("WXT_COMPONENT_SECRET", COMPONENT_SECRET.to_owned()),
            ("WXT_COMPONENT_TOKEN", component.token.clone()),
            ("WXT_COMPONENT_AES_KEY", component.encoding_aes_key.clone()),
        ]);
    }
}

/// A fresh sealing key for authorizers' secrets, in a file of its own
/// (read once at start; a few bytes left in the temporary directory).
pub(crate) fn refresh_token_key_file() -> std::path::PathBuf {
    use base64::Engine as _;
    let key: [u8; 32] = rand::random();
    let path = std::env::temp_dir().join(format!(
        "wxtokend-test-rt-key-{:016x}",
        rand::random::<u64>()
    ));
    std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode(key)).expect("key file");
    path
}

async fn scenario(component: &ComponentConfig, replicas: usize) -> Scenario {
    Scenario::new()
        .account(TestAccount::numbered(1))
        .config(open_platform(component, true))
        .replicas(replicas)
        .build()
        .await
}

/// The receiver's callback URL, from the daemon's start-up line.
pub(crate) async fn callback_url(daemon: &TestDaemon) -> String {
    let line = daemon
        .wait_for_line("open platform callback listening", |l| {
            l["message"] == "open platform callback listening" && l["addr"].is_string()
        })
        .await;
    format!(
        "http://{}{}",
        line["addr"].as_str().expect("addr"),
        line["path"].as_str().expect("path")
    )
}

async fn send(push: &Push, url: &str) -> Answer {
    push.send(url).await.expect("the receiver answers")
}

pub(crate) fn ticket_push(component: &Component, ticket: &str) -> Push {
    let now = SystemTime::now();
    component.verify_ticket(ticket, now, now)
}

/// Every secret of the platform and `tickets`: none may be in a log line
/// or in `/metrics`.
fn secrets(s: &Scenario, component: &ComponentConfig, tickets: &[&str]) -> Vec<String> {
    let mut all = s.secrets();
    all.extend([
        COMPONENT_SECRET.to_owned(),
        component.token.clone(),
        component.encoding_aes_key.clone(),
    ]);
    all.extend(tickets.iter().map(|t| (*t).to_owned()));
    all
}

/// Neither the daemon's /metrics nor its logs show a secret or a ticket.
async fn assert_no_secret_shown(s: &Scenario, component: &ComponentConfig, tickets: &[&str]) {
    let secrets = secrets(s, component, tickets);
    let metrics = s.daemon().metrics().await;
    for secret in &secrets {
        assert!(!metrics.text().contains(secret), "{secret} in /metrics");
    }
    s.daemon().assert_logs_free_of(&secrets);
}

async fn callbacks(daemon: &TestDaemon, outcome: &str) -> f64 {
    daemon
        .metrics()
        .await
        .get(
            "wxtokend_open_platform_callbacks_total",
            &[("outcome", outcome)],
        )
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pushed_verify_ticket_is_stored_once_and_answered_success() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = scenario(&config, 1).await;
    let url = callback_url(s.daemon()).await;

    let push = ticket_push(&component, "ticket@@@first-one");
    let answer = send(&push, &url).await;
    assert!(answer.delivered(), "{answer:?}");
    let docs = s.db.docs(TICKETS).await;
    assert_eq!(docs.len(), 1, "stored before the answer: {docs:?}");
    let stored = &docs[0];
    assert_eq!(stored.get_str("component_appid").ok(), Some(COMPONENT));
    assert_eq!(stored.get_str("ticket").ok(), Some("ticket@@@first-one"));
    assert_eq!(stored.get_str("received_by").ok(), Some("test-instance"));
    let received_at = stored.get_datetime("received_at").expect("received_at");
    let lag = SystemTime::now()
        .duration_since(received_at.to_system_time())
        .unwrap_or_default();
    assert!(lag < Duration::from_secs(60), "received_at {received_at}");
    assert!(stored.get_datetime("create_time").is_ok());

    // WeChat re-delivers the same push: answered success, one document.
    let again = send(&push, &url).await;
    assert!(again.delivered(), "{again:?}");
    assert_eq!(s.db.count(TICKETS).await, 1);

    // A later push is the newest; an older one stored after it is not.
    let later = SystemTime::now() + Duration::from_secs(2);
    let newer = component.verify_ticket("ticket@@@second", later, SystemTime::now());
    assert!(send(&newer, &url).await.delivered());
    let older_time = SystemTime::now() - Duration::from_secs(120);
    let older = component.verify_ticket("ticket@@@late-old", older_time, SystemTime::now());
    assert!(send(&older, &url).await.delivered());
    let (newest, _) = newest_verify_ticket(&s.db, COMPONENT)
        .await
        .expect("a ticket");
    assert_eq!(newest, "ticket@@@second");
    assert!(newest_verify_ticket(&s.db, "wxanotherplatform")
        .await
        .is_none());

    assert_eq!(callbacks(s.daemon(), "stored").await, 4.0);
    let age = s
        .daemon()
        .metrics()
        .await
        .get(
            "wxtokend_open_platform_verify_ticket_age_seconds",
            &[("component", COMPONENT)],
        )
        .expect("the newest ticket's age");
    assert!((0.0..60.0).contains(&age), "{age}");
    let tickets = ["ticket@@@first-one", "ticket@@@second", "ticket@@@late-old"];
    assert_no_secret_shown(&s, &config, &tickets).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_pushes_store_nothing_and_say_why() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = scenario(&config, 1).await;
    let url = callback_url(s.daemon()).await;

    // A wrong signature.
    let mut bad_signature = ticket_push(&component, "ticket@@@bad-signature");
    let signature = bad_signature
        .query
        .split("msg_signature=")
        .nth(1)
        .expect("msg_signature")
        .to_owned();
    bad_signature.query = bad_signature
        .query
        .replace(&signature, &"0".repeat(signature.len()));
    let answer = send(&bad_signature, &url).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(answer.body.contains("bad_signature"), "{answer:?}");

    // Another platform's push, signed and encrypted with the same token and
    // key (a platform configured twice, say).
    let other = Component::new(ComponentConfig {
        appid: "wxotherplatform0001".into(),
        ..config.clone()
    });
    let answer = send(&ticket_push(&other, "ticket@@@other-appid"), &url).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(answer.body.contains("other_appid"), "{answer:?}");

    // A replay: a valid push sent 10 minutes ago (max_message_age 5m).
    let then = SystemTime::now() - Duration::from_secs(600);
    let stale = component.verify_ticket("ticket@@@stale", then, then);
    let answer = send(&stale, &url).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.body.contains("stale"), "{answer:?}");

    // Not a POST.
    let push = ticket_push(&component, "ticket@@@sent-with-get");
    let answer = push
        .send_as(reqwest::Method::GET, &url)
        .await
        .expect("answer");
    assert_eq!(answer.status, 405, "{answer:?}");

    // A body over max_body_bytes (2048), valid but for its size.
    let padding = "x".repeat(4096);
    let big = component.push(
        &format!(
            "<xml><AppId>{COMPONENT}</AppId><CreateTime>1</CreateTime>\
             <InfoType>component_verify_ticket</InfoType>\
             <ComponentVerifyTicket>ticket@@@too-big{padding}</ComponentVerifyTicket></xml>"
        ),
        SystemTime::now(),
    );
    let answer = send(&big, &url).await;
    assert_eq!(answer.status, 413, "{answer:?}");

    // Another path.
    let answer = push
        .send(&format!("{url}/elsewhere"))
        .await
        .expect("answer");
    assert_eq!(answer.status, 404, "{answer:?}");

    assert_eq!(s.db.count(TICKETS).await, 0);
    assert_eq!(callbacks(s.daemon(), "bad_signature").await, 1.0);
    assert_eq!(callbacks(s.daemon(), "other_appid").await, 1.0);
    assert_eq!(callbacks(s.daemon(), "stale").await, 1.0);
    assert_eq!(callbacks(s.daemon(), "stored").await, 0.0);

    // A scanner: many bad signatures make one log line a minute.
    for _ in 0..5 {
        assert_eq!(send(&bad_signature, &url).await.status, 403);
    }
    assert_eq!(callbacks(s.daemon(), "bad_signature").await, 6.0);
    let refusals = s
        .daemon()
        .logs()
        .into_iter()
        .filter(|l| {
            l["message"] == "open platform callback refused" && l["reason"] == "bad_signature"
        })
        .count();
    assert_eq!(refusals, 1, "one line per reason per minute");

    let tickets = [
        "ticket@@@bad-signature",
        "ticket@@@other-appid",
        "ticket@@@stale",
        "ticket@@@sent-with-get",
        "ticket@@@too-big",
    ];
    assert_no_secret_shown(&s, &config, &tickets).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn any_replica_receives_and_the_same_push_to_both_is_stored_once() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = scenario(&config, 2).await;
    let one = callback_url(&s.daemons[0]).await;
    let two = callback_url(&s.daemons[1]).await;

    assert!(send(&ticket_push(&component, "ticket@@@to-one"), &one)
        .await
        .delivered());
    let later = SystemTime::now() + Duration::from_secs(1);
    let to_two = component.verify_ticket("ticket@@@to-two", later, SystemTime::now());
    assert!(send(&to_two, &two).await.delivered());
    let both_time = SystemTime::now() + Duration::from_secs(2);
    let both = component.verify_ticket("ticket@@@to-both", both_time, SystemTime::now());
    let (a, b) = tokio::join!(send(&both, &one), send(&both, &two));
    assert!(a.delivered() && b.delivered(), "{a:?} {b:?}");

    let docs = s.db.docs(TICKETS).await;
    let mut by = docs
        .iter()
        .map(|d| {
            (
                d.get_str("ticket").expect("ticket").to_owned(),
                d.get_str("received_by").expect("received_by").to_owned(),
            )
        })
        .collect::<Vec<_>>();
    by.sort();
    assert_eq!(by.len(), 3, "{by:?}");
    assert_eq!(by[0], ("ticket@@@to-both".into(), by[0].1.clone()));
    assert_eq!(by[1], ("ticket@@@to-one".into(), "replica-1".into()));
    assert_eq!(by[2], ("ticket@@@to-two".into(), "replica-2".into()));
    let (newest, _) = newest_verify_ticket(&s.db, COMPONENT)
        .await
        .expect("a ticket");
    assert_eq!(newest, "ticket@@@to-both");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_receiver_is_off_unless_open_platform_listen_is_set() {
    let config = ComponentConfig::random(COMPONENT);
    let s = Scenario::new()
        .account(TestAccount::numbered(1))
        .config(open_platform(&config, false))
        .build()
        .await;
    // Started and working: a token stored, the ticket index in place.
    s.wait_for_tokens(1).await;
    let indexes = eventually(WAIT, "the ticket index", || async {
        let names =
            s.db.db()
                .collection::<mongodb::bson::Document>(TICKETS)
                .list_index_names()
                .await
                .ok()?;
        names
            .contains(&"component_appid_1_create_time_-1".to_owned())
            .then_some(names)
    })
    .await;
    assert!(indexes.len() >= 2, "{indexes:?}");
    let listening = s
        .daemon()
        .logs()
        .into_iter()
        .any(|l| l["message"] == "open platform callback listening");
    assert!(!listening, "no receiver without open_platform.listen");
    assert_eq!(
        s.db.count(TICKETS).await,
        0,
        "{:?}",
        s.db.docs(TICKETS).await
    );
}

/// The README's `wxtokend` role covers what a start with `[open_platform]`
/// asks for (its index created, the tickets inserted and read); the
/// reader's role gets nothing on the tickets.
#[test]
fn the_readme_roles_cover_the_receiver_and_keep_tickets_from_readers() {
    use mongodb::bson::doc;
    use wxtokend::store::{IndexStep, MissingPrivileges};
    let status = |role: mongodb::bson::Document| {
        doc! {
            "authInfo": {
                "authenticatedUsers": [{ "user": "wxtokend", "db": "wechat" }],
                "authenticatedUserPrivileges": role.get_array("privileges").expect("privileges").clone(),
            },
        }
    };
    let steps: Vec<IndexStep> = wxtokend::open_platform::store::indexes()
        .into_iter()
        .map(IndexStep::Create)
        .collect();
    let mut needed = wxtokend::privileges_needed(&steps);
    needed.extend(wxtokend::open_platform_privileges());
    let role = crate::mongo_auth::readme_role("wxtokend", "wechat", |_| {});
    assert_eq!(
        MissingPrivileges::compare("wechat", Some(&status(role)), &needed),
        None
    );
    let reader = crate::mongo_auth::readme_role("wxtokendReader", "wechat", |_| {});
    assert!(
        !reader.to_string().contains(TICKETS),
        "the reader role must not reach {TICKETS}: {reader}"
    );
}

/// MongoDB frozen: the push is answered 503 (WeChat pushes again), not
/// `success`; the same push once MongoDB is back is stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_mongodb_cannot_store_is_answered_503_and_stored_when_sent_again() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let mut s = Scenario::new()
        .account(TestAccount::numbered(1))
        .config(open_platform(&config, true))
        .private_mongo()
        .build()
        .await;
    let url = callback_url(s.daemon()).await;
    assert!(send(&ticket_push(&component, "ticket@@@before"), &url)
        .await
        .delivered());

    s.mongo().signal("STOP");
    let later = SystemTime::now() + Duration::from_secs(1);
    let push = component.verify_ticket("ticket@@@during", later, SystemTime::now());
    let answer = send(&push, &url).await;
    s.mongo().signal("CONT");
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(!answer.body.contains("ticket@@@"), "{answer:?}");
    assert_eq!(callbacks(s.daemon(), "store_error").await, 1.0);

    let again = send(&push, &url).await;
    assert!(again.delivered(), "{again:?}");
    let (newest, _) = newest_verify_ticket(&s.db, COMPONENT)
        .await
        .expect("a ticket");
    assert_eq!(newest, "ticket@@@during");
    s.daemon().assert_logs_free_of(&secrets(
        &s,
        &config,
        &["ticket@@@before", "ticket@@@during"],
    ));
}

/// WeChat's every-10-minutes push, on a short timer: tickets keep being
/// stored.
#[tokio::test(flavor = "multi_thread")]
async fn timed_pushes_are_stored() {
    use fake_wechat::component::TicketPusher;
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = scenario(&config, 1).await;
    let url = callback_url(s.daemon()).await;

    let pusher = TicketPusher::start(component.clone(), url.clone(), Duration::from_millis(1100));
    let sent = eventually(WAIT, "three timed pushes", || async {
        let sent = pusher.sent();
        (sent.len() >= 3).then_some(sent)
    })
    .await;
    drop(pusher);
    assert!(sent.iter().all(|(_, a)| a.delivered()), "{sent:?}");
    let stored = s.db.count(TICKETS).await;
    assert!(stored >= 3, "{stored} of {} pushes stored", sent.len());
    let tickets: Vec<String> = sent.into_iter().map(|(ticket, _)| ticket).collect();
    let tickets: Vec<&str> = tickets.iter().map(String::as_str).collect();
    s.daemon()
        .assert_logs_free_of(&secrets(&s, &config, &tickets));
}

const AUTHORIZER: &str = "wxauthorizer000001";

/// The `unauthorized` event WeChat pushes when `authorizer` withdraws.
fn unauthorized(component: &Component, authorizer: &str, create_time: SystemTime) -> Push {
    let xml = format!(
        "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{created}</CreateTime>\
         <InfoType><![CDATA[unauthorized]]></InfoType>\
         <AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid></xml>",
        appid = component.config().appid,
        created = create_time
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
    );
    component.push(&xml, create_time)
}

/// The authorizer's directory entry and secrets document, once.
async fn authorizer_docs(s: &Scenario) -> (Document, Option<Document>) {
    let id = format!("{COMPONENT}:{AUTHORIZER}");
    let find = |collection: &'static str| {
        let id = id.clone();
        async move {
            s.db.docs(collection)
                .await
                .into_iter()
                .find(|d| d.get_str("_id") == Ok(id.as_str()))
        }
    };
    let directory = find("authorizers").await.expect("in the directory");
    (directory, find("authorizer_secrets").await)
}

/// Authorization events are applied in MongoDB before WeChat is answered:
/// an authorization puts the authorizer in the directory (`pending`) with
/// its code sealed (never in clear, never logged); a withdrawal makes it
/// `unauthorized` and forgets the code; the older authorization replayed
/// after it changes nothing; a newer one brings it back.
#[tokio::test(flavor = "multi_thread")]
async fn authorization_events_are_kept_and_an_older_one_never_undoes_a_newer() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = scenario(&config, 1).await;
    let url = callback_url(s.daemon()).await;
    let now = SystemTime::now();
    let first_code = "queryauthcode@@@first-never-logged";

    let authorized = component.authorized(AUTHORIZER, first_code, now - Duration::from_secs(20));
    assert!(send(&authorized, &url).await.delivered());
    assert_eq!(callbacks(s.daemon(), "authorized").await, 1.0);
    let (directory, sealed) = authorizer_docs(&s).await;
    assert_eq!(directory.get_str("state"), Ok("pending"), "{directory}");
    assert_eq!(directory.get_str("component_appid"), Ok(COMPONENT));
    assert_eq!(directory.get_str("app_id"), Ok(AUTHORIZER));
    let sealed = sealed.expect("the code is kept");
    assert!(sealed.get_document("code").is_ok(), "{sealed}");
    assert!(
        !format!("{sealed:?}").contains(first_code),
        "the code is sealed, never stored in clear"
    );

    let withdrawn = unauthorized(&component, AUTHORIZER, now - Duration::from_secs(10));
    assert!(send(&withdrawn, &url).await.delivered());
    let (directory, sealed) = authorizer_docs(&s).await;
    assert_eq!(
        directory.get_str("state"),
        Ok("unauthorized"),
        "{directory}"
    );
    let sealed = sealed.expect("the document stays");
    assert!(sealed.get_document("code").is_err(), "forgotten: {sealed}");

    // The older authorization again (a replay, or pushes that crossed):
    // answered success, nothing changes.
    assert!(send(&authorized, &url).await.delivered());
    let (directory, sealed) = authorizer_docs(&s).await;
    assert_eq!(
        directory.get_str("state"),
        Ok("unauthorized"),
        "{directory}"
    );
    assert!(sealed.expect("kept").get_document("code").is_err());

    // A newer authorization: pending again, with its own code.
    let again_code = "queryauthcode@@@second-never-logged";
    let again = component.authorized(AUTHORIZER, again_code, now);
    assert!(send(&again, &url).await.delivered());
    let (directory, sealed) = authorizer_docs(&s).await;
    assert_eq!(directory.get_str("state"), Ok("pending"), "{directory}");
    assert!(sealed.expect("kept").get_document("code").is_ok());
    assert_eq!(callbacks(s.daemon(), "unauthorized").await, 1.0);
    assert_eq!(callbacks(s.daemon(), "authorized").await, 3.0);
    s.daemon()
        .wait_for_line("the authorization logged", |l| {
            l["authorizer"] == AUTHORIZER
        })
        .await;
    s.daemon()
        .assert_logs_free_of(&secrets(&s, &config, &[first_code, again_code]));
}

const COMPONENT_TOKENS: &str = "component_access_tokens";

/// A scenario whose fake WeChat knows the component (its secret, its token
/// endpoint); `extra` is more `[open_platform]` TOML.
async fn component_scenario(config: &ComponentConfig, extra: &'static str) -> Scenario {
    component_scenario_with(config, move |c: &mut TestConfig| {
        c.extra_toml.push_str(extra)
    })
    .await
}

/// [`component_scenario`] with any change to the daemon's configuration
/// (TOML pushed to `extra_toml` lands in `[open_platform]`).
async fn component_scenario_with(
    config: &ComponentConfig,
    change: impl FnOnce(&mut TestConfig) + 'static,
) -> Scenario {
    let s = Scenario::new()
        .account(TestAccount::numbered(1))
        .config(open_platform(config, true))
        .config(change)
        .build()
        .await;
    // Before any ticket is stored, the component's refresher only waits.
    s.fake
        .add_component(fake_wechat::AppConfig::new(COMPONENT, COMPONENT_SECRET));
    s
}

/// WeChat pushes `ticket` to the daemon's callback URL.
async fn wechat_pushes(s: &Scenario, component: &Component, url: &str, ticket: &str) {
    s.fake.pushed_verify_ticket(COMPONENT, ticket);
    let answer = send(&ticket_push(component, ticket), url).await;
    assert!(answer.delivered(), "{answer:?}");
}

/// The newest stored component token, once there is one.
async fn component_token(s: &Scenario) -> Document {
    eventually(WAIT, "a component token stored", || async {
        let mut docs = s.db.docs(COMPONENT_TOKENS).await;
        docs.sort_by_key(|d| d.get_i64("generation").unwrap_or_default());
        docs.pop()
    })
    .await
}

/// The component is a lease like an account's: its holder mints the
/// component token with the verify ticket WeChat pushed, and stores it
/// (`app_id` = the component appid) for the platform's services.
#[tokio::test(flavor = "multi_thread")]
async fn the_component_token_is_minted_with_the_pushed_ticket_and_stored() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = component_scenario(&config, "").await;
    let url = callback_url(s.daemon()).await;

    wechat_pushes(&s, &component, &url, "ticket@@@for-the-token").await;
    let stored = component_token(&s).await;
    assert_eq!(stored.get_str("app_id"), Ok(COMPONENT));
    assert_eq!(stored.get_i64("generation"), Ok(1));
    let token = stored
        .get_str("component_access_token")
        .expect("the value, in WeChat's own field name")
        .to_owned();
    assert!(
        s.fake.is_accepted(&token),
        "WeChat accepts the stored token"
    );
    assert_eq!(
        s.fake
            .calls(COMPONENT, fake_wechat::Endpoint::ComponentToken),
        1
    );
    let lease =
        s.db.docs("leases")
            .await
            .into_iter()
            .find(|l| l.get_str("_id") == Ok(&format!("open:{COMPONENT}")))
            .expect("the component's lease");
    assert_eq!(lease.get_str("holder"), Ok("test-instance"));
    // Ready: a fresh ticket, the component token, the account's token.
    eventually(WAIT, "/readyz to turn 200", || async {
        (s.daemon().get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    // Operators read it as they read an account's token (with a user
    // allowed to: the reader role is not), and `status` shows its line.
    let (code, out, err) = s
        .config
        .run(&["get", COMPONENT, "--kind", "component-access-token"]);
    assert_eq!((code, out.trim()), (0, token.as_str()), "{err}");
    let (code, out, err) = s.config.run(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let lines: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let line = lines
        .as_array()
        .expect("an array")
        .iter()
        .find(|l| l["kind"] == "component_access_token")
        .unwrap_or_else(|| panic!("the component's line: {out}"));
    assert_eq!(line["account"], COMPONENT);
    assert_eq!(line["generation"], 1);
    assert_eq!(line["api"], "component_token");
    assert_eq!(line["lease_holder"], "test-instance");
    let mut secrets = secrets(&s, &config, &["ticket@@@for-the-token"]);
    secrets.push(token);
    let metrics = s.daemon().metrics().await;
    for secret in &secrets {
        assert!(
            !metrics.text().contains(secret.as_str()),
            "{secret} in /metrics"
        );
    }
    s.daemon().assert_logs_free_of(&secrets);
}

/// WeChat refuses the newest ticket (61005, expired): it is marked and
/// never used again, and the next push brings the token.
#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_wechat_refuses_is_marked_and_the_next_push_is_used() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = component_scenario(&config, "").await;
    let url = callback_url(s.daemon()).await;

    s.fake.set_ticket_life(COMPONENT, Duration::ZERO);
    wechat_pushes(&s, &component, &url, "ticket@@@too-old").await;
    let rejected = eventually(WAIT, "the ticket marked rejected", || async {
        s.db.docs(TICKETS).await.into_iter().find(|d| {
            d.get_str("ticket") == Ok("ticket@@@too-old") && d.contains_key("rejected_at")
        })
    })
    .await;
    assert!(rejected.get_datetime("expires_at").is_ok(), "{rejected}");
    let calls = s
        .fake
        .calls(COMPONENT, fake_wechat::Endpoint::ComponentToken);
    assert_eq!(s.db.count(COMPONENT_TOKENS).await, 0);

    s.fake
        .set_ticket_life(COMPONENT, fake_wechat::VERIFY_TICKET_LIFE);
    // A second apart: CreateTime is in seconds, one push per second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    wechat_pushes(&s, &component, &url, "ticket@@@fresh").await;
    let stored = component_token(&s).await;
    let token = stored.get_str("component_access_token").expect("value");
    assert!(s.fake.is_accepted(token));
    // The refused ticket was not tried again in between.
    let after = s
        .fake
        .calls(COMPONENT, fake_wechat::Endpoint::ComponentToken);
    assert_eq!(after, calls + 1, "one call with the fresh ticket");
}

/// No ticket comes (the callback URL is wrong, WeChat stopped pushing):
/// after `start_push_ticket_after` the holder asks WeChat to push one, and
/// the ticket WeChat then pushes brings the token.
#[tokio::test(flavor = "multi_thread")]
async fn with_no_ticket_for_long_the_holder_asks_wechat_to_push_one() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = component_scenario(&config, "start_push_ticket_after = \"10s\"\n").await;
    let url = callback_url(s.daemon()).await;

    eventually(WAIT, "api_start_push_ticket called", || async {
        (s.fake.start_push_requests(COMPONENT) >= 1).then_some(())
    })
    .await;
    assert_eq!(s.db.count(COMPONENT_TOKENS).await, 0);
    s.daemon()
        .wait_for_line("the request logged", |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("asked WeChat to push a component_verify_ticket"))
        })
        .await;
    wechat_pushes(&s, &component, &url, "ticket@@@asked-for").await;
    component_token(&s).await;
}

const AUTHORIZER_TOKENS: &str = "authorizer_access_tokens";

/// The stored tokens of AUTHORIZER through COMPONENT, oldest first.
async fn authorizer_tokens(s: &Scenario) -> Vec<Document> {
    let mut docs: Vec<Document> = s
        .db
        .docs(AUTHORIZER_TOKENS)
        .await
        .into_iter()
        .filter(|d| {
            d.get_str("app_id") == Ok(AUTHORIZER) && d.get_str("component_appid") == Ok(COMPONENT)
        })
        .collect();
    docs.sort_by_key(|d| d.get_i64("generation").unwrap_or_default());
    docs
}

async fn secrets_version(s: &Scenario) -> i64 {
    let (_, sealed) = authorizer_docs(s).await;
    sealed
        .and_then(|d| wxtokend_reader::document::integer(&d, "version").ok())
        .unwrap_or_default()
}

/// An account authorizes the platform: the authorization event's code is
/// exchanged by the authorizer's lease holder (`api_query_auth`), its
/// refresh token kept sealed, and its token stored with the component's
/// appid, then refreshed from the refresh token before each expiry, one
/// call per refresh; when WeChat rotates the refresh token, each new one
/// replaces the stored one (no 61023). When it withdraws, its lease is
/// given back and no call is made for it any more.
#[tokio::test(flavor = "multi_thread")]
async fn an_authorizer_gets_its_token_kept_fresh_until_it_withdraws() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = component_scenario_with(&config, |c: &mut TestConfig| c.margin = "8s").await;
    let url = callback_url(s.daemon()).await;
    wechat_pushes(&s, &component, &url, "ticket@@@for-authorizers").await;
    component_token(&s).await;

    let code = s.fake.authorize(COMPONENT, AUTHORIZER);
    s.fake
        .set_behaviour(AUTHORIZER, fake_wechat::Endpoint::AuthorizerToken, |b| {
            b.expires_in = Duration::from_secs(12)
        });
    let event = component.authorized(AUTHORIZER, &code, SystemTime::now());
    assert!(send(&event, &url).await.delivered());

    let first = eventually(WAIT, "the authorizer's first token", || async {
        authorizer_tokens(&s).await.into_iter().next()
    })
    .await;
    assert_eq!(first.get_i64("generation"), Ok(1));
    let value = first
        .get_str("authorizer_access_token")
        .expect("value")
        .to_owned();
    assert!(s.fake.is_accepted(&value), "WeChat accepts it");
    let (directory, sealed) = authorizer_docs(&s).await;
    assert_eq!(directory.get_str("state"), Ok("active"), "{directory}");
    let sealed = sealed.expect("secrets");
    assert!(
        sealed.get_document("code").is_err(),
        "the code is used: {sealed}"
    );
    let refresh_token = s
        .fake
        .refresh_token_of(COMPONENT, AUTHORIZER)
        .expect("authorized");
    assert!(
        !format!("{sealed:?}").contains(&refresh_token),
        "sealed, never in clear"
    );
    // Business code reads it with the one query, naming the component.
    let read = wxtokend_reader::Credentials::new(s.db.db())
        .newest_valid_owned(
            wxtokend_reader::CredentialKind::AuthorizerAccessToken,
            &wxtokend_reader::Owner::authorizer(COMPONENT.into(), AUTHORIZER.into()),
            SystemTime::now(),
        )
        .await
        .expect("read")
        .expect("a valid token");
    assert_eq!(read.secret(), value);

    // Refreshed from the refresh token, one call per generation.
    let third = eventually(WAIT, "two refreshes", || async {
        authorizer_tokens(&s)
            .await
            .into_iter()
            .find(|d| d.get_i64("generation") == Ok(3))
    })
    .await;
    assert!(s
        .fake
        .is_accepted(third.get_str("authorizer_access_token").expect("value")));
    let calls = s
        .fake
        .calls(AUTHORIZER, fake_wechat::Endpoint::AuthorizerToken);
    let generations = authorizer_tokens(&s).await.len() as u32;
    assert!(
        calls < generations,
        "{calls} calls for {generations} generations (the first from the code)"
    );
    assert_eq!(
        secrets_version(&s).await,
        1,
        "WeChat echoes the refresh token: never rewritten"
    );

    // WeChat rotates it at every call from now on, the replaced one dead
    // at once: each new one must be stored, or the next call gets 61023.
    s.fake.set_refresh_token_grace(COMPONENT, Duration::ZERO);
    s.fake.rotate_refresh_tokens(COMPONENT, AUTHORIZER, true);
    let before = authorizer_tokens(&s).await.len();
    eventually(
        WAIT,
        "three rotations and the refresh after them",
        || async {
            let rotated = secrets_version(&s).await >= 4;
            (rotated && authorizer_tokens(&s).await.len() >= before + 4).then_some(())
        },
    )
    .await;
    let (directory, _) = authorizer_docs(&s).await;
    assert_eq!(
        directory.get_str("state"),
        Ok("active"),
        "no 61023: {directory}"
    );

    // It withdraws: the lease is given back, and nothing is called for it.
    s.fake.unauthorize(COMPONENT, AUTHORIZER);
    let withdrawn = unauthorized(&component, AUTHORIZER, SystemTime::now());
    assert!(send(&withdrawn, &url).await.delivered());
    let lease_id = format!("open:{COMPONENT}:{AUTHORIZER}");
    eventually(WAIT, "the authorizer's lease given back", || async {
        let lease =
            s.db.docs("leases")
                .await
                .into_iter()
                .find(|l| l.get_str("_id") == Ok(lease_id.as_str()))?;
        let expires_at = lease.get_datetime("expires_at").ok()?.to_system_time();
        (expires_at <= SystemTime::now()).then_some(())
    })
    .await;
    let calls = s
        .fake
        .calls(AUTHORIZER, fake_wechat::Endpoint::AuthorizerToken);
    // Long enough for another refresh had it gone on (12 s lives, 8 s margin).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        s.fake
            .calls(AUTHORIZER, fake_wechat::Endpoint::AuthorizerToken),
        calls,
        "no call for an authorizer that withdrew"
    );
    let mut secrets = secrets(&s, &config, &["ticket@@@for-authorizers", &code]);
    secrets.push(refresh_token);
    secrets.push(value);
    s.daemon().assert_logs_free_of(&secrets);
}

/// A withdrawal cut off between its two writes (answered 503) and sent
/// again by WeChat is applied whole: the authorizer is `unauthorized` and
/// its code forgotten, whichever write the cut came after.
#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawal_cut_off_between_its_writes_is_completed_when_sent_again() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = Scenario::new()
        .account(TestAccount::numbered(1))
        .config(open_platform(&config, true))
        .config(|c: &mut TestConfig| {
            c.env
                .push(("FAILPOINTS", "receiver-between-writes=1*return->off".into()));
        })
        .build()
        .await;
    let url = callback_url(s.daemon()).await;
    let now = SystemTime::now();
    let authorized = component.authorized(
        AUTHORIZER,
        "queryauthcode@@@cut",
        now - Duration::from_secs(10),
    );
    assert!(send(&authorized, &url).await.delivered());

    let withdrawn = unauthorized(&component, AUTHORIZER, now);
    let cut = send(&withdrawn, &url).await;
    assert_eq!(cut.status, 503, "{cut:?}");
    let again = send(&withdrawn, &url).await;
    assert!(again.delivered(), "{again:?}");
    let (directory, sealed) = authorizer_docs(&s).await;
    assert_eq!(
        directory.get_str("state"),
        Ok("unauthorized"),
        "{directory}"
    );
    let sealed = sealed.expect("the document stays");
    assert!(sealed.get_document("code").is_err(), "forgotten: {sealed}");
}

/// An account authorizes the platform again while its token is held (its
/// old refresh token dies at WeChat): the holder exchanges the new code at
/// once, not at the next scheduled refresh two hours later.
#[tokio::test(flavor = "multi_thread")]
async fn a_reauthorization_of_a_held_authorizer_is_exchanged_at_once() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = component_scenario(&config, "").await;
    let url = callback_url(s.daemon()).await;
    wechat_pushes(&s, &component, &url, "ticket@@@reauthorize").await;
    component_token(&s).await;

    let code = s.fake.authorize(COMPONENT, AUTHORIZER);
    let first = component.authorized(
        AUTHORIZER,
        &code,
        SystemTime::now() - Duration::from_secs(5),
    );
    assert!(send(&first, &url).await.delivered());
    eventually(WAIT, "the first token", || async {
        authorizer_tokens(&s).await.into_iter().next()
    })
    .await;

    let again = s.fake.authorize(COMPONENT, AUTHORIZER);
    let second = component.authorized(AUTHORIZER, &again, SystemTime::now());
    assert!(send(&second, &url).await.delivered());
    let newer = eventually(WAIT, "the new code exchanged", || async {
        authorizer_tokens(&s)
            .await
            .into_iter()
            .find(|d| d.get_i64("generation") == Ok(2))
    })
    .await;
    assert!(s
        .fake
        .is_accepted(newer.get_str("authorizer_access_token").expect("value")));
    let (directory, sealed) = authorizer_docs(&s).await;
    assert_eq!(directory.get_str("state"), Ok("active"), "{directory}");
    assert!(
        sealed.expect("secrets").get_document("code").is_err(),
        "exchanged"
    );
}

/// Accounts that authorized the platform before wxtokend heard of them (no
/// event reached it) are found in WeChat's authorizer list when the
/// component's lease is taken, with their refresh tokens, and get their
/// tokens like any other authorizer.
#[tokio::test(flavor = "multi_thread")]
async fn authorizers_known_only_to_wechats_list_are_discovered_and_served() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = component_scenario(&config, "").await;
    let listed = [
        "wxlisted0000000001",
        "wxlisted0000000002",
        "wxlisted0000000003",
    ];
    for appid in listed {
        s.fake.authorize_silently(COMPONENT, appid);
    }
    let url = callback_url(s.daemon()).await;
    wechat_pushes(&s, &component, &url, "ticket@@@discovery").await;

    let tokens = eventually(WAIT, "every listed authorizer's token", || async {
        let docs = s.db.docs(AUTHORIZER_TOKENS).await;
        let served: Vec<Document> = listed
            .iter()
            .filter_map(|a| docs.iter().find(|d| d.get_str("app_id") == Ok(*a)).cloned())
            .collect();
        (served.len() == listed.len()).then_some(served)
    })
    .await;
    for token in &tokens {
        let value = token.get_str("authorizer_access_token").expect("value");
        assert!(s.fake.is_accepted(value), "{token}");
        assert_eq!(token.get_str("component_appid"), Ok(COMPONENT));
    }
    let directory = s.db.docs("authorizers").await;
    assert_eq!(directory.len(), listed.len());
    assert!(
        directory.iter().all(|d| d.get_str("state") == Ok("active")),
        "{directory:?}"
    );
    let mut secrets = secrets(&s, &config, &["ticket@@@discovery"]);
    for appid in listed {
        secrets.extend(s.fake.refresh_token_of(COMPONENT, appid));
    }
    s.daemon().assert_logs_free_of(&secrets);
}

/// `open_platform.authorizers` lists the authorizers to keep and
/// `authorizer_tickets` their tickets: each listed authorizer gets its
/// JS-SDK and card tickets, fetched with its own token and stored with the
/// component's appid; an authorizer left out of the list gets no lease and
/// no call, though WeChat's list shows it.
#[tokio::test(flavor = "multi_thread")]
async fn only_listed_authorizers_are_kept_each_with_its_tickets() {
    use futures_util::TryStreamExt;
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let kept = ["wxlisted0000000001", "wxlisted0000000002"];
    let left_out = "wxlisted0000000003";
    // Kept too, but WeChat gives it no ticket (a Mini Program: 48001).
    let mini_program = "wxlisted0000000004";
    let s = component_scenario(
        &config,
        "authorizers = [\"wxlisted0000000001\", \"wxlisted0000000002\", \"wxlisted0000000004\"]\n\
         authorizer_tickets = [\"jsapi\", \"wx_card\"]\n",
    )
    .await;
    for appid in kept.iter().chain([&left_out, &mini_program]) {
        s.fake.authorize_silently(COMPONENT, appid);
    }
    s.fake.set_sticky_fault_on(
        mini_program,
        fake_wechat::Endpoint::GetTicket,
        Some(fake_wechat::Fault::Errcode(48001)),
    );
    let url = callback_url(s.daemon()).await;
    wechat_pushes(&s, &component, &url, "ticket@@@listed").await;

    for (collection, ticket_type) in [
        ("authorizer_jsapi_tickets", "jsapi"),
        ("authorizer_wx_card_tickets", "wx_card"),
    ] {
        let tickets = eventually(WAIT, "each kept authorizer's ticket", || async {
            let docs = s.db.docs(collection).await;
            let found: Vec<Document> = kept
                .iter()
                .filter_map(|a| docs.iter().find(|d| d.get_str("app_id") == Ok(*a)).cloned())
                .collect();
            (found.len() == kept.len()).then_some(found)
        })
        .await;
        for (ticket, appid) in tickets.iter().zip(kept) {
            assert_eq!(ticket.get_str("component_appid"), Ok(COMPONENT), "{ticket}");
            let value = ticket.get_str("ticket").expect("the ticket's value");
            assert_eq!(
                s.fake
                    .issued_tickets(appid, ticket_type)
                    .last()
                    .map(String::as_str),
                Some(value),
                "the ticket WeChat issued to {appid}"
            );
        }
    }
    for appid in kept {
        let tokens = s.db.docs(AUTHORIZER_TOKENS).await;
        assert!(
            tokens.iter().any(|d| d.get_str("app_id") == Ok(appid)),
            "{appid}'s token"
        );
    }
    // Ready with every kept authorizer's token and tickets (the Mini
    // Program with its token only: it never had a ticket); a ticket that
    // expired is named (the left-out authorizer never is).
    readyz_until(&s, 200, &[]).await;
    assert!(s
        .db
        .docs("authorizer_jsapi_tickets")
        .await
        .iter()
        .all(|d| d.get_str("app_id") != Ok(mini_program)));
    let jsapi = s.db.db().collection::<Document>("authorizer_jsapi_tickets");
    let filter = mongodb::bson::doc! { "app_id": kept[0] };
    let valid: Vec<Document> = jsapi
        .find(filter.clone())
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("collect");
    let expired = mongodb::bson::DateTime::from_system_time(SystemTime::now());
    jsapi
        .update_many(
            filter,
            mongodb::bson::doc! { "$set": { "expires_at": expired } },
        )
        .await
        .expect("expire");
    let name = format!("{COMPONENT}:{} authorizer_jsapi_ticket", kept[0]);
    readyz_until(&s, 503, &[&name]).await;
    for ticket in valid {
        jsapi
            .replace_one(
                mongodb::bson::doc! { "_id": ticket.get_object_id("_id").expect("_id") },
                &ticket,
            )
            .await
            .expect("put it back");
    }
    readyz_until(&s, 200, &[]).await;

    // Discovery saw it (it is in the directory), and kept it out.
    let directory = s.db.docs("authorizers").await;
    assert!(
        directory
            .iter()
            .any(|d| d.get_str("app_id") == Ok(left_out)),
        "{directory:?}"
    );
    assert_eq!(
        s.fake
            .calls(left_out, fake_wechat::Endpoint::AuthorizerToken),
        0,
        "no call for an authorizer left out"
    );
    let leases = s.db.docs("leases").await;
    let lease_of = |appid: &str| format!("open:{COMPONENT}:{appid}");
    assert!(
        leases
            .iter()
            .all(|d| d.get_str("_id") != Ok(&lease_of(left_out))),
        "no lease for {left_out}: {leases:?}"
    );
    assert!(
        kept.iter()
            .all(|a| leases.iter().any(|d| d.get_str("_id") == Ok(&lease_of(a)))),
        "{leases:?}"
    );
    // Each of the authorizers' collections has its unique generation
    // index (the fence's last line, and the business query's) and a TTL.
    for kind in ["access_tokens", "jsapi_tickets", "wx_card_tickets"] {
        let collection = format!("authorizer_{kind}");
        let names =
            s.db.db()
                .collection::<Document>(&collection)
                .list_index_names()
                .await
                .expect("list indexes");
        for index in [
            "component_appid_1_app_id_1_generation_-1",
            "component_appid_1_app_id_1_expires_at_-1",
            "expires_at_ttl",
        ] {
            assert!(
                names.iter().any(|n| n == index),
                "{collection}: {index} missing from {names:?}"
            );
        }
    }
    let mut secrets = secrets(&s, &config, &["ticket@@@listed"]);
    for appid in kept.iter().chain([&left_out]) {
        secrets.extend(s.fake.refresh_token_of(COMPONENT, appid));
        secrets.extend(s.fake.issued_tickets(appid, "jsapi"));
    }
    s.daemon().assert_logs_free_of(&secrets);
}

/// WeChat stops accepting an authorizer's refresh token with no event
/// (61023: the stored one is stale): the authorizer is marked
/// `needs_reauthorization`, the component's holder reads WeChat's list at
/// once (not at its next hourly pass) and stores the current refresh token,
/// and the authorizer's holder mints with it right away (not after
/// `permanent_error_retry`): its token is served again within seconds.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_refresh_token_is_repaired_from_wechats_list_at_once() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = component_scenario_with(&config, |c: &mut TestConfig| {
        c.margin = "8s";
        // Only the repair may bring the next call.
        c.permanent_error_retry = "10m";
        // A pass sooner than a sixth of this (10 s) is not made.
        c.extra_toml.push_str("discovery_interval = \"1m\"\n");
    })
    .await;
    s.fake.authorize_silently(COMPONENT, AUTHORIZER);
    s.fake
        .set_behaviour(AUTHORIZER, fake_wechat::Endpoint::AuthorizerToken, |b| {
            b.expires_in = Duration::from_secs(12)
        });
    let url = callback_url(s.daemon()).await;
    wechat_pushes(&s, &component, &url, "ticket@@@repair").await;
    authorizer_generation(&s, 1).await;
    let stale = s
        .fake
        .refresh_token_of(COMPONENT, AUTHORIZER)
        .expect("authorized");

    s.fake.invalidate_refresh_token(COMPONENT, AUTHORIZER);
    let current = s
        .fake
        .refresh_token_of(COMPONENT, AUTHORIZER)
        .expect("still authorized");
    assert_ne!(current, stale);
    eventually(WAIT, "61023 noted in the directory", || async {
        let (directory, _) = authorizer_docs(&s).await;
        (directory.get_str("state") == Ok("needs_reauthorization")).then_some(())
    })
    .await;
    let refused_at = authorizer_tokens(&s).await.len();
    let repaired = eventually(
        WAIT,
        "a token minted with WeChat's current refresh token",
        || async {
            let (directory, _) = authorizer_docs(&s).await;
            let active = directory.get_str("state") == Ok("active");
            let tokens = authorizer_tokens(&s).await;
            let newest = tokens.last().filter(|_| tokens.len() > refused_at)?;
            active.then(|| newest.clone())
        },
    )
    .await;
    let value = repaired.get_str("authorizer_access_token").expect("value");
    assert!(s.fake.is_accepted(value), "WeChat accepts it");
    // By the early pass, not the regular one a minute after the first.
    assert!(
        s.daemon()
            .logs()
            .iter()
            .any(|l| l["message"]
                == "discovery: a refresh token was refused; reading WeChat's list now"),
        "an early discovery pass"
    );
    let mut secrets = secrets(&s, &config, &["ticket@@@repair"]);
    secrets.extend([stale, current, value.to_owned()]);
    s.daemon().assert_logs_free_of(&secrets);
}

/// Reads an authorizer's credential of `kind` as a shell script does.
fn get_authorizer(s: &Scenario, kind: &str, json: bool) -> (i32, String, String) {
    let mut args = vec!["get", AUTHORIZER, "--kind", kind, "--component", COMPONENT];
    if json {
        args.push("--json");
    }
    s.config.run(&args)
}

/// The stored token of generation `generation`, once there is one.
async fn authorizer_generation(s: &Scenario, generation: i64) -> Document {
    eventually(WAIT, &format!("generation {generation}"), || async {
        authorizer_tokens(s)
            .await
            .into_iter()
            .find(|d| d.get_i64("generation") == Ok(generation))
    })
    .await
}

/// Business code and operators reach an authorizer's token as they reach
/// an account's, naming the platform: `wxtokend get --component` prints it
/// (and refuses an authorizer kind without the component: a usage error),
/// a report of the token as rejected, or `wxtokend refresh --component`,
/// reaches the holder of that authorizer's lease, which fetches a new
/// generation, one call per request.
#[tokio::test(flavor = "multi_thread")]
async fn an_authorizers_token_is_read_and_refreshed_on_request_naming_its_component() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = component_scenario(&config, "").await;
    s.fake.authorize_silently(COMPONENT, AUTHORIZER);
    let url = callback_url(s.daemon()).await;
    wechat_pushes(&s, &component, &url, "ticket@@@readers").await;
    let first = authorizer_generation(&s, 1).await;
    let value = first
        .get_str("authorizer_access_token")
        .expect("value")
        .to_owned();

    let (code, out, err) = get_authorizer(&s, "authorizer-access-token", false);
    assert_eq!((code, out.trim()), (0, value.as_str()), "{err}");
    let (code, out, err) = get_authorizer(&s, "authorizer-access-token", true);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["app_id"], AUTHORIZER);
    assert_eq!(json["component_appid"], COMPONENT);
    assert_eq!(json["kind"], "authorizer_access_token");
    assert_eq!(json["authorizer_access_token"], value.as_str());
    assert_eq!(json["generation"], 1);

    // An authorizer kind needs its component; an account's kind takes none.
    let (code, _, err) = s
        .config
        .run(&["get", AUTHORIZER, "--kind", "authorizer-access-token"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--component COMPONENT_APPID"), "{err}");
    let (code, _, err) = s.config.run(&["get", AUTHORIZER, "--component", COMPONENT]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--kind access-token is not one"), "{err}");

    // A service reports the token WeChat rejected: a new generation.
    let reader = wxtokend_reader::Reader::connect(&s.db.uri, &s.db.name)
        .await
        .expect("reader");
    let token = reader
        .latest_authorizer(&COMPONENT.into(), &AUTHORIZER.into())
        .await
        .expect("a valid token");
    assert_eq!(token.secret(), value);
    reader.report_invalid(&token).await.expect("report");
    let second = authorizer_generation(&s, 2).await;
    assert_eq!(second.get_str("reason"), Ok("reported_invalid"));
    let second_value = second.get_str("authorizer_access_token").expect("value");
    assert!(s.fake.is_accepted(second_value));

    // An operator asks for one: another.
    let (code, out, err) = s.config.run(&[
        "refresh",
        AUTHORIZER,
        "--kind",
        "authorizer-access-token",
        "--component",
        COMPONENT,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{AUTHORIZER} (component {COMPONENT})")),
        "{out}"
    );
    let third = authorizer_generation(&s, 3).await;
    assert_eq!(third.get_str("reason"), Ok("manual"));
    // The old generation reported again is ignored: it is no longer the newest.
    reader.report_invalid(&token).await.expect("report");
    let (code, out, err) = get_authorizer(&s, "authorizer-access-token", false);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        third.get_str("authorizer_access_token").expect("value")
    );
    eventually(WAIT, "every request handled", || async {
        (s.db.count("refresh_requests").await == 0).then_some(())
    })
    .await;
    assert_eq!(
        s.fake
            .calls(AUTHORIZER, fake_wechat::Endpoint::AuthorizerToken),
        3,
        "one call per generation"
    );
    assert_eq!(authorizer_tokens(&s).await.len(), 3);
    let mut secrets = secrets(&s, &config, &["ticket@@@readers"]);
    secrets.extend(s.fake.refresh_token_of(COMPONENT, AUTHORIZER));
    secrets.extend(
        authorizer_tokens(&s)
            .await
            .iter()
            .filter_map(|d| d.get_str("authorizer_access_token").ok().map(str::to_owned)),
    );
    s.daemon().assert_logs_free_of(&secrets);
}

/// A page of an authorizer is signed with the authorizer's own JS-SDK
/// ticket (the one WeChat issued to it through the platform), for its own
/// appid: `wxtokend sign --component` prints what the page's `wx.config`
/// takes.
#[tokio::test(flavor = "multi_thread")]
async fn an_authorizers_page_is_signed_with_its_own_jsapi_ticket() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = component_scenario(&config, "authorizer_tickets = [\"jsapi\"]\n").await;
    s.fake.authorize_silently(COMPONENT, AUTHORIZER);
    let url = callback_url(s.daemon()).await;
    wechat_pushes(&s, &component, &url, "ticket@@@sign").await;
    let stored = eventually(WAIT, "the authorizer's jsapi ticket", || async {
        s.db.docs("authorizer_jsapi_tickets")
            .await
            .into_iter()
            .find(|d| d.get_str("app_id") == Ok(AUTHORIZER))
    })
    .await;
    let ticket = stored.get_str("ticket").expect("value").to_owned();
    assert_eq!(
        s.fake.issued_tickets(AUTHORIZER, "jsapi").last(),
        Some(&ticket),
        "the ticket WeChat issued to the authorizer"
    );

    let page = "https://shop.example.com/item?id=42#reviews";
    let (code, out, err) = s
        .config
        .run(&["sign", AUTHORIZER, page, "--component", COMPONENT]);
    assert_eq!(code, 0, "{err}");
    let signed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(signed["appId"], AUTHORIZER);
    let nonce = signed["nonceStr"].as_str().expect("nonceStr");
    let timestamp = signed["timestamp"].as_u64().expect("timestamp");
    assert_eq!(
        signed["signature"],
        wxtokend_reader::jssdk::sign(&ticket, nonce, timestamp, page),
        "{out}"
    );
    let (code, out, err) = get_authorizer(&s, "authorizer-jsapi-ticket", false);
    assert_eq!((code, out.trim()), (0, ticket.as_str()), "{err}");

    // Without the component it is an account's page, and that account
    // (not configured here) has no ticket; WeCom's ticket has no component.
    let (code, _, err) = s.config.run(&["sign", AUTHORIZER, page]);
    assert_eq!(code, 5, "{err}");
    let (code, _, err) = s.config.run(&[
        "sign",
        AUTHORIZER,
        page,
        "--component",
        COMPONENT,
        "--kind",
        "agent-config-ticket",
    ]);
    assert_eq!(code, 2, "{err}");
    let mut secrets = secrets(&s, &config, &["ticket@@@sign"]);
    secrets.push(ticket);
    secrets.extend(s.fake.refresh_token_of(COMPONENT, AUTHORIZER));
    s.daemon().assert_logs_free_of(&secrets);
}

/// `/readyz`: its status and JSON body.
async fn readyz(daemon: &TestDaemon) -> (u16, serde_json::Value) {
    let (status, body) = daemon.get("/readyz").await;
    let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// What `/readyz` names in `without_valid_token`, sorted.
fn without_valid(body: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = body["without_valid_token"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Polls `/readyz` until it answers `status` naming exactly `names`, and
/// returns that body.
async fn readyz_until(s: &Scenario, status: u16, names: &[&str]) -> serde_json::Value {
    let mut names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    names.sort();
    let what = format!("/readyz {status} naming {names:?}");
    eventually(WAIT, &what, || async {
        let (answered, body) = readyz(s.daemon()).await;
        (answered == status && without_valid(&body) == names).then_some(body)
    })
    .await
}

/// A verify ticket written as the README tells a service that receives
/// the callback itself (no `expires_at`: 12 hours from `create_time`),
/// received at `at`.
async fn external_ticket(s: &Scenario, ticket: &str, at: SystemTime) {
    use mongodb::bson::{doc, DateTime};
    s.db.db()
        .collection::<Document>(TICKETS)
        .insert_one(doc! {
            "component_appid": COMPONENT,
            "ticket": ticket,
            "create_time": DateTime::from_system_time(at),
            "received_at": DateTime::from_system_time(at),
            "received_by": "a-service-of-our-own",
        })
        .await
        .expect("insert a ticket");
}

/// `/readyz` with `[open_platform]`: not ready before WeChat's first push,
/// naming the verify ticket and the component token; ready once a ticket
/// came and the component's and the active authorizer's tokens are stored;
/// not ready while that authorizer has no valid token (named
/// `component:authorizer kind`), nor when the only ticket was received
/// longer ago than `ticket_fresh_within`; ready again with a fresh ticket
/// written by a service of the operator's own.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_wants_a_fresh_ticket_the_component_token_and_active_authorizers_tokens() {
    use mongodb::bson::doc;
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    // Long enough for a slow machine to reach the ready steps well
    // within it after the only push.
    let s = component_scenario(&config, "ticket_fresh_within = \"5m\"\n").await;
    let url = callback_url(s.daemon()).await;
    let ticket_name = format!("{COMPONENT} component_verify_ticket");
    let token_name = format!("{COMPONENT} component_access_token");

    let body = readyz_until(&s, 503, &[&ticket_name, &token_name]).await;
    let why = body["verify_ticket"].as_str().unwrap_or_default();
    assert!(why.contains("no verify ticket stored yet"), "{body}");

    wechat_pushes(&s, &component, &url, "ticket@@@readiness").await;
    component_token(&s).await;
    let code = s.fake.authorize(COMPONENT, AUTHORIZER);
    let event = component.authorized(AUTHORIZER, &code, SystemTime::now());
    assert!(send(&event, &url).await.delivered());
    let token = eventually(WAIT, "the authorizer's token", || async {
        authorizer_tokens(&s).await.into_iter().next()
    })
    .await;
    let body = readyz_until(&s, 200, &[]).await;
    assert_eq!(body, serde_json::json!({ "ready": true }));

    // The active authorizer's token is gone (its history expired, say).
    let tokens = s.db.db().collection::<Document>(AUTHORIZER_TOKENS);
    tokens
        .delete_many(doc! { "app_id": AUTHORIZER })
        .await
        .expect("delete");
    let authorizer_name = format!("{COMPONENT}:{AUTHORIZER} authorizer_access_token");
    readyz_until(&s, 503, &[&authorizer_name]).await;
    tokens.insert_one(&token).await.expect("put it back");
    readyz_until(&s, 200, &[]).await;

    // The only ticket is older than ticket_fresh_within (5m).
    let tickets = s.db.db().collection::<Document>(TICKETS);
    tickets.delete_many(doc! {}).await.expect("delete");
    let old = SystemTime::now() - Duration::from_secs(600);
    external_ticket(&s, "ticket@@@external-old", old).await;
    let body = readyz_until(&s, 503, &[&ticket_name]).await;
    let why = body["verify_ticket"].as_str().unwrap_or_default();
    assert!(
        why.contains("open_platform.ticket_fresh_within (5m)") && why.contains("arrived 6"),
        "{body}"
    );
    // A service of the operator's own that leaves `received_at` out: the
    // ticket arrived at its CreateTime.
    tickets
        .insert_one(doc! {
            "component_appid": COMPONENT,
            "ticket": "ticket@@@external-new",
            "create_time": mongodb::bson::DateTime::from_system_time(SystemTime::now()),
        })
        .await
        .expect("insert a ticket");
    readyz_until(&s, 200, &[]).await;

    let value = token
        .get_str("authorizer_access_token")
        .expect("value")
        .to_owned();
    let mut secrets = secrets(
        &s,
        &config,
        &[
            "ticket@@@readiness",
            "ticket@@@external-old",
            "ticket@@@external-new",
            &code,
        ],
    );
    secrets.push(value);
    s.daemon().assert_logs_free_of(&secrets);
}

const WITHDRAWN: &str = "wxauthorizer000002";
const REFUSED: &str = "wxauthorizer000003";

/// `status` and the metrics show the platform: the verify ticket's age,
/// the authorizers by state (one active, one whose refresh token WeChat
/// refused, one that withdrew), and a line for each that is not active or
/// has no valid token, never a ticket or a token.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_metrics_show_the_ticket_and_the_authorizers_by_state() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = component_scenario_with(&config, |c: &mut TestConfig| c.margin = "8s").await;
    let url = callback_url(s.daemon()).await;
    wechat_pushes(&s, &component, &url, "ticket@@@status").await;
    component_token(&s).await;

    let mut codes = Vec::new();
    for authorizer in [AUTHORIZER, WITHDRAWN, REFUSED] {
        let code = s.fake.authorize(COMPONENT, authorizer);
        if authorizer == REFUSED {
            // Its tokens live 12 s (refreshed 8 s before): its next
            // refresh meets the refused refresh token soon.
            s.fake
                .set_behaviour(REFUSED, fake_wechat::Endpoint::AuthorizerToken, |b| {
                    b.expires_in = Duration::from_secs(12)
                });
        }
        // Seconds before the withdrawal below (CreateTime counts seconds:
        // an event of the same second would be older or as old).
        let before = SystemTime::now() - Duration::from_secs(10);
        let event = component.authorized(authorizer, &code, before);
        assert!(send(&event, &url).await.delivered());
        codes.push(code);
    }
    eventually(WAIT, "a token for each authorizer", || async {
        let docs = s.db.docs(AUTHORIZER_TOKENS).await;
        let served = [AUTHORIZER, WITHDRAWN, REFUSED]
            .iter()
            .all(|a| docs.iter().any(|d| d.get_str("app_id") == Ok(*a)));
        served.then_some(())
    })
    .await;
    s.fake.unauthorize(COMPONENT, WITHDRAWN);
    let withdrawn = unauthorized(&component, WITHDRAWN, SystemTime::now());
    assert!(send(&withdrawn, &url).await.delivered());
    s.fake.invalidate_refresh_token(COMPONENT, REFUSED);

    // The metrics: every replica's reading of the directory, and the
    // ticket's age.
    let state = |m: &crate::support::metrics::Metrics, state: &str| {
        m.get(
            "wxtokend_open_platform_authorizers",
            &[("component", COMPONENT), ("state", state)],
        )
    };
    let m = s
        .daemon()
        .wait_metrics("the authorizers by state", |m| {
            state(m, "active") == Some(1.0)
                && state(m, "needs_reauthorization") == Some(1.0)
                && state(m, "unauthorized") == Some(1.0)
                && state(m, "pending") == Some(0.0)
        })
        .await;
    let age = m
        .get(
            "wxtokend_open_platform_verify_ticket_age_seconds",
            &[("component", COMPONENT)],
        )
        .expect("the ticket's age");
    assert!((0.0..120.0).contains(&age), "{age}");

    // status --json: the component's line carries the platform's block;
    // REFUSED is listed once its last token expired.
    let block = eventually(WAIT, "status naming REFUSED without a token", || async {
        let (code, out, err) = s.config.run(&["status", "--json"]);
        assert_eq!(code, 0, "{err}");
        let lines: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        let line = lines
            .as_array()
            .expect("an array")
            .iter()
            .find(|l| l["kind"] == "component_access_token")
            .cloned()
            .expect("the component's line");
        let block = line["open_platform"].clone();
        let refused = block["not_ok"]
            .as_array()?
            .iter()
            .find(|a| a["app_id"] == REFUSED)?
            .clone();
        (refused["without_valid"] == serde_json::json!(["authorizer_access_token"]))
            .then_some(block)
    })
    .await;
    assert_eq!(block["component"], COMPONENT);
    assert_eq!(
        block["authorizers"],
        serde_json::json!({
            "active": 1, "needs_reauthorization": 1, "pending": 0, "unauthorized": 1
        })
    );
    assert_eq!(block["verify_ticket"]["state"], "usable");
    let age = block["verify_ticket"]["age_s"].as_u64().expect("an age");
    assert!(age < 120, "{block}");
    let not_ok: Vec<(&str, &str)> = block["not_ok"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|a| {
            (
                a["app_id"].as_str().unwrap_or_default(),
                a["state"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        not_ok,
        [
            (REFUSED, "needs_reauthorization"),
            (WITHDRAWN, "unauthorized")
        ],
        "{block}"
    );
    assert_eq!(block["not_ok"][0]["state_reason"], "errcode:61023");

    // The same for people.
    let (code, text, err) = s.config.run(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains(&format!("OPEN PLATFORM {COMPONENT}")),
        "{text}"
    );
    assert!(
        text.contains("verify ticket:   usable, received "),
        "{text}"
    );
    assert!(text.contains("component token: generation 1, "), "{text}");
    assert!(
        text.contains("1 active, 1 needs_reauthorization, 0 pending, 1 unauthorized"),
        "{text}"
    );
    let listed = |appid: &str| text.lines().any(|l| l.starts_with(appid));
    assert!(listed(REFUSED) && listed(WITHDRAWN), "{text}");
    assert!(!listed(AUTHORIZER), "the active one is fine: {text}");

    let mut secrets = secrets(&s, &config, &["ticket@@@status"]);
    secrets.extend(codes);
    for doc in s.db.docs(AUTHORIZER_TOKENS).await {
        secrets.extend(doc.get_str("authorizer_access_token").map(str::to_owned));
    }
    for doc in s.db.docs(COMPONENT_TOKENS).await {
        secrets.extend(doc.get_str("component_access_token").map(str::to_owned));
    }
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "{secret} in status");
        assert!(!m.text().contains(secret.as_str()), "{secret} in /metrics");
    }
    s.daemon().assert_logs_free_of(&secrets);
}
