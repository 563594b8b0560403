//! Typed messages and the envelope they travel in.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A message's id: a UUID of version 7, so ids sort by the time they were made. Unique in the
/// outbox, the broker's de-duplication id (`Nats-Msg-Id`) and the inbox's key for a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A new id, later than every id this process made before.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The UUID.
    #[must_use]
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(Self)
    }
}

/// An event or a command: a Rust type with a name and a version on the wire.
///
/// ```
/// use std::borrow::Cow;
/// use serde::{Deserialize, Serialize};
/// use shop_messaging::Message;
///
/// /// A product's price changed.
/// #[derive(Serialize, Deserialize)]
/// struct ProductPriceChanged {
///     product_id: String,
///     price_minor: i64,
///     currency: String,
/// }
///
/// impl Message for ProductPriceChanged {
///     const KIND: &'static str = "ProductPriceChanged";
///     const VERSION: u16 = 1;
///     fn subject(&self) -> Cow<'static, str> {
///         Cow::Borrowed("catalog.events")
///     }
///     fn key(&self) -> Cow<'_, str> {
///         Cow::Borrowed(&self.product_id)
///     }
/// }
/// ```
pub trait Message: Serialize + Send + Sync {
    /// The name consumers dispatch on, e.g. `OrderPlaced`.
    const KIND: &'static str;
    /// Raised on a change a consumer of the previous version could not read; a field added
    /// with a default keeps it.
    const VERSION: u16;

    /// Where it is published: `<aggregate>.events`, `<service>.commands` or `orders.replies`.
    fn subject(&self) -> Cow<'static, str>;

    /// The ordering key, the id of the aggregate it is about: messages with one key are
    /// published in the order they were enqueued.
    fn key(&self) -> Cow<'_, str>;
}

/// The saga step a command belongs to, or a reply answers: what the orchestrator correlates
/// replies by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaRef {
    /// The saga (the order's checkout).
    pub saga_id: String,
    /// The step, e.g. `reserve-stock`.
    pub step: String,
}

/// A message as it travels, JSON: what it is, when it happened, what caused it, and its body.
/// The trace context travels beside it, in the transport's headers.
///
/// `B` is the body: a [`Message`] when writing, the raw JSON (`Box<RawValue>`) when reading,
/// decoded once the consumer knows the kind and version.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<B = Box<RawValue>> {
    /// The message's id.
    pub id: MessageId,
    /// [`Message::KIND`].
    pub kind: String,
    /// [`Message::VERSION`].
    pub version: u16,
    /// When it was enqueued, in the transaction of the state change it announces, in
    /// milliseconds since the epoch (the commit follows within that transaction).
    pub occurred_at_ms: i64,
    /// [`Message::key`].
    pub key: String,
    /// The saga step, for commands and replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<SagaRef>,
    /// The message whose handling sent this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<MessageId>,
    /// The body.
    pub body: B,
}
