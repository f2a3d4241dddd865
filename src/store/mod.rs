//! The MongoDB database: one connection pool, the server's clock, and the
//! indexes of every collection. The credential queries live in the reader
//! crate ([`Credentials`]); leases, permits and fenced writes in
//! [`crate::coordination`]. Only these modules speak MongoDB.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, Document};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::Database;
use secrecy::SecretString;
use wxtokend_reader::document::field;
use wxtokend_reader::requests::{self, REQUEST_RETENTION};
use wxtokend_reader::{
    connection_hint, ConnectError, ConnectOptions, CredentialKind, Credentials, QueryError, Refused,
};

use crate::clock::Clock;

mod indexes;
mod privileges;

pub use indexes::{IndexConflict, IndexSpec, IndexStep};
pub use privileges::{MissingPrivileges, Needed};

/// Name of the unique index that also serves the business query.
pub const GENERATION_INDEX: &str = "app_id_1_generation_-1";
/// Name of the index on the currently valid documents of an account. The
/// business query's `expires_at` bound can use it to touch only the one to
/// three valid documents, however long the history.
pub const VALID_INDEX: &str = "app_id_1_expires_at_-1";
/// Name of the TTL index that bounds history.
pub const RETENTION_INDEX: &str = "expires_at_ttl";

/// MongoDB error codes this crate reacts to.
const DUPLICATE_KEY: i32 = 11000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("MongoDB operation failed: {0}{hint}", hint = connection_hint(.0))]
    Mongo(MongoError),
    /// MongoDB refused the user or a privilege: trying again cannot help.
    #[error(transparent)]
    Refused(Refused),
    #[error(transparent)]
    Query(QueryError),
    #[error("another writer keeps inserting {kind} generations for {owner}")]
    Contended {
        kind: CredentialKind,
        owner: wxtokend_reader::Owner,
    },
    /// An index in place stands where one of ours must be: a person must
    /// drop it; trying again cannot help.
    #[error(transparent)]
    IndexConflict(Box<IndexConflict>),
    /// The user lacks privileges, by the server's own list: trying again
    /// cannot help.
    #[error(transparent)]
    MissingPrivileges(Box<MissingPrivileges>),
    /// An operation MongoDB did not finish in time (cut off by the caller).
    #[error("MongoDB did not finish the operation within {} ms; it was abandoned", .0.as_millis())]
    TimedOut(std::time::Duration),
    #[error("the MongoDB server lacks a feature wxtokend needs: {0}")]
    Unsupported(&'static str),
}

impl From<MongoError> for StoreError {
    fn from(error: MongoError) -> Self {
        match Refused::of(&error) {
            Some(refused) => Self::Refused(refused),
            None => Self::Mongo(error),
        }
    }
}

impl From<QueryError> for StoreError {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::Mongo(e) => Self::Mongo(e),
            QueryError::Refused(refused) => Self::Refused(refused),
            malformed => Self::Query(malformed),
        }
    }
}

impl StoreError {
    /// The refusal this error is, if MongoDB refused the user or a
    /// privilege.
    pub fn refused(&self) -> Option<&Refused> {
        match self {
            Self::Refused(refused) => Some(refused),
            _ => None,
        }
    }
}

/// A handle on the credential database. Cheap to clone: one connection pool
/// is shared by every clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
    credentials: Credentials,
    clock: Arc<Clock>,
    refused: Arc<OnceLock<Refused>>,
    commands: Arc<CommandHookSlot>,
}

/// Told the name of every command sent (each one round trip).
pub type CommandHook = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct CommandHookSlot(OnceLock<CommandHook>);

impl std::fmt::Debug for CommandHookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "CommandHook"
        } else {
            "None"
        })
    }
}

impl Store {
    /// Builds a client. This does not contact the server: the first
    /// operation does, so a daemon can start while MongoDB is down.
    pub async fn connect(
        uri: &SecretString,
        database: &str,
        options: ConnectOptions,
    ) -> Result<Store, StoreError> {
        let mut client_options = wxtokend_reader::client_options(uri, options).await?;
        let refused = Arc::new(OnceLock::new());
        let seen = refused.clone();
        let commands = Arc::new(CommandHookSlot::default());
        let sent = commands.clone();
        client_options.command_event_handler = Some(EventHandler::callback(
            move |event: CommandEvent| match event {
                CommandEvent::Started(started) => {
                    if let Some(hook) = sent.0.get() {
                        hook(&started.command_name);
                    }
                }
                CommandEvent::Failed(failed) => {
                    if let Some(refusal) = Refused::of(&failed.failure) {
                        let _ = seen.set(refusal);
                    }
                }
                _ => {}
            },
        ));
        let db = wxtokend_reader::open(client_options, database)?;
        Ok(Store {
            credentials: Credentials::new(db.clone()),
            db,
            clock: Arc::default(),
            refused,
            commands,
        })
    }

    /// The first refusal MongoDB answered this process with: a command
    /// refused for a missing privilege, whoever ran it, or a refusal noted
    /// with [`Store::note_refused`]. A refresher retries what failed; the
    /// coordinator looks here and stops the replica, as no retry can succeed.
    pub fn refused(&self) -> Option<&Refused> {
        self.refused.get()
    }

    /// Calls `hook` with the name of every command this store's client
    /// sends from now on (the first hook set stays).
    pub fn on_command(&self, hook: CommandHook) {
        let _ = self.commands.0.set(hook);
    }

    /// Notes a refusal the driver reports outside of commands (a login
    /// refused when a connection opens).
    pub fn note_refused(&self, refused: &Refused) {
        let _ = self.refused.set(refused.clone());
    }

    /// Checks that the server answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }

    /// Reads one document of every credential collection, of
    /// `refresh_requests` and of `others`: a `find` privilege the user
    /// lacks shows here.
    pub async fn check_reads(&self, others: &[&str]) -> Result<(), StoreError> {
        let credentials = CredentialKind::ACCOUNT_KINDS.map(CredentialKind::collection);
        let names = credentials
            .iter()
            .chain(&[requests::REFRESH_REQUESTS])
            .chain(others);
        for name in names {
            self.db
                .collection::<Document>(name)
                .find_one(doc! {})
                .await?;
        }
        Ok(())
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn database_name(&self) -> &str {
        self.db.name()
    }

    /// Which of `ids` have any `kind` document stored, valid or not.
    pub async fn accounts_with_history(
        &self,
        kind: CredentialKind,
        ids: &[wxtokend_reader::AccountId],
        component: Option<&wxtokend_reader::AccountId>,
    ) -> Result<std::collections::HashSet<wxtokend_reader::AccountId>, StoreError> {
        let names: Vec<&str> = ids.iter().map(wxtokend_reader::AccountId::as_str).collect();
        let mut filter = doc! { field::APP_ID: { "$in": names } };
        // The authorizers' indexes lead with the component.
        if let Some(component) = component.filter(|_| kind.is_authorizer()) {
            filter.insert(field::COMPONENT_APPID, component.as_str());
        }
        let found = self
            .credentials
            .collection(kind)
            .distinct(field::APP_ID, filter)
            .await?;
        Ok(found
            .iter()
            .filter_map(|id| id.as_str().map(wxtokend_reader::AccountId::new))
            .collect())
    }

    /// The credential collections, read-only.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The server's clock: every lease time and quota day is read from it,
    /// and each reading keeps [`Store::clock`] in step.
    pub async fn server_time(&self) -> Result<SystemTime, StoreError> {
        let sent = SystemTime::now();
        let hello = self.db.run_command(doc! { "hello": 1 }).await?;
        let server = hello
            .get_datetime("localTime")
            .map(|t| t.to_system_time())
            .map_err(|_| StoreError::Unsupported("hello.localTime is missing"))?;
        self.clock.observe(server, sent, SystemTime::now());
        Ok(server)
    }

    /// The server's time without asking it (the local clock corrected by
    /// the last reading): what the daemon stamps and schedules with.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }
}

/// The indexes of the accounts' credential collections: the business
/// query's (unique per generation), the valid documents', and the TTL
/// index that bounds history to `retention` past each expiry.
pub fn credential_indexes(retention: Duration) -> Vec<IndexSpec> {
    credential_indexes_of(&CredentialKind::ACCOUNT_KINDS, retention)
}

/// [`credential_indexes`] of the collections of `kinds` whose documents
/// are named by `app_id` alone (not the authorizer kinds).
pub fn credential_indexes_of(kinds: &[CredentialKind], retention: Duration) -> Vec<IndexSpec> {
    kinds
        .iter()
        .filter(|kind| !kind.is_authorizer())
        .flat_map(|&kind| {
            credential_collection_indexes(
                kind.collection(),
                [
                    (
                        GENERATION_INDEX,
                        &[(field::APP_ID, 1), (field::GENERATION, -1)],
                    ),
                    (VALID_INDEX, &[(field::APP_ID, 1), (field::EXPIRES_AT, -1)]),
                ],
                retention,
            )
        })
        .collect()
}

/// The indexes of the authorizers' credential collections (the token and
/// each ticket): as [`credential_indexes`], each led by `component_appid`
/// (one account may authorize several platforms, each with its own
/// generations).
pub fn authorizer_credential_indexes(retention: Duration) -> Vec<IndexSpec> {
    AUTHORIZER_KINDS
        .into_iter()
        .flat_map(|kind| {
            credential_collection_indexes(
                kind.collection(),
                [
                    (
                        "component_appid_1_app_id_1_generation_-1",
                        &[
                            (field::COMPONENT_APPID, 1),
                            (field::APP_ID, 1),
                            (field::GENERATION, -1),
                        ],
                    ),
                    (
                        "component_appid_1_app_id_1_expires_at_-1",
                        &[
                            (field::COMPONENT_APPID, 1),
                            (field::APP_ID, 1),
                            (field::EXPIRES_AT, -1),
                        ],
                    ),
                ],
                retention,
            )
        })
        .collect()
}

/// The credentials of accounts that authorized an Open Platform component.
pub const AUTHORIZER_KINDS: [CredentialKind; 3] = [
    CredentialKind::AuthorizerAccessToken,
    CredentialKind::AuthorizerJsapiTicket,
    CredentialKind::AuthorizerWxCardTicket,
];

/// The three indexes of one credential collection: `by_generation`
/// (unique: the business query's, and the fence's last line), `valid`
/// (the valid documents'), and the TTL index on `expires_at`.
fn credential_collection_indexes(
    collection: &'static str,
    [by_generation, valid]: [(&'static str, &'static [(&'static str, i32)]); 2],
    retention: Duration,
) -> [IndexSpec; 3] {
    [
        IndexSpec {
            collection,
            name: by_generation.0,
            keys: by_generation.1,
            unique: true,
            ttl: None,
        },
        IndexSpec {
            collection,
            name: valid.0,
            keys: valid.1,
            unique: false,
            ttl: None,
        },
        IndexSpec {
            collection,
            name: RETENTION_INDEX,
            keys: &[(field::EXPIRES_AT, 1)],
            unique: false,
            ttl: Some(retention),
        },
    ]
}

/// The indexes of `refresh_requests`: by account, and the TTL index that
/// removes requests nobody handled.
pub fn request_indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec {
            collection: requests::REFRESH_REQUESTS,
            name: "app_id_1",
            keys: &[(requests::field::APP_ID, 1)],
            unique: false,
            ttl: None,
        },
        IndexSpec {
            collection: requests::REFRESH_REQUESTS,
            name: "requested_at_ttl",
            keys: &[(requests::field::REQUESTED_AT, 1)],
            unique: false,
            ttl: Some(REQUEST_RETENTION),
        },
    ]
}

/// The server's error code, for command and write errors.
pub(super) fn server_code(error: &MongoError) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => Some(e.code),
        ErrorKind::InsertMany(e) => e.write_errors.as_ref()?.first().map(|w| w.code),
        _ => None,
    }
}

pub(crate) fn is_duplicate_key(error: &MongoError) -> bool {
    server_code(error) == Some(DUPLICATE_KEY)
}

/// An unordered `insert_many` whose every failure is a duplicate key: the
/// documents it was to create all exist.
pub(crate) fn is_only_duplicate_keys(error: &MongoError) -> bool {
    match error.kind.as_ref() {
        ErrorKind::InsertMany(e) => {
            e.write_concern_error.is_none()
                && e.write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|w| w.code == DUPLICATE_KEY))
        }
        _ => is_duplicate_key(error),
    }
}
