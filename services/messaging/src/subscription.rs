//! Following subjects for state that can be rebuilt: a cache that change events invalidate.
//!
//! ```no_run
//! # fn demo(tasks: &shop_common::tasks::Supervisor, transport: std::sync::Arc<dyn shop_messaging::Transport>) {
//! use shop_common::tasks::Stage;
//! use shop_messaging::follow;
//!
//! let subjects = vec!["catalog.events".to_owned()];
//! tasks.spawn("catalog-cache", Stage::Consumers, move |stop| {
//!     follow(transport, subjects, stop.cancelled_owned(), |_followed| {
//!         // A change, or a gap in which one may have been missed: what is cached may be stale.
//!         // cache.invalidate_all();
//!     })
//! });
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::TransportConfig;
use crate::transport::{Broadcast, Transport, TransportError};

/// What [`follow`] reports.
#[derive(Debug)]
pub enum Followed<'a> {
    /// A message on the followed subjects.
    Message(&'a Broadcast),
    /// Messages may have been missed: nothing was followed before this (the subscription has
    /// just been opened, for the first time or again after an error). Drop what was built from
    /// earlier messages.
    Gap,
}

/// The first wait before subscribing again after a failure; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before subscribing again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a subscription must have lived for the back-off to start over when it is lost.
pub const STEADY: Duration = Duration::from_secs(30);

/// Follows `subjects` on `transport` until `stop` completes, calling `on` with
/// [`Followed::Gap`] each time the subscription is opened (first, and again after it is lost)
/// and [`Followed::Message`] for each message. A subscription refused or lost is opened again
/// after a back-off from [`FIRST_BACKOFF`], doubling to [`MAX_BACKOFF`], which starts over
/// once a subscription has lived [`STEADY`]: one that keeps failing at once does not clear a
/// cache ten times a second. Invalid `subjects` are logged, and end it at once.
pub async fn follow<F>(
    transport: Arc<dyn Transport>,
    subjects: Vec<String>,
    stop: impl Future<Output = ()>,
    mut on: F,
) where
    F: FnMut(Followed<'_>) + Send,
{
    tokio::pin!(stop);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let opened = tokio::select! {
            biased;
            () = &mut stop => return,
            opened = transport.subscribe(&subjects) => opened,
        };
        match opened {
            Ok(mut subscription) => {
                let opened_at = tokio::time::Instant::now();
                on(Followed::Gap);
                loop {
                    let next = tokio::select! {
                        biased;
                        () = &mut stop => return,
                        next = subscription.next() => next,
                    };
                    match next {
                        Ok(message) => on(Followed::Message(&message)),
                        Err(error) => {
                            if opened_at.elapsed() >= STEADY {
                                backoff = FIRST_BACKOFF;
                            }
                            tracing::warn!(%error, ?subjects, retry_in = ?backoff, "subscription lost");
                            break;
                        }
                    }
                }
            }
            Err(TransportError::Invalid(error)) => {
                tracing::error!(%error, ?subjects, "cannot follow these subjects");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, ?subjects, retry_in = ?backoff, "cannot subscribe");
            }
        }
        // Lost or refused: again after the back-off.
        tokio::select! {
            biased;
            () = &mut stop => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// [`follow`], on the transport `config` names, which it opens itself: again with the same
/// back-off until it can (the caller runs meanwhile, with nothing followed), or until `stop`.
pub async fn follow_config<F>(
    config: TransportConfig,
    subjects: Vec<String>,
    stop: impl Future<Output = ()>,
    on: F,
) where
    F: FnMut(Followed<'_>) + Send,
{
    let bus = match &config {
        TransportConfig::JetStream { namespace, .. } => {
            format!("NATS JetStream, namespace {namespace}")
        }
        TransportConfig::Local { .. } => "the local bus (BUS_DATABASE_URL)".to_owned(),
    };
    tokio::pin!(stop);
    let mut backoff = FIRST_BACKOFF;
    let transport = loop {
        let opened = tokio::select! {
            biased;
            () = &mut stop => return,
            opened = config.open() => opened,
        };
        match opened {
            Ok(transport) => break transport,
            Err(error) => {
                tracing::warn!(%error, bus, retry_in = ?backoff, "cannot open the transport");
            }
        }
        tokio::select! {
            biased;
            () = &mut stop => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    tracing::info!(bus, ?subjects, "following");
    follow(transport, subjects, stop, on).await;
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::outbox::Pending;
    use crate::relay::{PublishError, Publisher};
    use crate::transport::{ConsumerConfig, DeadLetter, Deliveries, Subscription};

    /// What one subscribe gives: refused, or a subscription that yields these (a message,
    /// `"wait"` to wait 31 s first, or `None` for an error), then waits forever.
    type Opening = Option<Vec<Option<&'static str>>>;

    struct Scripted {
        openings: Mutex<VecDeque<Opening>>,
        opened_at: Mutex<Vec<tokio::time::Instant>>,
    }

    struct ScriptedSubscription(VecDeque<Option<&'static str>>);

    #[async_trait]
    impl Subscription for ScriptedSubscription {
        async fn next(&mut self) -> Result<Broadcast, TransportError> {
            if self.0.front() == Some(&Some("wait")) {
                self.0.pop_front();
                tokio::time::sleep(Duration::from_secs(31)).await;
            }
            match self.0.pop_front() {
                Some(Some(body)) => Ok(Broadcast {
                    subject: "catalog.events".to_owned(),
                    headers: HashMap::new(),
                    payload: body.as_bytes().to_vec(),
                }),
                Some(None) => Err(TransportError::Unavailable("connection lost".into())),
                None => std::future::pending().await,
            }
        }
    }

    #[async_trait]
    impl Publisher for Scripted {
        async fn publish(&self, _: &[Pending]) -> Result<(), PublishError> {
            Ok(())
        }
    }

    #[async_trait]
    impl Transport for Scripted {
        async fn consumer(
            &self,
            _: &ConsumerConfig,
        ) -> Result<Box<dyn Deliveries>, TransportError> {
            Err(TransportError::Invalid("not in this test".into()))
        }
        async fn dead_letters(&self, _: &str, _: usize) -> Result<Vec<DeadLetter>, TransportError> {
            Ok(Vec::new())
        }
        async fn dead_letter_count(&self, _: &str) -> Result<u64, TransportError> {
            Ok(0)
        }
        async fn replay(&self, _: &str, _: Option<i64>) -> Result<u64, TransportError> {
            Ok(0)
        }
        async fn subscribe(
            &self,
            subjects: &[String],
        ) -> Result<Box<dyn Subscription>, TransportError> {
            crate::transport::check_subscribed(subjects)?;
            self.opened_at
                .lock()
                .unwrap()
                .push(tokio::time::Instant::now());
            match self.openings.lock().unwrap().pop_front().flatten() {
                Some(items) => Ok(Box::new(ScriptedSubscription(items.into()))),
                None => Err(TransportError::Unavailable("broker down".into())),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_opening_is_a_gap_and_failures_back_off() {
        let transport = Arc::new(Scripted {
            openings: Mutex::new(VecDeque::from([
                None,
                None,
                Some(vec![Some("a"), None]),
                Some(vec![Some("wait"), None]),
                Some(vec![Some("b")]),
            ])),
            opened_at: Mutex::new(Vec::new()),
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio::sync::watch::channel(false);
        let following = tokio::spawn({
            let seen = seen.clone();
            let transport: Arc<dyn Transport> = transport.clone();
            let stop = stop.1.clone();
            async move {
                follow(
                    transport,
                    vec!["catalog.events".to_owned()],
                    async move {
                        let mut stop = stop;
                        let _ = stop.wait_for(|stop| *stop).await;
                    },
                    |followed| {
                        seen.lock().unwrap().push(match followed {
                            Followed::Gap => "gap".to_owned(),
                            Followed::Message(message) => {
                                String::from_utf8(message.payload.clone()).unwrap()
                            }
                        });
                    },
                )
                .await;
            }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(*seen.lock().unwrap(), ["gap", "a", "gap", "gap", "b"]);
        // Refused twice: again after 100 ms, then 200 ms; lost at once after a message: again
        // after 400 ms (it did not live long enough to start the back-off over); lost after
        // living 31 s: again after 100 ms.
        let opened = transport.opened_at.lock().unwrap().clone();
        let gaps: Vec<Duration> = opened.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            gaps,
            [
                Duration::from_millis(100),
                Duration::from_millis(200),
                Duration::from_millis(400),
                Duration::from_millis(31_100),
            ]
        );
        stop.0.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), following)
            .await
            .expect("stopped when told")
            .unwrap();
    }

    #[tokio::test]
    async fn invalid_subjects_end_it_without_a_gap() {
        let transport: Arc<dyn Transport> = Arc::new(Scripted {
            openings: Mutex::new(VecDeque::new()),
            opened_at: Mutex::new(Vec::new()),
        });
        let mut gaps = 0;
        follow(
            transport,
            vec!["catalog..events".to_owned()],
            std::future::pending(),
            |_| gaps += 1,
        )
        .await;
        assert_eq!(gaps, 0);
    }
}
