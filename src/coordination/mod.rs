//! Coordination between replicas, in MongoDB: one lease per account decides
//! who may talk to WeChat for it. A held lease is a value, [`Lease`]: asking
//! for a permit before a WeChat call, writing a credential (fenced by the
//! lease's term), noting errors and giving the lease back are its methods,
//! so none of them can be done without holding it. [`Leases`] takes leases,
//! renews and releases them in bulk, and keeps the replicas' heartbeats.
//!
//! All lease times come from the MongoDB server's clock (`hello.localTime`
//! and `$$NOW`), never from a replica's, so replicas with skewed clocks agree.

mod lease;
mod permit;
pub mod quota;
mod requests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;
use wxtokend_reader::document::integer;
use wxtokend_reader::{AccountId, Owner};

use crate::mirror::Health;
use crate::store::{is_only_duplicate_keys, IndexSpec, Store, StoreError};
use crate::wechat::Api;
pub use lease::{Inserted, Lease, Newest, Stored};
pub use permit::{Permit, PermitRules};
use quota::ApiQuota;
pub use requests::{RefreshRequest, Requests};

/// The coordination collections.
pub const LEASES: &str = "leases";
pub const INSTANCES: &str = "instances";

/// Field names of lease documents (`_id` is a [`LeaseId`]).
pub mod field {
    pub const ID: &str = "_id";
    pub const HOLDER: &str = "holder";
    pub const TERM: &str = "term";
    pub const EXPIRES_AT: &str = "expires_at";
    pub const ACQUIRED_AT: &str = "acquired_at";
    /// Generation counters, one sub-field per credential kind.
    pub const GENERATIONS: &str = "generations";
    /// Per-API quota counters: `quota.<api>.{day, calls, ...}` (see
    /// [`quota`](super::quota)).
    pub const QUOTA: &str = super::quota::QUOTA;
    pub const LAST_ERROR: &str = "last_error";
    pub const LAST_ERROR_AT: &str = "last_error_at";
    /// A random number set by each batch of leases taken at once, to read
    /// back which of them that batch got.
    pub const BATCH: &str = "batch";
}

/// The `_id` of a lease document: an account's id (`[[accounts]]`), or for
/// the Open Platform `open:{component_appid}` (the component's own token)
/// and `open:{component_appid}:{authorizer_appid}` (an authorizer's).
/// Appids never hold `:`, so no two owners share a lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(String);

impl LeaseId {
    /// The lease of a configured account: its id, as it always was.
    pub fn account(id: &AccountId) -> Self {
        Self(id.as_str().to_owned())
    }

    /// The lease of an Open Platform component's own token.
    pub fn component(component_appid: &AccountId) -> Self {
        Self(format!("open:{component_appid}"))
    }

    /// The lease of an account's credentials held through a component.
    pub fn authorizer(component_appid: &AccountId, app_id: &AccountId) -> Self {
        Self(format!("open:{component_appid}:{app_id}"))
    }

    /// An id as stored.
    pub fn stored(id: &str) -> Self {
        Self(id.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The configured account this lease is for, unless it is an Open
    /// Platform lease.
    pub fn as_account(&self) -> Option<AccountId> {
        (!self.0.starts_with("open:")).then(|| AccountId::new(self.0.as_str()))
    }
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

impl std::borrow::Borrow<str> for LeaseId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A lease term: increases by one each time the lease changes hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Term(pub i64);

/// Who holds an account's lease, and its counters, for `status` and balancing.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    pub id: LeaseId,
    pub holder: String,
    pub term: Term,
    pub expires_at: SystemTime,
    /// The counters of every API called for the account, as stored (see
    /// [`ApiQuota::on`] for today's).
    pub quotas: BTreeMap<Api, ApiQuota>,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
}

/// The lease collection, seen by one replica (`holder`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leases {
    store: Store,
}

impl Leases {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn collection(&self) -> Collection<Document> {
        self.store.database().collection(LEASES)
    }

    /// Takes, whatever their number, the leases of `ids` that nobody holds
    /// or whose holder let them expire, in at most three round trips:
    /// creating the documents of `new` (accounts without one yet, with the
    /// WeChat APIs each will call: created free, today's quota day started
    /// for those APIs), one update of all, and one read of what this batch
    /// got. Returns the leases taken.
    pub async fn acquire_many(
        &self,
        ids: &[(LeaseId, Owner)],
        new: &[(LeaseId, Vec<Api>)],
        holder: &Arc<str>,
        duration: Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.store.clock().now();
        if !new.is_empty() {
            let day = quota::quota_day(now);
            let fresh = |(id, apis): &(LeaseId, Vec<Api>)| {
                let quota: Document = apis
                    .iter()
                    .map(|api| (api.as_str().to_owned(), quota::started(&day).into()))
                    .collect();
                doc! { field::ID: id.as_str(), field::QUOTA: quota }
            };
            let created = self
                .collection()
                .insert_many(new.iter().map(fresh))
                .ordered(false)
                .await;
            match created {
                Ok(_) => {}
                // Created meanwhile by another replica: what matters is
                // that they exist.
                Err(e) if is_only_duplicate_keys(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
        let batch = rand::random::<i64>();
        let taken = self
            .collection()
            .update_many(
                doc! {
                    field::ID: { "$in": &names },
                    "$or": [
                        { field::TERM: { "$exists": false } },
                        { "$expr": { "$lte": [format!("${}", field::EXPIRES_AT), "$$NOW"] } },
                    ],
                },
                doc! {
                    "$set": {
                        field::HOLDER: holder.as_ref(),
                        field::EXPIRES_AT: DateTime::from_system_time(now + duration),
                        field::ACQUIRED_AT: DateTime::from_system_time(now),
                        field::BATCH: batch,
                    },
                    "$inc": { field::TERM: 1_i64 },
                },
            )
            .await?;
        // The test suite's stand-in for an answer that never comes back
        // although the leases were taken.
        crate::stall_point!("acquire-answer-lost");
        if taken.modified_count == 0 {
            return Ok(Vec::new());
        }
        let docs: Vec<Document> = self
            .collection()
            .find(doc! {
                field::ID: { "$in": &names },
                field::HOLDER: holder.as_ref(),
                field::BATCH: batch,
            })
            .projection(doc! { field::ID: 1, field::TERM: 1 })
            .await?
            .try_collect()
            .await?;
        let owners: std::collections::HashMap<&str, &Owner> =
            ids.iter().map(|(id, owner)| (id.as_str(), owner)).collect();
        Ok(docs
            .iter()
            .filter_map(|lease| {
                let (id, owner) = owners.get_key_value(lease.get_str(field::ID).ok()?)?;
                let term = Term(integer(lease, field::TERM).ok()?);
                let owner = (*owner).clone();
                let id = LeaseId::stored(id);
                Some(Lease::new(
                    self.store.clone(),
                    id,
                    owner,
                    holder.clone(),
                    term,
                ))
            })
            .collect())
    }

    /// Takes the lease of `app_id` for `holder` if nobody holds it or its
    /// holder let it expire: [`Leases::acquire_many`] for one account (its
    /// document created if missing, without quota counters). `None`:
    /// someone else holds it.
    pub async fn acquire(
        &self,
        app_id: &AccountId,
        holder: &Arc<str>,
        duration: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let id = LeaseId::account(app_id);
        let one = [(id.clone(), Owner::account(app_id.clone()))];
        let new = [(id, Vec::new())];
        Ok(self.acquire_many(&one, &new, holder, duration).await?.pop())
    }

    /// Extends every lease in `held` that is still `holder`'s at that
    /// term, in one write, and returns the ids it still holds (the others
    /// were taken over, possibly by a process with the same holder name).
    pub async fn renew_all(
        &self,
        held: &[(LeaseId, Term)],
        holder: &str,
        duration: Duration,
    ) -> Result<Vec<LeaseId>, StoreError> {
        let now = self.store.server_time().await?;
        let expires_at = DateTime::from_system_time(now + duration);
        let matched = update_each(&self.store, held, holder, expires_at).await?;
        if matched == held.len() {
            return Ok(held.iter().map(|(id, _)| id.clone()).collect());
        }
        // Some moved on: which are still ours, at our term.
        let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        let docs: Vec<Document> = self
            .collection()
            .find(doc! { field::ID: { "$in": ids }, field::HOLDER: holder })
            .projection(doc! { field::ID: 1, field::TERM: 1 })
            .await?
            .try_collect()
            .await?;
        let terms: std::collections::HashMap<&str, i64> = held
            .iter()
            .map(|(id, term)| (id.as_str(), term.0))
            .collect();
        Ok(docs
            .iter()
            .filter(|d| {
                d.get_str(field::ID)
                    .ok()
                    .and_then(|id| terms.get(id))
                    .is_some_and(|term| integer(d, field::TERM).ok() == Some(*term))
            })
            .filter_map(|d| d.get_str(field::ID).ok().map(LeaseId::stored))
            .collect())
    }

    /// Leases of `ids` that expired before `before` (server clock): the
    /// accounts nobody refreshes.
    pub async fn expired(
        &self,
        ids: &[LeaseId],
        before: SystemTime,
    ) -> Result<Vec<LeaseId>, StoreError> {
        let ids: Vec<&str> = ids.iter().map(LeaseId::as_str).collect();
        self.ids(doc! {
            field::ID: { "$in": ids },
            field::EXPIRES_AT: { "$lte": DateTime::from_system_time(before) },
        })
        .await
    }

    async fn ids(&self, filter: Document) -> Result<Vec<LeaseId>, StoreError> {
        let docs: Vec<Document> = self
            .collection()
            .find(filter)
            .projection(doc! { field::ID: 1 })
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .iter()
            .filter_map(|d| d.get_str(field::ID).ok().map(LeaseId::stored))
            .collect())
    }

    /// Gives up every lease in `held` that is still `holder`'s at that
    /// term, in one write (clean shutdown). Like [`Lease::release`], they
    /// expire now.
    pub async fn release_all(
        &self,
        held: &[(LeaseId, Term)],
        holder: &str,
    ) -> Result<(), StoreError> {
        if held.is_empty() {
            return Ok(());
        }
        let now = self.store.server_time().await?;
        update_each(&self.store, held, holder, DateTime::from_system_time(now)).await?;
        Ok(())
    }

    /// Gives back a lease as `info` shows it (holder and term): one this
    /// replica took without knowing it (its answer was cut off).
    pub async fn release_taken(&self, info: &LeaseInfo) -> Result<(), StoreError> {
        let held = doc! {
            field::ID: info.id.as_str(),
            field::HOLDER: info.holder.as_str(),
            field::TERM: info.term.0,
        };
        expire_now(&self.store, held).await
    }

    /// The lease documents of `ids`, or of every account if `ids` is empty.
    pub async fn infos(&self, ids: &[LeaseId]) -> Result<Vec<LeaseInfo>, StoreError> {
        let filter = if ids.is_empty() {
            doc! {}
        } else {
            let ids: Vec<&str> = ids.iter().map(LeaseId::as_str).collect();
            doc! { field::ID: { "$in": ids } }
        };
        let docs: Vec<Document> = self
            .collection()
            .find(filter)
            .sort(doc! { field::ID: 1 })
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().map(lease_info).collect())
    }

    /// Lifts every quota stop of `app_id` for today: the 45009 marks and
    /// the day's call counts of every API it has (not the forced-refresh
    /// counts: WeChat does not say that `clear_quota` resets stable_token's
    /// 20 a day). For right after WeChat's `clear_quota`, which resets the
    /// account's API counts: the daemon's refreshers see it at their next
    /// permit, within a minute. Returns the APIs whose counts were reset.
    pub async fn clear_quota_stops(&self, app_id: &AccountId) -> Result<Vec<Api>, StoreError> {
        let filter = doc! { field::ID: LeaseId::account(app_id).as_str() };
        let Some(lease) = self.collection().find_one(filter.clone()).await? else {
            return Ok(Vec::new());
        };
        let info = lease_info(&lease);
        let mut set = Document::new();
        for api in info.quotas.keys() {
            set.insert(quota::path(*api, quota::field::CALLS), 0_i64);
            set.insert(quota::path(*api, quota::field::EXHAUSTED), false);
        }
        if set.is_empty() {
            return Ok(Vec::new());
        }
        self.collection()
            .update_one(filter, doc! { "$set": set })
            .await?;
        Ok(info.quotas.into_keys().collect())
    }

    /// Announces `instance` as alive until `duration` from now, with how
    /// its Redis mirrors are doing, and returns how many replicas are alive
    /// (this one included).
    pub async fn heartbeat(
        &self,
        instance: &str,
        duration: Duration,
        held: usize,
        mirrors: &[Health],
    ) -> Result<usize, StoreError> {
        // The test suite's stand-in for a MongoDB operation that never ends.
        crate::stall_point!("heartbeat-hang");
        let now = self.store.server_time().await?;
        let instances = self.store.database().collection::<Document>(INSTANCES);
        let mirrors: Vec<Document> = mirrors.iter().map(mirror_document).collect();
        instances
            .update_one(
                doc! { "_id": instance },
                doc! { "$set": {
                    field::EXPIRES_AT: DateTime::from_system_time(now + duration),
                    "leases_held": i64::try_from(held).unwrap_or(i64::MAX),
                    MIRRORS: mirrors,
                } },
            )
            .upsert(true)
            .await?;
        let live = instances
            .count_documents(doc! { field::EXPIRES_AT: { "$gt": DateTime::from_system_time(now) } })
            .await?;
        Ok(usize::try_from(live).unwrap_or(1).max(1))
    }

    /// The Redis mirrors of every live replica, as their heartbeats say:
    /// (replica, mirror), by replica.
    pub async fn mirrors(&self) -> Result<Vec<(String, Health)>, StoreError> {
        let now = self.store.server_time().await?;
        let live: Vec<Document> = self
            .store
            .database()
            .collection::<Document>(INSTANCES)
            .find(doc! { field::EXPIRES_AT: { "$gt": DateTime::from_system_time(now) } })
            .sort(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        let mut all = Vec::new();
        for instance in live {
            let id = instance.get_str("_id").unwrap_or_default().to_owned();
            for mirror in instance.get_array(MIRRORS).into_iter().flatten() {
                if let Some(mirror) = mirror.as_document() {
                    all.push((id.clone(), mirror_health(mirror)));
                }
            }
        }
        Ok(all)
    }

    /// Removes `instance`'s heartbeat (clean shutdown).
    pub async fn leave(&self, instance: &str) -> Result<(), StoreError> {
        self.store
            .database()
            .collection::<Document>(INSTANCES)
            .delete_one(doc! { "_id": instance })
            .await?;
        Ok(())
    }
}

/// The heartbeat's field with the replica's Redis mirrors.
const MIRRORS: &str = "mirrors";

fn mirror_document(h: &Health) -> Document {
    doc! {
        "name": &h.name,
        "up": h.up,
        "errors": i64::try_from(h.errors).unwrap_or(i64::MAX),
        "last_error": h.last_error.clone(),
        "last_write": h.last_write.map(DateTime::from_system_time),
    }
}

fn mirror_health(d: &Document) -> Health {
    Health {
        name: d.get_str("name").unwrap_or_default().to_owned(),
        up: d.get_bool("up").unwrap_or(false),
        errors: u64::try_from(integer(d, "errors").unwrap_or(0)).unwrap_or(0),
        last_error: d.get_str("last_error").ok().map(str::to_owned),
        last_write: d
            .get_datetime("last_write")
            .ok()
            .map(|t| t.to_system_time()),
    }
}

/// Makes the leases matched by `filter` expire now (server clock): given
/// back, so that another replica can take them at once.
async fn expire_now(store: &Store, filter: Document) -> Result<(), StoreError> {
    let now = store.server_time().await?;
    store
        .database()
        .collection::<Document>(LEASES)
        .update_many(
            filter,
            doc! { "$set": { field::EXPIRES_AT: DateTime::from_system_time(now) } },
        )
        .await?;
    Ok(())
}

/// The field counting the generations of `kind` in a lease document.
fn generation_counter(kind: wxtokend_reader::CredentialKind) -> String {
    format!("{}.{}", field::GENERATIONS, kind.as_str())
}

/// Most statements sent in one `update` command (MongoDB allows 100,000,
/// and 16 MB). Kept at 1,000: the driver copies each command into a
/// document tree for its command monitoring (which counts commands and
/// notes refusals), about 2 KB a statement, so 10,000 in one command
/// made a 20 MB spike every renew interval that the allocator kept.
const STATEMENTS_PER_COMMAND: usize = 1_000;

/// Sets `expires_at` on each lease of `held` that is still `holder`'s at
/// its term: one `update` command of one statement per lease, each matched
/// by `_id` (one round trip per 1,000 leases; a single `$or` of thousands
/// of clauses costs the server far more). Returns how many matched (a
/// statement that failed on the server counts as not matched).
async fn update_each(
    store: &Store,
    held: &[(LeaseId, Term)],
    holder: &str,
    expires_at: DateTime,
) -> Result<usize, StoreError> {
    let mut matched = 0;
    for chunk in held.chunks(STATEMENTS_PER_COMMAND) {
        let updates: Vec<Document> = chunk
            .iter()
            .map(|(id, term)| {
                doc! {
                    "q": { field::ID: id.as_str(), field::HOLDER: holder, field::TERM: term.0 },
                    "u": { "$set": { field::EXPIRES_AT: expires_at } },
                }
            })
            .collect();
        let answer = store
            .database()
            .run_command(doc! { "update": LEASES, "updates": updates, "ordered": false })
            .await?;
        matched += usize::try_from(integer(&answer, "n").unwrap_or_default()).unwrap_or(0);
    }
    Ok(matched)
}

/// An integer counter of a lease document (0 when absent).
fn counter(doc: &Document, name: &'static str) -> i64 {
    integer(doc, name).unwrap_or_default()
}

fn lease_info(doc: &Document) -> LeaseInfo {
    let date = |name| doc.get_datetime(name).ok().map(|d| d.to_system_time());
    LeaseInfo {
        id: LeaseId::stored(doc.get_str(field::ID).unwrap_or_default()),
        holder: doc.get_str(field::HOLDER).unwrap_or_default().to_owned(),
        term: Term(counter(doc, field::TERM)),
        expires_at: date(field::EXPIRES_AT).unwrap_or(UNIX_EPOCH),
        quotas: Api::ALL
            .into_iter()
            .filter(|api| {
                doc.get_document(field::QUOTA)
                    .is_ok_and(|q| q.contains_key(api.as_str()))
            })
            .map(|api| (api, ApiQuota::of(doc, api)))
            .collect(),
        last_error: doc.get_str(field::LAST_ERROR).ok().map(str::to_owned),
        last_error_at: date(field::LAST_ERROR_AT),
    }
}

/// The index of `instances`: heartbeats removed a minute after they lapse.
/// (`leases` needs none: it is read and written by `_id`.)
pub fn indexes() -> Vec<IndexSpec> {
    vec![IndexSpec {
        collection: INSTANCES,
        name: "expires_at_ttl",
        keys: &[(field::EXPIRES_AT, 1)],
        unique: false,
        ttl: Some(Duration::from_secs(60)),
    }]
}
