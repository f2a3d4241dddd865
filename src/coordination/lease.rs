//! [`Lease`]: the right to refresh one account, as a value. Only a replica
//! that took the lease has one, and every use of the right is a method here:
//! a permit before each WeChat call, the fenced write of what it fetched,
//! notes for `status`, and giving the lease back. Each method's filter names
//! the holder and the term, so a lease that moved on does nothing.

use std::sync::Arc;
use std::time::SystemTime;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::ReturnDocument;
use mongodb::Collection;
use secrecy::ExposeSecret;
use wxtokend_reader::document::to_document;
use wxtokend_reader::{Credential, CredentialKind, Generation, Owner, RefreshReason};

use super::permit::{self, Permit, PermitRules};
use super::quota;
use super::{counter, expire_now, field, generation_counter, LeaseId, Term, LEASES};
use crate::store::{is_duplicate_key, Store, StoreError};
use crate::wechat::{Api, FetchedCredential};

/// How many times an insert recomputes its generation after losing a race.
const INSERT_ATTEMPTS: usize = 3;

/// A lease this replica holds on one account, at one term. Clones share the
/// right (one per credential kind of the account); it ends when the lease
/// moves on, whoever still holds a clone.
#[derive(Debug, Clone)]
pub struct Lease {
    store: Store,
    id: LeaseId,
    /// Whose credentials it writes.
    owner: Owner,
    holder: Arc<str>,
    term: Term,
}

/// What the writer knows of the newest stored credential of a kind, to
/// recognise WeChat answering it again without reading it back.
#[derive(Debug, Clone, Copy)]
pub enum Newest<'a> {
    /// Read it from MongoDB first: after a write that failed (its answer,
    /// not the write, may have been lost), or when nothing is known.
    Unknown,
    /// What this holder read or wrote last (only the holder writes):
    /// `None` if nothing is stored.
    Known(Option<Stored<'a>>),
}

/// A stored credential, as its writer knows it.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub generation: Generation,
    pub expires_at: SystemTime,
    pub value: &'a secrecy::SecretString,
}

/// The outcome of [`Lease::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored as this generation.
    Stored(Generation),
    /// WeChat answered with the value already stored: nothing was written,
    /// and the stored expiry stands (a repeat never extends it).
    Repeat {
        generation: Generation,
        expires_at: SystemTime,
    },
    /// The lease moved to another holder or term: nothing was written.
    Fenced,
}

impl Lease {
    pub(super) fn new(
        store: Store,
        id: LeaseId,
        owner: Owner,
        holder: Arc<str>,
        term: Term,
    ) -> Self {
        Self {
            store,
            id,
            owner,
            holder,
            term,
        }
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn id(&self) -> &LeaseId {
        &self.id
    }

    /// Whose credentials it writes.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    fn leases(&self) -> Collection<Document> {
        self.store.database().collection(LEASES)
    }

    /// The filter matching this lease only while it is ours at this term.
    fn held(&self) -> Document {
        doc! {
            field::ID: self.id.as_str(),
            field::HOLDER: self.holder.as_ref(),
            field::TERM: self.term.0,
        }
    }

    /// Asks the server, atomically, whether this holder may call WeChat now
    /// (see [`PermitRules`]). A granted permit counts one call of the
    /// rules' API for today.
    pub async fn permit(&self, rules: PermitRules) -> Result<Permit, StoreError> {
        // The test suite's stand-in for an operation that never ends.
        crate::stall_point!("permit-hang");
        // The coordinator reads the server's time every renew interval; an
        // older reading (the process was paused, the host suspended) is
        // renewed first, so that the lease's end is judged by the server.
        let now = if self
            .store
            .clock()
            .age()
            .is_none_or(|age| age > rules.clock_max_age)
        {
            self.store.server_time().await?
        } else {
            self.store.clock().now()
        };
        permit::ask(&self.leases(), self.held(), now, rules).await
    }

    /// Appends a freshly fetched credential as the next generation, if this
    /// lease is still ours. The generation comes from the lease's counter,
    /// so a paused former holder that resumes cannot write at all, and a
    /// newer holder always writes a higher generation; the unique index is
    /// the last line of defence. A value WeChat answered again is not
    /// written twice: compared with `newest` as the caller knows it, or as
    /// read back (after a failed attempt, which may have landed). Two round
    /// trips when `newest` is known: the reservation and the insert.
    pub async fn insert(
        &self,
        kind: CredentialKind,
        fetched: &FetchedCredential,
        reason: RefreshReason,
        newest: Newest<'_>,
    ) -> Result<Inserted, StoreError> {
        let credentials = self.store.credentials();
        let mut known = newest;
        for _ in 0..INSERT_ATTEMPTS {
            let repeat = match known {
                Newest::Known(stored) => stored
                    .filter(|s| s.value.expose_secret() == fetched.value.expose_secret())
                    .map(|s| Inserted::Repeat {
                        generation: s.generation,
                        expires_at: s.expires_at,
                    }),
                Newest::Unknown => self.stored_repeat(kind, fetched).await?,
            };
            if let Some(repeat) = repeat {
                return Ok(repeat);
            }
            let Some(generation) = self.reserve_generation(kind).await? else {
                return Ok(Inserted::Fenced);
            };
            // A generation other than the one after what the caller knows:
            // someone wrote meanwhile (a former holder's late insert), so
            // read what is stored before taking this for a new value.
            if let Newest::Known(stored) = known {
                let next = stored.map_or(1, |s| s.generation.0 + 1);
                if generation.0 != next {
                    if let Some(repeat) = self.stored_repeat(kind, fetched).await? {
                        return Ok(repeat);
                    }
                }
            }
            let document = to_document(&self.credential(kind, fetched, reason, generation));
            match credentials.collection(kind).insert_one(document).await {
                Ok(_) => {
                    // The test suite's stand-in for an insert that lands
                    // but whose answer never comes back.
                    crate::stall_point!("insert-answer-lost");
                    return Ok(Inserted::Stored(generation));
                }
                // The counter was behind the stored history: catch it up,
                // and read what is stored from now on.
                Err(e) if is_duplicate_key(&e) => {
                    known = Newest::Unknown;
                    let newest = credentials
                        .scan_newest_owned(kind, &self.owner, None)
                        .await?;
                    if let Some(top) = newest.top_generation {
                        self.raise_generation_floor(kind, top).await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended {
            kind,
            owner: self.owner.clone(),
        })
    }

    /// The newest stored `kind` credential as a [`Inserted::Repeat`], if
    /// it holds the value WeChat answered with (read back from MongoDB).
    async fn stored_repeat(
        &self,
        kind: CredentialKind,
        fetched: &FetchedCredential,
    ) -> Result<Option<Inserted>, StoreError> {
        let newest = self
            .store
            .credentials()
            .scan_newest_owned(kind, &self.owner, None)
            .await?;
        Ok(newest
            .credential
            .filter(|c| c.secret() == fetched.value.expose_secret())
            .map(|c| Inserted::Repeat {
                generation: c.generation,
                expires_at: c.expires_at,
            }))
    }

    fn credential(
        &self,
        kind: CredentialKind,
        fetched: &FetchedCredential,
        reason: RefreshReason,
        generation: Generation,
    ) -> Credential {
        Credential {
            app_id: self.owner.app_id.clone(),
            component_appid: self.owner.component_appid.clone(),
            kind,
            value: fetched.value.clone(),
            expires_in: fetched.expires_in,
            fetched_at: fetched.fetched_at,
            expires_at: fetched.expires_at(),
            generation,
            reason: Some(reason),
            fetched_by: self.holder.to_string(),
        }
    }

    /// Takes the next generation number for `kind`, only if the lease is
    /// still ours at this term (expired or not: nobody else can have written
    /// since). `None`: the lease moved on, the caller must not write.
    async fn reserve_generation(
        &self,
        kind: CredentialKind,
    ) -> Result<Option<Generation>, StoreError> {
        let counter_field = generation_counter(kind);
        let lease = self
            .leases()
            .find_one_and_update(
                self.held(),
                doc! { "$inc": { counter_field.as_str(): 1_i64 } },
            )
            .return_document(ReturnDocument::After)
            .await?;
        Ok(lease.map(|l| {
            Generation(
                l.get_document(field::GENERATIONS)
                    .map(|g| counter(g, kind.as_str()))
                    .unwrap_or_default(),
            )
        }))
    }

    /// Makes sure the generation counter is at least `generation`, e.g. the
    /// newest stored one (history written before leases, or a reset lease).
    /// Not fenced, on purpose: `$max` only ever raises the counter, which
    /// cannot hurt whoever holds the lease.
    pub async fn raise_generation_floor(
        &self,
        kind: CredentialKind,
        generation: Generation,
    ) -> Result<(), StoreError> {
        let counter_field = generation_counter(kind);
        self.leases()
            .update_one(
                doc! { field::ID: self.id.as_str() },
                doc! { "$max": { counter_field.as_str(): generation.0 } },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Records WeChat's 45009 from `api`: no permit for that API of this
    /// account until the quota day ends. Other APIs go on.
    pub async fn mark_quota_exhausted(&self, api: Api) -> Result<(), StoreError> {
        self.leases()
            .update_one(
                self.held(),
                doc! { "$set": { quota::path(api, quota::field::EXHAUSTED): true } },
            )
            .await?;
        Ok(())
    }

    /// Records (or with `None`, clears) the account's last refresh error for
    /// `status`. The message must hold no secret (FetchError never does).
    pub async fn note_error(&self, message: Option<&str>) -> Result<(), StoreError> {
        let update = match message {
            Some(message) => doc! { "$set": {
                field::LAST_ERROR: message,
                field::LAST_ERROR_AT: DateTime::from_system_time(self.store.clock().now()),
            } },
            None => doc! { "$unset": { field::LAST_ERROR: "", field::LAST_ERROR_AT: "" } },
        };
        self.leases().update_one(self.held(), update).await?;
        Ok(())
    }

    /// Gives the lease up at once, so another replica can take it. It
    /// expires *now*, not in the past: replicas below their share take it
    /// first, and only if none does within a renew interval does it count as
    /// an orphan that anyone takes.
    pub async fn release(self) -> Result<(), StoreError> {
        expire_now(&self.store, self.held()).await
    }
}
