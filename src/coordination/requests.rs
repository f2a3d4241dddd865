//! Reading `refresh_requests` (filed by business services, `wxtokend
//! refresh` and the daemon itself; see the reader crate's `requests`): the
//! lease holder of an account acts on them and deletes them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::{Collection, Database};
use wxtokend_reader::document::as_integer;
use wxtokend_reader::requests::{collection, field};
use wxtokend_reader::{AccountId, CredentialKind, Generation, Owner, RefreshReason};

use crate::store::StoreError;

/// One request as the daemon reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshRequest {
    /// The document's `_id` (an ObjectId when a driver made it, but any
    /// value another program chose).
    pub id: Bson,
    pub app_id: AccountId,
    /// The component, for the authorizer kinds (and only for them).
    pub component_appid: Option<AccountId>,
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

    /// Whether any request is open, for any account: one small query
    /// (nearly always answered with none) before [`Requests::open`], whose
    /// filter names every account this replica holds.
    pub async fn any(&self) -> Result<bool, StoreError> {
        let first = self
            .collection
            .find_one(doc! {})
            .projection(doc! { "_id": 1 })
            .await?;
        Ok(first.is_some())
    }

    /// The open requests for `owners` (those this replica holds), oldest
    /// first, at most `limit`; requests for other owners are left to their
    /// holders (an account's holder never reads an authorizer's request of
    /// the same appid, nor the reverse). Unreadable ones come back apart,
    /// to be deleted.
    pub async fn open(&self, owners: &[Owner], limit: i64) -> Result<Open, StoreError> {
        let docs: Vec<Document> = self
            .collection
            .find(filter(owners))
            .sort(doc! { field::REQUESTED_AT: 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        let mut open = Open::default();
        for doc in &docs {
            match parse(doc) {
                Ok(request) => open.requests.push(request),
                Err(problem) => open.unreadable.push((doc.get("_id").cloned(), problem)),
            }
        }
        Ok(open)
    }

    /// Dates (with `now`) the requests that came without `requested_at`, so
    /// that the TTL index expires them too (whichever account they name).
    pub async fn date_undated(&self, now: SystemTime) -> Result<u64, StoreError> {
        let result = self
            .collection
            .update_many(
                doc! { field::REQUESTED_AT: { "$exists": false } },
                doc! { "$set": { field::REQUESTED_AT: DateTime::from_system_time(now) } },
            )
            .await?;
        Ok(result.modified_count)
    }

    /// Deletes handled (or unreadable) requests.
    pub async fn delete(&self, ids: &[Bson]) -> Result<(), StoreError> {
        if !ids.is_empty() {
            self.collection
                .delete_many(doc! { "_id": { "$in": ids } })
                .await?;
        }
        Ok(())
    }
}

/// The requests of `owners`: an account's have no `component_appid`
/// (missing or null), an authorizer's name its component. One `$in` per
/// component (all of them use the `app_id` index).
fn filter(owners: &[Owner]) -> Document {
    let mut by_component: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
    for owner in owners {
        let component = owner.component_appid.as_ref().map(AccountId::as_str);
        by_component
            .entry(component)
            .or_default()
            .push(owner.app_id.as_str());
    }
    let mut clauses: Vec<Document> = by_component
        .into_iter()
        .map(|(component, ids)| {
            doc! { field::APP_ID: { "$in": ids }, field::COMPONENT_APPID: component }
        })
        .collect();
    match clauses.len() {
        // Nothing held: nothing matches (`$or` refuses an empty list).
        0 => doc! { field::APP_ID: { "$in": [] } },
        1 => clauses.remove(0),
        _ => doc! { "$or": clauses },
    }
}

/// What a poll found.
#[derive(Debug, Default)]
pub struct Open {
    pub requests: Vec<RefreshRequest>,
    /// Requests that cannot be read (their `_id`, if any, and why): they
    /// come from other programs; they are deleted and logged, never retried.
    pub unreadable: Vec<(Option<Bson>, &'static str)>,
}

/// Reads one request; the error says what is wrong with it.
fn parse(doc: &Document) -> Result<RefreshRequest, &'static str> {
    let kind = match doc.get(field::KIND) {
        None => CredentialKind::AccessToken,
        Some(Bson::String(kind)) => CredentialKind::parse(kind).ok_or("unknown kind")?,
        Some(_) => return Err("kind is not a string"),
    };
    let reason = doc
        .get_str(field::REASON)
        .ok()
        .and_then(RefreshReason::parse)
        .filter(|r| matches!(r, RefreshReason::ReportedInvalid | RefreshReason::Manual))
        .ok_or("reason is not reported_invalid or manual")?;
    let generation = match doc.get(field::GENERATION) {
        None | Some(Bson::Null) => None,
        Some(value) => Some(Generation(
            as_integer(value).ok_or("generation is not a whole number")?,
        )),
    };
    if reason == RefreshReason::ReportedInvalid && generation.is_none() {
        return Err("a reported_invalid request names no generation");
    }
    let component_appid = match doc.get(field::COMPONENT_APPID) {
        None | Some(Bson::Null) => None,
        Some(Bson::String(component)) => Some(AccountId::new(component.as_str())),
        Some(_) => return Err("component_appid is not a string"),
    };
    match (kind.is_authorizer(), &component_appid) {
        (true, None) => return Err("an authorizer kind names no component_appid"),
        (false, Some(_)) => return Err("component_appid is for the authorizer kinds only"),
        _ => {}
    }
    Ok(RefreshRequest {
        id: doc.get("_id").cloned().ok_or("no _id")?,
        app_id: AccountId::new(doc.get_str(field::APP_ID).map_err(|_| "no app_id")?),
        component_appid,
        kind,
        reason,
        generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_from_other_programs_are_read_or_refused_with_a_reason() {
        let ok =
            doc! { "_id": 1, "app_id": "wx1", "reason": "reported_invalid", "generation": 4.0 };
        let read = parse(&ok).expect("readable");
        assert_eq!(read.kind, CredentialKind::AccessToken);
        assert_eq!(read.generation, Some(Generation(4)));
        assert_eq!(read.component_appid, None);
        let manual = doc! { "_id": 2, "app_id": "wx1", "kind": "jsapi_ticket", "reason": "manual" };
        assert_eq!(
            parse(&manual).map(|r| r.kind),
            Ok(CredentialKind::JsapiTicket)
        );
        let authorizer = doc! {
            "_id": 8, "app_id": "wx1", "component_appid": "wxC",
            "kind": "authorizer_access_token", "reason": "reported_invalid", "generation": 2,
        };
        let read = parse(&authorizer).expect("readable");
        assert_eq!(read.component_appid, Some(AccountId::new("wxC")));
        assert_eq!(read.kind, CredentialKind::AuthorizerAccessToken);
        let null = doc! { "_id": 9, "app_id": "wx1", "component_appid": null, "reason": "manual" };
        assert_eq!(parse(&null).map(|r| r.component_appid), Ok(None));
        for (bad, why) in [
            (
                doc! { "_id": 3, "app_id": "wx1", "kind": "bogus", "reason": "manual" },
                "unknown kind",
            ),
            (
                doc! { "_id": 4, "app_id": "wx1", "kind": 7, "reason": "manual" },
                "kind is not a string",
            ),
            (
                doc! { "_id": 5, "app_id": "wx1", "reason": "startup" },
                "reason is not reported_invalid or manual",
            ),
            (
                doc! { "_id": 6, "app_id": "wx1", "reason": "reported_invalid" },
                "a reported_invalid request names no generation",
            ),
            (
                doc! { "_id": 7, "app_id": "wx1", "reason": "reported_invalid", "generation": "4" },
                "generation is not a whole number",
            ),
            (
                doc! { "_id": 10, "app_id": "wx1", "kind": "authorizer_jsapi_ticket", "reason": "manual" },
                "an authorizer kind names no component_appid",
            ),
            (
                doc! { "_id": 11, "app_id": "wx1", "component_appid": "wxC", "reason": "manual" },
                "component_appid is for the authorizer kinds only",
            ),
            (
                doc! {
                    "_id": 12, "app_id": "wx1", "component_appid": 5,
                    "kind": "authorizer_access_token", "reason": "manual",
                },
                "component_appid is not a string",
            ),
        ] {
            assert_eq!(parse(&bad).map(|r| r.kind), Err(why));
        }
    }
}
