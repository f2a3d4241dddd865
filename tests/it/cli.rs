//! The command line: exit codes and messages a script or an operator sees.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_wechat::FakeWechat;
use futures_util::TryStreamExt;
use mongodb::bson::doc;

use crate::support::daemon::{binary, output};
use crate::support::mongo::TestDb;
use crate::support::store::store_token;
use crate::support::{eventually, TestAccount, TestConfig, TestDaemon, WAIT};

fn account() -> TestAccount {
    TestAccount::new("wx0000000000000cli", "cli-secret-value-0123")
}

fn config(db: &TestDb) -> TestConfig {
    TestConfig::new(&db.uri, &db.name, "https://api.weixin.qq.com", &[account()])
}

fn wxtokend(args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_remove("WXTOKEND_CONFIG")
        // Whatever this host has in /etc/wxtokend/wxtokend.toml.
        .env("WXTOKEND_DEFAULT_CONFIG", "/nonexistent/wxtokend.toml");
    cmd
}

/// The problems an invalid configuration lists, one `  - key: message` each.
fn problems(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect()
}

#[test]
fn help_lists_commands_and_exit_codes() {
    let (code, out, _) = output(&mut wxtokend(&["--help"]));
    assert_eq!(code, 0);
    let commands: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        ["run", "get", "sign", "refresh", "status", "quota", "check", "config", "health", "help"],
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("-c, --config <FILE>")),
        "{out}"
    );
    let exit_codes = out
        .split_once("Exit codes:\n")
        .map(|(_, codes)| codes.trim_end())
        .unwrap_or_default();
    assert_eq!(
        exit_codes,
        "  0  success\n  \
           1  unexpected failure; health: not healthy (or not ready); check: a\n     \
              mirror's Redis does not answer\n  \
           2  bad command line (get, refresh: an authorizer kind without\n     \
              --component, or --component with another kind; sign: --component with\n     \
              --kind agent-config-ticket); quota: an account that is not configured\n     \
              or is WeCom's, or --clear not confirmed (answered no, or no terminal to\n     \
              ask and no --yes)\n  \
           3  invalid configuration (the message names the key); MongoDB refused\n     \
              the connection string's user or a privilege (the message names the\n     \
              action, the collection and the role to grant); check, run: an index in\n     \
              the way of wxtokend's (the message says which to drop); health: admin.listen\n     \
              is off or uses port 0; quota --clear: the account's secret is needed\n     \
              and cannot be read\n  \
           4  MongoDB unreachable or failing (quota --clear: also after WeChat\n     \
              cleared, when the daemon's own stops could not be lifted)\n  \
           5  get, sign, quota: no valid credential stored (none yet, or the newest\n     \
              has expired)\n  \
           6  quota: WeChat refused the call or did not answer (the message names\n     \
              the errcode and what it means)",
        "{out}"
    );
}

#[tokio::test]
async fn check_passes_with_a_valid_config_and_reachable_mongodb() {
    let db = TestDb::new().await;
    let (code, out, err) = config(&db).run(&["check"]);
    assert_eq!(code, 0, "{err}");
    let file = out
        .strip_prefix("configuration file: ")
        .and_then(|rest| rest.split_once('\n'))
        .map(|(file, _)| file)
        .unwrap_or_default();
    assert!(file.ends_with("wxtokend.toml"), "{out}");
    let valid = format!(
        "configuration file: {file}\nconfiguration valid: 1 account(s); every secret \
         readable; MongoDB reachable (database {:?}): every collection readable, indexes \
         in place\n",
        db.name
    );
    // A new database: the indexes `run` needs are created.
    let mut indexes = 0;
    for collection in db.db().list_collection_names().await.expect("collections") {
        let names = db
            .db()
            .collection::<mongodb::bson::Document>(&collection)
            .list_index_names()
            .await
            .expect("indexes");
        indexes += names.iter().filter(|name| *name != "_id_").count();
    }
    assert_eq!(
        indexes, 15,
        "3 per credential collection, 2 for requests, 1 for instances"
    );
    assert_eq!(
        out,
        format!("{valid}created {indexes} missing index(es), as `run` does at start\n")
    );
    // Then they are in place, and nothing is done.
    let (code, again, err) = config(&db).run(&["check"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again.lines().nth(1), valid.lines().nth(1), "{again}");
    assert_eq!(again.lines().count(), 2, "{again}");
}

/// The expireAfterSeconds of the history TTL index on `access_tokens`.
async fn history_ttl(db: &TestDb) -> Option<i64> {
    let indexes: Vec<mongodb::IndexModel> = db
        .db()
        .collection::<mongodb::bson::Document>("access_tokens")
        .list_indexes()
        .await
        .expect("indexes")
        .try_collect()
        .await
        .expect("indexes");
    indexes
        .iter()
        .filter_map(|index| index.options.as_ref())
        .find(|options| options.name.as_deref() == Some("expires_at_ttl"))
        .and_then(|options| options.expire_after)
        .map(|ttl| i64::try_from(ttl.as_secs()).expect("seconds"))
}

/// `check` never changes an index in place: a TTL index of another
/// retention is left for `run`, which changes it at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_leaves_a_changed_retention_to_run() {
    let db = TestDb::new().await;
    db.db()
        .run_command(doc! {
            "createIndexes": "access_tokens",
            "indexes": [{ "key": { "expires_at": 1 }, "name": "expires_at_ttl", "expireAfterSeconds": 3600 }],
        })
        .await
        .expect("a TTL index of another retention");
    let fake = FakeWechat::start().await.expect("fake WeChat");
    fake.add_app(account().app());
    let config = TestConfig::new(&db.uri, &db.name, &fake.url(), &[account()]);

    let (code, out, err) = config.run(&["check"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("left for `run`, which does it at start: change the TTL of expires_at_ttl on access_tokens from 1h to 7days"),
        "{out}"
    );
    assert_eq!(
        history_ttl(&db).await,
        Some(3600),
        "check changed the index"
    );

    let mut daemon = TestDaemon::spawn(&config);
    eventually(WAIT, "run changes the retention", || async {
        (history_ttl(&db).await == Some(7 * 86_400)).then_some(())
    })
    .await;
    assert_eq!(daemon.terminate(WAIT).code(), Some(0));
}

/// An index in the way of one wxtokend needs (the business query's, made by
/// hand without `unique`): `check` and `run` stop at once with exit 3,
/// saying which index to drop, instead of retrying; nothing is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_in_the_way_stops_check_and_run_and_names_it() {
    let db = TestDb::new().await;
    db.db()
        .run_command(doc! {
            "createIndexes": "access_tokens",
            "indexes": [{ "key": { "app_id": 1, "generation": -1 }, "name": "app_id_1_generation_-1" }],
        })
        .await
        .expect("an index in the way");
    let fake = FakeWechat::start().await.expect("fake WeChat");
    fake.add_app(account().app());
    let config = TestConfig::new(&db.uri, &db.name, &fake.url(), &[account()]);
    let drop = format!(
        "db.getSiblingDB(\"{}\").getCollection(\"access_tokens\").dropIndex(\"app_id_1_generation_-1\")",
        db.name
    );

    let (code, _, err) = config.run(&["check"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&drop), "{err}");

    let mut daemon = TestDaemon::spawn(&config);
    assert_eq!(daemon.wait_exit(WAIT).code(), Some(3));
    let log = daemon.raw_lines().join("\n");
    let named = daemon.logs().iter().any(|line| {
        line["level"] == "ERROR" && line["error"].as_str().is_some_and(|e| e.contains(&drop))
    });
    assert!(named, "{log}");
    assert!(!log.contains("is MongoDB up?"), "retried: {log}");
    assert_eq!(
        fake.token_calls(&account().id),
        0,
        "fetched without its indexes"
    );
}

#[tokio::test]
async fn check_exits_4_when_mongodb_is_unreachable() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.mongodb_uri = "mongodb://127.0.0.1:9/?directConnection=true".into();
    let (code, _, err) = cfg.run(&["check"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.starts_with("error: MongoDB is unreachable: "), "{err}");
}

/// A connection string the driver cannot parse is a configuration error
/// for every command that opens the database, and the message names the key
/// (and the file, for `mongodb.uri_file`) without quoting the string (it
/// may hold a password).
#[test]
fn an_unparseable_mongodb_uri_exits_3_and_is_never_quoted() {
    let id = account().id;
    let commands: [&[&str]; 7] = [
        &["run"],
        &["check"],
        &["get", &id],
        &["sign", &id, "https://shop.example.com/"],
        &["refresh", &id],
        &["status"],
        &["quota", &id, "--clear", "--yes"],
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let uri_file = dir.path().join("mongodb_uri");
    for (uri, in_file) in [
        ("mongodb://wxuser:s3cret-pass@127.0.0.1:notaport/", false),
        ("mongodb://wxuser:s3cret-pass@/", false),
        ("mongodb://wxuser:s3cret-pass@127.0.0.1:notaport/", true),
    ] {
        // With a file, the inline URI is broken differently: were the
        // file ignored, the error would name mongodb.uri.
        let mut cfg = TestConfig::new(
            if in_file {
                "mongodb://inline:unused@127.0.0.1:noport/"
            } else {
                uri
            },
            "wxtokend_cli_bad_uri",
            "https://api.weixin.qq.com",
            &[account()],
        );
        let key = if in_file {
            std::fs::write(&uri_file, format!("{uri}\n")).expect("write the URI file");
            cfg.mongodb_uri_file = Some(uri_file.clone());
            format!(
                "mongodb.uri_file: the connection string in {} is not shown",
                uri_file.display()
            )
        } else {
            "mongodb.uri: ".to_owned()
        };
        for args in commands {
            let (code, out, err) = cfg.run(args);
            assert_eq!(code, 3, "{args:?} with {uri}: {err}");
            assert_eq!(out, "", "{args:?}");
            assert!(
                err.starts_with("error: invalid configuration:\n"),
                "{args:?}: {err}"
            );
            let problems = problems(&err);
            assert_eq!(problems.len(), 1, "{args:?}: {err}");
            assert!(problems[0].starts_with(&key), "{args:?}: {err}");
            for secret in ["s3cret-pass", "wxuser", "notaport"] {
                assert!(!err.contains(secret), "{args:?} shows {secret:?}: {err}");
            }
        }
    }
}

#[test]
fn health_exits_3_without_a_fixed_admin_address_and_1_when_nothing_answers() {
    let unused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").to_string()
    };
    let good = TestConfig::new(
        "mongodb://127.0.0.1:9",
        "wxtokend_cli_health",
        "https://api.weixin.qq.com",
        &[account()],
    )
    .to_toml();
    let listen = "listen = \"127.0.0.1:0\"";
    assert!(good.contains(listen), "{good}");
    for (admin, expected) in [
        (listen.to_string(), 3),
        ("listen = \"\"".to_string(), 3),
        (format!("listen = {unused:?}"), 1),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, good.replace(listen, &admin)).expect("write");
        let path = path.to_str().expect("UTF-8 path");
        for args in [&["health"][..], &["health", "--ready"]] {
            let (code, out, err) = output(&mut wxtokend(&[&["--config", path], args].concat()));
            assert_eq!(code, expected, "{admin} {args:?}: {err}");
            assert_eq!(out, "");
            if expected == 3 {
                assert_eq!(
                    err,
                    "error: admin.listen is off or uses port 0: set a fixed address to use `health`\n"
                );
            }
        }
    }
}

/// A config file, extra environment, and the start of each problem reported.
type ConfigCase = (String, Vec<(&'static str, &'static str)>, Vec<&'static str>);

#[tokio::test]
async fn config_errors_exit_3_and_name_the_key() {
    let db = TestDb::new().await;
    let good = config(&db).to_toml();
    let secret = ("WXT_SECRET_WX0000000000000CLI", "x");
    let cases: Vec<ConfigCase> = vec![
        (
            good.clone(),
            vec![],
            vec!["accounts[0].secret_env: environment variable WXT_SECRET_WX0000000000000CLI is not set"],
        ),
        (
            good.replace("[refresh]", "[refresh]\nmargn = \"1s\""),
            vec![secret],
            vec!["refresh.margn: unknown field `margn`"],
        ),
        (
            good.clone(),
            vec![secret, ("WXTOKEND__REFRESH__MARGIN", "soon")],
            vec!["refresh.margin: "],
        ),
        (
            good.replace("allow_http = true", "allow_http = false")
                .replace("https://api.weixin.qq.com", "http://127.0.0.1:1"),
            vec![secret],
            vec![
                "wechat.base_url: http:// is refused",
                "wechat.wecom_base_url: http:// is refused",
            ],
        ),
        (
            good.split("[[accounts]]")
                .next()
                .unwrap_or_default()
                .to_string(),
            vec![],
            vec!["accounts: no account configured"],
        ),
    ];
    for (toml, env, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &toml).expect("write");
        let path = path.to_str().expect("UTF-8 path");
        let (code, _, err) = output(wxtokend(&["--config", path, "check"]).envs(env));
        assert_eq!(code, 3, "expected exit 3 for {expected:?}: {err}");
        assert!(err.starts_with("error: invalid configuration:\n"), "{err}");
        let problems = problems(&err);
        assert_eq!(problems.len(), expected.len(), "{expected:?}: {err}");
        for (problem, start) in problems.iter().zip(&expected) {
            assert!(problem.starts_with(start), "expected {start:?} in:\n{err}");
        }
    }
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let (code, _, err) = output(&mut wxtokend(&[
        "--config",
        "/nonexistent/wxtokend.toml",
        "check",
    ]));
    assert_eq!(code, 3);
    assert_eq!(
        problems(&err),
        ["--config: /nonexistent/wxtokend.toml does not exist or is not a file"],
        "{err}"
    );
}

#[tokio::test]
async fn get_prints_the_newest_valid_token_and_needs_no_secret() {
    let db = TestDb::new().await;
    let cfg = config(&db);
    let id = account().id;
    // No secret in the environment: `get` runs on business hosts.
    let get = |args: &[&str]| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = cfg.command(&dir, args);
        cmd.env_remove(account().secret_env());
        output(&mut cmd)
    };
    let (code, _, err) = get(&["get", &id]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("no access_token stored"), "{err}");

    let lifetime = Duration::from_secs(7200);
    store_token(&db, &id, "TOKEN-FOR-CLI", Duration::ZERO, lifetime).await;
    let (code, out, err) = get(&["get", &id]);
    assert_eq!((code, out.as_str()), (0, "TOKEN-FOR-CLI\n"), "{err}");

    let (code, out, _) = get(&["get", &id, "--json"]);
    assert_eq!(code, 0);
    let mut json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let object = json.as_object_mut().expect("an object");
    let time_left = object.remove("time_left").and_then(|t| t.as_u64());
    assert!(
        time_left.is_some_and(|t| (7000..=7200).contains(&t)),
        "{out}"
    );
    let fetched_at = object.remove("fetched_at").expect("fetched_at");
    let expires_at = object.remove("expires_at").expect("expires_at");
    let fetched_at = humantime::parse_rfc3339(fetched_at.as_str().expect("text")).expect("date");
    let expires_at = humantime::parse_rfc3339(expires_at.as_str().expect("text")).expect("date");
    assert_eq!(expires_at.duration_since(fetched_at).ok(), Some(lifetime));
    assert_eq!(
        json,
        serde_json::json!({
            "app_id": id,
            "kind": "access_token",
            "access_token": "TOKEN-FOR-CLI",
            "expires_in": 7200,
            "generation": 1,
            "reason": "scheduled",
            "fetched_by": "test-writer",
        })
    );
}

#[test]
fn unknown_key_in_file_fails_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[mongodb]\nurl = \"x\"\n").expect("write");
    let path = path.to_str().expect("UTF-8 path");
    let (code, out, err) = output(&mut wxtokend(&["--config", path, "get", "wx1"]));
    assert_eq!(code, 3);
    assert_eq!(out, "");
    let problems = problems(&err);
    assert_eq!(problems.len(), 1, "{err}");
    assert!(
        problems[0].starts_with("mongodb.url: unknown field `url`"),
        "{err}"
    );
}

/// Runs `wxtokend run` with `[log] level = LEVEL` and `RUST_LOG` (unset if
/// `None`) against an unreachable MongoDB until a stderr line contains
/// `wanted` or 20 s pass, then kills it. Returns the stderr lines seen.
fn run_logging(level: &str, rust_log: Option<&str>, wanted: &str) -> Vec<String> {
    let cfg = TestConfig::new(
        "mongodb://127.0.0.1:9/?directConnection=true",
        "wxtokend_cli_log",
        "https://api.weixin.qq.com",
        &[account()],
    );
    let default_level = "level = \"wxtokend=debug,info\"";
    let toml = cfg.to_toml();
    assert!(toml.contains(default_level), "{toml}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        toml.replace(default_level, &format!("level = {level:?}")),
    )
    .expect("write");
    let mut cmd = wxtokend(&["--config", path.to_str().expect("UTF-8 path"), "run"]);
    cmd.env(account().secret_env(), &account().secret)
        .env_remove("RUST_LOG");
    if let Some(value) = rust_log {
        cmd.env("RUST_LOG", value);
    }
    lines_until(&mut cmd, wanted)
}

/// Runs `cmd` until a stderr line contains `wanted` or 20 s pass, then
/// kills it. Returns the stderr lines seen.
fn lines_until(cmd: &mut Command, wanted: &str) -> Vec<String> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wxtokend");
    let stderr = child.stderr.take().expect("piped stderr");
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(wanted);
                seen.push(line);
                if found {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

/// `RUST_LOG` replaces `log.level`: with `level = "error"` an info line
/// shows only because `RUST_LOG=info` asks for it.
#[test]
fn rust_log_replaces_log_level() {
    let listening = "admin HTTP listening";
    let lines = run_logging("error", Some("info"), listening);
    assert!(
        lines.iter().any(|l| l.contains(listening)),
        "no info line with RUST_LOG=info: {lines:#?}"
    );
}

/// An invalid `RUST_LOG` is reported on stderr, with the fallback, and
/// `log.level` applies.
#[test]
fn an_invalid_rust_log_is_reported_and_log_level_applies() {
    let listening = "admin HTTP listening";
    let lines = run_logging("info", Some("wxtokend=loud"), listening);
    let first = lines.first().map(String::as_str).unwrap_or_default();
    assert!(
        first.starts_with("warning: RUST_LOG: `wxtokend=loud` is not a valid filter directive (")
            && first.ends_with("); using log.level (\"info\") instead"),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains(listening)), "{lines:#?}");
}

/// Without `--config` or `WXTOKEND_CONFIG`, /etc/wxtokend/wxtokend.toml is
/// read when it exists (here a file the test names instead, through the
/// test-only `WXTOKEND_DEFAULT_CONFIG`), and `check`, `config` and `run`
/// say which file they used.
#[tokio::test]
async fn the_default_file_is_read_when_no_file_is_given_and_named() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxtokend.toml");
    std::fs::write(&path, config(&db).to_toml()).expect("write");
    let default = |args: &[&str]| {
        let mut cmd = wxtokend(args);
        cmd.env("WXTOKEND_DEFAULT_CONFIG", &path)
            .env(account().secret_env(), &account().secret);
        cmd
    };
    let named = format!("{} (the default path)", path.display());

    let (code, out, err) = output(&mut default(&["check"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("configuration file: {named}\n")),
        "{out}"
    );

    let (code, out, err) = output(&mut default(&["config"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("# configuration file: {named}\n")),
        "{out}"
    );
    assert!(out.contains(&format!("database = {:?}", db.name)), "{out}");

    let lines = lines_until(&mut default(&["run"]), "configuration loaded");
    let loaded = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "configuration loaded")
        .unwrap_or_else(|| panic!("no \"configuration loaded\" line: {lines:?}"));
    assert_eq!(loaded["config"], named.as_str());

    // `--config` wins over the default file; without either, defaults only.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "[daemon]\ninstance_id = \"from-other\"\n").expect("write");
    let mut given = default(&["--config", other.to_str().expect("UTF-8 path"), "config"]);
    let (code, out, err) = output(&mut given);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("# configuration file: {}\n", other.display())),
        "{out}"
    );
    assert!(out.contains("instance_id = \"from-other\""), "{out}");
    let (code, out, err) = output(&mut wxtokend(&["config"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("# configuration file: none (no --config"),
        "{out}"
    );

    // A default file that cannot even be looked at (here: under a regular
    // file, as under a directory the user may not enter) is not silently
    // skipped: loading it fails, naming it.
    let unreachable = path.join("wxtokend.toml");
    let (code, _, err) = output(wxtokend(&["check"]).env("WXTOKEND_DEFAULT_CONFIG", &unreachable));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&unreachable.display().to_string()), "{err}");
}

/// `config` prints every setting as the layers set it (the environment
/// included), loadable again, and no secret: not the password of the
/// connection string, nor an AppSecret from the environment or a file, nor
/// what `mongodb.uri_file` holds; their variable names and paths, yes.
#[test]
fn config_prints_the_effective_configuration_without_any_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("wx_second");
    std::fs::write(&secret_file, "file-app-secret-0123").expect("write");
    let uri_file = dir.path().join("mongodb_uri");
    std::fs::write(&uri_file, "mongodb://wxtokend:file-db-password@db2/\n").expect("write");
    let path = dir.path().join("wxtokend.toml");
    let toml = format!(
        "[mongodb]\nuri = \"mongodb://wxtokend:inline-db-password@db1:27017/?authSource=wechat\"\n\
         [[accounts]]\nid = \"wx1\"\nplatform = \"official_account\"\nsecret_env = \"WX_MAIN\"\n\
         tickets = [\"jsapi\"]\n\
         [[accounts]]\nid = \"wx2\"\nplatform = \"mini_program\"\nsecret_file = {:?}\n",
        secret_file.display().to_string()
    );
    std::fs::write(&path, toml).expect("write");
    let path = path.to_str().expect("UTF-8 path");
    let secrets = [
        "inline-db-password",
        "file-db-password",
        "env-app-secret-0123",
        "file-app-secret-0123",
    ];
    let show = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = wxtokend(&[&["--config", path, "config"], args].concat());
        cmd.env("WX_MAIN", "env-app-secret-0123")
            .env("WXTOKEND__REFRESH__MARGIN", "5m")
            .envs(env.iter().copied());
        let (code, out, err) = output(&mut cmd);
        assert_eq!(code, 0, "{args:?} {env:?}: {err}");
        for secret in secrets {
            assert!(
                !out.contains(secret) && !err.contains(secret),
                "{secret} in {out}{err}"
            );
        }
        (out, err)
    };

    let (out, _) = show(&[], &[]);
    let toml: toml::Table = out.parse().expect("TOML");
    let mongodb = &toml["mongodb"];
    assert_eq!(
        mongodb["uri"].as_str(),
        Some("mongodb://wxtokend:****@db1:27017/?authSource=wechat")
    );
    assert_eq!(toml["refresh"]["margin"].as_str(), Some("5m"));
    let accounts = toml["accounts"].as_array().expect("accounts");
    assert_eq!(accounts[0]["secret_env"].as_str(), Some("WX_MAIN"));
    assert_eq!(accounts[0]["endpoint"].as_str(), Some("token"));
    assert_eq!(accounts[1]["secret_file"].as_str(), secret_file.to_str());
    // Printed, it loads again, and prints the same.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &out).expect("write");
    let (code, reprinted, err) = output(
        wxtokend(&["--config", again.to_str().expect("UTF-8 path"), "config"])
            .env("WXTOKEND__REFRESH__MARGIN", "5m"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        reprinted.lines().skip(1).collect::<Vec<_>>(),
        out.lines().skip(1).collect::<Vec<_>>()
    );

    // No secret is read: none needs to be there.
    let (code, _, err) = output(
        wxtokend(&["--config", path, "config"])
            .env_remove("WX_MAIN")
            .env("WXTOKEND__MONGODB__URI_FILE", "/nonexistent/mongodb_uri"),
    );
    assert_eq!(code, 0, "{err}");
    std::fs::remove_file(&secret_file).expect("remove");
    let (code, _, err) = output(&mut wxtokend(&["--config", path, "config"]));
    assert_eq!(code, 0, "{err}");

    let uri_file = uri_file.to_str().expect("UTF-8 path");
    let (out, err) = show(&["--json"], &[("WXTOKEND__MONGODB__URI_FILE", uri_file)]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["mongodb"]["uri_file"], uri_file);
    assert!(json["mongodb"].get("uri").is_none(), "{out}");
    assert_eq!(err, format!("configuration file: {path}\n"));
}
