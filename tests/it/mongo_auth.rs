//! MongoDB as production runs it: TLS (with a private CA, and mutual TLS),
//! SCRAM users from a connection string read from `mongodb.uri_file`, and
//! the least-privilege roles the README gives (`wxtokend` for the daemon,
//! `wxtokendReader` for business hosts, `wxtokendTicketWriter` for a
//! service handing over Open Platform verify tickets), taken from the
//! README itself.
//!
//! Each test runs a server of its own with `--auth` and TLS (SecantusDB
//! enforces SCRAM-SHA-256, TLS, client certificates and role privileges),
//! gives it its first user through the localhost exception (`createUser` on
//! `admin` while no user exists, from 127.0.0.1), then creates the roles and
//! users the test needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_wechat::FakeWechat;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ClientOptions;
use mongodb::Client;

use crate::support::mongo::{PrivateMongo, TestDb};
use crate::support::notify::NotifySocket;
use crate::support::tls::Pki;
use crate::support::{eventually, TestAccount, TestConfig, TestDaemon, WAIT};

const ROOT_PASSWORD: &str = "root-Pa55word-never-shown";

/// A TLS server with `--auth`, its certificates, and its first user (`root`).
struct SecureMongo {
    pki: Pki,
    mongo: PrivateMongo,
    mutual: bool,
    /// Holds the connection-string files.
    files: tempfile::TempDir,
}

/// A user of the test database: name, password.
struct User {
    name: &'static str,
    password: &'static str,
}

impl SecureMongo {
    /// Starts the server and creates `root` through the localhost exception.
    async fn start(mutual: bool) -> SecureMongo {
        let pki = Pki::new();
        let mut args = vec!["--auth".to_owned()];
        args.extend(pki.server_args(mutual));
        let mongo = PrivateMongo::start_with(&args);
        let secure = SecureMongo {
            pki,
            mongo,
            mutual,
            files: tempfile::tempdir().expect("tempdir"),
        };
        let anonymous = client(&secure.uri(None, "admin")).await;
        anonymous
            .database("admin")
            .run_command(doc! {
                "createUser": "root",
                "pwd": ROOT_PASSWORD,
                "roles": [{ "role": "root", "db": "admin" }],
            })
            .await
            .expect("the first user, through the localhost exception");
        secure
    }

    /// A connection string with TLS (and the client certificate when the
    /// server wants one), as `user` of `auth_source` if given.
    fn uri(&self, user: Option<&User>, auth_source: &str) -> String {
        let mut uri = format!("mongodb://127.0.0.1:{}/", self.mongo.port());
        if let Some(user) = user {
            uri = format!(
                "mongodb://{}:{}@127.0.0.1:{}/",
                user.name,
                user.password,
                self.mongo.port()
            );
        }
        uri.push_str(&format!(
            "?directConnection=true&tls=true&tlsCAFile={}&authSource={auth_source}",
            self.pki.ca().display()
        ));
        if self.mutual {
            uri.push_str(&format!(
                "&tlsCertificateKeyFile={}",
                self.pki.client().display()
            ));
        }
        uri
    }

    /// A fresh test database, seen as `root`.
    async fn database(&self) -> TestDb {
        TestDb::on(&self.uri(
            Some(&User {
                name: "root",
                password: ROOT_PASSWORD,
            }),
            "admin",
        ))
        .await
    }

    /// Writes `uri` into a file of its own (with a trailing newline, as
    /// editors and `echo` leave one) and returns its path.
    fn uri_file(&self, name: &str, uri: &str) -> PathBuf {
        let path = self.files.path().join(name);
        std::fs::write(&path, format!("{uri}\n")).expect("write the URI file");
        path
    }
}

async fn client(uri: &str) -> Client {
    let mut options = ClientOptions::parse(uri).await.expect("URI");
    options.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(options).expect("client")
}

/// The README's `db.createRole({...})` blocks (section "MongoDB: TLS,
/// users and roles"), for database `db` instead of `wechat`, with
/// `change` applied to each role's privileges.
pub(crate) fn readme_role(role: &str, db: &str, change: impl Fn(&mut Vec<Document>)) -> Document {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split("### MongoDB: TLS, users and roles")
        .nth(1)
        .expect("the README's section \"MongoDB: TLS, users and roles\"");
    let block = section
        .split("db.createRole(")
        .skip(1)
        .map(|rest| rest.split("\n})").next().unwrap_or_default().to_owned() + "\n}")
        .find(|json| json.contains(&format!("\"role\": \"{role}\"")))
        .unwrap_or_else(|| panic!("no db.createRole for {role} in the README"));
    let json: serde_json::Value =
        serde_json::from_str(&block.replace("\"wechat\"", &format!("{db:?}")))
            .unwrap_or_else(|e| panic!("the README's {role} role is not JSON ({e}): {block}"));
    let mut role = mongodb::bson::to_document(&json).expect("BSON");
    let mut privileges: Vec<Document> = role
        .get_array("privileges")
        .expect("privileges")
        .iter()
        .filter_map(|p| p.as_document().cloned())
        .collect();
    change(&mut privileges);
    role.insert(
        "privileges",
        privileges
            .into_iter()
            .map(Bson::Document)
            .collect::<Vec<_>>(),
    );
    role
}

/// Removes `action` from the privileges on `collection`.
fn without(action: &'static str, collection: &'static str) -> impl Fn(&mut Vec<Document>) {
    move |privileges| {
        for privilege in privileges.iter_mut() {
            let on = privilege
                .get_document("resource")
                .ok()
                .and_then(|r| r.get_str("collection").ok())
                == Some(collection);
            if on {
                let actions: Vec<Bson> = privilege
                    .get_array("actions")
                    .expect("actions")
                    .iter()
                    .filter(|a| a.as_str() != Some(action))
                    .cloned()
                    .collect();
                privilege.insert("actions", actions);
            }
        }
        // MongoDB refuses a privilege without actions.
        privileges.retain(|p| p.get_array("actions").is_ok_and(|a| !a.is_empty()));
    }
}

/// Creates `role` in the test database, and `user` holding it.
async fn create_user(db: &TestDb, role: Document, user: &User) {
    let name = role.get_str("role").expect("role name").to_owned();
    let mut create = doc! { "createRole": &name };
    create.extend(role.into_iter().filter(|(k, _)| k != "role"));
    db.db()
        .run_command(create)
        .await
        .unwrap_or_else(|e| panic!("createRole {name}: {e}"));
    db.db()
        .run_command(doc! {
            "createUser": user.name,
            "pwd": user.password,
            "roles": [&name],
        })
        .await
        .unwrap_or_else(|e| panic!("createUser {}: {e}", user.name));
}

const DAEMON: User = User {
    name: "wxtokend",
    password: "daemon-Pa55word-never-shown",
};
const READER: User = User {
    name: "order-service",
    password: "reader-Pa55word-never-shown",
};
const TICKET_WRITER: User = User {
    name: "wechat-callback",
    password: "writer-Pa55word-never-shown",
};

const COMPONENT_READER: User = User {
    name: "platform-service",
    password: "platform-Pa55word-never-shown",
};

fn account() -> TestAccount {
    TestAccount::new("wx0000000000secure", "secure-app-secret-0123")
}

/// A daemon configuration reading its connection string from `uri_file`.
fn config(db: &TestDb, fake: &FakeWechat, uri_file: &Path) -> TestConfig {
    let mut config = TestConfig::new(
        "mongodb://127.0.0.1:9/",
        &db.name,
        &fake.url(),
        &[account()],
    );
    config.mongodb_uri_file = Some(uri_file.to_owned());
    config
}

/// What no output of these tests may show.
fn secrets() -> Vec<&'static str> {
    vec![
        ROOT_PASSWORD,
        DAEMON.password,
        READER.password,
        TICKET_WRITER.password,
        "wrong-Pa55word-never-shown",
        "secure-app-secret-0123",
    ]
}

fn assert_free_of_secrets(what: &str, text: &str) {
    for secret in secrets() {
        assert!(!text.contains(secret), "{what} shows {secret:?}: {text}");
    }
}

/// The daemon (`run` until a token is stored), `check`, and a business
/// host's `get`, `refresh` and `status`, over TLS with a private CA and
/// SCRAM users holding the README's roles, each with its connection string
/// in a file of its own.
async fn daemon_and_business_host_over(mutual: bool) {
    let mongo = SecureMongo::start(mutual).await;
    let db = mongo.database().await;
    create_user(&db, readme_role("wxtokend", &db.name, |_| {}), &DAEMON).await;
    create_user(
        &db,
        readme_role("wxtokendReader", &db.name, |_| {}),
        &READER,
    )
    .await;
    let fake = FakeWechat::start().await.expect("fake WeChat");
    fake.add_app(account().app());
    let daemon_uri = mongo.uri_file("daemon", &mongo.uri(Some(&DAEMON), &db.name));
    let config = config(&db, &fake, &daemon_uri);

    let (code, out, err) = config.run(&["check"]);
    assert_eq!(code, 0, "check: {err}");
    assert!(
        out.contains("every collection readable, indexes in place"),
        "{out}"
    );

    let daemon = TestDaemon::spawn(&config);
    let stored = eventually(WAIT, "the daemon to store a token", || async {
        let docs = db.try_find("access_tokens", doc! {}).await?;
        docs.first()
            .and_then(|d| d.get_str("access_token").ok().map(str::to_owned))
    })
    .await;

    let mut business = config.clone();
    business.mongodb_uri_file = Some(mongo.uri_file("reader", &mongo.uri(Some(&READER), &db.name)));
    let (code, out, err) = business.run(&["get", &account().id]);
    assert_eq!(code, 0, "get: {err}");
    assert_eq!(out.trim(), stored);
    let (code, _, err) = business.run(&["refresh", &account().id]);
    assert_eq!(code, 0, "refresh: {err}");
    let (code, out, err) = business.run(&["status"]);
    assert_eq!(code, 0, "status: {err}");
    assert!(out.contains(&account().id), "{out}");
    for line in daemon.raw_lines() {
        assert_free_of_secrets("the daemon's log", &line);
    }
}

#[tokio::test]
async fn the_daemon_and_business_hosts_use_tls_and_scram_users_from_uri_files() {
    daemon_and_business_host_over(false).await;
}

#[tokio::test]
async fn mutual_tls_works_with_a_client_certificate_and_fails_clearly_without() {
    daemon_and_business_host_over(true).await;

    let mongo = SecureMongo::start(true).await;
    let db = mongo.database().await;
    create_user(&db, readme_role("wxtokend", &db.name, |_| {}), &DAEMON).await;
    let fake = FakeWechat::start().await.expect("fake WeChat");
    let uri = mongo.uri(Some(&DAEMON), &db.name);
    let without_certificate = uri
        .split("&tlsCertificateKeyFile=")
        .next()
        .expect("URI")
        .to_owned();
    let file = mongo.uri_file("no-certificate", &without_certificate);
    let (code, out, err) = config(&db, &fake, &file).run(&["check"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("requires a client certificate"), "{err}");
    assert_free_of_secrets("check", &err);
}

#[tokio::test]
async fn a_wrong_password_or_no_tls_fails_clearly_and_never_shows_the_password() {
    let mongo = SecureMongo::start(false).await;
    let db = mongo.database().await;
    create_user(&db, readme_role("wxtokend", &db.name, |_| {}), &DAEMON).await;
    let fake = FakeWechat::start().await.expect("fake WeChat");

    let wrong = User {
        name: DAEMON.name,
        password: "wrong-Pa55word-never-shown",
    };
    let file = mongo.uri_file("wrong", &mongo.uri(Some(&wrong), &db.name));
    let refused = config(&db, &fake, &file);
    for args in [&["check"][..], &["get", &account().id], &["status"]] {
        let (code, out, err) = refused.run(args);
        assert_eq!(code, 3, "{args:?}: {out}{err}");
        assert!(
            err.starts_with("error: MongoDB refused the user of the connection string"),
            "{args:?}: {err}"
        );
        assert_free_of_secrets("a refused login", &err);
    }
    // The daemon stops at once too: no retry can log in.
    let mut daemon = TestDaemon::spawn(&refused);
    assert_eq!(daemon.wait_exit(WAIT).code(), Some(3));
    let log = daemon.raw_lines().join("\n");
    assert!(
        log.contains("MongoDB refused the user of the connection string"),
        "{log}"
    );
    assert!(!log.contains("is MongoDB up?"), "retried: {log}");
    assert_free_of_secrets("the daemon's log", &log);

    let plain = format!(
        "mongodb://{}:{}@127.0.0.1:{}/?directConnection=true&authSource={}",
        DAEMON.name,
        DAEMON.password,
        mongo.mongo.port(),
        db.name
    );
    let file = mongo.uri_file("plain", &plain);
    let (code, out, err) = config(&db, &fake, &file).run(&["check"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.starts_with("error: MongoDB is unreachable: "), "{err}");
    assert!(err.contains("if it requires TLS, put tls=true"), "{err}");
    assert_free_of_secrets("check without TLS", &err);

    // TLS, but the server's CA is not the one trusted (the system's).
    let untrusted = mongo
        .uri(Some(&DAEMON), &db.name)
        .replace(&format!("&tlsCAFile={}", mongo.pki.ca().display()), "");
    let file = mongo.uri_file("untrusted", &untrusted);
    let (code, out, err) = config(&db, &fake, &file).run(&["check"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("not signed by a CA this host trusts"), "{err}");
    assert_free_of_secrets("check with another CA", &err);

    // A CA file that is not there: the connection string's problem (exit
    // 3), naming the key, the file of the string, and the missing file.
    let missing = mongo
        .uri(Some(&DAEMON), &db.name)
        .replace(&mongo.pki.ca().display().to_string(), "/nonexistent/ca.pem");
    let file = mongo.uri_file("missing-ca", &missing);
    let (code, out, err) = config(&db, &fake, &file).run(&["check"]);
    assert_eq!(code, 3, "{out}{err}");
    let key = format!(
        "  - mongodb.uri_file: the connection string in {}",
        file.display()
    );
    assert!(
        err.contains(&key) && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
    assert_free_of_secrets("check with a missing CA file", &err);

    // TLS against a server without it: each waits for the other.
    let plain_server = TestDb::new().await;
    let file = mongo.uri_file(
        "tls-to-plain",
        &format!(
            "{}&tls=true&tlsCAFile={}",
            plain_server.uri,
            mongo.pki.ca().display()
        ),
    );
    let (code, out, err) = config(&plain_server, &fake, &file).run(&["check"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("does tls=true match the server?"), "{err}");
}

/// The README's role minus `createIndex` on `access_tokens`: `check` and
/// `run` stop at once, naming the action, the collection and the role;
/// `run` never tells systemd it is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_the_index_privilege_stops_the_daemon_before_ready() {
    let mongo = SecureMongo::start(false).await;
    let db = mongo.database().await;
    let role = readme_role(
        "wxtokend",
        &db.name,
        without("createIndex", "access_tokens"),
    );
    create_user(&db, role, &DAEMON).await;
    let fake = FakeWechat::start().await.expect("fake WeChat");
    let file = mongo.uri_file("daemon", &mongo.uri(Some(&DAEMON), &db.name));
    let mut config = config(&db, &fake, &file);
    let expected = format!("createIndex on {}.access_tokens", db.name);

    let (code, _, err) = config.run(&["check"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&expected) && err.contains("role wxtokend"),
        "{err}"
    );

    let notify = NotifySocket::bind();
    config.env.extend(notify.env(None));
    let mut daemon = TestDaemon::spawn(&config);
    let status = daemon.wait_exit(WAIT);
    assert_eq!(status.code(), Some(3));
    let log = daemon.raw_lines().join("\n");
    assert!(log.contains(&expected), "{log}");
    assert!(!log.contains("is MongoDB up?"), "retried: {log}");
    let said = notify.settle().await;
    assert!(!said.iter().any(|m| m.has("READY=1")), "{said:?}");
}

/// The README's role minus `collMod`, with a TTL index of another retention
/// in place: changing the retention needs `collMod`, and the daemon stops
/// at once, naming it.
#[tokio::test]
async fn a_user_without_collmod_stops_the_daemon_when_the_retention_changes() {
    let mongo = SecureMongo::start(false).await;
    let db = mongo.database().await;
    let role = readme_role("wxtokend", &db.name, |privileges| {
        for collection in [
            "access_tokens",
            "jsapi_tickets",
            "wx_card_tickets",
            "agent_config_tickets",
        ] {
            without("collMod", collection)(privileges);
        }
    });
    create_user(&db, role, &DAEMON).await;
    db.db()
        .run_command(doc! {
            "createIndexes": "access_tokens",
            "indexes": [{
                "key": { "expires_at": 1 },
                "name": "expires_at_ttl",
                "expireAfterSeconds": 3600,
            }],
        })
        .await
        .expect("a TTL index of another retention");
    let fake = FakeWechat::start().await.expect("fake WeChat");
    let file = mongo.uri_file("daemon", &mongo.uri(Some(&DAEMON), &db.name));
    let mut daemon = TestDaemon::spawn(&config(&db, &fake, &file));
    assert_eq!(daemon.wait_exit(WAIT).code(), Some(3));
    let log = daemon.raw_lines().join("\n");
    let expected = format!("collMod on {}.access_tokens", db.name);
    assert!(log.contains(&expected), "{log}");
    assert!(!log.contains("is MongoDB up?"), "retried: {log}");
}

/// The README's role minus `insert` on `access_tokens`: the daemon starts
/// (its indexes are in place, it tells systemd so), then its first write
/// is refused, and it stops (exit 3) naming the action, the collection and
/// the role, instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privilege_refused_while_running_stops_the_daemon() {
    let mongo = SecureMongo::start(false).await;
    let db = mongo.database().await;
    let role = readme_role("wxtokend", &db.name, without("insert", "access_tokens"));
    create_user(&db, role, &DAEMON).await;
    let fake = FakeWechat::start().await.expect("fake WeChat");
    fake.add_app(account().app());
    let file = mongo.uri_file("daemon", &mongo.uri(Some(&DAEMON), &db.name));
    let mut config = config(&db, &fake, &file);
    let notify = NotifySocket::bind();
    config.env.extend(notify.env(None));
    let mut daemon = TestDaemon::spawn(&config);
    notify.wait_for("READY=1", 1).await;
    assert_eq!(daemon.wait_exit(WAIT).code(), Some(3));
    let log = daemon.raw_lines().join("\n");
    let expected = format!("insert on {}.access_tokens", db.name);
    assert!(log.contains(&expected), "{log}");
    assert!(
        log.contains("stopping: MongoDB refused a privilege"),
        "{log}"
    );
    // The token it fetched and could not write is said lost, loudly.
    let lost = daemon.logs().iter().any(|line| {
        line["level"] == "ERROR"
            && line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("stopping without storing the fetched access_token"))
    });
    assert!(lost, "{log}");
    for line in daemon.raw_lines() {
        assert_free_of_secrets("the daemon's log", &line);
        for token in fake.all_issued_tokens(&account().id) {
            assert!(!line.contains(&token), "a token in the log: {line}");
        }
    }
}

/// Business hosts: the reader role cannot write credentials; without the
/// `insert` on `refresh_requests`, `refresh` says what to grant; a user
/// without any role, or no user at all, gets a message naming the fix.
#[tokio::test]
async fn business_hosts_get_exactly_the_readers_privileges_and_clear_refusals() {
    let mongo = SecureMongo::start(false).await;
    let db = mongo.database().await;
    let role = readme_role(
        "wxtokendReader",
        &db.name,
        without("insert", "refresh_requests"),
    );
    create_user(&db, role, &READER).await;
    let nobody = User {
        name: "nobody",
        password: "nobody-Pa55word",
    };
    db.db()
        .run_command(doc! { "createUser": nobody.name, "pwd": nobody.password, "roles": [] })
        .await
        .expect("a user without roles");
    let fake = FakeWechat::start().await.expect("fake WeChat");

    let reader = client(&mongo.uri(Some(&READER), &db.name)).await;
    let write = reader
        .database(&db.name)
        .collection::<Document>("access_tokens")
        .insert_one(doc! { "app_id": "wx-forged", "access_token": "FORGED" })
        .await;
    assert!(write.is_err(), "the reader role can write credentials");
    // The Open Platform: the directory is readable, the sealed refresh
    // tokens are not, and the refusal names the action and the collection.
    let reader_db = reader.database(&db.name);
    reader_db
        .collection::<Document>("authorizers")
        .find_one(doc! {})
        .await
        .expect("the reader role reads the authorizer directory");
    let sealed = reader_db
        .collection::<Document>("authorizer_secrets")
        .find_one(doc! {})
        .await
        .expect_err("the reader role reads the sealed refresh tokens");
    let refused = wxtokend_reader::Refused::of(&sealed)
        .unwrap_or_else(|| panic!("not a refusal: {sealed}"))
        .to_string();
    let expected = format!(
        "the user lacks the action find on {}.authorizer_secrets",
        db.name
    );
    assert!(refused.contains(&expected), "{refused}");
    let component_token = reader_db
        .collection::<Document>("component_access_tokens")
        .find_one(doc! {})
        .await;
    assert!(
        component_token.is_err(),
        "the reader role reads the component token, which lists every refresh token"
    );

    // A platform's service may read the component token, nothing else.
    create_user(
        &db,
        readme_role("wxtokendComponentReader", &db.name, |_| {}),
        &COMPONENT_READER,
    )
    .await;
    let platform = client(&mongo.uri(Some(&COMPONENT_READER), &db.name)).await;
    let platform_db = platform.database(&db.name);
    platform_db
        .collection::<Document>("component_access_tokens")
        .find_one(doc! {})
        .await
        .expect("the component reader reads the component token");
    for refused in [
        "authorizer_secrets",
        "component_verify_tickets",
        "access_tokens",
    ] {
        let read = platform_db
            .collection::<Document>(refused)
            .find_one(doc! {})
            .await;
        assert!(read.is_err(), "the component reader reads {refused}");
    }

    // A service that hands over verify tickets may insert them, nothing
    // more: not read them back, not touch a credential.
    create_user(
        &db,
        readme_role("wxtokendTicketWriter", &db.name, |_| {}),
        &TICKET_WRITER,
    )
    .await;
    let writer = client(&mongo.uri(Some(&TICKET_WRITER), &db.name)).await;
    let writer_db = writer.database(&db.name);
    let tickets = writer_db.collection::<Document>("component_verify_tickets");
    tickets
        .insert_one(doc! { "component_appid": "wxc", "ticket": "ticket@@@external" })
        .await
        .expect("the ticket writer inserts a ticket");
    assert!(tickets.find_one(doc! {}).await.is_err(), "it reads tickets");
    let forged = writer_db
        .collection::<Document>("access_tokens")
        .insert_one(doc! { "app_id": "wx-forged", "access_token": "FORGED" })
        .await;
    assert!(forged.is_err(), "the ticket writer writes credentials");

    let id = account().id;
    let file = mongo.uri_file("reader", &mongo.uri(Some(&READER), &db.name));
    let (code, _, err) = config(&db, &fake, &file).run(&["refresh", &id]);
    assert_eq!(code, 3, "{err}");
    let expected = format!("insert on {}.refresh_requests", db.name);
    assert!(
        err.contains(&expected) && err.contains("wxtokendReader"),
        "{err}"
    );

    let file = mongo.uri_file("nobody", &mongo.uri(Some(&nobody), &db.name));
    let (code, _, err) = config(&db, &fake, &file).run(&["get", &id]);
    assert_eq!(code, 3, "{err}");
    let expected = format!("refused find on {}.access_tokens", db.name);
    assert!(err.contains(&expected), "{err}");

    let file = mongo.uri_file("anonymous", &mongo.uri(None, &db.name));
    let (code, _, err) = config(&db, &fake, &file).run(&["get", &id]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.starts_with("error: MongoDB requires authentication to run find"),
        "{err}"
    );
}

/// Against a server that lists the user's privileges (mongod does;
/// SecantusDB lists none, so the daemon's start-up check cannot run here),
/// the daemon compares them with what it needs before fetching anything.
/// Here the comparison is fed the README's own `wxtokend` role, as mongod
/// would list it: it lacks nothing, and without `insert` on `access_tokens`
/// that action is named, so the daemon stops before a token is fetched that
/// it could not store.
#[test]
fn the_readme_role_is_what_the_start_up_privilege_check_asks_for() {
    let status = |role: Document| {
        doc! {
            "authInfo": {
                "authenticatedUsers": [{ "user": "wxtokend", "db": "wechat" }],
                "authenticatedUserPrivileges": role.get_array("privileges").expect("privileges").clone(),
            },
        }
    };
    use wxtokend::store::{IndexStep, MissingPrivileges};
    // The first start (every index created) and a changed retention.
    let retention = Duration::from_secs(86_400);
    let mut credentials = wxtokend::store::credential_indexes(retention);
    // With [open_platform]: the component's and the authorizers' tokens.
    credentials.extend(wxtokend::store::credential_indexes_of(
        &[wxtokend_reader::CredentialKind::ComponentAccessToken],
        retention,
    ));
    credentials.extend(wxtokend::store::authorizer_credential_indexes(retention));
    let mut steps: Vec<IndexStep> = credentials
        .iter()
        .chain(&wxtokend::store::request_indexes())
        .chain(&wxtokend::coordination::indexes())
        .chain(&wxtokend::open_platform::store::indexes())
        .cloned()
        .map(IndexStep::Create)
        .collect();
    steps.extend(
        credentials
            .into_iter()
            .filter(|spec| spec.ttl.is_some())
            .map(|spec| IndexStep::ChangeTtl {
                spec,
                from: Duration::from_secs(60),
            }),
    );
    let mut needed = wxtokend::privileges_needed(&steps);
    needed.extend(wxtokend::open_platform_privileges());
    let full = status(readme_role("wxtokend", "wechat", |_| {}));
    assert_eq!(
        MissingPrivileges::compare("wechat", Some(&full), &needed),
        None
    );
    let partial = status(readme_role(
        "wxtokend",
        "wechat",
        without("insert", "access_tokens"),
    ));
    let missing =
        MissingPrivileges::compare("wechat", Some(&partial), &needed).expect("insert is missing");
    assert_eq!(missing.missing, [("access_tokens", "insert")]);
    // An index already in place needs no createIndex.
    let no_index = status(readme_role(
        "wxtokend",
        "wechat",
        without("createIndex", "instances"),
    ));
    let everyday = wxtokend::privileges_needed(&[]);
    assert_eq!(
        MissingPrivileges::compare("wechat", Some(&no_index), &everyday),
        None
    );
    assert!(MissingPrivileges::compare("wechat", Some(&no_index), &needed).is_some());
    // The reader's role is not enough for the daemon.
    let reader = status(readme_role("wxtokendReader", "wechat", |_| {}));
    assert!(MissingPrivileges::compare("wechat", Some(&reader), &everyday).is_some());
    // With [open_platform], the daemon's role covers the directory and the
    // sealed secrets; without update on the secrets, that is named.
    let no_update = status(readme_role(
        "wxtokend",
        "wechat",
        without("update", "authorizer_secrets"),
    ));
    let missing =
        MissingPrivileges::compare("wechat", Some(&no_update), &needed).expect("update is missing");
    assert_eq!(missing.missing, [("authorizer_secrets", "update")]);
}
