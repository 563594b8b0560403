//! The broker stopped while messages are enqueued: the outbox holds them and says how far
//! behind it is, and once the broker is back everything drains, in order, each message handled
//! once. Over a private nats-server (a port and a store of its own), stopped and restarted.

use std::sync::Arc;
use std::time::Duration;

use shop_common::on_db;
use shop_common::store::Database;
use shop_messaging::{
    ConsumerConfig, DeliveryOutcome, Followed, JetStreamTransport, MessageId, MessagingMetrics,
    Outbox, Publisher, Relay, Transport, follow,
};

use shop_messaging::testing::PrivateNats;

use super::{Script, consumer, enqueue_committed, prepare, raw};

/// The message ids of the effects, in the order they were written (SQLite's rowid).
async fn handled(database: &Database) -> Vec<String> {
    on_db!(database, pool => sqlx::query_scalar("SELECT message_id FROM effects ORDER BY rowid")
        .fetch_all(pool)
        .await)
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_down_loses_nothing_and_drains_in_order_when_back() {
    let Some(mut nats) = PrivateNats::start().await else {
        return;
    };
    let database = Database::connect("sqlite::memory:").await.unwrap();
    prepare(&database).await;
    let transport = Arc::new(
        JetStreamTransport::connect(&nats.url(), "down")
            .await
            .unwrap(),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let metrics = MessagingMetrics::new();
    let registry = mainstay_telemetry::Metrics::new();
    metrics.register(&registry);
    let relay = tokio::spawn(
        Relay::new(database.clone(), transport.clone())
            .metrics(metrics.clone())
            .poll(Duration::from_millis(100))
            .publish_timeout(Duration::from_secs(1))
            .run(until_stopped()),
    );
    let search = consumer(
        &database,
        &transport,
        ConsumerConfig::new("search", &["catalog.events"]),
        Script::with(&[]),
    )
    .metrics(metrics.clone());
    let consuming = tokio::spawn(search.run(until_stopped()));
    let wait_for = |count: usize| {
        let database = database.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while handled(&database).await.len() < count {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{count} never handled"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let mut sent = enqueue_committed(&database, &["a", "b", "a"]).await;
    wait_for(3).await;

    // Down: what is enqueued waits in the outbox, and the lag says so.
    nats.stop().await;
    sent.extend(enqueue_committed(&database, &["b", "a", "c", "a", "b"]).await);
    let lag = Outbox::lag(&database).await.unwrap();
    assert!(lag.pending >= 1, "{lag:?}");
    assert!(lag.oldest_at_ms.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handled(&database).await.len(), 3, "nothing gets through");
    assert_eq!(Outbox::lag(&database).await.unwrap().pending, 5);
    // The relay's metrics say so too, within a second or two of rounds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.snapshot().outbox_pending != 5 || metrics.snapshot().publish_failures == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            metrics.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exposed = registry.encode();
    assert!(
        exposed.contains("messaging_outbox_pending 5\n"),
        "{exposed}"
    );
    assert!(
        exposed.contains("messaging_outbox_lag_seconds "),
        "{exposed}"
    );

    // Back: everything drains, in order, each once.
    nats.restart().await;
    wait_for(8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected: Vec<String> = sent.iter().map(MessageId::to_string).collect();
    assert_eq!(handled(&database).await, expected);
    assert_eq!(Outbox::lag(&database).await.unwrap().pending, 0);
    // (A batch the broker stored but did not acknowledge in time is published again: at least.)
    assert!(
        metrics.snapshot().published >= 8,
        "{:?}",
        metrics.snapshot()
    );
    assert_eq!(metrics.deliveries("search", DeliveryOutcome::Ack), 8);
    assert!(
        registry
            .encode()
            .contains("messaging_published_total{subject=\"catalog.events\"} ")
    );

    stop.send(true).unwrap();
    relay.await.unwrap();
    consuming.await.unwrap().unwrap();
    transport.delete().await.unwrap();
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_each_later_message_once_across_a_broker_restart() {
    let Some(mut nats) = PrivateNats::start().await else {
        return;
    };
    let transport = Arc::new(
        JetStreamTransport::connect(&nats.url(), "follow")
            .await
            .unwrap(),
    );
    transport
        .publish(&[raw("catalog.events", "before")])
        .await
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let following = tokio::spawn({
        let seen = seen.clone();
        let transport: Arc<dyn Transport> = transport.clone();
        let mut stopped = stopped.clone();
        follow(
            transport,
            vec!["catalog.events".to_owned()],
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
            move |followed| {
                seen.lock().unwrap().push(match followed {
                    Followed::Gap => "gap".to_owned(),
                    Followed::Message(message) => {
                        String::from_utf8(message.payload.clone()).unwrap()
                    }
                });
            },
        )
    });
    let wait_for = |body: &'static str| {
        let seen = seen.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !seen.lock().unwrap().iter().any(|seen| seen == body) {
                assert!(tokio::time::Instant::now() < deadline, "{body} never seen");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for("gap").await;

    // Published once the client is back, as the relay would: the same message (one id, which
    // the stream de-duplicates) until it is acknowledged.
    let publish = |body: &'static str| {
        let transport = transport.clone();
        async move {
            let message = [raw("catalog.events", body)];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while transport.publish(&message).await.is_err() {
                assert!(tokio::time::Instant::now() < deadline, "never reconnected");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Across a restart: a gap (the client reconnected, and messages may have been missed),
    // then each message published after it is seen.
    let gaps = || seen.lock().unwrap().iter().filter(|s| *s == "gap").count();
    for body in ["one", "two"] {
        let before = gaps();
        nats.restart().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while gaps() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no gap after a restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        publish(body).await;
        wait_for(body).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], "gap", "{seen:?}");
    assert!(!seen.iter().any(|s| s == "before"), "{seen:?}");
    for body in ["one", "two"] {
        assert_eq!(seen.iter().filter(|s| *s == body).count(), 1, "{seen:?}");
    }

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), following)
        .await
        .expect("stopped when told")
        .unwrap();
    transport.delete().await.unwrap();
    drop(nats);
}
