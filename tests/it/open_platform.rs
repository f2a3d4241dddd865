//! The Open Platform callback receiver (issue 15): WeChat's pushes to the
//! platform's callback URL, sent by the fake WeChat's component model with
//! its own implementation of WeChat's message crypto.

use std::time::{Duration, SystemTime};

use fake_wechat::component::{Answer, Component, ComponentConfig, Push};

use crate::support::store::newest_verify_ticket;
use crate::support::{eventually, Scenario, TestAccount, TestConfig, TestDaemon, WAIT};

const COMPONENT: &str = "wxcomponent00000001";
const COMPONENT_SECRET: &str = "component-secret-never-logged";
const TICKETS: &str = "component_verify_tickets";

/// `[open_platform]` for `component`, its secrets in the environment; the
/// receiver on a free port when `listen`.
fn open_platform(component: &ComponentConfig, listen: bool) -> impl FnOnce(&mut TestConfig) {
    let component = component.clone();
    move |config: &mut TestConfig| {
        config.extra_toml.push_str(&format!(
            "\n[open_platform]\ncomponent_appid = \"{}\"\n\
             component_secret_env = \"WXT_COMPONENT_SECRET\"\ntoken_env = \"WXT_COMPONENT_TOKEN\"\n\
             encoding_aes_key_env = \"WXT_COMPONENT_AES_KEY\"\nmax_body_bytes = 2048\n{}",
            component.appid,
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

async fn scenario(component: &ComponentConfig, replicas: usize) -> Scenario {
    Scenario::new()
        .account(TestAccount::numbered(1))
        .config(open_platform(component, true))
        .replicas(replicas)
        .build()
        .await
}

/// The receiver's callback URL, from the daemon's start-up line.
async fn callback_url(daemon: &TestDaemon) -> String {
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

fn ticket_push(component: &Component, ticket: &str) -> Push {
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
    let created = s
        .daemon()
        .metrics()
        .await
        .get(
            "wxtokend_open_platform_verify_ticket_create_time_seconds",
            &[],
        )
        .expect("the newest ticket's CreateTime");
    let expected = later
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert_eq!(
        created, expected as f64,
        "the newest, not the last received"
    );
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

/// WeChat's every-10-minutes push, on a short timer, and an authorization
/// event: tickets keep being stored; the event is answered `success`,
/// logged with the authorizer's appid (never the code) and not acted on.
#[tokio::test(flavor = "multi_thread")]
async fn timed_pushes_are_stored_and_authorization_events_only_acknowledged() {
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

    let code = "queryauthcode@@@never-logged-code";
    let event = component.authorized("wxauthorizer000001", code, SystemTime::now());
    let answer = send(&event, &url).await;
    assert!(answer.delivered(), "{answer:?}");
    assert_eq!(callbacks(s.daemon(), "acknowledged").await, 1.0);
    // A timed push cut off by the drop may still be stored: look for the
    // code, not at the count.
    let docs = s.db.docs(TICKETS).await;
    assert!(
        docs.iter().all(|d| d.get_str("ticket") != Ok(code)),
        "an event stores no ticket"
    );
    let line = s
        .daemon()
        .wait_for_line("the authorization logged", |l| {
            l["authorizer"] == "wxauthorizer000001"
        })
        .await;
    assert_eq!(line["level"], "INFO", "{line}");
    let mut secrets = secrets(&s, &config, &[code]);
    secrets.extend(sent.into_iter().map(|(ticket, _)| ticket));
    s.daemon().assert_logs_free_of(&secrets);
}
