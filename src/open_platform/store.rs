//! The platform's state in MongoDB. So far: `component_verify_tickets`,
//! one document per verify ticket received (append-only, so concurrent
//! receivers, replicas and an external writer never overwrite each other).

use std::time::SystemTime;

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
}

/// One push per (component, `CreateTime`): the same push re-delivered, or
/// received by two replicas, is a duplicate key, that is already stored.
pub const TICKET_INDEX: &str = "component_appid_1_create_time_-1";

/// The indexes of the platform's collections (`authorizer_secrets` has
/// none beyond `_id`).
pub fn indexes() -> Vec<IndexSpec> {
    let mut indexes = vec![IndexSpec {
        collection: COMPONENT_VERIFY_TICKETS,
        name: TICKET_INDEX,
        keys: &[(field::COMPONENT_APPID, 1), (field::CREATE_TIME, -1)],
        unique: true,
        ttl: None,
    }];
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
    pub async fn insert(
        &self,
        component_appid: &str,
        ticket: &SecretString,
        create_time: SystemTime,
        received_by: &str,
    ) -> Result<Stored, StoreError> {
        let document = doc! {
            field::COMPONENT_APPID: component_appid,
            field::TICKET: ticket.expose_secret(),
            field::CREATE_TIME: DateTime::from_system_time(create_time),
            field::RECEIVED_AT: DateTime::from_system_time(self.store.clock().now()),
            field::RECEIVED_BY: received_by,
        };
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
        let options = FindOneOptions::builder()
            .sort(doc! { field::CREATE_TIME: -1 })
            .build();
        let found = self
            .collection()
            .find_one(doc! {
                field::COMPONENT_APPID: component_appid,
                field::TICKET: { "$type": "string" },
                field::CREATE_TIME: { "$type": "date" },
            })
            .with_options(options)
            .await?;
        Ok(found.and_then(|d| parse(&d)))
    }
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
    })
}
