//! The analytics service, the same suites on SQLite and on PostgreSQL: figures rebuilt from a
//! replayed stream equal the ones built as events came (duplicates ignored); windows on paused
//! time; the summary's API; labels an event cannot invent; the business metrics.

use std::time::Duration;

use http::{Method, StatusCode};
use mainstay_auth::AccessClaims;
use shop_analytics::metrics::BusinessMetrics;
use shop_analytics::{Analytics, Clock, Window, open, router};
use shop_common::store::Database;
use shop_common::testing::call;
use shop_messaging::contracts::{
    CartStarted, DeclineReason, NotificationDead, NotificationSent, NotificationsReplayed,
    OrderCancelled, OrderConfirmed, OrderLine, OrderPlaced, OrderRejected, OrderShipped,
    PaymentAuthorized, PaymentDeclined,
};
use shop_messaging::{HandleError, Handler, Inbound, Inbox, Message};

shop_common::on_both_stores!(
    a_replayed_stream_rebuilds_the_same_figures,
    the_summary_is_admin_only_and_bounds_its_window,
    an_event_cannot_invent_a_label,
);

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

async fn start(database: &Database) -> (Analytics, mainstay_auth::TokenIssuer) {
    let store = open(database).await.unwrap();
    let (issuer, validator) = shop_common::testing::users_tokens();
    (Analytics::new(store, Clock::new(), WEEK, validator), issuer)
}

/// `message` as it happened at `at_ms`.
fn at<M: Message + serde::Serialize>(message: &M, at_ms: i64) -> Inbound {
    let mut inbound = Inbound::of(message, None).unwrap();
    inbound.envelope.occurred_at_ms = at_ms;
    inbound
}

/// `message` delivered again.
fn again(message: &Inbound) -> Inbound {
    let envelope = serde_json::to_string(&message.envelope).unwrap();
    Inbound {
        envelope: serde_json::from_str(&envelope).unwrap(),
        subject: message.subject.clone(),
        delivered: message.delivered + 1,
    }
}

/// Delivers `message` as the consumer does: once per message id, in one transaction with its
/// effect.
async fn deliver(analytics: &Analytics, message: &Inbound) -> Result<(), HandleError> {
    let database = analytics.store().database();
    let mut tx = database.begin().await.unwrap();
    if Inbox::first_time(&mut tx, "analytics", message.envelope.id)
        .await
        .unwrap()
    {
        analytics.events().handle(message, &mut tx).await?;
    }
    tx.commit().await.unwrap();
    Ok(())
}

fn placed(order: &str, at_ms: i64) -> OrderPlaced {
    OrderPlaced {
        order_id: order.into(),
        user_id: "u".into(),
        total_minor: 1_000,
        currency: "EUR".into(),
        placed_at_ms: at_ms,
    }
}

fn confirmed(order: &str, placed_at_ms: i64, total: i64) -> OrderConfirmed {
    OrderConfirmed {
        order_id: order.into(),
        user_id: "u".into(),
        lines: vec![OrderLine {
            product_id: "mug".into(),
            quantity: 1,
            unit_price_minor: total,
        }],
        total_minor: total,
        currency: "EUR".into(),
        placed_at_ms,
    }
}

fn rejected(order: &str, placed_at_ms: i64, reason: &str) -> OrderRejected {
    OrderRejected {
        order_id: order.into(),
        user_id: "u".into(),
        reason: reason.into(),
        placed_at_ms,
    }
}

fn sent(id: &str, channel: &str) -> NotificationSent {
    NotificationSent {
        notification_id: id.into(),
        channel: channel.into(),
        kind: "order_confirmed".into(),
        attempts: 0,
        sent_at_ms: 0,
    }
}

fn dead(id: &str, channel: &str) -> NotificationDead {
    NotificationDead {
        notification_id: id.into(),
        channel: channel.into(),
        kind: "order_confirmed".into(),
        attempts: 3,
        dead_at_ms: 0,
    }
}

/// Ten minutes of a shop, ending at `now`.
fn stream(now: i64) -> Vec<Inbound> {
    let t = now - 10 * 60_000;
    let mut messages = vec![
        at(
            &CartStarted {
                user_id: "u".into(),
                started_at_ms: t,
            },
            t,
        ),
        at(
            &CartStarted {
                user_id: "v".into(),
                started_at_ms: t,
            },
            t,
        ),
        at(
            &CartStarted {
                user_id: "w".into(),
                started_at_ms: t,
            },
            t,
        ),
        at(
            &CartStarted {
                user_id: "x".into(),
                started_at_ms: t,
            },
            t,
        ),
        at(&placed("o1", t), t),
        at(&placed("o2", t), t),
        at(&placed("o3", t + 60_000), t + 60_000),
        at(
            &PaymentAuthorized {
                order_id: "o1".into(),
                payment_id: "p1".into(),
            },
            t + 50,
        ),
        at(
            &PaymentDeclined {
                order_id: "o2".into(),
                reason: DeclineReason::Declined,
            },
            t + 50,
        ),
        at(&confirmed("o1", t, 2_500), t + 120),
        at(&rejected("o2", t, "PAYMENT_DECLINED"), t + 300),
        at(&confirmed("o3", t + 60_000, 1_500), t + 60_000 + 80),
        at(
            &OrderShipped {
                order_id: "o1".into(),
                tracking_id: "T".into(),
            },
            t + 120_000,
        ),
        at(
            &OrderCancelled {
                order_id: "o3".into(),
                user_id: "u".into(),
                refunded_minor: 1_500,
            },
            t + 180_000,
        ),
        at(&sent("n1", "email"), t + 200),
        at(&dead("n2", "sms"), t + 200),
        at(&dead("n3", "sms"), t + 200),
        at(
            &NotificationsReplayed {
                channel: "sms".into(),
                count: 1,
                replayed_at_ms: 0,
            },
            t + 400,
        ),
    ];
    // A message delivered twice, an order's confirmation announced by a second message, and a
    // payment's reply sent again (the orchestrator asked again): each counted once.
    messages.push(again(&messages[9]));
    messages.push(at(&confirmed("o1", t, 2_500), t + 120));
    messages.push(at(
        &PaymentAuthorized {
            order_id: "o1".into(),
            payment_id: "p1".into(),
        },
        t + 5_050,
    ));
    // Older than the retention: not counted.
    messages.push(at(
        &placed("o0", t - 8 * 24 * 3_600_000),
        t - 8 * 24 * 3_600_000,
    ));
    messages
}

async fn a_replayed_stream_rebuilds_the_same_figures(database: &Database, _: &str) {
    let (analytics, _) = start(database).await;
    let now = analytics.clock().now_ms();
    let stream = stream(now);
    for message in &stream {
        deliver(&analytics, message).await.unwrap();
    }
    let summary = analytics
        .summary("7d", Window::parse("7d", WEEK).unwrap())
        .await
        .unwrap();
    assert_eq!(summary.orders.placed, 3, "o0 is older than the retention");
    let summary = analytics
        .summary("1h", Window::parse("1h", WEEK).unwrap())
        .await
        .unwrap();
    assert_eq!(summary.orders.placed, 3);
    assert_eq!(summary.orders.confirmed, 2, "o1 once, o3");
    assert_eq!(summary.orders.rejected, 1);
    assert_eq!(summary.orders.cancelled, 1);
    assert_eq!(summary.revenue_minor["EUR"], 4_000);
    assert_eq!(summary.refunded_minor, 1_500);
    assert_eq!(summary.outcomes["CONFIRMED"], 2);
    assert_eq!(summary.outcomes["PAYMENT_DECLINED"], 1);
    assert_eq!(summary.payments["authorized"], 1);
    assert_eq!(summary.payments["declined"], 1);
    assert_eq!(summary.shipping["shipped"], 1);
    assert_eq!(summary.notifications_sent["email"], 1);
    assert_eq!(summary.notifications_dead["sms"], 2);
    assert_eq!(summary.dead_letters["sms"], 1, "two dead, one replayed");
    assert_eq!(summary.dead_letters["email"], 0);
    assert_eq!(summary.checkout_latency_ms.count, 2);
    assert_eq!(summary.checkout_latency_ms.max, 120);
    assert_eq!(summary.checkout_latency_ms.p50, 80);
    assert_eq!(summary.conversion.carts_started, 4);
    assert_eq!(summary.conversion.rate, Some(0.5));
    assert_eq!(summary.series.len(), 60, "a step per minute");
    assert_eq!(summary.step_ms, 60_000);
    let orders: i64 = summary.series.iter().map(|p| p.orders).sum();
    assert_eq!(orders, 2);
    let busy: Vec<_> = summary.series.iter().filter(|p| p.orders > 0).collect();
    assert_eq!(busy.len(), 2, "two minutes held an order each");
    assert_eq!(busy[0].revenue_minor["EUR"], 2_500);

    let built = analytics.store().dump().await.unwrap();
    let fresh = Database::connect("sqlite::memory:").await.unwrap();
    let (replayed, _) = start(&fresh).await;
    for message in stream.iter().rev() {
        deliver(&replayed, &again(message)).await.unwrap();
    }
    assert_eq!(replayed.store().dump().await.unwrap(), built);
}

/// Keeps the paused runtime from sitting idle while SQLite's worker thread answers: idle, it
/// would move its clock on by itself to the next timer (the pool's acquire timeout). The
/// clock moves only by `advance` here.
fn keep_busy() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        loop {
            tokio::task::yield_now().await;
        }
    })
}

/// Windows move with the clock: figures leave a window as time passes (paused time, SQLite).
#[tokio::test(start_paused = true)]
async fn windows_move_with_the_clock() {
    let busy = keep_busy();
    let database = Database::connect("sqlite::memory:").await.unwrap();
    let (analytics, _) = start(&database).await;
    let now = analytics.clock().now_ms();
    deliver(&analytics, &at(&placed("o1", now - 60_000), now - 60_000))
        .await
        .unwrap();
    deliver(&analytics, &at(&confirmed("o1", now - 60_000, 900), now))
        .await
        .unwrap();
    let summary = |window: &'static str| {
        let analytics = analytics.clone();
        async move {
            analytics
                .summary(window, Window::parse(window, WEEK).unwrap())
                .await
                .unwrap()
        }
    };
    assert_eq!(summary("5m").await.orders.confirmed, 1);
    assert_eq!(summary("5m").await.orders.placed, 1);
    assert_eq!(
        summary("1m").await.orders.placed,
        0,
        "placed a minute before"
    );

    tokio::time::advance(Duration::from_secs(6 * 60)).await;
    let five = summary("5m").await;
    assert_eq!(
        five.orders.confirmed, 0,
        "six minutes on: out of the last five"
    );
    assert_eq!(five.revenue_minor.get("EUR"), None);
    assert_eq!(five.checkout_latency_ms.count, 0);
    let fifteen = summary("15m").await;
    assert_eq!(fifteen.orders.confirmed, 1);
    let p99 = fifteen.checkout_latency_ms.p99;
    assert!(
        (60_000..60_060).contains(&p99),
        "a minute, to the histogram's 3 significant digits: {p99}"
    );

    // A day's series: 120 steps of 12 minutes.
    let day = summary("24h").await;
    assert_eq!(day.series.len(), 120);
    assert_eq!(day.step_ms, 12 * 60_000);
    assert_eq!(day.series.iter().map(|p| p.orders).sum::<i64>(), 1);

    // Pruned once older than the retention; the totals stay.
    tokio::time::advance(WEEK).await;
    let before = shop_analytics::store::minute_of(analytics.clock().now_ms()) - 7 * 24 * 60;
    assert!(analytics.store().prune(before).await.unwrap() > 0);
    assert_eq!(summary("7d").await.orders.confirmed, 0);
    let totals = analytics.store().totals().await.unwrap();
    assert!(
        totals.contains(&("orders:confirmed".to_owned(), 1)),
        "{totals:?}"
    );
    busy.abort();
}

async fn the_summary_is_admin_only_and_bounds_its_window(database: &Database, _: &str) {
    let (analytics, issuer) = start(database).await;
    let now = analytics.clock().now_ms();
    deliver(&analytics, &at(&placed("o1", now), now))
        .await
        .unwrap();
    let app = router(analytics);
    let token = |role: &str| {
        issuer
            .issue(&AccessClaims::new(format!("{role}-1")).role(role))
            .unwrap()
            .token
    };
    let admin = token("admin");
    let ok = call(
        &app,
        Method::GET,
        "/analytics/summary?window=15m",
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(ok.body["orders"]["placed"], 1);
    assert_eq!(ok.body["window"], "15m");
    assert_eq!(ok.body["series"].as_array().unwrap().len(), 15);
    let default = call(
        &app,
        Method::GET,
        "/analytics/summary",
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!(default.body["window"], "1h");
    for bad in [
        "0m",
        "8d",
        "1w",
        "h",
        "-5m",
        "+5m",
        "010m",
        "99999999999m",
        "1.5h",
        "169h",
    ] {
        let refused = call(
            &app,
            Method::GET,
            &format!("/analytics/summary?window={bad}"),
            Some(&admin),
            None,
            None,
        )
        .await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {:?}",
            refused.body
        );
        assert_eq!(refused.headers["content-type"], "application/problem+json");
    }
    let customer = call(
        &app,
        Method::GET,
        "/analytics/summary",
        Some(&token("customer")),
        None,
        None,
    )
    .await;
    assert_eq!(customer.status, StatusCode::FORBIDDEN);
    let nobody = call(&app, Method::GET, "/analytics/summary", None, None, None).await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);
}

async fn an_event_cannot_invent_a_label(database: &Database, _: &str) {
    let (analytics, _) = start(database).await;
    let now = analytics.clock().now_ms();
    let mut odd = confirmed("o1", now, 100);
    odd.currency = "euro\"}".into();
    for message in [
        at(&sent("n1", "pigeon"), now),
        at(&rejected("o2", now, "because\nreasons"), now),
        at(&odd, now),
    ] {
        assert!(
            matches!(
                deliver(&analytics, &message).await,
                Err(HandleError::Poison(_))
            ),
            "{}",
            message.envelope.kind
        );
    }
    assert!(analytics.store().totals().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_business_metrics_are_the_totals() {
    let database = Database::connect("sqlite::memory:").await.unwrap();
    let (analytics, _) = start(&database).await;
    let now = analytics.clock().now_ms();
    for message in stream(now) {
        deliver(&analytics, &message).await.unwrap();
    }
    let metrics = BusinessMetrics::default();
    metrics.refresh(&analytics).await.unwrap();
    let registry = mainstay_telemetry::Metrics::new();
    registry.register_collector(Box::new(metrics));
    let text = registry.encode_prometheus();
    for line in [
        "shop_orders_total{status=\"confirmed\"} 2",
        "shop_orders_total{status=\"placed\"} 3",
        "shop_revenue_minor_total{currency=\"EUR\"} 4000",
        "shop_checkout_outcomes_total{outcome=\"PAYMENT_DECLINED\"} 1",
        "shop_payments_total{result=\"declined\"} 1",
        "shop_notification_dead_letters{channel=\"sms\"} 1",
        "shop_notification_dead_letters{channel=\"email\"} 0",
        "shop_carts_started_total 4",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    // The exposition is valid OpenMetrics, as promtool reads it (where it is installed).
    mainstay_test_support::promtool::check_metrics(&text);
}
