//! The event bus trait services publish domain events through, and its in-process
//! implementation (the embedded default). NATS JetStream and the transactional outbox
//! implement the same trait in production (see ARCHITECTURE.md §4).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

/// An event as it travels: what every message carries (ARCHITECTURE.md §4), and its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per message: consumers de-duplicate on it.
    pub message_id: String,
    /// The event's type, e.g. `ProductPriceChanged`.
    pub kind: String,
    /// Milliseconds since the Unix epoch.
    pub occurred_at: i64,
    /// The W3C `traceparent` of the request that caused it, if any.
    pub traceparent: Option<String>,
    /// The event.
    pub payload: Value,
}

impl Envelope {
    /// A new event of `kind` with a fresh id, stamped now, carrying the current trace context.
    ///
    /// # Panics
    ///
    /// Never: a value that serializes to JSON is required by the signature's bound.
    pub fn new(kind: impl Into<String>, payload: &impl Serialize) -> Self {
        let occurred_at = crate::unix_millis();
        let mut headers = HashMap::new();
        mainstay_telemetry::propagation::inject_message(&tracing::Span::current(), &mut headers);
        Self {
            message_id: uuid::Uuid::new_v4().to_string(),
            kind: kind.into(),
            occurred_at,
            traceparent: headers.remove("traceparent"),
            payload: serde_json::to_value(payload).unwrap_or(Value::Null),
        }
    }
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
#[error("publishing to {subject} failed: {reason}")]
pub struct BusError {
    /// The subject.
    pub subject: String,
    /// Why.
    pub reason: String,
}

/// Publishes events on subjects (`<aggregate>.events`) and hands them to subscribers.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes `event` on `subject`.
    async fn publish(&self, subject: &str, event: Envelope) -> Result<(), BusError>;
    /// Events published on `subject` from now on.
    fn subscribe(&self, subject: &str) -> broadcast::Receiver<Envelope>;
}

/// The in-process bus of the embedded default: events reach subscribers of this process only,
/// and are lost if nobody listens (the outbox makes delivery durable where it matters).
#[derive(Debug, Clone, Default)]
pub struct InProcessBus {
    subjects: Arc<Mutex<HashMap<String, broadcast::Sender<Envelope>>>>,
}

impl InProcessBus {
    /// An empty bus.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn sender(&self, subject: &str) -> broadcast::Sender<Envelope> {
        self.subjects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(subject.to_owned())
            .or_insert_with(|| broadcast::channel(1024).0)
            .clone()
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, subject: &str, event: Envelope) -> Result<(), BusError> {
        // No subscriber is not an error: nobody is listening yet.
        let _ = self.sender(subject).send(event);
        Ok(())
    }

    fn subscribe(&self, subject: &str) -> broadcast::Receiver<Envelope> {
        self.sender(subject).subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_what_is_published_after_they_subscribe() {
        let bus = InProcessBus::new();
        bus.publish("catalog.events", Envelope::new("Early", &1))
            .await
            .unwrap();
        let mut events = bus.subscribe("catalog.events");
        let mut other = bus.subscribe("orders.events");
        bus.publish(
            "catalog.events",
            Envelope::new("ProductPriceChanged", &serde_json::json!({"id": "p1"})),
        )
        .await
        .unwrap();
        let event = events.recv().await.unwrap();
        assert_eq!(event.kind, "ProductPriceChanged");
        assert_eq!(event.payload["id"], "p1");
        assert_eq!(event.message_id.len(), 36);
        assert!(other.try_recv().is_err());
    }
}
