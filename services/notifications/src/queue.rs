//! The channels' work queues: a queue per channel carries the ids of the notifications to
//! send, and a dead-letter queue beside it keeps the ids whose attempts ran out.
//!
//! - [`Rabbit`] (production): durable RabbitMQ queues `<ns>notifications.<channel>`, published
//!   with confirms as persistent messages through the direct exchange
//!   `<ns>notifications`; each declared with the dead-letter exchange
//!   `<ns>notifications.dead`, which routes a message a worker rejects to
//!   `<ns>notifications.<channel>.dead`.
//! - [`Local`] (the embedded default): bounded in-process queues. They do not outlive the
//!   process; the store does, and what was queued is queued again when the service starts
//!   ([`ChannelQueue::durable`]).
//!
//! The store stays the truth (which notifications are sent, dead, queued); the queues are how
//! work reaches the workers, so a duplicate id in a queue is harmless.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

use crate::Channel;

/// A queue operation failed (the broker is down or refused it).
#[derive(Debug, thiserror::Error)]
#[error("the {channel} queue: {message}")]
pub struct QueueError {
    channel: &'static str,
    message: String,
}

impl QueueError {
    fn of(channel: Channel, error: impl std::fmt::Display) -> Self {
        Self {
            channel: channel.as_str(),
            message: error.to_string(),
        }
    }
}

/// A notification id taken from a channel's queue, to be settled once handled.
#[async_trait]
pub trait Delivery: Send + Sync {
    /// The notification's id.
    fn id(&self) -> &str;
    /// Handled (sent, or nothing to do): removes it from the queue.
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    /// Its attempts ran out: moves it to the channel's dead letters.
    async fn dead_letter(self: Box<Self>) -> Result<(), QueueError>;
    /// Not handled now (the store failed, or the worker stops): back to the queue.
    async fn requeue(self: Box<Self>) -> Result<(), QueueError>;
}

/// The work queues of the three channels.
#[async_trait]
pub trait ChannelQueue: Send + Sync + 'static {
    /// Adds `id` to `channel`'s queue (returns once the broker holds it).
    async fn publish(&self, channel: Channel, id: &str) -> Result<(), QueueError>;
    /// The next id of `channel`'s queue, waiting for one.
    async fn next(&self, channel: Channel) -> Result<Box<dyn Delivery>, QueueError>;
    /// How many ids `channel`'s dead letters hold.
    async fn dead_depth(&self, channel: Channel) -> Result<u64, QueueError>;
    /// Empties `channel`'s dead letters (a replay queues their notifications again from the
    /// store); returns how many it held.
    async fn purge_dead(&self, channel: Channel) -> Result<u64, QueueError>;
    /// Whether what the queues hold outlives the process.
    fn durable(&self) -> bool;
}

/// The most ids an in-process queue holds; [`ChannelQueue::publish`] to a full one fails (the
/// dispatcher tries again later).
pub const LOCAL_CAPACITY: usize = 1_024;

struct LocalChannel {
    sender: tokio::sync::mpsc::Sender<String>,
    receiver: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<String>>,
    dead: Mutex<VecDeque<String>>,
}

/// In-process queues (the embedded default). Cheap to clone.
#[derive(Clone)]
pub struct Local(Arc<[LocalChannel; 3]>);

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").finish_non_exhaustive()
    }
}

impl Default for Local {
    fn default() -> Self {
        Self::new()
    }
}

impl Local {
    /// Three empty queues.
    #[must_use]
    pub fn new() -> Self {
        let channel = || {
            let (sender, receiver) = tokio::sync::mpsc::channel(LOCAL_CAPACITY);
            LocalChannel {
                sender,
                receiver: tokio::sync::Mutex::new(receiver),
                dead: Mutex::default(),
            }
        };
        Self(Arc::new([channel(), channel(), channel()]))
    }

    fn of(&self, channel: Channel) -> &LocalChannel {
        &self.0[channel.index()]
    }
}

struct LocalDelivery {
    id: String,
    queues: Local,
    channel: Channel,
}

#[async_trait]
impl Delivery for LocalDelivery {
    fn id(&self) -> &str {
        &self.id
    }

    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        Ok(())
    }

    async fn dead_letter(self: Box<Self>) -> Result<(), QueueError> {
        let mut dead = self
            .queues
            .of(self.channel)
            .dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Bounded like the live queue: the store keeps every dead notification anyway.
        if dead.len() == LOCAL_CAPACITY {
            dead.pop_front();
        }
        dead.push_back(self.id);
        Ok(())
    }

    async fn requeue(self: Box<Self>) -> Result<(), QueueError> {
        // Without waiting: a full queue is being drained by this very worker. Dropped, it is
        // handed again by the dispatcher once its hand-off is old enough.
        self.queues
            .of(self.channel)
            .sender
            .try_send(self.id)
            .map_err(|error| QueueError::of(self.channel, error))
    }
}

#[async_trait]
impl ChannelQueue for Local {
    async fn publish(&self, channel: Channel, id: &str) -> Result<(), QueueError> {
        // Never waits: a full queue is skipped until its worker drains it, and the other
        // channels' hand-offs go on.
        self.of(channel)
            .sender
            .try_send(id.to_owned())
            .map_err(|error| QueueError::of(channel, error))
    }

    async fn next(&self, channel: Channel) -> Result<Box<dyn Delivery>, QueueError> {
        let id = self
            .of(channel)
            .receiver
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| QueueError::of(channel, "closed"))?;
        Ok(Box::new(LocalDelivery {
            id,
            queues: self.clone(),
            channel,
        }))
    }

    async fn dead_depth(&self, channel: Channel) -> Result<u64, QueueError> {
        let dead = self.of(channel).dead.lock();
        Ok(dead.unwrap_or_else(PoisonError::into_inner).len() as u64)
    }

    async fn purge_dead(&self, channel: Channel) -> Result<u64, QueueError> {
        let mut dead = self
            .of(channel)
            .dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let purged = dead.len() as u64;
        dead.clear();
        Ok(purged)
    }

    fn durable(&self) -> bool {
        false
    }
}

/// How many unacknowledged ids RabbitMQ hands one channel's workers at once: as many as
/// they send at once, so that none wait here while another replica could send them.
#[allow(clippy::cast_possible_truncation)]
pub const PREFETCH: u16 = crate::worker::WORKERS as u16;

/// The most ids a dead-letter queue keeps (the oldest are dropped beyond): the store keeps
/// every dead notification anyway.
pub const DEAD_MAX: i64 = 100_000;

/// How long an operation waits for a lost connection to come back before it fails.
const RECOVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// RabbitMQ queues (production), over one connection: a channel with publisher confirms, and
/// one consuming channel per work queue.
pub struct Rabbit {
    connection: Connection,
    publisher: lapin::Channel,
    /// Declares, purges and reads the dead letters: an error there (a queue an operator
    /// deleted) closes this channel, not the publisher's.
    admin: lapin::Channel,
    consuming: Vec<lapin::Channel>,
    consumers: [tokio::sync::Mutex<lapin::Consumer>; 3],
    exchange: String,
    namespace: String,
}

impl std::fmt::Debug for Rabbit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rabbit")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl Rabbit {
    /// Connects to `url` (`amqp://user:password@host:5672/vhost`) and declares the exchanges
    /// and queues under `namespace` (a prefix of their names, so that systems or tests can
    /// share a broker).
    ///
    /// # Errors
    ///
    /// The broker cannot be reached, or refuses a declaration.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, QueueError> {
        let failed = |error: lapin::Error| QueueError {
            channel: "AMQP",
            message: error.to_string(),
        };
        // Reconnects, and declares the topology and the consumers again, after a network
        // failure or a broker restart.
        let properties = ConnectionProperties::default().enable_auto_recover();
        let connection = Connection::connect(url, properties).await.map_err(failed)?;
        let exchange = format!("{namespace}notifications");
        let dead_exchange = format!("{namespace}notifications.dead");
        let publisher = connection.create_channel().await.map_err(failed)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(failed)?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for name in [&exchange, &dead_exchange] {
            publisher
                .exchange_declare(
                    name.as_str().into(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                )
                .await
                .map_err(failed)?;
        }
        let mut consumers = Vec::with_capacity(3);
        let mut consuming_channels = Vec::with_capacity(3);
        for channel in Channel::ALL {
            let queue = format!("{namespace}notifications.{}", channel.as_str());
            let dead = format!("{queue}.dead");
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dead_exchange.as_str().into()),
            );
            let mut bounded = FieldTable::default();
            bounded.insert("x-max-length".into(), AMQPValue::LongLongInt(DEAD_MAX));
            for (name, exchange, arguments) in [
                (&queue, &exchange, arguments),
                (&dead, &dead_exchange, bounded),
            ] {
                publisher
                    .queue_declare(
                        name.as_str().into(),
                        QueueDeclareOptions::durable(),
                        arguments,
                    )
                    .await
                    .map_err(failed)?;
                publisher
                    .queue_bind(
                        name.as_str().into(),
                        exchange.as_str().into(),
                        channel.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(failed)?;
            }
            let consuming = connection.create_channel().await.map_err(failed)?;
            consuming
                .basic_qos(PREFETCH, BasicQosOptions::default())
                .await
                .map_err(failed)?;
            let consumer = consuming
                .basic_consume(
                    queue.as_str().into(),
                    format!("notifications-{}", channel.as_str()).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(failed)?;
            consumers.push(tokio::sync::Mutex::new(consumer));
            consuming_channels.push(consuming);
        }
        let consumers: [_; 3] = consumers.try_into().map_err(|_| QueueError {
            channel: "AMQP",
            message: "three consumers".to_owned(),
        })?;
        let admin = connection.create_channel().await.map_err(failed)?;
        Ok(Self {
            connection,
            publisher,
            admin,
            consuming: consuming_channels,
            consumers,
            exchange,
            namespace: namespace.to_owned(),
        })
    }

    fn dead_queue(&self, channel: Channel) -> String {
        format!("{}notifications.{}.dead", self.namespace, channel.as_str())
    }

    /// Deletes the namespace's queues and exchanges, and closes the connection: for tests,
    /// and for taking a namespace down.
    ///
    /// # Errors
    ///
    /// The broker fails.
    pub async fn delete(self) -> Result<(), QueueError> {
        let failed = |error: lapin::Error| QueueError {
            channel: "AMQP",
            message: error.to_string(),
        };
        for channel in Channel::ALL {
            let queue = format!("{}notifications.{}", self.namespace, channel.as_str());
            for name in [self.dead_queue(channel), queue] {
                self.publisher
                    .queue_delete(
                        name.as_str().into(),
                        lapin::options::QueueDeleteOptions::default(),
                    )
                    .await
                    .map_err(failed)?;
            }
        }
        for name in [format!("{}.dead", self.exchange), self.exchange.clone()] {
            self.publisher
                .exchange_delete(
                    name.as_str().into(),
                    lapin::options::ExchangeDeleteOptions::default(),
                )
                .await
                .map_err(failed)?;
        }
        self.connection
            .close(200, "deleted".into())
            .await
            .map_err(failed)
    }

    /// Whether the connection is up (the readiness check).
    #[must_use]
    pub fn connected(&self) -> bool {
        self.connection.status().connected()
    }
}

/// `error` of an operation on `on`, once the connection is back (when it can come back, for
/// at most [`RECOVERY`]): the caller tries again later.
async fn recovered(on: &lapin::Channel, channel: Channel, error: lapin::Error) -> QueueError {
    let failed = QueueError::of(channel, &error);
    if let Ok(Ok(())) = tokio::time::timeout(RECOVERY, on.wait_for_recovery(error)).await {
        tracing::info!(channel = channel.as_str(), "the AMQP connection is back");
    }
    failed
}

struct RabbitDelivery {
    id: String,
    channel: Channel,
    delivery: lapin::message::Delivery,
}

#[async_trait]
impl Delivery for RabbitDelivery {
    fn id(&self) -> &str {
        &self.id
    }

    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.delivery
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(|error| QueueError::of(self.channel, error))
    }

    async fn dead_letter(self: Box<Self>) -> Result<(), QueueError> {
        // Not requeued: the queue's dead-letter exchange takes it.
        self.nack(false).await
    }

    async fn requeue(self: Box<Self>) -> Result<(), QueueError> {
        self.nack(true).await
    }
}

impl RabbitDelivery {
    async fn nack(&self, requeue: bool) -> Result<(), QueueError> {
        let options = BasicNackOptions {
            requeue,
            ..BasicNackOptions::default()
        };
        self.delivery
            .nack(options)
            .await
            .map(drop)
            .map_err(|error| QueueError::of(self.channel, error))
    }
}

#[async_trait]
impl ChannelQueue for Rabbit {
    async fn publish(&self, channel: Channel, id: &str) -> Result<(), QueueError> {
        let confirmation = self
            .publisher
            .basic_publish(
                self.exchange.as_str().into(),
                channel.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                id.as_bytes(),
                // 2: persistent, kept across a broker restart (the queue is durable).
                BasicProperties::default().with_delivery_mode(2),
            )
            .await;
        let confirmation = match confirmation {
            Ok(confirm) => confirm.await,
            Err(error) => Err(error),
        };
        let confirmation = match confirmation {
            Ok(confirmation) => confirmation,
            Err(error) => return Err(recovered(&self.publisher, channel, error).await),
        };
        if confirmation.is_ack() && confirmation.take_message().is_none() {
            Ok(())
        } else {
            Err(QueueError::of(
                channel,
                "the broker did not take the message",
            ))
        }
    }

    async fn next(&self, channel: Channel) -> Result<Box<dyn Delivery>, QueueError> {
        loop {
            let next = self.consumers[channel.index()].lock().await.next().await;
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    let consuming = &self.consuming[channel.index()];
                    return Err(recovered(consuming, channel, error).await);
                }
                None => return Err(QueueError::of(channel, "the consumer was cancelled")),
            };
            match String::from_utf8(delivery.data.clone()) {
                Ok(id) if (1..=crate::MAX_ID).contains(&id.len()) => {
                    return Ok(Box::new(RabbitDelivery {
                        id,
                        channel,
                        delivery,
                    }));
                }
                // Not one of ours: dead-lettered, for someone to look at.
                _ => {
                    tracing::warn!(channel = channel.as_str(), "a message that is not an id");
                    Box::new(RabbitDelivery {
                        id: String::new(),
                        channel,
                        delivery,
                    })
                    .dead_letter()
                    .await?;
                }
            }
        }
    }

    async fn dead_depth(&self, channel: Channel) -> Result<u64, QueueError> {
        let queue = self
            .admin
            .queue_declare(
                self.dead_queue(channel).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|error| QueueError::of(channel, error))?;
        Ok(u64::from(queue.message_count()))
    }

    async fn purge_dead(&self, channel: Channel) -> Result<u64, QueueError> {
        let purged = self
            .admin
            .queue_purge(
                self.dead_queue(channel).as_str().into(),
                QueuePurgeOptions::default(),
            )
            .await
            .map_err(|error| QueueError::of(channel, error))?;
        Ok(u64::from(purged))
    }

    fn durable(&self) -> bool {
        true
    }
}
