//! [`Subject`]: what one lease is for, and so what its refreshers keep
//! fresh: a configured account (`[[accounts]]`), or an Open Platform
//! component's own token (`[open_platform]`). Authorizers come next
//! (issue 15).

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use wxtokend_reader::{AccountId, CredentialKind, Owner};

use crate::config::Account;
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
}

impl Subject {
    /// The `_id` of its lease document.
    pub fn lease_id(&self) -> LeaseId {
        match self {
            Self::Account(account) => LeaseId::account(&account.id),
            Self::Component(component) => LeaseId::component(&component.appid),
        }
    }

    /// Whose credentials its refreshers write.
    pub fn owner(&self) -> Owner {
        Owner::account(self.app_id().clone())
    }

    /// The appid its credentials are stored under (`app_id`), and the
    /// `account` of its metrics and logs.
    pub fn app_id(&self) -> &AccountId {
        match self {
            Self::Account(account) => &account.id,
            Self::Component(component) => &component.appid,
        }
    }

    /// Every credential kind kept fresh, its access token first.
    pub fn kinds(&self) -> impl Iterator<Item = CredentialKind> + '_ {
        let (token, tickets): (_, &[CredentialKind]) = match self {
            Self::Account(account) => (CredentialKind::AccessToken, &account.tickets),
            Self::Component(_) => (CredentialKind::ComponentAccessToken, &[]),
        };
        std::iter::once(token).chain(tickets.iter().copied())
    }

    /// The WeChat API that issues `kind`.
    pub fn api(&self, kind: CredentialKind) -> Api {
        match self {
            Self::Account(account) => account.api(kind),
            Self::Component(_) => Api::ComponentToken,
        }
    }
}
