//! `fake-wechat LISTEN APPID=SECRET... [--expires-in SECS] [--overlap SECS]`:
//! runs the fake WeChat for the local sandbox until Ctrl-C.

use std::time::Duration;

use fake_wechat::{AppConfig, FakeWechat};

fn usage() -> ! {
    eprintln!("usage: fake-wechat LISTEN APPID=SECRET... [--expires-in SECS] [--overlap SECS]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| usage());
    let mut apps = Vec::new();
    let (mut expires_in, mut overlap) = (7200, 300);
    while let Some(arg) = args.next() {
        let mut number = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match arg.as_str() {
            "--expires-in" => expires_in = number(),
            "--overlap" => overlap = number(),
            pair => match pair.split_once('=') {
                Some((id, secret)) => apps.push((id.to_string(), secret.to_string())),
                None => usage(),
            },
        }
    }
    let addr = listen.parse().unwrap_or_else(|_| usage());
    let fake = FakeWechat::start_on(addr).await.unwrap_or_else(|e| {
        eprintln!("fake-wechat: cannot listen on {listen}: {e}");
        std::process::exit(1)
    });
    for (id, secret) in &apps {
        fake.add_app(
            AppConfig::new(id, secret)
                .expires_in(Duration::from_secs(expires_in))
                .overlap(Duration::from_secs(overlap)),
        );
    }
    eprintln!(
        "fake-wechat listening on {} ({} app(s), tokens live {expires_in}s, overlap {overlap}s)",
        fake.url(),
        apps.len()
    );
    let _ = tokio::signal::ctrl_c().await;
}
