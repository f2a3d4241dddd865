//! A whole test setup in one expression: a fresh database, a fake WeChat
//! that knows the accounts, running daemons, and a reader for business
//! code's view.
//!
//! ```ignore
//! let s = Scenario::new()
//!     .account(TestAccount::new("wx0000000000000001", "secret-1"))
//!     .app(|app| app.expires_in(Duration::from_secs(6)))
//!     .config(|c| c.margin = "3s")
//!     .replicas(2)
//!     .build()
//!     .await;
//! ```

use std::collections::HashMap;
use std::time::SystemTime;

use fake_wechat::{AppConfig, FakeWechat, Fault};
use mongodb::bson::{doc, Document};
use wxtokend_reader::AccountId;
use wxtokend_reader::Reader;

use super::daemon::{TestAccount, TestConfig, TestDaemon};
use super::mongo::{PrivateMongo, TestDb};
use super::store::{self, Lease};
use super::{eventually, WAIT};

/// Everything a test talks to. Dropping it stops the daemons, the fake and
/// a private MongoDB server.
pub struct Scenario {
    pub db: TestDb,
    pub fake: FakeWechat,
    pub accounts: Vec<TestAccount>,
    /// What each daemon runs with, apart from its instance id.
    pub config: TestConfig,
    /// The daemons started by `build`.
    pub daemons: Vec<TestDaemon>,
    pub reader: Reader,
    /// Present with [`ScenarioBuilder::private_mongo`].
    pub mongo: Option<PrivateMongo>,
}

type AppShape = Box<dyn Fn(AppConfig) -> AppConfig>;
type ConfigChange = Box<dyn FnOnce(&mut TestConfig)>;

pub struct ScenarioBuilder {
    accounts: Vec<TestAccount>,
    app: AppShape,
    apps: Vec<(String, AppShape)>,
    queued: Vec<(String, Vec<Fault>)>,
    sticky: Vec<(String, Fault)>,
    config: Vec<ConfigChange>,
    replicas: usize,
    private_mongo: bool,
}

impl Scenario {
    /// No account yet, one daemon, the shared MongoDB server.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> ScenarioBuilder {
        ScenarioBuilder {
            accounts: Vec::new(),
            app: Box::new(|app| app),
            apps: Vec::new(),
            queued: Vec::new(),
            sticky: Vec::new(),
            config: Vec::new(),
            replicas: 1,
            private_mongo: false,
        }
    }
}

impl ScenarioBuilder {
    /// An account configured in the daemon and registered with the fake.
    pub fn account(mut self, account: TestAccount) -> Self {
        self.accounts.push(account);
        self
    }

    /// `n` interchangeable Official Accounts ([`TestAccount::numbered`]).
    pub fn accounts(mut self, n: usize) -> Self {
        self.accounts.extend((0..n).map(TestAccount::numbered));
        self
    }

    /// How the fake WeChat treats every account (token lifetimes, quota...).
    pub fn app(mut self, shape: impl Fn(AppConfig) -> AppConfig + 'static) -> Self {
        self.app = Box::new(shape);
        self
    }

    /// How the fake WeChat treats one account, after [`Self::app`].
    pub fn app_for(
        mut self,
        account: &str,
        shape: impl Fn(AppConfig) -> AppConfig + 'static,
    ) -> Self {
        self.apps.push((account.to_owned(), Box::new(shape)));
        self
    }

    /// Faults for the account's next token calls, one per call.
    pub fn faults(mut self, account: &str, faults: impl IntoIterator<Item = Fault>) -> Self {
        self.queued
            .push((account.to_owned(), faults.into_iter().collect()));
        self
    }

    /// A fault for every token call of the account.
    pub fn sticky_fault(mut self, account: &str, fault: Fault) -> Self {
        self.sticky.push((account.to_owned(), fault));
        self
    }

    /// Changes the daemons' configuration (fast test timings by default).
    pub fn config(mut self, change: impl FnOnce(&mut TestConfig) + 'static) -> Self {
        self.config.push(Box::new(change));
        self
    }

    /// How many daemons `build` starts: one (instance `test-instance`) by
    /// default, else `replica-1`, `replica-2`...; 0 to start them yourself.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// A MongoDB server of the test's own, which it may stop and restart.
    pub fn private_mongo(mut self) -> Self {
        self.private_mongo = true;
        self
    }

    pub async fn build(self) -> Scenario {
        let mongo = self.private_mongo.then(PrivateMongo::start);
        let db = match &mongo {
            Some(mongo) => TestDb::on(&mongo.uri()).await,
            None => TestDb::new().await,
        };
        let fake = FakeWechat::start().await.expect("fake WeChat");
        for account in &self.accounts {
            let mut app = (self.app)(account.app());
            for (_, shape) in self.apps.iter().filter(|(id, _)| *id == account.id) {
                app = shape(app);
            }
            fake.add_app(app);
        }
        for (account, faults) in self.queued {
            fake.push_faults(&account, faults);
        }
        for (account, fault) in self.sticky {
            fake.set_sticky_fault(&account, Some(fault));
        }
        let mut config = TestConfig::new(&db.uri, &db.name, &fake.url(), &self.accounts);
        for change in self.config {
            change(&mut config);
        }
        let reader = Reader::connect(&db.uri, &db.name).await.expect("reader");
        let mut scenario = Scenario {
            db,
            fake,
            accounts: self.accounts,
            config,
            daemons: Vec::new(),
            reader,
            mongo,
        };
        scenario.daemons = match self.replicas {
            1 => vec![TestDaemon::spawn(&scenario.config)],
            n => (1..=n)
                .map(|i| scenario.spawn(&format!("replica-{i}")))
                .collect(),
        };
        scenario
    }
}

impl Scenario {
    /// The only (or first) daemon.
    pub fn daemon(&self) -> &TestDaemon {
        self.daemons.first().expect("a running daemon")
    }

    pub fn daemon_mut(&mut self) -> &mut TestDaemon {
        self.daemons.first_mut().expect("a running daemon")
    }

    /// The daemon running as `instance`.
    pub fn replica(&self, instance: &str) -> &TestDaemon {
        self.daemons
            .iter()
            .find(|d| d.instance == instance)
            .unwrap_or_else(|| panic!("no daemon {instance}"))
    }

    /// Starts another daemon with this configuration, as `instance`.
    pub fn spawn(&self, instance: &str) -> TestDaemon {
        let mut config = self.config.clone();
        config.instance_id = instance.into();
        TestDaemon::spawn(&config)
    }

    /// The id of the only (or first) account.
    pub fn id(&self) -> &str {
        &self.accounts.first().expect("an account").id
    }

    /// The same, as business code names it.
    pub fn account_id(&self) -> AccountId {
        AccountId::new(self.id())
    }

    /// The private MongoDB server.
    pub fn mongo(&mut self) -> &mut PrivateMongo {
        self.mongo
            .as_mut()
            .expect("a scenario with private_mongo()")
    }

    /// Runs `wxtokend ARGS` with the daemons' configuration: exit code,
    /// stdout, stderr.
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.config.run(args)
    }

    /// Every stored access token, oldest generation first.
    pub async fn tokens(&self) -> Vec<Document> {
        self.db.docs("access_tokens").await
    }

    /// The stored access tokens of one account, oldest generation first.
    pub async fn tokens_of(&self, account: &str) -> Vec<Document> {
        self.db
            .try_find("access_tokens", doc! { "app_id": account })
            .await
            .expect("read access_tokens")
    }

    /// Waits until `collection` holds at least `n` documents, and returns them.
    pub async fn wait_for_docs(&self, collection: &str, n: usize) -> Vec<Document> {
        eventually(WAIT, &format!("{n} documents in {collection}"), || async {
            let docs = self.db.try_find(collection, doc! {}).await?;
            (docs.len() >= n).then_some(docs)
        })
        .await
    }

    /// Waits until at least `n` access tokens are stored, and returns them.
    pub async fn wait_for_tokens(&self, n: usize) -> Vec<Document> {
        self.wait_for_docs("access_tokens", n).await
    }

    /// The account's lease document; `None` if it has none or MongoDB does
    /// not answer.
    pub async fn lease(&self, account: &str) -> Option<Lease> {
        store::leases(&self.db).await?.remove(account)
    }

    /// Waits until the account's lease document satisfies `ready`.
    pub async fn wait_for_lease(
        &self,
        account: &str,
        what: &str,
        ready: impl Fn(&Lease) -> bool,
    ) -> Lease {
        eventually(WAIT, &format!("the lease of {account}: {what}"), || async {
            self.lease(account).await.filter(|l| ready(l))
        })
        .await
    }

    /// Holder of each account whose lease is current.
    pub async fn holders(&self) -> HashMap<String, String> {
        store::leases(&self.db)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, lease)| lease.valid)
            .map(|(account, lease)| (account, lease.holder))
            .collect()
    }

    /// Waits until the holder of the account's lease has renewed it `n`
    /// times from now: proof that the daemon ran on for `n` renew intervals,
    /// before a test asserts that something did not happen.
    pub async fn wait_for_renewals(&self, account: &str, n: usize) {
        let mut seen = self.lease(account).await.map(|l| l.expires_at);
        for _ in 0..n {
            let last = seen.unwrap_or(SystemTime::UNIX_EPOCH);
            let renewed = eventually(WAIT, "the lease to be renewed", || async {
                let lease = self.lease(account).await?;
                (lease.valid && lease.expires_at > last).then_some(lease.expires_at)
            })
            .await;
            seen = Some(renewed);
        }
    }

    /// The accounts' secrets and every token and ticket WeChat issued them:
    /// none may appear in a log or an output.
    pub fn secrets(&self) -> Vec<String> {
        let mut all = Vec::new();
        for a in &self.accounts {
            all.push(a.secret.clone());
            all.extend(self.fake.all_issued_tokens(&a.id));
            for ticket in ["jsapi", "wx_card", "agent_config"] {
                all.extend(self.fake.issued_tickets(&a.id, ticket));
            }
        }
        all
    }
}
