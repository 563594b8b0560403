//! A registration tied to the lifetime of the process: TTL heartbeats, deregistration on
//! shutdown.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::client::{ConsulClient, ConsulError};
use super::model::{CheckDefinition, CheckUpdate, Registration};

/// A service instance registered with a TTL check that a background task keeps passing.
///
/// * The check is marked passing every TTL/3, so two heartbeats may be lost before Consul
///   marks the instance critical. If the agent no longer knows the check (it lost its state),
///   the instance is registered again.
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
        mut registration: Registration,
        ttl: Duration,
        deregister_after: Duration,
    ) -> Result<Self, ConsulError> {
        let ttl = ttl.max(Duration::from_secs(1));
        let check_id = format!("service:{}", registration.id);
        registration.check = Some(CheckDefinition {
            check_id: Some(check_id.clone()),
            ..CheckDefinition::ttl(ttl, deregister_after)
        });
        client.register(&registration).await?;
        let service_id = registration.id.clone();
        let heartbeat = tokio::spawn(heartbeat(client.clone(), registration, check_id, ttl / 3));
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

/// Marks the check passing every `every`; when the agent no longer knows the check (it lost
/// its state, or an operator removed the instance), registers the instance again.
async fn heartbeat(
    client: ConsulClient,
    registration: Registration,
    check_id: String,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // registered passing just now
    loop {
        ticks.tick().await;
        let update = CheckUpdate {
            status: "passing".to_owned(),
            output: String::new(),
        };
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
                if let Err(error) = client.register(&registration).await {
                    tracing::warn!(%check_id, %error, "consul registration failed");
                }
            }
            Err(error) => tracing::warn!(%check_id, %error, "consul heartbeat failed"),
        }
    }
}
