//! [`Reader`]: what Rust business code uses to read the newest valid
//! credential, with an optional in-memory cache.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use mongodb::Database;
use secrecy::SecretString;

use crate::connect::{connect, ConnectError, ConnectOptions};
use crate::credentials::{Credentials, QueryError};
use crate::domain::{AccountId, Credential, CredentialKind, Generation, Owner, RefreshReason};
use crate::jssdk::{self, JsSdkConfig};
use crate::requests::{self, NewRequest};

/// WeChat keeps a replaced token valid for about five minutes. A cached token
/// older than this could already be dead, so longer cache ages are capped.
pub const MAX_CACHE_AGE: Duration = Duration::from_secs(120);

/// Where WeChat repeats a value until it dies (`getticket`, WeCom), the next
/// value exists only after the stored one expired, and is stored about one
/// WeChat call later. A read that falls in that moment waits for it, up to
/// this long after the expiry, rather than failing.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(1);

/// A read waiting for the next value looks again after this long, then
/// twice as long each time, up to [`HANDOVER_POLL_MAX`]: a few queries per
/// waiting read, however many wait.
const HANDOVER_POLL: Duration = Duration::from_millis(10);
const HANDOVER_POLL_MAX: Duration = Duration::from_millis(160);

/// `requested_by` of the reports this module files.
const REPORTER: &str = "wxtokend::reader";

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "no {kind} stored for account {}: is wxtokend configured for it and running?",
        named(account, component_appid.as_ref())
    )]
    NotFound {
        account: AccountId,
        /// The component, for the authorizer kinds.
        component_appid: Option<AccountId>,
        kind: CredentialKind,
    },
    #[error(
        "the newest {kind} for account {} (generation {generation}) has expired: \
         wxtokend is not refreshing it (check its logs and `wxtokend status`)",
        named(account, component_appid.as_ref())
    )]
    Expired {
        account: AccountId,
        /// The component, for the authorizer kinds.
        component_appid: Option<AccountId>,
        kind: CredentialKind,
        generation: Generation,
        expired_at: SystemTime,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// `wxA`, or `wxA (component wxC)` for an authorizer (as [`Owner`] shows it).
fn named(account: &AccountId, component: Option<&AccountId>) -> String {
    let owner = Owner {
        app_id: account.clone(),
        component_appid: component.cloned(),
    };
    owner.to_string()
}

impl From<mongodb::error::Error> for ReadError {
    fn from(error: mongodb::error::Error) -> Self {
        Self::Query(QueryError::from(error))
    }
}

/// Reads credentials that wxtokend stored. Clone-free sharing: wrap it in an
/// `Arc` or keep one per process; it holds one connection pool.
#[derive(Debug)]
pub struct Reader {
    db: Database,
    credentials: Credentials,
    cache: Option<Cache>,
}

/// Per owner, one slot per credential kind. An account and an authorizer
/// with the same appid (or one authorizer of two components) have slots
/// of their own. A hit looks up by `&str` and clones an `Arc`, so it
/// allocates nothing, for accounts and authorizers alike.
#[derive(Debug)]
struct Cache {
    max_age: Duration,
    entries: RwLock<Entries>,
}

type Slots = [Slot; CredentialKind::COUNT];

#[derive(Debug, Default)]
struct Entries {
    /// By appid: the accounts' credentials (a component's own token too).
    accounts: HashMap<AccountId, Slots>,
    /// By component appid, then authorizer appid.
    authorizers: HashMap<AccountId, HashMap<AccountId, Slots>>,
}

impl Entries {
    fn get(&self, whose: Whose<'_>) -> Option<&Slots> {
        match whose.component {
            None => self.accounts.get(whose.app_id.as_str()),
            Some(component) => self
                .authorizers
                .get(component.as_str())?
                .get(whose.app_id.as_str()),
        }
    }

    fn get_or_insert(&mut self, whose: Whose<'_>) -> &mut Slots {
        let accounts = match whose.component {
            None => &mut self.accounts,
            Some(component) => self.authorizers.entry(component.clone()).or_default(),
        };
        accounts.entry(whose.app_id.clone()).or_default()
    }
}

/// Whose credential a read is for, borrowed: an [`Owner`] without the
/// clone. The component counts for the authorizer kinds only (as in the
/// query: [`crate::credentials::owner_filter`]).
#[derive(Debug, Clone, Copy)]
struct Whose<'a> {
    app_id: &'a AccountId,
    component: Option<&'a AccountId>,
}

impl<'a> Whose<'a> {
    fn account(app_id: &'a AccountId) -> Self {
        Whose {
            app_id,
            component: None,
        }
    }

    fn of(kind: CredentialKind, owner: &'a Owner) -> Self {
        Whose {
            app_id: &owner.app_id,
            component: owner
                .component_appid
                .as_ref()
                .filter(|_| kind.is_authorizer()),
        }
    }

    fn to_owner(self) -> Owner {
        Owner {
            app_id: self.app_id.clone(),
            component_appid: self.component.cloned(),
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    cached: Option<Cached>,
    /// The highest generation this reader reported invalid: it and older
    /// ones are never cached again.
    reported: Option<Generation>,
}

#[derive(Debug, Clone)]
struct Cached {
    stored_at: Instant,
    credential: Arc<Credential>,
}

impl Reader {
    /// Connects lazily: the first read contacts MongoDB.
    pub async fn connect(uri: &str, database: &str) -> Result<Reader, ReadError> {
        let uri = SecretString::from(uri.to_owned());
        let db = connect(&uri, database, ConnectOptions::default()).await?;
        Ok(Reader::new(db))
    }

    /// A reader on a database opened elsewhere (see [`crate::connect`]).
    pub fn new(db: Database) -> Reader {
        Reader {
            credentials: Credentials::new(db.clone()),
            db,
            cache: None,
        }
    }

    /// Keeps each credential in memory for up to `max_age` (capped at
    /// [`MAX_CACHE_AGE`]). A cached credential is never returned at or after
    /// its expiry.
    pub fn with_cache(mut self, max_age: Duration) -> Reader {
        self.cache = Some(Cache {
            max_age: max_age.min(MAX_CACHE_AGE),
            entries: RwLock::new(Entries::default()),
        });
        self
    }

    /// The newest valid access token of `account`.
    pub async fn latest(&self, account: &AccountId) -> Result<Arc<Credential>, ReadError> {
        self.latest_of(CredentialKind::AccessToken, account).await
    }

    /// The newest valid credential of any kind. Read a moment after the
    /// newest one expired, it waits for the next (see [`HANDOVER_WAIT`]).
    pub async fn latest_of(
        &self,
        kind: CredentialKind,
        account: &AccountId,
    ) -> Result<Arc<Credential>, ReadError> {
        self.latest_whose(kind, Whose::account(account)).await
    }

    /// The newest valid credential of `kind` of any owner: an account's
    /// (as [`Reader::latest_of`]), or for the authorizer kinds
    /// ([`CredentialKind::is_authorizer`]) an account's through an Open
    /// Platform component, `Owner::authorizer(component, app_id)`. The
    /// component is ignored for the other kinds, as in the query.
    pub async fn latest_owned(
        &self,
        kind: CredentialKind,
        owner: &Owner,
    ) -> Result<Arc<Credential>, ReadError> {
        self.latest_whose(kind, Whose::of(kind, owner)).await
    }

    /// The newest valid `authorizer_access_token` that `component` holds
    /// for `authorizer`, the account that authorized it.
    pub async fn latest_authorizer(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
    ) -> Result<Arc<Credential>, ReadError> {
        let whose = Whose {
            app_id: authorizer,
            component: Some(component),
        };
        self.latest_whose(CredentialKind::AuthorizerAccessToken, whose)
            .await
    }

    async fn latest_whose(
        &self,
        kind: CredentialKind,
        whose: Whose<'_>,
    ) -> Result<Arc<Credential>, ReadError> {
        let now = SystemTime::now();
        if let Some(hit) = self.cached(kind, whose, now) {
            return Ok(hit);
        }
        let owner = whose.to_owner();
        let found = match self
            .credentials
            .newest_valid_owned(kind, &owner, now)
            .await?
        {
            Some(credential) => Arc::new(credential),
            None => Arc::new(self.wait_for_next(kind, &owner).await?),
        };
        if let Some(cache) = &self.cache {
            let mut entries = cache
                .entries
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let slot = &mut entries.get_or_insert(whose)[kind.index()];
            if slot.reported.is_none_or(|r| found.generation > r) {
                slot.cached = Some(Cached {
                    stored_at: Instant::now(),
                    credential: found.clone(),
                });
            }
        }
        Ok(found)
    }

    fn cached(
        &self,
        kind: CredentialKind,
        whose: Whose<'_>,
        now: SystemTime,
    ) -> Option<Arc<Credential>> {
        let cache = self.cache.as_ref()?;
        let entries = cache.entries.read().unwrap_or_else(PoisonError::into_inner);
        let hit = entries.get(whose)?[kind.index()].cached.as_ref()?;
        (hit.stored_at.elapsed() < cache.max_age && hit.credential.is_valid_at(now))
            .then(|| hit.credential.clone())
    }

    /// Tells the daemon that WeChat rejected `credential` when it was used
    /// (errcode 40001, 40014 or 42001). The daemon refreshes only if it is
    /// still the newest generation, once per generation however many
    /// services report it, and within the forced-refresh rate limit. The
    /// cached copy is dropped, and this generation (or an older one) is
    /// never cached again: reads go to MongoDB until the refresh lands.
    /// An authorizer's credential is reported with its component, and
    /// reaches the refresher of that authorizer.
    pub async fn report_invalid(&self, credential: &Credential) -> Result<(), ReadError> {
        if let Some(cache) = &self.cache {
            let mut entries = cache
                .entries
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let whose = Whose {
                app_id: &credential.app_id,
                component: credential.component_appid.as_ref(),
            };
            let slot = &mut entries.get_or_insert(whose)[credential.kind.index()];
            slot.cached = None;
            slot.reported = slot.reported.max(Some(credential.generation));
        }
        let request = NewRequest {
            app_id: &credential.app_id,
            component_appid: credential.component_appid.as_ref(),
            kind: credential.kind,
            reason: RefreshReason::ReportedInvalid,
            generation: Some(credential.generation),
            requested_by: REPORTER,
        };
        requests::file(&self.db, &request).await?;
        Ok(())
    }

    /// The `wx.config` parameters for a page at `url` (its `#fragment` is
    /// ignored), signed with the newest valid `jsapi_ticket`. For WeCom's
    /// `wx.agentConfig`, use [`Reader::signature_with`] and
    /// [`CredentialKind::AgentConfigTicket`].
    pub async fn signature(
        &self,
        account: &AccountId,
        url: &str,
    ) -> Result<JsSdkConfig, ReadError> {
        self.signature_with(CredentialKind::JsapiTicket, account, url)
            .await
    }

    /// Like [`Reader::signature`] with a chosen ticket kind.
    pub async fn signature_with(
        &self,
        ticket: CredentialKind,
        account: &AccountId,
        url: &str,
    ) -> Result<JsSdkConfig, ReadError> {
        let ticket = self.latest_of(ticket, account).await?;
        Ok(signed(&ticket, account.js_app_id(), url))
    }

    /// The `wx.config` parameters for a page of `authorizer` (an account
    /// that authorized the Open Platform `component`), signed with its
    /// newest valid `authorizer_jsapi_ticket`; `appId` is the authorizer's
    /// appid, as the page's `wx.config` needs.
    pub async fn authorizer_signature(
        &self,
        component: &AccountId,
        authorizer: &AccountId,
        url: &str,
    ) -> Result<JsSdkConfig, ReadError> {
        let whose = Whose {
            app_id: authorizer,
            component: Some(component),
        };
        let ticket = self
            .latest_whose(CredentialKind::AuthorizerJsapiTicket, whose)
            .await?;
        Ok(signed(&ticket, authorizer.as_str(), url))
    }

    /// Nothing valid is stored: if the newest value expired a moment ago,
    /// waits (at most [`HANDOVER_WAIT`] past its expiry) for the next one,
    /// which the daemon stores as soon as WeChat issues it. Otherwise, or
    /// if none comes, says why nothing is valid.
    async fn wait_for_next(
        &self,
        kind: CredentialKind,
        owner: &Owner,
    ) -> Result<Credential, ReadError> {
        let missing = self.explain_missing(kind, owner).await;
        let ReadError::Expired { expired_at, .. } = missing else {
            return Err(missing);
        };
        let give_up = expired_at + HANDOVER_WAIT;
        let mut pause = HANDOVER_POLL;
        while SystemTime::now() < give_up {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(HANDOVER_POLL_MAX);
            let now = SystemTime::now();
            if let Some(next) = self
                .credentials
                .newest_valid_owned(kind, owner, now)
                .await?
            {
                return Ok(next);
            }
        }
        Err(missing)
    }

    /// Tells "never stored" from "stored but expired" (the daemon stopped).
    async fn explain_missing(&self, kind: CredentialKind, owner: &Owner) -> ReadError {
        match self.credentials.newest_owned(kind, owner).await {
            Ok(Some(stale)) => ReadError::Expired {
                account: owner.app_id.clone(),
                component_appid: owner.component_appid.clone(),
                kind,
                generation: stale.generation,
                expired_at: stale.expires_at,
            },
            Ok(None) => ReadError::NotFound {
                account: owner.app_id.clone(),
                component_appid: owner.component_appid.clone(),
                kind,
            },
            Err(e) => ReadError::Query(e),
        }
    }
}

/// The `wx.config` parameters signed with `ticket` for `app_id`'s page.
fn signed(ticket: &Credential, app_id: &str, url: &str) -> JsSdkConfig {
    let timestamp = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let nonce_str = jssdk::nonce();
    JsSdkConfig {
        app_id: app_id.to_owned(),
        signature: jssdk::sign(ticket.secret(), &nonce_str, timestamp, url),
        timestamp,
        nonce_str,
    }
}
