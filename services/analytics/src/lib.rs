//! The analytics service: what the shop did, per minute, from every event.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `GET /analytics/summary?window=1h` | role `admin` | the [`Summary`] of the last `window` (`15m`, `1h`, `24h`, `7d`: 1 minute to the retention) |
//!
//! The consumer `analytics` reads `orders.events` (placed, confirmed with its revenue, rejected
//! with its reason, cancelled with its refund), the payments' replies on `orders.replies`,
//! `shipping.events`, `notifications.events` (sent, dead, replayed per channel) and
//! `carts.events` (carts started), through the inbox. Each event counts in the minute it
//! happened (its own time, not when it was handled), and each order's checkout once, with its
//! latency from submit to its end; so a replay into an empty store rebuilds the same figures.
//!
//! The same figures are Prometheus business metrics ([`metrics`]): all-time counters
//! (`shop_orders_total{status}`, `shop_revenue_minor_total{currency}`, …), the dead letters'
//! depth per channel, and the checkout latency percentiles of the last five minutes, read from
//! the store every few seconds. Every label value is checked against a closed set or a short
//! pattern before it is counted: an event cannot make a label of its own.

#![forbid(unsafe_code)]

mod api;
pub mod config;
pub mod metrics;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mainstay_auth::Validator;
use serde::Serialize;
use shop_common::store::{Database, StoreError, Tx};
use shop_common::tasks::Stage;
use shop_messaging::contracts::{
    CARTS_EVENTS, CaptureFailed, CartStarted, NOTIFICATIONS_EVENTS, NotificationDead,
    NotificationSent, NotificationsReplayed, ORDERS_EVENTS, OrderCancelled, OrderConfirmed,
    OrderDelivered, OrderPlaced, OrderRejected, OrderShipped, PaymentAuthorized, PaymentCaptured,
    PaymentDeclined, PaymentRefunded, PaymentVoided, SHIPPING_EVENTS, check_order_id,
};
use shop_messaging::{ConsumerConfig, HandleError, Handler, Inbound, Message, Outcome, Poison};

pub use self::api::router;
pub use self::config::AnalyticsConfig;
use self::store::{AnalyticsStore, minute_of};

/// Wall-clock milliseconds that advance with tokio's clock: read from the system once, then
/// moved on by [`tokio::time::Instant`], so that windows can be tested on paused time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    unix_ms_at_origin: i64,
    origin: tokio::time::Instant,
}

impl Clock {
    /// The clock, now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            unix_ms_at_origin: shop_common::unix_millis(),
            origin: tokio::time::Instant::now(),
        }
    }

    /// Milliseconds since the epoch.
    #[must_use]
    pub fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.unix_ms_at_origin.saturating_add(elapsed)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A summary's window: a whole number of minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    minutes: i64,
}

impl Window {
    /// `text` as a window (`30m`, `1h`, `24h`, `7d`: a whole number and a unit, `m`, `h` or
    /// `d`) of at most `most`.
    ///
    /// # Errors
    ///
    /// What is wrong with it, in words.
    pub fn parse(text: &str, most: Duration) -> Result<Self, String> {
        let expected = || {
            format!(
                "a window is a whole number of minutes, hours or days (`15m`, `1h`, `7d`), \
                 1 minute to {} hours",
                most.as_secs() / 3600
            )
        };
        if text.len() > 8 || text.len() < 2 || !text.is_ascii() {
            return Err(expected());
        }
        let (number, unit) = text.split_at(text.len() - 1);
        // Digits only, no sign and no leading zero: one spelling per window.
        if number.starts_with('0') || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(expected());
        }
        let number: i64 = number
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(expected)?;
        let minutes = match unit {
            "m" => number,
            "h" => number * 60,
            "d" => number * 1440,
            _ => return Err(expected()),
        };
        let most = i64::try_from(most.as_secs() / 60).unwrap_or(i64::MAX);
        if minutes > most {
            return Err(expected());
        }
        Ok(Self { minutes })
    }

    /// Its length in minutes.
    #[must_use]
    pub fn minutes(self) -> i64 {
        self.minutes
    }
}

/// Orders by what became of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Orders {
    /// Placed (checkouts submitted).
    pub placed: i64,
    /// Confirmed.
    pub confirmed: i64,
    /// Rejected.
    pub rejected: i64,
    /// Cancelled by their owners.
    pub cancelled: i64,
}

/// Checkout latency percentiles, in milliseconds (submit → confirmed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// How many checkouts.
    pub count: u64,
    /// The median.
    pub p50: u64,
    /// The 90th percentile.
    pub p90: u64,
    /// The 95th percentile.
    pub p95: u64,
    /// The 99th percentile.
    pub p99: u64,
    /// The slowest.
    pub max: u64,
}

impl Latency {
    /// The percentiles of `samples` (milliseconds; negative ones count as 0), from an
    /// `HdrHistogram` of 3 significant digits.
    #[must_use]
    pub fn of(samples: &[i64]) -> Self {
        let Ok(mut histogram) = hdrhistogram::Histogram::<u64>::new(3) else {
            return Self::default();
        };
        for sample in samples {
            // Auto-resizing: any value is recorded.
            let _ = histogram.record(u64::try_from(*sample).unwrap_or(0));
        }
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p95: histogram.value_at_quantile(0.95),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
        }
    }
}

/// Carts started against orders confirmed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Conversion {
    /// Empty carts that got a first line.
    pub carts_started: i64,
    /// Orders confirmed.
    pub orders_confirmed: i64,
    /// `orders_confirmed / carts_started`; `null` without carts. A ratio, not a share: it
    /// exceeds 1 when orders were placed from carts started before the window.
    pub rate: Option<f64>,
}

/// One point of the series: orders and revenue in a step of the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Point {
    /// The step's start, in milliseconds since the epoch.
    pub at_ms: i64,
    /// Orders confirmed.
    pub orders: i64,
    /// Revenue by currency, in minor units.
    pub revenue_minor: BTreeMap<String, i64>,
}

/// What the shop did in a window (see the crate's documentation).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// The window, as asked.
    pub window: String,
    /// Its first minute's start, in milliseconds since the epoch.
    pub from_ms: i64,
    /// Now.
    pub to_ms: i64,
    /// Orders.
    pub orders: Orders,
    /// Confirmed orders' revenue by currency, in minor units.
    pub revenue_minor: BTreeMap<String, i64>,
    /// What cancellations refunded, in minor units.
    pub refunded_minor: i64,
    /// How checkouts ended: `CONFIRMED` or the rejection's reason.
    pub outcomes: BTreeMap<String, i64>,
    /// Payments by what became of them (`authorized`, `declined`, `captured`,
    /// `capture_failed`, `voided`, `refunded`).
    pub payments: BTreeMap<String, i64>,
    /// Parcels `shipped` and `delivered`.
    pub shipping: BTreeMap<String, i64>,
    /// Notifications sent, by channel.
    pub notifications_sent: BTreeMap<String, i64>,
    /// Notifications dead, by channel.
    pub notifications_dead: BTreeMap<String, i64>,
    /// Dead notifications per channel now (all time: dead less replayed).
    pub dead_letters: BTreeMap<String, i64>,
    /// Checkout latency of the confirmed orders.
    pub checkout_latency_ms: Latency,
    /// Carts to orders.
    pub conversion: Conversion,
    /// Each step's length, in milliseconds (at most 120 steps).
    pub step_ms: i64,
    /// Orders and revenue per step, the oldest first, every step present.
    pub series: Vec<Point>,
}

/// The most steps of a series.
const MAX_POINTS: i64 = 120;

/// The service's state.
#[derive(Clone)]
pub struct Analytics(Arc<Inner>);

struct Inner {
    store: AnalyticsStore,
    clock: Clock,
    retention: Duration,
    validator: Validator,
}

impl std::fmt::Debug for Analytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analytics")
            .field("retention", &self.0.retention)
            .finish_non_exhaustive()
    }
}

/// Splits `metric` at its first `:`: `("revenue_minor", "EUR")`.
fn split(metric: &str) -> (&str, &str) {
    metric.split_once(':').unwrap_or((metric, ""))
}

impl Analytics {
    /// The figures in `store`, windows of at most `retention`, by `clock`. The summary trusts
    /// tokens `validator` accepts.
    #[must_use]
    pub fn new(
        store: AnalyticsStore,
        clock: Clock,
        retention: Duration,
        validator: Validator,
    ) -> Self {
        Self(Arc::new(Inner {
            store,
            clock,
            retention,
            validator,
        }))
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &AnalyticsStore {
        &self.0.store
    }

    /// The clock.
    #[must_use]
    pub fn clock(&self) -> Clock {
        self.0.clock
    }

    /// The longest window.
    #[must_use]
    pub fn retention(&self) -> Duration {
        self.0.retention
    }

    /// The consumer of every event analytics counts: `analytics`.
    #[must_use]
    pub fn consumer_config() -> ConsumerConfig {
        ConsumerConfig::new(
            "analytics",
            &[
                ORDERS_EVENTS,
                shop_messaging::saga::REPLIES,
                SHIPPING_EVENTS,
                NOTIFICATIONS_EVENTS,
                CARTS_EVENTS,
            ],
        )
    }

    /// The handler of those events (see [`Events`]).
    #[must_use]
    pub fn events(&self) -> Events {
        Events {
            retention: self.0.retention,
            clock: self.0.clock,
        }
    }

    /// The summary of the last `window` (named `name`).
    ///
    /// # Errors
    ///
    /// The store fails.
    pub async fn summary(&self, name: &str, window: Window) -> Result<Summary, StoreError> {
        let now = self.0.clock.now_ms();
        let to = minute_of(now);
        let from = to - window.minutes() + 1;
        let store = &self.0.store;
        let mut summary = Summary {
            window: name.to_owned(),
            from_ms: from * 60_000,
            to_ms: now,
            ..Summary::default()
        };
        for (metric, value) in store.sums(from, to).await? {
            let (family, label) = split(&metric);
            let label = label.to_owned();
            match family {
                "orders" => match label.as_str() {
                    "placed" => summary.orders.placed = value,
                    "confirmed" => summary.orders.confirmed = value,
                    "rejected" => summary.orders.rejected = value,
                    "cancelled" => summary.orders.cancelled = value,
                    _ => {}
                },
                "revenue_minor" => {
                    summary.revenue_minor.insert(label, value);
                }
                "refunded_minor" => summary.refunded_minor = value,
                "outcome" => {
                    summary.outcomes.insert(label, value);
                }
                "payments" => {
                    summary.payments.insert(label, value);
                }
                "shipping" => {
                    summary.shipping.insert(label, value);
                }
                "notifications_sent" => {
                    summary.notifications_sent.insert(label, value);
                }
                "notifications_dead" => {
                    summary.notifications_dead.insert(label, value);
                }
                "carts" if label == "started" => summary.conversion.carts_started = value,
                _ => {}
            }
        }
        summary.dead_letters = dead_letters(&store.totals().await?);
        summary.checkout_latency_ms = Latency::of(&store.latencies(from, to, "CONFIRMED").await?);
        summary.conversion.orders_confirmed = summary.orders.confirmed;
        summary.conversion.rate = (summary.conversion.carts_started > 0).then(|| {
            #[expect(clippy::cast_precision_loss, reason = "a ratio of counts")]
            let rate = summary.orders.confirmed as f64 / summary.conversion.carts_started as f64;
            rate
        });
        let step = (window.minutes() + MAX_POINTS - 1) / MAX_POINTS;
        summary.step_ms = step * 60_000;
        let mut series: Vec<Point> = (0..(window.minutes() + step - 1) / step)
            .map(|i| Point {
                at_ms: (from + i * step) * 60_000,
                ..Point::default()
            })
            .collect();
        for (minute, metric, value) in store
            .series(from, to, &["orders:confirmed"], "revenue_minor:")
            .await?
        {
            let Some(point) = usize::try_from((minute - from) / step)
                .ok()
                .and_then(|i| series.get_mut(i))
            else {
                continue;
            };
            match split(&metric) {
                ("orders", _) => point.orders += value,
                (_, currency) => {
                    *point.revenue_minor.entry(currency.to_owned()).or_default() += value;
                }
            }
        }
        summary.series = series;
        Ok(summary)
    }

    /// Forgets the minutes the retention no longer holds every hour, under `tasks`.
    pub fn prune_hourly(&self, tasks: &shop_common::tasks::Supervisor) {
        let this = self.clone();
        tasks.every(
            "analytics-prune",
            Stage::Sweepers,
            Duration::from_secs(3600),
            move || {
                let this = this.clone();
                async move {
                    let retention = i64::try_from(this.0.retention.as_secs() / 60).unwrap_or(0);
                    let before = minute_of(this.0.clock.now_ms()) - retention;
                    match this.0.store.prune(before).await {
                        Ok(0) => {}
                        Ok(rows) => tracing::info!(rows, "pruned what the retention left behind"),
                        Err(error) => tracing::warn!(%error, "pruning failed"),
                    }
                }
            },
        );
    }
}

/// Dead notifications per channel now, from the totals: dead less replayed, never below 0.
#[must_use]
pub fn dead_letters(totals: &[(String, i64)]) -> BTreeMap<String, i64> {
    let mut depth = BTreeMap::new();
    for channel in CHANNELS {
        depth.insert(channel.to_owned(), 0);
    }
    for (metric, value) in totals {
        match split(metric) {
            ("notifications_dead", channel) => {
                *depth.entry(channel.to_owned()).or_default() += value;
            }
            ("notifications_replayed", channel) => {
                *depth.entry(channel.to_owned()).or_default() -= value;
            }
            _ => {}
        }
    }
    for value in depth.values_mut() {
        *value = (*value).max(0);
    }
    depth
}

/// The notification channels.
const CHANNELS: [&str; 3] = ["email", "sms", "push"];

fn channel_ok(channel: &str) -> Result<(), Poison> {
    if CHANNELS.contains(&channel) {
        Ok(())
    } else {
        Err(Poison(format!("{channel:?} is not a channel")))
    }
}

/// A label value of a closed kind: 1 to 32 upper-case letters and `_` (a rejection's reason).
fn reason_ok(reason: &str) -> Result<(), Poison> {
    if (1..=32).contains(&reason.len())
        && reason.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
    {
        Ok(())
    } else {
        Err(Poison(format!(
            "a reason of {} bytes that is not 1 to 32 of A-Z and _",
            reason.len()
        )))
    }
}

fn currency_ok(currency: &str) -> Result<(), Poison> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(Poison("a currency that is not an ISO 4217 code".to_owned()))
    }
}

/// Counts each event (see [`Analytics::events`]), in the minute it happened: what happens
/// to an order once (placed, settled, a payment's result, cancelled, shipped, delivered) once
/// per order, whichever message carried it; the rest once per message (the inbox's). An
/// event older than the retention is acknowledged and not counted: what would remember that
/// it was counted is pruned by then.
#[derive(Debug, Clone)]
pub struct Events {
    retention: Duration,
    clock: Clock,
}

/// What happens to an order once, claimed once: whether this is the first time.
async fn once(tx: &mut Tx, what: &str, message: &Inbound) -> Result<bool, HandleError> {
    let order = &message.envelope.key;
    check_order_id(order)?;
    Ok(AnalyticsStore::claim(
        tx,
        &format!("{what}:{order}"),
        message.envelope.occurred_at_ms,
    )
    .await?)
}

/// Applies one event, within `tx`, unless it happened before `horizon_ms`.
///
/// # Errors
///
/// The event is malformed (poison), or the database fails.
pub async fn apply(message: &Inbound, tx: &mut Tx, horizon_ms: i64) -> Result<(), HandleError> {
    let at = message.envelope.occurred_at_ms;
    if at < horizon_ms {
        tracing::debug!(kind = %message.envelope.kind, "an event older than the retention: not counted");
        return Ok(());
    }
    let mut counts: Vec<(String, i64)> = Vec::new();
    if message.is::<OrderPlaced>() {
        let placed: OrderPlaced = message.decode()?;
        check_order_id(&placed.order_id)?;
        if once(tx, "placed", message).await? {
            AnalyticsStore::add(tx, placed.placed_at_ms, "orders:placed", 1).await?;
        }
    } else if message.is::<OrderConfirmed>() {
        let confirmed: OrderConfirmed = message.decode()?;
        check_order_id(&confirmed.order_id)?;
        currency_ok(&confirmed.currency)?;
        let latency = at.saturating_sub(confirmed.placed_at_ms).max(0);
        if AnalyticsStore::settled(tx, &confirmed.order_id, at, "CONFIRMED", latency).await? {
            counts.push(("orders:confirmed".into(), 1));
            counts.push(("outcome:CONFIRMED".into(), 1));
            counts.push((
                format!("revenue_minor:{}", confirmed.currency),
                confirmed.total_minor,
            ));
        }
    } else if message.is::<OrderRejected>() {
        let rejected: OrderRejected = message.decode()?;
        check_order_id(&rejected.order_id)?;
        reason_ok(&rejected.reason)?;
        let latency = at.saturating_sub(rejected.placed_at_ms).max(0);
        if AnalyticsStore::settled(tx, &rejected.order_id, at, &rejected.reason, latency).await? {
            counts.push(("orders:rejected".into(), 1));
            counts.push((format!("outcome:{}", rejected.reason), 1));
        }
    } else if message.is::<OrderCancelled>() {
        let cancelled: OrderCancelled = message.decode()?;
        check_order_id(&cancelled.order_id)?;
        if once(tx, "cancelled", message).await? {
            counts.push(("orders:cancelled".into(), 1));
            counts.push(("refunded_minor".into(), cancelled.refunded_minor.max(0)));
        }
    } else if let Some(result) = payment(message) {
        // A step's reply is sent again when the orchestrator asks again: once per order.
        if once(tx, &format!("payment:{result}"), message).await? {
            counts.push((format!("payments:{result}"), 1));
        }
    } else if message.is::<OrderShipped>() {
        if once(tx, "shipped", message).await? {
            counts.push(("shipping:shipped".into(), 1));
        }
    } else if message.is::<OrderDelivered>() {
        if once(tx, "delivered", message).await? {
            counts.push(("shipping:delivered".into(), 1));
        }
    } else if message.is::<NotificationSent>() {
        let sent: NotificationSent = message.decode()?;
        channel_ok(&sent.channel)?;
        counts.push((format!("notifications_sent:{}", sent.channel), 1));
    } else if message.is::<NotificationDead>() {
        let dead: NotificationDead = message.decode()?;
        channel_ok(&dead.channel)?;
        counts.push((format!("notifications_dead:{}", dead.channel), 1));
    } else if message.is::<NotificationsReplayed>() {
        let replayed: NotificationsReplayed = message.decode()?;
        channel_ok(&replayed.channel)?;
        let count = i64::try_from(replayed.count).unwrap_or(i64::MAX);
        counts.push((
            format!("notifications_replayed:{}", replayed.channel),
            count,
        ));
    } else if message.is::<CartStarted>() {
        counts.push(("carts:started".into(), 1));
    }
    for (metric, value) in counts {
        AnalyticsStore::add(tx, at, &metric, value).await?;
    }
    Ok(())
}

/// What a payment reply says became of the payment, if it is one.
fn payment(message: &Inbound) -> Option<&'static str> {
    fn is<M: Message>(message: &Inbound, result: &'static str) -> Option<&'static str> {
        message.is::<M>().then_some(result)
    }
    is::<PaymentAuthorized>(message, "authorized")
        .or_else(|| is::<PaymentDeclined>(message, "declined"))
        .or_else(|| is::<PaymentCaptured>(message, "captured"))
        .or_else(|| is::<CaptureFailed>(message, "capture_failed"))
        .or_else(|| is::<PaymentVoided>(message, "voided"))
        .or_else(|| is::<PaymentRefunded>(message, "refunded"))
}

#[async_trait]
impl Handler for Events {
    async fn handle(&self, message: &Inbound, tx: &mut Tx) -> Result<Outcome, HandleError> {
        let retention = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let horizon = self.clock.now_ms().saturating_sub(retention);
        apply(message, tx, horizon).await?;
        Ok(Outcome::Ack)
    }
}

/// The analytics service as its binary runs it, on `transport`, without serving: its kit (to
/// serve with `shop_common::serve`, or `serve_until` in the one-process system), its whole app,
/// and its state.
///
/// # Errors
///
/// The database or the transport cannot be opened, or the service cannot start on them.
pub async fn launch(
    config: AnalyticsConfig,
    transport: &shop_messaging::config::TransportConfig,
) -> std::io::Result<(shop_common::Kit, axum::Router, Analytics)> {
    let validator = config.tokens.validator()?;
    let mut service =
        shop_messaging::service::Service::start_with(config.service.clone(), transport).await?;
    let store = open(&service.database)
        .await
        .map_err(std::io::Error::other)?;
    let analytics = Analytics::new(store, Clock::new(), config.retention, validator.clone());
    let business = metrics::BusinessMetrics::default();
    service
        .kit
        .metrics
        .register_collector(Box::new(business.clone()));
    business.refresh_every(
        &service.kit.tasks,
        analytics.clone(),
        config.metrics_refresh,
    );
    analytics.prune_hourly(&service.kit.tasks);
    service.consume(Analytics::consumer_config(), analytics.events());
    let (kit, app) = service.launch(router(analytics.clone()), validator);
    Ok((kit, app, analytics))
}

/// The analytics store on `database`, and the backbone's tables beside it, migrated.
///
/// # Errors
///
/// A migration fails.
pub async fn open(database: &Database) -> Result<AnalyticsStore, StoreError> {
    let store = AnalyticsStore::open(database).await?;
    shop_messaging::migrate(database).await?;
    Ok(store)
}
