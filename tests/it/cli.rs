//! The command line: exit codes and messages a script or an operator sees.

use std::process::Output;
use std::time::Duration;

use crate::support::daemon::{binary, TestAccount, TestConfig};
use crate::support::mongo::TestDb;

fn account() -> TestAccount {
    TestAccount::new("wx0000000000000cli", "cli-secret-value-0123")
}

fn config(db: &TestDb) -> TestConfig {
    TestConfig::new(&db.uri, &db.name, "https://api.weixin.qq.com", &[account()])
}

fn run(mut cmd: std::process::Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run wxtokend");
    (
        status.code().expect("exit code"),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn with_file(toml: &str, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).expect("write");
    let mut cmd = std::process::Command::new(binary());
    cmd.arg("--config")
        .arg(&path)
        .args(args)
        .env_remove("WXTOKEND_CONFIG");
    run(cmd)
}

#[test]
fn help_lists_commands_and_exit_codes() {
    let (code, out, _) = run({
        let mut c = std::process::Command::new(binary());
        c.arg("--help");
        c
    });
    assert_eq!(code, 0);
    for text in [
        "run",
        "get",
        "check",
        "--config",
        "Exit codes",
        "invalid configuration",
    ] {
        assert!(out.contains(text), "--help lacks {text:?}:\n{out}");
    }
}

#[tokio::test]
async fn check_passes_with_a_valid_config_and_reachable_mongodb() {
    let db = TestDb::new("cli_check").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = run(config(&db).command(&dir, &["check"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration valid: 1 account(s)"), "{out}");
}

#[tokio::test]
async fn check_exits_4_when_mongodb_is_unreachable() {
    let db = TestDb::new("cli_unreachable").await;
    let mut cfg = config(&db);
    cfg.mongodb_uri = "mongodb://127.0.0.1:9/?directConnection=true".into();
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = run(cfg.command(&dir, &["check"]));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("MongoDB is unreachable"), "{err}");
}

/// A config file, extra environment, and the text the error must contain.
type ConfigCase = (String, Vec<(&'static str, &'static str)>, &'static str);

#[tokio::test]
async fn config_errors_exit_3_and_name_the_key() {
    let db = TestDb::new("cli_config").await;
    let good = config(&db).to_toml();
    let cases: Vec<ConfigCase> = vec![
        (
            good.clone(),
            vec![],
            "accounts[0].secret_env: environment variable WXT_SECRET_WX0000000000000CLI is not set",
        ),
        (
            good.replace("[refresh]", "[refresh]\nmargn = \"1s\""),
            vec![("WXT_SECRET_WX0000000000000CLI", "x")],
            "unknown field `margn`",
        ),
        (
            good.clone(),
            vec![
                ("WXT_SECRET_WX0000000000000CLI", "x"),
                ("WXTOKEND__REFRESH__MARGIN", "soon"),
            ],
            "refresh.margin",
        ),
        (
            good.replace("allow_http = true", "allow_http = false")
                .replace("https://api.weixin.qq.com", "http://127.0.0.1:1"),
            vec![("WXT_SECRET_WX0000000000000CLI", "x")],
            "wechat.base_url: http:// is refused",
        ),
        (
            good.split("[[accounts]]")
                .next()
                .unwrap_or_default()
                .to_string(),
            vec![],
            "accounts: no account configured",
        ),
    ];
    for (toml, env, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &toml).expect("write");
        let mut cmd = std::process::Command::new(binary());
        cmd.arg("--config").arg(&path).arg("check").envs(env);
        let (code, _, err) = run(cmd);
        assert_eq!(code, 3, "expected exit 3 for {expected:?}: {err}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let mut cmd = std::process::Command::new(binary());
    cmd.args(["--config", "/nonexistent/wxtokend.toml", "check"]);
    let (code, _, err) = run(cmd);
    assert_eq!(code, 3);
    assert!(
        err.contains("--config: /nonexistent/wxtokend.toml does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn get_prints_the_newest_valid_token_and_needs_no_secret() {
    let db = TestDb::new("cli_get").await;
    let store = db.store().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&db);
    // No secret in the environment: `get` runs on business hosts.
    let get = |args: &[&str]| {
        let mut cmd = cfg.command(&dir, args);
        cmd.env_remove(account().secret_env());
        run(cmd)
    };
    let (code, _, err) = get(&["get", &account().id]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("no access_token stored"), "{err}");

    crate::support::store_token(
        &store,
        &account().id,
        "TOKEN-FOR-CLI",
        Duration::ZERO,
        Duration::from_secs(7200),
    )
    .await;
    let (code, out, err) = get(&["get", &account().id]);
    assert_eq!((code, out.as_str()), (0, "TOKEN-FOR-CLI\n"), "{err}");

    let (code, out, _) = get(&["get", &account().id, "--json"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["access_token"], "TOKEN-FOR-CLI");
    assert_eq!(json["generation"], 1);
    assert_eq!(json["expires_in"], 7200);
    assert!(json["time_left"].as_u64().is_some_and(|t| t > 7000));
}

#[test]
fn unknown_key_in_file_fails_before_anything_runs() {
    let (code, _, err) = with_file("[mongodb]\nurl = \"x\"\n", &["get", "wx1"]);
    assert_eq!(code, 3);
    assert!(
        err.contains("mongodb") && err.contains("unknown field `url`"),
        "{err}"
    );
}
