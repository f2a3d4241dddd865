//! Discovery: the component's lease holder lists the accounts that
//! authorized the platform (`api_get_authorizer_list`, pages of 500) when
//! it takes the lease and every `open_platform.discovery_interval` after
//! (sooner, but at most every sixth of it, when a refresh token was refused
//! since the last pass: WeChat's list has the current one), and brings
//! the directory in line: an authorizer it did not know is added (`active`
//! with the listed refresh token, sealed, or `pending` without one); one
//! that needs re-authorization gets the listed refresh token if it differs
//! (WeChat staff's answer to 61023) and becomes `active`. The refresh
//! token of an `active` authorizer is never replaced from the list: its
//! holder's own is authoritative. Missing from the list changes nothing
//! (the next call says, with 61003).

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use wxtokend_reader::requests::{self as request_docs, NewRequest};
use wxtokend_reader::{AccountId, CredentialKind, Owner, RefreshReason};

use super::Context;
use crate::coordination::{Lease, Permit, PermitRules};
use crate::metrics::Operation;
use crate::open_platform::directory::{AuthorizerState, Directory};
use crate::open_platform::secrets::{Cas, Secrets, Source};
use crate::subject::Component;
use crate::wechat::Api;

/// The most WeChat lists in one page.
const PAGE: u32 = 500;

/// Runs discovery under `lease` until `stop`.
pub async fn run(
    ctx: Arc<Context>,
    lease: Lease,
    component: Arc<Component>,
    stop: CancellationToken,
) {
    let Some(sealing) = component.sealing.clone() else {
        stop.cancelled().await;
        return;
    };
    let secrets = Secrets::new(ctx.store.clone(), sealing, ctx.instance_id.as_ref());
    let pass = Pass {
        ctx: &ctx,
        lease: &lease,
        component: &component,
        secrets: &secrets,
        stop: &stop,
    };
    // A pass sooner than `discovery_interval` when a refresh token was
    // refused (61023) since the last one began: WeChat's list may have the
    // current one. At most every sixth of the interval, so that such
    // passes stay within the list's daily quota.
    let soonest = component.discovery_interval / 6;
    let check = ctx
        .refresh
        .request_poll_interval
        .max(Duration::from_secs(5));
    // A failed pass is tried again after `check`, doubling up to
    // `soonest`: its pages read before the failure count against the
    // list's daily quota.
    let mut retry = check;
    loop {
        let began = Instant::now();
        // Less an overlap: a 61023 noted by a replica whose estimate of
        // MongoDB's clock is behind this one's is still seen.
        let began_at = ctx.store.clock().now() - 2 * ctx.operation_timeout;
        let next = match pass.run().await {
            Ok(listed) => {
                tracing::info!(listed, "discovery: the authorizer list is read");
                retry = check;
                began + component.discovery_interval
            }
            Err(why) => {
                tracing::debug!(%why, retry_in_s = retry.as_secs(), "discovery: not now");
                let next = Instant::now() + retry;
                retry = (retry * 2).min(soonest.max(check));
                next
            }
        };
        loop {
            let now = Instant::now();
            if now >= next {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(check.min(next - now)) => {}
            }
            if began.elapsed() >= soonest && pass.refused_since(began_at).await {
                tracing::info!("discovery: a refresh token was refused; reading WeChat's list now");
                break;
            }
        }
    }
}

struct Pass<'a> {
    ctx: &'a Arc<Context>,
    lease: &'a Lease,
    component: &'a Arc<Component>,
    secrets: &'a Secrets,
    stop: &'a CancellationToken,
}

impl Pass<'_> {
    /// Whether a refresh token was refused since `since` (a read error
    /// says no: the next check asks again).
    async fn refused_since(&self, since: std::time::SystemTime) -> bool {
        let directory = Directory::new(self.ctx.store.clone());
        let read = directory.refused_since(&self.component.appid, since);
        self.ctx
            .observe(Operation::Directory, read)
            .await
            .unwrap_or(false)
    }

    /// One pass over every page; how many authorizers were listed.
    async fn run(&self) -> Result<u64, String> {
        let ctx = self.ctx;
        let component = self.component;
        let started = ctx.store.clock().now();
        let owner = Owner::account(component.appid.clone());
        let read = async {
            Ok(ctx
                .store
                .credentials()
                .scan_newest_owned(CredentialKind::ComponentAccessToken, &owner, Some(started))
                .await?)
        };
        let token = ctx
            .observe(Operation::ReadAccessToken, read)
            .await
            .map_err(|e| e.to_string())?
            .credential
            .ok_or("no valid component token yet")?;
        let directory = Directory::new(ctx.store.clone());
        let mut offset = 0;
        let mut listed = 0;
        loop {
            let page = self.page(&token.value, offset).await?;
            for entry in &page.list {
                self.apply(&directory, entry, started).await;
            }
            listed += page.list.len() as u64;
            if page.skipped > 0 {
                tracing::warn!(
                    skipped = page.skipped,
                    "discovery: malformed list entries left out"
                );
            }
            offset += PAGE;
            if u64::from(offset) >= page.total_count || page.list.is_empty() {
                return Ok(listed);
            }
        }
    }

    /// One page, under a permit of its own API, sent only if the lease
    /// outlasts the call.
    async fn page(
        &self,
        token: &secrecy::SecretString,
        offset: u32,
    ) -> Result<crate::wechat::AuthorizerPage, String> {
        let ctx = self.ctx;
        let slot = tokio::select! {
            slot = ctx.wechat.slot() => slot,
            () = self.stop.cancelled() => return Err("stopped".into()),
        };
        let started = Instant::now();
        let rules = PermitRules {
            api: Api::AuthorizerList,
            min_remaining: ctx.lease_duration / 2,
            daily_limit: ctx.refresh.daily_call_limits.of(Api::AuthorizerList),
            forced_min_interval: None,
            forced_daily_limit: None,
            clock_max_age: ctx.lease_duration / 2,
        };
        let permit = ctx
            .observe(Operation::Permit, self.lease.permit(rules))
            .await
            .map_err(|e| e.to_string())?;
        let Permit::Granted { lease_left, .. } = permit else {
            return Err(format!("no permit: {permit:?}"));
        };
        let ends = started + lease_left;
        if self.stop.is_cancelled()
            || ends.saturating_duration_since(Instant::now()) < ctx.call_timeout
        {
            return Err("the lease would end before the call".into());
        }
        ctx.wechat
            .authorizer_list(&slot, self.component, token, offset, PAGE)
            .await
            .map_err(|e| e.to_string())
    }

    /// Asks the holder of `authorizer`'s lease for a token now (a manual
    /// refresh request naming the component).
    async fn request_token(&self, authorizer: &AccountId) -> Result<(), String> {
        let request = NewRequest {
            app_id: authorizer,
            component_appid: Some(&self.component.appid),
            kind: CredentialKind::AuthorizerAccessToken,
            reason: RefreshReason::Manual,
            generation: None,
            requested_by: &self.ctx.instance_id,
        };
        request_docs::file(self.ctx.store.database(), &request)
            .await
            .map_err(|e| e.to_string())
    }

    /// One entry into the directory and, where it helps, its refresh token
    /// into the secrets. Failures are logged; the next pass tries again.
    async fn apply(
        &self,
        directory: &Directory,
        entry: &crate::wechat::Listed,
        started: std::time::SystemTime,
    ) {
        let c = &self.component.appid;
        let a = &entry.authorizer_appid;
        let result: Result<(), String> = async {
            let known = directory.get(c, a).await.map_err(|e| e.to_string())?;
            let stored = self.secrets.read(c, a).await.map_err(|e| e.to_string())?;
            let needs = known
                .as_ref()
                .is_some_and(|k| k.state == AuthorizerState::NeedsReauthorization);
            let has_stored = matches!(stored.refresh_token, Some(Ok(_)));
            if let Some(listed) = &entry.refresh_token {
                let differs = match &stored.refresh_token {
                    Some(Ok(rt)) => rt.expose_secret() != listed.expose_secret(),
                    _ => true,
                };
                if (!has_stored || needs) && differs {
                    let cas = self
                        .secrets
                        .replace_refresh_token(c, a, stored.version, listed, Source::AuthorizerList, None)
                        .await
                        .map_err(|e| e.to_string())?;
                    if cas != Cas::Lost && needs {
                        directory
                            .set_state(c, a, AuthorizerState::Active, "list")
                            .await
                            .map_err(|e| e.to_string())?;
                        tracing::info!(account = %a, "discovery: the listed refresh token repairs an authorizer that needed re-authorization");
                    }
                    if cas != Cas::Lost && known.is_some() {
                        // Its holder may be waiting long (after a 61023,
                        // or for a refresh token): a request reaches it
                        // wherever it runs, however the directory is read.
                        self.request_token(a).await?;
                    }
                }
            }
            let has = entry.refresh_token.is_some() || has_stored;
            directory
                .upsert_listed(c, a, has, entry.auth_time, started)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(account = %a, error = %e, "discovery: cannot apply a listed authorizer");
        }
    }
}
