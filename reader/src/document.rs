//! The shape of a credential document, in one place: the daemon writes with
//! [`to_document`], everyone reads with [`from_document`]. Business services
//! in other languages read these names: change them only with a migration.

use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{AccountId, Credential, CredentialKind, Generation, RefreshReason};

/// Field names of credential documents. The value field is named by
/// [`CredentialKind::value_field`] (`access_token` or `ticket`).
pub mod field {
    pub const APP_ID: &str = "app_id";
    /// The Open Platform component, in documents of the authorizer kinds.
    pub const COMPONENT_APPID: &str = "component_appid";
    pub const EXPIRES_IN: &str = "expires_in";
    pub const FETCHED_AT: &str = "fetched_at";
    pub const EXPIRES_AT: &str = "expires_at";
    pub const GENERATION: &str = "generation";
    pub const REASON: &str = "reason";
    pub const FETCHED_BY: &str = "fetched_by";
}

/// Why a stored document cannot be read as a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("field {0} is missing or not a string")]
    NotAString(&'static str),
    #[error("field {0} is missing or not a date")]
    NotADate(&'static str),
    #[error("field {0} is missing or not an integer")]
    NotAnInteger(&'static str),
    #[error("field {0} is negative")]
    Negative(&'static str),
}

/// The document of one credential.
pub fn to_document(credential: &Credential) -> Document {
    // expires_in is bounded by the daemon (one day), far below i32::MAX.
    let expires_in = i32::try_from(credential.expires_in.as_secs()).unwrap_or(i32::MAX);
    let mut document = doc! {
        field::APP_ID: credential.app_id.as_str(),
    };
    if let Some(component) = &credential.component_appid {
        document.insert(field::COMPONENT_APPID, component.as_str());
    }
    document.extend(doc! {
        credential.kind.value_field(): credential.value.expose_secret(),
        field::EXPIRES_IN: expires_in,
        field::FETCHED_AT: DateTime::from_system_time(credential.fetched_at),
        field::EXPIRES_AT: DateTime::from_system_time(credential.expires_at),
        field::GENERATION: credential.generation.0,
    });
    if let Some(reason) = credential.reason {
        document.insert(field::REASON, reason.as_str());
    }
    document.insert(field::FETCHED_BY, credential.fetched_by.as_str());
    document
}

/// Reads a stored document back; the error names the field that is wrong.
pub fn from_document(kind: CredentialKind, doc: &Document) -> Result<Credential, DocumentError> {
    let text = |name: &'static str| {
        doc.get_str(name)
            .map(str::to_owned)
            .map_err(|_| DocumentError::NotAString(name))
    };
    let date = |name: &'static str| {
        doc.get_datetime(name)
            .map(|d| d.to_system_time())
            .map_err(|_| DocumentError::NotADate(name))
    };
    let expires_in = u64::try_from(integer(doc, field::EXPIRES_IN)?)
        .map_err(|_| DocumentError::Negative(field::EXPIRES_IN))?;
    let component_appid = if kind.is_authorizer() {
        Some(AccountId::new(text(field::COMPONENT_APPID)?))
    } else {
        None
    };
    Ok(Credential {
        app_id: AccountId::new(text(field::APP_ID)?),
        component_appid,
        kind,
        value: SecretString::from(text(kind.value_field())?),
        expires_in: Duration::from_secs(expires_in),
        fetched_at: date(field::FETCHED_AT)?,
        expires_at: date(field::EXPIRES_AT)?,
        generation: Generation(integer(doc, field::GENERATION)?),
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

/// An integer field stored as int32, int64, or a double holding a whole
/// number (as JavaScript drivers and mongosh write numbers).
pub fn integer(doc: &Document, name: &'static str) -> Result<i64, DocumentError> {
    match doc.get(name) {
        Some(value) => as_integer(value).ok_or(DocumentError::NotAnInteger(name)),
        None => Err(DocumentError::NotAnInteger(name)),
    }
}

/// A BSON number as an integer, if it is one.
pub fn as_integer(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        // 2^63 as a double: every whole double below it fits in an i64.
        Bson::Double(v) if v.fract() == 0.0 && v.abs() < 9_223_372_036_854_775_808.0 => {
            Some(*v as i64)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential() -> Credential {
        let fetched_at = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Credential {
            app_id: AccountId::new("wx1"),
            component_appid: None,
            kind: CredentialKind::JsapiTicket,
            value: SecretString::from("TICKET"),
            expires_in: Duration::from_secs(7200),
            fetched_at,
            expires_at: fetched_at + Duration::from_secs(7200),
            generation: Generation(7),
            reason: Some(RefreshReason::Scheduled),
            fetched_by: "host-1".into(),
        }
    }

    #[test]
    fn a_document_reads_back_as_written() {
        let written = credential();
        let document = to_document(&written);
        assert_eq!(document.get_str("ticket"), Ok("TICKET"));
        assert_eq!(document.get_i32(field::EXPIRES_IN), Ok(7200));
        let read = from_document(CredentialKind::JsapiTicket, &document).expect("readable");
        assert_eq!(read.secret(), "TICKET");
        assert_eq!(read.generation, written.generation);
        assert_eq!(read.expires_at, written.expires_at);
        assert_eq!(read.reason, written.reason);
    }

    #[test]
    fn numbers_written_as_doubles_or_int32_are_read() {
        let mut document = to_document(&credential());
        document.insert(field::GENERATION, 7.0_f64);
        document.insert(field::EXPIRES_IN, 7200_i64);
        let read = from_document(CredentialKind::JsapiTicket, &document).expect("readable");
        assert_eq!(read.generation, Generation(7));
        assert_eq!(read.expires_in, Duration::from_secs(7200));
        document.insert(field::GENERATION, 7.5_f64);
        assert_eq!(
            from_document(CredentialKind::JsapiTicket, &document).map(|c| c.generation),
            Err(DocumentError::NotAnInteger(field::GENERATION))
        );
        document.insert(field::GENERATION, f64::NAN);
        assert!(from_document(CredentialKind::JsapiTicket, &document).is_err());
    }

    #[test]
    fn a_wrong_field_is_named() {
        let mut document = to_document(&credential());
        document.insert(field::GENERATION, "7");
        assert_eq!(
            from_document(CredentialKind::JsapiTicket, &document).map(|c| c.generation),
            Err(DocumentError::NotAnInteger(field::GENERATION))
        );
        document.remove("ticket");
        assert_eq!(
            from_document(CredentialKind::JsapiTicket, &document).map(|c| c.generation),
            Err(DocumentError::NotAString("ticket"))
        );
    }

    #[test]
    fn an_authorizer_document_names_its_component() {
        let mut written = credential();
        written.kind = CredentialKind::AuthorizerAccessToken;
        written.component_appid = Some(AccountId::new("wxc"));
        let mut document = to_document(&written);
        assert_eq!(document.get_str(field::COMPONENT_APPID), Ok("wxc"));
        assert_eq!(document.get_str("authorizer_access_token"), Ok("TICKET"));
        let read =
            from_document(CredentialKind::AuthorizerAccessToken, &document).expect("readable");
        assert_eq!(read.owner().to_string(), "wx1 (component wxc)");
        // Without its component it is not one platform's token.
        document.remove(field::COMPONENT_APPID);
        assert_eq!(
            from_document(CredentialKind::AuthorizerAccessToken, &document).map(|c| c.app_id),
            Err(DocumentError::NotAString(field::COMPONENT_APPID))
        );
        // Other kinds neither write nor need it.
        assert!(!to_document(&credential()).contains_key(field::COMPONENT_APPID));
    }
}
