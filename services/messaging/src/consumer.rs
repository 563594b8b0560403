//! The consumer loop: deliveries from a [`Transport`], each handled once through the inbox.
//!
//! A service writes a [`Handler`]; [`Consumer::run`] does the rest for every delivery:
//!
//! 1. the envelope is read; one that does not parse is a dead letter at once;
//! 2. a transaction begins, and the message id goes into the inbox
//!    ([`Inbox::first_time`](crate::Inbox::first_time)); seen before, the delivery is
//!    acknowledged with no second effect;
//! 3. the handler runs within that transaction, in a span that continues the publisher's trace;
//! 4. by its answer: [`Outcome::Ack`] commits, then acknowledges; [`Outcome::Retry`] (or a
//!    [`HandleError::Transient`], or a panic) rolls back and has the message delivered again
//!    after a delay, until `max_deliver` deliveries, then makes it a dead letter with the
//!    reason and the count; [`Outcome::Reject`] (or [`HandleError::Poison`], such as a body that
//!    does not decode) rolls back and makes it a dead letter at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;
use shop_common::store::{Database, Tx};
use tracing::Instrument as _;

use crate::inbox::Inbox;
use crate::message::{Envelope, Message, MessageId};
use crate::metrics::{DeliveryOutcome, MessagingMetrics};
use crate::relay::{BoxError, backoff_after};
use crate::transport::{ConsumerConfig, Delivery, Settlement, Transport, TransportError};

/// What a handler decided about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: the transaction commits, and the message is acknowledged.
    Ack,
    /// Not now: the transaction rolls back, and the message comes again after `after` (at
    /// most an hour; a dead letter once the consumer's `max_deliver` is spent).
    Retry {
        /// The delay.
        after: Duration,
        /// Why, kept for the dead letter it may become.
        reason: String,
    },
    /// Never: the transaction rolls back, and the message is a dead letter at once.
    Reject(String),
}

/// A handler could not handle a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// A failure that may pass (a database, a service called): retried with back-off.
    #[error("{0}")]
    Transient(BoxError),
    /// The message can never be handled (it does not decode, say): a dead letter at once.
    #[error("poison: {0}")]
    Poison(String),
}

impl From<shop_common::store::StoreError> for HandleError {
    fn from(error: shop_common::store::StoreError) -> Self {
        Self::Transient(Box::new(error))
    }
}

impl From<sqlx::Error> for HandleError {
    fn from(error: sqlx::Error) -> Self {
        Self::Transient(Box::new(error))
    }
}

impl From<crate::outbox::OutboxError> for HandleError {
    fn from(error: crate::outbox::OutboxError) -> Self {
        Self::Transient(Box::new(error))
    }
}

/// JSON that does not encode or decode will not do so on another delivery either: poison. A
/// reader's or writer's I/O failing under the JSON may pass: transient.
impl From<serde_json::Error> for HandleError {
    fn from(error: serde_json::Error) -> Self {
        if error.is_io() {
            Self::Transient(Box::new(error))
        } else {
            Self::Poison(format!("JSON: {error}"))
        }
    }
}

impl From<Poison> for HandleError {
    fn from(poison: Poison) -> Self {
        Self::Poison(poison.0)
    }
}

/// A message that is not what it claims, or not one this consumer reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Poison(pub String);

/// A message as a handler receives it.
#[derive(Debug)]
pub struct Inbound {
    /// The envelope, with its body still JSON ([`decode`](Self::decode) reads it).
    pub envelope: Envelope,
    /// Where it was published.
    pub subject: String,
    /// Which delivery this is: 1 the first time.
    pub delivered: u32,
}

impl Inbound {
    /// `message` as a handler receives it on its first delivery, with a new id, as the command
    /// of `saga`'s step if any: for tests of handlers and participants.
    ///
    /// # Errors
    ///
    /// `message` does not serialize to JSON.
    pub fn of<M: Message>(
        message: &M,
        saga: Option<crate::message::SagaRef>,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            envelope: Envelope {
                id: MessageId::new(),
                kind: M::KIND.to_owned(),
                version: M::VERSION,
                occurred_at_ms: shop_common::unix_millis(),
                key: message.key().into_owned(),
                saga,
                causation_id: None,
                body: serde_json::value::to_raw_value(message)?,
            },
            subject: message.subject().into_owned(),
            delivered: 1,
        })
    }

    /// Whether it is a `M`.
    #[must_use]
    pub fn is<M: Message>(&self) -> bool {
        self.envelope.kind == M::KIND
    }

    /// Reads the body as a `M`.
    ///
    /// # Errors
    ///
    /// [`Poison`]: it is another kind, a version newer than `M`'s, or a body that does not
    /// decode as one.
    pub fn decode<M: Message + DeserializeOwned>(&self) -> Result<M, Poison> {
        let envelope = &self.envelope;
        if envelope.kind != M::KIND {
            return Err(Poison(format!(
                "a {:?} where a {} was expected",
                envelope.kind.chars().take(64).collect::<String>(),
                M::KIND
            )));
        }
        if envelope.version > M::VERSION {
            return Err(Poison(format!(
                "{} version {}, newer than the {} this consumer reads",
                M::KIND,
                envelope.version,
                M::VERSION
            )));
        }
        serde_json::from_str(envelope.body.get())
            .map_err(|error| Poison(format!("{} body does not decode: {error}", M::KIND)))
    }
}

/// A consumer's logic, run for each message within the transaction of its inbox record.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles `message`, writing its effects (and any messages it sends, with
    /// [`Outbox::enqueue`](crate::Outbox::enqueue)) within `tx`. Never commit or roll back
    /// `tx`: the consumer does, by the answer.
    async fn handle(&self, message: &Inbound, tx: &mut Tx) -> Result<Outcome, HandleError>;
}

/// A shared handler is a handler.
#[async_trait]
impl<H: Handler + ?Sized> Handler for Arc<H> {
    async fn handle(&self, message: &Inbound, tx: &mut Tx) -> Result<Outcome, HandleError> {
        (**self).handle(message, tx).await
    }
}

/// The id in an envelope's JSON, if it is one.
pub(crate) fn envelope_id(payload: &[u8]) -> Option<MessageId> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: MessageId,
    }
    serde_json::from_slice::<Id>(payload).ok().map(|id| id.id)
}

/// How often a running consumer reads the depth of its dead letters into its metrics.
pub const DEPTH_EVERY: Duration = Duration::from_secs(15);

/// Runs a [`Handler`] over a durable consumer of a [`Transport`].
#[derive(Clone)]
pub struct Consumer {
    config: ConsumerConfig,
    transport: Arc<dyn Transport>,
    database: Database,
    handler: Arc<dyn Handler>,
    batch: usize,
    concurrency: usize,
    metrics: Option<MessagingMetrics>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("batch", &self.batch)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer of `transport` by `config`, handling with `handler` on `database` (the
    /// service's, which holds its inbox).
    #[must_use]
    pub fn new(
        config: ConsumerConfig,
        transport: Arc<dyn Transport>,
        database: Database,
        handler: Arc<dyn Handler>,
    ) -> Self {
        Self {
            config,
            transport,
            database,
            handler,
            batch: 32,
            concurrency: DEFAULT_CONCURRENCY,
            metrics: None,
        }
    }

    /// Deliveries fetched at once (default 32, at least 1); those of one key (one order, one
    /// product) are handled one after another, in the order they came.
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How many keys' deliveries of a batch are handled at once on PostgreSQL (default
    /// [`DEFAULT_CONCURRENCY`], at least 1; 1: every delivery after the one before). On SQLite,
    /// whose store has one connection, one at a time whatever this says.
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Counts its deliveries in `metrics` (`messaging_deliveries_total`), and, while it runs,
    /// the depth of its dead letters (`messaging_dead_letters`, read every [`DEPTH_EVERY`]
    /// and after each new one).
    #[must_use]
    pub fn metrics(mut self, metrics: MessagingMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The consumer's configuration.
    #[must_use]
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Handles deliveries until `stop` completes, finishing those in hand (the rest of a
    /// fetched batch is handed back, due at once, for the consumer after this one). Different keys'
    /// deliveries are handled at once ([`concurrency`](Self::concurrency)), one key's in the
    /// order they came.
    ///
    /// When the service's database fails outside the handler (the transaction cannot begin,
    /// the inbox cannot be written, the commit fails), the consumer holds the delivery and
    /// tries it again after a back-off until the database answers, rather than send it back:
    /// an outage shorter than `ack_wait × max_deliver` dead-letters nothing. A transport that
    /// fails, at start or later, is tried again after a back-off too.
    ///
    /// # Errors
    ///
    /// The consumer's configuration is invalid, or conflicts with the consumer as it exists
    /// ([`TransportError::Invalid`]): trying again would not help.
    pub async fn run(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), TransportError> {
        let mut backoff = Duration::ZERO;
        tokio::pin!(stop);
        let mut deliveries = loop {
            let opened = tokio::select! {
                biased;
                () = &mut stop => return Ok(()),
                opened = self.transport.consumer(&self.config) => opened,
            };
            match opened {
                Ok(deliveries) => break deliveries,
                Err(error @ TransportError::Invalid(_)) => return Err(error),
                Err(error) => {
                    backoff = backoff_after(backoff);
                    tracing::warn!(consumer = %self.config.name, %error, retry_in_ms = backoff.as_millis(), "cannot open the consumer");
                    if sleep_unless_stopped(stop.as_mut(), backoff).await {
                        return Ok(());
                    }
                }
            }
        };
        backoff = Duration::ZERO;
        // SQLite has one connection (see `Database::connect`): deliveries at once would only
        // wait for it in turn.
        let concurrency = match self.database {
            Database::Sqlite(_) => 1,
            Database::Postgres(_) => self.concurrency,
        };
        // The depth of the dead letters, read into the metrics now, after a delivery becomes
        // one, and every DEPTH_EVERY (an operator's replay lowers it).
        let mut depth_read_at: Option<tokio::time::Instant> = None;
        loop {
            self.read_depth(&mut depth_read_at).await;
            // A fetch is never dropped half-way: on JetStream a message the server handed to
            // a pull request that is then dropped is lost to this consumer until its ack wait
            // runs out (30 s). Stopping meanwhile waits for the fetch (at most FETCH_WAIT) and
            // hands back what it brought.
            let fetch = deliveries.fetch(self.batch, FETCH_WAIT);
            tokio::pin!(fetch);
            let fetched = tokio::select! {
                biased;
                () = &mut stop => {
                    if let Ok(batch) = fetch.await {
                        for delivery in batch {
                            self.release(delivery).await;
                        }
                    }
                    return Ok(());
                }
                fetched = &mut fetch => fetched,
            };
            let batch = match fetched {
                Ok(batch) => {
                    backoff = Duration::ZERO;
                    batch
                }
                Err(error) => {
                    backoff = backoff_after(backoff);
                    tracing::warn!(consumer = %self.config.name, %error, retry_in_ms = backoff.as_millis(), "fetch failed");
                    if sleep_unless_stopped(stop.as_mut(), backoff).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            // Each key's deliveries in order, different keys' at once (up to `concurrency`):
            // one order's messages never overtake each other, and a slow one (a provider
            // call) holds up no other order's.
            let (stopping, stopped) = tokio::sync::watch::channel(false);
            let dead_lettered = std::sync::atomic::AtomicBool::new(false);
            let this = &self;
            // One at a time: in the order they came, whatever their keys.
            let groups = if concurrency == 1 {
                batch.into_iter().map(|delivery| vec![delivery]).collect()
            } else {
                by_key(batch)
            };
            let work =
                futures_util::stream::iter(groups).for_each_concurrent(concurrency, |deliveries| {
                    let (mut stopped, dead_lettered) = (stopped.clone(), &dead_lettered);
                    async move {
                        for delivery in deliveries {
                            if *stopped.borrow() {
                                this.release(delivery).await;
                                continue;
                            }
                            let Some(settlement) = this.holding(&delivery, &mut stopped).await
                            else {
                                this.release(delivery).await;
                                continue;
                            };
                            if matches!(settlement, Settlement::DeadLetter { .. }) {
                                dead_lettered.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                            this.settle(delivery, settlement).await;
                        }
                    }
                });
            tokio::pin!(work);
            let stop_now = tokio::select! {
                biased;
                () = &mut stop => true,
                () = &mut work => false,
            };
            if stop_now {
                // The deliveries in hand are finished; the rest are handed back, due now.
                let _ = stopping.send(true);
                work.await;
                return Ok(());
            }
            if dead_lettered.load(std::sync::atomic::Ordering::Relaxed) {
                depth_read_at = None;
            }
        }
    }

    /// Handles one delivery, holding it while the service's database fails (see
    /// [`run`](Self::run)); `None` when `stopped` says to stop meanwhile (it is handed back).
    async fn holding(
        &self,
        delivery: &Delivery,
        stopped: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<Settlement> {
        let mut held = Duration::ZERO;
        loop {
            match self.attempt(delivery).await {
                Attempt::Settle(settlement) => return Some(self.counted(settlement)),
                Attempt::Duplicate => return Some(self.duplicate()),
                Attempt::StoreDown(error) => {
                    held = backoff_after(held);
                    tracing::warn!(consumer = %self.config.name, %error, retry_in_ms = held.as_millis(), "the database failed: holding the delivery");
                    tokio::select! {
                        biased;
                        _ = stopped.wait_for(|stop| *stop) => return None,
                        () = tokio::time::sleep(held) => {}
                    }
                }
            }
        }
    }

    /// Reads the depth of the consumer's dead letters into its metrics, when it has metrics
    /// and the last reading is older than [`DEPTH_EVERY`] (or there is none).
    async fn read_depth(&self, read_at: &mut Option<tokio::time::Instant>) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        if read_at.is_some_and(|at| at.elapsed() < DEPTH_EVERY) {
            return;
        }
        *read_at = Some(tokio::time::Instant::now());
        match self.transport.dead_letter_count(&self.config.name).await {
            Ok(depth) => metrics.dead_letters(&self.config.name, depth),
            Err(error) => {
                tracing::debug!(consumer = %self.config.name, %error, "cannot read the dead letters' depth");
            }
        }
    }

    /// Handles one delivery and settles it.
    pub async fn deliver(&self, delivery: Delivery) {
        let settlement = self.process(&delivery).await;
        self.settle(delivery, settlement).await;
    }

    /// Hands back a delivery the consumer stops before handling, due at once: the next
    /// consumer (this one after a restart) has it now rather than after `ack_wait`. It counts
    /// as a delivery toward `max_deliver`, as any redelivery does.
    async fn release(&self, delivery: Delivery) {
        let settlement = Settlement::Retry {
            after: Duration::ZERO,
            reason: "the consumer stopped before handling it".to_owned(),
        };
        self.settle(delivery, settlement).await;
    }

    async fn settle(&self, delivery: Delivery, settlement: Settlement) {
        if let Err(error) = delivery.settle(settlement).await {
            // Delivered again after ack_wait, and the inbox absorbs it.
            tracing::warn!(consumer = %self.config.name, %error, "could not settle a delivery");
        }
    }

    /// Handles one delivery and says how to settle it, without settling it (as a consumer that
    /// dies before it settles would leave it). A database that failed outside the handler asks
    /// for the delivery again after a second, never for a dead letter.
    pub async fn process(&self, delivery: &Delivery) -> Settlement {
        match self.attempt(delivery).await {
            Attempt::Settle(settlement) => self.counted(settlement),
            Attempt::Duplicate => self.duplicate(),
            Attempt::StoreDown(error) => self.counted(Settlement::Retry {
                after: Duration::from_secs(1),
                reason: format!("the database failed: {error}"),
            }),
        }
    }

    async fn attempt(&self, delivery: &Delivery) -> Attempt {
        let envelope: Envelope = match serde_json::from_slice(&delivery.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                return Attempt::Settle(self.dead(
                    delivery,
                    format!("poison: the payload is not an envelope: {error}"),
                ));
            }
        };
        if delivery.delivered > self.config.max_deliver {
            // Its earlier deliveries were never settled (the consumer died or hung each time),
            // unless one of them did have its effect and only the acknowledgement was lost.
            return match Inbox::contains(&self.database, &self.config.name, envelope.id).await {
                Ok(true) => Attempt::Duplicate,
                Ok(false) => Attempt::Settle(self.dead(
                    delivery,
                    format!(
                        "delivered {} times, never settled within ack_wait",
                        delivery.delivered - 1
                    ),
                )),
                Err(error) => Attempt::StoreDown(error),
            };
        }
        let span = tracing::info_span!(
            "consume",
            otel.kind = "consumer",
            messaging.consumer = %self.config.name,
            messaging.destination = %clip(&delivery.subject),
            messaging.message_id = %envelope.id,
            message.kind = %clip(&envelope.kind),
            delivered = delivery.delivered,
        );
        mainstay_telemetry::propagation::extract_message(&span, &delivery.headers);
        let inbound = Inbound {
            envelope,
            subject: delivery.subject.clone(),
            delivered: delivery.delivered,
        };
        let outcome = std::panic::AssertUnwindSafe(self.handle(&inbound))
            .catch_unwind()
            .instrument(span)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::Handler(HandleError::Transient(
                    "the handler panicked".into(),
                )))
            });
        Attempt::Settle(match outcome {
            Err(Failure::Store(error)) => return Attempt::StoreDown(error),
            Ok(Handled::Duplicate) => return Attempt::Duplicate,
            Ok(Handled::By(Outcome::Ack)) => Settlement::Ack,
            Ok(Handled::By(Outcome::Retry { after, reason })) => {
                self.retry(delivery, after.min(MAX_RETRY_DELAY), reason)
            }
            Err(Failure::Handler(HandleError::Transient(error))) => {
                let after = retry_delay(delivery.delivered);
                self.retry(delivery, after, error.to_string())
            }
            Ok(Handled::By(Outcome::Reject(reason))) => self.dead(delivery, reason),
            Err(Failure::Handler(HandleError::Poison(reason))) => {
                self.dead(delivery, format!("poison: {reason}"))
            }
        })
    }

    /// The transaction: the inbox record, the handler, and the commit when it says so.
    async fn handle(&self, inbound: &Inbound) -> Result<Handled, Failure> {
        // Handlers read, then write by what they read, with conditional updates that must
        // see what other transactions committed: READ COMMITTED whatever the database's
        // default (and the write lock from the start on SQLite).
        let mut tx = self
            .database
            .begin_read_committed()
            .await
            .map_err(Failure::Store)?;
        let first = Inbox::first_time(&mut tx, &self.config.name, inbound.envelope.id)
            .await
            .map_err(Failure::Store)?;
        if !first {
            tracing::debug!("seen before: acknowledged with no second effect");
            return Ok(Handled::Duplicate);
        }
        let outcome = self
            .handler
            .handle(inbound, &mut tx)
            .await
            .map_err(Failure::Handler)?;
        if outcome == Outcome::Ack {
            tx.commit().await.map_err(Failure::Store)?;
        }
        Ok(Handled::By(outcome))
    }

    /// Counts a settlement in the metrics, and passes it on.
    fn counted(&self, settlement: Settlement) -> Settlement {
        if let Some(metrics) = &self.metrics {
            let outcome = match &settlement {
                Settlement::Ack => DeliveryOutcome::Ack,
                Settlement::Retry { .. } => DeliveryOutcome::Retry,
                Settlement::DeadLetter { .. } => DeliveryOutcome::DeadLetter,
            };
            metrics.delivered(&self.config.name, outcome);
        }
        settlement
    }

    fn duplicate(&self) -> Settlement {
        if let Some(metrics) = &self.metrics {
            metrics.delivered(&self.config.name, DeliveryOutcome::Duplicate);
        }
        Settlement::Ack
    }

    fn retry(&self, delivery: &Delivery, after: Duration, reason: String) -> Settlement {
        if delivery.delivered >= self.config.max_deliver {
            return self.dead(
                delivery,
                format!("gave up after {} deliveries: {reason}", delivery.delivered),
            );
        }
        tracing::info!(consumer = %self.config.name, delivered = delivery.delivered, reason = %clip(&reason), "retrying");
        Settlement::Retry { after, reason }
    }

    fn dead(&self, delivery: &Delivery, reason: String) -> Settlement {
        tracing::warn!(consumer = %self.config.name, subject = %clip(&delivery.subject), delivered = delivery.delivered, reason = %clip(&reason), "dead letter");
        Settlement::DeadLetter { reason }
    }
}

/// How many keys' deliveries a consumer handles at once, unless told otherwise: each holds a
/// connection of the service's pool (10) for its transaction, and a service runs up to three
/// consumers beside its requests, its relay and its sweepers, so that together they leave
/// the requests room.
pub const DEFAULT_CONCURRENCY: usize = 3;

/// `batch` split by the envelopes' keys, each key's deliveries in the order they came, the keys
/// in the order of their first delivery. A payload that is not an envelope is a key of its own
/// (it becomes a dead letter by itself).
fn by_key(batch: Vec<Delivery>) -> Vec<Vec<Delivery>> {
    #[derive(serde::Deserialize)]
    struct Keyed {
        key: String,
    }
    let mut groups: Vec<Vec<Delivery>> = Vec::new();
    let mut index = std::collections::HashMap::<String, usize>::new();
    for delivery in batch {
        match serde_json::from_slice::<Keyed>(&delivery.payload) {
            Ok(Keyed { key }) => match index.get(&key) {
                Some(&at) => groups[at].push(delivery),
                None => {
                    index.insert(key, groups.len());
                    groups.push(vec![delivery]);
                }
            },
            Err(_) => groups.push(vec![delivery]),
        }
    }
    groups
}

/// How long one fetch waits for a first delivery: also how long a stop may wait for a fetch
/// in flight.
const FETCH_WAIT: Duration = Duration::from_secs(1);

/// Sleeps `wait`, or less if `stop` completes first: whether it did.
async fn sleep_unless_stopped<F: std::future::Future<Output = ()>>(
    stop: std::pin::Pin<&mut F>,
    wait: Duration,
) -> bool {
    tokio::select! {
        biased;
        () = stop => true,
        () = tokio::time::sleep(wait) => false,
    }
}

/// The longest a handler's [`Outcome::Retry`] may put a message off.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3_600);

/// What one attempt at a delivery came to.
enum Attempt {
    /// Settle it so.
    Settle(Settlement),
    /// Seen before: acknowledge it, with no effect.
    Duplicate,
    /// The service's database failed outside the handler: not the message's fault.
    StoreDown(shop_common::store::StoreError),
}

/// What the transaction of a delivery came to.
enum Handled {
    /// The message was seen before: no effect.
    Duplicate,
    /// The handler's answer.
    By(Outcome),
}

/// Why the transaction of a delivery failed.
enum Failure {
    /// The kit's own statements (begin, inbox, commit).
    Store(shop_common::store::StoreError),
    /// The handler's.
    Handler(HandleError),
}

/// At most 200 characters of what a publisher wrote, for logs and span fields.
fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(200) {
        None => std::borrow::Cow::Borrowed(text),
        Some((at, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..at])),
    }
}

/// The delay before delivery `delivered + 1` after a transient failure: 100 ms, doubling,
/// at most 30 s.
fn retry_delay(delivered: u32) -> Duration {
    (1..delivered.max(1)).fold(backoff_after(Duration::ZERO), |wait, _| backoff_after(wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_retried_after_a_doubling_delay() {
        let delays: Vec<u128> = (1..=4).map(|n| retry_delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800]);
        assert_eq!(retry_delay(40), Duration::from_secs(30));
    }

    /// A reader that fails.
    struct Broken;

    impl std::io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("connection reset"))
        }
    }

    #[test]
    fn json_that_does_not_decode_is_poison_and_a_failed_read_is_transient() {
        let bad = serde_json::from_str::<u32>("\"x\"").unwrap_err();
        assert!(matches!(HandleError::from(bad), HandleError::Poison(_)));
        let failed = serde_json::from_reader::<_, u32>(Broken).unwrap_err();
        assert!(matches!(
            HandleError::from(failed),
            HandleError::Transient(_)
        ));
    }
}
