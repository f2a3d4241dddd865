//! [`Subject`]: what one lease is for, and so what its refreshers keep
//! fresh. Today a configured account (`[[accounts]]`); the Open Platform's
//! component and its authorizers become subjects of the same lease
//! machinery (issue 15).

use wxtokend_reader::{AccountId, CredentialKind, Owner};

use crate::config::Account;
use crate::coordination::LeaseId;
use crate::wechat::Api;

/// The credentials of one lease. `Debug` redacts every secret.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A configured account: its access token and tickets.
    Account(Account),
}

impl Subject {
    /// The `_id` of its lease document.
    pub fn lease_id(&self) -> LeaseId {
        match self {
            Self::Account(account) => LeaseId::account(&account.id),
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
        }
    }

    /// Every credential kind kept fresh, its access token first.
    pub fn kinds(&self) -> impl Iterator<Item = CredentialKind> + '_ {
        match self {
            Self::Account(account) => account.kinds(),
        }
    }

    /// The WeChat API that issues `kind`.
    pub fn api(&self, kind: CredentialKind) -> Api {
        match self {
            Self::Account(account) => account.api(kind),
        }
    }
}
