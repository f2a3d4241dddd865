//! The accept loop the daemon's HTTP listeners share (the admin server and
//! the Open Platform callback receiver): HTTP/1 only, a client must send
//! its request headers within [`HEADER_READ_TIMEOUT`] (slow clients cannot
//! hold connections open), optionally at most so many connections at once
//! ([`ConnectionCap`]), and requests in flight finish at shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// A client that does not finish sending its request headers within this
/// long is disconnected.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long requests in flight at shutdown are given to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// At most one log line per this long that a listener is at its cap: a
/// flood must not flood the logs too.
const CAP_LOG_EVERY: Duration = Duration::from_secs(60);

/// At most `max` connections open at once on one listener, so that a
/// flood of connections (slow or idle clients, a scanner) cannot spend the
/// file descriptors and memory the rest of the daemon needs for MongoDB
/// and WeChat.
///
/// At the cap the listener stops accepting until a connection closes, as
/// HAProxy's `maxconn` and Go's `netutil.LimitListener` do: new
/// connections wait in the kernel's listen backlog, in arrival order, and
/// are served late rather than refused, so a burst of genuine pushes is
/// delayed, not lost. A slot never stays taken for long: headers must come
/// within [`HEADER_READ_TIMEOUT`] (also on an idle kept-alive connection),
/// and the receiver bounds the body and its own work.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionCap {
    pub max: usize,
    /// The setting `max` comes from, named when the cap is reached.
    pub setting: &'static str,
}

/// Serves `app` on `listener` until `shutdown`, at most `cap` connections
/// at once when given; `name` is what its log lines call it ("admin
/// HTTP", "open platform callback").
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    name: &'static str,
    cap: Option<ConnectionCap>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut slots = cap.map(|cap| Slots::new(cap, name));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = accept(&listener, name) => accepted,
        };
        let slot = match &mut slots {
            Some(slots) => match slots.take(&shutdown).await {
                Some(slot) => Some(slot),
                None => break,
            },
            None => None,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "{name} connection ended");
            }
            // The slot frees once the connection is closed.
            drop(slot);
        });
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

/// The next connection; errors are logged and waited out.
async fn accept(listener: &TcpListener, name: &str) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(e) => {
                // Out of file descriptors, say: do not spin on it.
                tracing::warn!(error = %e, "{name}: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The slots of a [`ConnectionCap`]: one per open connection.
struct Slots {
    free: Arc<Semaphore>,
    cap: ConnectionCap,
    name: &'static str,
    /// When reaching the cap was last logged, and how many times it was
    /// reached since without a line.
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Slots {
    fn new(cap: ConnectionCap, name: &'static str) -> Self {
        Self {
            free: Arc::new(Semaphore::new(cap.max)),
            cap,
            name,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// A slot for a connection just accepted: at once if one is free, else
    /// once another connection closes (the listener accepts nothing
    /// meanwhile); `None` at shutdown.
    async fn take(&mut self, shutdown: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.free.clone().try_acquire_owned() {
            return Some(slot);
        }
        self.log_full();
        tokio::select! {
            () = shutdown.cancelled() => None,
            slot = self.free.clone().acquire_owned() => slot.ok(),
        }
    }

    /// Logs that the cap was reached, at most once per [`CAP_LOG_EVERY`],
    /// with how many times it was reached since the last line.
    fn log_full(&mut self) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < CAP_LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        self.last_logged = Some(now);
        tracing::warn!(
            max_connections = self.cap.max,
            setting = self.cap.setting,
            unlogged_since_last = std::mem::take(&mut self.unlogged),
            "{}: connection cap reached, {} connections open; new connections wait until one \
             closes (raise {} if this is genuine traffic)",
            self.name,
            self.cap.max,
            self.cap.setting,
        );
    }
}
