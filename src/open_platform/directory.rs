//! `authorizers`: which accounts authorized the platform, and where each
//! stands. One document per (component, authorizer), nothing secret in it:
//! status and the reader role read it, and every coordinator polls it for
//! the authorizers to refresh ([`Directory::changed_since`]).
//!
//! Three writers meet here: the callback receiver (authorization events),
//! the holder of an authorizer's lease (what WeChat answered it) and
//! discovery (`api_get_authorizer_list`). Events carry WeChat's
//! `CreateTime`; the newest event applied is kept (`event_time`), and an
//! older one changes nothing, so a replayed `unauthorized` cannot undo a
//! later `authorized`. Only a newer event, or a listing that began after
//! the withdrawal, brings an `unauthorized` authorizer back.

use std::time::SystemTime;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::UpdateModifications;
use mongodb::Collection;
use wxtokend_reader::AccountId;

use crate::store::{is_duplicate_key, IndexSpec, Store, StoreError};

/// The collection.
pub const AUTHORIZERS: &str = "authorizers";

/// Field names of an `authorizers` document: the one place they are
/// spelled.
pub mod field {
    pub const ID: &str = "_id";
    pub const COMPONENT_APPID: &str = "component_appid";
    pub const APP_ID: &str = "app_id";
    pub const STATE: &str = "state";
    /// Why it is in that state (`event:authorized`, `errcode:61023`,
    /// `list`, …): never a secret.
    pub const STATE_REASON: &str = "state_reason";
    /// WeChat's `CreateTime` of the newest event applied.
    pub const EVENT_TIME: &str = "event_time";
    /// When the account authorized the platform, as
    /// `api_get_authorizer_list` says.
    pub const AUTH_TIME: &str = "auth_time";
    /// The daemon's reading of MongoDB's clock at the last change: what the
    /// coordinators poll.
    pub const UPDATED_AT: &str = "updated_at";
    /// Permission-set ids (`funcscope_category.id`), informational.
    pub const FUNC_INFO: &str = "func_info";
}

/// Serves the coordinators' incremental poll.
pub const UPDATED_INDEX: &str = "component_appid_1_updated_at_1";
/// Serves counts and lists by state (status, readiness).
pub const STATE_INDEX: &str = "component_appid_1_state_1";

/// The indexes of `authorizers`.
pub fn indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec {
            collection: AUTHORIZERS,
            name: UPDATED_INDEX,
            keys: &[(field::COMPONENT_APPID, 1), (field::UPDATED_AT, 1)],
            unique: false,
            ttl: None,
        },
        IndexSpec {
            collection: AUTHORIZERS,
            name: STATE_INDEX,
            keys: &[(field::COMPONENT_APPID, 1), (field::STATE, 1)],
            unique: false,
            ttl: None,
        },
    ]
}

/// `_id` of an authorizer's documents here and in `authorizer_secrets`:
/// `{component}:{authorizer}` (appids hold no `:`).
pub fn document_id(component: &AccountId, authorizer: &AccountId) -> String {
    format!("{component}:{authorizer}")
}

/// Where an authorizer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorizerState {
    /// Authorized, its authorization code not exchanged yet (or listed
    /// without a refresh token).
    Pending,
    /// A refresh token is stored and works.
    Active,
    /// Its refresh token was refused (61023) or its code was unusable, and
    /// nothing better is known: the account must authorize again, or
    /// discovery find a refresh token.
    NeedsReauthorization,
    /// The account withdrew its authorization (event, or 61003).
    Unauthorized,
}

impl AuthorizerState {
    pub const ALL: [AuthorizerState; 4] = [
        Self::Pending,
        Self::Active,
        Self::NeedsReauthorization,
        Self::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::NeedsReauthorization => "needs_reauthorization",
            Self::Unauthorized => "unauthorized",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

impl std::fmt::Display for AuthorizerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What an authorization event says (its `InfoType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    Authorized,
    UpdateAuthorized,
    Unauthorized,
}

impl Authorization {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorized => "authorized",
            Self::UpdateAuthorized => "updateauthorized",
            Self::Unauthorized => "unauthorized",
        }
    }
}

/// What an event-timed write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Applied,
    /// An event as new or newer was applied already: nothing changed.
    Superseded,
}

/// What [`Directory::set_state`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateSet {
    Set,
    /// Nothing changed: no such authorizer, or it is `unauthorized`, which
    /// only a newer event leaves.
    Kept,
}

/// What a listing entry did to the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovered {
    /// Not known before: added in this state.
    New(AuthorizerState),
    /// It was `unauthorized` by an event older than the listing: back in
    /// this state.
    Revived(AuthorizerState),
    /// Known: its state is unchanged.
    Known(AuthorizerState),
}

/// One `authorizers` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorizer {
    pub component_appid: AccountId,
    pub app_id: AccountId,
    pub state: AuthorizerState,
    pub state_reason: String,
    pub event_time: Option<SystemTime>,
    pub auth_time: Option<SystemTime>,
    pub updated_at: SystemTime,
    pub func_info: Vec<i64>,
}

/// `authorizers`.
#[derive(Debug, Clone)]
pub struct Directory {
    store: Store,
}

impl Directory {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn collection(&self) -> Collection<Document> {
        self.store.database().collection(AUTHORIZERS)
    }

    fn now(&self) -> DateTime {
        DateTime::from_system_time(self.store.clock().now())
    }

    /// Applies an authorization event of `event_time` (WeChat's
    /// `CreateTime`), creating the authorizer if it is new, unless an event
    /// as new or newer was applied already. `authorized` and
    /// `updateauthorized` make it `pending` (a code waits to be exchanged),
    /// except that an `active` one stays active (its refresh token still
    /// works); `unauthorized` makes it `unauthorized`.
    pub async fn upsert(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        authorization: Authorization,
        event_time: SystemTime,
    ) -> Result<EventOutcome, StoreError> {
        let reason = format!("event:{}", authorization.as_str());
        let at = DateTime::from_system_time(event_time);
        let update: UpdateModifications = match authorization {
            Authorization::Unauthorized => doc! { "$set": {
                field::COMPONENT_APPID: component.as_str(),
                field::APP_ID: authorizer.as_str(),
                field::STATE: AuthorizerState::Unauthorized.as_str(),
                field::STATE_REASON: reason,
                field::EVENT_TIME: at,
                field::UPDATED_AT: self.now(),
            }}
            .into(),
            // A pipeline, so that the new state depends on the stored one
            // in the same write.
            Authorization::Authorized | Authorization::UpdateAuthorized => vec![doc! { "$set": {
                field::COMPONENT_APPID: { "$literal": component.as_str() },
                field::APP_ID: { "$literal": authorizer.as_str() },
                field::STATE: { "$cond": [
                    { "$eq": [format!("${}", field::STATE), AuthorizerState::Active.as_str()] },
                    AuthorizerState::Active.as_str(),
                    AuthorizerState::Pending.as_str(),
                ]},
                field::STATE_REASON: { "$literal": reason },
                field::EVENT_TIME: at,
                field::UPDATED_AT: self.now(),
            }}]
            .into(),
        };
        let id = document_id(component, authorizer);
        upsert_unless_newer(
            &self.collection(),
            &id,
            field::EVENT_TIME,
            event_time,
            update,
        )
        .await
    }

    /// Sets the state for what WeChat answered the holder of the
    /// authorizer's lease (`active` after an exchange, `needs_reauthorization`
    /// on 61023, `unauthorized` on 61003). It has no event time: it never
    /// creates an authorizer and never takes one out of `unauthorized`
    /// (only a newer event, or a later listing, does).
    pub async fn set_state(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        state: AuthorizerState,
        reason: &str,
    ) -> Result<StateSet, StoreError> {
        let mut filter = doc! { field::ID: document_id(component, authorizer) };
        if state != AuthorizerState::Unauthorized {
            filter.insert(
                field::STATE,
                doc! { "$ne": AuthorizerState::Unauthorized.as_str() },
            );
        }
        self.write_state(filter, state, reason).await
    }

    /// [`Directory::set_state`] for what WeChat answered a call sent at
    /// `as_of` (MongoDB's clock): nothing changes if an event at or after
    /// it was applied meanwhile (a re-authorization that crossed the call
    /// must not be undone by the call's stale answer).
    pub async fn set_state_as_of(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        state: AuthorizerState,
        reason: &str,
        as_of: SystemTime,
    ) -> Result<StateSet, StoreError> {
        // Only a change is written: `updated_at` then says when the state
        // changed (a refused refresh token retried every
        // `permanent_error_retry` must not look refused anew each time).
        let filter = doc! {
            field::ID: document_id(component, authorizer),
            field::STATE: { "$ne": state.as_str() },
            "$or": older_than(field::EVENT_TIME, as_of),
        };
        self.write_state(filter, state, reason).await
    }

    /// Sets `state` on the document `filter` matches, if it does.
    async fn write_state(
        &self,
        filter: Document,
        state: AuthorizerState,
        reason: &str,
    ) -> Result<StateSet, StoreError> {
        let update = doc! { "$set": {
            field::STATE: state.as_str(),
            field::STATE_REASON: reason,
            field::UPDATED_AT: self.now(),
        }};
        let result = self.collection().update_one(filter, update).await?;
        Ok(if result.matched_count == 1 {
            StateSet::Set
        } else {
            StateSet::Kept
        })
    }

    /// Records the permission sets `api_query_auth` answered.
    pub async fn set_func_info(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        func_info: &[i64],
    ) -> Result<(), StoreError> {
        self.collection()
            .update_one(
                doc! { field::ID: document_id(component, authorizer) },
                doc! { "$set": { field::FUNC_INFO: func_info, field::UPDATED_AT: self.now() } },
            )
            .await?;
        Ok(())
    }

    /// Applies one entry of `api_get_authorizer_list`, read by a discovery
    /// pass that began at `discovery_started` (MongoDB's clock, before the
    /// first page was asked for). A new authorizer is added, `active` if the
    /// entry had a refresh token (store it first, with
    /// [`super::secrets::Secrets::replace_refresh_token`], so that an active
    /// authorizer always has one) and `pending` if not. An `unauthorized`
    /// one comes back the same way only if its withdrawal is older than the
    /// pass; every other state is left to the holder.
    pub async fn upsert_listed(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        has_refresh_token: bool,
        auth_time: Option<SystemTime>,
        discovery_started: SystemTime,
    ) -> Result<Discovered, StoreError> {
        let id = document_id(component, authorizer);
        let state = if has_refresh_token {
            AuthorizerState::Active
        } else {
            AuthorizerState::Pending
        };
        let auth_time = auth_time.map(DateTime::from_system_time);
        let mut new = doc! {
            field::ID: &id,
            field::COMPONENT_APPID: component.as_str(),
            field::APP_ID: authorizer.as_str(),
            field::STATE: state.as_str(),
            field::STATE_REASON: "list",
            field::UPDATED_AT: self.now(),
        };
        if let Some(at) = auth_time {
            new.insert(field::AUTH_TIME, at);
        }
        match self.collection().insert_one(new).await {
            Ok(_) => return Ok(Discovered::New(state)),
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let mut revive = doc! {
            field::STATE: state.as_str(),
            field::STATE_REASON: "list",
            field::UPDATED_AT: self.now(),
        };
        if let Some(at) = auth_time {
            revive.insert(field::AUTH_TIME, at);
        }
        let withdrawn_before = doc! {
            field::ID: &id,
            field::STATE: AuthorizerState::Unauthorized.as_str(),
            "$or": older_than(field::EVENT_TIME, discovery_started),
        };
        let revived = self
            .collection()
            .update_one(withdrawn_before, doc! { "$set": revive })
            .await?;
        if revived.matched_count == 1 {
            return Ok(Discovered::Revived(state));
        }
        if let Some(at) = auth_time {
            self.collection()
                .update_one(
                    doc! { field::ID: &id, field::AUTH_TIME: { "$ne": at } },
                    doc! { "$set": { field::AUTH_TIME: at, field::UPDATED_AT: self.now() } },
                )
                .await?;
        }
        let known = self.get(component, authorizer).await?;
        // Gone meanwhile or unreadable (a person's edit): as listed.
        Ok(Discovered::Known(known.map_or(state, |a| a.state)))
    }

    /// One authorizer, if known (and readable).
    pub async fn get(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
    ) -> Result<Option<Authorizer>, StoreError> {
        let found = self
            .collection()
            .find_one(doc! { field::ID: document_id(component, authorizer) })
            .await?;
        Ok(found.as_ref().and_then(parse))
    }

    /// Whether an authorizer of `component` was marked
    /// `needs_reauthorization` at or after `since` (its refresh token
    /// refused): discovery then reads WeChat's list sooner. One indexed
    /// read.
    pub async fn refused_since(
        &self,
        component: &AccountId,
        since: SystemTime,
    ) -> Result<bool, StoreError> {
        let found = self
            .collection()
            .find_one(doc! {
                field::COMPONENT_APPID: component.as_str(),
                field::STATE: AuthorizerState::NeedsReauthorization.as_str(),
                field::UPDATED_AT: { "$gte": DateTime::from_system_time(since) },
            })
            .projection(doc! { field::ID: 1 })
            .await?;
        Ok(found.is_some())
    }

    /// Every authorizer of `component`. A document that cannot be read (a
    /// person's edit, a newer version's state) is skipped.
    pub async fn all(&self, component: &AccountId) -> Result<Vec<Authorizer>, StoreError> {
        self.find(doc! { field::COMPONENT_APPID: component.as_str() })
            .await
    }

    /// The appids of the authorizers of `component` in `state` (for
    /// `/readyz`: the active ones): one query on the
    /// `component_appid_1_state_1` index, the appids alone read.
    pub async fn app_ids_in(
        &self,
        component: &AccountId,
        state: AuthorizerState,
    ) -> Result<Vec<AccountId>, StoreError> {
        let documents: Vec<Document> = self
            .collection()
            .find(doc! {
                field::COMPONENT_APPID: component.as_str(),
                field::STATE: state.as_str(),
            })
            .projection(doc! { field::ID: 0, field::APP_ID: 1 })
            .await?
            .try_collect()
            .await?;
        Ok(documents
            .iter()
            .filter_map(|d| d.get_str(field::APP_ID).ok().map(AccountId::new))
            .collect())
    }

    /// The authorizers of `component` changed at or after `since` (by
    /// `updated_at`), oldest change first: the coordinators' incremental
    /// poll, one indexed query.
    pub async fn changed_since(
        &self,
        component: &AccountId,
        since: SystemTime,
    ) -> Result<Vec<Authorizer>, StoreError> {
        self.find(doc! {
            field::COMPONENT_APPID: component.as_str(),
            field::UPDATED_AT: { "$gte": DateTime::from_system_time(since) },
        })
        .await
    }

    async fn find(&self, filter: Document) -> Result<Vec<Authorizer>, StoreError> {
        let documents: Vec<Document> = self
            .collection()
            .find(filter)
            .sort(doc! { field::UPDATED_AT: 1 })
            .await?
            .try_collect()
            .await?;
        Ok(documents.iter().filter_map(parse).collect())
    }
}

/// `$or` clauses: `field` absent, or before `t`.
pub(super) fn older_than(field: &str, t: SystemTime) -> Vec<Document> {
    vec![
        doc! { field: { "$exists": false } },
        doc! { field: { "$lt": DateTime::from_system_time(t) } },
    ]
}

/// Applies `update` to the document `id` (creating it if absent) unless
/// its `guard` date is `t` or later. An existing document the guard turns
/// away makes the upsert try an insert, which its `_id` refuses: that is
/// how "superseded" shows. The first refusal may instead be a concurrent
/// insert of the same new document, so the write is tried once more.
pub(super) async fn upsert_unless_newer(
    collection: &Collection<Document>,
    id: &str,
    guard: &str,
    t: SystemTime,
    update: UpdateModifications,
) -> Result<EventOutcome, StoreError> {
    let filter = doc! { field::ID: id, "$or": older_than(guard, t) };
    for _ in 0..2 {
        let written = collection
            .update_one(filter.clone(), update.clone())
            .upsert(true)
            .await;
        match written {
            Ok(_) => return Ok(EventOutcome::Applied),
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(EventOutcome::Superseded)
}

fn parse(document: &Document) -> Option<Authorizer> {
    let date = |name: &str| document.get_datetime(name).ok().map(|t| t.to_system_time());
    Some(Authorizer {
        component_appid: AccountId::new(document.get_str(field::COMPONENT_APPID).ok()?),
        app_id: AccountId::new(document.get_str(field::APP_ID).ok()?),
        state: AuthorizerState::parse(document.get_str(field::STATE).ok()?)?,
        state_reason: document
            .get_str(field::STATE_REASON)
            .unwrap_or_default()
            .to_owned(),
        event_time: date(field::EVENT_TIME),
        auth_time: date(field::AUTH_TIME),
        updated_at: date(field::UPDATED_AT)?,
        func_info: document
            .get_array(field::FUNC_INFO)
            .map(|ids| ids.iter().filter_map(as_i64).collect())
            .unwrap_or_default(),
    })
}

fn as_i64(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_as_written() {
        for state in AuthorizerState::ALL {
            assert_eq!(AuthorizerState::parse(state.as_str()), Some(state));
        }
        assert_eq!(AuthorizerState::parse("revoked"), None);
    }

    #[test]
    fn a_document_without_a_known_state_or_a_date_is_skipped() {
        let now = DateTime::now();
        let good = doc! {
            "_id": "wxc:wxa", "component_appid": "wxc", "app_id": "wxa", "state": "active",
            "state_reason": "list", "updated_at": now, "func_info": [1, 2_i64, "x"],
        };
        let parsed = parse(&good).expect("readable");
        assert_eq!(parsed.state, AuthorizerState::Active);
        assert_eq!(parsed.func_info, [1, 2]);
        assert_eq!(parsed.event_time, None);
        let mut unknown = good.clone();
        unknown.insert("state", "revoked");
        assert_eq!(parse(&unknown), None);
        let mut undated = good.clone();
        undated.remove("updated_at");
        assert_eq!(parse(&undated), None);
    }

    #[test]
    fn document_ids_join_component_and_authorizer() {
        assert_eq!(
            document_id(&AccountId::new("wxc"), &AccountId::new("wxa")),
            "wxc:wxa"
        );
    }
}
