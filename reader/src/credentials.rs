//! The queries on the credential collections (one per kind): the business
//! query and the few others the daemon and its tools need. Nothing here
//! writes: the daemon writes credentials only under a lease, elsewhere
//! (through [`Credentials::collection`], which it also indexes).

use std::collections::HashSet;
use std::time::SystemTime;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::{Collection, Database};

use crate::connect::connection_hint;
use crate::document::{self, as_integer, field, DocumentError};
use crate::domain::{AccountId, Credential, CredentialKind, Generation, Owner};
use crate::refused::Refused;

/// How many of the newest documents a read looks through for a readable
/// one: documents written by hand or by another program may be malformed.
const SCAN: i64 = 16;

/// Generations are counted from 1; none can come near this (2^53).
const MAX_GENERATION: i64 = 1 << 53;

/// The newest readable credential of an account, and what was skipped on
/// the way to it.
#[derive(Debug, Default)]
pub struct Newest {
    pub credential: Option<Credential>,
    /// Newer documents that could not be read, newest first.
    pub skipped: Vec<DocumentError>,
    /// The highest numeric generation among the documents looked at,
    /// readable or not: a new credential must be written above it.
    pub top_generation: Option<Generation>,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("MongoDB operation failed: {0}{hint}", hint = connection_hint(.0))]
    Mongo(mongodb::error::Error),
    /// MongoDB refused the user or one of its privileges: said without the
    /// server's message (see [`Refused`]).
    #[error(transparent)]
    Refused(Refused),
    #[error("stored {kind} document for {owner} is malformed: {problem}")]
    Malformed {
        kind: CredentialKind,
        owner: Owner,
        problem: DocumentError,
    },
}

impl From<mongodb::error::Error> for QueryError {
    fn from(error: mongodb::error::Error) -> Self {
        match Refused::of(&error) {
            Some(refused) => Self::Refused(refused),
            None => Self::Mongo(error),
        }
    }
}

impl Newest {
    /// The first readable one of `docs` (newest first), with what was
    /// skipped above it.
    fn of(kind: CredentialKind, docs: &[Document]) -> Self {
        let mut newest = Newest {
            top_generation: docs
                .iter()
                .filter_map(|d| d.get(field::GENERATION).and_then(as_integer))
                .max()
                .map(Generation),
            ..Newest::default()
        };
        for doc in docs {
            match document::from_document(kind, doc) {
                Ok(credential) => {
                    newest.credential = Some(credential);
                    break;
                }
                Err(problem) => newest.skipped.push(problem),
            }
        }
        newest
    }

    /// The credential; an error only if there were documents and none
    /// could be read.
    fn readable(
        self,
        kind: CredentialKind,
        owner: &Owner,
    ) -> Result<Option<Credential>, QueryError> {
        match (self.credential, self.skipped.into_iter().next()) {
            (None, Some(problem)) => Err(QueryError::Malformed {
                kind,
                owner: owner.clone(),
                problem,
            }),
            (credential, _) => Ok(credential),
        }
    }
}

/// The credential collections of one database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Credentials {
    db: Database,
}

impl Credentials {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The collection holding `kind`'s history.
    pub fn collection(&self, kind: CredentialKind) -> Collection<Document> {
        self.db.collection(kind.collection())
    }

    /// The newest credential of an account, valid or not. Malformed
    /// documents are skipped (see [`Credentials::scan_newest`]).
    pub async fn newest(
        &self,
        kind: CredentialKind,
        app_id: &AccountId,
    ) -> Result<Option<Credential>, QueryError> {
        self.newest_owned(kind, &Owner::account(app_id.clone()))
            .await
    }

    /// [`Credentials::newest`] of any owner (an authorizer's: with its
    /// component).
    pub async fn newest_owned(
        &self,
        kind: CredentialKind,
        owner: &Owner,
    ) -> Result<Option<Credential>, QueryError> {
        self.scan_newest_owned(kind, owner, None)
            .await?
            .readable(kind, owner)
    }

    /// The business query: the newest credential still valid at `now`.
    /// Malformed documents are skipped.
    pub async fn newest_valid(
        &self,
        kind: CredentialKind,
        app_id: &AccountId,
        now: SystemTime,
    ) -> Result<Option<Credential>, QueryError> {
        self.newest_valid_owned(kind, &Owner::account(app_id.clone()), now)
            .await
    }

    /// [`Credentials::newest_valid`] of any owner.
    pub async fn newest_valid_owned(
        &self,
        kind: CredentialKind,
        owner: &Owner,
        now: SystemTime,
    ) -> Result<Option<Credential>, QueryError> {
        self.scan_newest_owned(kind, owner, Some(now))
            .await?
            .readable(kind, owner)
    }

    /// The newest readable credential (valid at `valid_at`, if given),
    /// skipping the malformed documents above it, which are reported.
    pub async fn scan_newest(
        &self,
        kind: CredentialKind,
        app_id: &AccountId,
        valid_at: Option<SystemTime>,
    ) -> Result<Newest, QueryError> {
        self.scan_newest_owned(kind, &Owner::account(app_id.clone()), valid_at)
            .await
    }

    /// [`Credentials::scan_newest`] of any owner. The authorizer kinds are
    /// also matched on `component_appid` (an owner without one matches
    /// none of them).
    pub async fn scan_newest_owned(
        &self,
        kind: CredentialKind,
        owner: &Owner,
        valid_at: Option<SystemTime>,
    ) -> Result<Newest, QueryError> {
        let whose = owner_filter(kind, owner);
        // The valid ones first by the business query alone: bounded by
        // `expires_at` (its index), cheap on every server. Only if it
        // meets a generation that is not a number below 2^53 (written by
        // hand or by another program: in MongoDB's order strings and other
        // types sort above every number, and could hide the real newest)
        // is it asked again with the generation bounded in the query, which
        // costs a test server an order of magnitude more under load
        // (BENCHMARKS.md, "Reader under concurrency").
        if let Some(now) = valid_at {
            let mut filter = whose.clone();
            filter.insert(
                field::EXPIRES_AT,
                doc! { "$gt": DateTime::from_system_time(now) },
            );
            let mut docs = self.find_newest(kind, filter).await?;
            // Those sorting below every number (no generation, null, NaN)
            // hide none: the bounded query leaves them out too.
            docs.retain(|d| !sorts_below_numbers(d));
            if docs.iter().all(has_a_generation) {
                return Ok(Newest::of(kind, &docs));
            }
        }
        // Only numeric generations, below 2^53 (the integers every driver
        // reads exactly): anything else is not a generation.
        let mut filter = whose;
        filter.insert(
            field::GENERATION,
            doc! { "$type": "number", "$lt": MAX_GENERATION },
        );
        if let Some(now) = valid_at {
            filter.insert(
                field::EXPIRES_AT,
                doc! { "$gt": DateTime::from_system_time(now) },
            );
        }
        let docs = self.find_newest(kind, filter).await?;
        Ok(Newest::of(kind, &docs))
    }

    /// The [`SCAN`] documents matching `filter` with the highest
    /// generations, highest first.
    async fn find_newest(
        &self,
        kind: CredentialKind,
        filter: Document,
    ) -> Result<Vec<Document>, QueryError> {
        Ok(self
            .collection(kind)
            .find(filter)
            .sort(doc! { field::GENERATION: -1 })
            .limit(SCAN)
            .await?
            .try_collect()
            .await?)
    }
    /// Accounts with a credential of `kind` valid at `now` (one query).
    pub async fn accounts_with_valid(
        &self,
        kind: CredentialKind,
        now: SystemTime,
    ) -> Result<HashSet<AccountId>, QueryError> {
        self.app_ids_with_valid(kind, doc! {}, now).await
    }

    /// The authorizers of `component` with a credential of `kind` (an
    /// authorizer kind) valid at `now`: one `distinct`, served by the
    /// `component_appid_1_app_id_1_expires_at_-1` index.
    pub async fn authorizers_with_valid(
        &self,
        kind: CredentialKind,
        component: &AccountId,
        now: SystemTime,
    ) -> Result<HashSet<AccountId>, QueryError> {
        let filter = doc! { field::COMPONENT_APPID: component.as_str() };
        self.app_ids_with_valid(kind, filter, now).await
    }

    /// The `app_id`s of the documents of `kind` matching `filter` and
    /// valid at `now`.
    async fn app_ids_with_valid(
        &self,
        kind: CredentialKind,
        mut filter: Document,
        now: SystemTime,
    ) -> Result<HashSet<AccountId>, QueryError> {
        filter.insert(
            field::EXPIRES_AT,
            doc! { "$gt": DateTime::from_system_time(now) },
        );
        let ids = self
            .collection(kind)
            .distinct(field::APP_ID, filter)
            .await?;
        Ok(ids
            .iter()
            .filter_map(|id| id.as_str().map(AccountId::new))
            .collect())
    }
}

/// The part of a query that selects `owner`'s documents of `kind`.
pub fn owner_filter(kind: CredentialKind, owner: &Owner) -> Document {
    let mut filter = doc! { field::APP_ID: owner.app_id.as_str() };
    if kind.is_authorizer() {
        let component = owner.component_appid.as_ref().map(AccountId::as_str);
        filter.insert(field::COMPONENT_APPID, component);
    }
    filter
}

/// Whether `doc`'s generation is one the bounded query would also find: a
/// number below 2^53.
fn has_a_generation(doc: &Document) -> bool {
    match doc.get(field::GENERATION) {
        Some(Bson::Int32(_)) => true,
        Some(Bson::Int64(g)) => *g < MAX_GENERATION,
        #[allow(clippy::cast_precision_loss)]
        Some(Bson::Double(g)) => *g < MAX_GENERATION as f64,
        _ => false,
    }
}

/// Whether `doc`'s generation sorts below every number in MongoDB's order
/// (missing, null, `MinKey`, undefined, NaN).
fn sorts_below_numbers(doc: &Document) -> bool {
    match doc.get(field::GENERATION) {
        None | Some(Bson::Null | Bson::MinKey | Bson::Undefined) => true,
        Some(Bson::Double(g)) => g.is_nan(),
        Some(_) => false,
    }
}
