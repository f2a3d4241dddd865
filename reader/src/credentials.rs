//! The queries on the credential collections (one per kind): the business
//! query and the few others the daemon and its tools need. Read-only: the
//! daemon writes credentials only under a lease, elsewhere.

use std::collections::HashSet;
use std::time::SystemTime;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::{Collection, Database};

use crate::document::{self, field, DocumentError};
use crate::domain::{AccountId, Credential, CredentialKind};

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("MongoDB operation failed: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("stored {kind} document for {app_id} is malformed: {problem}")]
    Malformed {
        kind: CredentialKind,
        app_id: AccountId,
        problem: DocumentError,
    },
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

    /// The newest credential of an account, valid or not.
    pub async fn newest(
        &self,
        kind: CredentialKind,
        app_id: &AccountId,
    ) -> Result<Option<Credential>, QueryError> {
        self.find_newest(kind, app_id, doc! { field::APP_ID: app_id.as_str() })
            .await
    }

    /// The business query: the newest credential still valid at `now`.
    pub async fn newest_valid(
        &self,
        kind: CredentialKind,
        app_id: &AccountId,
        now: SystemTime,
    ) -> Result<Option<Credential>, QueryError> {
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
    ) -> Result<HashSet<AccountId>, QueryError> {
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
    ) -> Result<Option<Credential>, QueryError> {
        let found = self
            .collection(kind)
            .find_one(filter)
            .sort(doc! { field::GENERATION: -1 })
            .await?;
        found
            .map(|doc| {
                document::from_document(kind, &doc).map_err(|problem| QueryError::Malformed {
                    kind,
                    app_id: app_id.clone(),
                    problem,
                })
            })
            .transpose()
    }
}
