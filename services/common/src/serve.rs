//! Serving with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpListener;
use tower::Service;

use crate::stack::Kit;

/// Serves `app` on the configured address until SIGTERM or Ctrl-C, then drains: readiness turns
/// 503 (while new connections are still accepted for `DRAIN_DELAY_MS`), then no new connections
/// are accepted, and in-flight requests get `SHUTDOWN_GRACE_MS` to finish; then the kit's
/// background tasks stop, stage by stage ([`crate::tasks`]), each stage within the same grace.
/// Flush telemetry after it returns (drop the `TelemetryGuard`).
///
/// In production mode (`CONSUL_HTTP_ADDR` set) the service registers with the local Consul
/// agent once it listens, heartbeats while it runs, and deregisters as soon as shutdown begins,
/// before draining, so that callers stop choosing it (see [`crate::registry`]).
///
/// # Errors
///
/// The address cannot be bound, the Consul agent refuses the registration, or the listener
/// fails.
pub async fn serve<S>(app: S, kit: &Kit) -> std::io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let listener = TcpListener::bind(kit.config.listen).await?;
    let lease = crate::registry::register_from_env(&kit.config, &kit.health).await?;
    let shutdown = async move {
        shutdown_signal().await;
        if let Some(lease) = lease
            && let Err(error) = lease.deregister().await
        {
            tracing::warn!(%error, "could not deregister from consul; it will expire");
        }
    };
    serve_until(listener, app, kit, shutdown).await
}

/// [`serve`] on a bound listener, until `shutdown` completes. `app` is usually an axum
/// `Router` (through [`Kit::stack`]); any service of axum's requests will do.
///
/// # Errors
///
/// The listener fails.
pub async fn serve_until<S>(
    listener: TcpListener,
    app: S,
    kit: &Kit,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    tracing::info!(
        service = %kit.config.name,
        address = %listener.local_addr()?,
        "listening"
    );
    let health = kit.health.clone();
    let drain_delay = kit.config.drain_delay;
    let (draining, mut drained) = tokio::sync::watch::channel(false);
    let graceful = async move {
        shutdown.await;
        health.set_draining();
        if !drain_delay.is_zero() {
            // Readiness says 503 while new connections are still served: a balancer polling
            // it stops sending before any connection is refused.
            tracing::info!(
                ?drain_delay,
                "shutting down: readiness off, still accepting"
            );
            tokio::time::sleep(drain_delay).await;
        }
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = draining.send(true);
    };
    // Handlers may read the peer address (`ConnectInfo<SocketAddr>`), e.g. to limit logins per IP.
    let server = axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app),
    )
    .with_graceful_shutdown(graceful);
    let grace = kit.config.shutdown_grace;
    let grace_over = async move {
        if drained.wait_for(|draining| *draining).await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    // After the connections: the keyed requests whose callers left, so that none is cut off
    // halfway with its key claimed.
    let work = async move {
        let result = server.await;
        kit.keyed_requests_finished().await;
        result
    };
    let served = tokio::select! {
        result = work => result,
        () = grace_over => {
            tracing::warn!(grace_ms = grace.as_millis(), "grace period over: dropping the requests still running");
            Ok(())
        }
    };
    // No request runs any more: the background tasks stop, in order (consumers, then the
    // relay, which publishes what the last requests enqueued, then the sweepers).
    kit.tasks.shutdown(grace).await;
    tracing::info!("stopped");
    served
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
