//! [`Subject`]: what one lease is for, and so what its refreshers keep
//! fresh: a configured account (`[[accounts]]`), an Open Platform
//! component's own token (`[open_platform]`), or the token of an account
//! that authorized the component (an authorizer, found in the directory).

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::open_platform::SecretBox;
use wxtokend_reader::{AccountId, CredentialKind, Owner};

use crate::config::{Account, AuthorizerSelection, Platform, TokenEndpoint};
use crate::coordination::LeaseId;
use crate::wechat::Api;

/// The credentials of one lease. `Debug` redacts every secret.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A configured account: its access token and tickets.
    Account(Account),
    /// An Open Platform component: its `component_access_token`, minted
    /// with the newest verify ticket WeChat pushed.
    Component(Arc<Component>),
    /// An account that authorized the component: its
    /// `authorizer_access_token`, from its refresh token (or first from its
    /// authorization code).
    Authorizer {
        component: Arc<Component>,
        app_id: AccountId,
    },
}

/// An Open Platform component (`[open_platform]`), as its refresher needs
/// it. `Debug` redacts the secret.
#[derive(Debug)]
pub struct Component {
    pub appid: AccountId,
    /// `component_appsecret`.
    pub secret: SecretString,
    /// With no usable verify ticket for this long, ask WeChat to push one.
    pub start_push_ticket_after: Option<Duration>,
    /// Seals the authorizers' refresh tokens and codes
    /// (`open_platform.refresh_token_key_file`); without it no authorizer
    /// is kept.
    pub sealing: Option<SecretBox>,
    /// Which authorizers are kept (`open_platform.authorizers`).
    pub keep: AuthorizerSelection,
    /// The tickets kept for every authorizer besides its access token
    /// (`open_platform.authorizer_tickets`).
    pub tickets: Vec<CredentialKind>,
    /// Between two reads of WeChat's authorizer list.
    pub discovery_interval: Duration,
}

impl Subject {
    /// The `_id` of its lease document.
    pub fn lease_id(&self) -> LeaseId {
        match self {
            Self::Account(account) => LeaseId::account(&account.id),
            Self::Component(component) => LeaseId::component(&component.appid),
            Self::Authorizer { component, app_id } => LeaseId::authorizer(&component.appid, app_id),
        }
    }

    /// Whose credentials its refreshers write.
    pub fn owner(&self) -> Owner {
        match self {
            Self::Authorizer { component, app_id } => {
                Owner::authorizer(component.appid.clone(), app_id.clone())
            }
            _ => Owner::account(self.app_id().clone()),
        }
    }

    /// The appid its credentials are stored under (`app_id`), and the
    /// `account` of its metrics and logs.
    pub fn app_id(&self) -> &AccountId {
        match self {
            Self::Account(account) => &account.id,
            Self::Component(component) => &component.appid,
            Self::Authorizer { app_id, .. } => app_id,
        }
    }

    /// Every credential kind kept fresh, its access token first.
    pub fn kinds(&self) -> impl Iterator<Item = CredentialKind> + '_ {
        let (token, tickets): (_, &[CredentialKind]) = match self {
            Self::Account(account) => (CredentialKind::AccessToken, &account.tickets),
            Self::Component(_) => (CredentialKind::ComponentAccessToken, &[]),
            Self::Authorizer { component, .. } => {
                (CredentialKind::AuthorizerAccessToken, &component.tickets)
            }
        };
        std::iter::once(token).chain(tickets.iter().copied())
    }

    /// The WeChat API that issues `kind`.
    pub fn api(&self, kind: CredentialKind) -> Api {
        match self {
            Self::Account(account) => account.api(kind),
            Self::Component(_) => Api::ComponentToken,
            // Its first token may come from `api_query_auth` instead,
            // under a permit of that API (the refresher asks for it).
            Self::Authorizer { .. } if kind == CredentialKind::AuthorizerAccessToken => {
                Api::AuthorizerToken
            }
            // Its tickets: `getticket` with its token, like an account's.
            Self::Authorizer { .. } => {
                Api::of(Platform::OfficialAccount, TokenEndpoint::Token, kind)
            }
        }
    }
}
