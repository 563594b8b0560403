//! A registration tied to the lifetime of the process: TTL heartbeats that report the
//! instance's health, deregistration on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;

use super::client::{ConsulClient, ConsulError};
use super::model::{CheckDefinition, CheckUpdate, Registration};

/// What a heartbeat tells Consul about the instance. Callers that ask Consul for passing
/// instances only (mainstay-discovery's watch does) stop choosing one that is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckStatus {
    /// Ready for traffic.
    Passing,
    /// Not ready for traffic for now (a database down, draining), or serving with a problem
    /// worth an operator's attention; the output says which. Consul's `passing` filter, which
    /// mainstay-discovery's watch uses, leaves a warning instance out, so callers go
    /// elsewhere, while the instance stays registered. Prefer it to [`Critical`](Self::Critical)
    /// for a state the instance may recover from.
    Warning(String),
    /// Broken: callers should go elsewhere (the output says why). Consul deregisters an
    /// instance that stays critical for the registration's `DeregisterCriticalServiceAfter`;
    /// the lease's next heartbeat then registers it again. The lease reports it itself when
    /// the report does not answer within a third of the TTL.
    Critical(String),
}

impl CheckStatus {
    fn update(&self) -> CheckUpdate {
        let (status, output) = match self {
            Self::Passing => ("passing", ""),
            Self::Warning(output) => ("warning", output.as_str()),
            Self::Critical(output) => ("critical", output.as_str()),
        };
        CheckUpdate {
            status: status.to_owned(),
            output: output.to_owned(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning(_) => "warning",
            Self::Critical(_) => "critical",
        }
    }
}

type Report = Arc<dyn Fn() -> BoxFuture<'static, CheckStatus> + Send + Sync>;

/// A service instance registered with a TTL check that a background task keeps up to date.
///
/// * The check is updated every TTL/3, so two heartbeats may be lost before Consul marks the
///   instance critical. [`start`](Self::start) reports it passing each time;
///   [`start_reporting`](Self::start_reporting) reports what a health function says (a
///   service's readiness), so that an instance whose database is down leaves rotation while
///   its process lives. If the agent no longer knows the check (it lost its state), the
///   instance is registered again.
/// * [`deregister`](Self::deregister) stops the heartbeat and removes the instance: call it on
///   graceful shutdown, before the server stops accepting.
/// * Dropping the lease stops the heartbeat only. The check then goes critical after its TTL,
///   and Consul removes the instance after `DeregisterCriticalServiceAfter`, which is always
///   set: a crashed process does not linger in the catalog.
#[derive(Debug)]
pub struct Lease {
    client: ConsulClient,
    service_id: String,
    heartbeat: Option<JoinHandle<()>>,
}

impl Lease {
    /// Registers `registration` with a TTL check of `ttl` (its check, if any, is replaced),
    /// removed by Consul `deregister_after` once critical, and starts heartbeating.
    ///
    /// # Errors
    ///
    /// The agent refused the registration or could not be reached.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(
        client: ConsulClient,
        registration: Registration,
        ttl: Duration,
        deregister_after: Duration,
    ) -> Result<Self, ConsulError> {
        Self::start_reporting(client, registration, ttl, deregister_after, || async {
            CheckStatus::Passing
        })
        .await
    }

    /// [`start`](Self::start), reporting on registration and on every heartbeat what
    /// `report` says. A report that takes longer than a heartbeat's interval (TTL/3) counts
    /// as critical: an instance too slow to say it is ready is not.
    ///
    /// # Errors
    ///
    /// The agent refused the registration or could not be reached.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start_reporting<F, Fut>(
        client: ConsulClient,
        mut registration: Registration,
        ttl: Duration,
        deregister_after: Duration,
        report: F,
    ) -> Result<Self, ConsulError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckStatus> + Send + 'static,
    {
        let ttl = ttl.max(Duration::from_secs(1));
        let every = ttl / 3;
        let report: Report = Arc::new(move || Box::pin(report()));
        let check_id = format!("service:{}", registration.id);
        let first = status_within(&report, every).await;
        registration.check = Some(CheckDefinition {
            check_id: Some(check_id.clone()),
            status: Some(first.name().to_owned()),
            ..CheckDefinition::ttl(ttl, deregister_after)
        });
        client.register(&registration).await?;
        if first != CheckStatus::Passing {
            // The registration carries the status alone; the update carries the reason.
            let _ = client.update_check(&check_id, &first.update()).await;
        }
        let service_id = registration.id.clone();
        let heartbeat = tokio::spawn(heartbeat(
            client.clone(),
            registration,
            check_id,
            every,
            report,
        ));
        Ok(Self {
            client,
            service_id,
            heartbeat: Some(heartbeat),
        })
    }

    /// The registered instance's id.
    #[must_use]
    pub fn service_id(&self) -> &str {
        &self.service_id
    }

    /// Stops the heartbeat and deregisters the instance.
    ///
    /// # Errors
    ///
    /// The agent refused or could not be reached; Consul then removes the instance after its
    /// critical timeout.
    pub async fn deregister(mut self) -> Result<(), ConsulError> {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
        self.client.deregister(&self.service_id).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }
}

/// What `report` says, or critical when it has not said it within `within`.
async fn status_within(report: &Report, within: Duration) -> CheckStatus {
    tokio::time::timeout(within, report())
        .await
        .unwrap_or_else(|_| {
            CheckStatus::Critical(format!("no health report within {} ms", within.as_millis()))
        })
}

/// Updates the check every `every` with what `report` says; when the agent no longer knows
/// the check (it lost its state, or an operator removed the instance), registers the instance
/// again.
async fn heartbeat(
    client: ConsulClient,
    mut registration: Registration,
    check_id: String,
    every: Duration,
    report: Report,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // registered with a fresh report just now
    loop {
        ticks.tick().await;
        let health = status_within(&report, every).await;
        let update = health.update();
        match client.update_check(&check_id, &update).await {
            Ok(()) => {}
            // Consul 1.11.2 and later answer 404 for an unknown check; older agents 500
            // "CheckID does not have associated TTL" (spring-cloud-consul#808 re-registers on
            // both).
            Err(ConsulError::Status { status, body })
                if status == 404
                    || (status == 500 && body.contains("does not have associated TTL")) =>
            {
                tracing::warn!(%check_id, "consul forgot this instance; registering it again");
                if let Some(check) = registration.check.as_mut() {
                    check.status = Some(health.name().to_owned());
                }
                if let Err(error) = client.register(&registration).await {
                    tracing::warn!(%check_id, %error, "consul registration failed");
                }
            }
            Err(error) => tracing::warn!(%check_id, %error, "consul heartbeat failed"),
        }
    }
}
