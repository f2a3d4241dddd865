//! The callback receiver: the HTTP listener (`open_platform.listen`) WeChat
//! POSTs the platform's pushes to (授权事件接收URL). Each push is checked
//! with [`super::verify`] against MongoDB's clock, applied to MongoDB, and
//! answered `success` once written: a verify ticket is stored in
//! `component_verify_tickets`; an authorization puts the authorizer in the
//! directory (`authorizers`, `pending`) with its authorization code sealed
//! in `authorizer_secrets`, for the authorizer's holder to exchange; a
//! withdrawal makes it `unauthorized` and forgets its secrets. Events carry
//! WeChat's `CreateTime`, and an older event never undoes a newer one (a
//! replay, or pushes that crossed).
//!
//! Any replica may receive: MongoDB is the shared state, and the same push
//! stored twice is one document ([`Tickets::insert`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use wxtokend_reader::AccountId;

use super::directory::{Authorization, Directory, EventOutcome};
use super::event::{verify, CallbackQuery, Event, Reject};
use super::secretbox::SealError;
use super::secrets::{Secrets, SecretsError};
use super::store::{Stored, Tickets};
use super::MessageCrypto;
use crate::metrics::{Metrics, Operation};
use crate::store::{Store, StoreError};

/// At most one log line per reject reason per this long: a scanner hitting
/// the port must not flood the logs (the counter counts every one).
const REJECT_LOG_EVERY: Duration = Duration::from_secs(60);

/// How long a client may take to send its body once its headers are in
/// (the accept loop bounds the headers): a push is under 1 KiB.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this long for applying a push, whatever the MongoDB operation
/// timeout: WeChat waits about 5 s for an answer, and a 503 it never sees
/// is no answer.
const STORE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the receiver needs.
pub struct Receiver {
    pub crypto: MessageCrypto,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// `open_platform.max_message_age`.
    pub max_message_age: Duration,
    /// How long one MongoDB write may take before the push is answered 503.
    pub operation_timeout: Duration,
    /// Written to `received_by`.
    pub instance_id: String,
    /// Where authorization codes are kept, sealed; `None` without
    /// `open_platform.refresh_token_key_file`: the directory is kept, the
    /// codes are not (discovery finds those authorizers' refresh tokens).
    pub secrets: Option<Secrets>,
}

struct ReceiverState {
    receiver: Receiver,
    tickets: Tickets,
    directory: Directory,
    /// When each reject reason was last logged, and how many went unlogged
    /// since.
    reject_log: Mutex<HashMap<&'static str, (Option<Instant>, u64)>>,
}

/// `POST {path}` with bodies up to `max_body_bytes` (larger: 413); any
/// other method on it 405, any other path 404.
pub fn router(receiver: Receiver, path: &str, max_body_bytes: usize) -> Router {
    let state = Arc::new(ReceiverState {
        tickets: Tickets::new(receiver.store.clone()),
        directory: Directory::new(receiver.store.clone()),
        receiver,
        reject_log: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route(path, post(callback))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn callback(
    State(state): State<Arc<ReceiverState>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    // The body limit applies here (`DefaultBodyLimit`: 413 beyond it).
    let body =
        match tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(request, &())).await {
            Ok(Ok(body)) => body,
            Ok(Err(rejection)) => return rejection.into_response(),
            Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "the body took too long\n"),
        };
    let receiver = &state.receiver;
    let query = parse_query(query.as_deref().unwrap_or(""));
    let now = receiver.store.clock().now();
    let outcome = match verify(
        &receiver.crypto,
        &query,
        &body,
        now,
        receiver.max_message_age,
    ) {
        Ok(event) => state.apply(event).await,
        Err(reject) => Err(Refused::Reject(reject)),
    };
    match outcome {
        Ok(label) => {
            receiver.metrics.open_platform_callback(label);
            text(StatusCode::OK, "success")
        }
        Err(Refused::Reject(reject)) => {
            receiver.metrics.open_platform_callback(reject.reason());
            state.log_reject(reject);
            let status = match reject {
                Reject::BadSignature | Reject::OtherAppId | Reject::OtherInnerAppId => {
                    StatusCode::FORBIDDEN
                }
                _ => StatusCode::BAD_REQUEST,
            };
            text(status, &format!("refused: {}\n", reject.reason()))
        }
        Err(Refused::Store(e)) => {
            receiver.metrics.open_platform_callback("store_error");
            tracing::warn!(error = %e, "open platform callback: cannot store what WeChat pushed; answered 503 (WeChat pushes again)");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "MongoDB is unavailable; try again\n",
            )
        }
        Err(Refused::Seal(e)) => {
            receiver.metrics.open_platform_callback("store_error");
            tracing::error!(error = %e, "open platform callback: cannot seal the authorization code; answered 503");
            text(StatusCode::SERVICE_UNAVAILABLE, "try again\n")
        }
    }
}

/// Why a push was not answered `success`.
enum Refused {
    Reject(Reject),
    Store(StoreError),
    /// The system's random source failed: an authorization code could not
    /// be sealed.
    Seal(SealError),
}

impl From<SecretsError> for Refused {
    fn from(error: SecretsError) -> Self {
        match error {
            SecretsError::Store(e) => Self::Store(e),
            SecretsError::Seal(e) => Self::Seal(e),
        }
    }
}

impl ReceiverState {
    /// Does what `event` asks; the outcome's metrics label.
    async fn apply(&self, event: Event) -> Result<&'static str, Refused> {
        let receiver = &self.receiver;
        match event {
            Event::VerifyTicket {
                create_time,
                ticket,
            } => {
                let insert = self.tickets.insert(
                    receiver.crypto.appid(),
                    &ticket,
                    create_time,
                    &receiver.instance_id,
                );
                // Cut off inside the observation, so that a timeout counts
                // as a failed MongoDB operation like any other.
                let limit = receiver.operation_timeout.min(STORE_TIMEOUT);
                let bounded = async {
                    tokio::time::timeout(limit, insert)
                        .await
                        .map_err(|_| StoreError::TimedOut(limit))
                        .and_then(|stored| stored)
                };
                let stored = receiver
                    .metrics
                    .observe(Operation::Callback, bounded)
                    .await
                    .map_err(Refused::Store)?;
                let create_time = humantime::format_rfc3339_seconds(create_time).to_string();
                match stored {
                    Stored::New => {
                        let component = AccountId::new(receiver.crypto.appid());
                        let received_at = receiver.store.clock().now();
                        receiver
                            .metrics
                            .verify_ticket_received(&component, received_at);
                        tracing::info!(%create_time, "open platform: verify ticket stored");
                    }
                    Stored::Already => {
                        tracing::debug!(%create_time, "open platform: verify ticket was stored already");
                    }
                }
                Ok("stored")
            }
            Event::Authorized {
                authorizer_appid,
                authorization_code,
                code_expires_at,
                create_time,
                update,
            } => {
                let component = AccountId::new(receiver.crypto.appid());
                let authorizer = AccountId::new(authorizer_appid);
                let authorization = if update {
                    Authorization::UpdateAuthorized
                } else {
                    Authorization::Authorized
                };
                let apply = async {
                    // The code first: `pending` in the directory promises a
                    // code to exchange.
                    if let Some(secrets) = &receiver.secrets {
                        let set = secrets.set_code(
                            &component,
                            &authorizer,
                            &authorization_code,
                            code_expires_at,
                            create_time,
                        );
                        set.await?;
                    }
                    let upsert =
                        self.directory
                            .upsert(&component, &authorizer, authorization, create_time);
                    Ok::<_, SecretsError>(upsert.await?)
                };
                let outcome = self.bounded(apply).await?;
                match (outcome, &receiver.secrets) {
                    (EventOutcome::Superseded, _) => tracing::info!(
                        authorizer = %authorizer,
                        "open platform: an authorization older than one applied already; ignored"
                    ),
                    (EventOutcome::Applied, Some(_)) => tracing::info!(
                        authorizer = %authorizer,
                        update,
                        "open platform: an account authorized the platform; its code is kept \
                         for the exchange"
                    ),
                    (EventOutcome::Applied, None) => tracing::warn!(
                        authorizer = %authorizer,
                        update,
                        "open platform: an account authorized the platform; its code is not kept \
                         (no open_platform.refresh_token_key_file)"
                    ),
                }
                Ok(authorization.as_str())
            }
            Event::Unauthorized {
                authorizer_appid,
                create_time,
            } => {
                let component = AccountId::new(receiver.crypto.appid());
                let authorizer = AccountId::new(authorizer_appid);
                let apply = async {
                    // The secrets first, each write guarded by the event's
                    // time on its own: a push answered 503 after one of
                    // them and sent again completes the other.
                    if let Some(secrets) = &receiver.secrets {
                        secrets
                            .forget(&component, &authorizer, Some(create_time))
                            .await?;
                    }
                    // The test suite's stand-in for a push cut off between
                    // its two writes.
                    crate::stall_point!("receiver-between-writes");
                    let outcome = self
                        .directory
                        .upsert(
                            &component,
                            &authorizer,
                            Authorization::Unauthorized,
                            create_time,
                        )
                        .await?;
                    Ok::<_, SecretsError>(outcome)
                };
                match self.bounded(apply).await? {
                    EventOutcome::Applied => tracing::info!(
                        authorizer = %authorizer,
                        "open platform: an account withdrew its authorization; it is unauthorized \
                         and its refresh token forgotten"
                    ),
                    EventOutcome::Superseded => tracing::info!(
                        authorizer = %authorizer,
                        "open platform: a withdrawal older than an event applied already; ignored"
                    ),
                }
                Ok(Authorization::Unauthorized.as_str())
            }
            Event::Other { info_type } => {
                tracing::info!(%info_type, "open platform: an event of another type (not acted on)");
                Ok("acknowledged")
            }
        }
    }

    /// `apply`, cut off after the MongoDB operation timeout or
    /// [`STORE_TIMEOUT`] if shorter, and timed as a callback operation.
    async fn bounded<T>(
        &self,
        apply: impl std::future::Future<Output = Result<T, SecretsError>>,
    ) -> Result<T, Refused> {
        let receiver = &self.receiver;
        let limit = receiver.operation_timeout.min(STORE_TIMEOUT);
        let bounded = async {
            tokio::time::timeout(limit, apply)
                .await
                .unwrap_or(Err(SecretsError::Store(StoreError::TimedOut(limit))))
        };
        Ok(receiver
            .metrics
            .observe(Operation::Callback, bounded)
            .await?)
    }

    /// Logs a refused push, at most once per reason per
    /// [`REJECT_LOG_EVERY`], with how many were not logged since.
    fn log_reject(&self, reject: Reject) {
        let mut log = self
            .reject_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let entry = log.entry(reject.reason()).or_insert((None, 0));
        if entry
            .0
            .is_some_and(|last| now.duration_since(last) < REJECT_LOG_EVERY)
        {
            entry.1 += 1;
            return;
        }
        let unlogged = std::mem::take(&mut entry.1);
        entry.0 = Some(now);
        tracing::warn!(
            reason = reject.reason(),
            error = %reject,
            unlogged_since_last = unlogged,
            "open platform callback refused"
        );
    }
}

/// The parameters [`verify`] reads; the first of a repeated one counts (the
/// signature covers the values used, whatever else is there).
pub(crate) fn parse_query(query: &str) -> CallbackQuery {
    let mut parsed = CallbackQuery::default();
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "timestamp" => &mut parsed.timestamp,
            "nonce" => &mut parsed.nonce,
            "encrypt_type" => &mut parsed.encrypt_type,
            "msg_signature" => &mut parsed.msg_signature,
            _ => continue,
        };
        slot.get_or_insert_with(|| value.to_owned());
    }
    parsed
}

fn text(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.to_owned(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::parse_query;

    #[test]
    fn the_query_string_gives_the_first_of_each_parameter() {
        let q = parse_query(
            "signature=x&timestamp=1&nonce=n&encrypt_type=aes&msg_signature=s&timestamp=2&extra",
        );
        assert_eq!(q.timestamp.as_deref(), Some("1"));
        assert_eq!(q.nonce.as_deref(), Some("n"));
        assert_eq!(q.encrypt_type.as_deref(), Some("aes"));
        assert_eq!(q.msg_signature.as_deref(), Some("s"));
        let q = parse_query("");
        assert!(q.timestamp.is_none() && q.msg_signature.is_none());
    }
}
