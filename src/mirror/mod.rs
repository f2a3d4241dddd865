//! Redis mirrors (`[[mirrors]]`): every credential this replica stores in
//! MongoDB, or reuses from it when it takes a lease, is also written into
//! Redis where and how each configured SDK reads it ([`layout`]), so that
//! an SDK pointed at that Redis never fetches a token of its own.
//!
//! MongoDB stays the source of truth and its path never waits for Redis: a
//! refresher only leaves the credential in the mirror's mailbox
//! ([`Mirrors::offer`]), which keeps the newest offer per (account, kind),
//! so it never fills and never drops one; one task per mirror ([`writer`])
//! takes what is there and writes it.

mod layout;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use secrecy::SecretString;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wxtokend_reader::{AccountId, Credential, CredentialKind, Generation};

pub use layout::{KeyPrefixes, Layout};

use crate::config::{Account, MirrorSettings};
use crate::metrics::Metrics;
use crate::store::Store;

/// A credential to mirror. `Debug` leaves the value out.
#[derive(Clone)]
pub struct Mirrored {
    pub account: AccountId,
    pub kind: CredentialKind,
    pub generation: Generation,
    pub value: SecretString,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for Mirrored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirrored")
            .field("account", &self.account)
            .field("kind", &self.kind)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl From<Credential> for Mirrored {
    fn from(c: Credential) -> Self {
        Self {
            account: c.app_id,
            kind: c.kind,
            generation: c.generation,
            value: c.value,
            expires_at: c.expires_at,
        }
    }
}

/// The refreshers' side of every configured mirror.
#[derive(Debug, Default)]
pub struct Mirrors {
    outlets: Vec<Outlet>,
}

/// How a mirror is doing, as this replica's heartbeat tells `status`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub name: String,
    /// Redis answers and takes the writes.
    pub up: bool,
    /// Failed Redis operations since start.
    pub errors: u64,
    /// The last failure: Redis's own code and message (never a value),
    /// cut at 200 characters, with how many writes it refused.
    pub last_error: Option<String>,
    /// When the last credential was written.
    pub last_write: Option<SystemTime>,
}

/// A credential's place in a mirror: one per (account, kind).
pub(super) type Key = (AccountId, CredentialKind);

/// What the refreshers said about one [`Key`] since the writer last looked.
#[derive(Debug, Default)]
pub(super) struct Offer {
    /// The newest credential offered.
    pub(super) credential: Option<Mirrored>,
    /// The highest lease term it was offered under.
    pub(super) term: i64,
    /// The refresher of that term (or a later one) stopped: the lease was
    /// lost or given back, or the daemon stops. What was offered is
    /// written, then no longer mirrored.
    pub(super) withdrawn: Option<i64>,
}

/// The newest offer per [`Key`] not yet taken by the writer; bounded by
/// the number of credentials this replica can hold.
#[derive(Debug, Default)]
pub(super) struct Mailbox {
    offered: Mutex<HashMap<Key, Offer>>,
    wake: Notify,
}

impl Mailbox {
    /// Leaves `credential`, held under lease `term`, unless a newer one of
    /// its key waits already.
    fn put(&self, credential: &Mirrored, term: i64) {
        let key = (credential.account.clone(), credential.kind);
        let mut offered = self.offered.lock().unwrap_or_else(PoisonError::into_inner);
        let offer = offered.entry(key).or_default();
        let newer = offer
            .credential
            .as_ref()
            .is_none_or(|waiting| waiting.generation <= credential.generation);
        if newer {
            offer.credential = Some(credential.clone());
        }
        offer.term = offer.term.max(term);
        if offer.withdrawn.is_some_and(|t| t < term) {
            offer.withdrawn = None;
        }
        drop(offered);
        self.wake.notify_one();
    }

    /// Says that `key`'s refresher of lease `term` stopped; ignored when a
    /// later term's refresher offered it already.
    fn withdraw(&self, key: Key, term: i64) {
        let mut offered = self.offered.lock().unwrap_or_else(PoisonError::into_inner);
        let offer = offered.entry(key).or_default();
        if term >= offer.term {
            offer.withdrawn = Some(term);
        }
        drop(offered);
        self.wake.notify_one();
    }

    /// Everything offered since the last call.
    pub(super) fn take(&self) -> HashMap<Key, Offer> {
        std::mem::take(&mut *self.offered.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Until something is offered (at once if something was since the last
    /// wait).
    pub(super) async fn offered(&self) {
        self.wake.notified().await;
    }
}

/// One mirror's [`Health`], updated by its writer.
pub(super) type SharedHealth = Arc<Mutex<Health>>;

fn update(health: &SharedHealth, change: impl FnOnce(&mut Health)) {
    change(&mut health.lock().unwrap_or_else(PoisonError::into_inner));
}

#[derive(Debug)]
struct Outlet {
    settings: Arc<MirrorSettings>,
    mailbox: Arc<Mailbox>,
    health: SharedHealth,
}

impl Mirrors {
    /// Starts one writer task per mirror; they end when `stop` is cancelled.
    pub fn start(
        settings: &[MirrorSettings],
        accounts: &[Account],
        store: &Store,
        metrics: &Arc<Metrics>,
        stop: &CancellationToken,
    ) -> Result<(Self, Vec<JoinHandle<()>>), MirrorError> {
        let platforms: HashMap<AccountId, _> = accounts
            .iter()
            .map(|a| (a.id.clone(), a.platform))
            .collect();
        let mut outlets = Vec::new();
        let mut tasks = Vec::new();
        for mirror in settings {
            let settings = Arc::new(mirror.clone());
            let mailbox = Arc::new(Mailbox::default());
            let health = Arc::new(Mutex::new(Health {
                name: mirror.name.clone(),
                ..Health::default()
            }));
            let writer = writer::Writer::new(
                settings.clone(),
                platforms.clone(),
                store.clone(),
                metrics.clone(),
                mailbox.clone(),
                health.clone(),
            )
            .map_err(|()| MirrorError::Url(mirror.name.clone()))?;
            tasks.push(tokio::spawn(writer.run(stop.clone())));
            outlets.push(Outlet {
                settings,
                mailbox,
                health,
            });
        }
        Ok((Self { outlets }, tasks))
    }

    /// Every mirror's health now.
    pub fn health(&self) -> Vec<Health> {
        self.outlets
            .iter()
            .map(|q| {
                q.health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            })
            .collect()
    }

    /// Hands a credential just stored in (or reused from) MongoDB, under
    /// lease `term`, to every mirror that wants it. Never waits on Redis.
    pub fn offer(&self, credential: &Mirrored, term: i64) {
        for outlet in &self.outlets {
            if outlet.settings.wants(&credential.account, credential.kind) {
                outlet.mailbox.put(credential, term);
            }
        }
    }

    /// The refresher of `kind` of `account` under lease `term` stopped:
    /// what it offered is still written, but no longer rewritten or
    /// repaired by this replica (the lease's next holder mirrors it),
    /// unless a refresher of a later term offered it meanwhile.
    pub fn withdraw(&self, account: &AccountId, kind: CredentialKind, term: i64) {
        for outlet in &self.outlets {
            if outlet.settings.wants(account, kind) {
                outlet.mailbox.withdraw((account.clone(), kind), term);
            }
        }
    }
}

/// Whether the mirror's Redis answers (`wxtokend check`). The error is
/// Redis's own (command and server, never the URL).
pub async fn ping(settings: &MirrorSettings) -> Result<(), String> {
    use secrecy::ExposeSecret;
    let client = redis::Client::open(settings.url.expose_secret())
        .map_err(|_| "the Redis URL is not valid".to_owned())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(std::time::Duration::from_secs(5)));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Checked at load time already; the URL is never quoted.
    #[error("mirror {0}: the Redis URL is not valid")]
    Url(String),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn offer_of(account: &str, kind: CredentialKind, generation: i64) -> Mirrored {
        Mirrored {
            account: AccountId::new(account),
            kind,
            generation: Generation(generation),
            value: SecretString::from(format!("value-{generation}")),
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(7200),
        }
    }

    #[tokio::test]
    async fn the_mailbox_keeps_the_newest_offer_of_each_credential_and_wakes_the_writer() {
        let mailbox = Mailbox::default();
        for _ in 0..3 {
            for account in 0..2_000 {
                let account = format!("wx{account:04}");
                mailbox.put(&offer_of(&account, CredentialKind::AccessToken, 2), 1);
                mailbox.put(&offer_of(&account, CredentialKind::AccessToken, 1), 1);
                mailbox.put(&offer_of(&account, CredentialKind::JsapiTicket, 5), 1);
            }
        }
        // Offers made before the writer waits are not missed.
        tokio::time::timeout(Duration::from_secs(1), mailbox.offered())
            .await
            .expect("woken");
        let key = (AccountId::new("wx0042"), CredentialKind::AccessToken);
        mailbox.withdraw(key.clone(), 1);
        let taken = mailbox.take();
        assert_eq!(taken.len(), 4_000, "one per account and kind, none dropped");
        let offer = &taken[&key];
        assert_eq!(
            offer.credential.as_ref().map(|c| c.generation),
            Some(Generation(2))
        );
        assert_eq!(
            offer.withdrawn,
            Some(1),
            "withdrawn, what was offered still written"
        );
        assert!(mailbox.take().is_empty());
    }

    #[test]
    fn a_withdrawal_by_an_earlier_terms_refresher_is_ignored() {
        let mailbox = Mailbox::default();
        let key = (AccountId::new("wx0001"), CredentialKind::AccessToken);
        // The lease was lost (term 3) and taken again (term 4): the new
        // refresher offers before the old one ends.
        mailbox.put(&offer_of("wx0001", CredentialKind::AccessToken, 7), 4);
        mailbox.withdraw(key.clone(), 3);
        assert_eq!(mailbox.take()[&key].withdrawn, None);
        // Withdrawn, then taken again under a later term.
        mailbox.withdraw(key.clone(), 4);
        mailbox.put(&offer_of("wx0001", CredentialKind::AccessToken, 7), 5);
        assert_eq!(mailbox.take()[&key].withdrawn, None);
        // An old term's withdrawal that the writer sees after the new
        // term's offer (the writer compares terms too).
        mailbox.withdraw(key.clone(), 4);
        let offer = &mailbox.take()[&key];
        assert_eq!((offer.term, offer.withdrawn), (0, Some(4)));
    }
}
