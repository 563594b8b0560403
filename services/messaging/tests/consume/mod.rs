//! The consumer loop over both transports (the local one, and NATS JetStream on this machine's
//! server), with the service's store on SQLite and on PostgreSQL: each message has its effect
//! once whatever is repeated, retries back off and end in the dead letters, replay delivers
//! again, poison is a dead letter at once, a restart loses nothing, and the consumer's span
//! continues the publisher's trace.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shop_common::store::{Database, Tx};
use shop_common::{on_db, on_tx};
use shop_messaging::{
    Consumer, ConsumerConfig, HandleError, Handler, Inbound, JetStreamTransport, LocalTransport,
    MessageId, Outbox, Outcome, Pending, Relay, Settlement, Subscription, Transport,
};
use tracing::Instrument as _;

use super::{PriceChanged, SPANS, enqueue_committed, ready};

mod admin;
mod broker_down;
mod cli;
mod saga;
mod service;

use saga::a_saga_step_is_carried_out_once_and_answered_alike_each_time;

/// Each suite, on each transport, with the service's store on SQLite and on PostgreSQL. The
/// local transport keeps its tables in the service's database here.
macro_rules! on_every_transport {
    ($($suite:ident),* $(,)?) => {
        mod local_on_sqlite {
            $(
                #[tokio::test]
                async fn $suite() {
                    let database = super::Database::connect("sqlite::memory:").await.unwrap();
                    let transport = super::local(&database).await;
                    super::$suite(&database, transport).await;
                }
            )*
        }
        mod local_on_postgres {
            $(
                #[tokio::test]
                async fn $suite() {
                    let Some(db) = shop_common::testing::PgTestDb::create_or_skip("consume").await else {
                        return;
                    };
                    let database = super::Database::connect(&db.url).await.unwrap();
                    let transport = super::local(&database).await;
                    super::$suite(&database, transport).await;
                    if let super::Database::Postgres(pool) = database {
                        pool.close().await;
                    }
                    db.drop_database().await.unwrap();
                }
            )*
        }
        mod jetstream_on_sqlite {
            $(
                #[tokio::test]
                async fn $suite() {
                    let Some(jetstream) = super::jetstream().await else {
                        return;
                    };
                    let database = super::Database::connect("sqlite::memory:").await.unwrap();
                    super::prepare(&database).await;
                    super::$suite(&database, jetstream.clone()).await;
                    jetstream.delete().await.unwrap();
                }
            )*
        }
        mod jetstream_on_postgres {
            $(
                #[tokio::test]
                async fn $suite() {
                    let Some(jetstream) = super::jetstream().await else {
                        return;
                    };
                    let Some(db) = shop_common::testing::PgTestDb::create_or_skip("consume").await else {
                        return;
                    };
                    let database = super::Database::connect(&db.url).await.unwrap();
                    super::prepare(&database).await;
                    super::$suite(&database, jetstream.clone()).await;
                    jetstream.delete().await.unwrap();
                    if let super::Database::Postgres(pool) = database {
                        pool.close().await;
                    }
                    db.drop_database().await.unwrap();
                }
            )*
        }
    };
}

on_every_transport!(
    a_published_message_reaches_each_consumer_once_whatever_is_repeated,
    a_delivery_left_unsettled_comes_again_and_has_no_second_effect,
    retries_back_off_then_end_in_the_dead_letters_and_replay_delivers_again,
    poison_is_a_dead_letter_at_once,
    the_consumer_span_continues_the_publishers_trace,
    a_replay_goes_to_its_consumer_alone,
    a_message_never_settled_ends_in_the_dead_letters_with_its_count,
    a_running_consumer_handles_what_comes_and_stops_when_told,
    a_subscription_sees_every_later_message_on_its_subjects_and_no_replay,
    a_saga_step_is_carried_out_once_and_answered_alike_each_time,
);

/// What the scripted handler does with the next message.
#[derive(Debug, Clone)]
enum Step {
    Ack,
    Retry(Duration),
    Reject,
    Fail,
    Panic,
}

/// A handler that writes its effect, then answers as scripted (then `Ack`).
#[derive(Default)]
struct Script {
    plan: Mutex<VecDeque<Step>>,
}

impl Script {
    fn with(plan: &[Step]) -> Arc<Self> {
        Arc::new(Self {
            plan: Mutex::new(plan.iter().cloned().collect()),
        })
    }
}

#[async_trait]
impl Handler for Script {
    async fn handle(&self, message: &Inbound, tx: &mut Tx) -> Result<Outcome, HandleError> {
        let change: PriceChanged = message.decode()?;
        on_tx!(tx, conn => sqlx::query("INSERT INTO effects (message_id, product) VALUES ($1, $2)")
            .bind(message.envelope.id.to_string())
            .bind(&change.product_id)
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()))?;
        let step = self.plan.lock().unwrap().pop_front().unwrap_or(Step::Ack);
        match step {
            Step::Ack => Ok(Outcome::Ack),
            Step::Retry(after) => Ok(Outcome::Retry {
                after,
                reason: "stock service busy".into(),
            }),
            Step::Reject => Ok(Outcome::Reject("unknown product".into())),
            Step::Fail => Err(HandleError::Transient("connection reset".into())),
            Step::Panic => panic!("handler bug"),
        }
    }
}

/// The local transport, on the service's database (prepared).
async fn local(database: &Database) -> Arc<LocalTransport> {
    prepare(database).await;
    Arc::new(LocalTransport::open(database.clone()).await.unwrap())
}

/// A JetStream transport of a namespace of its own on this machine's NATS server (`NATS_URL`,
/// default `nats://127.0.0.1:4222`); `None` when there is none, unless
/// `MAINSTAY_REQUIRE_SERVERS` is set.
async fn jetstream() -> Option<Arc<JetStreamTransport>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let namespace = format!(
        "t{}",
        &MessageId::new().as_uuid().simple().to_string()[..31]
    );
    match JetStreamTransport::connect(&url, &namespace).await {
        Ok(transport) => Some(Arc::new(transport)),
        Err(error) => {
            assert!(
                std::env::var_os("MAINSTAY_REQUIRE_SERVERS").is_none(),
                "NATS with JetStream at {url} is required (MAINSTAY_REQUIRE_SERVERS is set): {error}"
            );
            eprintln!("skipped: no NATS at {url}: {error}");
            None
        }
    }
}

/// The service's tables: the messaging kit's, `prices` and `effects`.
async fn prepare(database: &Database) {
    LazyLock::force(&SPANS);
    ready(database).await;
    on_db!(database, pool => sqlx::query("CREATE TABLE effects (message_id TEXT NOT NULL, product TEXT NOT NULL)")
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
    .unwrap();
}

/// The products of the effects, sorted.
async fn effects(database: &Database) -> Vec<String> {
    on_db!(database, pool => sqlx::query_scalar("SELECT product FROM effects ORDER BY product")
        .fetch_all(pool)
        .await)
    .unwrap()
}

async fn effect_count(database: &Database) -> i64 {
    on_db!(database, pool => sqlx::query_scalar("SELECT COUNT(*) FROM effects")
        .fetch_one(pool)
        .await)
    .unwrap()
}

async fn relay_all<T: Transport>(database: &Database, transport: &Arc<T>) {
    let relay = Relay::new(database.clone(), transport.clone());
    while relay.relay_once().await.unwrap().published > 0 {}
}

fn consumer<T: Transport>(
    database: &Database,
    transport: &Arc<T>,
    config: ConsumerConfig,
    handler: Arc<Script>,
) -> Consumer {
    Consumer::new(config, transport.clone(), database.clone(), handler)
}

const NOW: Duration = Duration::ZERO;
const SOON: Duration = Duration::from_secs(10);

async fn a_published_message_reaches_each_consumer_once_whatever_is_repeated<T: Transport>(
    database: &Database,
    transport: Arc<T>,
) {
    let sent = enqueue_committed(database, &["a", "b", "a"]).await;
    // The relay publishes; then a relay that died before its mark publishes them again.
    let pending: Vec<Pending> = Outbox::pending(database, 10).await.unwrap();
    relay_all(database, &transport).await;
    transport.publish(&pending).await.unwrap();

    let search = consumer(
        database,
        &transport,
        ConsumerConfig::new("search", &["catalog.*"]),
        Script::with(&[]),
    );
    let mut deliveries = transport.consumer(search.config()).await.unwrap();
    let batch = deliveries.fetch(10, SOON).await.unwrap();
    let ids: Vec<String> = batch.iter().map(|d| d.broker_id.clone()).collect();
    let sent_ids: Vec<String> = sent.iter().map(MessageId::to_string).collect();
    assert_eq!(ids, sent_ids, "stored once each, delivered in order");
    assert!(batch.iter().all(|d| d.delivered == 1));
    for delivery in batch {
        search.deliver(delivery).await;
    }
    assert!(deliveries.fetch(10, NOW).await.unwrap().is_empty());
    assert_eq!(effect_count(database).await, 3);

    // Another consumer of the subject has its own copy; one of another subject has none.
    let mailer = consumer(
        database,
        &transport,
        ConsumerConfig::new("mailer", &["catalog.events"]),
        Script::with(&[]),
    );
    let mut mail = transport.consumer(mailer.config()).await.unwrap();
    let batch = mail.fetch(2, SOON).await.unwrap();
    assert_eq!(batch.len(), 2, "at most the batch asked for");
    for delivery in batch {
        mailer.deliver(delivery).await;
    }
    let rest = mail.fetch(10, SOON).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].broker_id, sent_ids[2]);
    let mut orders = transport
        .consumer(&ConsumerConfig::new("orders", &["orders.events"]))
        .await
        .unwrap();
    assert!(orders.fetch(10, NOW).await.unwrap().is_empty());
}

async fn a_delivery_left_unsettled_comes_again_and_has_no_second_effect<T: Transport>(
    database: &Database,
    transport: Arc<T>,
) {
    enqueue_committed(database, &["a"]).await;
    relay_all(database, &transport).await;
    let config =
        ConsumerConfig::new("search", &["catalog.events"]).ack_wait(Duration::from_secs(1));
    let search = consumer(database, &transport, config, Script::with(&[]));
    let mut deliveries = transport.consumer(search.config()).await.unwrap();

    // Handled and committed, then the consumer died before it acknowledged.
    let first = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
    assert_eq!(search.process(&first).await, Settlement::Ack);
    drop(first);
    assert_eq!(effect_count(database).await, 1);

    // Delivered again after ack_wait: the inbox knows it, so no second effect.
    let again = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
    assert_eq!(again.delivered, 2);
    search.deliver(again).await;
    assert_eq!(effect_count(database).await, 1);
    assert!(
        deliveries
            .fetch(1, Duration::from_millis(400))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn retries_back_off_then_end_in_the_dead_letters_and_replay_delivers_again<T: Transport>(
    database: &Database,
    transport: Arc<T>,
) {
    let sent = enqueue_committed(database, &["a"]).await;
    relay_all(database, &transport).await;
    let config = ConsumerConfig::new("search", &["catalog.events"]).max_deliver(3);
    let later = Duration::from_millis(500);
    let search = consumer(
        database,
        &transport,
        config,
        Script::with(&[Step::Panic, Step::Retry(later), Step::Fail]),
    );
    let mut deliveries = transport.consumer(search.config()).await.unwrap();

    // A panic is a failure like another (the consumer lives on): retried after 100 ms.
    let first = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
    let settlement = search.process(&first).await;
    assert!(
        matches!(&settlement, Settlement::Retry { after, reason } if *after == Duration::from_millis(100) && reason.contains("panicked")),
        "{settlement:?}"
    );
    first.settle(settlement).await.unwrap();
    // The handler's own delay: not delivered before it.
    let second = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
    assert_eq!(second.delivered, 2);
    search.deliver(second).await;
    assert!(
        deliveries.fetch(1, NOW).await.unwrap().is_empty(),
        "backing off"
    );
    // The last delivery fails: a dead letter, with the reason and the count.
    let third = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
    assert_eq!(third.delivered, 3);
    search.deliver(third).await;
    assert!(deliveries.fetch(1, NOW).await.unwrap().is_empty());
    assert_eq!(effect_count(database).await, 0, "every attempt rolled back");
    let dead = transport.dead_letters("search", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, Some(sent[0]));
    assert_eq!(transport.dead_letter_count("search").await.unwrap(), 1);
    assert_eq!(transport.dead_letter_count("mailer").await.unwrap(), 0);
    assert_eq!(dead[0].delivered, 3);
    assert_eq!(dead[0].subject, "catalog.events");
    assert!(
        dead[0]
            .reason
            .contains("gave up after 3 deliveries: connection reset"),
        "{}",
        dead[0].reason
    );
    assert!(
        transport
            .dead_letters("mailer", 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Fixed (the script now acknowledges): replayed, delivered afresh, handled once.
    assert_eq!(
        transport.replay("search", Some(dead[0].seq)).await.unwrap(),
        1
    );
    assert_eq!(transport.replay("search", None).await.unwrap(), 0, "once");
    let replayed = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
    assert_eq!(replayed.delivered, 1);
    search.deliver(replayed).await;
    assert_eq!(effect_count(database).await, 1);
    assert_eq!(transport.dead_letter_count("search").await.unwrap(), 0);
    assert!(
        transport
            .dead_letters("search", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn poison_is_a_dead_letter_at_once<T: Transport>(database: &Database, transport: Arc<T>) {
    let raw = |body: &[u8]| Pending {
        seq: 0,
        id: MessageId::new(),
        subject: "catalog.events".into(),
        key: "a".into(),
        headers: std::collections::HashMap::new(),
        payload: body.to_vec(),
        attempts: 0,
    };
    let envelope = |kind: &str, version: u16, body: &str| {
        format!(
            r#"{{"id":"{}","kind":"{kind}","version":{version},"occurred_at_ms":1,"key":"a","body":{body}}}"#,
            MessageId::new()
        )
    };
    let batch = [
        raw(b"not json"),
        raw(envelope("Mystery", 1, "{}").as_bytes()),
        raw(envelope("PriceChanged", 3, r#"{"product_id":"a","price_minor":1}"#).as_bytes()),
        raw(envelope("PriceChanged", 2, r#"{"product_id":"a"}"#).as_bytes()),
    ];
    transport.publish(&batch).await.unwrap();
    let search = consumer(
        database,
        &transport,
        ConsumerConfig::new("search", &["catalog.events"]),
        Script::with(&[Step::Reject]),
    );
    let mut deliveries = transport.consumer(search.config()).await.unwrap();
    for delivery in deliveries.fetch(10, SOON).await.unwrap() {
        search.deliver(delivery).await;
    }
    // And a good message the handler rejects.
    enqueue_committed(database, &["b"]).await;
    relay_all(database, &transport).await;
    for delivery in deliveries.fetch(10, SOON).await.unwrap() {
        search.deliver(delivery).await;
    }
    assert!(deliveries.fetch(10, NOW).await.unwrap().is_empty());
    let dead = transport.dead_letters("search", 10).await.unwrap();
    let reasons: Vec<(&str, u32)> = dead
        .iter()
        .map(|d| (d.reason.as_str(), d.delivered))
        .collect();
    assert_eq!(dead.len(), 5, "{reasons:?}");
    assert_eq!(transport.dead_letter_count("search").await.unwrap(), 5);
    assert!(dead.iter().all(|d| d.delivered == 1), "{reasons:?}");
    assert!(
        reasons[0]
            .0
            .starts_with("poison: the payload is not an envelope")
    );
    assert_eq!(dead[0].message_id, None);
    assert_eq!(
        reasons[1].0,
        r#"poison: a "Mystery" where a PriceChanged was expected"#
    );
    assert_eq!(
        reasons[2].0,
        "poison: PriceChanged version 3, newer than the 2 this consumer reads"
    );
    assert!(
        reasons[3]
            .0
            .starts_with("poison: PriceChanged body does not decode"),
        "{reasons:?}"
    );
    assert_eq!(reasons[4].0, "unknown product");
    assert_eq!(effect_count(database).await, 0);
}

async fn the_consumer_span_continues_the_publishers_trace<T: Transport>(
    database: &Database,
    transport: Arc<T>,
) {
    let span = tracing::info_span!("change price");
    let trace_id = super::mainstay_trace_id(&span);
    {
        let mut tx = database.begin().await.unwrap();
        Outbox::enqueue(&mut tx, &super::price("a", 1))
            .instrument(span.clone())
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    drop(span);
    relay_all(database, &transport).await;
    let search = consumer(
        database,
        &transport,
        ConsumerConfig::new("search", &["catalog.events"]),
        Script::with(&[]),
    );
    let mut deliveries = transport.consumer(search.config()).await.unwrap();
    let batch = deliveries.fetch(10, SOON).await.unwrap();
    assert_eq!(batch.len(), 1);
    assert!(
        batch[0].headers.contains_key("traceparent"),
        "{:?}",
        batch[0].headers
    );
    for delivery in batch {
        search.deliver(delivery).await;
    }
    // A span ends when its last handle goes, and sqlx's SQLite worker thread holds one for a
    // moment after it answered: wait for it to end.
    let deadline = tokio::time::Instant::now() + SOON;
    let consume = loop {
        let spans = SPANS.get_finished_spans().unwrap();
        if let Some(span) = spans
            .into_iter()
            .find(|s| s.name == "consume" && s.span_context.trace_id().to_string() == trace_id)
        {
            break span;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no consumer span in trace {trace_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        consume
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "messaging.consumer" && kv.value.as_str() == "search")
    );
}

#[tokio::test]
async fn what_was_not_consumed_is_delivered_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("restart-{}", MessageId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("shop.db").display());
    let config = ConsumerConfig::new("search", &["catalog.events"]);
    let sent = {
        let database = Database::connect(&url).await.unwrap();
        let transport = local(&database).await;
        let sent = enqueue_committed(&database, &["a", "b", "c"]).await;
        // Two published, one still in the outbox; one of the two consumed.
        Relay::new(database.clone(), transport.clone())
            .batch(2)
            .relay_once()
            .await
            .unwrap();
        let search = consumer(&database, &transport, config.clone(), Script::with(&[]));
        let mut deliveries = transport.consumer(&config).await.unwrap();
        let first = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
        search.deliver(first).await;
        if let Database::Sqlite(pool) = database {
            pool.close().await;
        }
        sent
    };

    let database = Database::connect(&url).await.unwrap();
    let transport = Arc::new(LocalTransport::open(database.clone()).await.unwrap());
    relay_all(&database, &transport).await;
    let search = consumer(&database, &transport, config.clone(), Script::with(&[]));
    let mut deliveries = transport.consumer(&config).await.unwrap();
    let rest = deliveries.fetch(10, SOON).await.unwrap();
    let ids: Vec<String> = rest.iter().map(|d| d.broker_id.clone()).collect();
    assert_eq!(ids, [sent[1].to_string(), sent[2].to_string()]);
    for delivery in rest {
        search.deliver(delivery).await;
    }
    assert_eq!(effects(&database).await, ["a", "b", "c"], "each once");
    drop(deliveries);
    if let Database::Sqlite(pool) = database {
        pool.close().await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn a_replay_goes_to_its_consumer_alone<T: Transport>(database: &Database, transport: Arc<T>) {
    enqueue_committed(database, &["a"]).await;
    relay_all(database, &transport).await;
    // Both consumers reject it.
    let search = consumer(
        database,
        &transport,
        ConsumerConfig::new("search", &["catalog.events"]),
        Script::with(&[Step::Reject]),
    );
    let mailer = consumer(
        database,
        &transport,
        ConsumerConfig::new("mailer", &["catalog.events"]),
        Script::with(&[Step::Reject]),
    );
    let mut to_search = transport.consumer(search.config()).await.unwrap();
    let mut to_mailer = transport.consumer(mailer.config()).await.unwrap();
    for delivery in to_search.fetch(10, SOON).await.unwrap() {
        search.deliver(delivery).await;
    }
    for delivery in to_mailer.fetch(10, SOON).await.unwrap() {
        mailer.deliver(delivery).await;
    }
    let dead = transport.dead_letters("search", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(transport.dead_letters("mailer", 10).await.unwrap().len(), 1);

    // Search's replayed: search has it again, mailer does not, and mailer's dead letter stays.
    assert_eq!(
        transport.replay("search", Some(dead[0].seq)).await.unwrap(),
        1
    );
    let again = to_search.fetch(10, SOON).await.unwrap();
    assert_eq!(again.len(), 1);
    for delivery in again {
        search.deliver(delivery).await;
    }
    assert!(
        to_mailer
            .fetch(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(effect_count(database).await, 1, "search's effect only");
    assert!(
        transport
            .dead_letters("search", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(transport.dead_letters("mailer", 10).await.unwrap().len(), 1);
}

async fn a_message_never_settled_ends_in_the_dead_letters_with_its_count<T: Transport>(
    database: &Database,
    transport: Arc<T>,
) {
    enqueue_committed(database, &["a"]).await;
    relay_all(database, &transport).await;
    let config = ConsumerConfig::new("search", &["catalog.events"])
        .max_deliver(2)
        .ack_wait(Duration::from_secs(1));
    let search = consumer(database, &transport, config, Script::with(&[]));
    let mut deliveries = transport.consumer(search.config()).await.unwrap();
    // Taken twice by a consumer that dies each time before it settles.
    for attempt in 1..=2 {
        let delivery = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
        assert_eq!(delivery.delivered, attempt);
        drop(delivery);
    }
    // The next look finds it spent: the transport, or the consumer when it is handed a third
    // delivery, makes it a dead letter without running the handler.
    for delivery in deliveries.fetch(1, Duration::from_secs(3)).await.unwrap() {
        assert_eq!(delivery.delivered, 3);
        search.deliver(delivery).await;
    }
    let dead = transport.dead_letters("search", 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("delivered 2 times, never settled"),
        "{}",
        dead[0].reason
    );
    assert_eq!(effect_count(database).await, 0);
}

async fn a_running_consumer_handles_what_comes_and_stops_when_told<T: Transport>(
    database: &Database,
    transport: Arc<T>,
) {
    let search = consumer(
        database,
        &transport,
        ConsumerConfig::new("search", &["catalog.events"]),
        Script::with(&[Step::Fail]),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(search.run(async {
        let _ = stopped.await;
    }));
    enqueue_committed(database, &["a", "b"]).await;
    relay_all(database, &transport).await;
    // The first attempt fails and is retried after its back-off; both end handled once.
    let deadline = tokio::time::Instant::now() + SOON;
    while effect_count(database).await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(SOON, running)
        .await
        .expect("stopped")
        .unwrap()
        .unwrap();
    assert_eq!(effects(database).await, ["a", "b"]);
}

/// On the local transport, a settle that comes after the message was delivered again does
/// nothing: the later attempt settles it.
#[tokio::test]
async fn a_late_settle_leaves_the_later_delivery_alone() {
    let database = Database::connect("sqlite::memory:").await.unwrap();
    let transport = local(&database).await;
    enqueue_committed(&database, &["a"]).await;
    relay_all(&database, &transport).await;
    let config =
        ConsumerConfig::new("search", &["catalog.events"]).ack_wait(Duration::from_millis(100));
    let search = consumer(&database, &transport, config, Script::with(&[]));
    let mut deliveries = transport.consumer(search.config()).await.unwrap();
    let first = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
    let second = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
    assert_eq!(second.delivered, 2);
    // The first attempt, late, gives up on it: the second is still in hand.
    first
        .settle(Settlement::DeadLetter {
            reason: "late".into(),
        })
        .await
        .unwrap();
    assert!(
        transport
            .dead_letters("search", 10)
            .await
            .unwrap()
            .is_empty()
    );
    search.deliver(second).await;
    assert_eq!(effect_count(&database).await, 1);
    assert!(
        deliveries
            .fetch(1, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        transport
            .dead_letters("search", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// JetStream keeps a consumer as it was created: one reopened on other subjects is refused,
/// not silently left on the old ones; and headers the server would act on never pass through.
#[tokio::test]
async fn jetstream_refuses_a_consumer_moved_to_other_subjects_and_server_headers() {
    let Some(jetstream) = jetstream().await else {
        return;
    };
    let first = ConsumerConfig::new("search", &["catalog.events"]);
    jetstream.consumer(&first).await.unwrap();
    jetstream.consumer(&first).await.unwrap();
    let moved = ConsumerConfig::new("search", &["orders.events"]);
    let refused = jetstream.consumer(&moved).await.err().expect("refused");
    assert!(
        matches!(&refused, shop_messaging::TransportError::Invalid(m) if m.contains("exists on")),
        "{refused}"
    );

    // A publisher's Nats-Expected-Stream would make the dead-letter stream refuse its copy.
    let pending = Pending {
        seq: 1,
        id: MessageId::new(),
        subject: "catalog.events".into(),
        key: "a".into(),
        headers: [
            ("Nats-Expected-Stream".to_owned(), "ELSEWHERE".to_owned()),
            (
                "traceparent".to_owned(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            ),
        ]
        .into(),
        payload: b"{}".to_vec(),
        attempts: 0,
    };
    shop_messaging::Publisher::publish(&*jetstream, &[pending])
        .await
        .unwrap();
    let mut deliveries = jetstream.consumer(&first).await.unwrap();
    let delivery = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
    assert!(delivery.headers.contains_key("traceparent"));
    assert!(
        !delivery
            .headers
            .keys()
            .any(|k| k.to_ascii_lowercase().starts_with("nats-")),
        "{:?}",
        delivery.headers
    );
    delivery
        .settle(Settlement::DeadLetter {
            reason: "poison".into(),
        })
        .await
        .unwrap();
    assert_eq!(jetstream.dead_letters("search", 10).await.unwrap().len(), 1);
    assert!(matches!(
        jetstream.dead_letters("no such*", 10).await,
        Err(shop_messaging::TransportError::Invalid(_))
    ));
    jetstream.delete().await.unwrap();
}

/// Started under the service's supervisor, the relay and a consumer run until the service stops;
/// then they stop in order, and what was enqueued last is published on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backbone_runs_under_the_supervisor_and_publishes_the_last_messages_at_shutdown() {
    let dir = std::env::temp_dir().join(format!("supervised-{}", MessageId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("shop.db").display());
    let database = Database::connect(&url).await.unwrap();
    let transport = local(&database).await;
    let tasks = shop_common::tasks::Supervisor::new();
    let search = consumer(
        &database,
        &transport,
        ConsumerConfig::new("search", &["catalog.events"]),
        Script::with(&[]),
    );
    shop_messaging::start(
        &tasks,
        Relay::new(database.clone(), transport.clone()).poll(Duration::from_secs(3_600)),
        vec![search],
        &database,
        &(transport.clone() as Arc<dyn Transport>),
    );
    enqueue_committed(&database, &["a"]).await;
    let deadline = tokio::time::Instant::now() + SOON;
    while effect_count(&database).await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "never handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tasks.ended().is_empty(), "{:?}", tasks.ended());

    // Written through another pool (another process, say): no commit of this one wakes the
    // relay, which polls once an hour. At shutdown the consumers stop first, and the relay's
    // last round publishes it.
    let writer = Database::connect(&url).await.unwrap();
    let last = enqueue_committed(&writer, &["b"]).await;
    tasks.shutdown(SOON).await;
    assert!(Outbox::pending(&database, 10).await.unwrap().is_empty());
    assert_eq!(effect_count(&database).await, 1, "the consumer had stopped");
    let mut later = transport
        .consumer(&ConsumerConfig::new("search", &["catalog.events"]))
        .await
        .unwrap();
    let delivered: Vec<String> = later
        .fetch(10, SOON)
        .await
        .unwrap()
        .iter()
        .map(|d| d.broker_id.clone())
        .collect();
    assert_eq!(
        delivered,
        [last[0].to_string()],
        "in the log for the next start"
    );
    drop(later);
    for pool in [database, writer] {
        if let Database::Sqlite(pool) = pool {
            pool.close().await;
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A message published as is (not an envelope), with a trace header.
fn raw(subject: &str, body: &str) -> Pending {
    Pending {
        seq: 0,
        id: MessageId::new(),
        subject: subject.to_owned(),
        key: body.to_owned(),
        headers: [("traceparent".to_owned(), format!("trace-of-{body}"))].into(),
        payload: body.as_bytes().to_vec(),
        attempts: 0,
    }
}

/// The next message of `subscription`, as `subject body`, its header checked.
async fn next_of(subscription: &mut Box<dyn Subscription>) -> String {
    let message = tokio::time::timeout(SOON, subscription.next())
        .await
        .expect("a message within 10 s")
        .unwrap();
    let body = String::from_utf8(message.payload).unwrap();
    assert_eq!(
        message.headers.get("traceparent"),
        Some(&format!("trace-of-{body}"))
    );
    format!("{} {body}", message.subject)
}

async fn a_subscription_sees_every_later_message_on_its_subjects_and_no_replay<T: Transport>(
    _: &Database,
    transport: Arc<T>,
) {
    let subjects = |filters: &[&str]| filters.iter().map(|&f| f.to_owned()).collect::<Vec<_>>();
    transport
        .publish(&[raw("catalog.events", "before")])
        .await
        .unwrap();
    // Two subscribers of one subject: each sees every message (unlike a consumer's replicas).
    let mut first = transport
        .subscribe(&subjects(&["catalog.events"]))
        .await
        .unwrap();
    let mut second = transport
        .subscribe(&subjects(&["catalog.*"]))
        .await
        .unwrap();
    let mut others = transport
        .subscribe(&subjects(&["orders.events", "payments.>"]))
        .await
        .unwrap();
    transport
        .publish(&[
            raw("catalog.events", "one"),
            raw("orders.events", "two"),
            raw("catalog.events", "three"),
            raw("payments.replies.x", "four"),
        ])
        .await
        .unwrap();
    for subscription in [&mut first, &mut second] {
        assert_eq!(next_of(subscription).await, "catalog.events one");
        assert_eq!(next_of(subscription).await, "catalog.events three");
    }
    let mut on_two = vec![next_of(&mut others).await, next_of(&mut others).await];
    on_two.sort();
    assert_eq!(on_two, ["orders.events two", "payments.replies.x four"]);

    // A replayed dead letter is for its consumer alone: subscribers do not see it again.
    let mut deliveries = transport
        .consumer(&ConsumerConfig::new("dead", &["catalog.events"]))
        .await
        .unwrap();
    let mut dead = 0;
    while dead < 3 {
        for delivery in deliveries.fetch(10, SOON).await.unwrap() {
            delivery
                .settle(Settlement::DeadLetter {
                    reason: "for the replay".into(),
                })
                .await
                .unwrap();
            dead += 1;
        }
    }
    assert_eq!(transport.replay("dead", None).await.unwrap(), 3);
    transport
        .publish(&[raw("catalog.events", "after")])
        .await
        .unwrap();
    for subscription in [&mut first, &mut second] {
        assert_eq!(next_of(subscription).await, "catalog.events after");
    }

    assert!(matches!(
        transport.subscribe(&[]).await,
        Err(shop_messaging::TransportError::Invalid(_))
    ));
    assert!(matches!(
        transport.subscribe(&subjects(&["catalog..events"])).await,
        Err(shop_messaging::TransportError::Invalid(_))
    ));
}

#[tokio::test]
async fn the_local_log_forgets_what_no_consumer_still_needs_once_it_is_old() {
    let database = Database::connect("sqlite::memory:").await.unwrap();
    let transport = local(&database).await;
    enqueue_committed(&database, &["a", "b", "c"]).await;
    relay_all(&database, &transport).await;
    let config =
        ConsumerConfig::new("search", &["catalog.events"]).ack_wait(Duration::from_secs(1));
    let search = consumer(
        &database,
        &transport,
        config,
        Script::with(&[Step::Ack, Step::Reject]),
    );
    let mut deliveries = transport.consumer(search.config()).await.unwrap();
    let mut batch = deliveries.fetch(3, SOON).await.unwrap();
    assert_eq!(batch.len(), 3);
    let unsettled = batch.pop().unwrap();
    for delivery in batch {
        search.deliver(delivery).await;
    }
    drop(unsettled);
    let logged = async || -> i64 {
        on_db!(&database, pool => sqlx::query_scalar("SELECT COUNT(*) FROM bus_messages")
            .fetch_one(pool)
            .await)
        .unwrap()
    };
    assert_eq!(logged().await, 3);

    // Young, nothing goes; old, the acknowledged one goes, the dead letter and the unsettled
    // delivery keep theirs.
    let now = shop_common::unix_millis();
    assert_eq!(transport.prune(now - 60_000, 0).await.unwrap(), (0, 0));
    assert_eq!(transport.prune(now + 1_000, 0).await.unwrap(), (1, 0));
    assert_eq!(logged().await, 2);
    let dead = transport.dead_letters("search", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "unknown product");
    // The dead letter past its own age goes, and its message with it.
    assert_eq!(
        transport.prune(now + 1_000, now + 1_000).await.unwrap(),
        (1, 1)
    );
    assert_eq!(transport.dead_letter_count("search").await.unwrap(), 0);
    assert_eq!(logged().await, 1);
    // The unsettled one is still delivered again, whole.
    let again = deliveries.fetch(1, SOON).await.unwrap().pop().unwrap();
    assert_eq!(again.delivered, 2);
    search.deliver(again).await;
    assert_eq!(effects(&database).await, ["a", "c"]);
    // And the sweeper's call keeps JetStream's ages: nothing here is a week old.
    assert_eq!(transport.prune_expired().await.unwrap(), 0);
}

/// Replaying every dead letter does at most `MAX_REPLAYED` at a time, oldest first, and says
/// how many there were; the next call does the rest.
#[tokio::test]
async fn a_replay_of_every_dead_letter_is_bounded() {
    let database = Database::connect("sqlite::memory:").await.unwrap();
    let transport = local(&database).await;
    let config = ConsumerConfig::new("search", &["catalog.events"]);
    drop(transport.consumer(&config).await.unwrap());
    let count = i64::try_from(shop_messaging::MAX_REPLAYED).unwrap() + 1;
    on_db!(&database, pool => sqlx::raw_sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1001) \
         INSERT INTO bus_messages (id, subject, headers, payload, stored_at_ms) \
         SELECT 'm' || i, 'catalog.events', '{}', x'7b7d', 0 FROM n; \
         INSERT INTO bus_dead_letters (consumer, seq, reason, delivered, dead_at_ms) \
         SELECT 'search', seq, 'unknown product', 5, 0 FROM bus_messages ORDER BY seq;",
    )
    .execute(pool)
    .await
    .map(|done| done.rows_affected()))
    .unwrap();
    assert_eq!(
        transport.dead_letter_count("search").await.unwrap(),
        u64::try_from(count).unwrap()
    );
    assert_eq!(
        transport.replay("search", None).await.unwrap(),
        u64::try_from(shop_messaging::MAX_REPLAYED).unwrap()
    );
    assert_eq!(transport.dead_letter_count("search").await.unwrap(), 1);
    let left = transport.dead_letters("search", 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].broker_id, "m1001", "the oldest were replayed first");
    assert_eq!(transport.replay("search", None).await.unwrap(), 1);
    assert_eq!(transport.dead_letter_count("search").await.unwrap(), 0);
}

/// Two processes on one local bus file: a consumer in one gets what the other publishes at
/// its next look at the log, not when its fetch's wait runs out (an hour here).
#[tokio::test]
async fn another_process_publish_reaches_a_waiting_local_consumer() {
    let path = std::env::temp_dir().join(format!("bus-{}.db", uuid::Uuid::new_v4()));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    // A pool each, as two processes have.
    let publisher = LocalTransport::open(Database::connect(&url).await.unwrap())
        .await
        .unwrap();
    let consuming = LocalTransport::open(Database::connect(&url).await.unwrap())
        .await
        .unwrap();
    let config = ConsumerConfig::new("search", &["catalog.*"]);
    let mut deliveries = consuming.consumer(&config).await.unwrap();
    let waiting = tokio::spawn(async move {
        deliveries
            .fetch(10, Duration::from_secs(3600))
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    shop_messaging::Publisher::publish(&publisher, &[raw("catalog.events", "from-elsewhere")])
        .await
        .unwrap();
    let delivered = tokio::time::timeout(SOON, waiting)
        .await
        .expect("delivered at the consumer's next look, long before its wait ends")
        .unwrap();
    assert_eq!(delivered.len(), 1);
    let _ = std::fs::remove_file(&path);
}

/// The services of one process open one bus URL once: one pool, so one SQLite writer.
#[tokio::test]
async fn one_process_shares_one_local_transport_per_url() {
    let path = std::env::temp_dir().join(format!("bus-{}.db", uuid::Uuid::new_v4()));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let first = LocalTransport::open_url(&url).await.unwrap();
    let second = LocalTransport::open_url(&url).await.unwrap();
    assert_eq!(first.database().key(), second.database().key());
    let elsewhere = format!("sqlite://{}-2?mode=rwc", path.display());
    let other = LocalTransport::open_url(&elsewhere).await.unwrap();
    assert_ne!(first.database().key(), other.database().key());
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(format!("{}-2", path.display()));
}

/// Holds the first `slow` message until a `fast` one is handled, and records what it handled,
/// in order: `product:price`.
#[derive(Default)]
struct Gate {
    fast_done: tokio::sync::Notify,
    handled: Mutex<Vec<String>>,
}

#[async_trait]
impl Handler for Gate {
    async fn handle(&self, message: &Inbound, _: &mut Tx) -> Result<Outcome, HandleError> {
        let change: PriceChanged = message.decode()?;
        if change.product_id == "slow" && change.price_minor == 0 {
            // Waits for the other key: with one delivery at a time, never.
            tokio::time::timeout(SOON, self.fast_done.notified())
                .await
                .map_err(|_| HandleError::Poison("the other key was never handled".into()))?;
        }
        self.handled
            .lock()
            .unwrap()
            .push(format!("{}:{}", change.product_id, change.price_minor));
        if change.product_id == "fast" {
            self.fast_done.notify_one();
        }
        Ok(Outcome::Ack)
    }
}

/// Different keys' deliveries are handled at once, so a slow one holds up no other order's;
/// one key's stay in the order they came. (On PostgreSQL: a SQLite store has one connection, so
/// its consumers take one delivery at a time.)
#[tokio::test]
async fn different_keys_are_handled_at_once_and_one_keys_in_order() {
    let Some(db) = shop_common::testing::PgTestDb::create_or_skip("consume_keys").await else {
        return;
    };
    let database = Database::connect(&db.url).await.unwrap();
    let transport = local(&database).await;
    // price_minor is each message's position: slow:0, slow:1, fast:2, slow:3.
    enqueue_committed(&database, &["slow", "slow", "fast", "slow"]).await;
    relay_all(&database, &transport).await;
    let gate = Arc::new(Gate::default());
    let consumer = Consumer::new(
        ConsumerConfig::new("keys", &["catalog.events"]),
        transport.clone(),
        database.clone(),
        gate.clone(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + SOON;
    while gate.handled.lock().unwrap().len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "never handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(SOON, running)
        .await
        .expect("stopped")
        .unwrap()
        .unwrap();
    assert_eq!(
        *gate.handled.lock().unwrap(),
        ["fast:2", "slow:0", "slow:1", "slow:3"]
    );
    if let Database::Postgres(pool) = database {
        pool.close().await;
    }
    db.drop_database().await.unwrap();
}
