//! [`Api`]: which WeChat endpoint issues a credential. WeChat counts its
//! daily quotas per API, so the daemon keeps its call ceilings, counters,
//! 45009 stops and forced-refresh counters per (account, API) too: a
//! `getticket` that answers 45009 never stops the access token.

use std::fmt;

use serde::Serialize;
use wxtokend_reader::CredentialKind;

use crate::config::{Platform, TokenEndpoint};

/// A WeChat API that issues credentials, with its own daily quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `GET /cgi-bin/token`.
    Token,
    /// `POST /cgi-bin/stable_token`.
    StableToken,
    /// `GET /cgi-bin/ticket/getticket?type=jsapi`.
    JsapiTicket,
    /// `GET /cgi-bin/ticket/getticket?type=wx_card`.
    WxCardTicket,
    /// WeCom's `GET /cgi-bin/gettoken`.
    WecomToken,
    /// WeCom's `GET /cgi-bin/get_jsapi_ticket`.
    WecomJsapiTicket,
    /// WeCom's `GET /cgi-bin/ticket/get?type=agent_config`.
    AgentConfigTicket,
    /// Open Platform: `POST /cgi-bin/component/api_component_token`.
    ComponentToken,
    /// Open Platform: `POST /cgi-bin/component/api_start_push_ticket`
    /// (asks WeChat to push a verify ticket; issues nothing).
    StartPushTicket,
    /// Open Platform: `POST /cgi-bin/component/api_authorizer_token`
    /// (counted in the authorizer's lease).
    AuthorizerToken,
    /// Open Platform: `POST /cgi-bin/component/api_query_auth`, the
    /// exchange of an authorization code (the authorizer's lease).
    QueryAuth,
    /// Open Platform: `POST /cgi-bin/component/api_get_authorizer_list`
    /// (every authorizer and its refresh token, in pages of at most 500;
    /// counted in the component's lease; issues nothing).
    AuthorizerList,
}

impl Api {
    pub const ALL: [Api; 12] = [
        Self::Token,
        Self::StableToken,
        Self::JsapiTicket,
        Self::WxCardTicket,
        Self::WecomToken,
        Self::WecomJsapiTicket,
        Self::AgentConfigTicket,
        Self::ComponentToken,
        Self::StartPushTicket,
        Self::AuthorizerToken,
        Self::QueryAuth,
        Self::AuthorizerList,
    ];

    /// The API that issues `kind` for an account of `platform` whose
    /// access token comes from `endpoint`.
    pub fn of(platform: Platform, endpoint: TokenEndpoint, kind: CredentialKind) -> Self {
        match (platform, kind) {
            (Platform::Wecom, CredentialKind::AccessToken) => Self::WecomToken,
            (Platform::Wecom, CredentialKind::JsapiTicket) => Self::WecomJsapiTicket,
            (_, CredentialKind::AgentConfigTicket) => Self::AgentConfigTicket,
            // No account has the Open Platform kinds (the configuration
            // never asks for them); an authorizer's tickets come from the
            // same APIs as an account's.
            (_, CredentialKind::AuthorizerJsapiTicket) => Self::JsapiTicket,
            (_, CredentialKind::AuthorizerWxCardTicket) => Self::WxCardTicket,
            (
                _,
                CredentialKind::AccessToken
                | CredentialKind::ComponentAccessToken
                | CredentialKind::AuthorizerAccessToken,
            ) => match endpoint {
                TokenEndpoint::Token => Self::Token,
                TokenEndpoint::StableToken => Self::StableToken,
            },
            (_, CredentialKind::JsapiTicket) => Self::JsapiTicket,
            // WeCom has no card ticket: the configuration refuses it there.
            (_, CredentialKind::WxCardTicket) => Self::WxCardTicket,
        }
    }

    /// The credential kind this API issues (to an account, or to the
    /// component), if it issues one.
    pub fn kind(self) -> Option<CredentialKind> {
        match self {
            Self::Token | Self::StableToken | Self::WecomToken => Some(CredentialKind::AccessToken),
            Self::JsapiTicket | Self::WecomJsapiTicket => Some(CredentialKind::JsapiTicket),
            Self::WxCardTicket => Some(CredentialKind::WxCardTicket),
            Self::AgentConfigTicket => Some(CredentialKind::AgentConfigTicket),
            Self::ComponentToken => Some(CredentialKind::ComponentAccessToken),
            Self::AuthorizerToken | Self::QueryAuth => Some(CredentialKind::AuthorizerAccessToken),
            Self::StartPushTicket | Self::AuthorizerList => None,
        }
    }

    /// The name used in settings (`refresh.daily_call_limits.NAME`), the
    /// lease document, `status` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::StableToken => "stable_token",
            Self::JsapiTicket => "jsapi_ticket",
            Self::WxCardTicket => "wx_card_ticket",
            Self::WecomToken => "wecom_token",
            Self::WecomJsapiTicket => "wecom_jsapi_ticket",
            Self::AgentConfigTicket => "agent_config_ticket",
            Self::ComponentToken => "component_token",
            Self::StartPushTicket => "start_push_ticket",
            Self::AuthorizerToken => "authorizer_token",
            Self::QueryAuth => "query_auth",
            Self::AuthorizerList => "authorizer_list",
        }
    }

    /// The API's path, as WeChat's quota tools name it.
    pub fn cgi_path(self) -> &'static str {
        match self {
            Self::Token => "/cgi-bin/token",
            Self::StableToken => "/cgi-bin/stable_token",
            Self::JsapiTicket | Self::WxCardTicket => "/cgi-bin/ticket/getticket",
            Self::WecomToken => "/cgi-bin/gettoken",
            Self::WecomJsapiTicket => "/cgi-bin/get_jsapi_ticket",
            Self::AgentConfigTicket => "/cgi-bin/ticket/get",
            Self::ComponentToken => "/cgi-bin/component/api_component_token",
            Self::StartPushTicket => "/cgi-bin/component/api_start_push_ticket",
            Self::AuthorizerToken => "/cgi-bin/component/api_authorizer_token",
            Self::QueryAuth => "/cgi-bin/component/api_query_auth",
            Self::AuthorizerList => "/cgi-bin/component/api_get_authorizer_list",
        }
    }

    /// Whether the API is WeCom's (served from `wechat.wecom_base_url`).
    pub fn is_wecom(self) -> bool {
        matches!(
            self,
            Self::WecomToken | Self::WecomJsapiTicket | Self::AgentConfigTicket
        )
    }

    /// The `type` parameter of a ticket API that serves several types.
    pub fn ticket_type(self) -> Option<&'static str> {
        match self {
            Self::JsapiTicket => Some("jsapi"),
            Self::WxCardTicket => Some("wx_card"),
            Self::AgentConfigTicket => Some("agent_config"),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|api| api.as_str() == name)
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configurable_credential_has_its_own_api() {
        use CredentialKind::*;
        use Platform::*;
        let cases = [
            (
                OfficialAccount,
                TokenEndpoint::Token,
                AccessToken,
                Api::Token,
            ),
            (
                MiniProgram,
                TokenEndpoint::StableToken,
                AccessToken,
                Api::StableToken,
            ),
            (
                OfficialAccount,
                TokenEndpoint::Token,
                JsapiTicket,
                Api::JsapiTicket,
            ),
            (
                OfficialAccount,
                TokenEndpoint::Token,
                WxCardTicket,
                Api::WxCardTicket,
            ),
            (Wecom, TokenEndpoint::Token, AccessToken, Api::WecomToken),
            (
                Wecom,
                TokenEndpoint::Token,
                JsapiTicket,
                Api::WecomJsapiTicket,
            ),
            (
                Wecom,
                TokenEndpoint::Token,
                AgentConfigTicket,
                Api::AgentConfigTicket,
            ),
        ];
        for (platform, endpoint, kind, api) in cases {
            assert_eq!(
                Api::of(platform, endpoint, kind),
                api,
                "{platform:?} {kind}"
            );
            assert_eq!(Api::from_name(api.as_str()), Some(api));
            assert_eq!(api.kind(), Some(kind));
        }
    }

    #[test]
    fn every_api_has_its_own_name_and_the_component_apis_their_paths() {
        let names: std::collections::HashSet<_> = Api::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names.len(), Api::ALL.len(), "each API its own quota name");
        for api in Api::ALL {
            assert_eq!(Api::from_name(api.as_str()), Some(api));
        }
        assert_eq!(
            Api::ComponentToken.kind(),
            Some(CredentialKind::ComponentAccessToken)
        );
        assert_eq!(Api::StartPushTicket.kind(), None);
        for api in [Api::AuthorizerToken, Api::QueryAuth] {
            assert_eq!(api.kind(), Some(CredentialKind::AuthorizerAccessToken));
        }
        assert_eq!(Api::AuthorizerList.kind(), None, "a list issues nothing");
        let paths = [
            (Api::AuthorizerToken, "api_authorizer_token"),
            (Api::QueryAuth, "api_query_auth"),
            (Api::AuthorizerList, "api_get_authorizer_list"),
        ];
        for (api, path) in paths {
            assert_eq!(api.cgi_path(), format!("/cgi-bin/component/{path}"));
            assert!(!api.is_wecom());
        }
        assert!(Api::ComponentToken
            .cgi_path()
            .ends_with("/component/api_component_token"));
    }
}
