//! MongoDB: credential documents, their indexes, and the queries business
//! services run. Only this module speaks MongoDB.

pub mod document;
pub mod lease;
pub mod requests;

use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use secrecy::ExposeSecret;

use crate::domain::{
    AccountId, Credential, CredentialKind, FetchedCredential, Generation, RefreshReason,
};
use document::{field, NewCredential};

/// Name of the unique index that also serves the business query.
pub const GENERATION_INDEX: &str = "app_id_1_generation_-1";
/// Name of the index on the currently valid documents of an account. The
/// business query's `expires_at` bound can use it to touch only the one to
/// three valid documents, however long the history.
pub const VALID_INDEX: &str = "app_id_1_expires_at_-1";
/// Name of the TTL index that bounds history.
pub const RETENTION_INDEX: &str = "expires_at_ttl";

/// MongoDB error codes this module reacts to.
const DUPLICATE_KEY: i32 = 11000;
const INDEX_OPTIONS_CONFLICT: i32 = 85;
const INDEX_KEY_SPECS_CONFLICT: i32 = 86;

/// How many times an insert recomputes its generation after losing a race.
const INSERT_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("MongoDB connection string is invalid: {0}")]
    InvalidUri(String),
    #[error("MongoDB operation failed: {0}")]
    Mongo(#[from] MongoError),
    #[error("stored {kind} document for {app_id} is malformed: {problem}")]
    Malformed {
        kind: CredentialKind,
        app_id: AccountId,
        problem: String,
    },
    #[error("another writer keeps inserting {kind} generations for {app_id}")]
    Contended {
        kind: CredentialKind,
        app_id: AccountId,
    },
    #[error("the MongoDB server lacks a feature wxtokend needs: {0}")]
    Unsupported(&'static str),
}

/// Options for [`Store::connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// How long an operation waits for a usable server before failing.
    pub server_selection_timeout: Duration,
    /// Reported to MongoDB as the client's application name.
    pub app_name: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            server_selection_timeout: Duration::from_secs(5),
            app_name: "wxtokend".into(),
        }
    }
}

/// A handle on the credential database. Cheap to clone: one connection pool
/// is shared by every clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Builds a client. This does not contact the server: the first
    /// operation does, so a daemon can start while MongoDB is down.
    pub async fn connect(
        uri: &secrecy::SecretString,
        database: &str,
        options: ConnectOptions,
    ) -> Result<Store, StoreError> {
        let mut client_options = ClientOptions::parse(uri.expose_secret())
            .await
            .map_err(|e| StoreError::InvalidUri(redacted_uri_error(&e)))?;
        client_options.server_selection_timeout = Some(options.server_selection_timeout);
        client_options.connect_timeout = Some(options.server_selection_timeout);
        client_options.app_name = Some(options.app_name);
        let client = Client::with_options(client_options)?;
        Ok(Store {
            db: client.database(database),
        })
    }

    /// Checks that the server answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }

    pub fn database_name(&self) -> &str {
        self.db.name()
    }

    fn collection(&self, kind: CredentialKind) -> Collection<Document> {
        self.db.collection(kind.collection())
    }

    /// Creates the indexes of every credential collection. Idempotent; a
    /// changed retention updates the TTL index in place.
    pub async fn ensure_indexes(&self, retention: Duration) -> Result<(), StoreError> {
        for kind in CredentialKind::ALL {
            self.ensure_kind_indexes(kind, retention).await?;
        }
        self.ensure_coordination_indexes().await
    }

    async fn ensure_coordination_indexes(&self) -> Result<(), StoreError> {
        let ttl = |key: &str, name: &str, after: Duration| {
            IndexModel::builder()
                .keys(doc! { key: 1 })
                .options(
                    IndexOptions::builder()
                        .name(name.to_string())
                        .expire_after(after)
                        .build(),
                )
                .build()
        };
        let requests = self.db.collection::<Document>(requests::REFRESH_REQUESTS);
        requests
            .create_index(
                IndexModel::builder()
                    .keys(doc! { requests::field::APP_ID: 1 })
                    .build(),
            )
            .await?;
        requests
            .create_index(ttl(
                requests::field::REQUESTED_AT,
                "requested_at_ttl",
                requests::REQUEST_RETENTION,
            ))
            .await?;
        // A replica's heartbeat is removed a minute after it stopped beating.
        self.db
            .collection::<Document>(lease::INSTANCES)
            .create_index(ttl(
                lease::field::EXPIRES_AT,
                "expires_at_ttl",
                Duration::from_secs(60),
            ))
            .await?;
        Ok(())
    }

    async fn ensure_kind_indexes(
        &self,
        kind: CredentialKind,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let collection = self.collection(kind);
        let generation = IndexModel::builder()
            .keys(doc! { field::APP_ID: 1, field::GENERATION: -1 })
            .options(
                IndexOptions::builder()
                    .name(GENERATION_INDEX.to_string())
                    .unique(true)
                    .build(),
            )
            .build();
        collection.create_index(generation).await?;
        let valid = IndexModel::builder()
            .keys(doc! { field::APP_ID: 1, field::EXPIRES_AT: -1 })
            .options(
                IndexOptions::builder()
                    .name(VALID_INDEX.to_string())
                    .build(),
            )
            .build();
        collection.create_index(valid).await?;
        let ttl = IndexModel::builder()
            .keys(doc! { field::EXPIRES_AT: 1 })
            .options(
                IndexOptions::builder()
                    .name(RETENTION_INDEX.to_string())
                    .expire_after(retention)
                    .build(),
            )
            .build();
        match collection.create_index(ttl).await {
            Ok(_) => Ok(()),
            Err(e) if is_index_conflict(&e) => {
                self.db
                    .run_command(doc! {
                        "collMod": kind.collection(),
                        "index": {
                            "name": RETENTION_INDEX,
                            "expireAfterSeconds": i64::try_from(retention.as_secs()).unwrap_or(i64::MAX),
                        },
                    })
                    .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The newest credential of an account, valid or not.
    pub async fn newest(
        &self,
        kind: CredentialKind,
        app_id: &AccountId,
    ) -> Result<Option<Credential>, StoreError> {
        self.find_newest(kind, app_id, doc! { field::APP_ID: app_id.as_str() })
            .await
    }

    /// The business query: the newest credential still valid at `now`.
    pub async fn newest_valid(
        &self,
        kind: CredentialKind,
        app_id: &AccountId,
        now: SystemTime,
    ) -> Result<Option<Credential>, StoreError> {
        let filter = doc! {
            field::APP_ID: app_id.as_str(),
            field::EXPIRES_AT: { "$gt": DateTime::from_system_time(now) },
        };
        self.find_newest(kind, app_id, filter).await
    }

    /// Accounts with a credential of `kind` valid at `now` (one query).
    pub async fn accounts_with_valid(
        &self,
        kind: CredentialKind,
        now: SystemTime,
    ) -> Result<std::collections::HashSet<AccountId>, StoreError> {
        let ids = self
            .collection(kind)
            .distinct(
                field::APP_ID,
                doc! { field::EXPIRES_AT: { "$gt": DateTime::from_system_time(now) } },
            )
            .await?;
        Ok(ids
            .iter()
            .filter_map(|id| id.as_str().map(AccountId::new))
            .collect())
    }

    async fn find_newest(
        &self,
        kind: CredentialKind,
        app_id: &AccountId,
        filter: Document,
    ) -> Result<Option<Credential>, StoreError> {
        let found = self
            .collection(kind)
            .find_one(filter)
            .sort(doc! { field::GENERATION: -1 })
            .await?;
        found
            .map(|doc| {
                document::from_document(kind, &doc).map_err(|problem| StoreError::Malformed {
                    kind,
                    app_id: app_id.clone(),
                    problem,
                })
            })
            .transpose()
    }

    /// Appends a freshly fetched credential as the next generation, if
    /// `holder` still holds the account's lease at `term`. The generation
    /// comes from the lease's counter, so a paused former holder that resumes
    /// cannot write at all, and a newer holder always writes a higher
    /// generation; the unique index is the last line of defence. If an
    /// earlier attempt landed but its answer was lost, nothing is written
    /// twice.
    pub async fn insert_fenced(
        &self,
        new: &NewFetch<'_>,
        holder: &str,
        term: lease::Term,
    ) -> Result<Inserted, StoreError> {
        let NewFetch {
            kind,
            app_id,
            fetched,
            reason,
        } = *new;
        for _ in 0..INSERT_ATTEMPTS {
            let newest = self.newest(kind, app_id).await?;
            if let Some(stored) = &newest {
                if stored.secret() == fetched.value.expose_secret() {
                    return Ok(Inserted::Stored(stored.generation));
                }
            }
            let Some(generation) = self.reserve_generation(app_id, kind, holder, term).await?
            else {
                return Ok(Inserted::Fenced);
            };
            let document = NewCredential {
                kind,
                app_id,
                fetched,
                generation,
                reason,
                fetched_by: holder,
            };
            match self
                .collection(kind)
                .insert_one(document.to_document())
                .await
            {
                Ok(_) => return Ok(Inserted::Stored(generation)),
                // The counter was behind the stored history: catch it up.
                Err(e) if is_duplicate_key(&e) => {
                    if let Some(stored) = self.newest(kind, app_id).await? {
                        self.raise_generation_floor(app_id, kind, stored.generation)
                            .await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended {
            kind,
            app_id: app_id.clone(),
        })
    }
}

/// A fetched credential to store.
#[derive(Clone, Copy)]
pub struct NewFetch<'a> {
    pub kind: CredentialKind,
    pub app_id: &'a AccountId,
    pub fetched: &'a FetchedCredential,
    pub reason: RefreshReason,
}

/// The outcome of [`Store::insert_fenced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Stored(Generation),
    /// The lease moved to another holder or term: nothing was written.
    Fenced,
}

/// The server's error code, for command and write errors.
fn server_code(error: &MongoError) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => Some(e.code),
        ErrorKind::InsertMany(e) => e.write_errors.as_ref()?.first().map(|w| w.code),
        _ => None,
    }
}

fn is_duplicate_key(error: &MongoError) -> bool {
    server_code(error) == Some(DUPLICATE_KEY)
}

fn is_index_conflict(error: &MongoError) -> bool {
    matches!(
        server_code(error),
        Some(INDEX_OPTIONS_CONFLICT | INDEX_KEY_SPECS_CONFLICT)
    )
}

/// The driver's parse errors may quote the connection string, which can hold
/// a password: keep only the kind of problem.
fn redacted_uri_error(error: &MongoError) -> String {
    match error.kind.as_ref() {
        ErrorKind::InvalidArgument { .. } => {
            "invalid argument (check the format of mongodb.uri)".into()
        }
        _ => error.to_string(),
    }
}
