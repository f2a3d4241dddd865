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
    /// The Open Platform component, for the authorizer kinds only (the
    /// account authorized it); absent for every other kind.
    pub const COMPONENT_APPID: &str = "component_appid";
    /// `access_token`, `jsapi_ticket`, `wx_card_ticket`, `agent_config_ticket`,
    /// `component_access_token`, or with [`COMPONENT_APPID`]
    /// `authorizer_access_token`, `authorizer_jsapi_ticket`,
    /// `authorizer_wx_card_ticket` (default `access_token`).
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
    /// The component `app_id` authorized, for the authorizer kinds
    /// ([`CredentialKind::is_authorizer`]); `None` for the others.
    pub component_appid: Option<&'a AccountId>,
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
    let mut document = doc! { field::APP_ID: request.app_id.as_str() };
    // An account's request keeps the shape it always had.
    if let Some(component) = request.component_appid {
        document.insert(field::COMPONENT_APPID, component.as_str());
    }
    document.extend(doc! {
        field::KIND: request.kind.as_str(),
        field::REASON: request.reason.as_str(),
        field::REQUESTED_AT: DateTime::from_system_time(SystemTime::now()),
        field::REQUESTED_BY: request.requested_by,
    });
    if let Some(generation) = request.generation {
        document.insert(field::GENERATION, generation.0);
    }
    document
}
