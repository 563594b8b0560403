//! Liveness and readiness.
//!
//! Liveness answers whether the process should be restarted: it is always up while the process
//! can answer. Readiness answers whether it should receive traffic: every registered check
//! (database, broker, cache) runs concurrently, each under a timeout, and the answer is ready
//! only when all pass and the service is not draining for shutdown.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mainstay_telemetry::Health;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let health = Health::new().timeout(Duration::from_secs(1));
//! health.add_check("database", || async { Ok::<_, String>(()) });
//! health.add_check("broker", || async { Err("connection refused") });
//!
//! let report = health.readiness().await;
//! assert!(!report.is_ready());
//! assert_eq!(report.status_code(), 503);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The readiness checks of one service, cheap to clone; every clone is the same set.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    checks: RwLock<Vec<(String, CheckFn)>>,
    timeout: Duration,
    draining: AtomicBool,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.checks().into_iter().map(|(name, _)| name).collect();
        f.debug_struct("Health")
            .field("checks", &names)
            .field("timeout", &self.inner.timeout)
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// No checks, and a timeout of 2 seconds per check.
    #[must_use]
    pub fn new() -> Self {
        Self::with_timeout(Duration::from_secs(2))
    }

    fn with_timeout(timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                checks: RwLock::new(Vec::new()),
                timeout,
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// How long one check may take before it counts as failed. Keeps the checks added so far.
    #[must_use]
    pub fn timeout(self, timeout: Duration) -> Self {
        let health = Self::with_timeout(timeout);
        *health
            .inner
            .checks
            .write()
            .unwrap_or_else(PoisonError::into_inner) = self.checks();
        health
            .inner
            .draining
            .store(self.is_draining(), Ordering::Relaxed);
        health
    }

    /// Adds a readiness check. `check` is called at every readiness probe; an error's
    /// `Display` is reported in the body.
    pub fn add_check<F, Fut, E>(&self, name: impl Into<String>, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let check: CheckFn = Arc::new(move || {
            let future = check();
            Box::pin(async move { future.await.map_err(|e| e.to_string()) })
        });
        self.inner
            .checks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.into(), check));
    }

    /// Marks the service as shutting down: readiness fails from now on, so load balancers stop
    /// sending new requests while in-flight ones finish.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Whether [`set_draining`](Self::set_draining) was called.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    fn checks(&self) -> Vec<(String, CheckFn)> {
        self.inner
            .checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs every check concurrently, each bounded by the timeout.
    pub async fn readiness(&self) -> Readiness {
        let timeout = self.inner.timeout;
        let runs = self.checks().into_iter().map(|(name, check)| async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(timeout, check()).await {
                Ok(Ok(())) => CheckOutcome::Up,
                Ok(Err(error)) => CheckOutcome::Down(error),
                Err(_) => CheckOutcome::TimedOut(timeout),
            };
            CheckResult {
                name,
                outcome,
                elapsed: started.elapsed(),
            }
        });
        Readiness {
            checks: futures_util::future::join_all(runs).await,
            draining: self.is_draining(),
        }
    }
}

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// It passed.
    Up,
    /// It failed with this error.
    Down(String),
    /// It did not finish within the timeout.
    TimedOut(Duration),
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The name given to [`Health::add_check`].
    pub name: String,
    /// How it ended.
    pub outcome: CheckOutcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// The result of a readiness probe.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Every check, in the order they were added.
    pub checks: Vec<CheckResult>,
    /// Whether the service is draining for shutdown.
    pub draining: bool,
}

impl Readiness {
    /// Whether every check passed and the service is not draining.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        !self.draining && self.checks.iter().all(|c| c.outcome == CheckOutcome::Up)
    }

    /// 200 when ready, 503 otherwise.
    #[must_use]
    pub fn status_code(&self) -> u16 {
        if self.is_ready() { 200 } else { 503 }
    }

    /// The response body: `{"status": "up"|"down"|"draining", "checks": {name: {...}}}`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let checks: serde_json::Map<String, Value> = self
            .checks
            .iter()
            .map(|check| {
                let elapsed_ms = check.elapsed.as_secs_f64() * 1e3;
                let body = match &check.outcome {
                    CheckOutcome::Up => json!({"status": "up", "duration_ms": elapsed_ms}),
                    CheckOutcome::Down(error) => {
                        json!({"status": "down", "error": error, "duration_ms": elapsed_ms})
                    }
                    CheckOutcome::TimedOut(after) => json!({
                        "status": "down",
                        "error": format!("timed out after {} ms", after.as_millis()),
                        "duration_ms": elapsed_ms,
                    }),
                };
                (check.name.clone(), body)
            })
            .collect();
        let status = if self.draining {
            "draining"
        } else if self.is_ready() {
            "up"
        } else {
            "down"
        };
        json!({"status": status, "checks": checks})
    }
}
