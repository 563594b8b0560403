//! The consumer loop over the local transport, on SQLite and on PostgreSQL: each message has
//! its effect once whatever is repeated, retries back off and end in the dead letters, replay
//! delivers again, poison is a dead letter at once, a restart loses nothing, and the consumer's
//! span continues the publisher's trace.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shop_common::store::{Database, Tx};
use shop_common::{on_db, on_tx};
use shop_messaging::{
    Consumer, ConsumerConfig, HandleError, Handler, Inbound, LocalTransport, MessageId, Outbox,
    Outcome, Pending, Publisher, Relay, Settlement, Transport,
};

use super::{PriceChanged, SPANS, enqueue_committed, ready};

shop_common::on_both_stores!(
    a_published_message_reaches_each_consumer_once_whatever_is_repeated,
    a_delivery_left_unsettled_comes_again_and_has_no_second_effect,
    retries_back_off_then_end_in_the_dead_letters_and_replay_delivers_again,
    poison_is_a_dead_letter_at_once,
    the_consumer_span_continues_the_publishers_trace,
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

async fn setup(database: &Database) -> Arc<LocalTransport> {
    LazyLock::force(&SPANS);
    ready(database).await;
    on_db!(database, pool => sqlx::query("CREATE TABLE effects (message_id TEXT NOT NULL, product TEXT NOT NULL)")
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
    .unwrap();
    Arc::new(LocalTransport::open(database.clone()).await.unwrap())
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

async fn relay_all(database: &Database, transport: &Arc<LocalTransport>) {
    let relay = Relay::new(database.clone(), transport.clone());
    while relay.relay_once().await.unwrap().published > 0 {}
}

fn consumer(
    database: &Database,
    transport: &Arc<LocalTransport>,
    config: ConsumerConfig,
    handler: Arc<Script>,
) -> Consumer {
    Consumer::new(config, transport.clone(), database.clone(), handler)
}

const NOW: Duration = Duration::ZERO;
const SOON: Duration = Duration::from_secs(10);

async fn a_published_message_reaches_each_consumer_once_whatever_is_repeated(
    database: &Database,
    _: &str,
) {
    let transport = setup(database).await;
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

async fn a_delivery_left_unsettled_comes_again_and_has_no_second_effect(
    database: &Database,
    _: &str,
) {
    let transport = setup(database).await;
    enqueue_committed(database, &["a"]).await;
    relay_all(database, &transport).await;
    let config =
        ConsumerConfig::new("search", &["catalog.events"]).ack_wait(Duration::from_millis(200));
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

async fn retries_back_off_then_end_in_the_dead_letters_and_replay_delivers_again(
    database: &Database,
    _: &str,
) {
    let transport = setup(database).await;
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
    assert!(
        transport
            .dead_letters("search", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn poison_is_a_dead_letter_at_once(database: &Database, _: &str) {
    let transport = setup(database).await;
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

async fn the_consumer_span_continues_the_publishers_trace(database: &Database, _: &str) {
    let transport = setup(database).await;
    let span = tracing::info_span!("change price");
    let trace_id = super::mainstay_trace_id(&span);
    {
        let mut tx = database.begin().await.unwrap();
        let entered = span.enter();
        Outbox::enqueue(&mut tx, &super::price("a", 1))
            .await
            .unwrap();
        drop(entered);
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
    for delivery in deliveries.fetch(10, SOON).await.unwrap() {
        search.deliver(delivery).await;
    }
    let spans = SPANS.get_finished_spans().unwrap();
    let consume = spans
        .iter()
        .find(|s| s.name == "consume" && s.span_context.trace_id().to_string() == trace_id)
        .expect("a consumer span in the publisher's trace");
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
        let transport = setup(&database).await;
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
