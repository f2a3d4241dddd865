//! Coordination between replicas, in MongoDB: one lease per account decides
//! who may talk to WeChat for it; every call to WeChat needs a permit; every
//! write is fenced by the holder's term.
//!
//! All lease times come from the MongoDB server's clock (`hello.localTime`
//! and `$$NOW`), never from a replica's, so replicas with skewed clocks agree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::ReturnDocument;

use super::{is_duplicate_key, Store, StoreError};
use crate::domain::{quota_day, AccountId, CredentialKind, Generation};

/// The coordination collections.
pub const LEASES: &str = "leases";
pub const INSTANCES: &str = "instances";

/// Field names of lease documents (`_id` is the account id).
pub mod field {
    pub const ID: &str = "_id";
    pub const HOLDER: &str = "holder";
    pub const TERM: &str = "term";
    pub const EXPIRES_AT: &str = "expires_at";
    pub const ACQUIRED_AT: &str = "acquired_at";
    /// Generation counters, one sub-field per credential kind.
    pub const GENERATIONS: &str = "generations";
    /// Beijing-time day (`YYYY-MM-DD`) that `quota_calls` counts.
    pub const QUOTA_DAY: &str = "quota_day";
    pub const QUOTA_CALLS: &str = "quota_calls";
    /// Set when WeChat answered 45009 on `quota_day`.
    pub const QUOTA_EXHAUSTED: &str = "quota_exhausted";
    /// Forced refreshes counted on `quota_day` (stable_token's force_refresh).
    pub const QUOTA_FORCED_CALLS: &str = "quota_forced_calls";
    pub const LAST_FORCED_AT: &str = "last_forced_at";
    pub const LAST_ERROR: &str = "last_error";
    pub const LAST_ERROR_AT: &str = "last_error_at";
}

/// A lease term: increases by one each time the lease changes hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Term(pub i64);

/// Who holds an account's lease, and its counters, for `status` and balancing.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    pub app_id: AccountId,
    pub holder: String,
    pub term: Term,
    pub expires_at: SystemTime,
    pub quota_day: Option<String>,
    pub quota_calls: i64,
    pub quota_exhausted: bool,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
}

/// The answer to "may I call WeChat now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    Granted {
        calls_today: i64,
    },
    /// Another replica holds the lease, or ours is too close to its end.
    NotHolder,
    /// The configured daily ceiling is reached, or WeChat said 45009 today.
    QuotaSpent {
        calls_today: i64,
    },
    /// A forced refresh came too soon after the previous one.
    TooSoon {
        retry_in: Duration,
    },
    /// Today's forced refreshes are spent (`forced_daily_limit`).
    ForcedSpent,
}

/// What a permit asks for.
#[derive(Debug, Clone, Copy)]
pub struct PermitRules {
    /// The lease must have at least this much left on the server's clock.
    pub min_remaining: Duration,
    pub daily_limit: i64,
    /// For forced refreshes: the minimum time since the previous forced one.
    pub forced_min_interval: Option<Duration>,
    /// For forced refreshes: how many are allowed per quota day.
    pub forced_daily_limit: Option<i64>,
}

impl Store {
    fn leases(&self) -> mongodb::Collection<Document> {
        self.db.collection(LEASES)
    }

    /// The server's clock.
    pub async fn server_time(&self) -> Result<SystemTime, StoreError> {
        let hello = self.db.run_command(doc! { "hello": 1 }).await?;
        hello
            .get_datetime("localTime")
            .map(|t| t.to_system_time())
            .map_err(|_| StoreError::Unsupported("hello.localTime is missing"))
    }

    /// Takes the lease of `app_id` if nobody holds it or its holder let it
    /// expire, and returns the new term. `None`: someone else holds it.
    pub async fn try_acquire(
        &self,
        app_id: &AccountId,
        holder: &str,
        duration: Duration,
    ) -> Result<Option<Term>, StoreError> {
        let now = self.server_time().await?;
        let filter = doc! {
            field::ID: app_id.as_str(),
            "$or": [
                { field::TERM: { "$exists": false } },
                { "$expr": { "$lte": [format!("${}", field::EXPIRES_AT), "$$NOW"] } },
            ],
        };
        let update = doc! {
            "$set": {
                field::HOLDER: holder,
                field::EXPIRES_AT: DateTime::from_system_time(now + duration),
                field::ACQUIRED_AT: DateTime::from_system_time(now),
            },
            "$inc": { field::TERM: 1_i64 },
        };
        let result = self
            .leases()
            .find_one_and_update(filter, update)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match result {
            Ok(Some(lease)) => Ok(Some(Term(int(&lease, field::TERM)))),
            Ok(None) => Ok(None),
            // The lease exists and is valid: the upsert collided with it.
            Err(e) if is_duplicate_key(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Extends every lease `holder` holds among `ids`, in one write, and
    /// returns the ids it still holds (the others were taken over). While a
    /// lease keeps its holder its term cannot change, so the holder alone
    /// identifies it.
    pub async fn renew_all(
        &self,
        ids: &[AccountId],
        holder: &str,
        duration: Duration,
    ) -> Result<Vec<AccountId>, StoreError> {
        use futures_util::TryStreamExt;
        let now = self.server_time().await?;
        let ids: Vec<&str> = ids.iter().map(AccountId::as_str).collect();
        let filter = doc! { field::ID: { "$in": &ids }, field::HOLDER: holder };
        let result = self
            .leases()
            .update_many(
                filter.clone(),
                doc! { "$set": { field::EXPIRES_AT: DateTime::from_system_time(now + duration) } },
            )
            .await?;
        if result.matched_count as usize == ids.len() {
            return Ok(ids.into_iter().map(AccountId::new).collect());
        }
        let still: Vec<Document> = self
            .leases()
            .find(filter)
            .projection(doc! { field::ID: 1 })
            .await?
            .try_collect()
            .await?;
        Ok(still
            .iter()
            .filter_map(|d| d.get_str(field::ID).ok().map(AccountId::new))
            .collect())
    }

    /// Leases of `ids` that expired before `before` (server clock): the
    /// accounts nobody refreshes.
    pub async fn expired_leases(
        &self,
        ids: &[AccountId],
        before: SystemTime,
    ) -> Result<Vec<AccountId>, StoreError> {
        use futures_util::TryStreamExt;
        let ids: Vec<&str> = ids.iter().map(AccountId::as_str).collect();
        let docs: Vec<Document> = self
            .leases()
            .find(doc! {
                field::ID: { "$in": ids },
                field::EXPIRES_AT: { "$lte": DateTime::from_system_time(before) },
            })
            .projection(doc! { field::ID: 1 })
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .iter()
            .filter_map(|d| d.get_str(field::ID).ok().map(AccountId::new))
            .collect())
    }

    /// Gives a lease up at once, so another replica can take it. It
    /// expires *now*, not in the past: replicas below their share take it
    /// first, and only if none does within a renew interval does it count as
    /// an orphan that anyone takes.
    pub async fn release(
        &self,
        app_id: &AccountId,
        holder: &str,
        term: Term,
    ) -> Result<(), StoreError> {
        let now = self.server_time().await?;
        self.leases()
            .update_one(
                held_filter(app_id, holder, term),
                doc! { "$set": { field::EXPIRES_AT: DateTime::from_system_time(now) } },
            )
            .await?;
        Ok(())
    }

    /// Gives up every lease `holder` holds among `ids`, in one write (clean
    /// shutdown).
    pub async fn release_all(&self, ids: &[AccountId], holder: &str) -> Result<(), StoreError> {
        let now = self.server_time().await?;
        let ids: Vec<&str> = ids.iter().map(AccountId::as_str).collect();
        self.leases()
            .update_many(
                doc! { field::ID: { "$in": ids }, field::HOLDER: holder },
                doc! { "$set": { field::EXPIRES_AT: DateTime::from_system_time(now) } },
            )
            .await?;
        Ok(())
    }

    /// The lease documents of `ids`, or of every account if `ids` is empty.
    pub async fn lease_infos(&self, ids: &[AccountId]) -> Result<Vec<LeaseInfo>, StoreError> {
        use futures_util::TryStreamExt;
        let filter = if ids.is_empty() {
            doc! {}
        } else {
            let ids: Vec<&str> = ids.iter().map(AccountId::as_str).collect();
            doc! { field::ID: { "$in": ids } }
        };
        let docs: Vec<Document> = self
            .leases()
            .find(filter)
            .sort(doc! { field::ID: 1 })
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().map(lease_info).collect())
    }

    /// Asks the server, atomically, whether this holder may call WeChat now:
    /// it must hold the current term with enough time left, and be under the
    /// daily ceiling. A granted permit counts one call for today.
    pub async fn permit(
        &self,
        app_id: &AccountId,
        holder: &str,
        term: Term,
        rules: PermitRules,
    ) -> Result<Permit, StoreError> {
        let now = self.server_time().await?;
        let today = quota_day(now);
        self.start_quota_day(app_id, holder, term, &today).await?;
        let mut filter = held_filter(app_id, holder, term);
        filter.insert(
            field::EXPIRES_AT,
            doc! { "$gt": DateTime::from_system_time(now + rules.min_remaining) },
        );
        filter.insert(field::QUOTA_EXHAUSTED, doc! { "$ne": true });
        filter.insert(field::QUOTA_CALLS, doc! { "$lt": rules.daily_limit });
        let mut set = Document::new();
        if let Some(interval) = rules.forced_min_interval {
            filter.insert(
                "$or",
                vec![
                    doc! { field::LAST_FORCED_AT: { "$exists": false } },
                    doc! { field::LAST_FORCED_AT: { "$lte": DateTime::from_system_time(now - interval) } },
                ],
            );
            set.insert(field::LAST_FORCED_AT, DateTime::from_system_time(now));
        }
        let mut update = doc! { "$inc": { field::QUOTA_CALLS: 1_i64 } };
        if let Some(limit) = rules.forced_daily_limit {
            // `$not $gte` also matches a lease written before the counter existed.
            filter.insert(
                field::QUOTA_FORCED_CALLS,
                doc! { "$not": { "$gte": limit } },
            );
            update.insert(
                "$inc",
                doc! { field::QUOTA_CALLS: 1_i64, field::QUOTA_FORCED_CALLS: 1_i64 },
            );
        }
        if !set.is_empty() {
            update.insert("$set", set);
        }
        let granted = self
            .leases()
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await?;
        if let Some(lease) = granted {
            return Ok(Permit::Granted {
                calls_today: int(&lease, field::QUOTA_CALLS),
            });
        }
        self.explain_refusal(app_id, holder, term, now, rules).await
    }

    /// Resets the day's counters when the quota day has changed.
    async fn start_quota_day(
        &self,
        app_id: &AccountId,
        holder: &str,
        term: Term,
        today: &str,
    ) -> Result<(), StoreError> {
        let mut filter = held_filter(app_id, holder, term);
        filter.insert(field::QUOTA_DAY, doc! { "$ne": today });
        self.leases()
            .update_one(
                filter,
                doc! { "$set": {
                    field::QUOTA_DAY: today,
                    field::QUOTA_CALLS: 0_i64,
                    field::QUOTA_FORCED_CALLS: 0_i64,
                    field::QUOTA_EXHAUSTED: false,
                } },
            )
            .await?;
        Ok(())
    }

    async fn explain_refusal(
        &self,
        app_id: &AccountId,
        holder: &str,
        term: Term,
        now: SystemTime,
        rules: PermitRules,
    ) -> Result<Permit, StoreError> {
        let Some(lease) = self
            .leases()
            .find_one(held_filter(app_id, holder, term))
            .await?
        else {
            return Ok(Permit::NotHolder);
        };
        let info = lease_info(&lease);
        let calls_today = info.quota_calls;
        if info.quota_exhausted || calls_today >= rules.daily_limit {
            return Ok(Permit::QuotaSpent { calls_today });
        }
        if rules
            .forced_daily_limit
            .is_some_and(|limit| int(&lease, field::QUOTA_FORCED_CALLS) >= limit)
        {
            return Ok(Permit::ForcedSpent);
        }
        if let (Some(interval), Ok(last)) = (
            rules.forced_min_interval,
            lease.get_datetime(field::LAST_FORCED_AT),
        ) {
            let next = last.to_system_time() + interval;
            if next > now {
                return Ok(Permit::TooSoon {
                    retry_in: next.duration_since(now).unwrap_or_default(),
                });
            }
        }
        Ok(Permit::NotHolder)
    }

    /// Records WeChat's 45009: no permit for this account until the quota day ends.
    pub async fn mark_quota_exhausted(
        &self,
        app_id: &AccountId,
        holder: &str,
        term: Term,
    ) -> Result<(), StoreError> {
        self.leases()
            .update_one(
                held_filter(app_id, holder, term),
                doc! { "$set": { field::QUOTA_EXHAUSTED: true } },
            )
            .await?;
        Ok(())
    }

    /// Records (or with `None`, clears) the account's last refresh error for
    /// `status`. The message must hold no secret (FetchError never does).
    pub async fn record_error(
        &self,
        app_id: &AccountId,
        holder: &str,
        term: Term,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        let update = match message {
            Some(message) => doc! { "$set": {
                field::LAST_ERROR: message,
                field::LAST_ERROR_AT: DateTime::now(),
            } },
            None => doc! { "$unset": { field::LAST_ERROR: "", field::LAST_ERROR_AT: "" } },
        };
        self.leases()
            .update_one(held_filter(app_id, holder, term), update)
            .await?;
        Ok(())
    }

    /// Takes the next generation number for `kind`, only if `holder` still
    /// holds `term` (expired or not: nobody else can have written since).
    /// `None`: the lease moved on, the caller must not write.
    pub(super) async fn reserve_generation(
        &self,
        app_id: &AccountId,
        kind: CredentialKind,
        holder: &str,
        term: Term,
    ) -> Result<Option<Generation>, StoreError> {
        let counter = format!("{}.{}", field::GENERATIONS, kind.as_str());
        let lease = self
            .leases()
            .find_one_and_update(
                held_filter(app_id, holder, term),
                doc! { "$inc": { counter.as_str(): 1_i64 } },
            )
            .return_document(ReturnDocument::After)
            .await?;
        Ok(lease.map(|l| {
            Generation(
                l.get_document(field::GENERATIONS)
                    .map(|g| int(g, kind.as_str()))
                    .unwrap_or_default(),
            )
        }))
    }

    /// Makes sure the generation counter is at least `generation`, e.g. the
    /// newest stored one (history written before leases, or a reset lease).
    pub async fn raise_generation_floor(
        &self,
        app_id: &AccountId,
        kind: CredentialKind,
        generation: Generation,
    ) -> Result<(), StoreError> {
        let counter = format!("{}.{}", field::GENERATIONS, kind.as_str());
        self.leases()
            .update_one(
                doc! { field::ID: app_id.as_str() },
                doc! { "$max": { counter.as_str(): generation.0 } },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Announces this replica as alive until `duration` from now and returns
    /// how many replicas are alive (this one included).
    pub async fn heartbeat(
        &self,
        instance: &str,
        duration: Duration,
        held: usize,
    ) -> Result<usize, StoreError> {
        let now = self.server_time().await?;
        let instances = self.db.collection::<Document>(INSTANCES);
        instances
            .update_one(
                doc! { "_id": instance },
                doc! { "$set": {
                    field::EXPIRES_AT: DateTime::from_system_time(now + duration),
                    "leases_held": i64::try_from(held).unwrap_or(i64::MAX),
                } },
            )
            .upsert(true)
            .await?;
        let live = instances
            .count_documents(doc! { field::EXPIRES_AT: { "$gt": DateTime::from_system_time(now) } })
            .await?;
        Ok(usize::try_from(live).unwrap_or(1).max(1))
    }

    /// Removes this replica's heartbeat (clean shutdown).
    pub async fn leave(&self, instance: &str) -> Result<(), StoreError> {
        self.db
            .collection::<Document>(INSTANCES)
            .delete_one(doc! { "_id": instance })
            .await?;
        Ok(())
    }
}

fn held_filter(app_id: &AccountId, holder: &str, term: Term) -> Document {
    doc! { field::ID: app_id.as_str(), field::HOLDER: holder, field::TERM: term.0 }
}

fn int(doc: &Document, name: &str) -> i64 {
    match doc.get(name) {
        Some(mongodb::bson::Bson::Int64(v)) => *v,
        Some(mongodb::bson::Bson::Int32(v)) => i64::from(*v),
        _ => 0,
    }
}

fn lease_info(doc: &Document) -> LeaseInfo {
    let date = |name| doc.get_datetime(name).ok().map(|d| d.to_system_time());
    LeaseInfo {
        app_id: AccountId::new(doc.get_str(field::ID).unwrap_or_default()),
        holder: doc.get_str(field::HOLDER).unwrap_or_default().to_owned(),
        term: Term(int(doc, field::TERM)),
        expires_at: date(field::EXPIRES_AT).unwrap_or(UNIX_EPOCH),
        quota_day: doc.get_str(field::QUOTA_DAY).ok().map(str::to_owned),
        quota_calls: int(doc, field::QUOTA_CALLS),
        quota_exhausted: doc.get_bool(field::QUOTA_EXHAUSTED).unwrap_or(false),
        last_error: doc.get_str(field::LAST_ERROR).ok().map(str::to_owned),
        last_error_at: date(field::LAST_ERROR_AT),
    }
}
