//! `wxtokend status`: what every account looks like, from MongoDB alone, so
//! it can run anywhere the database is reachable.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use wxtokend_reader::{AccountId, CredentialKind};

use crate::coordination::quota::quota_day;
use crate::store::{Store, StoreError};

/// One account's line.
#[derive(Debug, Clone, Serialize)]
pub struct AccountStatus {
    pub account: AccountId,
    pub kind: CredentialKind,
    pub generation: Option<i64>,
    /// Seconds since the newest credential was fetched.
    pub age_s: Option<u64>,
    /// Seconds of validity left (0 once expired).
    pub time_left_s: Option<u64>,
    pub lease_holder: Option<String>,
    pub lease_term: i64,
    /// Whether the lease is current by the MongoDB server's clock.
    pub lease_valid: bool,
    pub quota_day: Option<String>,
    pub calls_today: i64,
    pub quota_exhausted: bool,
    pub last_error: Option<String>,
}

/// Every account that has a lease document (every account a daemon has
/// worked on), sorted by id: a line for its access token and one for each
/// ticket stored for it.
pub async fn collect(store: &Store) -> Result<Vec<AccountStatus>, StoreError> {
    let server_now = store.server_time().await?;
    let now = SystemTime::now();
    let mut lines = Vec::new();
    for lease in store.leases().infos(&[]).await? {
        for kind in CredentialKind::ALL {
            let newest = store.credentials().newest(kind, &lease.app_id).await?;
            if kind.is_ticket() && newest.is_none() {
                continue;
            }
            let today = quota_day(server_now);
            let counts_today = lease.quota_day.as_deref() == Some(today.as_str());
            lines.push(AccountStatus {
                account: lease.app_id.clone(),
                kind,
                generation: newest.as_ref().map(|c| c.generation.0),
                age_s: newest.as_ref().map(|c| {
                    now.duration_since(c.fetched_at)
                        .unwrap_or_default()
                        .as_secs()
                }),
                time_left_s: newest.as_ref().map(|c| c.time_left(now).as_secs()),
                lease_valid: !lease.holder.is_empty() && lease.expires_at > server_now,
                lease_holder: (!lease.holder.is_empty()).then(|| lease.holder.clone()),
                lease_term: lease.term.0,
                calls_today: if counts_today { lease.quota_calls } else { 0 },
                quota_exhausted: counts_today && lease.quota_exhausted,
                quota_day: lease.quota_day.clone(),
                last_error: lease.last_error.clone(),
            });
        }
    }
    Ok(lines)
}

/// A table for people.
pub fn render(lines: &[AccountStatus], daily_limit: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<20} {:>6} {:>9} {:>9}  {:<28} {:>11}  LAST ERROR",
        "ACCOUNT", "KIND", "GEN", "AGE", "LEFT", "LEASE HOLDER (TERM)", "CALLS TODAY"
    );
    for l in lines {
        let holder = match (&l.lease_holder, l.lease_valid) {
            (Some(h), true) => format!("{h} ({})", l.lease_term),
            (Some(h), false) => format!("{h} ({}, expired)", l.lease_term),
            (None, _) => "-".into(),
        };
        let calls = if l.quota_exhausted {
            format!("{}/{daily_limit}!", l.calls_today)
        } else {
            format!("{}/{daily_limit}", l.calls_today)
        };
        let _ = writeln!(
            out,
            "{:<28} {:<20} {:>6} {:>9} {:>9}  {:<28} {:>11}  {}",
            l.account,
            l.kind,
            l.generation.map_or("-".into(), |g| g.to_string()),
            l.age_s.map_or("-".into(), short_duration),
            l.time_left_s.map_or("-".into(), short_duration),
            holder,
            calls,
            l.last_error.as_deref().unwrap_or("-"),
        );
    }
    if lines.is_empty() {
        out.push_str("(no account has been refreshed by a daemon in this database yet)\n");
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
