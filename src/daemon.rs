//! Wires the parts together and owns shutdown: one store, one WeChat client,
//! one coordinator (which runs the refresh tasks), stopped by one
//! cancellation token.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use tokio::net::TcpListener;

use crate::admin;
use crate::coordination::{self, INSTANCES, LEASES};
use crate::coordinator::{Coordinator, CoordinatorError, RefresherDied};
use crate::metrics::{Metrics, Operation};
use crate::mirror::{MirrorError, Mirrors};
use crate::open_platform::{
    self,
    receiver::{self, Receiver},
};
use crate::subject::{Component, Subject};
use crate::watchdog::{self, Liveness};
use mongodb::bson::Document;
use wxtokend_reader::requests;
use wxtokend_reader::{AccountId, ConnectOptions, CredentialKind, Refused};

use crate::refresh::{Backoff, Context};
use crate::store::{
    self, IndexConflict, IndexSpec, IndexStep, MissingPrivileges, Needed, Store, StoreError,
};
use crate::wechat::{ClientError, WechatClient};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Wechat(#[from] ClientError),
    #[error("cannot listen on admin.listen {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on open_platform.listen {addr}: {source}")]
    Receiver {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    RefresherDied(#[from] RefresherDied),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error("the coordinator died: {0}")]
    CoordinatorDied(String),
    /// MongoDB refused the user or a privilege: a restart cannot help.
    #[error(transparent)]
    Refused(Refused),
    /// The user lacks privileges, by the server's list: a restart cannot
    /// help.
    #[error(transparent)]
    MissingPrivileges(Box<MissingPrivileges>),
    /// An index in place stands where one of ours must be: a restart
    /// cannot help.
    #[error(transparent)]
    IndexConflict(Box<IndexConflict>),
}

impl From<CoordinatorError> for DaemonError {
    fn from(error: CoordinatorError) -> Self {
        match error {
            CoordinatorError::RefresherDied(died) => Self::RefresherDied(died),
            CoordinatorError::Refused(refused) => Self::Refused(refused),
        }
    }
}

/// A daemon ready to run.
pub struct Daemon {
    settings: Settings,
    store: Store,
    wechat: WechatClient,
    admin: Option<TcpListener>,
    /// The Open Platform callback receiver's listener, if configured.
    receiver: Option<TcpListener>,
}

impl Daemon {
    /// Builds the clients and binds the admin port. Does not contact
    /// MongoDB or WeChat.
    pub async fn build(settings: Settings) -> Result<Daemon, DaemonError> {
        let store = connect_store(&settings).await?;
        let wechat = WechatClient::new(&settings.wechat)?;
        let admin = match settings.admin.address() {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Admin { addr, source })?,
            ),
            None => None,
        };
        let receiver = match settings.open_platform.as_ref().and_then(|o| o.listen) {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Receiver { addr, source })?,
            ),
            None => None,
        };
        Ok(Daemon {
            settings,
            store,
            wechat,
            admin,
            receiver,
        })
    }

    /// Runs until `shutdown` is cancelled, then gives in-flight work up to
    /// `daemon.shutdown_timeout` to finish. An error means a part died: the
    /// process should exit non-zero so that it is restarted.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DaemonError> {
        let Daemon {
            settings,
            store,
            wechat,
            admin,
            receiver,
        } = self;
        let metrics = Arc::new(Metrics::new(
            store.clock().clone(),
            &settings.refresh.daily_call_limits,
            settings.admin.account_series,
        ));
        store.on_command(Box::new(metrics.command_counter()));
        // Readiness is checked only once the indexes are in place.
        let (indexed, indexes_ready) = tokio::sync::watch::channel(false);
        let liveness = Arc::new(Liveness::default());
        let admin_task = admin.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "admin HTTP listening (/healthz, /readyz, /metrics)");
            }
            let admin = admin::Admin {
                store: store.clone(),
                metrics: metrics.clone(),
                // With the component's token: a replica waiting for its
                // first verify ticket is not ready, and WeChat's pushes
                // reach it through a Service of the callback port that
                // publishes unready pods (README, "Kubernetes").
                accounts: readiness_accounts(&settings),
                open_platform: settings.open_platform.as_ref().map(|o| {
                    admin::OpenPlatformReadiness {
                        component: AccountId::new(o.component_appid.as_str()),
                        ticket_fresh_within: o.ticket_fresh_within,
                        keep: o.authorizers.clone(),
                        // Without the key no authorizer is kept: none is
                        // waited for.
                        authorizer_kinds: if o
                            .secrets
                            .as_ref()
                            .is_some_and(|s| s.refresh_tokens.is_some())
                        {
                            o.authorizer_kinds_checked()
                        } else {
                            Vec::new()
                        },
                    }
                }),
                interval: settings.lease.renew_interval,
                stale_after: settings.lease.duration,
                indexes_ready,
                liveness: liveness.clone(),
                stuck_after: watchdog::longest_stretch(&settings),
            };
            tokio::spawn(admin::serve(listener, admin, shutdown.clone()))
        });
        tracing::info!(
            instance = %settings.daemon.instance_id,
            database = store.database_name(),
            accounts = settings.accounts.len(),
            "wxtokend starting"
        );
        if !ensure_indexes(&store, &settings, &metrics, &shutdown).await? {
            return Ok(());
        }
        let _ = indexed.send(true);
        // After the indexes: the same push received twice must meet the
        // unique index.
        let receiver_task = receiver
            .and_then(|listener| start_receiver(listener, &settings, &store, &metrics, &shutdown));
        // systemd (Type=notify): started, indexes in place. Readiness for
        // traffic is /readyz.
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("running"),
        ]);
        if let Some(interval) = watchdog::interval() {
            watch_over(&settings, interval, liveness.clone(), shutdown.clone());
        }
        warn_about_mirrors(&settings);
        // The mirrors stop after the refreshers, so that what they store
        // last still reaches Redis.
        let mirrors_stop = CancellationToken::new();
        let _stop_mirrors = mirrors_stop.clone().drop_guard();
        let (mirrors, mirror_tasks) = Mirrors::start(
            &settings.mirrors,
            &settings.accounts,
            &store,
            &metrics,
            &mirrors_stop,
        )?;
        let ctx = Arc::new(Context {
            mirrors,
            wechat,
            store,
            refresh: settings.refresh.clone(),
            lease_duration: settings.lease.duration,
            call_timeout: settings.wechat.connect_timeout + settings.wechat.request_timeout,
            instance_id: settings.daemon.instance_id.as_str().into(),
            metrics,
            operation_timeout: settings.mongodb_operation_timeout(),
        });
        let coordinator =
            Coordinator::new(ctx, subjects(&settings), settings.lease.clone(), liveness);
        let mut task = tokio::spawn(coordinator.run(shutdown.clone()));
        tokio::select! {
            () = shutdown.cancelled() => {}
            result = &mut task => {
                let error = match result {
                    Ok(Err(stopped)) => DaemonError::from(stopped),
                    Ok(Ok(())) => DaemonError::CoordinatorDied("it returned".into()),
                    Err(e) => DaemonError::CoordinatorDied(e.to_string()),
                };
                if !matches!(error, DaemonError::Refused(_)) {
                    tracing::error!(error = %error, "stopping: a part of the daemon died");
                }
                return Err(error);
            }
        }
        let grace = settings.daemon.shutdown_timeout;
        tracing::info!(grace_s = grace.as_secs_f32(), "shutting down");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!(
                "shutdown timeout reached; abandoning in-flight work (leases expire on their own)"
            );
            task.abort();
        }
        mirrors_stop.cancel();
        if let Some(task) = admin_task {
            let _ = tokio::time::timeout(grace, task).await;
        }
        if let Some(task) = receiver_task {
            let _ = tokio::time::timeout(grace, task).await;
        }
        for task in mirror_tasks {
            let _ = tokio::time::timeout(grace, task).await;
        }
        tracing::info!("wxtokend stopped");
        Ok(())
    }
}

/// What `/readyz` wants a valid value of, by owner: every configured
/// account's kinds, and the Open Platform component's token.
fn readiness_accounts(settings: &Settings) -> Vec<(AccountId, Vec<CredentialKind>)> {
    let mut accounts: Vec<(AccountId, Vec<CredentialKind>)> = settings
        .accounts
        .iter()
        .map(|a| (a.id.clone(), a.kinds().collect()))
        .collect();
    if let Some(open_platform) = &settings.open_platform {
        accounts.push((
            AccountId::new(open_platform.component_appid.as_str()),
            vec![CredentialKind::ComponentAccessToken],
        ));
    }
    accounts
}

/// Serves the Open Platform callback receiver on `listener` until
/// `shutdown`; `None` without the component's secrets (never, for the
/// daemon's settings).
fn start_receiver(
    listener: TcpListener,
    settings: &Settings,
    store: &Store,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let open_platform = settings.open_platform.as_ref()?;
    let secrets = open_platform.secrets.as_ref()?;
    let receiver = Receiver {
        crypto: secrets.crypto.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        max_message_age: open_platform.max_message_age,
        operation_timeout: settings.mongodb_operation_timeout(),
        instance_id: settings.daemon.instance_id.clone(),
        secrets: secrets.refresh_tokens.clone().map(|sealing| {
            open_platform::secrets::Secrets::new(
                store.clone(),
                sealing,
                settings.daemon.instance_id.as_str(),
            )
        }),
    };
    let app = receiver::router(receiver, &open_platform.path, open_platform.max_body_bytes);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            path = %open_platform.path,
            component = %open_platform.component_appid,
            "open platform callback listening"
        );
    }
    let cap = crate::http::ConnectionCap {
        max: open_platform.max_connections,
        setting: "open_platform.max_connections",
    };
    Some(tokio::spawn(crate::http::serve(
        listener,
        app,
        shutdown.clone(),
        "open platform callback",
        Some(cap),
    )))
}

/// wechatpy 2 fetches a token of its own once 60 s or less of it are
/// left (its `…_expires_at`): the mirror must get the next one earlier.
fn warn_about_mirrors(settings: &Settings) {
    let wechatpy = settings
        .mirrors
        .iter()
        .any(|m| m.layouts.contains(&crate::mirror::Layout::Wechatpy));
    if wechatpy && settings.refresh.margin <= std::time::Duration::from_secs(90) {
        tracing::warn!(
            margin_s = settings.refresh.margin.as_secs(),
            "a mirror writes wechatpy's keys but refresh.margin is 90s or less: wechatpy 2 \
             fetches a token of its own when 60 s or less are left; keep the margin above \
             that (the default 10m is)"
        );
    }
}

/// Starts the task that pings systemd's watchdog while the coordinator
/// makes progress, after a warning if `WatchdogSec=` is shorter than what
/// these settings need.
fn watch_over(
    settings: &Settings,
    interval: std::time::Duration,
    liveness: Arc<Liveness>,
    shutdown: CancellationToken,
) {
    let minimum = watchdog::minimum(settings);
    if interval < minimum {
        tracing::warn!(
            watchdog_s = interval.as_secs_f32(),
            minimum_s = minimum.as_secs(),
            "WatchdogSec is too short for lease.renew_interval and \
             mongodb.server_selection_timeout: a slow MongoDB could get this replica restarted; \
             set WatchdogSec to at least 2 x (max(lease.renew_interval, 2 x \
             mongodb.server_selection_timeout, 5s) + 5s)"
        );
    }
    tracing::info!(
        watchdog_s = interval.as_secs_f32(),
        "systemd watchdog: WATCHDOG=1 while the coordinator makes progress"
    );
    tokio::spawn(watchdog::run(liveness, interval, shutdown));
}

/// What this replica's coordinator shares with the others: every
/// configured account, and the Open Platform component (its own token)
/// when `[open_platform]` is set.
fn subjects(settings: &Settings) -> Vec<Subject> {
    let mut subjects: Vec<Subject> = settings
        .accounts
        .iter()
        .cloned()
        .map(Subject::Account)
        .collect();
    let component = settings.open_platform.as_ref().and_then(|open_platform| {
        let secrets = open_platform.secrets.as_ref()?;
        Some(Component {
            appid: AccountId::new(open_platform.component_appid.as_str()),
            secret: secrets.component_secret.clone(),
            start_push_ticket_after: open_platform.start_push_ticket_after,
            sealing: secrets.refresh_tokens.clone(),
            keep: open_platform.authorizers.clone(),
            tickets: open_platform.authorizer_tickets.clone(),
            discovery_interval: open_platform.discovery_interval,
        })
    });
    subjects.extend(component.map(|c| Subject::Component(Arc::new(c))));
    subjects
}

/// Every index the daemon needs, in every collection.
pub fn all_indexes(settings: &Settings) -> Vec<IndexSpec> {
    let mut indexes = store::credential_indexes(settings.mongodb.history_retention);
    indexes.extend(store::request_indexes());
    indexes.extend(coordination::indexes());
    if settings.open_platform.is_some() {
        indexes.extend(store::credential_indexes_of(
            &[CredentialKind::ComponentAccessToken],
            settings.mongodb.history_retention,
        ));
        indexes.extend(store::authorizer_credential_indexes(
            settings.mongodb.history_retention,
        ));
        indexes.extend(open_platform::store::indexes());
    }
    indexes
}

/// What the daemon does in MongoDB, by collection, with `steps` to bring
/// the indexes in line: the role the README gives needs no more (it also
/// has `createIndex` and `collMod` on the credential collections for the
/// steps of later starts).
pub fn privileges_needed(steps: &[IndexStep]) -> Vec<Needed> {
    const CREDENTIALS: &[&str] = &["find", "insert", "listIndexes"];
    const COORDINATION: &[&str] = &["find", "insert", "update", "remove", "listIndexes"];
    let mut needed: Vec<Needed> = CredentialKind::ACCOUNT_KINDS
        .into_iter()
        .map(|kind| (kind.collection(), CREDENTIALS))
        .collect();
    needed.push((LEASES, &["find", "insert", "update"]));
    needed.push((INSTANCES, COORDINATION));
    needed.push((requests::REFRESH_REQUESTS, COORDINATION));
    for step in steps {
        needed.push(match step {
            IndexStep::Create(spec) => (spec.collection, &["createIndex"]),
            IndexStep::ChangeTtl { spec, .. } => (spec.collection, &["collMod"]),
        });
    }
    needed
}

/// What the Open Platform component adds, when configured: the receiver
/// reads and inserts verify tickets, the component's refresher marks those
/// WeChat refused and writes the component token; the directory and the
/// sealed secrets are upserted and updated, never removed (`$unset`).
/// Index steps are in [`privileges_needed`]'s `steps`.
pub fn open_platform_privileges() -> Vec<Needed> {
    const UPSERTED: &[&str] = &["find", "insert", "update", "listIndexes"];
    const CREDENTIALS: &[&str] = &["find", "insert", "listIndexes"];
    let mut needed = vec![
        (open_platform::store::COMPONENT_VERIFY_TICKETS, UPSERTED),
        (
            CredentialKind::ComponentAccessToken.collection(),
            CREDENTIALS,
        ),
        (open_platform::directory::AUTHORIZERS, UPSERTED),
        (open_platform::secrets::AUTHORIZER_SECRETS, UPSERTED),
    ];
    needed.extend(
        store::AUTHORIZER_KINDS
            .into_iter()
            .map(|kind| (kind.collection(), CREDENTIALS)),
    );
    needed
}

/// The platform's collections `check` reads, when configured.
fn open_platform_collections() -> Vec<&'static str> {
    let mut collections = vec![
        open_platform::store::COMPONENT_VERIFY_TICKETS,
        CredentialKind::ComponentAccessToken.collection(),
        open_platform::directory::AUTHORIZERS,
        open_platform::secrets::AUTHORIZER_SECRETS,
    ];
    collections.extend(store::AUTHORIZER_KINDS.map(CredentialKind::collection));
    collections
}

/// [`StoreError::MissingPrivileges`] if the server listed the user's
/// privileges (`status`) and some that `steps` need are missing.
fn approve(
    store: &Store,
    settings: &Settings,
    status: Option<&Document>,
    steps: &[IndexStep],
) -> Result<(), StoreError> {
    let mut needed = privileges_needed(steps);
    if settings.open_platform.is_some() {
        needed.extend(open_platform_privileges());
    }
    match MissingPrivileges::compare(store.database_name(), status, &needed) {
        Some(missing) => Err(StoreError::MissingPrivileges(Box::new(missing))),
        None => Ok(()),
    }
}

/// Brings the indexes in line, waiting for MongoDB as long as it takes
/// (telling systemd why the start takes long, and extending its start
/// timeout while retrying). Returns false if shutdown came first. MongoDB's
/// refusal of the user or of a privilege, and an index in the way, are
/// errors no retry can overcome.
async fn ensure_indexes(
    store: &Store,
    settings: &Settings,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<bool, DaemonError> {
    let mut backoff = Backoff::new(settings.refresh.retry_initial, settings.refresh.retry_max);
    let wanted = all_indexes(settings);
    loop {
        let ensure = async {
            let status = store.privileges().await?;
            let steps = store
                .ensure_indexes_with(&wanted, |steps| {
                    approve(store, settings, status.as_ref(), steps)
                })
                .await?;
            let mut created = 0;
            for step in &steps {
                match step {
                    IndexStep::Create(_) => created += 1,
                    IndexStep::ChangeTtl { .. } => tracing::info!(%step, "TTL index changed"),
                }
            }
            if created > 0 {
                tracing::info!(created, "created the missing indexes");
            }
            Ok(())
        };
        match metrics.observe(Operation::EnsureIndexes, ensure).await {
            Ok(()) => return Ok(true),
            Err(StoreError::Refused(refused)) => {
                tracing::error!(error = %refused, "cannot start: MongoDB refused this replica");
                return Err(DaemonError::Refused(refused));
            }
            Err(StoreError::MissingPrivileges(missing)) => {
                tracing::error!(error = %missing, "cannot start: MongoDB's user lacks privileges");
                return Err(DaemonError::MissingPrivileges(missing));
            }
            Err(StoreError::IndexConflict(conflict)) => {
                tracing::error!(error = %conflict, "cannot start: an index is in the way");
                return Err(DaemonError::IndexConflict(conflict));
            }
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "cannot create indexes; is MongoDB up?");
                let status = format!("waiting for MongoDB to create indexes: {e}");
                // The wait, then an attempt with room to spare.
                let extend = wait + settings.mongodb.server_selection_timeout * 4 + START_SLACK;
                let _ = sd_notify::notify(&[
                    sd_notify::NotifyState::Status(&status),
                    sd_notify::NotifyState::ExtendTimeoutUsec(
                        u32::try_from(extend.as_micros()).unwrap_or(u32::MAX),
                    ),
                ]);
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(false),
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Room added to each extension of systemd's start timeout while the
/// daemon waits for MongoDB.
const START_SLACK: std::time::Duration = std::time::Duration::from_secs(30);

/// What `check` verifies of MongoDB: it answers, every collection the
/// daemon uses can be read, and the indexes are in line or can be brought
/// in line. It creates the missing indexes (what `run` does first, so a
/// missing `createIndex` privilege shows) but changes none in place: a TTL
/// of another retention is returned, for `run` to change. An index in the
/// way is an error. Writes other than indexes are first tried by `run`,
/// which stops (exit 3) on a privilege MongoDB refuses.
pub async fn check_store(store: &Store, settings: &Settings) -> Result<CheckedIndexes, StoreError> {
    store.ping().await?;
    let status = store.privileges().await?;
    let steps = store.plan_indexes(&all_indexes(settings)).await?;
    // Every privilege `run` needs, for the steps left to it too.
    approve(store, settings, status.as_ref(), &steps)?;
    let mut others = vec![LEASES, INSTANCES];
    if settings.open_platform.is_some() {
        others.extend(open_platform_collections());
    }
    store.check_reads(&others).await?;
    let mut checked = CheckedIndexes::default();
    for step in steps {
        match step {
            IndexStep::Create(spec) => {
                // `false`: another replica created it meanwhile.
                if store
                    .apply_index_step(&IndexStep::Create(spec.clone()))
                    .await?
                {
                    checked.created.push(spec);
                }
            }
            change @ IndexStep::ChangeTtl { .. } => checked.left_for_run.push(change),
        }
    }
    Ok(checked)
}

/// What `check` did to the indexes, and what it left for `run`.
#[derive(Debug, Default)]
pub struct CheckedIndexes {
    /// Missing, now created.
    pub created: Vec<IndexSpec>,
    /// Changes `run` makes at start (a TTL of another retention).
    pub left_for_run: Vec<IndexStep>,
}

/// The store as configured.
pub async fn connect_store(settings: &Settings) -> Result<Store, StoreError> {
    Store::connect(
        &settings.mongodb.uri,
        &settings.mongodb.database,
        ConnectOptions {
            server_selection_timeout: settings.mongodb.server_selection_timeout,
            app_name: format!("wxtokend {}", settings.daemon.instance_id),
        },
    )
    .await
}

/// Completes when the process receives SIGTERM (systemd, `docker stop`) or
/// SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
