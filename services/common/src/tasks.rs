//! The service's background tasks (the outbox relay, consumers, sweepers), started with it,
//! watched by its readiness, and stopped in order when it shuts down.
//!
//! ```no_run
//! # async fn example(kit: &shop_common::Kit) {
//! use shop_common::tasks::Stage;
//!
//! kit.tasks.spawn("outbox-relay", Stage::Relay, |stop| async move {
//!     // relay.run(stop).await
//!     stop.cancelled().await;
//! });
//! // `serve` stops them after the last request: consumers first (no new work is taken),
//! // then the relay (what the last handlers enqueued is published), then the sweepers.
//! # }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mainstay_telemetry::Health;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// When a task is stopped at shutdown, in this order, each stage finished before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Takes work from outside (a message consumer): stopped first, so that nothing new starts.
    Consumers,
    /// Publishes what the service wrote (the outbox relay): stopped once nothing can write.
    Relay,
    /// Housekeeping (pruning, expiry scans): stopped last.
    Sweepers,
}

impl Stage {
    const ALL: [Self; 3] = [Self::Consumers, Self::Relay, Self::Sweepers];
}

struct Task {
    name: String,
    stage: Stage,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    tasks: Vec<Task>,
    stopping: bool,
    /// Where the `tasks` check goes on the first spawn, if anywhere.
    health: Option<Health>,
}

/// The service's background tasks. Clones share them.
#[derive(Clone, Default)]
pub struct Supervisor {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Supervisor")
            .field(
                "tasks",
                &inner.tasks.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .field("stopping", &inner.stopping)
            .finish()
    }
}

impl Supervisor {
    /// No tasks yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// No tasks yet; the first one spawned adds the `tasks` check to `health`
    /// ([`add_check`](Self::add_check)), so that a service without tasks has no such check.
    #[must_use]
    pub fn reporting_to(health: &Health) -> Self {
        let supervisor = Self::default();
        supervisor.lock().health = Some(health.clone());
        supervisor
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `task` as `name`, to be stopped at `stage`: it is given the token its stop is
    /// signalled on, and should return soon after (finishing the work in hand). A task that
    /// returns, or panics, before the service stops makes readiness fail (see
    /// [`add_check`](Self::add_check)).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, stage: Stage, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(task(stop.clone()));
        let mut inner = self.lock();
        if inner.stopping {
            stop.cancel(); // started during shutdown: stopped at once
        }
        if let Some(health) = inner.health.take() {
            self.add_check(&health);
        }
        inner.tasks.push(Task {
            name,
            stage,
            stop,
            handle,
        });
    }

    /// Spawns `pass` every `period` (the first at once; a late pass delays the next rather
    /// than bunching them), until the service stops: a sweeper's or a scanner's loop. A pass
    /// runs to its end: the stop is heeded between passes.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or with a `period` of zero.
    pub fn every<F, Fut>(&self, name: impl Into<String>, stage: Stage, period: Duration, pass: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        self.spawn(name, stage, move |stop| async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                pass().await;
            }
        });
    }

    /// The names of the tasks that ended before the service began to stop.
    #[must_use]
    pub fn ended(&self) -> Vec<String> {
        let inner = self.lock();
        if inner.stopping {
            return Vec::new();
        }
        inner
            .tasks
            .iter()
            .filter(|task| task.handle.is_finished())
            .map(|task| task.name.clone())
            .collect()
    }

    /// Adds a readiness check named `tasks` to `health`: down while any task has ended before
    /// the service began to stop (a relay that died publishes nothing).
    pub fn add_check(&self, health: &Health) {
        let supervisor = self.clone();
        health.add_check("tasks", move || {
            let ended = supervisor.ended();
            async move {
                if ended.is_empty() {
                    Ok(())
                } else {
                    Err(format!("ended: {}", ended.join(", ")))
                }
            }
        });
    }

    /// Stops the tasks stage by stage ([`Stage`]'s order): signals every task of a stage, and
    /// waits up to `grace` for them before the next stage; a task still running then is
    /// aborted, and named in the log.
    pub async fn shutdown(&self, grace: Duration) {
        let tasks = {
            let mut inner = self.lock();
            inner.stopping = true;
            std::mem::take(&mut inner.tasks)
        };
        let mut tasks: Vec<Option<Task>> = tasks.into_iter().map(Some).collect();
        for stage in Stage::ALL {
            let mut running = Vec::new();
            for slot in &mut tasks {
                if slot.as_ref().is_some_and(|task| task.stage == stage)
                    && let Some(task) = slot.take()
                {
                    task.stop.cancel();
                    running.push(task);
                }
            }
            for mut task in running {
                match tokio::time::timeout(grace, &mut task.handle).await {
                    Ok(Ok(())) => tracing::debug!(task = %task.name, "stopped"),
                    Ok(Err(error)) => {
                        tracing::warn!(task = %task.name, %error, "ended with a panic");
                    }
                    Err(_) => {
                        tracing::warn!(task = %task.name, grace_ms = grace.as_millis(), "did not stop in time: aborted");
                        task.handle.abort();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that records when it is stopped, then takes `finishing` to finish.
    fn recorded(
        order: &Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
        finishing: Duration,
    ) -> impl FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let order = order.clone();
        move |stop| {
            Box::pin(async move {
                stop.cancelled().await;
                tokio::time::sleep(finishing).await;
                order.lock().unwrap().push(name);
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_periodic_task_runs_at_once_then_every_period_until_stopped() {
        let supervisor = Supervisor::new();
        let passes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = passes.clone();
        supervisor.every(
            "scanner",
            Stage::Sweepers,
            Duration::from_secs(5),
            move || {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            },
        );
        let count = || passes.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(count(), 1, "the first pass at once");
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(count(), 3, "then one every period");
        supervisor.shutdown(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(count(), 3, "none after the stop");
    }

    #[tokio::test(start_paused = true)]
    async fn stages_stop_in_order_each_finished_before_the_next() {
        let supervisor = Supervisor::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        // Spawned out of order; the relay takes a while to finish its batch.
        supervisor.spawn(
            "sweeper",
            Stage::Sweepers,
            recorded(&order, "sweeper", Duration::ZERO),
        );
        supervisor.spawn(
            "relay",
            Stage::Relay,
            recorded(&order, "relay", Duration::from_secs(2)),
        );
        supervisor.spawn(
            "consumer",
            Stage::Consumers,
            recorded(&order, "consumer", Duration::from_millis(10)),
        );
        supervisor.shutdown(Duration::from_secs(5)).await;
        assert_eq!(*order.lock().unwrap(), ["consumer", "relay", "sweeper"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_will_not_stop_is_aborted_after_the_grace() {
        let supervisor = Supervisor::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        supervisor.spawn("stuck", Stage::Consumers, |_stop| async {
            std::future::pending::<()>().await;
        });
        supervisor.spawn(
            "relay",
            Stage::Relay,
            recorded(&order, "relay", Duration::ZERO),
        );
        let started = tokio::time::Instant::now();
        supervisor.shutdown(Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(
            *order.lock().unwrap(),
            ["relay"],
            "the next stage still stops"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_fails_while_a_task_has_ended_early() {
        let health = Health::new();
        let supervisor = Supervisor::reporting_to(&health);
        assert!(
            health.readiness().await.checks.is_empty(),
            "no tasks, no check"
        );
        supervisor.spawn("relay", Stage::Relay, |stop| async move {
            stop.cancelled().await;
        });
        assert!(health.readiness().await.is_ready());
        supervisor.spawn("consumer", Stage::Consumers, |_stop| async {
            panic!("consumer bug");
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let readiness = health.readiness().await;
        assert!(!readiness.is_ready());
        assert_eq!(supervisor.ended(), ["consumer"]);
        // Stopping is not failing.
        supervisor.shutdown(Duration::from_secs(1)).await;
        assert!(supervisor.ended().is_empty());
    }
}
