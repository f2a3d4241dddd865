//! `fake-wechat LISTEN APPID=SECRET... [--expires-in SECS] [--overlap SECS]
//! [--component APPID=SECRET,TOKEN,AESKEY [--push-to URL]... [--push-every SECS]]`:
//! runs the fake WeChat for the local sandbox until Ctrl-C. With
//! `--component`, an Open Platform component whose verify tickets are
//! pushed to each `--push-to` callback URL (round-robin) every
//! `--push-every` seconds (600, as WeChat).

use std::time::Duration;

use fake_wechat::component::ComponentConfig;
use fake_wechat::{AppConfig, FakeWechat};

const USAGE: &str = "usage: fake-wechat LISTEN APPID=SECRET... [--expires-in SECS] \
     [--overlap SECS] [--component APPID=SECRET,TOKEN,AESKEY [--push-to URL]... \
     [--push-every SECS]]";

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}

/// `APPID=SECRET,TOKEN,AESKEY`: the component and its message settings.
fn component(arg: &str) -> Option<(ComponentConfig, String)> {
    let (appid, rest) = arg.split_once('=')?;
    let mut parts = rest.split(',');
    let (secret, token, key) = (parts.next()?, parts.next()?, parts.next()?);
    let config = ComponentConfig {
        appid: appid.to_owned(),
        token: token.to_owned(),
        encoding_aes_key: key.to_owned(),
    };
    (parts.next().is_none() && key.len() == 43).then(|| (config, secret.to_owned()))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| usage());
    let mut apps = Vec::new();
    let (mut expires_in, mut overlap, mut push_every) = (7200, 300, 600);
    let (mut platform, mut push_to) = (None, Vec::new());
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--expires-in" => expires_in = value().parse().unwrap_or_else(|_| usage()),
            "--overlap" => overlap = value().parse().unwrap_or_else(|_| usage()),
            "--push-every" => push_every = value().parse().unwrap_or_else(|_| usage()),
            "--component" => platform = Some(component(&value()).unwrap_or_else(|| usage())),
            "--push-to" => push_to.push(value()),
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
    if let Some((messages, secret)) = platform {
        fake.add_component(AppConfig::new(&messages.appid, &secret));
        if !push_to.is_empty() {
            fake.set_push_targets(&messages, push_to.clone());
            fake.start_pushes(&messages.appid, Duration::from_secs(push_every.max(1)));
        }
        eprintln!(
            "fake-wechat: component {} pushing verify tickets to {push_to:?} every {push_every}s",
            messages.appid
        );
    }
    let _ = tokio::signal::ctrl_c().await;
}
