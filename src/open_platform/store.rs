//! The platform's state in MongoDB. So far: `component_verify_tickets`,
//! one document per verify ticket received (append-only, so concurrent
//! receivers, replicas and an external writer never overwrite each other).

use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::FindOneOptions;
use secrecy::{ExposeSecret, SecretString};

use crate::store::{is_duplicate_key, IndexSpec, Store, StoreError};

/// The collection of verify tickets.
pub const COMPONENT_VERIFY_TICKETS: &str = "component_verify_tickets";

/// Field names of a ticket document: the one place they are spelled.
pub mod field {
    pub const COMPONENT_APPID: &str = "component_appid";
    pub const TICKET: &str = "ticket";
    /// WeChat's `CreateTime` of the push.
    pub const CREATE_TIME: &str = "create_time";
    /// MongoDB's clock when it was stored.
    pub const RECEIVED_AT: &str = "received_at";
    /// The instance that stored it (or an external writer's name).
    pub const RECEIVED_BY: &str = "received_by";
    /// Until when it may be used: 12 hours from `CreateTime` (or from
    /// `received_at` if that is earlier); a value pushed again keeps the
    /// expiry it was first stored with.
    pub const EXPIRES_AT: &str = "expires_at";
    /// When `api_component_token` refused it (61005 expired, 61006
    /// invalid): never used again.
    pub const REJECTED_AT: &str = "rejected_at";
}

/// How long WeChat says a verify ticket may be used ("有效期为 12h").
pub const TICKET_LIFE: Duration = Duration::from_secs(12 * 3600);

/// How long a ticket document stays after its expiry (for `status` and
/// post-mortems), then MongoDB removes it.
const KEPT_AFTER_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// One push per (component, `CreateTime`): the same push re-delivered, or
/// received by two replicas, is a duplicate key, that is already stored.
pub const TICKET_INDEX: &str = "component_appid_1_create_time_-1";

/// The indexes of the platform's collections (`authorizer_secrets` has
/// none beyond `_id`).
pub fn indexes() -> Vec<IndexSpec> {
    let mut indexes = vec![
        IndexSpec {
            collection: COMPONENT_VERIFY_TICKETS,
            name: TICKET_INDEX,
            keys: &[(field::COMPONENT_APPID, 1), (field::CREATE_TIME, -1)],
            unique: true,
            ttl: None,
        },
        IndexSpec {
            collection: COMPONENT_VERIFY_TICKETS,
            name: "expires_at_ttl",
            keys: &[(field::EXPIRES_AT, 1)],
            unique: false,
            ttl: Some(KEPT_AFTER_EXPIRY),
        },
    ];
    indexes.extend(super::directory::indexes());
    indexes
}

/// What storing a ticket did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new document.
    New,
    /// This push (component and `CreateTime`) was stored already.
    Already,
}

/// A stored verify ticket. `Debug` hides the ticket.
#[derive(Debug, Clone)]
pub struct StoredTicket {
    pub ticket: SecretString,
    pub create_time: SystemTime,
    pub received_at: SystemTime,
    /// `None` for a document written without one (an external writer
    /// that left it out): such a ticket counts as valid for
    /// [`TICKET_LIFE`] from `create_time`.
    pub expires_at: Option<SystemTime>,
    pub rejected_at: Option<SystemTime>,
}

impl StoredTicket {
    /// Until when it may be used.
    pub fn usable_until(&self) -> SystemTime {
        usable_until(self.expires_at, self.create_time)
    }
}

/// What `status`, `/readyz` and the metrics know of a stored ticket:
/// its dates, never its value (which is not even read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketSeen {
    pub create_time: SystemTime,
    /// MongoDB's clock when it was stored; `None` for an external writer
    /// that left it out.
    pub received_at: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
    pub rejected_at: Option<SystemTime>,
}

impl TicketSeen {
    /// Until when it may be used.
    pub fn usable_until(&self) -> SystemTime {
        usable_until(self.expires_at, self.create_time)
    }

    /// When it was stored; from its CreateTime when an external writer
    /// left `received_at` out.
    pub fn arrived(&self) -> SystemTime {
        self.received_at.unwrap_or(self.create_time)
    }
}

/// `expires_at`, or [`TICKET_LIFE`] from `create_time` without one.
fn usable_until(expires_at: Option<SystemTime>, create_time: SystemTime) -> SystemTime {
    expires_at.unwrap_or(create_time + TICKET_LIFE)
}

/// `component_verify_tickets`.
#[derive(Debug, Clone)]
pub struct Tickets {
    store: Store,
}

impl Tickets {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn collection(&self) -> mongodb::Collection<Document> {
        self.store.database().collection(COMPONENT_VERIFY_TICKETS)
    }

    /// Stores one push, stamped with MongoDB's clock. A duplicate key (the
    /// same push stored before, by this replica or another) is success.
    /// It may be used for [`TICKET_LIFE`] from its `CreateTime` (or from
    /// its arrival, if a wrong clock dated it later), as long as WeChat's
    /// last push of the same value: WeChat pushes its current ticket every
    /// 10 minutes, the same value for a while, so a value still pushed is
    /// still current (were it not, WeChat's 61005 marks it refused and the
    /// next new value is used). A repeat keeps a refusal.
    pub async fn insert(
        &self,
        component_appid: &str,
        ticket: &SecretString,
        create_time: SystemTime,
        received_by: &str,
    ) -> Result<Stored, StoreError> {
        let received_at = self.store.clock().now();
        let fresh = create_time.min(received_at) + TICKET_LIFE;
        let (expires_at, rejected_at) = match self.newest(component_appid).await? {
            // A repeat keeps a refusal.
            Some(newest) if newest.ticket.expose_secret() == ticket.expose_secret() => {
                (fresh, newest.rejected_at)
            }
            _ => (fresh, None),
        };
        let mut document = doc! {
            field::COMPONENT_APPID: component_appid,
            field::TICKET: ticket.expose_secret(),
            field::CREATE_TIME: DateTime::from_system_time(create_time),
            field::RECEIVED_AT: DateTime::from_system_time(received_at),
            field::RECEIVED_BY: received_by,
            field::EXPIRES_AT: DateTime::from_system_time(expires_at),
        };
        if let Some(rejected_at) = rejected_at {
            document.insert(field::REJECTED_AT, DateTime::from_system_time(rejected_at));
        }
        match self.collection().insert_one(document).await {
            Ok(_) => Ok(Stored::New),
            Err(e) if is_duplicate_key(&e) => Ok(Stored::Already),
            Err(e) => Err(e.into()),
        }
    }

    /// The newest ticket of `component_appid` by WeChat's `CreateTime` (a
    /// replayed or late push never wins over a later one); `None` if none
    /// is stored. A document without a string ticket or a date
    /// `create_time` (a broken external writer) is skipped over.
    pub async fn newest(&self, component_appid: &str) -> Result<Option<StoredTicket>, StoreError> {
        let found = self
            .newest_matching(any_filter(component_appid), None)
            .await?;
        Ok(found.and_then(|d| parse(&d)))
    }

    /// The dates of [`Tickets::newest`], without reading its value (for
    /// `status`, which may run as a user allowed to read no ticket, and
    /// the metrics).
    pub async fn newest_seen(
        &self,
        component_appid: &str,
    ) -> Result<Option<TicketSeen>, StoreError> {
        let dates = doc! { field::TICKET: 0 };
        let found = self
            .newest_matching(any_filter(component_appid), Some(dates))
            .await?;
        Ok(found.and_then(|d| parse_seen(&d)))
    }

    /// Whether a ticket usable at `now` (as [`Tickets::newest_usable`]
    /// finds them) was received at or after `since`: what `/readyz` wants
    /// (`open_platform.ticket_fresh_within`). Reads no value.
    pub async fn usable_received_since(
        &self,
        component_appid: &str,
        now: SystemTime,
        since: SystemTime,
    ) -> Result<bool, StoreError> {
        let mut filter = usable_filter(component_appid, now);
        let since = DateTime::from_system_time(since);
        // One stored without `received_at` (an external writer) arrived
        // at its CreateTime, as status and the metrics say.
        filter.insert(
            "$and",
            vec![doc! { "$or": [
                { field::RECEIVED_AT: { "$gte": since } },
                { field::RECEIVED_AT: { "$exists": false }, field::CREATE_TIME: { "$gte": since } },
            ] }],
        );
        let found = self
            .newest_matching(filter, Some(doc! { "_id": 1 }))
            .await?;
        Ok(found.is_some())
    }

    /// The newest ticket of `component_appid` that may be used at `now`:
    /// not expired, not refused by WeChat. WeChat says to go on with the
    /// last usable one when a push is missed.
    pub async fn newest_usable(
        &self,
        component_appid: &str,
        now: SystemTime,
    ) -> Result<Option<StoredTicket>, StoreError> {
        let found = self
            .newest_matching(usable_filter(component_appid, now), None)
            .await?;
        Ok(found.and_then(|d| parse(&d)))
    }

    /// The ticket document matching `filter` with the latest `CreateTime`,
    /// with only the fields `projection` keeps.
    async fn newest_matching(
        &self,
        filter: Document,
        projection: Option<Document>,
    ) -> Result<Option<Document>, StoreError> {
        let options = FindOneOptions::builder()
            .sort(doc! { field::CREATE_TIME: -1 })
            .projection(projection)
            .build();
        Ok(self
            .collection()
            .find_one(filter)
            .with_options(options)
            .await?)
    }

    /// WeChat refused `ticket` (61005 expired, 61006 invalid): every
    /// document of the component holding that value is marked, and none is
    /// used again; with `older_too` (it expired), every ticket pushed
    /// before it too (older ones expired before it). Returns how many were
    /// marked.
    pub async fn reject(
        &self,
        component_appid: &str,
        ticket: &StoredTicket,
        older_too: bool,
    ) -> Result<u64, StoreError> {
        let mut which = vec![doc! { field::TICKET: ticket.ticket.expose_secret() }];
        if older_too {
            which.push(doc! {
                field::CREATE_TIME: { "$lte": DateTime::from_system_time(ticket.create_time) },
            });
        }
        let marked = self
            .collection()
            .update_many(
                doc! {
                    field::COMPONENT_APPID: component_appid,
                    "$or": which,
                    field::REJECTED_AT: { "$exists": false },
                },
                doc! { "$set": {
                    field::REJECTED_AT: DateTime::from_system_time(self.store.clock().now()),
                } },
            )
            .await?;
        Ok(marked.modified_count)
    }
}

/// Every readable ticket of `component_appid` (a string value, a date
/// `create_time`).
fn any_filter(component_appid: &str) -> Document {
    doc! {
        field::COMPONENT_APPID: component_appid,
        field::TICKET: { "$type": "string" },
        field::CREATE_TIME: { "$type": "date" },
    }
}

/// The tickets of `component_appid` that may be used at `now`: not
/// expired, not refused by WeChat.
fn usable_filter(component_appid: &str, now: SystemTime) -> Document {
    let now_date = DateTime::from_system_time(now);
    let oldest_create_time = DateTime::from_system_time(now - TICKET_LIFE);
    doc! {
        field::COMPONENT_APPID: component_appid,
        field::TICKET: { "$type": "string", "$ne": "" },
        field::CREATE_TIME: { "$type": "date", "$gt": oldest_create_time },
        field::REJECTED_AT: { "$exists": false },
        "$or": [
            { field::EXPIRES_AT: { "$gt": now_date } },
            { field::EXPIRES_AT: { "$exists": false } },
        ],
    }
}

fn parse_seen(document: &Document) -> Option<TicketSeen> {
    Some(TicketSeen {
        create_time: date(document, field::CREATE_TIME)?,
        received_at: date(document, field::RECEIVED_AT),
        expires_at: date(document, field::EXPIRES_AT),
        rejected_at: date(document, field::REJECTED_AT),
    })
}

fn parse(document: &Document) -> Option<StoredTicket> {
    Some(StoredTicket {
        ticket: SecretString::from(document.get_str(field::TICKET).ok()?.to_owned()),
        create_time: document
            .get_datetime(field::CREATE_TIME)
            .ok()?
            .to_system_time(),
        received_at: document
            .get_datetime(field::RECEIVED_AT)
            .map_or(SystemTime::UNIX_EPOCH, |t| t.to_system_time()),
        expires_at: date(document, field::EXPIRES_AT),
        rejected_at: date(document, field::REJECTED_AT),
    })
}

fn date(document: &Document, name: &str) -> Option<SystemTime> {
    document.get_datetime(name).ok().map(|t| t.to_system_time())
}
