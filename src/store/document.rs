//! The shape of a credential document, in one place. Business services in
//! other languages read these names: change them only with a migration.

use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, Bson, DateTime, Document};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{
    AccountId, Credential, CredentialKind, FetchedCredential, Generation, RefreshReason,
};

/// Field names of credential documents. The value field is named by
/// [`CredentialKind::value_field`] (`access_token` or `ticket`).
pub mod field {
    pub const APP_ID: &str = "app_id";
    pub const EXPIRES_IN: &str = "expires_in";
    pub const FETCHED_AT: &str = "fetched_at";
    pub const EXPIRES_AT: &str = "expires_at";
    pub const GENERATION: &str = "generation";
    pub const REASON: &str = "reason";
    pub const FETCHED_BY: &str = "fetched_by";
}

/// Everything needed to write one credential document.
pub struct NewCredential<'a> {
    pub kind: CredentialKind,
    pub app_id: &'a AccountId,
    pub fetched: &'a FetchedCredential,
    pub generation: Generation,
    pub reason: RefreshReason,
    pub fetched_by: &'a str,
}

impl NewCredential<'_> {
    pub fn to_document(&self) -> Document {
        // expires_in is bounded by wechat::MAX_EXPIRES_IN, far below i32::MAX.
        let expires_in = i32::try_from(self.fetched.expires_in.as_secs()).unwrap_or(i32::MAX);
        doc! {
            field::APP_ID: self.app_id.as_str(),
            self.kind.value_field(): self.fetched.value.expose_secret(),
            field::EXPIRES_IN: expires_in,
            field::FETCHED_AT: DateTime::from_system_time(self.fetched.fetched_at),
            field::EXPIRES_AT: DateTime::from_system_time(self.fetched.expires_at()),
            field::GENERATION: self.generation.0,
            field::REASON: self.reason.as_str(),
            field::FETCHED_BY: self.fetched_by,
        }
    }
}

/// Reads a stored document back; `Err` names the field that is wrong.
pub fn from_document(kind: CredentialKind, doc: &Document) -> Result<Credential, String> {
    let text = |name: &str| -> Result<String, String> {
        doc.get_str(name)
            .map(str::to_owned)
            .map_err(|_| format!("field {name} is missing or not a string"))
    };
    let date = |name: &str| -> Result<SystemTime, String> {
        doc.get_datetime(name)
            .map(|d| d.to_system_time())
            .map_err(|_| format!("field {name} is missing or not a date"))
    };
    let int = |name: &str| -> Result<i64, String> {
        match doc.get(name) {
            Some(Bson::Int32(v)) => Ok(i64::from(*v)),
            Some(Bson::Int64(v)) => Ok(*v),
            _ => Err(format!("field {name} is missing or not an integer")),
        }
    };
    let expires_in = u64::try_from(int(field::EXPIRES_IN)?)
        .map_err(|_| format!("field {} is negative", field::EXPIRES_IN))?;
    Ok(Credential {
        app_id: AccountId::new(text(field::APP_ID)?),
        kind,
        value: SecretString::from(text(kind.value_field())?),
        expires_in: Duration::from_secs(expires_in),
        fetched_at: date(field::FETCHED_AT)?,
        expires_at: date(field::EXPIRES_AT)?,
        generation: Generation(int(field::GENERATION)?),
        reason: doc
            .get_str(field::REASON)
            .ok()
            .and_then(RefreshReason::parse),
        fetched_by: doc
            .get_str(field::FETCHED_BY)
            .unwrap_or_default()
            .to_owned(),
    })
}
