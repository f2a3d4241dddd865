//! The admin HTTP server (loopback by default): `/healthz` (the process
//! answers), `/readyz` (MongoDB answers and every configured account has a
//! valid token stored), `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use wxtokend_reader::{AccountId, CredentialKind};

use crate::metrics::Metrics;
use crate::store::Store;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct AdminState {
    store: Store,
    metrics: Arc<Metrics>,
    /// Every configured account with the credential kinds it keeps.
    accounts: Arc<Vec<(AccountId, Vec<CredentialKind>)>>,
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    metrics: Arc<Metrics>,
    accounts: Vec<(AccountId, Vec<CredentialKind>)>,
    shutdown: CancellationToken,
) {
    let state = AdminState {
        store,
        metrics,
        accounts: Arc::new(accounts),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin HTTP server failed");
    }
}

async fn render_metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        state.metrics.render(),
    )
        .into_response()
}

/// 200 when MongoDB answers and every configured account has a valid
/// credential of every kind it keeps; 503 with the reasons otherwise.
async fn readyz(State(state): State<AdminState>) -> Response {
    let now = state.store.clock().now();
    let mut missing = Vec::new();
    for kind in CredentialKind::ALL {
        let wanted: Vec<&AccountId> = state
            .accounts
            .iter()
            .filter(|(_, kinds)| kinds.contains(&kind))
            .map(|(id, _)| id)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let valid = match state
            .store
            .credentials()
            .accounts_with_valid(kind, now)
            .await
        {
            Ok(valid) => valid,
            Err(e) => {
                let body = json!({ "ready": false, "mongodb": e.to_string() });
                return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            }
        };
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
    if missing.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        let body = json!({ "ready": false, "without_valid_token": missing });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
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
