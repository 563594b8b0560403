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
//! Nothing here needs a server newer than 2.9.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;
use futures_util::StreamExt as _;

use crate::outbox::Pending;
use crate::relay::{BoxError, PublishError, Publisher};
use crate::transport::{
    ConsumerConfig, DeadLetter, Deliveries, Delivery, Settle, Settlement, Transport, TransportError,
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

const MSG_ID: &str = "Nats-Msg-Id";

fn unavailable(error: impl Into<BoxError>) -> TransportError {
    TransportError::Unavailable(error.into())
}

struct Inner {
    context: jetstream::Context,
    namespace: String,
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
        let valid = (1..=32).contains(&namespace.len())
            && namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(TransportError::Invalid(format!(
                "namespace {:?}: 1 to 32 of a-z 0-9 _ -",
                namespace.chars().take(40).collect::<String>()
            )));
        }
        let inner = Inner {
            context: jetstream::new(client),
            namespace: namespace.to_owned(),
        };
        let streams = [
            (inner.stream(), format!("{namespace}.>")),
            (inner.dlq_stream(), format!("dlq.{namespace}.>")),
        ];
        for (name, subjects) in streams {
            inner
                .context
                .get_or_create_stream(stream::Config {
                    name,
                    subjects: vec![subjects],
                    duplicate_window: Duration::from_secs(120),
                    storage: StorageType::File,
                    ..stream::Config::default()
                })
                .await
                .map_err(unavailable)?;
        }
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
        // Names are ours (the trace context); one that is not a header name is left out.
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
                    Some((name.to_string(), values.first()?.as_str().to_owned()))
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
        // Sent one after another without waiting, then the acknowledgements awaited in order:
        // one round trip for the batch, and the held prefix known exactly.
        let mut acks = Vec::with_capacity(batch.len());
        let mut refused = None;
        for pending in batch {
            let message = PublishMessage::build()
                .payload(pending.payload.clone().into())
                .headers(headers_of(&pending.headers))
                .message_id(pending.id.to_string());
            match context
                .send_publish(self.inner.subject(&pending.subject), message)
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        let sent = acks.len();
        for (held, ack) in acks.into_iter().enumerate() {
            ack.await
                .map_err(|error| PublishError::unavailable(held, error))?;
        }
        match refused {
            None => Ok(()),
            // Too large is the message's fault, for good; anything else is the connection's.
            Some(error)
                if error.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded =>
            {
                Err(PublishError::refused(sent, error))
            }
            Some(error) => Err(PublishError::unavailable(sent, error)),
        }
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
        let stream = inner
            .context
            .get_stream(inner.stream())
            .await
            .map_err(unavailable)?;
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
                    filter_subject,
                    deliver_policy: DeliverPolicy::All,
                    max_ack_pending: 10_000,
                    ..pull::Config::default()
                },
            )
            .await
            .map_err(unavailable)?;
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
        let messages = self.dead_messages(consumer, limit).await?;
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

    async fn replay(&self, consumer: &str, seq: Option<i64>) -> Result<u64, TransportError> {
        let inner = &self.inner;
        let dlq = inner
            .context
            .get_stream(inner.dlq_stream())
            .await
            .map_err(unavailable)?;
        let sequences: Vec<u64> = match seq {
            Some(seq) => vec![u64::try_from(seq).unwrap_or(0)],
            None => self
                .dead_messages(consumer, 100_000)
                .await?
                .iter()
                .map(|message| message.sequence)
                .collect(),
        };
        let mut replayed = 0;
        for sequence in sequences {
            let Ok(message) = dlq.get_raw_message(sequence).await else {
                continue; // replayed already, or never was
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
}

impl JetStreamTransport {
    /// `consumer`'s dead letters as stored, read through a consumer of the dead-letter stream
    /// that lives for this call.
    async fn dead_messages(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<jetstream::message::StreamMessage>, TransportError> {
        let inner = &self.inner;
        let dlq = inner
            .context
            .get_stream(inner.dlq_stream())
            .await
            .map_err(unavailable)?;
        let reader: PullConsumer = dlq
            .create_consumer(pull::Config {
                filter_subject: inner.dlq_subject(consumer),
                ack_policy: AckPolicy::None,
                deliver_policy: DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(60),
                ..pull::Config::default()
            })
            .await
            .map_err(unavailable)?;
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
            let mut rest = self
                .consumer
                .fetch()
                .max_messages(max - messages.len())
                .messages()
                .await
                .map_err(unavailable)?;
            while let Some(message) = rest.next().await {
                messages.push(message.map_err(unavailable)?);
            }
        }
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            let headers = message.headers.as_ref();
            let subject = message
                .subject
                .as_str()
                .strip_prefix(&format!("{}.", self.inner.namespace))
                .unwrap_or(message.subject.as_str())
                .to_owned();
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
                let mut headers = headers_of(&delivery.headers);
                headers.insert(
                    DEAD_REASON,
                    HeaderValue::from_lossy(&crate::local::truncate(&reason)),
                );
                headers.insert(DELIVERED, delivery.delivered.to_string().as_str());
                headers.insert(SUBJECT, HeaderValue::from_lossy(&delivery.subject));
                headers.insert(BROKER_ID, HeaderValue::from_lossy(&delivery.broker_id));
                let publish = PublishMessage::build()
                    .payload(delivery.payload.clone().into())
                    .headers(headers)
                    .message_id(format!(
                        "dlq:{}:{}:{}",
                        inner.stream(),
                        self.consumer,
                        self.stream_sequence
                    ));
                // Kept first, then terminated: a crash between the two delivers it again, and
                // the dead letter's id absorbs the second copy.
                inner
                    .context
                    .send_publish(inner.dlq_subject(&self.consumer), publish)
                    .await
                    .map_err(unavailable)?
                    .await
                    .map_err(unavailable)?;
                message.ack_with(AckKind::Term).await.map_err(unavailable)
            }
        }
    }
}
