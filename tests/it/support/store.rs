//! The only file that uses the daemon's internals (`wxtokend::Store`, its
//! leases): writing a token the way the daemon does (under a lease), reading
//! lease documents, and the permit rules. When that API changes, this file
//! changes; the tests that call it stay as they are.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use wxtokend::coordination::quota::{quota_day, ApiQuota};
pub use wxtokend::coordination::Inserted;
pub use wxtokend::Api;
use wxtokend::{FetchedCredential, Store};
use wxtokend_reader::{AccountId, ConnectOptions, CredentialKind, Generation, RefreshReason};

pub use wxtokend::coordination::{Lease as HeldLease, Permit, PermitRules};

use super::mongo::TestDb;

/// The daemon's store on `db`, one per test database (a client per poll
/// would open a connection pool every 50 ms).
async fn store(db: &TestDb) -> Store {
    static STORES: Mutex<Vec<(String, Store)>> = Mutex::new(Vec::new());
    let cached = |stores: &[(String, Store)]| {
        stores
            .iter()
            .find(|(name, _)| *name == db.name)
            .map(|(_, store)| store.clone())
    };
    if let Some(store) = cached(&STORES.lock().expect("lock")) {
        return store;
    }
    let options = ConnectOptions {
        server_selection_timeout: Duration::from_secs(2),
        ..ConnectOptions::default()
    };
    let uri = SecretString::from(db.uri.clone());
    let store = Store::connect(&uri, &db.name, options)
        .await
        .expect("store");
    let mut stores = STORES.lock().expect("lock");
    if let Some(store) = cached(&stores) {
        return store;
    }
    stores.push((db.name.clone(), store.clone()));
    store
}

/// Creates the indexes, as the daemon does at startup.
pub async fn ensure_indexes(db: &TestDb) {
    store(db)
        .await
        .ensure_indexes(&wxtokend::store::credential_indexes(Duration::from_secs(
            86_400,
        )))
        .await
        .expect("indexes");
}

/// Stores an access token the way the daemon does (lease, fenced insert,
/// release) as instance `test-writer`: fetched `age` ago, living `lifetime`.
pub async fn store_token(
    db: &TestDb,
    account: &str,
    value: &str,
    age: Duration,
    lifetime: Duration,
) -> Generation {
    let lease = Leases::new(db)
        .await
        .acquire(account, "test-writer")
        .await
        .expect("the lease is free");
    let fetched = FetchedCredential {
        value: SecretString::from(value.to_owned()),
        expires_in: lifetime,
        fetched_at: SystemTime::now() - age,
    };
    let inserted = lease
        .insert(
            CredentialKind::AccessToken,
            &fetched,
            RefreshReason::Scheduled,
            wxtokend::coordination::Newest::Unknown,
        )
        .await
        .expect("insert");
    lease.release().await.expect("release");
    match inserted {
        Inserted::Stored(generation) | Inserted::Repeat { generation, .. } => generation,
        Inserted::Fenced => panic!("fenced although the lease was just taken"),
    }
}

/// An account's lease document, as `wxtokend status` reads it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub holder: String,
    pub term: i64,
    pub expires_at: SystemTime,
    /// Current by the MongoDB server's clock.
    pub valid: bool,
    /// Each WeChat API's counters, as they stand today (Beijing time).
    pub quotas: HashMap<Api, ApiQuota>,
    pub last_error: Option<String>,
}

impl Lease {
    /// Calls to `api` counted today.
    pub fn calls_today(&self, api: Api) -> i64 {
        self.quotas.get(&api).map_or(0, |q| q.calls)
    }

    /// WeChat answered 45009 from `api` today.
    pub fn exhausted(&self, api: Api) -> bool {
        self.quotas.get(&api).is_some_and(|q| q.exhausted)
    }
}

/// Every lease document, by account; `None` while MongoDB does not answer.
pub async fn leases(db: &TestDb) -> Option<HashMap<String, Lease>> {
    let store = store(db).await;
    let now = store.server_time().await.ok()?;
    let today = quota_day(now);
    let infos = wxtokend::Leases::new(store).infos(&[]).await.ok()?;
    Some(
        infos
            .into_iter()
            .map(|l| {
                let lease = Lease {
                    valid: l.expires_at > now,
                    holder: l.holder,
                    term: l.term.0,
                    expires_at: l.expires_at,
                    quotas: l
                        .quotas
                        .iter()
                        .map(|(api, quota)| (*api, quota.on(&today)))
                        .collect(),
                    last_error: l.last_error,
                };
                (l.id.to_string(), lease)
            })
            .collect(),
    )
}

/// The lease API the daemon's coordinator uses, for the permit-rule tests.
pub struct Leases(wxtokend::Leases);

impl Leases {
    pub async fn new(db: &TestDb) -> Leases {
        Leases(wxtokend::Leases::new(store(db).await))
    }

    /// Leases on a client of their own, whose every MongoDB command (one
    /// round trip each) is recorded by name in the returned list.
    pub async fn counted(db: &TestDb) -> (Leases, std::sync::Arc<Mutex<Vec<String>>>) {
        let uri = SecretString::from(db.uri.clone());
        let store = Store::connect(&uri, &db.name, ConnectOptions::default())
            .await
            .expect("store");
        let sent = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        store.on_command(Box::new(move |command| {
            log.lock().expect("lock").push(command.to_owned());
        }));
        (Leases(wxtokend::Leases::new(store)), sent)
    }

    /// What `wxtokend quota --clear` does to the daemon's stops.
    pub async fn clear_quota_stops(&self, account: &str) -> Vec<Api> {
        self.0
            .clear_quota_stops(&AccountId::new(account))
            .await
            .expect("clear")
    }

    /// Takes the account's lease for 30 s, if it is free.
    pub async fn acquire(&self, account: &str, holder: &str) -> Option<HeldLease> {
        self.0
            .acquire(
                &AccountId::new(account),
                &holder.into(),
                Duration::from_secs(30),
            )
            .await
            .expect("acquire")
    }
}

/// Writes an access token (fetched now, living an hour) through `lease`.
pub async fn insert(lease: &HeldLease, value: &str) -> Inserted {
    let fetched = FetchedCredential {
        value: SecretString::from(value.to_owned()),
        expires_in: Duration::from_secs(3600),
        fetched_at: SystemTime::now(),
    };
    lease
        .insert(
            CredentialKind::AccessToken,
            &fetched,
            RefreshReason::Scheduled,
            wxtokend::coordination::Newest::Unknown,
        )
        .await
        .expect("insert")
}

/// Writes an access token through `lease` as the daemon's refresher does
/// when it knows what is stored (what it read or wrote last).
pub async fn insert_knowing(
    lease: &HeldLease,
    value: &str,
    newest: Option<(Generation, &str)>,
) -> Inserted {
    let fetched = FetchedCredential {
        value: SecretString::from(value.to_owned()),
        expires_in: Duration::from_secs(3600),
        fetched_at: SystemTime::now(),
    };
    let stored_value = newest.map(|(_, value)| SecretString::from(value.to_owned()));
    let known = newest
        .zip(stored_value.as_ref())
        .map(|((generation, _), value)| wxtokend::coordination::Stored {
            generation,
            expires_at: SystemTime::now() + Duration::from_secs(3600),
            value,
        });
    lease
        .insert(
            CredentialKind::AccessToken,
            &fetched,
            RefreshReason::Scheduled,
            wxtokend::coordination::Newest::Known(known),
        )
        .await
        .expect("insert")
}

/// A permit on `lease` under `rules`.
pub async fn permit(lease: &HeldLease, rules: PermitRules) -> Permit {
    lease.permit(rules).await.expect("permit")
}

/// The newest verify ticket of `component` stored in `db` (by WeChat's
/// `CreateTime`), read with the daemon's own reader: the ticket and its
/// `CreateTime`.
pub async fn newest_verify_ticket(db: &TestDb, component: &str) -> Option<(String, SystemTime)> {
    use secrecy::ExposeSecret;
    let tickets = wxtokend::open_platform::store::Tickets::new(store(db).await);
    tickets
        .newest(component)
        .await
        .expect("read the newest ticket")
        .map(|t| (t.ticket.expose_secret().to_owned(), t.create_time))
}

/// The daemon's store on `db`, for the store-level tests of the Open
/// Platform's collections (`open_platform_store`), which drive the
/// directory and the sealed secrets directly.
pub async fn daemon_store(db: &TestDb) -> Store {
    store(db).await
}
