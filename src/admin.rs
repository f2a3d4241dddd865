//! The admin HTTP server (loopback by default): `/healthz` (the process
//! answers and its coordinator loop is not stuck), `/readyz` (every configured account has a valid token stored,
//! as last checked), `/metrics` (Prometheus text format).
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

use crate::metrics::{Metrics, Operation};
use crate::store::Store;
use crate::watchdog::Liveness;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin server needs.
pub struct Admin {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Every configured account with the credential kinds it keeps.
    pub accounts: Vec<(AccountId, Vec<CredentialKind>)>,
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
    checked: Option<(Instant, Result<Vec<String>, String>)>,
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
/// every kind for every configured account; 503 with the reasons otherwise.
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
        Some((_, Ok(missing))) => json!({ "ready": false, "without_valid_token": missing }),
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

/// The configured credentials without a valid stored value (`account` for
/// an access token, `account kind` for a ticket), or MongoDB's error.
async fn missing(admin: &Admin) -> Result<Vec<String>, String> {
    let now = admin.store.clock().now();
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
