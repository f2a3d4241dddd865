//! The accept loop the daemon's HTTP listeners share (the admin server and
//! the Open Platform callback receiver): HTTP/1 only, a client must send
//! its request headers within [`HEADER_READ_TIMEOUT`] (slow clients cannot
//! hold connections open), and requests in flight finish at shutdown.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A client that does not finish sending its request headers within this
/// long is disconnected.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long requests in flight at shutdown are given to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown`; `name` is what its log
/// lines call it ("admin HTTP", "open platform callback").
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    name: &'static str,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: do not spin on it.
                    tracing::warn!(error = %e, "{name}: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "{name} connection ended");
            }
        });
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}
