//! The admin HTTP server (loopback by default): `/healthz` (the process
//! answers and its coordinator loop is not stuck), `/readyz` (every
//! configured account has a valid token stored, and with `[open_platform]`
//! a fresh verify ticket, the component token and every active
//! authorizer's token, as last checked), `/metrics` (Prometheus text
//! format).
//!
//! Probes are answered from memory: readiness is checked against MongoDB by
//! a task of its own every `interval`, never per probe, so a probe storm
//! costs MongoDB nothing and a frozen MongoDB cannot hang probes. A check
//! older than `stale_after` makes the daemon not ready. Connections must
//! send their request headers within
//! [`crate::http::HEADER_READ_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use wxtokend_reader::{AccountId, CredentialKind};

use crate::config::AuthorizerSelection;
use crate::metrics::{Metrics, Operation};
use crate::open_platform::directory::{AuthorizerState, Directory};
use crate::open_platform::store::{TicketSeen, Tickets};
use crate::store::{Store, StoreError};
use crate::watchdog::Liveness;

/// At most this many authorizer credentials are named in `/readyz`; the
/// others are counted (`more_without_valid_token`).
const AUTHORIZER_NAMES: usize = 100;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin server needs.
pub struct Admin {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Every configured account with the credential kinds it keeps, and
    /// the Open Platform component with its token.
    pub accounts: Vec<(AccountId, Vec<CredentialKind>)>,
    /// With `[open_platform]`: what else readiness wants of the component.
    pub open_platform: Option<OpenPlatformReadiness>,
    /// How often readiness is checked against MongoDB.
    pub interval: Duration,
    /// A check older than this makes the daemon not ready.
    pub stale_after: Duration,
    /// True once the daemon's indexes are in place: no check before.
    pub indexes_ready: tokio::sync::watch::Receiver<bool>,
    /// The coordinator loop's progress...
    pub liveness: Arc<Liveness>,
    /// ...and the longest it may go without any before `/healthz` says
    /// the process is stuck (for a supervisor without systemd's watchdog).
    pub stuck_after: Duration,
}

/// What `/readyz` wants of an Open Platform component besides its token
/// (which is among [`Admin::accounts`]).
pub struct OpenPlatformReadiness {
    pub component: AccountId,
    /// A usable verify ticket received this recently
    /// (`open_platform.ticket_fresh_within`).
    pub ticket_fresh_within: Duration,
    /// The authorizers kept (`open_platform.authorizers`): only those are
    /// waited for.
    pub keep: AuthorizerSelection,
    /// What every `active` authorizer must have valid
    /// ([`crate::config::OpenPlatformSettings::authorizer_kinds_checked`]).
    pub authorizer_kinds: Vec<CredentialKind>,
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    readiness: Arc<RwLock<Readiness>>,
    stale_after: Duration,
    liveness: Arc<Liveness>,
    stuck_after: Duration,
}

/// The last readiness check.
#[derive(Default)]
struct Readiness {
    checked: Option<(Instant, Result<Missing, String>)>,
}

/// What a readiness check found missing.
#[derive(Debug, Default)]
struct Missing {
    /// The credentials without a valid stored value: `account` for an
    /// access token, `account kind` for another kind (a ticket, the
    /// component's token or verify ticket), `component:authorizer kind`
    /// for an authorizer's (at most [`AUTHORIZER_NAMES`] of those).
    names: Vec<String>,
    /// Authorizer credentials missing beyond those named.
    more: usize,
    /// Why the verify ticket is not fresh, if it is not.
    verify_ticket: Option<String>,
}

impl Missing {
    /// Names the first [`AUTHORIZER_NAMES`] of `names` (authorizer
    /// credentials) and counts the others: 10,000 authorizers without a
    /// token must not make a probe's answer megabytes long.
    fn add_authorizers(&mut self, names: Vec<String>) {
        self.more += names.len().saturating_sub(AUTHORIZER_NAMES);
        self.names.extend(names.into_iter().take(AUTHORIZER_NAMES));
    }

    fn is_empty(&self) -> bool {
        self.names.is_empty() && self.more == 0 && self.verify_ticket.is_none()
    }

    fn body(&self) -> Value {
        let mut body = json!({ "ready": false, "without_valid_token": self.names });
        if self.more > 0 {
            body["more_without_valid_token"] = json!(self.more);
        }
        if let Some(why) = &self.verify_ticket {
            body["verify_ticket"] = json!(why);
        }
        body
    }
}

/// Serves until `shutdown`, and checks readiness meanwhile.
pub async fn serve(listener: TcpListener, admin: Admin, shutdown: CancellationToken) {
    let readiness = Arc::new(RwLock::new(Readiness::default()));
    let state = AdminState {
        metrics: admin.metrics.clone(),
        readiness: readiness.clone(),
        stale_after: admin.stale_after,
        liveness: admin.liveness.clone(),
        stuck_after: admin.stuck_after,
    };
    let checker = tokio::spawn(check_readiness(admin, readiness, shutdown.clone()));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    // No connection cap: the admin port faces the operator's network, not
    // the internet, and a scrape must never wait behind a full cap.
    crate::http::serve(listener, app, shutdown, "admin HTTP", None).await;
    checker.abort();
}

async fn render_metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        state.metrics.render(),
    )
        .into_response()
}

/// 200 while the coordinator loop makes progress (waiting for its next
/// turn counts), 503 once it has been stuck in one stretch of work for
/// longer than it legitimately can: every MongoDB operation it runs is cut
/// off well before.
async fn healthz(State(state): State<AdminState>) -> Response {
    let stuck = state.liveness.stuck_for();
    if stuck > state.stuck_after {
        let body = format!(
            "stuck: the coordinator loop has made no progress for {} s (at most {} s is \
             expected); restart this process\n",
            stuck.as_secs(),
            state.stuck_after.as_secs()
        );
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    "ok\n".into_response()
}

/// 200 when the last check (recent enough) found a valid credential of
/// every kind for every configured account (and, with `[open_platform]`,
/// a fresh verify ticket and a valid token for the component and for
/// every active authorizer); 503 with the reasons otherwise.
async fn readyz(State(state): State<AdminState>) -> Response {
    let readiness = state
        .readiness
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    let body = match &readiness.checked {
        None => json!({
            "ready": false,
            "mongodb": "readiness not checked yet (indexes are created first)",
        }),
        Some((at, _)) if at.elapsed() > state.stale_after => json!({
            "ready": false,
            "mongodb": format!("no readiness check for {}s: MongoDB does not answer", at.elapsed().as_secs()),
        }),
        Some((_, Err(e))) => json!({ "ready": false, "mongodb": e }),
        Some((_, Ok(missing))) if missing.is_empty() => json!({ "ready": true }),
        Some((_, Ok(missing))) => missing.body(),
    };
    let status = if body["ready"] == Value::Bool(true) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Checks readiness every `interval` until shutdown, once the indexes are
/// in place.
async fn check_readiness(
    mut admin: Admin,
    readiness: Arc<RwLock<Readiness>>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        () = shutdown.cancelled() => return,
        ready = admin.indexes_ready.wait_for(|ready| *ready) => {
            if ready.is_err() {
                return;
            }
        }
    }
    let mut interval = tokio::time::interval(admin.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let outcome = admin
            .metrics
            .clone()
            .observe(Operation::Readiness, missing(&admin))
            .await;
        readiness
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .checked = Some((Instant::now(), outcome));
    }
}

/// What readiness lacks, or MongoDB's error.
async fn missing(admin: &Admin) -> Result<Missing, String> {
    let now = admin.store.clock().now();
    let mut missing = Missing {
        names: missing_credentials(admin, now).await?,
        ..Missing::default()
    };
    if let Some(open_platform) = &admin.open_platform {
        let store = &admin.store;
        missing.verify_ticket = stale_ticket(admin, open_platform, now)
            .await
            .map_err(|e| e.to_string())?;
        if missing.verify_ticket.is_some() {
            let component = &open_platform.component;
            missing
                .names
                .push(format!("{component} component_verify_ticket"));
        }
        let authorizers = authorizers_without_valid(store, open_platform, now)
            .await
            .map_err(|e| e.to_string())?;
        missing.add_authorizers(authorizers);
    }
    Ok(missing)
}

/// Why the component has no usable verify ticket received within
/// `ticket_fresh_within`, or `None` if it has one. Notes the newest
/// ticket's arrival in the metrics on the way (no value is read).
async fn stale_ticket(
    admin: &Admin,
    open_platform: &OpenPlatformReadiness,
    now: std::time::SystemTime,
) -> Result<Option<String>, StoreError> {
    let tickets = Tickets::new(admin.store.clone());
    let component = &open_platform.component;
    let newest = tickets.newest_seen(component.as_str()).await?;
    admin
        .metrics
        .verify_ticket_seen(component, newest.as_ref().map(TicketSeen::arrived));
    let within = open_platform.ticket_fresh_within;
    let since = now.checked_sub(within).unwrap_or(std::time::UNIX_EPOCH);
    if tickets
        .usable_received_since(component.as_str(), now, since)
        .await?
    {
        return Ok(None);
    }
    let within = humantime::format_duration(within);
    Ok(Some(match newest {
        None => "no verify ticket stored yet: WeChat pushes one every 10 minutes to the \
                 callback URL"
            .to_owned(),
        Some(t) if t.rejected_at.is_some() => {
            "the newest verify ticket was refused by WeChat (61005/61006)".to_owned()
        }
        Some(t) => {
            let age = now
                .duration_since(t.arrived())
                .unwrap_or_default()
                .as_secs();
            format!(
                "no usable verify ticket received within open_platform.ticket_fresh_within \
                 ({within}); the newest arrived {age}s ago"
            )
        }
    }))
}

/// Every kept `active` authorizer's credential of each checked kind without
/// a valid stored value, as `component:authorizer kind`, sorted: one query
/// for the directory and one `distinct` per kind.
async fn authorizers_without_valid(
    store: &Store,
    open_platform: &OpenPlatformReadiness,
    now: std::time::SystemTime,
) -> Result<Vec<String>, StoreError> {
    let component = &open_platform.component;
    if open_platform.authorizer_kinds.is_empty() {
        return Ok(Vec::new());
    }
    let mut active = Directory::new(store.clone())
        .app_ids_in(component, AuthorizerState::Active)
        .await?;
    active.retain(|a| open_platform.keep.keeps(a));
    active.sort();
    let mut missing = Vec::new();
    for &kind in &open_platform.authorizer_kinds {
        let valid = store
            .credentials()
            .authorizers_with_valid(kind, component, now)
            .await?;
        // A ticket is wanted only from an authorizer that has had one:
        // WeChat gives a Mini Program no JS-SDK ticket, nor an account
        // that did not grant the platform those APIs.
        let had = if kind.is_ticket() {
            let unsure: Vec<AccountId> = active
                .iter()
                .filter(|a| !valid.contains(*a))
                .cloned()
                .collect();
            Some(
                store
                    .accounts_with_history(kind, &unsure, Some(component))
                    .await?,
            )
        } else {
            None
        };
        missing.extend(
            active
                .iter()
                .filter(|a| !valid.contains(*a))
                .filter(|a| had.as_ref().is_none_or(|had| had.contains(*a)))
                .map(|a| format!("{component}:{a} {kind}")),
        );
    }
    Ok(missing)
}

/// The configured credentials (and the component's token) without a
/// valid stored value (`account` for an access token, `account kind` for
/// another kind), or MongoDB's error.
async fn missing_credentials(
    admin: &Admin,
    now: std::time::SystemTime,
) -> Result<Vec<String>, String> {
    let mut missing = Vec::new();
    for kind in CredentialKind::ALL {
        let wanted: Vec<&AccountId> = admin
            .accounts
            .iter()
            .filter(|(_, kinds)| kinds.contains(&kind))
            .map(|(id, _)| id)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let valid = admin
            .store
            .credentials()
            .accounts_with_valid(kind, now)
            .await
            .map_err(|e| e.to_string())?;
        missing.extend(
            wanted
                .into_iter()
                .filter(|id| !valid.contains(*id))
                .map(|id| match kind {
                    CredentialKind::AccessToken => id.to_string(),
                    _ => format!("{id} {kind}"),
                }),
        );
    }
    Ok(missing)
}

/// Why a probe of the admin server failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach the admin server at {addr}: {source}")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    #[error("{path} answered {status}: {body}")]
    NotOk {
        path: String,
        status: reqwest::StatusCode,
        body: String,
    },
}

/// `wxtokend health`: asks a running daemon's admin server. For Docker's
/// HEALTHCHECK, where images have no curl.
pub async fn probe(addr: SocketAddr, path: &str) -> Result<(), ProbeError> {
    let unreachable = |source| ProbeError::Unreachable { addr, source };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(unreachable)?;
    let response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(ProbeError::NotOk {
            path: path.to_owned(),
            status,
            body: body.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hundred_authorizers_are_named_and_the_others_counted() {
        let mut missing = Missing {
            names: vec!["wxaccount".to_owned()],
            ..Missing::default()
        };
        missing.add_authorizers(
            (0..250)
                .map(|n| format!("wxc:wxa{n:03} authorizer_access_token"))
                .collect(),
        );
        let body = missing.body();
        let names = body["without_valid_token"].as_array().expect("names");
        assert_eq!(names.len(), 1 + AUTHORIZER_NAMES);
        assert_eq!(names[0], "wxaccount");
        assert_eq!(
            names[AUTHORIZER_NAMES],
            "wxc:wxa099 authorizer_access_token"
        );
        assert_eq!(body["more_without_valid_token"], 150);
        assert_eq!(body["ready"], false);
        let few = Missing {
            names: vec!["wxaccount".to_owned()],
            ..Missing::default()
        };
        assert!(few.body().get("more_without_valid_token").is_none());
    }
}
