//! The Prometheus business metrics: the store's all-time totals as counters, the dead letters'
//! depth as a gauge, and the checkout latency percentiles of the last five minutes, read from
//! the store every few seconds (a scrape never waits on the database).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `shop_orders_total` | counter | `status`: `placed`, `confirmed`, `rejected`, `cancelled` |
//! | `shop_revenue_minor_total` | counter | `currency` |
//! | `shop_checkout_outcomes_total` | counter | `outcome`: `CONFIRMED` or the rejection's reason |
//! | `shop_payments_total` | counter | `result`: `authorized`, `declined`, `captured`, `capture_failed`, `voided`, `refunded` |
//! | `shop_shipments_total` | counter | `status`: `shipped`, `delivered` |
//! | `shop_notifications_sent_total`, `shop_notifications_dead_total` | counter | `channel` |
//! | `shop_notification_dead_letters` | gauge | `channel`: dead less replayed, now |
//! | `shop_carts_started_total` | counter | — |
//! | `shop_checkout_latency_recent_seconds` | gauge | `percentile`: `50`, `95`, `99` (confirmed checkouts of the last 5 minutes) |

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use shop_common::tasks::{Stage, Supervisor};

use crate::store::minute_of;
use crate::{Analytics, Latency, dead_letters};

/// What the store said last.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    totals: Vec<(String, i64)>,
    recent: Latency,
}

/// The business metrics' collector (cheap to clone: one shared snapshot).
#[derive(Debug, Clone, Default)]
pub struct BusinessMetrics(Arc<Mutex<Snapshot>>);

impl BusinessMetrics {
    fn snapshot(&self) -> Snapshot {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the figures from `analytics`' store now.
    ///
    /// # Errors
    ///
    /// The store fails (the last figures stay).
    pub async fn refresh(
        &self,
        analytics: &Analytics,
    ) -> Result<(), shop_common::store::StoreError> {
        let store = analytics.store();
        let totals = store.totals().await?;
        let now = minute_of(analytics.clock().now_ms());
        let recent = Latency::of(&store.latencies(now - 4, now, "CONFIRMED").await?);
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Snapshot { totals, recent };
        Ok(())
    }

    /// Refreshes every `period` under `tasks`.
    pub fn refresh_every(&self, tasks: &Supervisor, analytics: Analytics, period: Duration) {
        let this = self.clone();
        tasks.every("business-metrics", Stage::Sweepers, period, move || {
            let this = this.clone();
            let analytics = analytics.clone();
            async move {
                if let Err(error) = this.refresh(&analytics).await {
                    tracing::warn!(%error, "the business metrics could not be read");
                }
            }
        });
    }
}

/// A counter family: its name, help, label name, and the totals' metric family it reads.
const COUNTERS: [(&str, &str, &str, &str); 7] = [
    (
        "shop_orders",
        "Orders, by what became of them",
        "status",
        "orders",
    ),
    (
        "shop_revenue_minor",
        "Revenue of confirmed orders, in minor units",
        "currency",
        "revenue_minor",
    ),
    (
        "shop_checkout_outcomes",
        "Checkouts by how they ended: CONFIRMED or the rejection's reason",
        "outcome",
        "outcome",
    ),
    (
        "shop_payments",
        "Payments by what became of them",
        "result",
        "payments",
    ),
    (
        "shop_shipments",
        "Parcels shipped and delivered",
        "status",
        "shipping",
    ),
    (
        "shop_notifications_sent",
        "Notifications sent, by channel",
        "channel",
        "notifications_sent",
    ),
    (
        "shop_notifications_dead",
        "Notifications whose attempts ran out, by channel",
        "channel",
        "notifications_dead",
    ),
];

impl Collector for BusinessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let snapshot = self.snapshot();
        let value_of = |v: i64| u64::try_from(v).unwrap_or(0);
        for (name, help, label, family) in COUNTERS {
            let prefix = format!("{family}:");
            let values: Vec<(&str, i64)> = snapshot
                .totals
                .iter()
                .filter_map(|(metric, value)| {
                    metric.strip_prefix(&prefix).map(|label| (label, *value))
                })
                .collect();
            let counter = ConstCounter::new(0_u64);
            let mut metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for (value_label, value) in values {
                ConstCounter::new(value_of(value))
                    .encode(metric.encode_family(&[(label, value_label)])?)?;
            }
        }
        let carts = snapshot
            .totals
            .iter()
            .find(|(metric, _)| metric == "carts:started")
            .map_or(0, |(_, value)| *value);
        let counter = ConstCounter::new(value_of(carts));
        counter.encode(encoder.encode_descriptor(
            "shop_carts_started",
            "Empty carts that got a first line",
            None,
            counter.metric_type(),
        )?)?;
        let gauge = ConstGauge::new(0_i64);
        let mut metric = encoder.encode_descriptor(
            "shop_notification_dead_letters",
            "Dead notifications now, by channel (dead less replayed)",
            None,
            gauge.metric_type(),
        )?;
        for (channel, depth) in dead_letters(&snapshot.totals) {
            ConstGauge::new(depth)
                .encode(metric.encode_family(&[("channel", channel.as_str())])?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "shop_checkout_latency_recent_seconds",
            "Checkout latency (submit to confirmed) of the last 5 minutes, by percentile",
            None,
            gauge.metric_type(),
        )?;
        let recent = &snapshot.recent;
        for (percentile, millis) in [("50", recent.p50), ("95", recent.p95), ("99", recent.p99)] {
            #[expect(clippy::cast_precision_loss, reason = "milliseconds far below 2^52")]
            let seconds = millis as f64 / 1000.0;
            ConstGauge::new(seconds)
                .encode(metric.encode_family(&[("percentile", percentile)])?)?;
        }
        Ok(())
    }
}
