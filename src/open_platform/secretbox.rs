//! Authorizers' refresh tokens and authorization codes, sealed at rest
//! (XChaCha20-Poly1305) with a key only the daemon reads: whoever can read
//! `authorizer_secrets` (a backup, a mis-granted role) learns nothing, and
//! a ciphertext copied to another authorizer's document, or moved from one
//! field to the other, does not open there, because the associated data
//! names the field, the component, the authorizer and the key.
//!
//! Random 24-byte nonces are safe to draw for any number of writes, which
//! is why this is XChaCha20 rather than a 12-byte-nonce AEAD.
//!
//! A key rotation keeps the old key as `previous`: what it sealed still
//! opens (the sealed value names its key by [`KeyId`]), and every new seal
//! uses the current key.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use sha1::{Digest, Sha1};
use wxtokend_reader::AccountId;

/// A key's length in bytes.
pub const KEY_LEN: usize = 32;
/// A nonce's length in bytes (XChaCha20).
pub const NONCE_LEN: usize = 24;
/// A key written as base64 (padded): 44 characters.
const KEY_BASE64_LEN: usize = 44;

/// Prefix of the associated data: the format, so that another use of the
/// same key can never be confused with this one.
const AAD_PREFIX: &[u8] = b"wxtokend/authorizer_secret/v1\0";
/// Prefix of what a key id hashes.
const KEY_ID_PREFIX: &[u8] = b"wxtokend key id\0";

/// Which secret of an authorizer is sealed: part of the associated data,
/// so a ciphertext cannot be moved from one field to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `authorizer_refresh_token`.
    RefreshToken,
    /// A pending authorization code (授权码).
    Code,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RefreshToken => "refresh_token",
            Self::Code => "code",
        }
    }
}

/// Names a key without revealing it: the first 8 hex characters of
/// SHA-1(`"wxtokend key id\0"` ‖ key). Stored beside each sealed value, so
/// that the key that opens it is known after a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn of(key: &[u8; KEY_LEN]) -> Self {
        let digest = Sha1::new()
            .chain_update(KEY_ID_PREFIX)
            .chain_update(key)
            .finalize();
        Self(digest[..4].iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Why a key file's contents are not a key. No variant holds any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "must hold {KEY_LEN} random bytes, as base64 ({KEY_BASE64_LEN} characters) or raw; \
         it holds {found} bytes"
    )]
    Length { found: usize },
    #[error("holds {KEY_BASE64_LEN} characters that are not the base64 of {KEY_LEN} bytes")]
    NotBase64,
    #[error("holds a key of zeros, not a random one")]
    AllZero,
}

/// One key: 32 bytes kept in a [`secrecy::SecretBox`] (zeroed when the
/// last clone goes), and its id. `Debug` shows the id only.
#[derive(Clone)]
pub struct Key {
    id: KeyId,
    bytes: Arc<secrecy::SecretBox<[u8; KEY_LEN]>>,
}

impl Key {
    /// A key from 32 bytes; an all-zero key is refused (a file that was
    /// never filled).
    pub fn new(bytes: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        let bytes = secrecy::SecretBox::new(Box::new(bytes));
        if bytes.expose_secret().iter().all(|b| *b == 0) {
            return Err(KeyError::AllZero);
        }
        Ok(Self {
            id: KeyId::of(bytes.expose_secret()),
            bytes: Arc::new(bytes),
        })
    }

    /// A key file's contents: exactly 32 raw bytes, or their base64 (44
    /// characters, surrounding whitespace such as a trailing newline
    /// ignored), as `openssl rand -base64 32` writes it.
    pub fn from_file_contents(contents: &[u8]) -> Result<Self, KeyError> {
        if let Ok(raw) = <[u8; KEY_LEN]>::try_from(contents) {
            return Self::new(raw);
        }
        let text = contents.trim_ascii();
        if text.len() != KEY_BASE64_LEN {
            return Err(KeyError::Length {
                found: contents.len(),
            });
        }
        let mut decoded = STANDARD.decode(text).map_err(|_| KeyError::NotBase64)?;
        let key = <[u8; KEY_LEN]>::try_from(decoded.as_slice()).map_err(|_| KeyError::NotBase64);
        decoded.zeroize();
        Self::new(key?)
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*self.bytes.expose_secret()).into())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("bytes", &"****")
            .finish()
    }
}

/// A sealed secret, as stored: the key's id, a random nonce, and the
/// ciphertext with its 16-byte tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: KeyId,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("ciphertext_bytes", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Sealing failed: the system's random source failed (or a secret of
/// 256 GiB). Nothing was sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the system's random number generator failed")]
    Random,
    #[error("the secret is too long to seal")]
    TooLong,
}

/// Why a sealed secret does not open. None of them says anything of the
/// secret or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsealable {
    /// Sealed with a key that is neither the current nor the previous one
    /// (a lost or rotated-out key): the secret is gone.
    #[error(
        "sealed with key {key_id}, which is neither open_platform.refresh_token_key_file nor \
         previous_refresh_token_key_file"
    )]
    UnknownKey { key_id: KeyId },
    /// The key is right but the ciphertext does not authenticate: changed,
    /// or moved from another authorizer or field.
    #[error(
        "does not authenticate with key {key_id} (changed, or copied from another authorizer \
         or field)"
    )]
    Refused { key_id: KeyId },
    /// It authenticates but is not text (never sealed by wxtokend).
    #[error("opens to something that is not text")]
    NotText,
    /// What is stored is not a sealed value (a field missing or of another
    /// type, a nonce of another length): written by something else.
    #[error("is not a sealed value (key_id, a 24-byte nonce and a ciphertext)")]
    Malformed,
}

/// The current key, which seals, and optionally the previous one, which
/// still opens what it sealed. `Debug` shows the key ids only.
#[derive(Debug, Clone)]
pub struct SecretBox {
    current: Key,
    previous: Option<Key>,
}

impl SecretBox {
    pub fn new(current: Key, previous: Option<Key>) -> Self {
        Self { current, previous }
    }

    /// The id of the key new seals use.
    pub fn current_key_id(&self) -> &KeyId {
        self.current.id()
    }

    /// Seals `secret` as `field` of `authorizer` of `component`, with the
    /// current key and a fresh random nonce.
    pub fn seal(
        &self,
        field: Field,
        component: &AccountId,
        authorizer: &AccountId,
        secret: &SecretString,
    ) -> Result<Sealed, SealError> {
        let key = &self.current;
        let nonce = XNonce::try_generate().map_err(|_| SealError::Random)?;
        let aad = aad(field, component, authorizer, key.id());
        let payload = Payload {
            msg: secret.expose_secret().as_bytes(),
            aad: &aad,
        };
        let ciphertext = key
            .cipher()
            .encrypt(&nonce, payload)
            .map_err(|_| SealError::TooLong)?;
        Ok(Sealed {
            key_id: key.id().clone(),
            nonce: nonce.into(),
            ciphertext,
        })
    }

    /// Opens what [`SecretBox::seal`] sealed for the same field, component
    /// and authorizer, with the key its id names (current or previous).
    pub fn open(
        &self,
        field: Field,
        component: &AccountId,
        authorizer: &AccountId,
        sealed: &Sealed,
    ) -> Result<SecretString, Unsealable> {
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|key| *key.id() == sealed.key_id)
            .ok_or_else(|| Unsealable::UnknownKey {
                key_id: sealed.key_id.clone(),
            })?;
        let aad = aad(field, component, authorizer, key.id());
        let payload = Payload {
            msg: &sealed.ciphertext,
            aad: &aad,
        };
        let plaintext = key
            .cipher()
            .decrypt(&XNonce::from(sealed.nonce), payload)
            .map_err(|_| Unsealable::Refused {
                key_id: sealed.key_id.clone(),
            })?;
        String::from_utf8(plaintext)
            .map(SecretString::from)
            .map_err(|e| {
                e.into_bytes().zeroize();
                Unsealable::NotText
            })
    }
}

/// `"wxtokend/authorizer_secret/v1\0" ‖ field ‖ \0 ‖ component ‖ \0 ‖
/// authorizer ‖ \0 ‖ key id`. Appids hold no NUL, so no two tuples give
/// the same bytes.
fn aad(field: Field, component: &AccountId, authorizer: &AccountId, key: &KeyId) -> Vec<u8> {
    let parts = [
        field.as_str(),
        component.as_str(),
        authorizer.as_str(),
        key.as_str(),
    ];
    let mut aad = AAD_PREFIX.to_vec();
    aad.extend_from_slice(parts.join("\0").as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: [u8; KEY_LEN] = [1; KEY_LEN];
    const TWO: [u8; KEY_LEN] = [2; KEY_LEN];
    const TOKEN: &str = "refreshtoken@@@never-shown-0123456789";

    fn key(bytes: [u8; KEY_LEN]) -> Key {
        Key::new(bytes).expect("a key")
    }

    fn ids() -> (AccountId, AccountId) {
        (
            AccountId::new("wxcomponent0001"),
            AccountId::new("wxauthorizer01"),
        )
    }

    fn secret() -> SecretString {
        SecretString::from(TOKEN.to_owned())
    }

    fn sealed(secret_box: &SecretBox) -> Sealed {
        let (component, authorizer) = ids();
        secret_box
            .seal(Field::RefreshToken, &component, &authorizer, &secret())
            .expect("sealed")
    }

    #[test]
    fn what_is_sealed_opens_and_the_ciphertext_holds_no_plaintext() {
        let secret_box = SecretBox::new(key(ONE), None);
        let (component, authorizer) = ids();
        let first = sealed(&secret_box);
        let opened = secret_box
            .open(Field::RefreshToken, &component, &authorizer, &first)
            .expect("opens");
        assert_eq!(opened.expose_secret(), TOKEN);
        assert_eq!(first.ciphertext.len(), TOKEN.len() + 16);
        assert!(!first
            .ciphertext
            .windows(8)
            .any(|w| TOKEN.as_bytes().windows(8).any(|t| t == w)));
        // A fresh nonce every time.
        let second = sealed(&secret_box);
        assert_ne!(first.nonce, second.nonce);
        assert_ne!(first.ciphertext, second.ciphertext);
        // Empty text too.
        let empty = SecretString::from(String::new());
        let sealed = secret_box
            .seal(Field::Code, &component, &authorizer, &empty)
            .expect("sealed");
        let opened = secret_box
            .open(Field::Code, &component, &authorizer, &sealed)
            .expect("opens");
        assert_eq!(opened.expose_secret(), "");
    }

    #[test]
    fn a_ciphertext_moved_to_another_authorizer_component_or_field_is_refused() {
        let secret_box = SecretBox::new(key(ONE), None);
        let (component, authorizer) = ids();
        let sealed = sealed(&secret_box);
        let refused = Unsealable::Refused {
            key_id: sealed.key_id.clone(),
        };
        let other = AccountId::new("wxauthorizer02");
        for (field, component, authorizer) in [
            (Field::RefreshToken, &component, &other),
            (Field::RefreshToken, &other, &authorizer),
            (Field::Code, &component, &authorizer),
        ] {
            let opened = secret_box.open(field, component, authorizer, &sealed);
            assert_eq!(
                opened.err(),
                Some(refused.clone()),
                "{field:?} {component} {authorizer}"
            );
        }
        // The separator keeps ("ab", "c") apart from ("a", "bc").
        let (ab, c) = (AccountId::new("wxab"), AccountId::new("c"));
        let (a, bc) = (AccountId::new("wxa"), AccountId::new("bc"));
        let split = secret_box
            .seal(Field::Code, &ab, &c, &secret())
            .expect("sealed");
        assert!(secret_box.open(Field::Code, &a, &bc, &split).is_err());
    }

    #[test]
    fn a_changed_ciphertext_nonce_or_key_id_is_refused() {
        let secret_box = SecretBox::new(key(ONE), Some(key(TWO)));
        let (component, authorizer) = ids();
        let sealed = sealed(&secret_box);
        let open = |s: &Sealed| secret_box.open(Field::RefreshToken, &component, &authorizer, s);
        for i in 0..sealed.ciphertext.len() {
            let mut changed = sealed.clone();
            changed.ciphertext[i] ^= 0x01;
            assert!(
                matches!(open(&changed), Err(Unsealable::Refused { .. })),
                "byte {i}"
            );
        }
        let mut changed = sealed.clone();
        changed.nonce[0] ^= 0x80;
        assert!(matches!(open(&changed), Err(Unsealable::Refused { .. })));
        let mut truncated = sealed.clone();
        truncated.ciphertext.truncate(10);
        assert!(matches!(open(&truncated), Err(Unsealable::Refused { .. })));
        // Claiming the previous key: that key does not open it.
        let mut relabelled = sealed.clone();
        relabelled.key_id = key(TWO).id().clone();
        assert!(matches!(open(&relabelled), Err(Unsealable::Refused { .. })));
    }

    #[test]
    fn after_a_rotation_the_previous_key_opens_what_it_sealed_and_new_seals_use_the_current() {
        let (component, authorizer) = ids();
        let before = SecretBox::new(key(ONE), None);
        let old = sealed(&before);
        let after = SecretBox::new(key(TWO), Some(key(ONE)));
        let opened = after
            .open(Field::RefreshToken, &component, &authorizer, &old)
            .expect("the previous key opens it");
        assert_eq!(opened.expose_secret(), TOKEN);
        let new = sealed(&after);
        assert_eq!(&new.key_id, key(TWO).id());
        assert_eq!(after.current_key_id(), key(TWO).id());
        // Without the previous key, the old value is named as such.
        let forgotten = SecretBox::new(key(TWO), None);
        assert_eq!(
            forgotten
                .open(Field::RefreshToken, &component, &authorizer, &old)
                .err(),
            Some(Unsealable::UnknownKey {
                key_id: key(ONE).id().clone()
            })
        );
    }

    #[test]
    fn a_key_id_is_stable_and_tells_keys_apart() {
        let id = key(ONE).id().clone();
        assert_eq!(id, key(ONE).id().clone());
        assert_ne!(id, key(TWO).id().clone());
        assert_eq!(id.as_str().len(), 8);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        // SHA-1("wxtokend key id\0" ‖ 32 × 0x01), first 4 bytes (computed
        // with Python's hashlib): fixed forever, as stored documents name
        // their key by it.
        assert_eq!(id.as_str(), "1b498c4e");
    }

    #[test]
    fn key_files_hold_32_bytes_raw_or_base64() {
        let raw = Key::from_file_contents(&ONE).expect("raw");
        assert_eq!(raw.id(), key(ONE).id());
        let text = format!("{}\n", STANDARD.encode(ONE));
        let b64 = Key::from_file_contents(text.as_bytes()).expect("base64");
        assert_eq!(b64.id(), key(ONE).id());
        let spaced = format!("  {}\r\n", STANDARD.encode(TWO));
        assert_eq!(
            Key::from_file_contents(spaced.as_bytes())
                .expect("base64")
                .id(),
            key(TWO).id()
        );
    }

    #[test]
    fn bad_key_files_are_refused_without_quoting_them() {
        for (contents, expected) in [
            (b"".to_vec(), KeyError::Length { found: 0 }),
            (vec![7; 31], KeyError::Length { found: 31 }),
            (vec![7; 33], KeyError::Length { found: 33 }),
            (
                STANDARD.encode([7u8; 16]).into_bytes(),
                KeyError::Length { found: 24 },
            ),
            (
                STANDARD.encode([7u8; 48]).into_bytes(),
                KeyError::Length { found: 64 },
            ),
            (vec![b'!'; 44], KeyError::NotBase64),
            // 44 characters of base64 that decode to 31 or 33 bytes.
            (STANDARD.encode([7u8; 31]).into_bytes(), KeyError::NotBase64),
            (STANDARD.encode([7u8; 33]).into_bytes(), KeyError::NotBase64),
            (vec![0; 32], KeyError::AllZero),
            (STANDARD.encode([0u8; 32]).into_bytes(), KeyError::AllZero),
        ] {
            let err = Key::from_file_contents(&contents).expect_err("refused");
            assert_eq!(err, expected, "{contents:?}");
        }
    }

    #[test]
    fn debug_shows_no_key_and_no_secret() {
        let secret_box = SecretBox::new(key(ONE), Some(key(TWO)));
        let text = format!("{secret_box:?} {:?}", sealed(&secret_box));
        assert!(text.contains(key(ONE).id().as_str()), "{text}");
        for needle in [
            format!("{:?}", ONE),
            format!("{:?}", &ONE[..4]),
            "1, 1, 1".to_owned(),
            "2, 2, 2".to_owned(),
            TOKEN.to_owned(),
        ] {
            assert!(!text.contains(&needle), "{text}");
        }
    }
}
