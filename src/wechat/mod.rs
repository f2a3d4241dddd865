//! The upstream: WeChat's HTTP API. Only this module speaks HTTP.
//!
//! Credentials are fetched here (`mod.rs`, answers in [`answer`]; the Open
//! Platform's calls made with the component token in [`open_platform`]);
//! the quota administration behind `wxtokend quota` is in [`openapi`].
//!
//! The AppSecret travels in the query string of `/cgi-bin/token`, so every
//! error leaving this module is built without the URL, and WeChat's own
//! `errmsg` is scrubbed of the secret before it is kept ([`answer`]).

mod answer;
mod api;
mod errcode;
mod open_platform;
mod openapi;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{redirect, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wxtokend_reader::{AccountId, CredentialKind};

use crate::config::{Account, WechatSettings};
use crate::subject::Component;
use answer::{parse_ack, parse_repeatable};
pub use answer::{
    parse_token_answer, FetchError, FetchedCredential, DEFAULT_MIN_EXPIRES_IN, MAX_EXPIRES_IN,
    MAX_TOKEN_LEN,
};
pub use api::Api;
pub use errcode::{Call, Effect, ErrorClass};
// Named by discovery (issue 15, next step); until then only the tests list.
#[allow(unused_imports)]
pub use open_platform::{AuthorizerPage, Listed, QueryAuth, AUTHORIZER_LIST_MAX_COUNT};
pub use openapi::{CgiPath, RateLimit, WechatQuota};

/// WeChat allows about 20 `force_refresh` calls of `stable_token` a day.
pub const STABLE_TOKEN_FORCED_PER_DAY: i64 = 20;

/// The HTTP client could not be built (the TLS backend failed to load).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientError(#[source] reqwest::Error);

/// One of the `wechat.max_concurrent_calls` slots for a call to WeChat. The
/// refresher takes it *before* asking for a permit, so that the time between
/// a permit and the call it allows is not spent waiting behind other calls.
#[derive(Debug)]
pub struct CallSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// A long-lived client for WeChat's API, shared by all accounts.
#[derive(Debug, Clone)]
pub struct WechatClient {
    http: reqwest::Client,
    base: Url,
    wecom_base: Url,
    max_response_bytes: usize,
    /// Shortest `expires_in` accepted (`wechat.min_expires_in`).
    min_expires_in: Duration,
    /// Bounds calls in flight (`wechat.max_concurrent_calls`), so thousands
    /// of accounts falling due together do not storm WeChat.
    in_flight: Arc<Semaphore>,
}

impl WechatClient {
    pub fn new(settings: &WechatSettings) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            // A redirect would carry the secret to another host.
            .redirect(redirect::Policy::none())
            .https_only(!settings.allow_http)
            .user_agent(concat!("wxtokend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError)?;
        Ok(Self {
            http,
            base: settings.base_url.clone(),
            wecom_base: settings.wecom_base_url.clone(),
            max_response_bytes: settings.max_response_bytes,
            min_expires_in: settings.min_expires_in,
            in_flight: Arc::new(Semaphore::new(settings.max_concurrent_calls)),
        })
    }

    /// The account's access token, from its platform's endpoint:
    /// `GET /cgi-bin/token`, `POST /cgi-bin/stable_token` (with
    /// `force_refresh` when `force`), or WeCom's `GET /cgi-bin/gettoken`.
    /// `held` is the token the refresher holds: WeChat answering it again
    /// is a repeat, accepted whatever its `expires_in` (see
    /// [`answer::parse_repeatable`]).
    #[tracing::instrument(name = "fetch_access_token", skip_all, fields(account = %account.id))]
    pub async fn fetch_access_token(
        &self,
        _slot: &CallSlot,
        account: &Account,
        force: bool,
        held: Option<&SecretString>,
    ) -> Result<FetchedCredential, FetchError> {
        let secret = account.secret.expose_secret();
        let api = account.api(CredentialKind::AccessToken);
        let mut url = self.url(api);
        let (body, call) = match api {
            Api::WecomToken => {
                url.query_pairs_mut()
                    .append_pair("corpid", account.corp_id())
                    .append_pair("corpsecret", secret);
                (self.get(url).await?, Call::WecomIssueToken)
            }
            Api::StableToken => {
                let request = serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": account.id.as_str(),
                    "secret": secret,
                    "force_refresh": force,
                });
                let response = self.http.post(url).json(&request).send().await;
                (self.read(response).await?, Call::IssueToken)
            }
            _ => {
                url.query_pairs_mut()
                    .append_pair("grant_type", "client_credential")
                    .append_pair("appid", account.id.as_str())
                    .append_pair("secret", secret);
                (self.get(url).await?, Call::IssueToken)
            }
        };
        // WeCom's gettoken answers the current token with its time left:
        // a first fetch (nothing stored yet) may get one near its end,
        // which is still worth storing rather than leaving readers with
        // nothing until it dies.
        let floor = match call {
            Call::WecomIssueToken => Duration::from_secs(1),
            _ => self.min_expires_in,
        };
        parse_repeatable(
            &body,
            CredentialKind::AccessToken,
            call,
            &[&account.secret],
            floor,
            held,
        )
    }

    /// A ticket, fetched with a currently valid access token; `held` as
    /// for [`Self::fetch_access_token`].
    /// `api` is the ticket's (an account's or an authorizer's).
    #[tracing::instrument(name = "fetch_ticket", skip_all, fields(account = %app_id, %kind))]
    pub async fn fetch_ticket(
        &self,
        _slot: &CallSlot,
        (app_id, api): (&AccountId, Api),
        kind: CredentialKind,
        access_token: &SecretString,
        held: Option<&SecretString>,
    ) -> Result<FetchedCredential, FetchError> {
        let mut url = self.url(api);
        let ticket_type = api.ticket_type();
        let call = if api.is_wecom() {
            Call::WecomUseToken
        } else {
            Call::UseToken
        };
        url.query_pairs_mut()
            .append_pair("access_token", access_token.expose_secret());
        if let Some(ticket_type) = ticket_type {
            url.query_pairs_mut().append_pair("type", ticket_type);
        }
        let body = self.get(url).await?;
        parse_repeatable(
            &body,
            kind,
            call,
            &[access_token],
            self.min_expires_in,
            held,
        )
    }

    /// An Open Platform component's token, minted with a verify ticket
    /// (`POST /cgi-bin/component/api_component_token`); `held` as for
    /// [`Self::fetch_access_token`]. Neither the secret nor the ticket can
    /// be in an error.
    #[tracing::instrument(name = "fetch_component_token", skip_all, fields(component = %component.appid))]
    pub async fn fetch_component_token(
        &self,
        _slot: &CallSlot,
        component: &Component,
        ticket: &SecretString,
        held: Option<&SecretString>,
    ) -> Result<FetchedCredential, FetchError> {
        let request = serde_json::json!({
            "component_appid": component.appid.as_str(),
            "component_appsecret": component.secret.expose_secret(),
            "component_verify_ticket": ticket.expose_secret(),
        });
        let url = self.url(Api::ComponentToken);
        let response = self.http.post(url).json(&request).send().await;
        let body = self.read(response).await?;
        parse_repeatable(
            &body,
            CredentialKind::ComponentAccessToken,
            Call::IssueComponentToken,
            &[&component.secret, ticket],
            self.min_expires_in,
            held,
        )
    }

    /// Asks WeChat to push a verify ticket to the platform's callback URL
    /// (`POST /cgi-bin/component/api_start_push_ticket`; its body names
    /// the secret `component_secret`, unlike the token call).
    #[tracing::instrument(name = "start_push_ticket", skip_all, fields(component = %component.appid))]
    pub async fn start_push_ticket(
        &self,
        _slot: &CallSlot,
        component: &Component,
    ) -> Result<(), FetchError> {
        let request = serde_json::json!({
            "component_appid": component.appid.as_str(),
            "component_secret": component.secret.expose_secret(),
        });
        let url = self.url(Api::StartPushTicket);
        let response = self.http.post(url).json(&request).send().await;
        let body = self.read(response).await?;
        parse_ack(&body, &[&component.secret], Call::StartPushTicket)
    }

    /// Where `api` is served: WeCom's APIs from `wechat.wecom_base_url`,
    /// the others from `wechat.base_url`.
    fn url(&self, api: Api) -> Url {
        let base = if api.is_wecom() {
            &self.wecom_base
        } else {
            &self.base
        };
        endpoint(base, api.cgi_path().trim_start_matches('/'))
    }

    /// Sends a GET and reads at most `max_response_bytes` of the body.
    async fn get(&self, url: Url) -> Result<Vec<u8>, FetchError> {
        let response = self.http.get(url).send().await;
        self.read(response).await
    }

    /// Waits for a free slot among `wechat.max_concurrent_calls`; every
    /// fetch needs one.
    pub async fn slot(&self) -> CallSlot {
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = Arc::clone(&self.in_flight).acquire_owned().await;
        CallSlot(permit.unwrap_or_else(|_| unreachable!("the call semaphore is never closed")))
    }

    /// Checks the status and reads at most `max_response_bytes` of the body.
    async fn read(
        &self,
        response: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Vec<u8>, FetchError> {
        let mut response = response.map_err(transport_error)?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::HttpStatus(response.status().as_u16()));
        }
        let limit = self.max_response_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(FetchError::TooLarge(limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

/// Turns a reqwest error into one that cannot show the URL (and its secret).
fn transport_error(error: reqwest::Error) -> FetchError {
    if error.is_timeout() {
        return FetchError::Timeout;
    }
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    FetchError::Transport(text)
}
