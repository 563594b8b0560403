//! What the backbone does, counted: for the service's `/metrics` and the ops console.
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `messaging_published_total` | `subject` | messages the relay handed to the broker |
//! | `messaging_publish_failures_total` | | relay rounds the broker failed |
//! | `messaging_set_aside_total` | | messages the broker refused, set aside |
//! | `messaging_deliveries_total` | `consumer`, `outcome` | deliveries settled: `ack`, `duplicate` (seen before, no effect), `retry`, `dead_letter` |
//! | `messaging_outbox_pending` | | messages waiting in the outbox |
//! | `messaging_outbox_lag_seconds` | | age of the oldest of them |
//! | `messaging_dead_letters` | `consumer` | the depth of each consumer's dead letters |
//!
//! The outbox figures are read by the relay after each round, at most once a second; each
//! running consumer reads its dead letters' depth every
//! [`DEPTH_EVERY`](crate::consumer::DEPTH_EVERY) and after each new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use mainstay_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Labels of a published message.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: String,
}

/// Labels of a consumer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
}

/// Labels of a settled delivery.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    consumer: String,
    outcome: &'static str,
}

/// How a delivery was settled, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Handled and acknowledged.
    Ack,
    /// Seen before: acknowledged with no second effect.
    Duplicate,
    /// Sent back to be delivered again.
    Retry,
    /// Made a dead letter.
    DeadLetter,
}

impl DeliveryOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Duplicate => "duplicate",
            Self::Retry => "retry",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// The backbone's metrics of one service, cheap to clone (clones count together). Give them to
/// its [`Relay`](crate::Relay) and [`Consumer`](crate::Consumer)s, and [`register`](Self::register)
/// them with the service's [`Metrics`] once.
#[derive(Debug, Clone, Default)]
pub struct MessagingMetrics {
    published: Family<SubjectLabels, Counter>,
    /// The sum of `published` (a family cannot be summed but by encoding it).
    published_all: Counter,
    publish_failures: Counter,
    set_aside: Counter,
    deliveries: Family<DeliveryLabels, Counter>,
    outbox_pending: Gauge,
    outbox_lag_ms: Gauge,
    dead_letters: Family<ConsumerLabels, Gauge>,
    /// When the relay last read the outbox's lag, in ms since the epoch.
    lag_read_at_ms: Arc<AtomicI64>,
}

/// The figures, for the ops console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Messages handed to the broker.
    pub published: u64,
    /// Relay rounds the broker failed.
    pub publish_failures: u64,
    /// Messages set aside.
    pub set_aside: u64,
    /// Messages waiting in the outbox.
    pub outbox_pending: i64,
    /// Age of the oldest, in milliseconds.
    pub outbox_lag_ms: i64,
}

impl MessagingMetrics {
    /// Fresh metrics, counting from zero.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the metrics to the service's registry.
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(
            "messaging_published",
            "Messages the outbox relay handed to the broker",
            self.published.clone(),
        );
        metrics.register(
            "messaging_publish_failures",
            "Outbox relay rounds the broker failed",
            self.publish_failures.clone(),
        );
        metrics.register(
            "messaging_set_aside",
            "Outbox messages the broker refused, set aside",
            self.set_aside.clone(),
        );
        metrics.register(
            "messaging_deliveries",
            "Deliveries settled, by consumer and outcome",
            self.deliveries.clone(),
        );
        metrics.register(
            "messaging_outbox_pending",
            "Messages waiting in the outbox",
            self.outbox_pending.clone(),
        );
        metrics.register(
            "messaging_outbox_lag_seconds",
            "Age of the oldest message waiting in the outbox",
            OutboxLagSeconds(self.outbox_lag_ms.clone()),
        );
        metrics.register(
            "messaging_dead_letters",
            "Dead letters waiting for an operator, by consumer",
            self.dead_letters.clone(),
        );
    }

    pub(crate) fn dead_letters(&self, consumer: &str, depth: u64) {
        self.dead_letters
            .get_or_create(&ConsumerLabels {
                consumer: consumer.to_owned(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// The depth of `consumer`'s dead letters, as last read (for the ops console and tests).
    #[must_use]
    pub fn dead_letter_depth(&self, consumer: &str) -> i64 {
        self.dead_letters
            .get(&ConsumerLabels {
                consumer: consumer.to_owned(),
            })
            .map_or(0, |gauge| gauge.get())
    }

    pub(crate) fn published(&self, subject: &str) {
        self.published
            .get_or_create(&SubjectLabels {
                subject: subject.to_owned(),
            })
            .inc();
        self.published_all.inc();
    }

    pub(crate) fn publish_failed(&self) {
        self.publish_failures.inc();
    }

    pub(crate) fn set_aside(&self) {
        self.set_aside.inc();
    }

    pub(crate) fn delivered(&self, consumer: &str, outcome: DeliveryOutcome) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                consumer: consumer.to_owned(),
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Whether the outbox's lag is due to be read again (once a second at most).
    pub(crate) fn lag_due(&self, now_ms: i64) -> bool {
        let last = self.lag_read_at_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= 1_000
            && self
                .lag_read_at_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub(crate) fn outbox(&self, lag: crate::outbox::Lag, now_ms: i64) {
        self.outbox_pending
            .set(i64::try_from(lag.pending).unwrap_or(i64::MAX));
        self.outbox_lag_ms
            .set(i64::try_from(lag.age_ms(now_ms)).unwrap_or(i64::MAX));
    }

    /// A delivery count, for the ops console and tests.
    #[must_use]
    pub fn deliveries(&self, consumer: &str, outcome: DeliveryOutcome) -> u64 {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                consumer: consumer.to_owned(),
                outcome: outcome.label(),
            })
            .get()
    }

    /// The relay's figures now.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            published: self.published_all.get(),
            publish_failures: self.publish_failures.get(),
            set_aside: self.set_aside.get(),
            outbox_pending: self.outbox_pending.get(),
            outbox_lag_ms: self.outbox_lag_ms.get(),
        }
    }
}

/// The lag gauge, kept in milliseconds and shown in seconds.
#[derive(Debug, Clone)]
struct OutboxLagSeconds(Gauge);

impl prometheus_client::encoding::EncodeMetric for OutboxLagSeconds {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        #[allow(clippy::cast_precision_loss)] // milliseconds below 2^53
        let seconds = self.0.get() as f64 / 1_000.0;
        encoder.encode_gauge(&seconds)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}
