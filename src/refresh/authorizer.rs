//! What the refresher of an authorizer's token does besides what every
//! refresher does. Its inputs are read from MongoDB before the call: the
//! component token (stored by the component's holder) and the
//! authorizer's sealed secrets (`authorizer_secrets`). A pending
//! authorization code is exchanged first (`api_query_auth`, under a permit
//! of that API); then the refresh token mints each token
//! (`api_authorizer_token`). A refresh token WeChat answers that differs
//! from the one sent replaces it by compare-and-swap on the version read
//! before the call, so a newer one written meanwhile (a re-authorization)
//! is never overwritten. What WeChat says of the authorizer goes to the
//! directory: `active` after an exchange, `needs_reauthorization` on
//! 61023, `unauthorized` on 61003 (its lease is then given back).

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use wxtokend_reader::{AccountId, Credential, CredentialKind, Owner};

use super::{Input, Refresher};
use crate::metrics::Operation;
use crate::open_platform::directory::{AuthorizerState, Directory};
use crate::open_platform::secrets::{Cas, Secrets, Source, Version};
use crate::store::StoreError;
use crate::subject::Component;
use crate::wechat::{CallSlot, Effect, FetchError, FetchedCredential};

/// An authorization code to exchange.
#[derive(Debug)]
pub(crate) struct CodeInput {
    component_token: Credential,
    code: SecretString,
    /// A refresh token is stored too (an earlier authorization's).
    refresh_token_stored: bool,
    /// The event's `CreateTime`: the code is cleared only if no newer one
    /// replaced it.
    event_time: std::time::SystemTime,
}

/// A refresh token to mint a token with.
#[derive(Debug)]
pub(crate) struct RefreshInput {
    component_token: Credential,
    refresh_token: SecretString,
    /// Its version: a new refresh token answered replaces it only if
    /// nobody wrote since.
    version: Version,
}

impl CodeInput {
    pub(super) fn component_token(&self) -> &Credential {
        &self.component_token
    }

    pub(super) fn refresh_token_stored(&self) -> bool {
        self.refresh_token_stored
    }
}

impl RefreshInput {
    pub(super) fn component_token(&self) -> &Credential {
        &self.component_token
    }
}

impl Refresher {
    /// The authorizer's store of sealed secrets (the component has a key:
    /// the coordinator keeps no authorizer otherwise).
    fn secrets(&self, component: &Component) -> Option<Secrets> {
        let sealing = component.sealing.clone()?;
        Some(Secrets::new(
            self.ctx.store.clone(),
            sealing,
            self.ctx.instance_id.as_ref(),
        ))
    }

    /// What the authorizer's next call needs, or how long to wait: the
    /// component token, then a pending unexpired code, else the refresh
    /// token.
    pub(super) async fn authorizer_input(
        &mut self,
        component: &Arc<Component>,
        app_id: &AccountId,
    ) -> Result<Input, Duration> {
        let poll = self.ctx.refresh.request_poll_interval;
        let owner = Owner::account(component.appid.clone());
        let read = async {
            let credentials = self.ctx.store.credentials();
            let now = Some(self.now());
            Ok(credentials
                .scan_newest_owned(CredentialKind::ComponentAccessToken, &owner, now)
                .await?)
        };
        let component_token = match self.ctx.observe(Operation::ReadAccessToken, read).await {
            Ok(newest) => match newest.credential {
                Some(token) => token,
                None => {
                    tracing::debug!("waiting for a valid component_access_token");
                    return Err(poll);
                }
            },
            Err(e) => return Err(self.store_failed(&e, "cannot read the component token")),
        };
        let Some(secrets) = self.secrets(component) else {
            return Err(self.ctx.refresh.permanent_error_retry);
        };
        let read = secrets.read(&component.appid, app_id);
        let stored = match self.ctx.observe(Operation::Directory, read).await {
            Ok(stored) => stored,
            Err(e) => return Err(self.store_failed(&e, "cannot read the authorizer's secrets")),
        };
        let now = self.now();
        if let Some(pending) = stored.code.filter(|c| c.expires_at > now) {
            match pending.code {
                Ok(code) => {
                    self.idle = None;
                    return Ok(Input::Code(CodeInput {
                        component_token,
                        code,
                        refresh_token_stored: matches!(stored.refresh_token, Some(Ok(_))),
                        event_time: pending.event_time,
                    }));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the authorization code cannot be opened (another sealing key?); it is left")
                }
            }
        }
        if matches!(stored.refresh_token, Some(Ok(_))) {
            self.idle = None;
        }
        match stored.refresh_token {
            Some(Ok(refresh_token)) => Ok(Input::RefreshToken(RefreshInput {
                component_token,
                refresh_token,
                version: stored.version,
            })),
            Some(Err(e)) => {
                tracing::error!(error = %e, "the authorizer's refresh token cannot be opened: is open_platform.refresh_token_key_file the key it was sealed with?");
                Err(self.ctx.refresh.permanent_error_retry)
            }
            None => {
                // An authorization event (its code) or discovery's repair
                // wakes this refresher at once (the coordinator sees
                // either in the directory); the wait only backs off the
                // reads, doubling up to `permanent_error_retry`.
                let wait = self
                    .idle
                    .map_or(poll * 5, |wait| wait * 2)
                    .min(self.ctx.refresh.permanent_error_retry.max(poll * 5));
                if self.idle.is_none() {
                    tracing::warn!("no refresh token and no authorization code: waiting for the account to authorize the platform again");
                }
                self.idle = Some(wait);
                Err(wait)
            }
        }
    }

    /// `api_query_auth`: the code exchanged, the refresh token stored (by
    /// compare-and-swap), the code cleared and the authorizer `active`,
    /// before the first token is handed on to be stored.
    pub(super) async fn exchange_code(
        &self,
        slot: &CallSlot,
        component: &Component,
        app_id: &AccountId,
        input: &CodeInput,
    ) -> Result<FetchedCredential, FetchError> {
        let wechat = &self.ctx.wechat;
        let answer = wechat
            .query_auth(slot, component, &input.component_token.value, &input.code)
            .await?;
        if answer.authorizer_appid != app_id.as_str() {
            return Err(FetchError::InvalidResponse(
                "api_query_auth answered for another authorizer".into(),
            ));
        }
        let Some(secrets) = self.secrets(component) else {
            return Err(FetchError::InvalidResponse("no sealing key".into()));
        };
        let Some(refresh_token) = &answer.refresh_token else {
            // The account granted the platform no API: nothing to keep.
            let clear = secrets.clear_code(&component.appid, app_id, input.event_time);
            self.noted(clear, "cannot clear the exchanged code").await;
            return Err(FetchError::InvalidResponse(
                "api_query_auth answered no refresh token: the account granted the platform no API"
                    .into(),
            ));
        };
        // The code is used at WeChat: its refresh token exists nowhere else.
        // Stored (with the code cleared in the same write) before anything,
        // tried again within the call's stretch of the lease.
        let mut stored = None;
        for _ in 0..3 {
            let store = secrets.store_exchanged(
                &component.appid,
                app_id,
                input.event_time,
                refresh_token,
                self.lease.term(),
            );
            stored = self
                .noted(store, "cannot store the authorizer's refresh token")
                .await;
            if stored.is_some() {
                break;
            }
        }
        match stored {
            Some(true) => {}
            Some(false) => {
                tracing::info!(
                    "a newer authorization replaced this code meanwhile: its own exchange follows"
                );
                return Err(FetchError::InvalidResponse(
                    "the exchanged code was replaced by a newer authorization".into(),
                ));
            }
            None => tracing::error!(
                "the refresh token of an exchanged code could not be stored: the account may \
                 have to authorize the platform again if the token below is lost too"
            ),
        }
        let directory = Directory::new(self.ctx.store.clone());
        let set = directory.set_state(
            &component.appid,
            app_id,
            AuthorizerState::Active,
            "query_auth",
        );
        self.noted(set, "cannot mark the authorizer active").await;
        tracing::info!("authorization code exchanged: the authorizer is active");
        answer.token.ok_or_else(|| {
            FetchError::InvalidResponse(
                "api_query_auth answered no token: the account granted the platform no API".into(),
            )
        })
    }

    /// `api_authorizer_token`: the token; a different refresh token
    /// answered replaces the stored one if nobody wrote since it was read.
    pub(super) async fn refresh_authorizer(
        &self,
        slot: &CallSlot,
        component: &Component,
        app_id: &AccountId,
        input: &RefreshInput,
        held: Option<&SecretString>,
    ) -> Result<FetchedCredential, FetchError> {
        let (fetched, answered) = self
            .ctx
            .wechat
            .fetch_authorizer_token(
                slot,
                component,
                &input.component_token.value,
                app_id,
                &input.refresh_token,
                held,
            )
            .await?;
        let changed =
            answered.filter(|rt| rt.expose_secret() != input.refresh_token.expose_secret());
        if let (Some(refresh_token), Some(secrets)) = (changed, self.secrets(component)) {
            let replace = secrets.replace_refresh_token(
                &component.appid,
                app_id,
                input.version,
                &refresh_token,
                Source::AuthorizerToken,
                Some(self.lease.term()),
            );
            match self.noted(replace, "cannot store the new refresh token").await {
                Some(Cas::Won(_)) => tracing::info!("WeChat answered a new refresh token: stored"),
                Some(Cas::Lost) => tracing::debug!(
                    "WeChat answered a new refresh token, but a newer one was stored meanwhile: kept"
                ),
                None => {}
            }
        }
        Ok(fetched)
    }

    /// What WeChat's refusal says of the authorizer, in the directory and
    /// its secrets.
    /// `sent_at` (MongoDB's clock, when the call was sent) guards each
    /// write: an authorization event applied since is newer than the
    /// refusal, and stands.
    pub(super) async fn authorizer_refused(
        &self,
        component: &Component,
        app_id: &AccountId,
        error: &FetchError,
        input: &Input,
        sent_at: std::time::SystemTime,
    ) {
        let directory = Directory::new(self.ctx.store.clone());
        match error.effect() {
            Some(Effect::RefreshTokenInvalid) => {
                let set = directory.set_state_as_of(
                    &component.appid,
                    app_id,
                    AuthorizerState::NeedsReauthorization,
                    "errcode:61023",
                    sent_at,
                );
                self.noted(set, "cannot mark the authorizer").await;
                tracing::error!("WeChat refused the authorizer's refresh token (61023): the account must authorize the platform again");
            }
            Some(Effect::NotAuthorized) => {
                let set = directory.set_state_as_of(
                    &component.appid,
                    app_id,
                    AuthorizerState::Unauthorized,
                    "errcode:61003",
                    sent_at,
                );
                self.noted(set, "cannot mark the authorizer").await;
                if let Some(secrets) = self.secrets(component) {
                    let forget = secrets.forget_as_of(&component.appid, app_id, sent_at);
                    self.noted(forget, "cannot forget the authorizer's secrets")
                        .await;
                }
                tracing::warn!("the account no longer authorizes the platform (61003): stopped");
            }
            Some(Effect::CodeUnusable) => {
                if let (Input::Code(code), Some(secrets)) = (input, self.secrets(component)) {
                    let clear = secrets.clear_code(&component.appid, app_id, code.event_time);
                    self.noted(clear, "cannot clear the unusable code").await;
                    if code.refresh_token_stored {
                        tracing::warn!("the authorization code is unusable (61009/61010): dropped; the stored refresh token is used");
                    } else {
                        let set = directory.set_state_as_of(
                            &component.appid,
                            app_id,
                            AuthorizerState::NeedsReauthorization,
                            "errcode:61009/61010",
                            sent_at,
                        );
                        self.noted(set, "cannot mark the authorizer").await;
                        tracing::error!("the authorization code is unusable (61009/61010) and no refresh token is stored: the account must authorize the platform again");
                    }
                }
            }
            _ => {}
        }
    }

    /// Runs `write` as a directory operation, cut off like any MongoDB
    /// operation; a failure is logged with `what` (the next call, or the
    /// coordinator's next turn, tries again).
    async fn noted<T, E: std::fmt::Display>(
        &self,
        write: impl std::future::Future<Output = Result<T, E>>,
        what: &str,
    ) -> Option<T> {
        let limit = self.ctx.operation_timeout;
        let bounded = async {
            match tokio::time::timeout(limit, write).await {
                Ok(done) => done.map_err(|e| e.to_string()),
                Err(_) => Err(StoreError::TimedOut(limit).to_string()),
            }
        };
        match self
            .ctx
            .metrics
            .observe(Operation::Directory, bounded)
            .await
        {
            Ok(done) => Some(done),
            Err(e) => {
                tracing::warn!(error = %e, "{what}");
                None
            }
        }
    }
}
