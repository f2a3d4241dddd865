//! The test MongoDB server. `MONGODB_URI` (set by scripts/test.sh, or
//! pointing at a real MongoDB) is used when present; otherwise one server per
//! test binary is started with scripts/test-mongodb.sh. Tests that stop and
//! restart MongoDB get a [`PrivateMongo`] of their own.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use mongodb::bson::Document;
use mongodb::{Client, Database};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/test-mongodb.sh")
}

/// A server run by `test-mongodb.sh serve`: it stops when we close its stdin,
/// which also happens when the test process dies.
struct Served {
    child: Child,
    stdin: Option<ChildStdin>,
    uri: String,
}

fn serve(dir: &std::path::Path, port: u16) -> Served {
    let mut child = Command::new("bash")
        .arg(script())
        .arg("serve")
        .arg(dir)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run scripts/test-mongodb.sh");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut uri = String::new();
    BufReader::new(stdout)
        .read_line(&mut uri)
        .expect("read the server URI");
    assert!(
        uri.starts_with("mongodb://"),
        "test MongoDB did not start (see stderr above)"
    );
    Served {
        stdin: child.stdin.take(),
        child,
        uri: uri.trim().to_string(),
    }
}

impl Served {
    fn stop(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// URI of the server shared by all tests of this binary.
pub fn shared_uri() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    static KEEP: Mutex<Vec<(Served, tempfile::TempDir)>> = Mutex::new(Vec::new());
    SHARED
        .get_or_init(|| {
            if let Ok(uri) = std::env::var("MONGODB_URI") {
                return uri;
            }
            let dir = tempfile::tempdir().expect("tempdir");
            let served = serve(dir.path(), 0);
            let uri = served.uri.clone();
            // Kept open for the life of the process; closed (and the server
            // stopped) when the process exits.
            KEEP.lock().expect("lock").push((served, dir));
            uri
        })
        .clone()
}

/// A database name no other test uses (MongoDB allows 63 bytes).
pub fn unique_db(test: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("wxt_{}_{}_{n}", std::process::id(), test);
    name.truncate(63);
    name
}

/// A fresh database on the shared server, and a driver client for checks.
pub struct TestDb {
    pub uri: String,
    pub name: String,
    pub client: Client,
}

impl TestDb {
    pub async fn new(test: &str) -> TestDb {
        let uri = shared_uri();
        let client = Client::with_uri_str(&uri).await.expect("mongodb client");
        TestDb {
            uri,
            name: unique_db(test),
            client,
        }
    }

    pub fn db(&self) -> Database {
        self.client.database(&self.name)
    }

    /// The daemon's own store on this database.
    pub async fn store(&self) -> wxtokend::store::Store {
        wxtokend::store::Store::connect(
            &secrecy::SecretString::from(self.uri.clone()),
            &self.name,
            wxtokend::store::ConnectOptions::default(),
        )
        .await
        .expect("store")
    }

    /// All documents of a collection, oldest generation first.
    pub async fn docs(&self, collection: &str) -> Vec<Document> {
        use futures_util::TryStreamExt;
        self.db()
            .collection::<Document>(collection)
            .find(mongodb::bson::doc! {})
            .sort(mongodb::bson::doc! { "generation": 1 })
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("collect")
    }
}

/// The access tokens stored in `db` on the server at `uri`, oldest first;
/// `None` while that server does not answer (it may be stopped on purpose).
pub async fn tokens_at(uri: &str, db: &str) -> Option<Vec<Document>> {
    use futures_util::TryStreamExt;
    let client = Client::with_uri_str(uri).await.ok()?;
    client
        .database(db)
        .collection::<Document>("access_tokens")
        .find(mongodb::bson::doc! {})
        .sort(mongodb::bson::doc! { "generation": 1 })
        .await
        .ok()?
        .try_collect()
        .await
        .ok()
}

/// A server of this test's own, which it can stop and start again on the
/// same port with the same data.
pub struct PrivateMongo {
    dir: tempfile::TempDir,
    port: u16,
    served: Option<Served>,
}

impl PrivateMongo {
    pub fn start() -> PrivateMongo {
        let dir = tempfile::tempdir().expect("tempdir");
        let served = serve(dir.path(), 0);
        let port = served
            .uri
            .trim_start_matches("mongodb://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in URI");
        PrivateMongo {
            dir,
            port,
            served: Some(served),
        }
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(served) = self.served.take() {
            served.stop();
        }
    }

    /// Sends a signal to the server process itself (`KILL`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.path().join("server.pid")).expect("server.pid");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.trim())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} of the test MongoDB failed"
        );
    }

    pub fn restart(&mut self) {
        self.stop();
        self.served = Some(serve(self.dir.path(), self.port));
    }
}

impl Drop for PrivateMongo {
    fn drop(&mut self) {
        self.stop();
    }
}
