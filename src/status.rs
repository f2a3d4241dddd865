//! `wxtokend status`: what every account looks like, from MongoDB and the
//! configuration alone (no WeChat secret), so it can run anywhere the
//! database is reachable.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use wxtokend_reader::{AccountId, Credential, CredentialKind, QueryError};

use crate::config::{AccountSpec, Settings};
use crate::coordination::quota::quota_day;
use crate::coordination::{LeaseId, LeaseInfo, Leases};
use crate::mirror::Health;
use crate::store::{Store, StoreError};
use crate::wechat::{Api, STABLE_TOKEN_FORCED_PER_DAY};

mod open_platform;

use open_platform::OpenPlatformStatus;

/// One line: a credential kind of an account.
#[derive(Debug, Clone, Serialize)]
pub struct AccountStatus {
    pub account: AccountId,
    pub kind: CredentialKind,
    /// Whether this configuration keeps this kind of this account; `false`
    /// for what was found in MongoDB only (another configuration's account,
    /// or one since removed).
    pub configured: bool,
    /// `None`: nothing stored (never refreshed, or its history expired).
    pub generation: Option<i64>,
    /// Seconds since the newest credential was fetched.
    pub age_s: Option<u64>,
    /// Seconds of validity left (0 once expired).
    pub time_left_s: Option<u64>,
    pub lease_holder: Option<String>,
    pub lease_term: i64,
    /// Whether the lease is current by the MongoDB server's clock.
    pub lease_valid: bool,
    /// The WeChat API that issues this kind for this account, whose quota
    /// the next fields count; `None` for an account this configuration
    /// does not keep that no daemon has called yet.
    pub api: Option<Api>,
    /// Today's quota day (Beijing time, by MongoDB's clock): the day the
    /// counters below count.
    pub quota_day: String,
    /// Calls to `api` today (Beijing time).
    pub calls_today: i64,
    /// `refresh.daily_call_limits.<api>`, for a configured account.
    pub daily_call_limit: Option<i64>,
    /// WeChat answered 45009 from `api` today, or the ceiling is reached:
    /// no call to it until midnight Beijing time.
    pub quota_exhausted: bool,
    /// stable_token: `force_refresh` calls today.
    pub forced_calls_today: Option<i64>,
    /// stable_token: WeChat's limit on them (20 a day).
    pub forced_call_limit: Option<i64>,
    pub last_error: Option<String>,
    /// The component's line only: its verify ticket and authorizers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_platform: Option<OpenPlatformStatus>,
}

/// What is known of one account: its configuration, its lease document.
#[derive(Default)]
struct Known<'a> {
    spec: Option<&'a AccountSpec>,
    lease: Option<LeaseInfo>,
}

impl Known<'_> {
    /// The API that issues `kind`: from the configuration, else the one a
    /// daemon counted calls of.
    fn api(&self, kind: CredentialKind) -> Option<Api> {
        match (self.spec, &self.lease) {
            (Some(spec), _) => Some(spec.api(kind)),
            (None, Some(lease)) => lease
                .quotas
                .keys()
                .copied()
                .find(|api| api.kind() == Some(kind)),
            (None, None) => None,
        }
    }
}

/// Every configured account and every account with a lease document (every
/// account a daemon has worked on), sorted by id: a line for each kind the
/// configuration keeps, whether anything is stored or not, and one for each
/// other kind stored for it. An account with neither a configuration nor a
/// stored ticket still has its access token line. Quotas are shown per
/// line, for the API that issues that kind. With `[open_platform]`, a last
/// line for the component's token (without its age and expiry for a user
/// that may not read it, as the reader role may not), which carries the
/// Open Platform block (`open_platform`).
pub async fn collect(store: &Store, settings: &Settings) -> Result<Vec<AccountStatus>, StoreError> {
    let server_now = store.server_time().await?;
    let today = quota_day(server_now);
    let now = SystemTime::now();
    let mut known: BTreeMap<AccountId, Known<'_>> = BTreeMap::new();
    for spec in &settings.configured {
        known.entry(spec.id.clone()).or_default().spec = Some(spec);
    }
    let component = settings
        .open_platform
        .as_ref()
        .map(|o| AccountId::new(o.component_appid.as_str()));
    // The Open Platform's leases are not accounts.
    let mut open_leases = HashMap::new();
    for lease in Leases::new(store.clone()).infos(&[]).await? {
        if let Some(id) = lease.id.as_account() {
            known.entry(id).or_default().lease = Some(lease);
        } else if component.is_some() {
            open_leases.insert(lease.id.clone(), lease);
        }
    }
    let line = Line {
        settings,
        today: &today,
        now,
        server_now,
    };
    let mut lines = Vec::new();
    for (account, known) in &known {
        let lease = known.lease.as_ref();
        for kind in CredentialKind::ACCOUNT_KINDS {
            let configured = known.spec.is_some_and(|s| s.kinds().any(|k| k == kind));
            let newest = store.credentials().newest(kind, account).await?;
            if !configured && kind.is_ticket() && newest.is_none() {
                continue;
            }
            let api = known.api(kind);
            let limited = known.spec.is_some();
            lines.push(line.of(account, kind, configured, newest, lease, api, limited));
        }
    }
    if let (Some(component), Some(open_platform)) = (&component, &settings.open_platform) {
        let kind = CredentialKind::ComponentAccessToken;
        let (newest, readable) = match store.credentials().newest(kind, component).await {
            Ok(newest) => (newest, true),
            // The reader role may not read the component token (with it
            // anyone can list every authorizer's refresh token): the line
            // shows the lease alone.
            Err(QueryError::Refused(_)) => (None, false),
            Err(e) => return Err(e.into()),
        };
        let api = Some(Api::ComponentToken);
        let lease = open_leases.get(&LeaseId::component(component));
        let mut status = line.of(component, kind, true, newest, lease, api, true);
        let block = open_platform::collect(store, open_platform, &open_leases, server_now);
        let mut block = block.await?;
        block.component_token_readable = readable;
        status.open_platform = Some(block);
        lines.push(status);
    }
    Ok(lines)
}

/// What every line is computed with.
struct Line<'a> {
    settings: &'a Settings,
    today: &'a str,
    now: SystemTime,
    server_now: SystemTime,
}

impl Line<'_> {
    /// The line of `kind` of `account`; `limited`: the configuration
    /// keeps it, so its API's ceiling applies.
    #[allow(clippy::too_many_arguments)]
    fn of(
        &self,
        account: &AccountId,
        kind: CredentialKind,
        configured: bool,
        newest: Option<Credential>,
        lease: Option<&LeaseInfo>,
        api: Option<Api>,
        limited: bool,
    ) -> AccountStatus {
        let now = self.now;
        let quota = api
            .and_then(|api| lease?.quotas.get(&api))
            .map(|q| q.on(self.today))
            .unwrap_or_default();
        let stable = api == Some(Api::StableToken);
        let daily_call_limit = api
            .filter(|_| limited)
            .map(|api| self.settings.refresh.daily_call_limits.of(api));
        AccountStatus {
            account: account.clone(),
            kind,
            configured,
            generation: newest.as_ref().map(|c| c.generation.0),
            age_s: newest.as_ref().map(|c| {
                now.duration_since(c.fetched_at)
                    .unwrap_or_default()
                    .as_secs()
            }),
            time_left_s: newest.as_ref().map(|c| c.time_left(now).as_secs()),
            lease_valid: lease
                .is_some_and(|l| !l.holder.is_empty() && l.expires_at > self.server_now),
            lease_holder: lease
                .filter(|l| !l.holder.is_empty())
                .map(|l| l.holder.clone()),
            lease_term: lease.map_or(0, |l| l.term.0),
            api,
            quota_day: self.today.to_owned(),
            calls_today: quota.calls,
            daily_call_limit,
            quota_exhausted: quota.exhausted
                || daily_call_limit.is_some_and(|limit| quota.calls >= limit),
            forced_calls_today: stable.then_some(quota.forced_calls),
            forced_call_limit: stable.then_some(STABLE_TOKEN_FORCED_PER_DAY),
            last_error: lease.and_then(|l| l.last_error.clone()),
            open_platform: None,
        }
    }
}

/// A table for people.
pub fn render(lines: &[AccountStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<20} {:>6} {:>9} {:>9}  {:<28} {:<19} {:>11} {:>6}  LAST ERROR",
        "ACCOUNT",
        "KIND",
        "GEN",
        "AGE",
        "LEFT",
        "LEASE HOLDER (TERM)",
        "API",
        "CALLS TODAY",
        "FORCED"
    );
    for l in lines {
        let holder = match (&l.lease_holder, l.lease_valid) {
            (Some(h), true) => format!("{h} ({})", l.lease_term),
            (Some(h), false) => format!("{h} ({}, expired)", l.lease_term),
            (None, _) => "-".into(),
        };
        let mut calls = match l.daily_call_limit {
            Some(limit) => format!("{}/{limit}", l.calls_today),
            None => l.calls_today.to_string(),
        };
        if l.quota_exhausted {
            calls.push('!');
        }
        let forced = match (l.forced_calls_today, l.forced_call_limit) {
            (Some(n), Some(limit)) => format!("{n}/{limit}"),
            _ => "-".into(),
        };
        let kind = if l.configured {
            l.kind.to_string()
        } else {
            format!("{}*", l.kind)
        };
        let _ = writeln!(
            out,
            "{:<28} {:<20} {:>6} {:>9} {:>9}  {:<28} {:<19} {:>11} {:>6}  {}",
            l.account,
            kind,
            l.generation.map_or("-".into(), |g| g.to_string()),
            l.age_s.map_or("-".into(), short_duration),
            l.time_left_s.map_or("-".into(), short_duration),
            holder,
            l.api.map_or("-", Api::as_str),
            calls,
            forced,
            l.last_error.as_deref().unwrap_or("-"),
        );
    }
    if lines.is_empty() {
        out.push_str(
            "(no account configured, and none refreshed by a daemon in this database yet)\n",
        );
    }
    if lines.iter().any(|l| !l.configured) {
        out.push_str(
            "* not kept by this configuration: found in MongoDB (another configuration's \
             account, or one since removed)\n",
        );
    }
    for l in lines {
        if let Some(block) = &l.open_platform {
            out.push_str(&open_platform::render(
                block,
                Some((l.generation, l.time_left_s)),
            ));
        }
    }
    out
}

/// The Redis mirrors of every live replica (their heartbeats): `(replica,
/// health)`. Needs `find` on `instances`.
pub async fn mirrors(store: &Store) -> Result<Vec<(String, Health)>, StoreError> {
    Leases::new(store.clone()).mirrors().await
}

/// One line of `status --mirrors --json`: a mirror of a live replica.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorStatus {
    /// The `[[mirrors]]` entry's `name`.
    pub mirror: String,
    /// The replica's `daemon.instance_id`.
    pub replica: String,
    /// Its last Redis operation succeeded.
    pub up: bool,
    /// Failed Redis operations since the replica started.
    pub errors: u64,
    /// Redis's last error (command and server, never a value).
    pub last_error: Option<String>,
    /// Seconds since it last wrote a key; `None`: not yet.
    pub last_write_age_s: Option<u64>,
}

/// The mirrors as `status --mirrors --json` prints them.
pub fn mirror_lines(mirrors: &[(String, Health)], now: SystemTime) -> Vec<MirrorStatus> {
    mirrors
        .iter()
        .map(|(replica, h)| MirrorStatus {
            mirror: h.name.clone(),
            replica: replica.clone(),
            up: h.up,
            errors: h.errors,
            last_error: h.last_error.clone(),
            last_write_age_s: h
                .last_write
                .map(|at| now.duration_since(at).unwrap_or_default().as_secs()),
        })
        .collect()
}

/// The mirrors' section: one line per (replica, mirror).
pub fn render_mirrors(mirrors: &[(String, Health)]) -> String {
    let mut out = String::new();
    if mirrors.is_empty() {
        return out;
    }
    let now = SystemTime::now();
    let _ = writeln!(
        out,
        "\n{:<16} {:<28} {:<5} {:>10} {:>7}  LAST ERROR",
        "MIRROR", "REPLICA", "STATE", "LAST WRITE", "ERRORS"
    );
    for (replica, h) in mirrors {
        let last_write = h.last_write.map_or("-".into(), |at| {
            short_duration(now.duration_since(at).unwrap_or_default().as_secs()) + " ago"
        });
        let _ = writeln!(
            out,
            "{:<16} {:<28} {:<5} {:>10} {:>7}  {}",
            h.name,
            replica,
            if h.up { "up" } else { "DOWN" },
            last_write,
            h.errors,
            h.last_error.as_deref().unwrap_or("-"),
        );
    }
    out
}

/// `1h02m`, `4m05s`, `12s`.
fn short_duration(secs: u64) -> String {
    let d = Duration::from_secs(secs);
    let (h, m, s) = (d.as_secs() / 3600, d.as_secs() / 60 % 60, d.as_secs() % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::short_duration;

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(12), "12s");
        assert_eq!(short_duration(245), "4m05s");
        assert_eq!(short_duration(3720), "1h02m");
    }
}
