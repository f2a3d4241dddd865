//! `refresh_requests`: how a business service tells the daemon that WeChat
//! rejected a token (or an operator asks for a refresh). Services in any
//! language insert one document; the account's lease holder acts on it.

use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, DateTime, Document};
use mongodb::{Collection, Database};

use crate::credentials::QueryError;
use crate::domain::{AccountId, CredentialKind, Generation, RefreshReason};

/// The collection.
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

/// A request to file.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub app_id: &'a AccountId,
    pub kind: CredentialKind,
    pub reason: RefreshReason,
    /// The rejected generation, for [`RefreshReason::ReportedInvalid`].
    pub generation: Option<Generation>,
    /// Who asks, for operators.
    pub requested_by: &'a str,
}

/// Files a request.
pub async fn file(db: &Database, request: &NewRequest<'_>) -> Result<(), QueryError> {
    collection(db).insert_one(to_document(request)).await?;
    Ok(())
}

/// The collection of requests.
pub fn collection(db: &Database) -> Collection<Document> {
    db.collection(REFRESH_REQUESTS)
}

fn to_document(request: &NewRequest<'_>) -> Document {
    let mut document = doc! {
        field::APP_ID: request.app_id.as_str(),
        field::KIND: request.kind.as_str(),
        field::REASON: request.reason.as_str(),
        field::REQUESTED_AT: DateTime::from_system_time(SystemTime::now()),
        field::REQUESTED_BY: request.requested_by,
    };
    if let Some(generation) = request.generation {
        document.insert(field::GENERATION, generation.0);
    }
    document
}
