//! The outbox on SQLite and on PostgreSQL: a message stands or falls with the transaction it
//! was written in, keeps its order, carries its trace context, and its tables live beside the
//! service's and the kit's without their migrations meeting.

use std::borrow::Cow;

use opentelemetry::trace::TracerProvider as _;
use serde::{Deserialize, Serialize};
use shop_common::store::Database;
use shop_common::{on_db, on_tx};
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use shop_messaging::{
    Context, Envelope, Inbox, Message, MessageId, Outbox, OutboxError, Pending, PublishError,
    Publisher, Relay, RelayError, Round, SagaRef,
};
use tracing_subscriber::layer::SubscriberExt;

mod consume;

/// The spans of this binary, exported by the global subscriber every test of this suite sets
/// before its first span. (Global, not per test: a callsite first met on another thread while
/// a test installs its own subscriber can be cached as disabled for good.)
static SPANS: LazyLock<opentelemetry_sdk::trace::InMemorySpanExporter> = LazyLock::new(|| {
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    exporter
});

shop_common::on_both_stores!(
    a_message_commits_or_rolls_back_with_the_state_change,
    messages_keep_their_enqueue_order,
    the_envelope_says_what_it_is_and_what_caused_it,
    the_services_the_kits_and_the_messaging_migrations_live_side_by_side,
    the_relay_publishes_in_order_and_loses_nothing_when_the_broker_fails_partway,
    a_commit_wakes_the_running_relay_and_stop_ends_it,
    a_redelivered_message_finds_its_id_in_the_inbox_once_the_effect_committed,
    a_message_the_broker_refuses_is_set_aside_and_the_rest_go_on,
    a_broker_that_does_not_answer_times_out_and_the_batch_is_published_again,
    a_message_too_large_for_a_broker_is_refused_at_enqueue,
    published_messages_are_pruned_and_the_rest_kept,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PriceChanged {
    product_id: String,
    price_minor: i64,
}

impl Message for PriceChanged {
    const KIND: &'static str = "PriceChanged";
    const VERSION: u16 = 2;

    fn subject(&self) -> Cow<'static, str> {
        Cow::Borrowed("catalog.events")
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.product_id)
    }
}

fn price(product_id: &str, price_minor: i64) -> PriceChanged {
    PriceChanged {
        product_id: product_id.to_owned(),
        price_minor,
    }
}

async fn ready(database: &Database) {
    shop_messaging::migrate(database).await.unwrap();
    on_db!(database, pool => sqlx::query("CREATE TABLE prices (id TEXT PRIMARY KEY NOT NULL, minor BIGINT NOT NULL)")
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
    .unwrap();
}

async fn prices(database: &Database) -> i64 {
    on_db!(database, pool => sqlx::query_scalar("SELECT COUNT(*) FROM prices")
        .fetch_one(pool)
        .await)
    .unwrap()
}

async fn a_message_commits_or_rolls_back_with_the_state_change(database: &Database, _: &str) {
    ready(database).await;
    let change = |id: &'static str, minor: i64| async move {
        let mut tx = database.begin().await.unwrap();
        on_tx!(&mut tx, conn => sqlx::query("INSERT INTO prices (id, minor) VALUES ($1, $2)")
            .bind(id)
            .bind(minor)
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()))
        .unwrap();
        let message = Outbox::enqueue(&mut tx, &price(id, minor)).await.unwrap();
        (tx, message)
    };

    let (tx, _) = change("p1", 100).await;
    tx.rollback().await.unwrap();
    let (tx, _) = change("p2", 200).await;
    drop(tx); // a handler that failed after writing: nothing stands
    assert_eq!(prices(database).await, 0);
    assert!(Outbox::pending(database, 10).await.unwrap().is_empty());

    let (tx, id) = change("p3", 300).await;
    tx.commit().await.unwrap();
    assert_eq!(prices(database).await, 1);
    let pending = Outbox::pending(database, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, id);
    assert_eq!(pending[0].subject, "catalog.events");
    assert_eq!(pending[0].key, "p3");
    assert_eq!(pending[0].attempts, 0);
}

async fn messages_keep_their_enqueue_order(database: &Database, _: &str) {
    ready(database).await;
    let mut sent = Vec::new();
    for (n, product) in ["a", "b", "a", "c", "a"].into_iter().enumerate() {
        let mut tx = database.begin().await.unwrap();
        let minor = i64::try_from(n).unwrap();
        sent.push(
            Outbox::enqueue(&mut tx, &price(product, minor))
                .await
                .unwrap(),
        );
        tx.commit().await.unwrap();
    }
    // Two in one transaction keep their order too.
    let mut tx = database.begin().await.unwrap();
    sent.push(Outbox::enqueue(&mut tx, &price("a", 10)).await.unwrap());
    sent.push(Outbox::enqueue(&mut tx, &price("b", 11)).await.unwrap());
    tx.commit().await.unwrap();

    let pending = Outbox::pending(database, 100).await.unwrap();
    let ids: Vec<MessageId> = pending.iter().map(|p| p.id).collect();
    assert_eq!(ids, sent);
    assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
    // Ids sort by time, as UUIDv7s do.
    assert!(sent.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(Outbox::pending(database, 2).await.unwrap().len(), 2);
}

async fn the_envelope_says_what_it_is_and_what_caused_it(database: &Database, _: &str) {
    ready(database).await;
    let cause = MessageId::new();
    let saga = SagaRef {
        saga_id: "order-1".into(),
        step: "reserve-stock".into(),
    };
    let before = shop_common::unix_millis();

    // A sampled span: its trace context goes into the headers.
    LazyLock::force(&SPANS);
    let span = tracing::info_span!("change price");
    let trace_id = mainstay_trace_id(&span);
    let mut tx = database.begin().await.unwrap();
    let id = {
        let _entered = span.enter();
        Outbox::enqueue_with(
            &mut tx,
            &price("p9", 999),
            Context {
                saga: Some(saga.clone()),
                causation_id: Some(cause),
            },
        )
        .await
        .unwrap()
    };
    tx.commit().await.unwrap();
    drop(span);

    let pending = Outbox::pending(database, 10).await.unwrap();
    let [message] = pending.as_slice() else {
        panic!("one message, got {pending:?}")
    };
    let envelope: Envelope = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(envelope.id, id);
    assert_eq!(envelope.kind, "PriceChanged");
    assert_eq!(envelope.version, 2);
    assert_eq!(envelope.key, "p9");
    assert_eq!(envelope.saga, Some(saga));
    assert_eq!(envelope.causation_id, Some(cause));
    assert!(envelope.occurred_at_ms >= before);
    let body: PriceChanged = serde_json::from_str(envelope.body.get()).unwrap();
    assert_eq!(body, price("p9", 999));

    let traceparent = &message.headers["traceparent"];
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")) && traceparent.ends_with("-01"),
        "{traceparent} carries trace {trace_id}, sampled"
    );
}

fn mainstay_trace_id(span: &tracing::Span) -> String {
    mainstay_telemetry::propagation::trace_id(span).expect("a sampled span has a trace id")
}

async fn the_services_the_kits_and_the_messaging_migrations_live_side_by_side(
    database: &Database,
    _: &str,
) {
    let service = shop_common::testing::ServiceMigrations::new().await;
    let service = &service.migrator;
    // In one order, then again in the other (every start runs them all).
    shop_messaging::migrate(database).await.unwrap();
    database.migrate(service, service).await.unwrap();
    database.migrate_kit().await.unwrap();
    database.migrate_kit().await.unwrap();
    database.migrate(service, service).await.unwrap();
    shop_messaging::migrate(database).await.unwrap();
    for table in ["messaging_outbox", "things", "kit_idempotency"] {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let count: i64 =
            on_db!(database, pool => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(pool)
            .await)
            .unwrap();
        assert_eq!(count, 0, "{table}");
    }
}

/// A broker that records what it takes, and fails partway through a batch when told to.
#[derive(Default)]
struct Broker {
    taken: Mutex<Vec<(MessageId, String)>>,
    /// Take this many of the next batch, then fail.
    fail_after: Mutex<Option<usize>>,
    /// Refuse this message whenever it comes (as too large, say).
    refuse: Mutex<Option<MessageId>>,
    /// Take the batch, then never answer (the relay is cut off before it hears back).
    mute: std::sync::atomic::AtomicBool,
    /// Told when a publish begins (the relay holds its turn by then).
    entered: Arc<tokio::sync::Notify>,
    /// Publishes begun.
    publishes: std::sync::atomic::AtomicUsize,
    /// Held until released: the publish waits on it.
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Broker {
    /// A broker whose publishes wait until the gate is given permits.
    fn gated() -> (Arc<Self>, Arc<tokio::sync::Semaphore>) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let broker = Self {
            gate: Some(gate.clone()),
            ..Self::default()
        };
        (Arc::new(broker), gate)
    }

    /// The ids of what it took, in order.
    fn ids(&self) -> Vec<MessageId> {
        self.taken
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }
}

#[async_trait]
impl Publisher for Broker {
    async fn publish(&self, batch: &[Pending]) -> Result<(), PublishError> {
        self.publishes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.entered.notify_one();
        if let Some(gate) = &self.gate {
            let _permit = gate.acquire().await.unwrap();
        }
        let fail_after = self.fail_after.lock().unwrap().take();
        let refuse = *self.refuse.lock().unwrap();
        {
            let mut taken = self.taken.lock().unwrap();
            for (n, pending) in batch.iter().enumerate() {
                if fail_after == Some(n) {
                    return Err(PublishError::unavailable(n, "connection reset by broker"));
                }
                if refuse == Some(pending.id) {
                    return Err(PublishError::refused(n, "maximum payload exceeded"));
                }
                taken.push((pending.id, pending.key.clone()));
            }
        }
        if self.mute.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

async fn enqueue_committed(database: &Database, keys: &[&str]) -> Vec<MessageId> {
    let mut ids = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let mut tx = database.begin().await.unwrap();
        let minor = i64::try_from(n).unwrap();
        ids.push(Outbox::enqueue(&mut tx, &price(key, minor)).await.unwrap());
        tx.commit().await.unwrap();
    }
    ids
}

async fn the_relay_publishes_in_order_and_loses_nothing_when_the_broker_fails_partway(
    database: &Database,
    _: &str,
) {
    ready(database).await;
    let sent = enqueue_committed(
        database,
        &["a", "b", "a", "c", "b", "a", "c", "a", "b", "c"],
    )
    .await;
    let broker = Arc::new(Broker::default());
    let relay = Relay::new(database.clone(), broker.clone()).batch(8);

    // The broker takes four of the first batch of eight, then fails.
    *broker.fail_after.lock().unwrap() = Some(4);
    let failed = relay.relay_once().await.unwrap_err();
    let RelayError::Publish(error) = failed else {
        panic!("a publish error, got {failed:?}")
    };
    assert_eq!(error.held, 4);
    let pending = Outbox::pending(database, 100).await.unwrap();
    assert_eq!(pending.len(), 6, "the four taken are marked, the rest wait");
    assert_eq!(pending[0].id, sent[4]);
    assert_eq!(
        pending[0].attempts, 1,
        "the failed message's attempt is counted"
    );
    assert!(pending[1..].iter().all(|p| p.attempts == 0));
    assert!(!error.refused);

    // Next rounds: the rest, in order; then nothing.
    assert_eq!(relay.relay_once().await.unwrap().published, 6);
    assert_eq!(relay.relay_once().await.unwrap(), Round::default());
    let taken = broker.taken.lock().unwrap().clone();
    let ids: Vec<MessageId> = taken.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids, sent,
        "every message once, in enqueue order (so in order per key)"
    );
    assert!(Outbox::pending(database, 100).await.unwrap().is_empty());
}

/// Takes every batch, except that the `fail_on`-th publish holds one message and then fails.
struct FailsOnce {
    fail_on: usize,
    calls: std::sync::atomic::AtomicUsize,
    taken: Mutex<Vec<MessageId>>,
}

#[async_trait]
impl Publisher for FailsOnce {
    async fn publish(&self, batch: &[Pending]) -> Result<(), PublishError> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut taken = self.taken.lock().unwrap();
        if call == self.fail_on {
            taken.push(batch[0].id);
            return Err(PublishError::unavailable(1, "connection reset by broker"));
        }
        taken.extend(batch.iter().map(|pending| pending.id));
        Ok(())
    }
}

/// A PostgreSQL turn publishes batch after batch (marking one while the next is published),
/// in order, and a failure ends it with what the broker took marked.
#[tokio::test]
async fn a_postgresql_turn_publishes_batch_after_batch_and_stops_at_a_failure() {
    let Some(db) = shop_common::testing::PgTestDb::create_or_skip("turns").await else {
        return;
    };
    let database = Database::connect(&db.url).await.unwrap();
    ready(&database).await;
    let sent = enqueue_committed(&database, &["a", "b", "a", "c", "b", "a", "c"]).await;
    let broker = Arc::new(FailsOnce {
        fail_on: 3,
        calls: std::sync::atomic::AtomicUsize::new(0),
        taken: Mutex::new(Vec::new()),
    });
    let relay = Relay::new(database.clone(), broker.clone()).batch(2);
    // Two full batches, then the third holds one of its two and fails: one turn.
    let failed = relay.relay_once().await.unwrap_err();
    assert!(
        matches!(failed, RelayError::Publish(ref e) if e.held == 1),
        "{failed:?}"
    );
    let pending = Outbox::pending(&database, 100).await.unwrap();
    let waiting: Vec<MessageId> = pending.iter().map(|p| p.id).collect();
    assert_eq!(waiting, sent[5..], "the five taken are gone, the rest wait");
    assert_eq!(pending[0].attempts, 1);
    // The next turn: the rest (one batch and a short one), then nothing.
    assert_eq!(relay.relay_once().await.unwrap().published, 2);
    assert_eq!(relay.relay_once().await.unwrap(), Round::default());
    assert_eq!(*broker.taken.lock().unwrap(), sent, "once each, in order");
    if let Database::Postgres(pool) = database {
        pool.close().await;
    }
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_of_one_postgresql_database_take_turns() {
    let Some(db) = shop_common::testing::PgTestDb::create_or_skip("relays").await else {
        return;
    };
    let database = Database::connect(&db.url).await.unwrap();
    ready(&database).await;
    let sent = enqueue_committed(&database, &["a", "b", "a"]).await;
    let (broker, gate) = Broker::gated();
    let first = Relay::new(database.clone(), broker.clone());
    let second = Relay::new(database.clone(), broker.clone());

    // The first relay holds the turn while its broker is slow: the second does nothing.
    let holding = tokio::spawn(async move { first.relay_once().await.unwrap() });
    broker.entered.notified().await;
    // (Bounded: a second relay that did not wait its turn would block on the slow broker.)
    let second_round =
        tokio::time::timeout(std::time::Duration::from_secs(10), second.relay_once())
            .await
            .expect("the second relay returned at once");
    assert_eq!(
        second_round.unwrap(),
        Round {
            turn_taken: true,
            ..Round::default()
        },
        "another relay holds the turn"
    );
    gate.add_permits(10);
    assert_eq!(holding.await.unwrap().published, 3);
    assert_eq!(
        second.relay_once().await.unwrap(),
        Round::default(),
        "nothing left"
    );
    let ids = broker.ids();
    assert_eq!(ids, sent);
    if let Database::Postgres(pool) = database {
        pool.close().await;
    }
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_of_one_sqlite_database_in_one_process_take_turns() {
    let dir = std::env::temp_dir().join(format!("relays-{}", MessageId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("shop.db").display());
    let database = Database::connect(&url).await.unwrap();
    ready(&database).await;
    let sent = enqueue_committed(&database, &["a", "b", "a"]).await;
    let (broker, gate) = Broker::gated();
    // Two relays, one of them over a pool of its own on the same file.
    let first = Relay::new(database.clone(), broker.clone());
    let second = Relay::new(Database::connect(&url).await.unwrap(), broker.clone());

    let holding = tokio::spawn(async move { first.relay_once().await.unwrap() });
    broker.entered.notified().await;
    // The second waits for the turn, then finds everything published.
    let waiting = tokio::spawn(async move { second.relay_once().await.unwrap() });
    // A second relay that did not wait would be publishing within this while, on the gate too.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        broker.publishes.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second relay waits its turn"
    );
    assert!(!waiting.is_finished());
    gate.add_permits(10);
    assert_eq!(holding.await.unwrap().published, 3);
    assert_eq!(waiting.await.unwrap(), Round::default());
    let ids = broker.ids();
    assert_eq!(ids, sent, "each message once");
    drop(database);
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn a_message_the_broker_refuses_is_set_aside_and_the_rest_go_on(
    database: &Database,
    _: &str,
) {
    ready(database).await;
    let sent = enqueue_committed(database, &["a", "b", "a", "c"]).await;
    let broker = Arc::new(Broker::default());
    *broker.refuse.lock().unwrap() = Some(sent[1]);
    let relay = Relay::new(database.clone(), broker.clone());

    // The first is published, the second set aside, and the rest go on without a back-off.
    assert_eq!(
        relay.relay_once().await.unwrap(),
        Round {
            published: 1,
            set_aside: 1,
            turn_taken: false,
        }
    );
    assert_eq!(relay.relay_once().await.unwrap().published, 2);
    assert_eq!(relay.relay_once().await.unwrap(), Round::default());
    let failed = Outbox::failed(database, 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, sent[1]);
    assert_eq!(failed[0].kind, "PriceChanged");
    assert_eq!(failed[0].key, "b");
    assert!(
        failed[0].error.contains("maximum payload exceeded"),
        "{}",
        failed[0].error
    );
    assert!(Outbox::pending(database, 10).await.unwrap().is_empty());

    // Once the broker takes it, an operator puts it back: published under its own id.
    *broker.refuse.lock().unwrap() = None;
    assert!(Outbox::retry(database, failed[0].seq).await.unwrap());
    assert!(
        !Outbox::retry(database, failed[0].seq).await.unwrap(),
        "once"
    );
    assert_eq!(relay.relay_once().await.unwrap().published, 1);
    assert!(Outbox::failed(database, 10).await.unwrap().is_empty());
    let ids = broker.ids();
    assert_eq!(ids, [sent[0], sent[2], sent[3], sent[1]]);
}

async fn a_broker_that_does_not_answer_times_out_and_the_batch_is_published_again(
    database: &Database,
    _: &str,
) {
    ready(database).await;
    let sent = enqueue_committed(database, &["a", "b"]).await;
    let broker = Arc::new(Broker::default());
    broker.mute.store(true, std::sync::atomic::Ordering::SeqCst);
    let relay = Relay::new(database.clone(), broker.clone())
        .publish_timeout(std::time::Duration::from_millis(200));

    // The broker took the batch and went silent: the round ends, having marked nothing (the
    // relay could as well have died before the mark), and gives its turn and connection back.
    let failed = relay.relay_once().await.unwrap_err();
    let RelayError::Publish(error) = failed else {
        panic!("a publish error, got {failed:?}")
    };
    assert_eq!(error.held, 0);
    assert!(error.error.to_string().contains("no answer"), "{error}");
    assert_eq!(Outbox::pending(database, 10).await.unwrap().len(), 2);
    on_db!(database, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
        .expect("the connection was given back");

    // Published again under the same ids, which the broker and the inboxes de-duplicate.
    broker
        .mute
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(relay.relay_once().await.unwrap().published, 2);
    let ids = broker.ids();
    assert_eq!(ids, [sent[0], sent[1], sent[0], sent[1]]);
    assert!(Outbox::pending(database, 10).await.unwrap().is_empty());
}

async fn a_message_too_large_for_a_broker_is_refused_at_enqueue(database: &Database, _: &str) {
    ready(database).await;
    let mut tx = database.begin().await.unwrap();
    let huge = price(&"x".repeat(Outbox::MAX_PAYLOAD), 1);
    let refused = Outbox::enqueue(&mut tx, &huge).await.unwrap_err();
    assert!(
        matches!(refused, OutboxError::TooLarge { max, .. } if max == Outbox::MAX_PAYLOAD),
        "{refused:?}"
    );
    // Nothing was written, and the transaction goes on.
    let id = Outbox::enqueue(&mut tx, &price("a", 1)).await.unwrap();
    tx.commit().await.unwrap();
    let pending = Outbox::pending(database, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, id);
}

async fn published_messages_are_pruned_and_the_rest_kept(database: &Database, _: &str) {
    ready(database).await;
    let sent = enqueue_committed(database, &["a", "b", "c"]).await;
    let broker = Arc::new(Broker::default());
    *broker.refuse.lock().unwrap() = Some(sent[1]);
    let relay = Relay::new(database.clone(), broker.clone())
        .batch(2)
        .keep_published(true);
    // The first published, the second set aside; the third still waits.
    assert_eq!(
        relay.relay_once().await.unwrap(),
        Round {
            published: 1,
            set_aside: 1,
            turn_taken: false,
        }
    );
    let later = shop_common::unix_millis() + 1;
    assert_eq!(Outbox::prune(database, 0).await.unwrap(), 0, "too young");
    assert_eq!(Outbox::prune(database, later).await.unwrap(), 1);
    assert_eq!(Outbox::failed(database, 10).await.unwrap()[0].id, sent[1]);
    assert_eq!(Outbox::pending(database, 10).await.unwrap()[0].id, sent[2]);
    assert_eq!(outbox_rows(database).await, 2);

    // By default, what the broker holds leaves the outbox at once.
    let relay = Relay::new(database.clone(), broker.clone());
    assert_eq!(relay.relay_once().await.unwrap().published, 1);
    assert_eq!(outbox_rows(database).await, 1, "the set-aside one stays");
    assert_eq!(Outbox::prune(database, later).await.unwrap(), 0);
}

async fn outbox_rows(database: &Database) -> i64 {
    on_db!(database, pool => sqlx::query_scalar("SELECT COUNT(*) FROM messaging_outbox")
        .fetch_one(pool)
        .await)
    .unwrap()
}

async fn a_commit_wakes_the_running_relay_and_stop_ends_it(database: &Database, _: &str) {
    ready(database).await;
    let broker = Arc::new(Broker::default());
    // Polling once an hour: only the commit's wake can deliver within the test.
    let relay =
        Relay::new(database.clone(), broker.clone()).poll(std::time::Duration::from_secs(3600));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    for round in 1..=3 {
        let sent = enqueue_committed(database, &["a"]).await;
        until_relayed(&broker, sent[0], round).await;
    }
    assert_eq!(broker.taken.lock().unwrap().len(), 3);
    stop.send(()).unwrap();
    running.await.unwrap();
}

/// Waits (up to 10 s) until `broker` holds `id`, sent in `round`.
async fn until_relayed(broker: &Broker, id: MessageId, round: usize) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !broker
        .taken
        .lock()
        .unwrap()
        .iter()
        .any(|(taken, _)| *taken == id)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "round {round}: never relayed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Takes every batch in order; at its first publish, runs `during` (once).
struct During {
    during:
        tokio::sync::Mutex<Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>>,
    taken: Mutex<Vec<(MessageId, String)>>,
    /// How long each publish takes.
    takes: std::time::Duration,
}

impl During {
    fn new(during: impl std::future::Future<Output = ()> + Send + 'static) -> Arc<Self> {
        Arc::new(Self {
            during: tokio::sync::Mutex::new(Some(Box::pin(during))),
            taken: Mutex::new(Vec::new()),
            takes: std::time::Duration::ZERO,
        })
    }
}

#[async_trait]
impl Publisher for During {
    async fn publish(&self, batch: &[Pending]) -> Result<(), PublishError> {
        if let Some(during) = self.during.lock().await.take() {
            during.await;
        }
        tokio::time::sleep(self.takes).await;
        let mut taken = self.taken.lock().unwrap();
        taken.extend(batch.iter().map(|p| (p.id, p.key.clone())));
        Ok(())
    }
}

async fn pg_database(prefix: &str) -> Option<(shop_common::testing::PgTestDb, Database)> {
    let db = shop_common::testing::PgTestDb::create_or_skip(prefix).await?;
    let database = Database::connect(&db.url).await.unwrap();
    ready(&database).await;
    Some((db, database))
}

async fn pg_done(db: shop_common::testing::PgTestDb, database: Database) {
    if let Database::Postgres(pool) = database {
        pool.close().await;
    }
    db.drop_database().await.unwrap();
}

/// A row whose `seq` was drawn before a batch was read but which committed after it is
/// published before its key's later rows, in the same turn: the batch read ahead leaves out the
/// batch in flight rather than read past its last `seq`.
#[tokio::test]
async fn a_row_that_commits_late_keeps_its_place_before_its_keys_later_rows() {
    let Some((db, database)) = pg_database("late_row").await else {
        return;
    };
    // `k`'s first message draws its seq, uncommitted; four others commit after it.
    let mut late = database.begin().await.unwrap();
    let first_k = Outbox::enqueue(&mut late, &price("k", 1)).await.unwrap();
    enqueue_committed(&database, &["a", "b", "c", "d"]).await;
    // While the first batch is published, `k`'s first commits, then its second.
    let during = {
        let database = database.clone();
        async move {
            late.commit().await.unwrap();
            let mut tx = database.begin().await.unwrap();
            Outbox::enqueue(&mut tx, &price("k", 2)).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    let broker = During::new(during);
    let relay = Relay::new(database.clone(), broker.clone()).batch(2);
    assert_eq!(relay.relay_once().await.unwrap().published, 6, "one turn");
    let keys: Vec<String> = broker
        .taken
        .lock()
        .unwrap()
        .iter()
        .map(|(_, key)| key.clone())
        .collect();
    assert_eq!(keys, ["a", "b", "k", "c", "d", "k"]);
    assert_eq!(broker.taken.lock().unwrap()[2].0, first_k);
    pg_done(db, database).await;
}

/// A database error in the middle of a turn undoes that batch's marks only: what the earlier
/// batches marked stands, and the turn reports the database's error. Enqueuing commits notify
/// nothing (no trigger: a `NOTIFY` would serialise them on the cluster's notify lock).
#[tokio::test]
async fn a_database_error_mid_turn_keeps_the_earlier_batches_and_says_why() {
    let Some((db, database)) = pg_database("mid_turn").await else {
        return;
    };
    let triggers: i64 = on_db!(&database, pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_trigger WHERE tgrelid = 'messaging_outbox'::regclass AND NOT tgisinternal",
    )
    .fetch_one(pool)
    .await)
    .unwrap();
    assert_eq!(triggers, 0, "enqueuing commits fire no trigger");
    // Deleting `boom`'s row fails, as a full disk would.
    on_db!(&database, pool => sqlx::raw_sql(
        "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF OLD.key = 'boom' THEN RAISE EXCEPTION 'no space left on device'; END IF; RETURN OLD; \
         END $$; CREATE TRIGGER refuse_boom BEFORE DELETE ON messaging_outbox \
         FOR EACH ROW EXECUTE FUNCTION refuse_boom();",
    )
    .execute(pool)
    .await
    .map(|done| done.rows_affected()))
    .unwrap();
    let sent = enqueue_committed(&database, &["a", "b", "c", "d", "boom", "e"]).await;
    let broker = Arc::new(Broker::default());
    let relay = Relay::new(database.clone(), broker.clone()).batch(2);
    let failed = relay.relay_once().await.unwrap_err();
    assert!(
        failed.to_string().contains("no space left on device"),
        "the cause, not the aborted transaction: {failed}"
    );
    let waiting: Vec<MessageId> = Outbox::pending(&database, 100)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(
        waiting,
        sent[4..],
        "the first two batches are gone, the third waits"
    );
    pg_done(db, database).await;
}

/// A turn starts no batch once the publish timeout has passed since its first: it gives the
/// lock back, and the next turn goes on.
#[tokio::test]
async fn a_turn_starts_no_batch_past_the_publish_timeout() {
    let Some((db, database)) = pg_database("turn_deadline").await else {
        return;
    };
    let keys: Vec<String> = (0..40).map(|n| format!("k{n}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    enqueue_committed(&database, &keys).await;
    // 200 ms a publish against a timeout of 1 s: about five batches of two a turn, where the
    // turn would otherwise publish its full 16 (32 messages).
    let broker = Arc::new(During {
        during: tokio::sync::Mutex::new(None),
        taken: Mutex::new(Vec::new()),
        takes: std::time::Duration::from_millis(200),
    });
    let relay = Relay::new(database.clone(), broker.clone())
        .batch(2)
        .publish_timeout(std::time::Duration::from_secs(1));
    let first = relay.relay_once().await.unwrap().published;
    assert!((2..32).contains(&first), "the first turn published {first}");
    let second = relay.relay_once().await.unwrap().published;
    assert!(second >= 2, "the next turn goes on");
    assert_eq!(broker.taken.lock().unwrap().len(), first + second);
    pg_done(db, database).await;
}

/// A consumer's handling of `message`: its inbox record and its effect, in one transaction.
async fn handle(database: &Database, consumer: &str, message: MessageId, commit: bool) -> bool {
    let mut tx = database.begin().await.unwrap();
    let first = Inbox::first_time(&mut tx, consumer, message).await.unwrap();
    if first {
        on_tx!(&mut tx, conn => sqlx::query("INSERT INTO prices (id, minor) VALUES ($1, 1)")
            .bind(format!("{consumer}/{message}"))
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()))
        .unwrap();
    }
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    first
}

async fn a_redelivered_message_finds_its_id_in_the_inbox_once_the_effect_committed(
    database: &Database,
    _: &str,
) {
    ready(database).await;
    let (one, two) = (MessageId::new(), MessageId::new());
    // The handler failed (rolled back): the redelivery is a first time again.
    assert!(handle(database, "search-index", one, false).await);
    assert_eq!(prices(database).await, 0);
    assert!(handle(database, "search-index", one, true).await);
    // Redelivered after the effect committed: no second effect.
    assert!(!handle(database, "search-index", one, true).await);
    assert_eq!(prices(database).await, 1);
    // Another consumer of the same message, and another message, are their own.
    assert!(handle(database, "mailer", one, true).await);
    assert!(handle(database, "search-index", two, true).await);
    assert_eq!(prices(database).await, 3);

    // Pruned records are forgotten; younger ones are kept.
    let later = shop_common::unix_millis() + 1;
    assert_eq!(Inbox::prune(database, 0).await.unwrap(), 0);
    assert_eq!(Inbox::prune(database, later).await.unwrap(), 3);
    let mut tx = database.begin().await.unwrap();
    assert!(Inbox::first_time(&mut tx, "mailer", one).await.unwrap());
    tx.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliveries_at_once_on_postgresql_have_one_effect() {
    let Some(db) = shop_common::testing::PgTestDb::create_or_skip("inbox").await else {
        return;
    };
    let database = Database::connect(&db.url).await.unwrap();
    ready(&database).await;
    for first_commits in [true, false] {
        let message = MessageId::new();
        let mut first = database.begin().await.unwrap();
        assert!(
            Inbox::first_time(&mut first, "mailer", message)
                .await
                .unwrap()
        );
        // The second delivery waits on the first's row...
        let second = {
            let database = database.clone();
            tokio::spawn(async move {
                let mut tx = database.begin().await.unwrap();
                let fresh = Inbox::first_time(&mut tx, "mailer", message).await.unwrap();
                tx.commit().await.unwrap();
                fresh
            })
        };
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(
            !second.is_finished(),
            "the second delivery waits for the first"
        );
        // ...and learns its outcome.
        if first_commits {
            first.commit().await.unwrap();
        } else {
            first.rollback().await.unwrap();
        }
        assert_eq!(second.await.unwrap(), !first_commits);
    }
    if let Database::Postgres(pool) = database {
        pool.close().await;
    }
    db.drop_database().await.unwrap();
}
