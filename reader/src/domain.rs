//! The vocabulary shared by the reader and the daemon: what an account is,
//! which kinds of credential exist, and how one stored credential looks in
//! memory.

use std::fmt;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The configured id of an account: the appid for Official Accounts and Mini
/// Programs, `corpid/agentid` for WeCom apps. It is what business services
/// query by (`app_id` in MongoDB).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id WeChat's JS-SDK calls `appId`: the appid, or for a WeCom id
    /// `corpid/agentid` the corpid.
    pub fn js_app_id(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(corp, _)| corp)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl std::borrow::Borrow<str> for AccountId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for AccountId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

/// Whose credential it is: an account (`app_id` alone), or an account that
/// authorized an Open Platform component (`app_id` with `component_appid`:
/// one account may authorize several platforms, each with tokens of its
/// own). A component's own token belongs to `Owner::account(component)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub app_id: AccountId,
    pub component_appid: Option<AccountId>,
}

impl Owner {
    pub fn account(app_id: AccountId) -> Self {
        Self {
            app_id,
            component_appid: None,
        }
    }

    pub fn authorizer(component_appid: AccountId, app_id: AccountId) -> Self {
        Self {
            app_id,
            component_appid: Some(component_appid),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.component_appid {
            None => f.pad(self.app_id.as_str()),
            Some(component) => f.pad(&format!("{} (component {component})", self.app_id)),
        }
    }
}

/// A kind of credential. Each kind has its own MongoDB collection and keeps
/// WeChat's own name for the value field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    AccessToken,
    /// JS-SDK ticket (Official Accounts: `ticket/getticket?type=jsapi`;
    /// WeCom: the corporation's `get_jsapi_ticket`).
    JsapiTicket,
    /// WeChat Card ticket (`ticket/getticket?type=wx_card`).
    WxCardTicket,
    /// WeCom app ticket for `wx.agentConfig` (`ticket/get?type=agent_config`).
    AgentConfigTicket,
    /// Open Platform: the platform's own token
    /// (`component/api_component_token`), `app_id` = the component appid.
    ComponentAccessToken,
    /// Open Platform: the token a platform holds for an account that
    /// authorized it (`component/api_authorizer_token`); its documents also
    /// name the platform (`component_appid`).
    AuthorizerAccessToken,
    /// Open Platform: an authorizer's JS-SDK ticket, fetched with its
    /// authorizer token.
    AuthorizerJsapiTicket,
    /// Open Platform: an authorizer's WeChat Card ticket.
    AuthorizerWxCardTicket,
}

impl CredentialKind {
    /// How many kinds there are.
    pub const COUNT: usize = 8;

    pub const ALL: [CredentialKind; Self::COUNT] = [
        Self::AccessToken,
        Self::JsapiTicket,
        Self::WxCardTicket,
        Self::AgentConfigTicket,
        Self::ComponentAccessToken,
        Self::AuthorizerAccessToken,
        Self::AuthorizerJsapiTicket,
        Self::AuthorizerWxCardTicket,
    ];

    /// The kinds of `[[accounts]]` (`app_id` alone names the owner).
    pub const ACCOUNT_KINDS: [CredentialKind; 4] = [
        Self::AccessToken,
        Self::JsapiTicket,
        Self::WxCardTicket,
        Self::AgentConfigTicket,
    ];

    /// The kinds of the Open Platform: the component's token and its
    /// authorizers' credentials.
    pub const OPEN_PLATFORM_KINDS: [CredentialKind; 4] = [
        Self::ComponentAccessToken,
        Self::AuthorizerAccessToken,
        Self::AuthorizerJsapiTicket,
        Self::AuthorizerWxCardTicket,
    ];

    /// The collection holding this kind's history.
    pub fn collection(self) -> &'static str {
        match self {
            Self::AccessToken => "access_tokens",
            Self::JsapiTicket => "jsapi_tickets",
            Self::WxCardTicket => "wx_card_tickets",
            Self::AgentConfigTicket => "agent_config_tickets",
            Self::ComponentAccessToken => "component_access_tokens",
            Self::AuthorizerAccessToken => "authorizer_access_tokens",
            Self::AuthorizerJsapiTicket => "authorizer_jsapi_tickets",
            Self::AuthorizerWxCardTicket => "authorizer_wx_card_tickets",
        }
    }

    /// The document field holding the credential, as WeChat names it.
    pub fn value_field(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::ComponentAccessToken => "component_access_token",
            Self::AuthorizerAccessToken => "authorizer_access_token",
            Self::JsapiTicket
            | Self::WxCardTicket
            | Self::AgentConfigTicket
            | Self::AuthorizerJsapiTicket
            | Self::AuthorizerWxCardTicket => "ticket",
        }
    }

    /// Position in [`CredentialKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            Self::AccessToken => 0,
            Self::JsapiTicket => 1,
            Self::WxCardTicket => 2,
            Self::AgentConfigTicket => 3,
            Self::ComponentAccessToken => 4,
            Self::AuthorizerAccessToken => 5,
            Self::AuthorizerJsapiTicket => 6,
            Self::AuthorizerWxCardTicket => 7,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::JsapiTicket => "jsapi_ticket",
            Self::WxCardTicket => "wx_card_ticket",
            Self::AgentConfigTicket => "agent_config_ticket",
            Self::ComponentAccessToken => "component_access_token",
            Self::AuthorizerAccessToken => "authorizer_access_token",
            Self::AuthorizerJsapiTicket => "authorizer_jsapi_ticket",
            Self::AuthorizerWxCardTicket => "authorizer_wx_card_ticket",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// A ticket (fetched with an access token), not an access token.
    pub fn is_ticket(self) -> bool {
        matches!(
            self,
            Self::JsapiTicket
                | Self::WxCardTicket
                | Self::AgentConfigTicket
                | Self::AuthorizerJsapiTicket
                | Self::AuthorizerWxCardTicket
        )
    }

    /// A credential of an account that authorized an Open Platform
    /// component: its documents name the component (`component_appid`).
    pub fn is_authorizer(self) -> bool {
        matches!(
            self,
            Self::AuthorizerAccessToken
                | Self::AuthorizerJsapiTicket
                | Self::AuthorizerWxCardTicket
        )
    }

    /// The access token this kind is fetched with (a ticket's), if any.
    pub fn access_token_kind(self) -> Option<CredentialKind> {
        match self {
            Self::JsapiTicket | Self::WxCardTicket | Self::AgentConfigTicket => {
                Some(Self::AccessToken)
            }
            Self::AuthorizerJsapiTicket | Self::AuthorizerWxCardTicket => {
                Some(Self::AuthorizerAccessToken)
            }
            Self::AccessToken | Self::ComponentAccessToken | Self::AuthorizerAccessToken => None,
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Position of a credential in its account's history: 1, 2, 3… The newest
/// credential is the one with the highest generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub i64);

impl Generation {
    pub const FIRST: Generation = Generation(1);

    pub fn next(self) -> Generation {
        Generation(self.0 + 1)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a credential was fetched; stored with it for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshReason {
    /// No usable credential was stored when the daemon started.
    Startup,
    /// The stored credential entered its refresh margin.
    Scheduled,
    /// A business service reported that WeChat rejected the newest credential.
    ReportedInvalid,
    /// An operator asked for a refresh.
    Manual,
}

impl RefreshReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Scheduled => "scheduled",
            Self::ReportedInvalid => "reported_invalid",
            Self::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Startup,
            Self::Scheduled,
            Self::ReportedInvalid,
            Self::Manual,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RefreshReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One stored credential, as business code reads it. The value is a
/// [`SecretString`]: call `expose_secret()` where you send it to WeChat.
#[derive(Clone)]
pub struct Credential {
    pub app_id: AccountId,
    /// The Open Platform component the account authorized, for the
    /// authorizer kinds ([`CredentialKind::is_authorizer`]); `None` for
    /// every other kind.
    pub component_appid: Option<AccountId>,
    pub kind: CredentialKind,
    pub value: SecretString,
    pub expires_in: Duration,
    pub fetched_at: SystemTime,
    pub expires_at: SystemTime,
    pub generation: Generation,
    pub reason: Option<RefreshReason>,
    pub fetched_by: String,
}

impl Credential {
    /// Whose credential it is.
    pub fn owner(&self) -> Owner {
        Owner {
            app_id: self.app_id.clone(),
            component_appid: self.component_appid.clone(),
        }
    }

    /// Time left before WeChat stops accepting it (zero once expired).
    pub fn time_left(&self, now: SystemTime) -> Duration {
        self.expires_at.duration_since(now).unwrap_or_default()
    }

    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.expires_at > now
    }

    /// The credential value, for sending to WeChat.
    pub fn secret(&self) -> &str {
        self.value.expose_secret()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("app_id", &self.app_id)
            .field("component_appid", &self.component_appid)
            .field("kind", &self.kind)
            .field("value", &"****")
            .field("expires_at", &self.expires_at)
            .field("generation", &self.generation)
            .field("reason", &self.reason)
            .field("fetched_by", &self.fetched_by)
            .finish()
    }
}
