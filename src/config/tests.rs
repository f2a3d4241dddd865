//! Loading and validation, key by key (one test per rule, hence the length).

use super::*;
use crate::wechat::Api;
use secrecy::ExposeSecret;
use std::collections::HashMap;

struct MapEnv(HashMap<String, String>);

impl EnvSource for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxtokend.toml");
    std::fs::write(&path, toml).expect("write config");
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let overrides = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .source(Some(vars.clone()));
    Settings::load_with(Some(&path), overrides, &MapEnv(vars), Scope::Daemon)
}

const ONE_ACCOUNT: &str = r#"
    [[accounts]]
    id = "wx0001"
    platform = "official_account"
    secret_env = "WX_SECRET"
"#;

fn keys(err: ConfigError) -> Vec<String> {
    err.problems().iter().map(|p| p.key.clone()).collect()
}

#[test]
fn defaults_plus_one_account_load() {
    let s = load(ONE_ACCOUNT, &[("WX_SECRET", "s3cr3t")]).expect("valid");
    assert_eq!(s.mongodb.database, "wechat");
    assert_eq!(s.refresh.margin, Duration::from_secs(600));
    assert_eq!(s.mongodb.history_retention, Duration::from_secs(7 * 86400));
    assert_eq!(s.accounts.len(), 1);
    assert_eq!(s.accounts[0].secret.expose_secret(), "s3cr3t");
    assert!(!s.daemon.instance_id.is_empty());
}

#[test]
fn environment_overrides_file() {
    let s = load(
        ONE_ACCOUNT,
        &[
            ("WX_SECRET", "x"),
            ("WXTOKEND__MONGODB__DATABASE", "other"),
            ("WXTOKEND__REFRESH__MARGIN", "90s"),
        ],
    )
    .expect("valid");
    assert_eq!(s.mongodb.database, "other");
    assert_eq!(s.refresh.margin, Duration::from_secs(90));
}

#[test]
fn debug_output_never_shows_the_secret() {
    let s = load(ONE_ACCOUNT, &[("WX_SECRET", "very-secret-value")]).expect("valid");
    assert!(!format!("{s:?}").contains("very-secret-value"));
}

#[test]
fn missing_secret_names_the_key_and_the_fix() {
    let err = load(ONE_ACCOUNT, &[]).expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("accounts[0].secret_env"), "{text}");
    assert!(text.contains("WX_SECRET is not set"), "{text}");
}

#[test]
fn unknown_key_is_named() {
    let err = load(
        &format!("{ONE_ACCOUNT}\n[mongodb]\nurl = \"x\"\n"),
        &[("WX_SECRET", "x")],
    )
    .expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("mongodb"), "{text}");
    assert!(text.contains("unknown field `url`"), "{text}");
}

#[test]
fn call_ceilings_are_per_api_and_the_old_single_one_names_its_replacement() {
    let settings = load(
        &format!("{ONE_ACCOUNT}\n[refresh.daily_call_limits]\njsapi_ticket = 50\n"),
        &[("WX_SECRET", "x")],
    )
    .expect("valid");
    let limits = &settings.refresh.daily_call_limits;
    assert_eq!(limits.of(Api::JsapiTicket), 50);
    assert_eq!(limits.of(Api::Token), 1800, "the documented default");
    assert_eq!(limits.of(Api::StableToken), 10000, "the documented default");

    let err = load(
        &format!("{ONE_ACCOUNT}\n[refresh]\ndaily_call_limit = 100\n"),
        &[("WX_SECRET", "x")],
    )
    .expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("refresh.daily_call_limits.token"), "{text}");
    assert_eq!(keys(err), ["refresh.daily_call_limit"]);

    let err = load(
        &format!("{ONE_ACCOUNT}\n[refresh.daily_call_limits]\nwecom_token = 0\n"),
        &[("WX_SECRET", "x")],
    )
    .expect_err("must fail");
    assert_eq!(keys(err), ["refresh.daily_call_limits.wecom_token"]);
}

#[test]
fn a_syntax_error_names_the_place_but_never_quotes_the_line() {
    let err = load(
        "[mongodb]\nuri = \"mongodb://user:hunter2-password@db/x\n",
        &[],
    )
    .expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("line 2"), "{text}");
    assert!(text.contains("wxtokend.toml"), "{text}");
    assert!(!text.contains("hunter2"), "the line was quoted: {text}");
}

#[test]
fn bad_duration_is_named() {
    let err = load(
        &format!("{ONE_ACCOUNT}\n[refresh]\nmargin = \"ten minutes\"\n"),
        &[("WX_SECRET", "x")],
    )
    .expect_err("must fail");
    assert_eq!(keys(err), vec!["refresh.margin"]);
}

#[test]
fn empty_account_list_is_rejected() {
    let err = load("", &[]).expect_err("must fail");
    assert_eq!(keys(err), vec!["accounts"]);
}

#[test]
fn duplicate_ids_are_rejected() {
    let twice = format!("{ONE_ACCOUNT}{ONE_ACCOUNT}");
    let err = load(&twice, &[("WX_SECRET", "x")]).expect_err("must fail");
    assert_eq!(keys(err), vec!["accounts[1].id"]);
}

#[test]
fn inline_secret_is_rejected() {
    let toml = r#"
        [[accounts]]
        id = "wx0001"
        platform = "mini_program"
        secret = "oops"
        secret_env = "WX_SECRET"
    "#;
    let err = load(toml, &[("WX_SECRET", "x")]).expect_err("must fail");
    assert!(!err.to_string().contains("oops"));
    assert_eq!(keys(err), vec!["accounts[0].secret"]);
}

#[test]
fn plain_http_needs_allow_http() {
    let toml = format!("{ONE_ACCOUNT}\n[wechat]\nbase_url = \"http://127.0.0.1:9\"\n");
    let err = load(&toml, &[("WX_SECRET", "x")]).expect_err("must fail");
    assert_eq!(keys(err), vec!["wechat.base_url"]);
    let allowed = format!("{toml}allow_http = true\n");
    load(&allowed, &[("WX_SECRET", "x")]).expect("allowed");
}

#[test]
fn secret_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "from-file\n").expect("write");
    let toml = format!(
        "[[accounts]]\nid = \"wx1\"\nplatform = \"official_account\"\nsecret_file = {:?}\n",
        secret.display().to_string()
    );
    let s = load(&toml, &[]).expect("valid");
    assert_eq!(s.accounts[0].secret.expose_secret(), "from-file");
}

/// `[mongodb]` with `uri_file` set to `path`, and one account.
fn with_uri_file(path: &std::path::Path) -> String {
    format!(
        "[mongodb]\nuri = \"mongodb://inline:pw@127.0.0.1/\"\nuri_file = {:?}\n{ONE_ACCOUNT}",
        path.display().to_string()
    )
}

fn load_scoped(toml: &str, scope: Scope) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxtokend.toml");
    std::fs::write(&path, toml).expect("write config");
    let vars = HashMap::from([("WX_SECRET".to_owned(), "x".to_owned())]);
    let overrides = Environment::with_prefix(ENV_PREFIX).source(Some(HashMap::new()));
    Settings::load_with(Some(&path), overrides, &MapEnv(vars), scope)
}

#[test]
fn uri_file_replaces_uri_trimmed_for_every_command_that_reaches_mongodb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mongodb_uri");
    std::fs::write(&file, "mongodb://wxtokend:from-file@db1:27017/?tls=true\n").expect("write");
    for scope in [Scope::Daemon, Scope::StoreOnly] {
        let s = load_scoped(&with_uri_file(&file), scope).expect("valid");
        assert_eq!(
            s.mongodb.uri.expose_secret(),
            "mongodb://wxtokend:from-file@db1:27017/?tls=true"
        );
        assert_eq!(s.mongodb.uri_file.as_deref(), Some(file.as_path()));
        assert_eq!(s.mongodb.uri_key(), "mongodb.uri_file");
    }
    // `health` and `config` read no secret, not even this file.
    std::fs::remove_file(&file).expect("remove");
    let s = load_scoped(&with_uri_file(&file), Scope::Local).expect("not read");
    assert_eq!(s.mongodb.uri_file.as_deref(), Some(file.as_path()));
}

#[test]
fn an_empty_uri_file_is_not_set() {
    let s = load_scoped(
        &format!("[mongodb]\nuri_file = \"\"\n{ONE_ACCOUNT}"),
        Scope::Daemon,
    )
    .expect("valid");
    assert_eq!(s.mongodb.uri.expose_secret(), "mongodb://127.0.0.1:27017");
    assert_eq!(s.mongodb.uri_file, None);
    assert_eq!(s.mongodb.uri_key(), "mongodb.uri");
}

#[test]
fn uri_file_problems_name_the_file_and_never_its_contents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mongodb_uri");
    for (contents, expected) in [
        (None, "cannot read "),
        (Some(" \n"), "is empty; write the connection string"),
        (
            Some("postgres://user:s3cret-pass@db/\n"),
            "(not shown, as it may hold a password) must start with mongodb:// or mongodb+srv://",
        ),
    ] {
        match contents {
            Some(text) => std::fs::write(&file, text).expect("write"),
            None => {
                let _ = std::fs::remove_file(&file);
            }
        }
        for scope in [Scope::Daemon, Scope::StoreOnly] {
            let err = load_scoped(&with_uri_file(&file), scope).expect_err("must fail");
            let problems = err.problems();
            assert_eq!(problems.len(), 1, "{err}");
            assert_eq!(problems[0].key, "mongodb.uri_file");
            assert!(
                problems[0].message.contains(&file.display().to_string()),
                "{err}"
            );
            assert!(problems[0].message.contains(expected), "{err}");
            assert!(!err.to_string().contains("s3cret-pass"), "{err}");
        }
    }
}

#[test]
fn effective_configuration_shows_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxtokend.toml");
    std::fs::write(
        &path,
        format!(
            "[mongodb]\nuri = \"mongodb://u:s3cret-pass@db/?authSource=wechat\"\n{ONE_ACCOUNT}"
        ),
    )
    .expect("write");
    let shown = effective(Some(&path)).expect("valid");
    assert_eq!(
        shown["mongodb"]["uri"],
        "mongodb://u:****@db/?authSource=wechat"
    );
    assert_eq!(shown["accounts"][0]["secret_env"], "WX_SECRET");
    assert_eq!(shown["accounts"][0]["endpoint"], "token");
    assert!(!shown.to_string().contains("s3cret-pass"));
    std::fs::write(&path, with_uri_file(&dir.path().join("absent"))).expect("write");
    let shown = effective(Some(&path)).expect("valid without reading uri_file");
    assert!(shown["mongodb"].get("uri").is_none(), "{shown}");
    assert!(!shown.to_string().contains("pw@"), "{shown}");
}

#[test]
fn store_only_scope_needs_no_account_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxtokend.toml");
    std::fs::write(&path, ONE_ACCOUNT).expect("write config");
    let overrides = Environment::with_prefix(ENV_PREFIX).source(Some(HashMap::new()));
    let s = Settings::load_with(
        Some(&path),
        overrides,
        &MapEnv(HashMap::new()),
        Scope::StoreOnly,
    )
    .expect("no secret needed");
    assert!(s.accounts.is_empty());
    assert_eq!(s.configured.len(), 1);
}

fn load_store_only(toml: &str) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxtokend.toml");
    std::fs::write(&path, toml).expect("write config");
    let overrides = Environment::with_prefix(ENV_PREFIX).source(Some(HashMap::new()));
    Settings::load_with(
        Some(&path),
        overrides,
        &MapEnv(HashMap::new()),
        Scope::StoreOnly,
    )
}

#[test]
fn store_only_scope_keeps_every_account_without_its_secret() {
    // One secret unset, one never named, one in a file that does not exist:
    // none of it matters to a command that only reads MongoDB.
    let toml = r#"
        [[accounts]]
        id = "wx0001"
        platform = "official_account"
        endpoint = "stable_token"
        secret_env = "UNSET"
        tickets = ["jsapi", "wx_card"]
        [[accounts]]
        id = "ww0123/1000002"
        platform = "wecom"
        tickets = ["agent_config"]
        [[accounts]]
        id = "wxmp"
        platform = "mini_program"
        secret_file = "/nonexistent/secret"
    "#;
    let s = load_store_only(toml).expect("no secret needed");
    assert!(s.accounts.is_empty(), "no secret is read");
    assert_eq!(
        s.configured,
        vec![
            AccountSpec {
                id: AccountId::new("wx0001"),
                platform: Platform::OfficialAccount,
                endpoint: TokenEndpoint::StableToken,
                tickets: vec![CredentialKind::JsapiTicket, CredentialKind::WxCardTicket],
                secret: SecretSource {
                    index: 0,
                    env: Some("UNSET".into()),
                    file: None,
                },
            },
            AccountSpec {
                id: AccountId::new("ww0123/1000002"),
                platform: Platform::Wecom,
                endpoint: TokenEndpoint::Token,
                tickets: vec![CredentialKind::AgentConfigTicket],
                secret: SecretSource {
                    index: 1,
                    env: None,
                    file: None,
                },
            },
            AccountSpec {
                id: AccountId::new("wxmp"),
                platform: Platform::MiniProgram,
                endpoint: TokenEndpoint::Token,
                tickets: vec![],
                secret: SecretSource {
                    index: 2,
                    env: None,
                    file: Some("/nonexistent/secret".into()),
                },
            },
        ]
    );
    // No account at all is fine too: a business host may list none.
    let none = load_store_only("").expect("no account needed");
    assert!(none.configured.is_empty());
}

#[test]
fn one_accounts_secret_is_read_on_demand_and_names_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "  from-file\n").expect("write secret");
    let toml = format!(
        r#"
        [[accounts]]
        id = "wx0001"
        platform = "official_account"
        secret_file = {secret:?}
        [[accounts]]
        id = "wx0002"
        platform = "official_account"
        secret_env = "WXTOKEND_TEST_SURELY_UNSET_SECRET"
        "#
    );
    let s = load_store_only(&toml).expect("no secret read at load");
    let read = s.secret_of(&s.configured[0]).expect("readable");
    assert_eq!(read.expose_secret(), "from-file");
    let error = s.secret_of(&s.configured[1]).expect_err("unset");
    assert_eq!(keys(error), ["accounts[1].secret_env"]);
}

#[test]
fn store_only_scope_still_checks_each_accounts_shape() {
    let toml = r#"
        [refresh]
        forced_min_interval = "10s"
        [[accounts]]
        id = "ww0123"
        platform = "wecom"
        tickets = ["wx_card"]
        [[accounts]]
        id = "wxmp"
        platform = "mini_program"
        endpoint = "stable_token"
        secret = "inline"
        [[accounts]]
        id = "wxmp"
        platform = "mini_program"
    "#;
    let err = load_store_only(toml).expect_err("must fail");
    assert_eq!(
        keys(err),
        vec![
            "accounts[0].id",
            "accounts[0].tickets",
            "accounts[1].secret",
            "accounts[2].id",
            "refresh.forced_min_interval",
        ]
    );
}

#[test]
fn wecom_ids_tickets_and_stable_token_rules() {
    let toml = r#"
        [refresh]
        forced_min_interval = "10s"
        [[accounts]]
        id = "ww0123"
        platform = "wecom"
        secret_env = "S"
        tickets = ["wx_card"]
        [[accounts]]
        id = "wxmp"
        platform = "mini_program"
        endpoint = "stable_token"
        secret_env = "S"
        tickets = ["jsapi"]
    "#;
    let err = load(toml, &[("S", "x")]).expect_err("must fail");
    assert_eq!(
        keys(err),
        vec![
            "accounts[0].id",
            "accounts[0].tickets",
            "accounts[1].tickets",
            "refresh.forced_min_interval"
        ]
    );
    let good = r#"
        [refresh]
        forced_min_interval = "30s"
        [[accounts]]
        id = "ww0123/1000002"
        platform = "wecom"
        secret_env = "S"
        tickets = ["jsapi", "agent_config"]
        [[accounts]]
        id = "wxoa"
        platform = "official_account"
        endpoint = "stable_token"
        secret_env = "S"
        tickets = ["jsapi", "wx_card"]
    "#;
    let s = load(good, &[("S", "x")]).expect("valid");
    assert_eq!(s.accounts[0].corp_id(), "ww0123");
    assert_eq!(s.accounts[1].kinds().count(), 3);
}

#[test]
fn all_problems_are_reported_together() {
    let toml = r#"
        [refresh]
        retry_initial = "10s"
        retry_max = "1s"
        [[accounts]]
        id = ""
        platform = "official_account"
    "#;
    let err = load(toml, &[]).expect_err("must fail");
    assert_eq!(
        keys(err),
        vec![
            "refresh.retry_max",
            "accounts[0].id",
            "accounts[0].secret_env"
        ]
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn try_load(toml: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).expect("write");
        let overrides = Environment::with_prefix(ENV_PREFIX).source(Some(HashMap::new()));
        let env = MapEnv(HashMap::from([("S".to_string(), "secret".to_string())]));
        let _ = Settings::load_with(Some(&path), overrides, &env, Scope::Daemon);
    }

    /// Lines made of real keys, sections and odd values.
    fn config_text() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            Just("[refresh]".to_string()),
            Just("[refresh.daily_call_limits]".to_string()),
            Just("[mongodb]".to_string()),
            Just("[[accounts]]".to_string()),
            Just("[lease]".to_string()),
            Just("id = \"wx1\"".to_string()),
            Just("platform = \"wecom\"".to_string()),
            Just("secret_env = \"S\"".to_string()),
            Just("tickets = [\"jsapi\", \"agent_config\"]".to_string()),
            "(margin|duration|renew_interval|uri|database|token|history_retention) = \"[ -~]{0,12}\"",
            "(margin|duration|token) = -?[0-9]{1,20}",
            "[ -~]{0,40}",
        ];
        proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_cases(500)))]

        #[test]
        fn arbitrary_config_files_never_panic(text in config_text()) {
            try_load(&text);
        }
    }
}

#[test]
fn base_url_rules() {
    use super::validate::parse_base_url;
    assert!(parse_base_url("https://api.weixin.qq.com", false).is_ok());
    assert!(parse_base_url("http://127.0.0.1:8080", false).is_err());
    assert!(parse_base_url("http://127.0.0.1:8080", true).is_ok());
    assert!(parse_base_url("https://x/?a=b", false).is_err());
    assert!(parse_base_url("ftp://x", true).is_err());
}

#[test]
fn a_lease_must_outlast_two_calls_and_shutdown_a_call_and_a_write() {
    let toml = format!(
        "{ONE_ACCOUNT}\n[lease]\nduration = \"20s\"\nrenew_interval = \"5s\"\n\
         [daemon]\nshutdown_timeout = \"10s\"\n"
    );
    // Defaults: a call takes up to 3 s + 10 s, a write up to 5 s.
    let err = load(&toml, &[("WX_SECRET", "x")]).expect_err("must fail");
    assert_eq!(keys(err), vec!["lease.duration", "daemon.shutdown_timeout"]);
    let fits = format!(
        "{ONE_ACCOUNT}\n[lease]\nduration = \"27s\"\nrenew_interval = \"5s\"\n\
         [daemon]\nshutdown_timeout = \"19s\"\n"
    );
    load(&fits, &[("WX_SECRET", "x")]).expect("valid");
}

#[test]
fn default_instance_ids_differ_between_processes_on_one_host() {
    use super::validate::default_instance_id;
    let (a, b) = (default_instance_id(), default_instance_id());
    assert_ne!(a, b, "same host, same pid, still two ids");
    assert!(a.contains(&std::process::id().to_string()), "{a}");
}

#[test]
fn calls_in_flight_are_bounded() {
    for (calls, ok) in [(0, false), (1, true), (1024, true), (1025, false)] {
        let toml = format!("{ONE_ACCOUNT}\n[wechat]\nmax_concurrent_calls = {calls}\n");
        assert_eq!(load(&toml, &[("WX_SECRET", "x")]).is_ok(), ok, "{calls}");
    }
}

#[test]
fn the_expires_in_floor_defaults_to_60s_and_is_bounded() {
    let s = load(ONE_ACCOUNT, &[("WX_SECRET", "x")]).expect("valid");
    assert_eq!(s.wechat.min_expires_in, Duration::from_secs(60));
    assert_eq!(
        s.wechat.min_expires_in,
        crate::wechat::DEFAULT_MIN_EXPIRES_IN,
        "config/default.toml and the documented floor of parse_token_answer agree"
    );
    for (floor, ok) in [
        ("0s", false),
        ("500ms", false),
        ("1s", true),
        ("5m", true),
        ("301s", false),
    ] {
        let toml = format!("{ONE_ACCOUNT}\n[wechat]\nmin_expires_in = \"{floor}\"\n");
        match load(&toml, &[("WX_SECRET", "x")]) {
            Ok(s) => {
                assert!(ok, "{floor} accepted");
                assert_eq!(
                    s.wechat.min_expires_in,
                    humantime::parse_duration(floor).expect("duration")
                );
            }
            Err(err) => {
                assert!(!ok, "{floor} refused: {err}");
                assert_eq!(keys(err), vec!["wechat.min_expires_in"], "{floor}");
            }
        }
    }
    let err = load(
        &format!("{ONE_ACCOUNT}\n[wechat]\nmin_expires_in = \"0s\"\n"),
        &[("WX_SECRET", "x")],
    )
    .expect_err("0s");
    assert_eq!(
        err.problems()[0].to_string(),
        "wechat.min_expires_in: must be between 1s and 5m, for example \"60s\" (stable_token \
         answers a token's remaining life, down to about 5 minutes)"
    );
}

const ONE_MIRROR: &str = r#"
    [[mirrors]]
    url_env = "REDIS_URL"
    layouts = ["wxjava", "wechatpy"]
"#;

#[test]
fn a_mirror_reads_its_url_from_the_environment_and_wants_everything_by_default() {
    let s = load(
        &format!("{ONE_ACCOUNT}{ONE_MIRROR}"),
        &[
            ("WX_SECRET", "x"),
            ("REDIS_URL", "redis://:pw@127.0.0.1:6379/2\n"),
        ],
    )
    .expect("valid");
    let mirror = &s.mirrors[0];
    assert_eq!(mirror.name, "0");
    assert_eq!(mirror.url.expose_secret(), "redis://:pw@127.0.0.1:6379/2");
    assert_eq!(
        mirror.layouts,
        [
            crate::mirror::Layout::Wxjava,
            crate::mirror::Layout::Wechatpy
        ]
    );
    assert_eq!(mirror.key_prefix, crate::mirror::KeyPrefixes::default());
    assert_eq!(mirror.check_interval, Duration::from_secs(1));
    assert_eq!(mirror.repair_interval, Duration::from_secs(30));
    assert!(mirror.wants(&AccountId::new("wx0001"), CredentialKind::WxCardTicket));
    assert!(!format!("{s:?}").contains(":pw@"));
}

#[test]
fn a_mirror_url_file_is_read_and_its_problems_never_quote_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("redis_url");
    let config = format!(
        "{ONE_ACCOUNT}[[mirrors]]\nurl_file = {:?}\nlayouts = [\"silenceper\"]\n",
        path.display().to_string()
    );
    let err = load(&config, &[("WX_SECRET", "x")]).expect_err("no file");
    assert!(err.to_string().contains("mirrors[0].url_file"), "{err}");
    std::fs::write(&path, "rediss://:hunter2@cache:6380\n").expect("write");
    let text = load(&config, &[("WX_SECRET", "x")])
        .expect_err("TLS")
        .to_string();
    assert!(
        text.contains("mirrors[0].url_file") && text.contains("rediss://"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    std::fs::write(&path, "http://:hunter2@cache\n").expect("write");
    let text = load(&config, &[("WX_SECRET", "x")])
        .expect_err("scheme")
        .to_string();
    assert!(!text.contains("hunter2"), "{text}");
    std::fs::write(&path, "redis://:hunter2@cache:6379/0\n").expect("write");
    let s = load(&config, &[("WX_SECRET", "x")]).expect("valid");
    assert_eq!(
        s.mirrors[0].url.expose_secret(),
        "redis://:hunter2@cache:6379/0"
    );
    // Commands that do not run the daemon never read it.
    std::fs::remove_file(&path).expect("remove");
    load_scoped(&config, Scope::StoreOnly).expect("not read for store-only commands");
}

#[test]
fn mirror_problems_name_the_key_and_the_fix() {
    let config = format!(
        r#"{ONE_ACCOUNT}
        [[mirrors]]
        url = "redis://127.0.0.1"
        url_env = "REDIS_URL"
        layouts = ["easywechat", "wxjava", "wxjava", "co-wechat"]
        accounts = ["wx0001", "wx9999"]
        kinds = ["access_token", "ticket"]

        [[mirrors]]
        url = "redis://127.0.0.1"
"#
    );
    let err =
        load(&config, &[("WX_SECRET", "x"), ("REDIS_URL", "redis://x")]).expect_err("invalid");
    let text = err.to_string();
    assert_eq!(
        keys(err),
        [
            "mirrors[0].url_file",
            "mirrors[0].layouts",
            "mirrors[0].layouts",
            "mirrors[0].layouts",
            "mirrors[0].accounts[1]",
            "mirrors[0].kinds[1]",
            "mirrors[1].layouts",
        ]
    );
    assert!(
        text.contains("set only one of url, url_env and url_file"),
        "{text}"
    );
    assert!(text.contains("easywechat is not supported"), "{text}");
    assert!(
        text.contains("\"wx9999\" is not an [[accounts]] id"),
        "{text}"
    );
    assert!(text.contains("unknown layout \"co-wechat\""), "{text}");
}

#[test]
fn a_mirror_repairs_no_more_often_than_it_checks() {
    let config = format!(
        "{ONE_ACCOUNT}[[mirrors]]\nurl = \"redis://127.0.0.1\"\nlayouts = [\"wxjava\"]\n\
         check_interval = \"10s\"\nrepair_interval = \"5s\"\n"
    );
    let err = load(&config, &[("WX_SECRET", "x")]).expect_err("invalid");
    let text = err.to_string();
    assert_eq!(keys(err), ["mirrors[0].repair_interval"]);
    assert!(text.contains("at least check_interval"), "{text}");
}

#[test]
fn two_mirrors_on_one_redis_are_refused_without_quoting_it() {
    let config = format!(
        "{ONE_ACCOUNT}[[mirrors]]\nurl_env = \"A\"\nlayouts = [\"wxjava\"]\n\
         [[mirrors]]\nurl_env = \"B\"\nlayouts = [\"wechatpy\"]\n\
         [[mirrors]]\nurl_env = \"C\"\nlayouts = [\"silenceper\"]\n"
    );
    let env = [
        ("WX_SECRET", "x"),
        ("A", "redis://:pw1@cache:6379/0"),
        // The same database, spelt otherwise, as another user.
        ("B", "redis://other:pw2@cache"),
        ("C", "redis://:pw1@cache:6379/1"),
    ];
    let err = load(&config, &env).expect_err("one Redis twice");
    let text = err.to_string();
    assert_eq!(keys(err), ["mirrors[1]"]);
    assert!(text.contains("the same Redis as mirrors[0]"), "{text}");
    assert!(!text.contains("pw1") && !text.contains("pw2"), "{text}");
}

/// A password never sits in the configuration file (business hosts read
/// it too): an inline `url` with one is refused by every command, like an
/// inline AppSecret, without showing it. Without one it is shown as written.
#[test]
fn an_inline_mirror_url_with_a_password_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxtokend.toml");
    for url in [
        "redis://app:s3cret-pass@cache:6379/0",
        "redis://:s3cret-pass@cache",
        "redis+unix:///run/redis.sock?pass=s3cret-pass",
    ] {
        std::fs::write(
            &path,
            format!("{ONE_ACCOUNT}[[mirrors]]\nurl = {url:?}\nlayouts = [\"wxjava\"]\n"),
        )
        .expect("write");
        let err = effective(Some(&path)).expect_err("a password inline");
        let text = err.to_string();
        assert_eq!(keys(err), ["mirrors[0].url"], "{url}");
        assert!(text.contains("url_file"), "{text}");
        assert!(!text.contains("s3cret-pass"), "{text}");
    }
    std::fs::write(
        &path,
        format!(
            "{ONE_ACCOUNT}[[mirrors]]\nurl = \"redis://cache:6379/0\"\nlayouts = [\"wxjava\"]\n"
        ),
    )
    .expect("write");
    let shown = effective(Some(&path)).expect("valid");
    assert_eq!(shown["mirrors"][0]["url"], "redis://cache:6379/0");
}

#[test]
fn a_mirror_keeps_to_its_accounts_kinds_and_prefixes() {
    let config = format!(
        r#"{ONE_ACCOUNT}
        [[accounts]]
        id = "wx0002"
        platform = "official_account"
        secret_env = "WX_SECRET"

        [[mirrors]]
        name = "java"
        url = "redis://127.0.0.1/1"
        layouts = ["wxjava"]
        accounts = ["wx0002"]
        kinds = ["jsapi_ticket"]
        key_prefix = {{ wxjava = "mp", wechatpy = "py" }}
"#
    );
    let s = load(&config, &[("WX_SECRET", "x")]).expect("valid");
    let mirror = &s.mirrors[0];
    assert_eq!(mirror.name, "java");
    assert!(mirror.wants(&AccountId::new("wx0002"), CredentialKind::JsapiTicket));
    assert!(!mirror.wants(&AccountId::new("wx0002"), CredentialKind::AccessToken));
    assert!(!mirror.wants(&AccountId::new("wx0001"), CredentialKind::JsapiTicket));
    assert_eq!(mirror.key_prefix.wxjava, "mp");
    assert_eq!(mirror.key_prefix.wxjava_miniapp, "wa");
    assert_eq!(mirror.key_prefix.wechatpy, "py");
}

/// WeChat's published EncodingAESKey sample (43 characters).
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn open_platform(extra: &str) -> String {
    format!(
        "{ONE_ACCOUNT}\n[open_platform]\ncomponent_appid = \"wxcomponent0001\"\n\
         component_secret_env = \"WX_C_SECRET\"\ntoken_env = \"WX_C_TOKEN\"\n\
         encoding_aes_key_env = \"WX_C_AES\"\n{extra}"
    )
}

const OPEN_PLATFORM_VARS: [(&str, &str); 4] = [
    ("WX_SECRET", "s"),
    ("WX_C_SECRET", "component-secret-value"),
    ("WX_C_TOKEN", "message-token-value"),
    ("WX_C_AES", AES_KEY),
];

#[test]
fn open_platform_is_off_unless_configured_and_has_defaults() {
    let s = load(ONE_ACCOUNT, &[("WX_SECRET", "s")]).expect("valid");
    assert!(s.open_platform.is_none());
    let s = load(&open_platform(""), &OPEN_PLATFORM_VARS).expect("valid");
    let op = s.open_platform.expect("configured");
    assert_eq!(op.component_appid, "wxcomponent0001");
    assert_eq!(op.listen, None, "the receiver is off by default");
    assert_eq!(op.max_connections, 256);
    assert_eq!(op.path, "/wechat/open/events");
    assert_eq!(op.max_message_age, Duration::from_secs(300));
    assert_eq!(op.max_body_bytes, 65536);
    assert_eq!(op.start_push_ticket_after, Some(Duration::from_secs(1800)));
    assert_eq!(op.authorizers, AuthorizerSelection::All);
    assert!(op.authorizer_tickets.is_empty());
    assert_eq!(op.discovery_interval, Duration::from_secs(3600));
    assert_eq!(op.ticket_fresh_within, Duration::from_secs(1800));
    let secrets = op.secrets.expect("read for the daemon");
    assert_eq!(
        secrets.component_secret.expose_secret(),
        "component-secret-value"
    );
    assert_eq!(secrets.crypto.appid(), "wxcomponent0001");
    let text = format!("{secrets:?}");
    for secret in ["component-secret-value", "message-token-value", AES_KEY] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[test]
fn open_platform_secrets_come_from_env_or_file_and_problems_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "message-token-value\n").expect("write");
    let toml = format!(
        "{ONE_ACCOUNT}\n[open_platform]\ncomponent_appid = \"wxc\"\n\
         component_secret_env = \"WX_C_SECRET\"\ntoken_file = {:?}\n\
         encoding_aes_key_env = \"WX_C_AES\"\nlisten = \"127.0.0.1:0\"\n",
        token.display().to_string()
    );
    let s = load(&toml, &OPEN_PLATFORM_VARS).expect("token from a file");
    let op = s.open_platform.expect("configured");
    assert_eq!(op.listen, Some("127.0.0.1:0".parse().expect("address")));
    // Missing variables, a short key, both sources of one secret:
    let err = load(
        &open_platform("token_file = \"/nonexistent/token\"\n"),
        &[("WX_SECRET", "s"), ("WX_C_AES", "short-key-value")],
    )
    .expect_err("must fail");
    let text = err.to_string();
    assert_eq!(
        keys(err),
        [
            "open_platform.component_secret_env",
            "open_platform.token_env",
            "open_platform.encoding_aes_key_env",
        ]
    );
    assert!(text.contains("WX_C_SECRET is not set; export it, or use component_secret_file"));
    assert!(
        text.contains("set only one of token_env and token_file"),
        "{text}"
    );
    assert!(text.contains("must be 43 characters"), "{text}");
    assert!(!text.contains("short-key-value"), "{text}");
}

#[test]
fn open_platform_keys_are_checked_and_inline_secrets_refused() {
    let err = load(
        &open_platform(
            "listen = \"everywhere\"\npath = \"events\"\nmax_message_age = \"10s\"\n\
             max_body_bytes = 10\ntoken = \"inline-token\"\n",
        ),
        &OPEN_PLATFORM_VARS,
    )
    .expect_err("must fail");
    let text = err.to_string();
    assert_eq!(
        keys(err),
        [
            "open_platform.token",
            "open_platform.listen",
            "open_platform.path",
            "open_platform.max_message_age",
            "open_platform.max_body_bytes",
        ]
    );
    assert!(text.contains("use token_env or token_file"), "{text}");
    assert!(!text.contains("inline-token"), "{text}");
    let err = load(
        &open_platform("previous_encoding_aes_key_env = \"WX_C_OLD\"\n")
            .replace("wxcomponent0001", "wx:bad"),
        &OPEN_PLATFORM_VARS,
    )
    .expect_err("must fail");
    assert_eq!(
        keys(err),
        [
            "open_platform.component_appid",
            "open_platform.previous_encoding_aes_key_env",
        ]
    );
}

/// `authorizers` is "all" or a list of appids, `authorizer_tickets` the
/// tickets an authorizer can have, `discovery_interval` at least a minute:
/// anything else names the key and the fix.
#[test]
fn open_platform_authorizer_choices_are_checked() {
    let s = load(
        &open_platform(
            "authorizers = [\"wxauthorizer0001\", \"wxauthorizer0002\"]\n\
             authorizer_tickets = [\"jsapi\", \"wx_card\"]\ndiscovery_interval = \"10m\"\n",
        ),
        &OPEN_PLATFORM_VARS,
    )
    .expect("valid");
    let op = s.open_platform.expect("configured");
    let kept = |id: &str| op.authorizers.keeps(&AccountId::new(id));
    assert!(kept("wxauthorizer0001") && kept("wxauthorizer0002"));
    assert!(!kept("wxauthorizer0003"), "only the listed ones are kept");
    assert_eq!(
        op.authorizer_tickets,
        [
            CredentialKind::AuthorizerJsapiTicket,
            CredentialKind::AuthorizerWxCardTicket
        ]
    );
    assert_eq!(op.discovery_interval, Duration::from_secs(600));

    for (extra, key, says) in [
        (
            "authorizers = \"some\"\n",
            "open_platform.authorizers",
            "\"all\"",
        ),
        (
            "authorizers = []\n",
            "open_platform.authorizers",
            "keeps no authorizer",
        ),
        (
            "authorizers = [\"wx:a\"]\n",
            "open_platform.authorizers",
            "is not an appid",
        ),
        (
            "authorizers = [\"wxa\", \"wxa\"]\n",
            "open_platform.authorizers",
            "listed twice",
        ),
        (
            "authorizer_tickets = [\"jsapi\", \"jsapi\"]\n",
            "open_platform.authorizer_tickets",
            "\"jsapi\" is listed twice",
        ),
        (
            "discovery_interval = \"30s\"\n",
            "open_platform.discovery_interval",
            "at least 1m",
        ),
    ] {
        let err = load(&open_platform(extra), &OPEN_PLATFORM_VARS).expect_err(extra);
        let text = err.to_string();
        assert_eq!(keys(err), [key], "{extra}");
        assert!(text.contains(says), "{extra}: {text}");
    }
    let err = load(&open_platform("authorizers = 5\n"), &OPEN_PLATFORM_VARS).expect_err("5");
    assert!(
        err.to_string().contains("\"all\" or a list of appids"),
        "{err}"
    );
    // A ticket authorizers do not have (WeCom's) is not a choice at all.
    let err = load(
        &open_platform("authorizer_tickets = [\"agent_config\"]\n"),
        &OPEN_PLATFORM_VARS,
    )
    .expect_err("agent_config");
    assert!(err.to_string().contains("authorizer_tickets"), "{err}");
}

/// A path a router would read as a parameter or a wildcard is a config
/// error, not a crash at start; an age over an hour would let a captured
/// push be replayed for that long.
#[test]
fn open_platform_paths_a_router_would_read_as_patterns_and_long_ages_are_refused() {
    for path in [
        "/wechat/:id",
        "/wechat/*rest",
        "/wechat/{x}",
        "/a b",
        "/%2F",
    ] {
        let err = load(
            &open_platform(&format!("path = {path:?}\n")),
            &OPEN_PLATFORM_VARS,
        )
        .expect_err(path);
        assert_eq!(keys(err), ["open_platform.path"], "{path}");
    }
    let s = load(
        &open_platform("path = \"/wx-open/v1.events_~\"\nmax_message_age = \"1h\"\n"),
        &OPEN_PLATFORM_VARS,
    )
    .expect("valid");
    assert_eq!(
        s.open_platform.expect("configured").path,
        "/wx-open/v1.events_~"
    );
    let err = load(
        &open_platform("max_message_age = \"100y\"\n"),
        &OPEN_PLATFORM_VARS,
    )
    .expect_err("too long");
    assert_eq!(keys(err), ["open_platform.max_message_age"]);
}

#[test]
fn account_ids_hold_no_colon_and_are_not_the_component() {
    let err = load(
        &ONE_ACCOUNT.replace("id = \"wx", "id = \"open:wx"),
        &[("WX_SECRET", "s")],
    )
    .expect_err("a colon");
    assert_eq!(keys(err), ["accounts[0].id"]);
    // ONE_ACCOUNT's id as the platform's appid.
    let component_too = open_platform("").replace("wxcomponent0001", "wx0001");
    let err = load(&component_too, &OPEN_PLATFORM_VARS).expect_err("the same appid");
    assert_eq!(keys(err), ["accounts[0].id"]);
}

#[test]
fn start_push_ticket_after_is_at_least_ten_seconds_or_never() {
    let never = load(
        &open_platform("start_push_ticket_after = \"0s\"\n"),
        &OPEN_PLATFORM_VARS,
    )
    .expect("valid");
    assert_eq!(
        never.open_platform.expect("set").start_push_ticket_after,
        None
    );
    let err = load(
        &open_platform("start_push_ticket_after = \"9s\"\n"),
        &OPEN_PLATFORM_VARS,
    )
    .expect_err("too soon");
    assert_eq!(keys(err), ["open_platform.start_push_ticket_after"]);
}

/// `/readyz` wants a verify ticket received within `ticket_fresh_within`:
/// zero would never be ready, and is refused naming the key.
#[test]
fn ticket_fresh_within_is_between_a_minute_and_twelve_hours() {
    let set = load(
        &open_platform("ticket_fresh_within = \"45m\"\n"),
        &OPEN_PLATFORM_VARS,
    )
    .expect("valid");
    assert_eq!(
        set.open_platform.expect("set").ticket_fresh_within,
        Duration::from_secs(45 * 60)
    );
    for bad in ["0s", "59s", "12h 1s"] {
        let err = load(
            &open_platform(&format!("ticket_fresh_within = \"{bad}\"\n")),
            &OPEN_PLATFORM_VARS,
        )
        .expect_err(bad);
        let text = err.to_string();
        assert_eq!(keys(err), ["open_platform.ticket_fresh_within"], "{bad}");
        assert!(text.contains("must be between 1m and 12h"), "{text}");
    }
    for good in ["1m", "12h"] {
        load(
            &open_platform(&format!("ticket_fresh_within = \"{good}\"\n")),
            &OPEN_PLATFORM_VARS,
        )
        .expect(good);
    }
    let err = load(
        &open_platform("ticket_fresh_within = \"soon\"\n"),
        &OPEN_PLATFORM_VARS,
    )
    .expect_err("not a duration");
    assert!(err.to_string().contains("ticket_fresh_within"), "{err}");
}

#[test]
fn max_connections_is_between_16_and_65536_and_named_when_not() {
    for (max, ok) in [
        (0, false),
        (15, false),
        (16, true),
        (65536, true),
        (65537, false),
    ] {
        let toml = open_platform(&format!("max_connections = {max}\n"));
        match load(&toml, &OPEN_PLATFORM_VARS) {
            Ok(s) => {
                assert!(ok, "{max} accepted");
                assert_eq!(s.open_platform.expect("set").max_connections, max);
            }
            Err(err) => {
                assert!(!ok, "{max} refused: {err}");
                let text = err.to_string();
                assert!(text.contains("between 16 and 65536"), "{text}");
                assert_eq!(keys(err), ["open_platform.max_connections"], "{max}");
            }
        }
    }
}

/// An unreadable previous key does not hide a bad current one.
#[test]
fn open_platform_a_missing_previous_key_and_a_bad_current_one_are_both_named() {
    let err = load(
        &open_platform("previous_encoding_aes_key_env = \"WX_C_OLD\"\n"),
        &[
            ("WX_SECRET", "s"),
            ("WX_C_SECRET", "component-secret-value"),
            ("WX_C_TOKEN", "message-token-value"),
            ("WX_C_AES", "short-key-value"),
        ],
    )
    .expect_err("must fail");
    assert_eq!(
        keys(err),
        [
            "open_platform.previous_encoding_aes_key_env",
            "open_platform.encoding_aes_key_env",
        ]
    );
}

#[test]
fn open_platform_secrets_are_read_by_the_daemon_only_and_never_shown() {
    let toml = open_platform("listen = \"127.0.0.1:8088\"\n");
    let s = load_store_only(&toml).expect("no secret needed");
    let op = s.open_platform.expect("configured");
    assert!(op.secrets.is_none());
    assert_eq!(op.component_appid, "wxcomponent0001");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxtokend.toml");
    std::fs::write(&path, &toml).expect("write");
    let shown = effective(Some(&path)).expect("valid");
    let op = &shown["open_platform"];
    assert_eq!(op["token_env"], "WX_C_TOKEN");
    assert_eq!(op["path"], "/wechat/open/events");
    assert_eq!(op["max_connections"], 256);
    assert_eq!(op["max_message_age"], "5m");
    assert_eq!(op["max_body_bytes"], 65536);
    assert_eq!(op["start_push_ticket_after"], "30m");
    assert_eq!(op["ticket_fresh_within"], "30m");
    assert_eq!(op["listen"], "127.0.0.1:8088");
}

/// A key file holding `contents` in `dir`.
fn key_file(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write the key file");
    path.display().to_string()
}

#[test]
fn refresh_token_keys_are_read_from_files_as_base64_or_raw() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let current = key_file(
        &dir,
        "current",
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        )
        .as_bytes(),
    );
    let previous = key_file(&dir, "previous", &[9u8; 32]);
    let s = load(&open_platform(""), &OPEN_PLATFORM_VARS).expect("valid");
    let secrets = s.open_platform.expect("configured").secrets.expect("read");
    assert!(secrets.refresh_tokens.is_none(), "no key file, no box");
    let s = load(
        &open_platform(&format!(
            "refresh_token_key_file = {current:?}\nprevious_refresh_token_key_file = {previous:?}\n"
        )),
        &OPEN_PLATFORM_VARS,
    )
    .expect("valid");
    let secrets = s.open_platform.expect("configured").secrets.expect("read");
    let refresh_tokens = secrets.refresh_tokens.expect("the keys");
    let expected = crate::open_platform::secretbox::Key::new([7u8; 32]).expect("key");
    assert_eq!(refresh_tokens.current_key_id(), expected.id());
    // An empty path (an environment override unsetting it) is not set.
    let s = load(
        &open_platform("refresh_token_key_file = \"\"\n"),
        &OPEN_PLATFORM_VARS,
    )
    .expect("valid");
    let secrets = s.open_platform.expect("configured").secrets.expect("read");
    assert!(secrets.refresh_tokens.is_none());
}

#[test]
fn bad_refresh_token_key_files_name_the_key_and_the_fix_never_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = key_file(&dir, "short", b"short-key-never-shown\n");
    let zeros = key_file(&dir, "zeros", &[0u8; 32]);
    let cases = [
        (
            format!("refresh_token_key_file = {short:?}\n"),
            "open_platform.refresh_token_key_file",
            "must hold 32 random bytes, as base64 (44 characters) or raw; it holds 22 bytes; \
             make a key with: (umask 077; openssl rand -base64 32 >",
        ),
        (
            format!("refresh_token_key_file = {zeros:?}\n"),
            "open_platform.refresh_token_key_file",
            "holds a key of zeros, not a random one",
        ),
        (
            "refresh_token_key_file = \"/nonexistent/key\"\n".to_owned(),
            "open_platform.refresh_token_key_file",
            "cannot read /nonexistent/key",
        ),
        (
            format!("previous_refresh_token_key_file = {zeros:?}\n"),
            "open_platform.refresh_token_key_file",
            "missing: previous_refresh_token_key_file only opens what an older key sealed",
        ),
        (
            "refresh_token_key = \"inline-key-never-shown\"\n".to_owned(),
            "open_platform.refresh_token_key",
            "inline keys are not allowed; use refresh_token_key_file",
        ),
    ];
    for (extra, key, message) in cases {
        let err = load(&open_platform(&extra), &OPEN_PLATFORM_VARS).expect_err(&extra);
        let text = err.to_string();
        assert!(text.contains(message), "{extra}: {text}");
        assert!(!text.contains("never-shown"), "{text}");
        assert!(keys(err).contains(&key.to_owned()), "{extra}: {text}");
    }
    // A bad previous key is named with its own fix, beside a bad current one
    // and a bad EncodingAESKey.
    let err = load(
        &open_platform(&format!(
            "refresh_token_key_file = {short:?}\nprevious_refresh_token_key_file = {zeros:?}\n"
        )),
        &[
            ("WX_SECRET", "s"),
            ("WX_C_SECRET", "component-secret-value"),
            ("WX_C_TOKEN", "message-token-value"),
            ("WX_C_AES", "short-key-value"),
        ],
    )
    .expect_err("must fail");
    let text = err.to_string();
    assert_eq!(
        keys(err),
        [
            "open_platform.refresh_token_key_file",
            "open_platform.previous_refresh_token_key_file",
            "open_platform.encoding_aes_key_env",
        ]
    );
    assert!(
        text.contains("point it at the file of the key used before the rotation"),
        "{text}"
    );
}

#[test]
fn refresh_token_keys_are_read_by_the_daemon_only_and_shown_as_paths() {
    let toml = open_platform(
        "refresh_token_key_file = \"/nonexistent/rt-key\"\n\
         previous_refresh_token_key_file = \"/nonexistent/rt-key-old\"\n",
    );
    let s = load_store_only(&toml).expect("no key file read");
    assert!(s.open_platform.expect("configured").secrets.is_none());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxtokend.toml");
    std::fs::write(&path, &toml).expect("write");
    let shown = effective(Some(&path)).expect("valid without reading the key files");
    let op = &shown["open_platform"];
    assert_eq!(op["refresh_token_key_file"], "/nonexistent/rt-key");
    assert_eq!(
        op["previous_refresh_token_key_file"],
        "/nonexistent/rt-key-old"
    );
}
