//! The Open Platform block of `wxtokend status`: the component's verify
//! ticket, its authorizers by state, and those that are not `active` or
//! lack a valid credential. The component's token is its line in the
//! table (kind `component_access_token`), not repeated here.
//!
//! Cheap at 10,000 authorizers: one query per collection (the newest
//! ticket's dates, the directory, one `distinct` per authorizer kind); the
//! authorizers' leases come with the accounts' in one read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::SystemTime;

use serde::Serialize;

use wxtokend_reader::{AccountId, CredentialKind};

use super::short_duration;
use crate::config::OpenPlatformSettings;
use crate::coordination::{LeaseId, LeaseInfo};
use crate::open_platform::directory::{AuthorizerState, Directory};
use crate::open_platform::store::Tickets;
use crate::store::{Store, StoreError};

/// At most this many authorizers are listed in the text; `--json` lists
/// every one.
pub const LISTED: usize = 50;

/// `status --json`: the `open_platform` object of the component's line.
#[derive(Debug, Clone, Serialize)]
pub struct OpenPlatformStatus {
    pub component: AccountId,
    pub verify_ticket: TicketStatus,
    /// Kept authorizers (`open_platform.authorizers`) by state, every
    /// state named.
    pub authorizers: BTreeMap<&'static str, usize>,
    /// Authorizers in the directory that `open_platform.authorizers` leaves
    /// out (not counted above, not listed below).
    pub left_out: usize,
    /// Every kept authorizer that is not `active`, or lacks a valid
    /// credential: those an active one lacks first, then by state and
    /// appid.
    pub not_ok: Vec<AuthorizerStatus>,
    /// Whether this MongoDB user may read the component token (the reader
    /// role may not): the component's line shows none either way.
    pub component_token_readable: bool,
}

/// The component's newest verify ticket (its value is never read).
#[derive(Debug, Clone, Serialize)]
pub struct TicketStatus {
    /// `usable`, `expired`, `rejected` (WeChat refused it), `none` (none
    /// stored), or `refused` (this user may not read the tickets, as the
    /// reader role may not).
    pub state: &'static str,
    /// Seconds since it was stored (from its `CreateTime` if stored
    /// without `received_at`).
    pub age_s: Option<u64>,
    /// Seconds it may still be used (0 once expired).
    pub time_left_s: Option<u64>,
}

/// An authorizer that needs a look.
#[derive(Debug, Clone, Serialize)]
pub struct AuthorizerStatus {
    pub app_id: AccountId,
    pub state: &'static str,
    /// Why it is in that state (`event:authorized`, `errcode:61023`, ...).
    pub state_reason: String,
    /// The checked kinds without a valid stored value.
    pub without_valid: Vec<CredentialKind>,
    pub lease_holder: Option<String>,
    pub lease_valid: bool,
    pub last_error: Option<String>,
}

/// The block, read from MongoDB. `leases`: every lease document (read
/// once for the whole status).
pub async fn collect(
    store: &Store,
    settings: &OpenPlatformSettings,
    leases: &HashMap<LeaseId, LeaseInfo>,
    server_now: SystemTime,
) -> Result<OpenPlatformStatus, StoreError> {
    let component = AccountId::new(settings.component_appid.as_str());
    let verify_ticket = ticket(store, &component, server_now).await?;
    let directory = Directory::new(store.clone()).all(&component).await?;
    let kinds = settings.authorizer_kinds_checked();
    let mut valid: Vec<(CredentialKind, HashSet<AccountId>)> = Vec::new();
    for kind in kinds {
        let with = store
            .credentials()
            .authorizers_with_valid(kind, &component, server_now)
            .await?;
        valid.push((kind, with));
    }
    let mut authorizers: BTreeMap<&'static str, usize> = AuthorizerState::ALL
        .into_iter()
        .map(|state| (state.as_str(), 0))
        .collect();
    let mut left_out = 0;
    let mut not_ok = Vec::new();
    for authorizer in directory {
        if !settings.authorizers.keeps(&authorizer.app_id) {
            left_out += 1;
            continue;
        }
        *authorizers.entry(authorizer.state.as_str()).or_default() += 1;
        let without_valid: Vec<CredentialKind> = valid
            .iter()
            .filter(|(_, with)| !with.contains(&authorizer.app_id))
            .map(|(kind, _)| *kind)
            .collect();
        if authorizer.state == AuthorizerState::Active && without_valid.is_empty() {
            continue;
        }
        let lease = leases.get(&LeaseId::authorizer(&component, &authorizer.app_id));
        not_ok.push((
            authorizer.state,
            AuthorizerStatus {
                app_id: authorizer.app_id,
                state: authorizer.state.as_str(),
                state_reason: authorizer.state_reason,
                without_valid,
                lease_holder: lease
                    .filter(|l| !l.holder.is_empty())
                    .map(|l| l.holder.clone()),
                lease_valid: lease
                    .is_some_and(|l| !l.holder.is_empty() && l.expires_at > server_now),
                last_error: lease.and_then(|l| l.last_error.clone()),
            },
        ));
    }
    not_ok.sort_by(|(a_state, a), (b_state, b)| {
        (severity(*a_state), &a.app_id).cmp(&(severity(*b_state), &b.app_id))
    });
    Ok(OpenPlatformStatus {
        component,
        verify_ticket,
        authorizers,
        left_out,
        not_ok: not_ok.into_iter().map(|(_, status)| status).collect(),
        component_token_readable: true,
    })
}

/// The order of the not-ok list: an active authorizer without a valid
/// token first (its services fail now), then those a person must act on.
fn severity(state: AuthorizerState) -> u8 {
    match state {
        AuthorizerState::Active => 0,
        AuthorizerState::NeedsReauthorization => 1,
        AuthorizerState::Pending => 2,
        AuthorizerState::Unauthorized => 3,
    }
}

/// The newest ticket's dates, or why there are none.
async fn ticket(
    store: &Store,
    component: &AccountId,
    now: SystemTime,
) -> Result<TicketStatus, StoreError> {
    let newest = match Tickets::new(store.clone())
        .newest_seen(component.as_str())
        .await
    {
        Ok(newest) => newest,
        Err(StoreError::Refused(_)) => {
            return Ok(TicketStatus {
                state: "refused",
                age_s: None,
                time_left_s: None,
            })
        }
        Err(e) => return Err(e),
    };
    let Some(t) = newest else {
        return Ok(TicketStatus {
            state: "none",
            age_s: None,
            time_left_s: None,
        });
    };
    let until = t.usable_until();
    let state = if t.rejected_at.is_some() {
        "rejected"
    } else if until <= now {
        "expired"
    } else {
        "usable"
    };
    let arrived = t.arrived();
    Ok(TicketStatus {
        state,
        age_s: Some(now.duration_since(arrived).unwrap_or_default().as_secs()),
        time_left_s: Some(until.duration_since(now).unwrap_or_default().as_secs()),
    })
}

/// The block for people; `token`: the component's line (generation, time
/// left), which the table above shows too.
pub fn render(op: &OpenPlatformStatus, token: Option<(Option<i64>, Option<u64>)>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nOPEN PLATFORM {}", op.component);
    let t = &op.verify_ticket;
    let ticket = match (t.state, t.age_s, t.time_left_s) {
        ("none", ..) => "none stored yet (WeChat pushes one every 10 minutes)".to_owned(),
        ("refused", ..) => "not readable by this MongoDB user".to_owned(),
        (state, Some(age), Some(left)) => format!(
            "{state}, received {} ago, {} left",
            short_duration(age),
            short_duration(left)
        ),
        (state, ..) => state.to_owned(),
    };
    let _ = writeln!(out, "  verify ticket:   {ticket}");
    let token = match token {
        Some((Some(generation), Some(left))) => {
            format!("generation {generation}, {} left", short_duration(left))
        }
        _ if !op.component_token_readable => "not readable by this MongoDB user".to_owned(),
        _ => "none stored yet".to_owned(),
    };
    let _ = writeln!(out, "  component token: {token}");
    let counts: Vec<String> = op
        .authorizers
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let _ = write!(out, "  authorizers:     {}", counts.join(", "));
    if op.left_out > 0 {
        let _ = write!(
            out,
            " ({} left out by open_platform.authorizers)",
            op.left_out
        );
    }
    out.push('\n');
    if op.not_ok.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n{:<28} {:<22} {:<28} {:<28} {:<20}  LAST ERROR",
        "AUTHORIZER", "STATE", "NO VALID", "LEASE HOLDER", "REASON"
    );
    for a in op.not_ok.iter().take(LISTED) {
        let without: Vec<&str> = a.without_valid.iter().map(|k| k.as_str()).collect();
        let holder = match (&a.lease_holder, a.lease_valid) {
            (Some(h), true) => h.clone(),
            (Some(h), false) => format!("{h} (expired)"),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<28} {:<22} {:<28} {:<28} {:<20}  {}",
            a.app_id,
            a.state,
            if without.is_empty() {
                "-".to_owned()
            } else {
                without.join(",")
            },
            holder,
            a.state_reason,
            a.last_error.as_deref().unwrap_or("-"),
        );
    }
    if op.not_ok.len() > LISTED {
        let _ = writeln!(
            out,
            "... and {} more (status --json lists every one)",
            op.not_ok.len() - LISTED
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(not_ok: usize) -> OpenPlatformStatus {
        OpenPlatformStatus {
            component: AccountId::new("wxcomponent"),
            verify_ticket: TicketStatus {
                state: "usable",
                age_s: Some(125),
                time_left_s: Some(3 * 3600),
            },
            authorizers: [("active", 3), ("needs_reauthorization", not_ok)]
                .into_iter()
                .collect(),
            left_out: 0,
            not_ok: (0..not_ok)
                .map(|n| AuthorizerStatus {
                    app_id: AccountId::new(format!("wxauthorizer{n:04}")),
                    state: "needs_reauthorization",
                    state_reason: "errcode:61023".into(),
                    without_valid: vec![CredentialKind::AuthorizerAccessToken],
                    lease_holder: Some("replica-1".into()),
                    lease_valid: true,
                    last_error: None,
                })
                .collect(),
            component_token_readable: true,
        }
    }

    #[test]
    fn the_block_lists_fifty_authorizers_then_counts_the_rest() {
        let text = render(&status(LISTED + 7), Some((Some(4), Some(3600))));
        assert!(text.contains("OPEN PLATFORM wxcomponent"), "{text}");
        assert!(
            text.contains("verify ticket:   usable, received 2m05s ago, 3h00m left"),
            "{text}"
        );
        assert!(
            text.contains("component token: generation 4, 1h00m left"),
            "{text}"
        );
        assert!(
            text.contains("3 active, 57 needs_reauthorization"),
            "{text}"
        );
        assert_eq!(text.matches("errcode:61023").count(), LISTED, "{text}");
        assert!(text.contains("wxauthorizer0049"), "{text}");
        assert!(!text.contains("wxauthorizer0050"), "{text}");
        assert!(text.contains("... and 7 more"), "{text}");
    }

    #[test]
    fn a_block_with_every_authorizer_fine_has_no_list() {
        let text = render(&status(0), None);
        assert!(text.contains("component token: none stored yet"), "{text}");
        assert!(!text.contains("AUTHORIZER"), "{text}");
        // The reader role may not read it: said so, not "none stored".
        let mut refused = status(0);
        refused.component_token_readable = false;
        let text = render(&refused, None);
        assert!(
            text.contains("component token: not readable by this MongoDB user"),
            "{text}"
        );
    }
}
