//! The Open Platform's calls made with the component token, on an
//! authorizer's behalf or the platform's: `api_authorizer_token`,
//! `api_query_auth` and `api_get_authorizer_list` (POST JSON, the token in
//! `?component_access_token=` as every SDK sends it), and their answers.
//!
//! Each call's errors are scrubbed of every secret it was made with (the
//! component secret, the component token, a refresh token, an
//! authorization code); the answers' refresh tokens are `SecretString`s,
//! so `Debug` never shows one.

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use wxtokend_reader::{AccountId, CredentialKind};

use super::answer::{check_value, credential, read_json, refused, FetchError, FetchedCredential};
use super::{Api, Call, CallSlot, WechatClient};
use crate::subject::Component;

/// WeChat's largest page of `api_get_authorizer_list` ("最大为 500").
pub const AUTHORIZER_LIST_MAX_COUNT: u32 = 500;

/// What exchanging an authorization code (`api_query_auth`) gave.
#[derive(Debug)]
pub struct QueryAuth {
    /// Checked to be shaped as an appid; the caller checks it is the
    /// authorizer it exchanged the code for.
    pub authorizer_appid: String,
    /// The authorizer's first token; WeChat sends it (and the refresh
    /// token) only when the account granted the platform some API
    /// permission ("在授权的公众号/小程序具备 API 权限时,才有此返回值").
    pub token: Option<FetchedCredential>,
    pub refresh_token: Option<SecretString>,
    /// The permission sets granted (`func_info[].funcscope_category.id`),
    /// informational.
    #[cfg_attr(not(test), allow(dead_code))]
    pub func_info: Vec<i64>,
}

/// One page of `api_get_authorizer_list`.
#[derive(Debug)]

pub struct AuthorizerPage {
    /// Authorizers in all pages.
    pub total_count: u64,
    pub list: Vec<Listed>,
    /// Entries of this page left out because they were malformed (an
    /// appid WeChat never issues, a refresh token that is no token): the
    /// caller logs the count; one bad entry never hides the others.
    pub skipped: usize,
}

/// One authorizer as `api_get_authorizer_list` lists it.
#[derive(Debug)]

pub struct Listed {
    pub authorizer_appid: AccountId,
    /// Absent when the authorization code was never exchanged.
    pub refresh_token: Option<SecretString>,
    /// When it authorized the platform, if WeChat said.
    pub auth_time: Option<SystemTime>,
}

impl WechatClient {
    /// An authorizer's token, and the refresh token WeChat answered
    /// (`POST /cgi-bin/component/api_authorizer_token`): WeChat echoes the
    /// one sent (it changes only with a re-authorization), but what it
    /// answers is authoritative; `None` when absent or empty. `held` as
    /// for [`Self::fetch_access_token`].
    #[tracing::instrument(
        name = "fetch_authorizer_token",
        skip_all,
        fields(component = %component.appid, %authorizer)
    )]
    pub async fn fetch_authorizer_token(
        &self,
        _slot: &CallSlot,
        component: &Component,
        component_token: &SecretString,
        authorizer: &AccountId,
        refresh_token: &SecretString,
        held: Option<&SecretString>,
    ) -> Result<(FetchedCredential, Option<SecretString>), FetchError> {
        let request = json!({
            "component_appid": component.appid.as_str(),
            "authorizer_appid": authorizer.as_str(),
            "authorizer_refresh_token": refresh_token.expose_secret(),
        });
        let body = self
            .post_with_component_token(Api::AuthorizerToken, component_token, &request)
            .await?;
        let secrets = [&component.secret, component_token, refresh_token];
        parse_authorizer_answer(&body, &secrets, self.min_expires_in, held)
    }

    /// Exchanges an authorization code for the authorizer's first token
    /// and its refresh token (`POST /cgi-bin/component/api_query_auth`).
    #[tracing::instrument(name = "query_auth", skip_all, fields(component = %component.appid))]
    pub async fn query_auth(
        &self,
        _slot: &CallSlot,
        component: &Component,
        component_token: &SecretString,
        code: &SecretString,
    ) -> Result<QueryAuth, FetchError> {
        let request = json!({
            "component_appid": component.appid.as_str(),
            "authorization_code": code.expose_secret(),
        });
        let body = self
            .post_with_component_token(Api::QueryAuth, component_token, &request)
            .await?;
        let secrets = [&component.secret, component_token, code];
        parse_query_auth(&body, &secrets, self.min_expires_in)
    }

    /// One page of the platform's authorizers, `count` (at most
    /// [`AUTHORIZER_LIST_MAX_COUNT`]; more is asked as that) from `offset`
    /// (`POST /cgi-bin/component/api_get_authorizer_list`).

    #[tracing::instrument(
        name = "authorizer_list",
        skip_all,
        fields(component = %component.appid, offset, count)
    )]
    pub async fn authorizer_list(
        &self,
        _slot: &CallSlot,
        component: &Component,
        component_token: &SecretString,
        offset: u32,
        count: u32,
    ) -> Result<AuthorizerPage, FetchError> {
        let request = json!({
            "component_appid": component.appid.as_str(),
            "offset": offset,
            "count": count.min(AUTHORIZER_LIST_MAX_COUNT),
        });
        let body = self
            .post_with_component_token(Api::AuthorizerList, component_token, &request)
            .await?;
        parse_authorizer_list(&body, &[&component.secret, component_token])
    }

    /// POSTs `request` to `api` with `?component_access_token=`, and reads
    /// the answer as every call does.
    async fn post_with_component_token(
        &self,
        api: Api,
        component_token: &SecretString,
        request: &Value,
    ) -> Result<Vec<u8>, FetchError> {
        let mut url = self.url(api);
        url.query_pairs_mut()
            .append_pair("component_access_token", component_token.expose_secret());
        let response = self.http.post(url).json(request).send().await;
        self.read(response).await
    }
}

/// `api_authorizer_token`'s answer: `{authorizer_access_token,
/// expires_in, authorizer_refresh_token}` or `{errcode, errmsg}`.
#[derive(Deserialize)]
struct AuthorizerTokenResponse {
    authorizer_access_token: Option<String>,
    expires_in: Option<i64>,
    authorizer_refresh_token: Option<String>,
    errcode: Option<i64>,
    errmsg: Option<String>,
}

/// Parses `api_authorizer_token`'s answer; `held` and `min_expires_in` as
/// for a token ([`super::answer::parse_repeatable`]). A refresh token is
/// checked like a token: a malformed one refuses the whole answer.
fn parse_authorizer_answer(
    body: &[u8],
    secrets: &[&SecretString],
    min_expires_in: Duration,
    held: Option<&SecretString>,
) -> Result<(FetchedCredential, Option<SecretString>), FetchError> {
    let parsed: AuthorizerTokenResponse = read_json(body)?;
    refused(parsed.errcode, parsed.errmsg, secrets, Call::ComponentUse)?;
    let token = credential(
        CredentialKind::AuthorizerAccessToken.value_field(),
        parsed.authorizer_access_token,
        parsed.expires_in,
        min_expires_in,
        held,
    )?;
    Ok((token, refresh_token(parsed.authorizer_refresh_token)?))
}

/// A refresh token WeChat sent: `None` when absent or empty (nothing to
/// store), checked like a token otherwise.
fn refresh_token(value: Option<String>) -> Result<Option<SecretString>, FetchError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(value) => check_value("authorizer_refresh_token", value).map(Some),
    }
}

/// `api_query_auth`'s answer: `{authorization_info: {…}}` or
/// `{errcode, errmsg}`.
#[derive(Deserialize)]
struct QueryAuthResponse {
    authorization_info: Option<AuthorizationInfo>,
    errcode: Option<i64>,
    errmsg: Option<String>,
}

#[derive(Deserialize)]
struct AuthorizationInfo {
    authorizer_appid: Option<String>,
    authorizer_access_token: Option<String>,
    expires_in: Option<i64>,
    authorizer_refresh_token: Option<String>,
    func_info: Option<Value>,
}

fn parse_query_auth(
    body: &[u8],
    secrets: &[&SecretString],
    min_expires_in: Duration,
) -> Result<QueryAuth, FetchError> {
    let parsed: QueryAuthResponse = read_json(body)?;
    refused(parsed.errcode, parsed.errmsg, secrets, Call::ComponentUse)?;
    let info = parsed
        .authorization_info
        .ok_or_else(|| FetchError::InvalidResponse("authorization_info is missing".into()))?;
    let authorizer_appid = info
        .authorizer_appid
        .filter(|id| appid(id).is_some())
        .ok_or_else(|| {
            FetchError::InvalidResponse("authorizer_appid is missing or malformed".into())
        })?;
    let token = match info.authorizer_access_token {
        None => None,
        value => Some(credential(
            CredentialKind::AuthorizerAccessToken.value_field(),
            value,
            info.expires_in,
            min_expires_in,
            None,
        )?),
    };
    Ok(QueryAuth {
        authorizer_appid,
        token,
        refresh_token: refresh_token(info.authorizer_refresh_token)?,
        func_info: func_info(info.func_info.as_ref()),
    })
}

/// The ids of `[{"funcscope_category": {"id": N}}, …]`; anything else is
/// left out (the list is informational).
fn func_info(value: Option<&Value>) -> Vec<i64> {
    let Some(Value::Array(entries)) = value else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| e.pointer("/funcscope_category/id")?.as_i64())
        .collect()
}

/// `api_get_authorizer_list`'s answer: `{total_count, list: […]}` or
/// `{errcode, errmsg}`.
#[derive(Deserialize)]
struct ListResponse {
    total_count: Option<i64>,
    list: Option<Vec<Value>>,
    errcode: Option<i64>,
    errmsg: Option<String>,
}

#[derive(Deserialize)]
struct ListedEntry {
    authorizer_appid: String,
    refresh_token: Option<String>,
    auth_time: Option<i64>,
}

fn parse_authorizer_list(
    body: &[u8],
    secrets: &[&SecretString],
) -> Result<AuthorizerPage, FetchError> {
    let parsed: ListResponse = read_json(body)?;
    refused(parsed.errcode, parsed.errmsg, secrets, Call::ComponentUse)?;
    let total_count = parsed
        .total_count
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| FetchError::InvalidResponse("total_count is missing or negative".into()))?;
    // WeChat may leave `list` out of an empty page.
    let entries = parsed.list.unwrap_or_default();
    let sent = entries.len();
    let list: Vec<Listed> = entries.into_iter().filter_map(listed).collect();
    Ok(AuthorizerPage {
        total_count,
        skipped: sent - list.len(),
        list,
    })
}

/// One list entry, if well formed.
fn listed(entry: Value) -> Option<Listed> {
    let entry: ListedEntry = serde_json::from_value(entry).ok()?;
    Some(Listed {
        authorizer_appid: appid(&entry.authorizer_appid)?,
        refresh_token: refresh_token(entry.refresh_token).ok()?,
        auth_time: entry
            .auth_time
            .and_then(|t| u64::try_from(t).ok())
            .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t)),
    })
}

/// An appid as WeChat issues them (letters, digits, `_`, `-`; never `:`,
/// which lease ids use as a separator), or `None`.
fn appid(value: &str) -> Option<AccountId> {
    let shaped = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    shaped.then(|| AccountId::new(value))
}

#[cfg(test)]
mod tests;
