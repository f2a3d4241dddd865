//! The test MongoDB server. `MONGODB_URI` (set by scripts/test.sh, or
//! pointing at a real MongoDB) is used when present; otherwise one server for
//! the test binary is started with scripts/test-mongodb.sh. Each test gets a
//! fresh database ([`TestDb`]); tests that stop and restart MongoDB get a
//! [`PrivateMongo`] of their own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

use super::served::{serve, Kind, PrivateServer, Served};

/// The test MongoDB-protocol server, as `scripts/test-mongodb.sh` runs it.
static MONGODB: Kind = Kind {
    script: "scripts/test-mongodb.sh",
    scheme: "mongodb://",
    name: "MongoDB",
};

/// URI of the server shared by all tests.
fn shared_uri() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    static KEEP: Mutex<Vec<(Served, tempfile::TempDir)>> = Mutex::new(Vec::new());
    SHARED
        .get_or_init(|| {
            if let Ok(uri) = std::env::var("MONGODB_URI") {
                return uri;
            }
            let dir = tempfile::tempdir().expect("tempdir");
            let served = serve(&MONGODB, dir.path(), 0, &[]);
            let uri = served.address.clone();
            // Kept open for the life of the process; closed (and the server
            // stopped) when the process exits.
            KEEP.lock().expect("lock").push((served, dir));
            uri
        })
        .clone()
}

/// A database name no other test uses (MongoDB allows 63 bytes), named
/// after the running test for whoever reads the server's data.
fn unique_db() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let thread = std::thread::current();
    // Tests run on a thread named after them: `module::test_name`.
    let test = thread
        .name()
        .and_then(|name| name.rsplit("::").next())
        .unwrap_or("test");
    let mut name = format!("wxt_{}_{n}_{test}", std::process::id());
    name.truncate(63);
    name
}

/// A fresh database, and a driver client for checks.
pub struct TestDb {
    pub uri: String,
    pub name: String,
    pub client: Client,
}

impl TestDb {
    /// A fresh database on the server shared by every test.
    pub async fn new() -> TestDb {
        TestDb::on(&shared_uri()).await
    }

    /// A fresh database on the server at `uri`.
    pub async fn on(uri: &str) -> TestDb {
        let mut options = ClientOptions::parse(uri).await.expect("MongoDB URI");
        // Checks while a test has stopped its server fail fast instead of
        // waiting the driver's default 30 s.
        options.server_selection_timeout = Some(Duration::from_secs(2));
        TestDb {
            uri: uri.to_owned(),
            name: unique_db(),
            client: Client::with_options(options).expect("mongodb client"),
        }
    }

    pub fn db(&self) -> Database {
        self.client.database(&self.name)
    }

    /// Documents of a collection matching `filter`, oldest generation
    /// first; `None` while the server does not answer (a test may have
    /// stopped it).
    pub async fn try_find(&self, collection: &str, filter: Document) -> Option<Vec<Document>> {
        self.db()
            .collection::<Document>(collection)
            .find(filter)
            .sort(doc! { "generation": 1 })
            .await
            .ok()?
            .try_collect()
            .await
            .ok()
    }

    /// All documents of a collection, oldest generation first.
    pub async fn docs(&self, collection: &str) -> Vec<Document> {
        self.try_find(collection, doc! {})
            .await
            .unwrap_or_else(|| panic!("cannot read {collection}"))
    }

    /// How many documents a collection holds.
    pub async fn count(&self, collection: &str) -> u64 {
        self.db()
            .collection::<Document>(collection)
            .count_documents(doc! {})
            .await
            .expect("count")
    }
}

/// A server of this test's own, which it can stop and start again on the
/// same port with the same data, or signal (`KILL`, `STOP`, `CONT`).
pub struct PrivateMongo(PrivateServer);

impl PrivateMongo {
    pub fn start() -> PrivateMongo {
        Self::start_with(&[])
    }

    /// A server started with options of its own (`--auth`, `--tls-*`).
    pub fn start_with(args: &[String]) -> PrivateMongo {
        PrivateMongo(PrivateServer::start(&MONGODB, args))
    }

    pub fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true",
            self.0.port()
        )
    }
}

impl std::ops::Deref for PrivateMongo {
    type Target = PrivateServer;
    fn deref(&self) -> &PrivateServer {
        &self.0
    }
}

impl std::ops::DerefMut for PrivateMongo {
    fn deref_mut(&mut self) -> &mut PrivateServer {
        &mut self.0
    }
}
