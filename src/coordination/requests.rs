//! Reading `refresh_requests` (filed by business services, `wxtokend
//! refresh` and the daemon itself; see the reader crate's `requests`): the
//! lease holder of an account acts on them and deletes them.

use futures_util::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::{Collection, Database};
use wxtokend_reader::requests::{collection, field};
use wxtokend_reader::{AccountId, CredentialKind, Generation, RefreshReason};

use crate::store::StoreError;

/// One request as the daemon reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRequest {
    pub id: ObjectId,
    pub app_id: AccountId,
    pub kind: CredentialKind,
    pub reason: RefreshReason,
    pub generation: Option<Generation>,
}

/// The request collection.
#[derive(Debug, Clone)]
pub struct Requests {
    collection: Collection<Document>,
}

impl Requests {
    pub fn new(db: &Database) -> Self {
        Self {
            collection: collection(db),
        }
    }

    /// Open requests (at most `limit`). The collection is normally empty,
    /// so reading it whole is one cheap query whatever the number of
    /// accounts.
    pub async fn open(&self, limit: i64) -> Result<Vec<RefreshRequest>, StoreError> {
        let docs: Vec<Document> = self
            .collection
            .find(doc! {})
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().filter_map(parse).collect())
    }

    /// Deletes handled requests.
    pub async fn delete(&self, ids: &[ObjectId]) -> Result<(), StoreError> {
        if !ids.is_empty() {
            self.collection
                .delete_many(doc! { "_id": { "$in": ids } })
                .await?;
        }
        Ok(())
    }
}

/// Unreadable requests (wrong kind or reason) are skipped, not fatal: they
/// come from other programs, and the TTL index removes them.
fn parse(doc: &Document) -> Option<RefreshRequest> {
    let kind = match doc.get_str(field::KIND) {
        Ok(kind) => CredentialKind::parse(kind)?,
        Err(_) => CredentialKind::AccessToken,
    };
    let reason = doc
        .get_str(field::REASON)
        .ok()
        .and_then(RefreshReason::parse)
        .filter(|r| matches!(r, RefreshReason::ReportedInvalid | RefreshReason::Manual))?;
    let generation = match doc.get(field::GENERATION) {
        Some(Bson::Int64(g)) => Some(Generation(*g)),
        Some(Bson::Int32(g)) => Some(Generation(i64::from(*g))),
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
