//! The callback receiver's connection cap (`open_platform.max_connections`):
//! the listener faces the internet, so a flood of idle or slow connections
//! must be bounded; what is beyond the cap waits, and a genuine push behind
//! it is served once the flood closes.

use std::time::{Duration, Instant};

use fake_wechat::component::{Component, ComponentConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::open_platform::{callback_url, open_platform, ticket_push, COMPONENT, TICKETS};
use crate::support::{Scenario, TestAccount};

/// The smallest cap the configuration allows.
const CAP: usize = 16;

/// How long the receiver waits for a body once the headers are in
/// (`receiver.rs`): a client that holds its body back holds its slot no
/// longer.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn a_push_behind_a_full_cap_waits_and_is_served_once_the_flood_closes() {
    let config = ComponentConfig::random(COMPONENT);
    let component = Component::new(config.clone());
    let s = Scenario::new()
        .account(TestAccount::numbered(1))
        .config(open_platform(&config, true))
        .config(|c| c.extra_toml.push_str(&format!("max_connections = {CAP}\n")))
        .build()
        .await;
    let url = callback_url(s.daemon()).await;
    let (addr, path) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
        .expect("http://addr/path");

    // A flood: the cap's worth of clients that send a request's headers and
    // hold its body back.
    let flooded_at = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..CAP {
        let mut client = TcpStream::connect(addr).await.expect("connects");
        let headers =
            format!("POST /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 512\r\n\r\n");
        client.write_all(headers.as_bytes()).await.expect("sends");
        flood.push(client);
    }

    // WeChat's push comes next: the receiver says it is at its cap, and
    // does not serve the push.
    let push = ticket_push(&component, "ticket@@@behind-the-flood");
    let sending = {
        let url = url.clone();
        tokio::spawn(async move { push.send(&url).await })
    };
    let line = s
        .daemon()
        .wait_for_line("the cap reached", |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("connection cap reached"))
        })
        .await;
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["max_connections"], CAP, "{line}");
    assert_eq!(line["setting"], "open_platform.max_connections", "{line}");
    let message = line["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("open platform callback:"), "{line}");
    assert!(!sending.is_finished(), "the push was served beyond the cap");
    assert_eq!(s.db.count(TICKETS).await, 0);

    // The flood closes: the push is served and stored, before the held
    // bodies' timeout would have freed a slot.
    drop(flood);
    let answer = sending
        .await
        .expect("the sender")
        .expect("the receiver answers");
    assert!(answer.delivered(), "{answer:?}");
    assert!(
        flooded_at.elapsed() < BODY_READ_TIMEOUT,
        "served only after {:?}: the closed connections did not free their slots",
        flooded_at.elapsed()
    );
    assert_eq!(s.db.count(TICKETS).await, 1);
}
