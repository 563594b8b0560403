//! The blocking-query watch of a service's healthy instances.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{ConsulClient, HealthQuery};
use crate::{Endpoint, Snapshot};

/// How a watch behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// How long each blocking query may wait (default 5 minutes, Consul's own).
    pub wait: Duration,
    /// Queries allowed in a burst (default 2) ...
    pub burst: u32,
    /// ... and one more per this period after it (default 1 s).
    pub refill: Duration,
    /// Back-off after the first failure; the n-th waits `n² ×` this (default 5 s) ...
    pub backoff: Duration,
    /// ... up to this (default 180 s).
    pub max_backoff: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(300),
            burst: 2,
            refill: Duration::from_secs(1),
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(180),
        }
    }
}

/// A token bucket: `burst` queries at once, then one per `refill`.
struct Bucket {
    tokens: f64,
    burst: f64,
    refill: Duration,
    last: Instant,
}

impl Bucket {
    async fn take(&mut self) {
        let now = Instant::now();
        let refilled =
            now.duration_since(self.last).as_secs_f64() / self.refill.as_secs_f64().max(1e-9);
        self.tokens = (self.tokens + refilled).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = self.refill.mul_f64(1.0 - self.tokens);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Watches the passing instances of `service` with blocking queries, following Consul's
/// documented rules:
///
/// * the index of each answer is sent back to block until a change; an index that goes
///   backwards resets to 0 (a non-blocking query), and no index below 1 is ever sent;
/// * an answer is compared with the last one before an update is published (a return is no
///   proof of change);
/// * queries are paced by a token bucket (burst 2), not a fixed sleep;
/// * after a failure the watch backs off (`n² × 5 s`, at most 180 s) and keeps publishing the
///   last good list, marked not fresh;
/// * the client timeout exceeds `wait + wait / 16`.
///
/// The watch stops when every receiver is dropped.
pub fn watch_service(
    client: ConsulClient,
    service: impl Into<String>,
    options: WatchOptions,
) -> watch::Receiver<Snapshot> {
    let service = service.into();
    let (sender, receiver) = watch::channel(Snapshot::default());
    tokio::spawn(async move {
        let mut index = 0u64;
        let mut failures = 0u32;
        let mut bucket = Bucket {
            tokens: f64::from(options.burst),
            burst: f64::from(options.burst),
            refill: options.refill,
            last: Instant::now(),
        };
        loop {
            if sender.is_closed() {
                return;
            }
            bucket.take().await;
            let query = HealthQuery {
                index: (index > 0).then_some(index),
                wait: Some(options.wait),
                passing: true,
                stale: true,
            };
            let answer = tokio::select! {
                answer = client.health_service(&service, query) => answer,
                () = sender.closed() => return,
            };
            match answer {
                Ok((entries, new_index)) => {
                    if failures > 0 {
                        tracing::info!(%service, "consul reachable again");
                    }
                    failures = 0;
                    index = if new_index < index { 0 } else { new_index };
                    Snapshot::publish(&sender, entries.iter().map(Endpoint::from).collect());
                }
                Err(error) => {
                    failures += 1;
                    let backoff = options
                        .backoff
                        .saturating_mul(failures.saturating_mul(failures))
                        .min(options.max_backoff);
                    tracing::warn!(%service, %error, ?backoff, "consul watch failed; keeping the last instances");
                    Snapshot::mark_stale(&sender);
                    index = 0;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = sender.closed() => return,
                    }
                }
            }
        }
    });
    receiver
}
