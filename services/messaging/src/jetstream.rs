//! The production transport: NATS JetStream, through `async-nats`.
//!
//! One transport serves one namespace (`shop`, say) on one NATS account:
//!
//! - the stream `<NAMESPACE>` holds the messages, on `<namespace>.<subject>` (a message's
//!   subject `catalog.events` is published on `shop.catalog.events`), de-duplicated by
//!   `Nats-Msg-Id` (the message id) within a two-minute window;
//! - a consumer is a durable pull consumer of that stream, named as the consumer, with explicit
//!   acknowledgement; the consumer loop counts deliveries against `max_deliver` itself, so that
//!   the server never drops a message silently when the count runs out;
//! - dead letters go to the stream `<NAMESPACE>_DLQ`, on `dlq.<namespace>.<consumer>`, with the
//!   reason, the delivery count and the original subject in headers (`Shop-Dead-Reason`,
//!   `Shop-Delivered`, `Shop-Subject`); the original is then terminated;
//! - a replay publishes a dead letter again on its subject with `Shop-Replay-For: <consumer>`,
//!   which every other consumer acknowledges unseen, and deletes it from the dead letters.
//!
//! - a subscription is an ordered push consumer per subject filter: ephemeral, in memory,
//!   unacknowledged, starting after the stream's last message. A reconnect of the client ends
//!   it (seen within a second), as do missed idle heartbeats, and [`follow`](crate::follow)
//!   reports a gap and subscribes again.
//!
//! Nothing here needs a server newer than 2.9.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull, push};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;
use futures_util::StreamExt as _;

use crate::outbox::Pending;
use crate::relay::{BoxError, PublishError, Publisher};
use crate::transport::{
    Broadcast, ConsumerConfig, DeadLetter, Deliveries, Delivery, Settle, Settlement, Subscription,
    Transport, TransportError, check_subscribed,
};

/// The header that names the one consumer a replayed message is for.
pub const REPLAY_FOR: &str = "Shop-Replay-For";
/// The header of a dead letter that says why.
pub const DEAD_REASON: &str = "Shop-Dead-Reason";
/// The header of a dead letter with its delivery count.
pub const DELIVERED: &str = "Shop-Delivered";
/// The header of a dead letter with its original subject (without the namespace).
pub const SUBJECT: &str = "Shop-Subject";
/// The header of a dead letter with the broker id of the original.
pub const BROKER_ID: &str = "Shop-Broker-Id";
/// The header of a dead letter kept without its body (too large with the headers): the
/// original's sequence in the stream, where the body is.
pub const PAYLOAD_DROPPED: &str = "Shop-Payload-Dropped";

const MSG_ID: &str = "Nats-Msg-Id";

/// How long the stream keeps a message: longer than any consumer may be down, and shorter
/// than consumers keep their inbox records ([`Inbox::prune`](crate::Inbox::prune)).
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3_600);
/// How long a dead letter waits for an operator.
pub const DEAD_LETTERS_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3_600);
/// Publishes in flight before the relay waits for their acknowledgements (async-nats allows
/// 5 000, and would wait for one of them forever if the relay did not).
const IN_FLIGHT: usize = 1_000;

/// The most dead letters one call lists or replays (call again for more).
const MAX_LISTED: usize = 10_000;

fn valid_namespace(namespace: &str) -> bool {
    (1..=32).contains(&namespace.len())
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && namespace != "dlq"
        && !namespace.ends_with("_dlq")
}

/// Headers the server acts on (`Nats-Expected-Stream`, say): never passed through from what a
/// publisher wrote, so that none can steer the stream or the dead letters.
fn server_header(name: &str) -> bool {
    name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-")
}

fn unavailable(error: impl Into<BoxError>) -> TransportError {
    TransportError::Unavailable(error.into())
}

struct Inner {
    context: jetstream::Context,
    namespace: String,
    /// The messages' stream, as opened.
    events: stream::Stream,
    /// The dead letters' stream, as opened.
    dead: stream::Stream,
}

/// The stream `name` on `subjects`, created when missing.
///
/// # Errors
///
/// The server failed, or a stream of that name exists on other subjects (made by something
/// else: not ours to write into).
async fn open_stream(
    context: &jetstream::Context,
    name: String,
    subjects: String,
    max_age: Duration,
) -> Result<stream::Stream, TransportError> {
    let stream = context
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subjects.clone()],
            duplicate_window: Duration::from_secs(120),
            max_age,
            storage: StorageType::File,
            ..stream::Config::default()
        })
        .await
        .map_err(unavailable)?;
    let existing = &stream.cached_info().config.subjects;
    if *existing != [subjects.clone()] {
        return Err(TransportError::Invalid(format!(
            "stream {name} exists on {existing:?}, not on {subjects:?}"
        )));
    }
    Ok(stream)
}

impl Inner {
    fn stream(&self) -> String {
        self.namespace.to_ascii_uppercase()
    }

    fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.stream())
    }

    fn subject(&self, subject: &str) -> String {
        format!("{}.{subject}", self.namespace)
    }

    /// A subject as the broker has it, without the namespace.
    fn unqualified(&self, subject: &str) -> String {
        subject
            .strip_prefix(self.namespace.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(subject)
            .to_owned()
    }

    fn dlq_subject(&self, consumer: &str) -> String {
        format!("dlq.{}.{consumer}", self.namespace)
    }
}

/// The JetStream transport of one namespace. Clones share the connection.
#[derive(Clone)]
pub struct JetStreamTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JetStreamTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamTransport")
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

impl JetStreamTransport {
    /// Connects to the NATS server at `url` (`NATS_URL`) and opens `namespace`.
    ///
    /// # Errors
    ///
    /// See [`open`](Self::open); or the server cannot be reached.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, TransportError> {
        let client = async_nats::connect(url).await.map_err(unavailable)?;
        Self::open(client, namespace).await
    }

    /// Opens `namespace` (1 to 32 of `a-z 0-9 _ -`) on `client`, creating its two streams
    /// when they do not exist.
    ///
    /// # Errors
    ///
    /// An invalid namespace, or the server refused or did not answer.
    pub async fn open(client: async_nats::Client, namespace: &str) -> Result<Self, TransportError> {
        if !valid_namespace(namespace) {
            return Err(TransportError::Invalid(format!(
                "namespace {:?}: 1 to 32 of a-z 0-9 _ -, neither `dlq` nor ending in `_dlq`",
                namespace.chars().take(40).collect::<String>()
            )));
        }
        let context = jetstream::new(client);
        let upper = namespace.to_ascii_uppercase();
        let events = open_stream(
            &context,
            upper.clone(),
            format!("{namespace}.>"),
            EVENTS_MAX_AGE,
        )
        .await?;
        let dead = open_stream(
            &context,
            format!("{upper}_DLQ"),
            format!("dlq.{namespace}.>"),
            DEAD_LETTERS_MAX_AGE,
        )
        .await?;
        let inner = Inner {
            context,
            namespace: namespace.to_owned(),
            events,
            dead,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Deletes the namespace's two streams, with every message and consumer in them (for
    /// tests, and for an operator who means it).
    ///
    /// # Errors
    ///
    /// The server refused or did not answer.
    pub async fn delete(&self) -> Result<(), TransportError> {
        for name in [self.inner.stream(), self.inner.dlq_stream()] {
            self.inner
                .context
                .delete_stream(&name)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

fn headers_of(pending: &HashMap<String, String>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pending {
        // Names are ours (the trace context); one that is not a header name, or one the server
        // would act on, is left out.
        if server_header(name) {
            continue;
        }
        if let Ok(name) = name.parse::<HeaderName>() {
            headers.insert(name, HeaderValue::from_lossy(value));
        }
    }
    headers
}

fn map_of(headers: Option<&HeaderMap>) -> HashMap<String, String> {
    headers
        .map(|headers| {
            headers
                .iter()
                .filter_map(|(name, values)| {
                    let name = name.to_string();
                    if server_header(&name) {
                        return None;
                    }
                    Some((name, values.first()?.as_str().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(HeaderValue::as_str)
}

#[async_trait]
impl Publisher for JetStreamTransport {
    async fn publish(&self, batch: &[Pending]) -> Result<(), PublishError> {
        let context = &self.inner.context;
        // Sent one after another without waiting, the acknowledgements awaited in order: one
        // round trip for many messages, and the held prefix known exactly. Never two messages
        // of one key in flight: were the first lost and the second stored, the first would be
        // stored after it when published again. So a key still in flight first waits for the
        // acknowledgements up to its previous message (not for everything in flight), and at
        // most IN_FLIGHT are in flight.
        let mut acks = Acks::default();
        let mut last_of_key: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::new();
        for (position, pending) in batch.iter().enumerate() {
            if let Some(&previous) = last_of_key.get(pending.key.as_str()) {
                acks.until_held(previous + 1).await?;
            }
            if acks.in_flight.len() >= IN_FLIGHT {
                acks.until_held(acks.held + 1).await?;
            }
            if !crate::transport::valid_subject(&pending.subject) {
                acks.until_held(position).await?;
                return Err(PublishError::refused(
                    position,
                    format!(
                        "{:?} is not a subject",
                        pending.subject.chars().take(64).collect::<String>()
                    ),
                ));
            }
            let message = PublishMessage::build()
                .payload(pending.payload.clone().into())
                .headers(headers_of(&pending.headers))
                .message_id(pending.id.to_string());
            match context
                .send_publish(self.inner.subject(&pending.subject), message)
                .await
            {
                Ok(ack) => {
                    acks.in_flight.push_back(ack);
                    last_of_key.insert(pending.key.as_str(), position);
                }
                Err(error) => {
                    acks.until_held(position).await?;
                    // Too large is the message's fault, for good; anything else is the
                    // connection's.
                    return Err(
                        if error.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded
                        {
                            PublishError::refused(position, error)
                        } else {
                            PublishError::unavailable(position, error)
                        },
                    );
                }
            }
        }
        acks.until_held(batch.len()).await
    }
}

/// The acknowledgements in flight, in the order sent, after the `held` already awaited.
#[derive(Default)]
struct Acks {
    in_flight: std::collections::VecDeque<jetstream::context::PublishAckFuture>,
    held: usize,
}

impl Acks {
    /// Awaits acknowledgements in order until `count` messages are held (or none is in flight);
    /// the first failure is the error, with the count held before it.
    async fn until_held(&mut self, count: usize) -> Result<(), PublishError> {
        while self.held < count {
            let Some(ack) = self.in_flight.pop_front() else {
                break;
            };
            ack.await
                .map_err(|error| PublishError::unavailable(self.held, error))?;
            self.held += 1;
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for JetStreamTransport {
    async fn consumer(
        &self,
        config: &ConsumerConfig,
    ) -> Result<Box<dyn Deliveries>, TransportError> {
        config.validate()?;
        let inner = &self.inner;
        let stream = &inner.events;
        // One filter per consumer before nats-server 2.10: several subjects are filtered here.
        let filter_subject = match config.subjects.as_slice() {
            [one] => inner.subject(one),
            _ => format!("{}.>", inner.namespace),
        };
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &config.name,
                pull::Config {
                    durable_name: Some(config.name.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    // Unlimited here: the consumer loop makes a dead letter of a message
                    // delivered more than max_deliver times, with the reason.
                    max_deliver: -1,
                    filter_subject: filter_subject.clone(),
                    deliver_policy: DeliverPolicy::All,
                    max_ack_pending: 10_000,
                    ..pull::Config::default()
                },
            )
            .await
            .map_err(unavailable)?;
        // An existing consumer is returned as it is: one on other subjects would silently
        // receive the wrong messages (a 2.9 server cannot change a consumer's filter).
        let existing = &consumer.cached_info().config;
        if existing.filter_subject != filter_subject {
            return Err(TransportError::Invalid(format!(
                "consumer {} exists on {:?}, not on {filter_subject:?}: delete it or use a new name",
                config.name, existing.filter_subject
            )));
        }
        if existing.ack_wait != config.ack_wait {
            tracing::warn!(consumer = %config.name, existing_ms = existing.ack_wait.as_millis(), wanted_ms = config.ack_wait.as_millis(), "the consumer keeps the ack_wait it was created with");
        }
        Ok(Box::new(JetStreamDeliveries {
            inner: self.inner.clone(),
            consumer,
            config: config.clone(),
        }))
    }

    async fn dead_letters(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, TransportError> {
        crate::transport::check_consumer_name(consumer)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let messages = self.dead_messages(consumer, limit.min(MAX_LISTED)).await?;
        Ok(messages
            .into_iter()
            .map(|message| {
                let headers = Some(&message.headers);
                let text = |name| header(headers, name).unwrap_or_default().to_owned();
                DeadLetter {
                    seq: i64::try_from(message.sequence).unwrap_or(i64::MAX),
                    consumer: consumer.to_owned(),
                    broker_id: text(BROKER_ID),
                    message_id: crate::consumer::envelope_id(&message.payload),
                    subject: text(SUBJECT),
                    reason: text(DEAD_REASON),
                    delivered: header(headers, DELIVERED)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                    dead_at_ms: i64::try_from(message.time.unix_timestamp_nanos() / 1_000_000)
                        .unwrap_or(0),
                }
            })
            .collect())
    }

    async fn dead_letter_count(&self, consumer: &str) -> Result<u64, TransportError> {
        crate::transport::check_consumer_name(consumer)?;
        // The stream counts its messages per subject, and each consumer has one dead-letter
        // subject: a stream-info request (two when there are any: the client asks for a next
        // page), where a reader would have to be created and deleted.
        let subject = self.inner.dlq_subject(consumer);
        let mut subjects = self
            .inner
            .dead
            .info_with_subjects(&subject)
            .await
            .map_err(unavailable)?;
        let mut count = 0_u64;
        while let Some(counted) = subjects.next().await {
            let (name, messages) = counted.map_err(unavailable)?;
            if name == subject {
                count += u64::try_from(messages).unwrap_or(u64::MAX);
            }
        }
        Ok(count)
    }

    async fn replay(&self, consumer: &str, seq: Option<i64>) -> Result<u64, TransportError> {
        crate::transport::check_consumer_name(consumer)?;
        if seq.is_some_and(|seq| seq <= 0) {
            return Err(TransportError::Invalid(format!("dead letter {seq:?}")));
        }
        let inner = &self.inner;
        let dlq = &inner.dead;
        let sequences: Vec<u64> = match seq {
            Some(seq) => vec![u64::try_from(seq).unwrap_or(0)],
            None => self
                .dead_messages(consumer, crate::transport::MAX_REPLAYED)
                .await?
                .iter()
                .map(|message| message.sequence)
                .collect(),
        };
        let mut replayed = 0;
        for sequence in sequences {
            let message = match dlq.get_raw_message(sequence).await {
                Ok(message) => message,
                Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                    continue; // replayed already, or never was
                }
                Err(error) => return Err(unavailable(error)),
            };
            if message.subject.as_str() != inner.dlq_subject(consumer) {
                continue; // another consumer's
            }
            let headers = Some(&message.headers);
            let Some(subject) = header(headers, SUBJECT) else {
                continue;
            };
            let mut republished = HeaderMap::new();
            for (name, values) in message.headers.iter() {
                let name = name.to_string();
                if [DEAD_REASON, DELIVERED, SUBJECT, BROKER_ID, MSG_ID].contains(&name.as_str()) {
                    continue;
                }
                if let (Ok(name), Some(value)) = (name.parse::<HeaderName>(), values.first()) {
                    republished.insert(name, value.clone());
                }
            }
            republished.insert(REPLAY_FOR, consumer);
            let publish = PublishMessage::build()
                .payload(message.payload.clone())
                .headers(republished)
                .message_id(format!("replay:{}:{sequence}", inner.dlq_stream()));
            inner
                .context
                .send_publish(inner.subject(subject), publish)
                .await
                .map_err(unavailable)?
                .await
                .map_err(unavailable)?;
            dlq.delete_message(sequence).await.map_err(unavailable)?;
            replayed += 1;
        }
        Ok(replayed)
    }

    async fn subscribe(
        &self,
        subjects: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        check_subscribed(subjects)?;
        let inner = &self.inner;
        let after = inner
            .events
            .get_info()
            .await
            .map_err(unavailable)?
            .state
            .last_sequence;
        let client = inner.context.client();
        let statistics = client.statistics();
        let connects = statistics
            .connects
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut messages = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let consumer = inner
                .events
                .create_consumer(push::OrderedConfig {
                    deliver_subject: client.new_inbox(),
                    filter_subject: inner.subject(subject),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    },
                    ..push::OrderedConfig::default()
                })
                .await
                .map_err(unavailable)?;
            let feed: Feed = consumer
                .messages()
                .await
                .map_err(unavailable)?
                .map(|message| message.map_err(unavailable))
                // One filter's end ends the subscription: its messages would be missed.
                .chain(futures_util::stream::once(async {
                    Err(unavailable("a filter's consumer ended"))
                }))
                .boxed();
            messages.push(feed);
        }
        let mut check = tokio::time::interval(RECONNECT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Box::new(JetStreamSubscription {
            inner: inner.clone(),
            messages: futures_util::stream::select_all(messages),
            after,
            statistics,
            connects,
            check,
        }))
    }
}

/// One filter's messages; the stream's end is an error.
type Feed = futures_util::stream::BoxStream<'static, Result<jetstream::Message, TransportError>>;

/// How often a subscription waiting for a message looks whether the client reconnected.
const RECONNECT_CHECK: Duration = Duration::from_secs(1);

/// A subscription of the JetStream transport: one ordered consumer per filter, merged.
///
/// async-nats rebuilds an ordered consumer by itself after a reconnect, from where it left off
/// by its own count, and says nothing: across a server that lost its store, or a stream made
/// again, that count is wrong and messages would be skipped unseen. So any reconnect of the
/// client ends the subscription with an error (a gap, for [`follow`](crate::follow)), and it is
/// opened again from the stream as it is then.
struct JetStreamSubscription {
    inner: Arc<Inner>,
    messages: futures_util::stream::SelectAll<Feed>,
    /// The stream's last sequence when it was opened: what came before is skipped.
    after: u64,
    /// The client's connection count, and its value when this was opened.
    statistics: Arc<async_nats::Statistics>,
    connects: u64,
    check: tokio::time::Interval,
}

impl JetStreamSubscription {
    fn reconnected(&self) -> bool {
        self.statistics
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            != self.connects
    }
}

#[async_trait]
impl Subscription for JetStreamSubscription {
    async fn next(&mut self) -> Result<Broadcast, TransportError> {
        loop {
            if self.reconnected() {
                return Err(unavailable(
                    "the client reconnected: messages may have been missed",
                ));
            }
            let message = tokio::select! {
                next = self.messages.next() => match next {
                    Some(message) => message?,
                    None => return Err(unavailable("the subscription ended")),
                },
                _ = self.check.tick() => continue,
            };
            let sequence = message.info().map_or(0, |info| info.stream_sequence);
            let headers = message.headers.as_ref();
            if sequence <= self.after || header(headers, REPLAY_FOR).is_some() {
                continue;
            }
            let subject = self.inner.unqualified(message.subject.as_str());
            return Ok(Broadcast {
                subject,
                headers: map_of(headers),
                payload: message.payload.to_vec(),
            });
        }
    }
}

impl JetStreamTransport {
    /// `consumer`'s dead letters as stored, read through a consumer of the dead-letter stream
    /// that lives for this call.
    /// An ephemeral reader of `consumer`'s dead letters, from the first (delete it when done;
    /// the server does a minute after its last use).
    async fn dead_reader(&self, consumer: &str) -> Result<PullConsumer, TransportError> {
        let inner = &self.inner;
        inner
            .dead
            .create_consumer(pull::Config {
                filter_subject: inner.dlq_subject(consumer),
                ack_policy: AckPolicy::None,
                deliver_policy: DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(60),
                ..pull::Config::default()
            })
            .await
            .map_err(unavailable)
    }

    async fn dead_messages(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<jetstream::message::StreamMessage>, TransportError> {
        let dlq = &self.inner.dead;
        let reader = self.dead_reader(consumer).await?;
        let mut messages = reader
            .fetch()
            .max_messages(limit.max(1))
            .messages()
            .await
            .map_err(unavailable)?;
        let mut read = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(unavailable)?;
            let sequence = message.info().map_err(unavailable)?.stream_sequence;
            read.push(jetstream::message::StreamMessage {
                subject: message.subject.clone(),
                sequence,
                headers: message.headers.clone().unwrap_or_default(),
                payload: message.payload.clone(),
                time: message.info().map_err(unavailable)?.published,
            });
        }
        let _ = dlq.delete_consumer(&reader.cached_info().name).await;
        Ok(read)
    }
}

/// A durable consumer of the JetStream transport.
struct JetStreamDeliveries {
    inner: Arc<Inner>,
    consumer: PullConsumer,
    config: ConsumerConfig,
}

#[async_trait]
impl Deliveries for JetStreamDeliveries {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError> {
        let max = max.max(1);
        let mut messages = Vec::new();
        if !wait.is_zero() {
            // Wait for the first, then take what else is there at once.
            let mut first = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(wait.max(Duration::from_millis(10)))
                .messages()
                .await
                .map_err(unavailable)?;
            while let Some(message) = first.next().await {
                messages.push(message.map_err(unavailable)?);
            }
            if messages.is_empty() {
                return Ok(Vec::new());
            }
        }
        if messages.len() < max {
            // What else is there now; an answer lost in a reconnect must not hold the first
            // message (already delivered) for good, nor an error throw it away.
            let wanted = max - messages.len();
            let rest = async {
                let mut rest = self
                    .consumer
                    .fetch()
                    .max_messages(wanted)
                    .messages()
                    .await
                    .map_err(unavailable)?;
                while let Some(message) = rest.next().await {
                    messages.push(message.map_err(unavailable)?);
                }
                Ok::<_, TransportError>(())
            };
            let ended = tokio::time::timeout(Duration::from_secs(5), rest).await;
            if let Ok(Err(error)) | Err(error) = ended.map_err(unavailable) {
                if messages.is_empty() {
                    return Err(error);
                }
                tracing::debug!(%error, "fetched part of a batch");
            }
        }
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            let headers = message.headers.as_ref();
            let subject = self.inner.unqualified(message.subject.as_str());
            let for_another = header(headers, REPLAY_FOR).is_some_and(|c| c != self.config.name);
            if for_another || !self.config.receives(&subject) {
                // Not this consumer's: settled unseen.
                message.ack().await.map_err(unavailable)?;
                continue;
            }
            let info = message.info().map_err(unavailable)?;
            let delivered = u32::try_from(info.delivered).unwrap_or(u32::MAX);
            let stream_sequence = info.stream_sequence;
            let broker_id = header(headers, MSG_ID).unwrap_or_default().to_owned();
            let mut map = map_of(headers);
            map.remove(MSG_ID);
            deliveries.push(Delivery::new(
                broker_id,
                subject,
                map,
                message.payload.to_vec(),
                delivered,
                Box::new(JetStreamSettle {
                    inner: self.inner.clone(),
                    consumer: self.config.name.clone(),
                    stream_sequence,
                    message,
                }),
            ));
        }
        Ok(deliveries)
    }
}

/// Settles one delivery of the JetStream transport.
struct JetStreamSettle {
    inner: Arc<Inner>,
    consumer: String,
    stream_sequence: u64,
    message: jetstream::Message,
}

#[async_trait]
impl Settle for JetStreamSettle {
    async fn settle(
        self: Box<Self>,
        delivery: &Delivery,
        how: Settlement,
    ) -> Result<(), TransportError> {
        let message = &self.message;
        match how {
            Settlement::Ack => message.ack().await.map_err(unavailable),
            Settlement::Retry { after, .. } => message
                .ack_with(AckKind::Nak(Some(after)))
                .await
                .map_err(unavailable),
            Settlement::DeadLetter { reason } => {
                let inner = &self.inner;
                let headers = || {
                    let mut headers = headers_of(&delivery.headers);
                    headers.insert(
                        DEAD_REASON,
                        HeaderValue::from_lossy(&crate::local::truncate(&reason)),
                    );
                    headers.insert(DELIVERED, delivery.delivered.to_string().as_str());
                    headers.insert(SUBJECT, HeaderValue::from_lossy(&delivery.subject));
                    headers.insert(BROKER_ID, HeaderValue::from_lossy(&delivery.broker_id));
                    headers
                };
                let id = format!(
                    "dlq:{}:{}:{}",
                    inner.stream(),
                    self.consumer,
                    self.stream_sequence
                );
                let publish = PublishMessage::build()
                    .payload(delivery.payload.clone().into())
                    .headers(headers())
                    .message_id(id.clone());
                // Kept first, then terminated: a crash between the two delivers it again, and
                // the dead letter's id absorbs the second copy.
                let subject = inner.dlq_subject(&self.consumer);
                let kept = match inner.context.send_publish(subject.clone(), publish).await {
                    Err(error)
                        if error.kind()
                            == jetstream::context::PublishErrorKind::MaxPayloadExceeded =>
                    {
                        // With its headers it no longer fits: kept without its body, which
                        // stays in the stream under its sequence until the stream's max age.
                        let mut headers = headers();
                        headers.insert(PAYLOAD_DROPPED, self.stream_sequence.to_string().as_str());
                        let publish = PublishMessage::build().headers(headers).message_id(id);
                        inner.context.send_publish(subject, publish).await
                    }
                    sent => sent,
                };
                kept.map_err(unavailable)?.await.map_err(unavailable)?;
                // Confirmed by the server: a lost Term would bring the message back after the
                // de-duplication window, and a second dead letter with it.
                message
                    .double_ack_with(AckKind::Term)
                    .await
                    .map_err(unavailable)
            }
        }
    }
}
