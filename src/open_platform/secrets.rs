//! `authorizer_secrets`: each authorizer's refresh token and pending
//! authorization code, sealed by the [`SecretBox`] (nothing in clear; no
//! reader role may read the collection). One document per (component,
//! authorizer), `_id` as in `authorizers`.
//!
//! The refresh token is written by compare-and-swap on `version` (+1 at
//! every write): a holder that read version `n` before calling WeChat
//! stores what it got only if nobody wrote since, so a value fetched with
//! an old token never overwrites one a re-authorization or discovery wrote
//! meanwhile. A holder's write also records its lease's term: a value a
//! former holder wrote under an older term after the current holder read
//! its version was issued by WeChat before the current holder's call (a
//! holder calls only under a live lease), so the current holder's value
//! replaces it (its compare-and-swap alone would lose, and keep the value
//! WeChat rotated away). The code is written by the callback receiver, guarded by the
//! event's `CreateTime` like the directory. The role has no `remove`:
//! forgetting is `$unset`.

use std::time::SystemTime;

use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, DateTime, Document};
use mongodb::options::ReturnDocument;
use mongodb::Collection;
use secrecy::SecretString;
use wxtokend_reader::AccountId;

use super::directory::{document_id, upsert_unless_newer, EventOutcome};
use super::secretbox::{Field, KeyId, SealError, Sealed, SecretBox, Unsealable, NONCE_LEN};
use crate::coordination::Term;
use crate::store::{is_duplicate_key, Store, StoreError};

/// The collection.
pub const AUTHORIZER_SECRETS: &str = "authorizer_secrets";

/// Field names of an `authorizer_secrets` document: the one place they are
/// spelled.
pub mod field {
    pub const ID: &str = "_id";
    pub const COMPONENT_APPID: &str = "component_appid";
    pub const APP_ID: &str = "app_id";
    /// int64, +1 at every write (or removal) of the refresh token.
    pub const VERSION: &str = "version";
    /// The newest event applied (`set_code`, `forget`): older ones change
    /// nothing.
    pub const EVENT_TIME: &str = "event_time";
    /// Sealed: `{key_id, nonce, ciphertext}`.
    pub const REFRESH_TOKEN: &str = "refresh_token";
    /// Sealed like the refresh token, with `expires_at` and `event_time`.
    pub const CODE: &str = "code";
    pub const UPDATED_AT: &str = "updated_at";
    /// The instance that wrote last.
    pub const UPDATED_BY: &str = "updated_by";
    /// What gave the stored refresh token ([`super::Source`]).
    pub const SOURCE: &str = "source";
    /// The term of the authorizer's lease its holder wrote the refresh
    /// token under; absent when discovery or the receiver wrote last.
    pub const LEASE_TERM: &str = "lease_term";

    /// Inside a sealed sub-document.
    pub const KEY_ID: &str = "key_id";
    pub const NONCE: &str = "nonce";
    pub const CIPHERTEXT: &str = "ciphertext";
    /// Inside `code`.
    pub const EXPIRES_AT: &str = "expires_at";
}

/// The version of an authorizer's refresh token: what a compare-and-swap
/// expects. [`Version::NONE`] when none was ever written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub i64);

impl Version {
    pub const NONE: Version = Version(0);
}

/// What gave a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `api_query_auth` (an authorization code exchanged).
    QueryAuth,
    /// `api_authorizer_token` answered another one.
    AuthorizerToken,
    /// `api_get_authorizer_list` (discovery).
    AuthorizerList,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueryAuth => "query_auth",
            Self::AuthorizerToken => "authorizer_token",
            Self::AuthorizerList => "authorizer_list",
        }
    }
}

/// A pending authorization code. `Debug` hides the code.
#[derive(Debug)]
pub struct PendingCode {
    pub code: Result<SecretString, Unsealable>,
    pub expires_at: SystemTime,
    /// Its event's `CreateTime`: names it for [`Secrets::clear_code`].
    pub event_time: SystemTime,
}

/// An authorizer's secrets, opened. A value that does not open (a lost
/// key, a changed document) is there as its [`Unsealable`] reason.
#[derive(Debug)]
pub struct AuthorizerSecrets {
    pub version: Version,
    pub refresh_token: Option<Result<SecretString, Unsealable>>,
    pub code: Option<PendingCode>,
}

/// What a compare-and-swap of the refresh token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Written; the token now has this version.
    Won(Version),
    /// Someone wrote since the expected version: theirs stays.
    Lost,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot seal the secret: {0}")]
    Seal(#[from] SealError),
}

/// `authorizer_secrets`.
#[derive(Debug, Clone)]
pub struct Secrets {
    store: Store,
    secret_box: SecretBox,
    instance_id: String,
}

impl Secrets {
    /// `instance_id` is written as `updated_by`.
    pub fn new(store: Store, secret_box: SecretBox, instance_id: impl Into<String>) -> Self {
        Self {
            store,
            secret_box,
            instance_id: instance_id.into(),
        }
    }

    fn collection(&self) -> Collection<Document> {
        self.store.database().collection(AUTHORIZER_SECRETS)
    }

    fn now(&self) -> DateTime {
        DateTime::from_system_time(self.store.clock().now())
    }

    /// The fields every write sets.
    fn stamp(&self, component: &AccountId, authorizer: &AccountId) -> Document {
        doc! {
            field::COMPONENT_APPID: component.as_str(),
            field::APP_ID: authorizer.as_str(),
            field::UPDATED_AT: self.now(),
            field::UPDATED_BY: &self.instance_id,
        }
    }

    /// The `$set` of a new refresh token: sealed, stamped, with what gave
    /// it.
    fn refresh_token_set(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        refresh_token: &SecretString,
        source: Source,
    ) -> Result<Document, SealError> {
        let sealed =
            self.secret_box
                .seal(Field::RefreshToken, component, authorizer, refresh_token)?;
        let mut set = self.stamp(component, authorizer);
        set.insert(field::REFRESH_TOKEN, sealed_document(&sealed));
        set.insert(field::SOURCE, source.as_str());
        Ok(set)
    }

    /// The authorizer's refresh token and pending code, opened, and the
    /// version to expect when replacing the token.
    pub async fn read(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
    ) -> Result<AuthorizerSecrets, StoreError> {
        let found = self
            .collection()
            .find_one(doc! { field::ID: document_id(component, authorizer) })
            .await?;
        let Some(document) = found else {
            return Ok(AuthorizerSecrets {
                version: Version::NONE,
                refresh_token: None,
                code: None,
            });
        };
        let open = |field: Field, sealed: &Document| {
            sealed_of(sealed)
                .and_then(|sealed| self.secret_box.open(field, component, authorizer, &sealed))
        };
        let refresh_token = sub_document(&document, field::REFRESH_TOKEN)
            .map(|sealed| open(Field::RefreshToken, &sealed));
        let code = sub_document(&document, field::CODE).map(|sealed| {
            let date = |name| {
                sealed
                    .get_datetime(name)
                    .map_or(SystemTime::UNIX_EPOCH, |t| t.to_system_time())
            };
            PendingCode {
                code: open(Field::Code, &sealed),
                expires_at: date(field::EXPIRES_AT),
                event_time: date(field::EVENT_TIME),
            }
        });
        Ok(AuthorizerSecrets {
            version: Version(version_of(&document)),
            refresh_token,
            code,
        })
    }

    /// Seals `refresh_token` and stores it if the stored version is still
    /// `expected` (the one read before the call that returned it); the
    /// version goes up by one. [`Version::NONE`] creates the document.
    pub async fn replace_refresh_token(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        expected: Version,
        refresh_token: &SecretString,
        source: Source,
        term: Option<Term>,
    ) -> Result<Cas, SecretsError> {
        let mut set = self.refresh_token_set(component, authorizer, refresh_token, source)?;
        let mut update = doc! { "$inc": { field::VERSION: 1_i64 } };
        let id = document_id(component, authorizer);
        let filter = match term {
            Some(term) => {
                set.insert(field::LEASE_TERM, term.0);
                // Ours, or one a former holder wrote since, under an older
                // term (never discovery's or the receiver's: no term).
                doc! {
                    field::ID: id,
                    "$or": [
                        { field::VERSION: expected.0 },
                        {
                            field::VERSION: { "$gt": expected.0 },
                            field::LEASE_TERM: { "$lt": term.0 },
                        },
                    ],
                }
            }
            None => {
                update.insert("$unset", doc! { field::LEASE_TERM: "" });
                doc! { field::ID: id, field::VERSION: expected.0 }
            }
        };
        update.insert("$set", set);
        let written = self
            .collection()
            .find_one_and_update(filter, update)
            .projection(doc! { field::VERSION: 1 })
            .return_document(ReturnDocument::After)
            // Only the first writer creates the document; a later one that
            // finds no document at its version lost to whoever wrote.
            .upsert(expected == Version::NONE)
            .await;
        match written {
            Ok(Some(after)) => Ok(Cas::Won(Version(version_of(&after)))),
            Ok(None) => Ok(Cas::Lost),
            Err(e) if is_duplicate_key(&e) => Ok(Cas::Lost),
            Err(e) => Err(StoreError::from(e).into()),
        }
    }

    /// Stores the authorization code of an `authorized` or
    /// `updateauthorized` event of `event_time`, sealed, unless an event as
    /// new or newer was applied to these secrets already.
    pub async fn set_code(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        code: &SecretString,
        expires_at: SystemTime,
        event_time: SystemTime,
    ) -> Result<EventOutcome, SecretsError> {
        let sealed = self
            .secret_box
            .seal(Field::Code, component, authorizer, code)?;
        let mut pending = sealed_document(&sealed);
        pending.insert(field::EXPIRES_AT, DateTime::from_system_time(expires_at));
        pending.insert(field::EVENT_TIME, DateTime::from_system_time(event_time));
        let mut set = self.stamp(component, authorizer);
        set.insert(field::CODE, pending);
        set.insert(field::EVENT_TIME, DateTime::from_system_time(event_time));
        let update = doc! {
            "$set": set,
            "$setOnInsert": { field::VERSION: Version::NONE.0 },
        };
        let id = document_id(component, authorizer);
        Ok(upsert_unless_newer(
            &self.collection(),
            &id,
            field::EVENT_TIME,
            event_time,
            update.into(),
        )
        .await?)
    }

    /// Removes the pending code of `event_time` (exchanged, or refused by
    /// WeChat), unless a newer code replaced it meanwhile. `false`: it was
    /// not there any more.
    pub async fn clear_code(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        event_time: SystemTime,
    ) -> Result<bool, StoreError> {
        let filter = doc! {
            field::ID: document_id(component, authorizer),
            format!("{}.{}", field::CODE, field::EVENT_TIME): DateTime::from_system_time(event_time),
        };
        let update = doc! {
            "$set": self.stamp(component, authorizer),
            "$unset": { field::CODE: "" },
        };
        let result = self.collection().update_one(filter, update).await?;
        Ok(result.matched_count == 1)
    }

    /// Forgets the refresh token and code of an authorizer that withdrew
    /// its authorization (they are dead at WeChat), and bumps the version
    /// so that a write in flight with the old one loses. With the
    /// `unauthorized` event's `event_time`, nothing changes if a newer
    /// event (a re-authorization's code) was applied already; without one
    /// (WeChat answered 61003), it always applies.
    pub async fn forget(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        event_time: Option<SystemTime>,
    ) -> Result<EventOutcome, StoreError> {
        let mut set = self.stamp(component, authorizer);
        if let Some(t) = event_time {
            set.insert(field::EVENT_TIME, DateTime::from_system_time(t));
        }
        let update = forgetting(set);
        let id = document_id(component, authorizer);
        match event_time {
            Some(t) => {
                upsert_unless_newer(&self.collection(), &id, field::EVENT_TIME, t, update.into())
                    .await
            }
            None => {
                self.collection()
                    .update_one(doc! { field::ID: &id }, update)
                    .await?;
                Ok(EventOutcome::Applied)
            }
        }
    }
}

impl Secrets {
    /// Forgets the refresh token and code after WeChat answered 61003 to a
    /// call sent at `as_of` (MongoDB's clock), unless an event at or after
    /// it was applied meanwhile (a re-authorization that crossed the call).
    /// Unlike an event, it leaves `event_time` as it is: a clock reading is
    /// not WeChat's `CreateTime`, and must not turn a later event away.
    pub async fn forget_as_of(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        as_of: SystemTime,
    ) -> Result<EventOutcome, StoreError> {
        let filter = doc! {
            field::ID: document_id(component, authorizer),
            "$or": super::directory::older_than(field::EVENT_TIME, as_of),
        };
        let update = forgetting(self.stamp(component, authorizer));
        let result = self.collection().update_one(filter, update).await?;
        Ok(if result.matched_count == 1 {
            EventOutcome::Applied
        } else {
            EventOutcome::Superseded
        })
    }

    /// Stores the refresh token an exchange of the code of `event_time`
    /// answered, and clears that code, in one write: the newest refresh
    /// token by definition (an exchange invalidates the earlier ones), so
    /// no version is compared; only a newer authorization's code (its own
    /// exchange to come) turns it away. `false`: it was turned away.
    pub async fn store_exchanged(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        event_time: SystemTime,
        refresh_token: &SecretString,
        term: Term,
    ) -> Result<bool, SecretsError> {
        let mut set =
            self.refresh_token_set(component, authorizer, refresh_token, Source::QueryAuth)?;
        set.insert(field::LEASE_TERM, term.0);
        let filter = doc! {
            field::ID: document_id(component, authorizer),
            format!("{}.{}", field::CODE, field::EVENT_TIME): DateTime::from_system_time(event_time),
        };
        let update = doc! {
            "$set": set,
            "$unset": { field::CODE: "" },
            "$inc": { field::VERSION: 1_i64 },
        };
        let result = self
            .collection()
            .update_one(filter, update)
            .await
            .map_err(StoreError::from)?;
        Ok(result.matched_count == 1)
    }
}

/// The update that forgets an authorizer's secrets (a withdrawal): `set`,
/// the token, code and their source removed, the version bumped so that
/// a write in flight loses. No term is left: no holder's write may take a
/// forgotten token's place.
fn forgetting(set: Document) -> Document {
    doc! {
        "$set": set,
        "$unset": {
            field::REFRESH_TOKEN: "",
            field::CODE: "",
            field::SOURCE: "",
            field::LEASE_TERM: "",
        },
        "$inc": { field::VERSION: 1_i64 },
    }
}

/// The version stored (int64, or an int32 written by hand).
fn version_of(document: &Document) -> i64 {
    match document.get(field::VERSION) {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        _ => 0,
    }
}

fn sub_document(document: &Document, name: &str) -> Option<Document> {
    document.get_document(name).ok().cloned()
}

/// A sealed value as stored.
fn sealed_document(sealed: &Sealed) -> Document {
    let binary = |bytes: &[u8]| Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    };
    doc! {
        field::KEY_ID: sealed.key_id.as_str(),
        field::NONCE: binary(&sealed.nonce),
        field::CIPHERTEXT: binary(&sealed.ciphertext),
    }
}

fn sealed_of(document: &Document) -> Result<Sealed, Unsealable> {
    let key_id = document
        .get_str(field::KEY_ID)
        .map_err(|_| Unsealable::Malformed)?;
    let nonce = document
        .get_binary_generic(field::NONCE)
        .ok()
        .and_then(|n| <[u8; NONCE_LEN]>::try_from(n.as_slice()).ok())
        .ok_or(Unsealable::Malformed)?;
    let ciphertext = document
        .get_binary_generic(field::CIPHERTEXT)
        .map_err(|_| Unsealable::Malformed)?;
    Ok(Sealed {
        key_id: KeyId::new(key_id),
        nonce,
        ciphertext: ciphertext.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::open_platform::secretbox::Key;

    fn secret_box() -> SecretBox {
        SecretBox::new(Key::new([5; 32]).expect("key"), None)
    }

    #[test]
    fn a_sealed_value_reads_back_from_its_document() {
        let (c, a) = (AccountId::new("wxc"), AccountId::new("wxa"));
        let token = SecretString::from("rt-never-shown".to_owned());
        let sealed = secret_box()
            .seal(Field::RefreshToken, &c, &a, &token)
            .expect("sealed");
        let document = sealed_document(&sealed);
        assert_eq!(sealed_of(&document), Ok(sealed));
        assert!(!format!("{document:?}").contains("rt-never-shown"));
    }

    #[test]
    fn a_document_that_is_not_a_sealed_value_is_malformed() {
        let (c, a) = (AccountId::new("wxc"), AccountId::new("wxa"));
        let token = SecretString::from("rt".to_owned());
        let sealed = secret_box()
            .seal(Field::RefreshToken, &c, &a, &token)
            .expect("sealed");
        let good = sealed_document(&sealed);
        let mut short_nonce = good.clone();
        short_nonce.insert(
            field::NONCE,
            Binary {
                subtype: BinarySubtype::Generic,
                bytes: vec![0; 12],
            },
        );
        let mut no_key = good.clone();
        no_key.remove(field::KEY_ID);
        let mut text = good.clone();
        text.insert(field::CIPHERTEXT, "rt");
        for bad in [short_nonce, no_key, text, doc! {}] {
            assert_eq!(sealed_of(&bad), Err(Unsealable::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn versions_stored_by_hand_as_int32_are_read() {
        assert_eq!(version_of(&doc! { "version": 3_i32 }), 3);
        assert_eq!(version_of(&doc! { "version": 4_i64 }), 4);
        assert_eq!(version_of(&doc! {}), 0);
    }
}
