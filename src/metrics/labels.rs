//! Label sets and label values of the metrics. Values are enums, written
//! as the names dashboards and alerts use (see the README's table).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use wxtokend_reader::CredentialKind;

use crate::open_platform::directory::AuthorizerState;
use crate::wechat::{Api, ErrorClass};

/// A label value that is one of a fixed set of names.
macro_rules! label_value {
    ($name:ty) => {
        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

/// The `kind` label: a credential kind's name (`access_token`, ...).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Kind(pub CredentialKind);

impl Kind {
    fn as_str(&self) -> &'static str {
        self.0.as_str()
    }
}

label_value!(Kind);
label_value!(Api);
label_value!(AuthorizerState);

/// The `outcome` label of `wxtokend_refresh_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed(ErrorClass),
}

impl Outcome {
    pub(super) const ALL: [Outcome; 5] = [
        Outcome::Success,
        Outcome::Failed(ErrorClass::Transient),
        Outcome::Failed(ErrorClass::DailyQuota),
        Outcome::Failed(ErrorClass::Permanent),
        Outcome::Failed(ErrorClass::InvalidToken),
    ];
}

impl Outcome {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed(class) => class.as_str(),
        }
    }
}

impl From<ErrorClass> for Outcome {
    fn from(class: ErrorClass) -> Self {
        Self::Failed(class)
    }
}

label_value!(Outcome);

/// The `operation` label of the MongoDB metrics: every MongoDB operation
/// the daemon makes, by what it is for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Operation {
    /// Asking a lease for a permit before a WeChat call.
    Permit,
    /// Writing a fetched credential through its lease.
    InsertCredential,
    /// Reading the newest stored credential when a lease is taken.
    LoadCredential,
    /// Reading the access token a ticket is fetched with.
    ReadAccessToken,
    /// Reading the verify ticket a component token is fetched with, or
    /// marking one WeChat refused.
    ReadVerifyTicket,
    /// Noting an error or a spent quota on the lease document.
    LeaseNote,
    /// Renewing the held leases.
    Renew,
    /// Announcing this replica and counting the others.
    Heartbeat,
    /// Looking for free leases and taking them.
    Acquire,
    /// Giving leases back.
    Release,
    /// Reading, deleting and dating refresh requests.
    Requests,
    /// Creating the indexes at startup.
    EnsureIndexes,
    /// The readiness check behind `/readyz`.
    Readiness,
    /// A Redis mirror reading the newest credentials to rewrite them.
    MirrorResync,
    /// The Open Platform callback receiver storing what WeChat pushed.
    Callback,
    /// Reading the Open Platform's authorizer directory, and writing an
    /// authorizer's state or sealed secrets.
    Directory,
}

impl Operation {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Permit => "permit",
            Self::InsertCredential => "insert_credential",
            Self::LoadCredential => "load_credential",
            Self::ReadAccessToken => "read_access_token",
            Self::ReadVerifyTicket => "read_verify_ticket",
            Self::LeaseNote => "lease_note",
            Self::Renew => "renew",
            Self::Heartbeat => "heartbeat",
            Self::Acquire => "acquire",
            Self::Release => "release",
            Self::Requests => "requests",
            Self::EnsureIndexes => "ensure_indexes",
            Self::Readiness => "readiness",
            Self::MirrorResync => "mirror_resync",
            Self::Callback => "callback",
            Self::Directory => "directory",
        }
    }
}

label_value!(Operation);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub account: String,
    pub kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub account: String,
    pub kind: Kind,
    /// `success`, or the error class: `transient`, `permanent`,
    /// `daily_quota`, `invalid_token`.
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabels {
    pub account: String,
}

/// The `api` label: a WeChat API's name (`token`, `jsapi_ticket`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: Api,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub account: String,
    pub api: Api,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallbackLabels {
    /// `stored`, `authorized`, `updateauthorized`, `unauthorized`,
    /// `acknowledged`, `store_error` or a reject's reason.
    pub outcome: String,
}

/// The `component` label: an Open Platform component's appid.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorizerStateLabels {
    pub component: String,
    /// `pending`, `active`, `needs_reauthorization`, `unauthorized`.
    pub state: AuthorizerState,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: Operation,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// The MongoDB command's name (`find`, `insert`, `findAndModify`...).
    pub command: String,
}

/// The `mirror` label: a `[[mirrors]]` entry's `name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub mirror: String,
}
