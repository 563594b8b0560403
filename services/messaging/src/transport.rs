//! The delivery contract both transports keep: NATS JetStream in production, and the local
//! transport ([`crate::local`]) on the embedded default.
//!
//! - A message is **published** once and held durably; a message id the transport already holds
//!   is not stored twice ([`Publisher`]).
//! - A **consumer** is durable and named: it receives every message on its subjects that the
//!   transport holds, in the order it stored them (a message retried comes after those
//!   delivered while it waited), at least once, across restarts, shared between the replicas
//!   that open it by the same name (JetStream's `DeliverPolicy::All`).
//! - Each [`Delivery`] is **settled** explicitly ([`Settlement`]): acknowledged, redelivered
//!   after a delay, or moved to the consumer's **dead letters** with the reason and the delivery
//!   count. A delivery not settled within the consumer's `ack_wait` (its handler crashed or
//!   hung) is delivered again; past `max_deliver` deliveries, it becomes a dead letter.
//! - Dead letters are listed and **replayed** to their consumer alone.
//! - A **subscription** ([`Transport::subscribe`]) is the other way to receive: every
//!   subscriber sees every message published on its subjects after it subscribed, with no
//!   acknowledgement and nothing kept for it. It is for state that can be dropped and rebuilt, a
//!   cache that change events invalidate: an error says messages may have been missed, and
//!   [`follow`](crate::subscription::follow) then tells its caller to start over.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::message::MessageId;
use crate::relay::{BoxError, Publisher};

/// A transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The broker, or the database under the local transport, failed or could not be reached.
    #[error("transport unavailable: {0}")]
    Unavailable(BoxError),
    /// A consumer's configuration is not one the transport takes.
    #[error("invalid consumer configuration: {0}")]
    Invalid(String),
}

impl From<sqlx::Error> for TransportError {
    fn from(error: sqlx::Error) -> Self {
        Self::Unavailable(Box::new(error))
    }
}

impl From<shop_common::store::StoreError> for TransportError {
    fn from(error: shop_common::store::StoreError) -> Self {
        Self::Unavailable(Box::new(error))
    }
}

/// A durable consumer: its name, what it receives, and how deliveries are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Its name: 1 to 64 of `A-Z a-z 0-9 _ -`. Replicas that use one name share its messages.
    pub name: String,
    /// Subject filters, as NATS writes them: tokens separated by `.`, where `*` matches one
    /// token and a final `>` one or more.
    pub subjects: Vec<String>,
    /// Deliveries of one message before it becomes a dead letter (at least 1; default 5).
    pub max_deliver: u32,
    /// How long a delivery may go unsettled before it is delivered again (default 30 s).
    pub ack_wait: Duration,
}

impl ConsumerConfig {
    /// A consumer named `name` of `subjects`, with the defaults.
    pub fn new(name: impl Into<String>, subjects: &[&str]) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.iter().map(|&s| s.to_owned()).collect(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
        }
    }

    /// Sets [`max_deliver`](Self::max_deliver).
    #[must_use]
    pub fn max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = max_deliver;
        self
    }

    /// Sets [`ack_wait`](Self::ack_wait).
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Checks the name, the filters and the bounds.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`], saying what is wrong.
    pub fn validate(&self) -> Result<(), TransportError> {
        check_consumer_name(&self.name)?;
        check_filters(
            &format!("consumer {}", self.name),
            &self.subjects,
            usize::MAX,
        )?;
        if self.max_deliver == 0 || self.ack_wait.is_zero() {
            return Err(TransportError::Invalid(format!(
                "consumer {}: max_deliver and ack_wait must be positive",
                self.name
            )));
        }
        Ok(())
    }

    /// Whether `subject` is one this consumer receives.
    #[must_use]
    pub fn receives(&self, subject: &str) -> bool {
        self.subjects
            .iter()
            .any(|filter| subject_matches(filter, subject))
    }
}

fn valid_filter(filter: &str) -> bool {
    let tokens: Vec<&str> = filter.split('.').collect();
    filter.len() <= 256
        && tokens.iter().enumerate().all(|(n, token)| {
            !token.is_empty()
                && !token.contains(char::is_whitespace)
                && (*token == "*"
                    || (*token == ">" && n == tokens.len() - 1)
                    || !token.contains(['*', '>']))
        })
}

/// Whether `name` is a consumer name (1 to 64 of `A-Z a-z 0-9 _ -`).
pub(crate) fn valid_consumer_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// [`TransportError::Invalid`] unless `name` is a consumer name.
pub(crate) fn check_consumer_name(name: &str) -> Result<(), TransportError> {
    if valid_consumer_name(name) {
        Ok(())
    } else {
        Err(TransportError::Invalid(format!(
            "consumer name {:?}: 1 to 64 of A-Z a-z 0-9 _ -",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// A subject as NATS takes one to publish on: `.`-separated tokens, none empty, no wildcards
/// and no white space, at most 256 bytes.
pub(crate) fn valid_subject(subject: &str) -> bool {
    subject.len() <= 256
        && subject.split('.').all(|token| {
            !token.is_empty()
                && !token.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
        })
}

/// Whether `subject` matches the NATS subject `filter` (`*` one token, a final `>` the rest).
#[must_use]
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in filter.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (expected, Some(actual)) if expected == actual => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// How a delivery is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Done with: not delivered to this consumer again (unless a stale attempt's settle on
    /// JetStream, or an operator's replay, says otherwise).
    Ack,
    /// Delivered again after `after` (counting toward `max_deliver`); `reason` is kept for the
    /// dead letter it may become.
    Retry {
        /// The delay.
        after: Duration,
        /// Why.
        reason: String,
    },
    /// Moved to the consumer's dead letters with `reason`.
    DeadLetter {
        /// Why.
        reason: String,
    },
}

/// How a transport settles one delivery (each transport's own handle).
#[async_trait]
pub trait Settle: Send + Sync {
    /// Settles the delivery this handle came with.
    async fn settle(
        self: Box<Self>,
        delivery: &Delivery,
        how: Settlement,
    ) -> Result<(), TransportError>;
}

/// One delivery of a message to a consumer.
pub struct Delivery {
    /// The broker's id of the message (its de-duplication id, `Nats-Msg-Id`). A replay from the
    /// dead letters may carry another than the envelope's: consumers de-duplicate by the
    /// envelope's id.
    pub broker_id: String,
    /// Where it was published.
    pub subject: String,
    /// Transport headers (the trace context).
    pub headers: HashMap<String, String>,
    /// The envelope, JSON.
    pub payload: Vec<u8>,
    /// Which delivery this is to this consumer: 1 the first time.
    pub delivered: u32,
    settle: Option<Box<dyn Settle>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("broker_id", &self.broker_id)
            .field("subject", &self.subject)
            .field("delivered", &self.delivered)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery that `settle` settles (for transports).
    #[must_use]
    pub fn new(
        broker_id: String,
        subject: String,
        headers: HashMap<String, String>,
        payload: Vec<u8>,
        delivered: u32,
        settle: Box<dyn Settle>,
    ) -> Self {
        Self {
            broker_id,
            subject,
            headers,
            payload,
            delivered,
            settle: Some(settle),
        }
    }

    /// Settles it. Dropped unsettled, it is delivered again after the consumer's `ack_wait`.
    ///
    /// # Errors
    ///
    /// The transport could not be told; the delivery is then delivered again after `ack_wait`.
    pub async fn settle(mut self, how: Settlement) -> Result<(), TransportError> {
        match self.settle.take() {
            Some(handle) => handle.settle(&self, how).await,
            None => Ok(()),
        }
    }
}

/// A message a consumer could not handle, kept with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its number among the transport's dead letters: what [`Transport::replay`] takes.
    pub seq: i64,
    /// The consumer.
    pub consumer: String,
    /// The broker's id of the message.
    pub broker_id: String,
    /// The envelope's id, when the payload is an envelope.
    pub message_id: Option<MessageId>,
    /// Where it was published.
    pub subject: String,
    /// Why it is here.
    pub reason: String,
    /// How many times it was delivered.
    pub delivered: u32,
    /// When it became a dead letter, in milliseconds since the epoch.
    pub dead_at_ms: i64,
}

/// A consumer's stream of deliveries.
#[async_trait]
pub trait Deliveries: Send {
    /// Up to `max` deliveries; waits up to `wait` for the first, then returns what there is
    /// (nothing, when nothing came).
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError>;
}

/// A message as a [`Subscription`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// Where it was published.
    pub subject: String,
    /// Transport headers (the trace context).
    pub headers: HashMap<String, String>,
    /// The envelope, JSON.
    pub payload: Vec<u8>,
}

/// A subscription to subjects: every message published on them after it was opened, in the
/// order the transport stored them within each subject filter (across filters, JetStream may
/// interleave them otherwise; a message on two filters may come twice), not shared with other
/// subscribers and never acknowledged.
#[async_trait]
pub trait Subscription: Send {
    /// The next message, when one comes.
    ///
    /// # Errors
    ///
    /// Messages may have been missed (the broker went away, or the subscription fell behind):
    /// drop what was built from earlier ones, and subscribe again.
    async fn next(&mut self) -> Result<Broadcast, TransportError>;
}

/// The most subject filters one subscription takes.
pub const MAX_SUBSCRIBED_SUBJECTS: usize = 16;

/// [`TransportError::Invalid`] unless `subjects` are 1 to [`MAX_SUBSCRIBED_SUBJECTS`] filters.
pub(crate) fn check_subscribed(subjects: &[String]) -> Result<(), TransportError> {
    check_filters("a subscription", subjects, MAX_SUBSCRIBED_SUBJECTS)
}

/// [`TransportError::Invalid`], naming `whose` they are, unless `subjects` are 1 to `max`
/// subject filters.
fn check_filters(whose: &str, subjects: &[String], max: usize) -> Result<(), TransportError> {
    if subjects.is_empty() {
        return Err(TransportError::Invalid(format!("{whose}: no subjects")));
    }
    if subjects.len() > max {
        return Err(TransportError::Invalid(format!(
            "{whose}: more than {max} subject filters"
        )));
    }
    match subjects.iter().find(|s| !valid_filter(s)) {
        Some(bad) => Err(TransportError::Invalid(format!(
            "{whose}: subject filter {:?}",
            bad.chars().take(80).collect::<String>()
        ))),
        None => Ok(()),
    }
}

/// The most dead letters one [`Transport::replay`] of every dead letter delivers again: one
/// call does bounded work in one transaction or one run of requests.
pub const MAX_REPLAYED: usize = 1_000;

/// A transport: publishes for the relay, delivers to consumers, keeps their dead letters.
#[async_trait]
pub trait Transport: Publisher {
    /// Opens the durable consumer `config.name`, creating it on first use (it then receives
    /// every message on its subjects that the transport holds). Opening it again with other
    /// subjects or bounds updates it.
    async fn consumer(
        &self,
        config: &ConsumerConfig,
    ) -> Result<Box<dyn Deliveries>, TransportError>;

    /// Up to `limit` of `consumer`'s dead letters, oldest first.
    async fn dead_letters(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, TransportError>;

    /// Forgets what the transport keeps past its retention, where the transport does not do
    /// so itself (a JetStream stream does, by its `max_age`: nothing to do); returns how many
    /// entries it forgot. The backbone's sweeper calls it hourly.
    async fn prune_expired(&self) -> Result<u64, TransportError> {
        Ok(0)
    }

    /// How many dead letters `consumer` has (the depth of its dead-letter queue).
    async fn dead_letter_count(&self, consumer: &str) -> Result<u64, TransportError>;

    /// Delivers `consumer`'s dead letter `seq` (or, with `None`, its oldest up to
    /// [`MAX_REPLAYED`]: call again for the rest) to that consumer again, and removes it from
    /// the dead letters; returns how many. Other consumers of the subject are not sent it
    /// again.
    async fn replay(&self, consumer: &str, seq: Option<i64>) -> Result<u64, TransportError>;

    /// Subscribes to `subjects` (filters, as [`ConsumerConfig::subjects`]): every message
    /// published on them from now on, except the replays of dead letters, which are for one
    /// consumer.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for no filters, more than [`MAX_SUBSCRIBED_SUBJECTS`], or one
    /// that is not a filter; [`TransportError::Unavailable`] when the transport cannot be reached.
    async fn subscribe(&self, subjects: &[String])
    -> Result<Box<dyn Subscription>, TransportError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_as_nats_matches_them() {
        for (filter, subject, expected) in [
            ("orders.events", "orders.events", true),
            ("orders.events", "orders.events.x", false),
            ("orders.events", "orders", false),
            ("orders.*", "orders.events", true),
            ("orders.*", "orders.events.x", false),
            ("*.events", "catalog.events", true),
            ("orders.>", "orders.events", true),
            ("orders.>", "orders.events.x.y", true),
            ("orders.>", "orders", false),
            (">", "anything.at.all", true),
            ("catalog.events", "orders.events", false),
        ] {
            assert_eq!(
                subject_matches(filter, subject),
                expected,
                "{filter} ~ {subject}"
            );
        }
    }

    #[test]
    fn a_consumer_configuration_is_checked() {
        assert!(
            ConsumerConfig::new("search-index_1", &["catalog.>"])
                .validate()
                .is_ok()
        );
        for bad in [
            ConsumerConfig::new("", &["a"]),
            ConsumerConfig::new("has.dot", &["a"]),
            ConsumerConfig::new("x".repeat(65), &["a"]),
            ConsumerConfig::new("ok", &[]),
            ConsumerConfig::new("ok", &["a..b"]),
            ConsumerConfig::new("ok", &["a.>.b"]),
            ConsumerConfig::new("ok", &["a.b*"]),
            ConsumerConfig::new("ok", &["a b"]),
            ConsumerConfig::new("ok", &["a"]).max_deliver(0),
            ConsumerConfig::new("ok", &["a"]).ack_wait(Duration::ZERO),
        ] {
            assert!(
                matches!(bad.validate(), Err(TransportError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
