//! `wxtokend quota`: WeChat's own count of an account's API calls, shown
//! and cleared with the stored token (or, to clear without one, the
//! AppSecret), never by fetching a token.

use std::time::Duration;

use serde_json::Value;

use crate::support::scenario::ScenarioBuilder;
use crate::support::store::{ensure_indexes, store_token, Api};
use crate::support::{eventually, Scenario, TestAccount, TestConfig, WAIT};

const ID: &str = "wx00000000000quota";
const SECRET: &str = "quota-secret-0123456789";
const TOKEN_API: &str = "/cgi-bin/token";

fn one_account() -> ScenarioBuilder {
    Scenario::new().account(TestAccount::new(ID, SECRET))
}

/// Runs `wxtokend ARGS` (the fake WeChat keeps answering meanwhile) and
/// checks that no secret, token or ticket is in its output.
fn run(s: &Scenario, args: &[&str]) -> (i32, String, String) {
    run_as(s, &s.config, args)
}

/// The same with another configuration.
fn run_as(s: &Scenario, config: &TestConfig, args: &[&str]) -> (i32, String, String) {
    let (code, out, err) = tokio::task::block_in_place(|| config.run(args));
    for secret in s.secrets() {
        assert!(!out.contains(&secret), "stdout shows a secret: {out}");
        assert!(!err.contains(&secret), "stderr shows a secret: {err}");
    }
    (code, out, err)
}

/// The table's line for `account`: API, daily limit, used, remain.
fn table_row(out: &str, account: &str) -> (String, u32, u32, u32) {
    let line = out
        .lines()
        .find(|l| l.starts_with(account))
        .unwrap_or_else(|| panic!("no line for {account}: {out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    let number = |i: usize| cells[i].parse().unwrap_or_else(|_| panic!("{line}"));
    (cells[1].to_owned(), number(2), number(3), number(4))
}

/// The scenario's configuration without a readable secret for any account
/// (each secret variable blank): what a host without the secrets runs.
fn without_secrets(s: &Scenario) -> TestConfig {
    let mut config = s.config.clone();
    for account in &mut config.accounts {
        account.secret = " ".into();
    }
    config
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_wechats_own_count_for_the_token_api_without_calling_it() {
    const MINI: &str = "wx0000000000quotamp";
    let s = one_account()
        .account(TestAccount::new(MINI, "quota-mp-secret-01234").platform("mini_program"))
        .app_for(MINI, |app| app.daily_quota(10_000))
        .build()
        .await;
    s.wait_for_tokens(2).await;
    let calls = (s.fake.token_calls(ID), s.fake.token_calls(MINI));

    let (code, out, err) = run(&s, &["quota", ID]);
    assert_eq!(code, 0, "{err}");
    let (limit, used) = s.fake.quota(ID, TOKEN_API).expect("a token quota");
    assert_eq!((limit, used), (2000, 1));
    assert_eq!(
        table_row(&out, ID),
        (TOKEN_API.to_owned(), 2000, 1, 1999),
        "{out}"
    );

    // Needs no secret: a host without them shows the same.
    let (code, out, err) = run_as(&s, &without_secrets(&s), &["quota", MINI, "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown = json(&out);
    assert_eq!(shown["account"], MINI);
    assert_eq!(shown["api"], TOKEN_API);
    assert_eq!(shown["daily_limit"], 10_000);
    assert_eq!(shown["used"], 1);
    assert_eq!(shown["remain"], 9_999);
    assert_eq!(shown["rate_limit"], Value::Null);

    // Shown with the stored tokens: no token call, so no rotation.
    assert_eq!(
        (s.fake.token_calls(ID), s.fake.token_calls(MINI)),
        calls,
        "quota called /cgi-bin/token"
    );
    assert_eq!(
        (s.fake.quota_queries(ID), s.fake.quota_queries(MINI)),
        (1, 1)
    );
    assert_eq!(s.fake.clears(ID), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_shows_another_path_and_a_malformed_path_is_refused_before_any_call() {
    const STABLE: &str = "wx000000000quotastb";
    let s = Scenario::new()
        .account(TestAccount::new(ID, SECRET).tickets(&["jsapi"]))
        .account(TestAccount::new(STABLE, "quota-stable-secret-01").endpoint("stable_token"))
        // WeChat's own floor for force_refresh, required with stable_token.
        .config(|c| c.forced_min_interval = "30s")
        .build()
        .await;
    s.wait_for_tokens(2).await;
    s.wait_for_docs("jsapi_tickets", 1).await;

    let (code, out, err) = run(&s, &["quota", ID, "--api", "/cgi-bin/ticket/getticket"]);
    assert_eq!(code, 0, "{err}");
    let (limit, used) = s
        .fake
        .quota(ID, "/cgi-bin/ticket/getticket")
        .expect("known");
    assert_eq!(used, 1, "one ticket issued");
    assert_eq!(
        table_row(&out, ID),
        (
            "/cgi-bin/ticket/getticket".to_owned(),
            limit,
            used,
            limit - used
        )
    );

    // A stable_token account's token API is stable_token.
    let (code, out, err) = run(&s, &["quota", STABLE]);
    assert_eq!(code, 0, "{err}");
    let (limit, used) = s
        .fake
        .quota(STABLE, "/cgi-bin/stable_token")
        .expect("known");
    assert_eq!(
        table_row(&out, STABLE),
        (
            "/cgi-bin/stable_token".to_owned(),
            limit,
            used,
            limit - used
        )
    );

    let queries = s.fake.quota_queries(ID);
    for bad in ["cgi-bin/token", "https://api.weixin.qq.com/cgi-bin/token"] {
        let (code, out, err) = run(&s, &["quota", ID, "--api", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert_eq!(out, "");
        assert!(
            err.contains("must start with /") || err.contains("never use"),
            "{err}"
        );
    }
    assert_eq!(
        s.fake.quota_queries(ID),
        queries,
        "a bad path reached WeChat"
    );

    // Paths WeChat refuses: its errcode and what it means.
    for (path, errcode, meaning) in [
        ("/cgi-bin/nosuch", "76021", "--api"),
        ("/sns/jscode2session", "76022", "/sns/"),
    ] {
        let (code, out, err) = run(&s, &["quota", ID, "--api", path]);
        assert_eq!(code, 6, "{path}: {err}");
        assert_eq!(out, "");
        assert!(
            err.starts_with(&format!(
                "error: WeChat did not show the quota of {path}: WeChat errcode {errcode}"
            )) && err.contains(meaning),
            "{err}"
        );
    }
    assert_eq!(s.fake.token_calls(ID), 1, "quota called /cgi-bin/token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_with_yes_resets_the_count_so_wechat_issues_tokens_again() {
    let s = one_account().app(|app| app.daily_quota(1)).build().await;
    s.wait_for_tokens(1).await;
    // The daemon spends the day's second token call on a manual refresh: 45009.
    let (code, _, err) = run(&s, &["refresh", ID]);
    assert_eq!(code, 0, "{err}");
    s.wait_for_lease(ID, "WeChat's 45009 recorded", |l| l.exhausted(Api::Token))
        .await;
    assert_eq!(s.fake.quota(ID, TOKEN_API), Some((1, 1)));
    let calls = s.fake.token_calls(ID);

    // With a valid stored token the secret is not needed (nor read).
    let (code, out, err) = run_as(&s, &without_secrets(&s), &["quota", ID, "--clear", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!(
            "cleared today's API call counts of {ID} (clear_quota, with the stored access token)"
        )),
        "{out}"
    );
    assert_eq!(
        table_row(&out, ID),
        (TOKEN_API.to_owned(), 1, 0, 1),
        "{out}"
    );
    assert!(
        out.contains("the daemon's own counts were reset too (token)"),
        "{out}"
    );
    assert_eq!((s.fake.clears(ID), s.fake.clears_with_secret(ID)), (1, 0));
    assert_eq!(s.fake.quota(ID, TOKEN_API), Some((1, 0)));
    // The daemon's stop is lifted in MongoDB: its refresher's next permit
    // (asked again every minute while stopped) is granted.
    let lease = s.lease(ID).await.expect("lease");
    assert!(!lease.exhausted(Api::Token), "{lease:?}");
    assert_eq!(lease.calls_today(Api::Token), 0, "{lease:?}");
    assert_eq!(s.fake.token_calls(ID), calls, "quota called /cgi-bin/token");

    // WeChat issues tokens again: one call, as any caller would make it.
    let url = format!(
        "{}/cgi-bin/token?grant_type=client_credential&appid={ID}&secret={SECRET}",
        s.fake.url()
    );
    let answer: Value = reqwest::get(url)
        .await
        .expect("fake WeChat")
        .json()
        .await
        .expect("JSON");
    assert!(answer["access_token"].is_string(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_without_yes_and_without_a_terminal_refuses_and_clears_nothing() {
    let s = one_account().build().await;
    s.wait_for_tokens(1).await;
    let (code, out, err) = run(&s, &["quota", ID, "--clear"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "");
    assert_eq!(
        err,
        "error: nothing cleared: --clear asks for confirmation on a terminal; pass --yes to \
         clear without asking\n"
    );
    // --yes alone is a mistake, not a clear.
    let (code, _, err) = run(&s, &["quota", ID, "--yes"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--clear"), "{err}");
    assert_eq!(s.fake.clears(ID), 0);
    assert_eq!(s.fake.quota(ID, TOKEN_API), Some((2000, 1)));
}

/// No daemon: the only stored token expired an hour ago.
async fn with_an_expired_token() -> Scenario {
    let s = one_account().replicas(0).build().await;
    ensure_indexes(&s.db).await;
    let hour = Duration::from_secs(3600);
    store_token(&s.db, ID, "EXPIRED-TOKEN-0123456789", 3 * hour, 2 * hour).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_stored_token_show_explains_and_clear_uses_the_secret() {
    let s = with_an_expired_token().await;
    let (code, out, err) = run(&s, &["quota", ID]);
    assert_eq!(code, 5, "{err}");
    assert_eq!(out, "");
    assert!(
        err.starts_with(&format!("error: no valid access token of {ID} is stored"))
            && err.contains("never fetches one")
            && err.contains(&format!("wxtokend quota {ID} --clear")),
        "{err}"
    );
    assert_eq!(s.fake.quota_queries(ID), 0, "the expired token was used");

    // The secret is read only now, and only the clear's own: unreadable, it
    // is a configuration error that names the key.
    let (code, _, err) = run_as(&s, &without_secrets(&s), &["quota", ID, "--clear", "--yes"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("accounts[0].secret_env"), "{err}");
    assert_eq!(s.fake.clears(ID), 0);

    let (code, out, err) = run(&s, &["quota", ID, "--clear", "--yes", "--json"]);
    assert_eq!(code, 0, "{err}");
    let cleared = json(&out);
    assert_eq!(cleared["account"], ID);
    assert_eq!(cleared["cleared"], true);
    assert_eq!(cleared["via"], "clear_quota/v2");
    assert_eq!(cleared["quota"], Value::Null, "no token to show it with");
    assert_eq!((s.fake.clears(ID), s.fake.clears_with_secret(ID)), (1, 1));

    let (code, out, err) = run(&s, &["quota", ID, "--clear", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("clear_quota/v2, with the AppSecret: no valid access token stored"),
        "{out}"
    );
    assert_eq!(s.fake.clears_with_secret(ID), 2);
    assert_eq!(s.fake.token_calls(ID), 0, "quota called /cgi-bin/token");
    assert_eq!(s.fake.stable_calls(ID), (0, 0), "quota called stable_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_token_wechat_refuses_is_reported_and_a_clear_falls_back_to_the_secret() {
    let s = one_account().replicas(0).build().await;
    ensure_indexes(&s.db).await;
    // Valid by its dates, but WeChat never issued it (as if rotated away).
    let hour = Duration::from_secs(3600);
    store_token(&s.db, ID, "UNKNOWN-TOKEN-0123456789", Duration::ZERO, hour).await;

    let (code, out, err) = run(&s, &["quota", ID]);
    assert_eq!(code, 6, "{err}");
    assert_eq!(out, "");
    assert!(
        err.contains("WeChat errcode 40001") && err.contains("wxtokend refresh"),
        "{err}"
    );
    assert!(!err.contains("UNKNOWN-TOKEN"), "{err}");

    let (code, out, err) = run(&s, &["quota", ID, "--clear", "--yes", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["via"], "clear_quota/v2");
    assert_eq!((s.fake.clears(ID), s.fake.clears_with_secret(ID)), (1, 1));
    assert_eq!(s.fake.token_calls(ID), 0, "quota called /cgi-bin/token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eleventh_clear_in_a_month_is_refused_with_wechats_48006() {
    let s = with_an_expired_token().await;
    for n in 1..=10 {
        let (code, _, err) = run(&s, &["quota", ID, "--clear", "--yes"]);
        assert_eq!(code, 0, "clear {n}: {err}");
    }
    assert_eq!(s.fake.clears(ID), 10);
    let (code, out, err) = run(&s, &["quota", ID, "--clear", "--yes"]);
    assert_eq!(code, 6, "{err}");
    assert_eq!(out, "");
    assert!(
        err.starts_with(&format!(
            "error: WeChat did not clear {ID} (clear_quota/v2): WeChat errcode 48006 (this \
             month's 10 quota clears of the account are used"
        )),
        "{err}"
    );
    assert_eq!(s.fake.clears(ID), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wecom_and_unconfigured_accounts_are_refused() {
    const WECOM: &str = "ww000000000quota/1000002";
    let s = one_account()
        .account(TestAccount::new(WECOM, "quota-wecom-secret-01").platform("wecom"))
        .build()
        .await;
    s.wait_for_tokens(2).await;
    for args in [&["quota", WECOM][..], &["quota", WECOM, "--clear", "--yes"]] {
        let (code, out, err) = run(&s, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(out, "");
        assert!(
            err.contains("is a WeCom account: WeCom has no API to show or clear call quotas"),
            "{err}"
        );
    }
    let (code, _, err) = run(&s, &["quota", "wxnotconfigured00"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a configured account"), "{err}");
    assert_eq!(s.fake.clears(ID), 0);
    assert_eq!(s.fake.quota_queries(ID), 0);
}

/// The confirmation on a terminal (`script` gives the command one): "n"
/// clears nothing, "y" clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_clear_asks_first() {
    let s = one_account().build().await;
    s.wait_for_tokens(1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ask = |answer: &str| {
        let line = shell_line(&s.config.command(&dir, &["quota", ID, "--clear"]));
        let mut script = std::process::Command::new("script");
        script
            .args(["-qec", &line, "/dev/null"])
            .envs(s.config.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for a in &s.config.accounts {
            script.env(a.secret_env(), &a.secret);
        }
        let mut child = script.spawn().expect("run script");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(format!("{answer}\n").as_bytes())
                .expect("answer");
        }
        let out = child.wait_with_output().expect("script");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = tokio::task::block_in_place(|| ask("n"));
    assert!(out.contains("This uses one of the 10 clears"), "{out}");
    assert_eq!(code, 2, "{out}");
    assert_eq!(s.fake.clears(ID), 0);
    let (code, out) = tokio::task::block_in_place(|| ask("y"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cleared today's API call counts"), "{out}");
    eventually(WAIT, "the clear", || async {
        (s.fake.clears(ID) == 1).then_some(())
    })
    .await;
}

/// `cmd` as one shell line, each word quoted.
fn shell_line(cmd: &std::process::Command) -> String {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    std::iter::once(quote(cmd.get_program()))
        .chain(cmd.get_args().map(quote))
        .collect::<Vec<_>>()
        .join(" ")
}
