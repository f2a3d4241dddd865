//! `refresh_requests`: how a business service tells the daemon that WeChat
//! rejected a token (or an operator asks for a refresh). Services in any
//! language insert one document; the account's lease holder acts on it.

use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};

use super::{Store, StoreError};
use crate::domain::{AccountId, CredentialKind, Generation, RefreshReason};

pub const REFRESH_REQUESTS: &str = "refresh_requests";

/// Field names of refresh request documents.
pub mod field {
    pub const APP_ID: &str = "app_id";
    /// `access_token`, `jsapi_ticket`, `wx_card_ticket` or `agent_config_ticket`
    /// (default `access_token`).
    pub const KIND: &str = "kind";
    /// `reported_invalid` (with `generation`) or `manual`.
    pub const REASON: &str = "reason";
    /// The generation WeChat rejected (for `reported_invalid`).
    pub const GENERATION: &str = "generation";
    pub const REQUESTED_AT: &str = "requested_at";
    pub const REQUESTED_BY: &str = "requested_by";
}

/// Requests older than this are dropped by a TTL index (their account is
/// not configured anywhere, or no daemon runs).
pub const REQUEST_RETENTION: Duration = Duration::from_secs(86_400);

/// One request as the daemon reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRequest {
    pub id: ObjectId,
    pub app_id: AccountId,
    pub kind: CredentialKind,
    pub reason: RefreshReason,
    pub generation: Option<Generation>,
}

impl Store {
    fn requests(&self) -> mongodb::Collection<Document> {
        self.db.collection(REFRESH_REQUESTS)
    }

    /// Files a request. `generation` is the rejected one for `ReportedInvalid`.
    pub async fn file_request(
        &self,
        app_id: &AccountId,
        kind: CredentialKind,
        reason: RefreshReason,
        generation: Option<Generation>,
        requested_by: &str,
    ) -> Result<(), StoreError> {
        let mut request = doc! {
            field::APP_ID: app_id.as_str(),
            field::KIND: kind.as_str(),
            field::REASON: reason.as_str(),
            field::REQUESTED_AT: DateTime::from_system_time(SystemTime::now()),
            field::REQUESTED_BY: requested_by,
        };
        if let Some(generation) = generation {
            request.insert(field::GENERATION, generation.0);
        }
        self.requests().insert_one(request).await?;
        Ok(())
    }

    /// Open requests, oldest first (at most `limit`). The collection is
    /// normally empty, so reading it whole is one cheap query whatever the
    /// number of accounts.
    pub async fn open_requests(&self, limit: i64) -> Result<Vec<RefreshRequest>, StoreError> {
        use futures_util::TryStreamExt;
        let docs: Vec<Document> = self
            .requests()
            .find(doc! {})
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().filter_map(parse_request).collect())
    }

    /// Deletes handled requests.
    pub async fn delete_requests(&self, ids: &[ObjectId]) -> Result<(), StoreError> {
        if !ids.is_empty() {
            self.requests()
                .delete_many(doc! { "_id": { "$in": ids } })
                .await?;
        }
        Ok(())
    }
}

/// Unreadable requests (wrong kind or reason) are skipped, not fatal: they
/// come from other programs, and the TTL index removes them.
fn parse_request(doc: &Document) -> Option<RefreshRequest> {
    let kind = match doc.get_str(field::KIND) {
        Ok(kind) => CredentialKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)?,
        Err(_) => CredentialKind::AccessToken,
    };
    let reason = doc
        .get_str(field::REASON)
        .ok()
        .and_then(RefreshReason::parse)
        .filter(|r| matches!(r, RefreshReason::ReportedInvalid | RefreshReason::Manual))?;
    let generation = match doc.get(field::GENERATION) {
        Some(mongodb::bson::Bson::Int64(g)) => Some(Generation(*g)),
        Some(mongodb::bson::Bson::Int32(g)) => Some(Generation(i64::from(*g))),
        _ => None,
    };
    Some(RefreshRequest {
        id: doc.get_object_id("_id").ok()?,
        app_id: AccountId::new(doc.get_str(field::APP_ID).ok()?),
        kind,
        reason,
        generation,
    })
}
