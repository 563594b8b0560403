//! The event backbone beside raw async-nats, on this machine's NATS JetStream and PostgreSQL.
//!
//! - `messaging/publish`: 1 000 messages into the stream, acknowledged by it. The peer publishes
//!   them with async-nats, pipelined (the physical ceiling here); ours is the relay publishing
//!   1 000 committed outbox rows and deleting them (enqueued before the clock starts), then
//!   the same keeping them (marked), then the relay's two parts alone: its database work with a
//!   publisher that takes everything, and the transport's publish of rows already in memory.
//! - `messaging/consume`: 1 000 messages out of the stream, each acknowledged. The peer is a
//!   pull consumer that acknowledges what it fetches; ours is the `Consumer`, which writes each
//!   message's inbox record in its own PostgreSQL transaction before acknowledging it.
//!
//! - `messaging/enqueue`: 8 writers at once, each committing 50 transactions of one outbox
//!   message. Ours (no trigger) beside the same with the `NOTIFY` trigger of migration 0005,
//!   withdrawn by 0006: a notifying commit holds the cluster's notify lock, so the writers'
//!   commits queue behind one another.
//!
//! Needs PostgreSQL (127.0.0.1:5432) and NATS with JetStream (127.0.0.1:4222):
//! `cargo bench -p mainstay-benches --bench messaging`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use criterion::{Criterion, Throughput};
use futures_util::StreamExt as _;
use serde::Serialize;
use shop_common::store::{Database, Tx};
use shop_messaging::{
    Consumer, ConsumerConfig, HandleError, Handler, Inbound, JetStreamTransport, Message,
    MessageId, Outbox, Outcome, Pending, PublishError, Publisher, Relay, Transport,
};
use tokio::time::Instant;

const MESSAGES: usize = 1_000;

#[derive(Serialize)]
struct Tick {
    n: usize,
    /// `bench.published` for the publish group, `bench.consumed` for the consume group.
    #[serde(skip)]
    subject: &'static str,
}

impl Message for Tick {
    const KIND: &'static str = "Tick";
    const VERSION: u16 = 1;

    fn subject(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.subject)
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Owned((self.n % 64).to_string())
    }
}

/// A publisher that holds every batch at once: what is left of a relay's turn is the database's.
struct Discard;

#[async_trait]
impl Publisher for Discard {
    async fn publish(&self, _: &[Pending]) -> Result<(), PublishError> {
        Ok(())
    }
}

/// A handler that acknowledges: what is measured is the consumer's own cost.
struct Accept;

#[async_trait]
impl Handler for Accept {
    async fn handle(&self, _: &Inbound, _: &mut Tx) -> Result<Outcome, HandleError> {
        Ok(Outcome::Ack)
    }
}

async fn enqueue(database: &Database, count: usize, subject: &'static str) {
    for n in 0..count {
        let mut tx = database.begin().await.unwrap();
        Outbox::enqueue(&mut tx, &Tick { n, subject })
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
}

/// `iters` times: `MESSAGES` committed on `subject` (not timed), then relayed (timed).
async fn time_relay(
    relay: &Relay,
    database: &Database,
    iters: u64,
    subject: &'static str,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        enqueue(database, MESSAGES, subject).await;
        let start = Instant::now();
        let mut published = 0;
        while published < MESSAGES {
            published += relay.relay_once().await.unwrap().published;
        }
        total += start.elapsed();
    }
    total
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (db, database, client, transport, namespace) = runtime.block_on(async {
        let db = shop_common::testing::PgTestDb::create_or_skip("bench")
            .await
            .expect("PostgreSQL at 127.0.0.1:5432");
        let database = Database::connect(&db.url).await.unwrap();
        shop_messaging::migrate(&database).await.unwrap();
        database.migrate_kit().await.unwrap();
        let client = async_nats::connect("nats://127.0.0.1:4222")
            .await
            .expect("NATS at 127.0.0.1:4222");
        let namespace = format!(
            "b{}",
            &MessageId::new().as_uuid().simple().to_string()[..20]
        );
        let transport = Arc::new(
            JetStreamTransport::open(client.clone(), &namespace)
                .await
                .unwrap(),
        );
        (db, database, client, transport, namespace)
    });
    // The context spawns its acknowledgement task: within the runtime.
    let raw = runtime.block_on(async { jetstream::new(client) });
    let raw_subject = format!("raw{namespace}.events");
    runtime.block_on(async {
        raw.get_or_create_stream(stream::Config {
            name: format!("RAW{}", namespace.to_ascii_uppercase()),
            subjects: vec![raw_subject.clone()],
            duplicate_window: Duration::from_secs(120),
            ..stream::Config::default()
        })
        .await
        .unwrap();
    });

    let mut group = c.benchmark_group("messaging/publish");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.bench_function("raw async-nats, pipelined", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (raw, subject) = (raw.clone(), raw_subject.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let mut acks = Vec::with_capacity(MESSAGES);
                    for n in 0..MESSAGES {
                        let message = jetstream::message::PublishMessage::build()
                            .payload(serde_json::to_vec(&Tick { n, subject: "" }).unwrap().into())
                            .message_id(MessageId::new().to_string());
                        acks.push(raw.send_publish(subject.clone(), message).await.unwrap());
                    }
                    for ack in acks {
                        ack.await.unwrap();
                    }
                    total += start.elapsed();
                }
                total
            }
        });
    });
    // The relay as it runs (published rows deleted), and keeping published rows until the
    // sweeper prunes them (each marked by an UPDATE).
    for keep in [false, true] {
        let name = if keep {
            "mainstay outbox relay (PostgreSQL), keeping published rows"
        } else {
            "mainstay outbox relay (PostgreSQL)"
        };
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let (database, transport) = (database.clone(), transport.clone());
                async move {
                    let relay = Relay::new(database.clone(), transport).keep_published(keep);
                    time_relay(&relay, &database, iters, "bench.published").await
                }
            });
        });
    }
    // The relay's turn in its two parts, to see where its time goes: the database's work
    // (lock, read, mark, commit) with a publisher that holds every batch at once, and the
    // transport's publish of batches already in memory.
    group.bench_function(
        "relay's database work alone (publisher that takes each batch at once)",
        |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let database = database.clone();
                async move {
                    let relay = Relay::new(database.clone(), Arc::new(Discard));
                    time_relay(&relay, &database, iters, "bench.discarded").await
                }
            });
        },
    );
    group.bench_function(
        "JetStreamTransport::publish alone (batches of 256 in memory)",
        |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let transport = transport.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let batch: Vec<Pending> = (0..MESSAGES)
                            .map(|n| Pending {
                                seq: i64::try_from(n).unwrap(),
                                id: MessageId::new(),
                                subject: "bench.published".to_owned(),
                                key: (n % 64).to_string(),
                                headers: std::collections::HashMap::new(),
                                payload: serde_json::to_vec(&Tick { n, subject: "" }).unwrap(),
                                attempts: 0,
                            })
                            .collect();
                        let start = Instant::now();
                        for chunk in batch.chunks(256) {
                            transport.publish(chunk).await.unwrap();
                        }
                        total += start.elapsed();
                    }
                    total
                }
            });
        },
    );
    group.finish();

    let mut group = c.benchmark_group("messaging/consume");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.bench_function("raw async-nats pull consumer, ack each", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (raw, subject) = (raw.clone(), raw_subject.clone());
            let stream_name = format!("RAW{}", namespace.to_ascii_uppercase());
            async move {
                let consumer = drained_consumer(&raw, &stream_name, "raw", &subject).await;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    publish_raw(&raw, &subject).await;
                    let start = Instant::now();
                    let mut handled = 0;
                    while handled < MESSAGES {
                        let mut batch =
                            consumer.fetch().max_messages(256).messages().await.unwrap();
                        while let Some(message) = batch.next().await {
                            message.unwrap().ack().await.unwrap();
                            handled += 1;
                        }
                    }
                    total += start.elapsed();
                }
                total
            }
        });
    });
    group.bench_function(
        "raw async-nats pull consumer, one PostgreSQL transaction per message, ack each",
        |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let (raw, subject) = (raw.clone(), raw_subject.clone());
                let stream_name = format!("RAW{}", namespace.to_ascii_uppercase());
                let Database::Postgres(pool) = database.clone() else {
                    unreachable!("the benchmark runs on PostgreSQL")
                };
                async move {
                    sqlx::query("CREATE TABLE IF NOT EXISTS bench_effects (n BIGINT NOT NULL)")
                        .execute(&pool)
                        .await
                        .unwrap();
                    let consumer = drained_consumer(&raw, &stream_name, "raw-tx", &subject).await;
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        publish_raw(&raw, &subject).await;
                        let start = Instant::now();
                        let mut handled = 0;
                        while handled < MESSAGES {
                            let mut batch =
                                consumer.fetch().max_messages(256).messages().await.unwrap();
                            while let Some(message) = batch.next().await {
                                // The effect alone, in its own transaction: what any consumer
                                // with a database pays.
                                let mut tx = pool.begin().await.unwrap();
                                sqlx::query("INSERT INTO bench_effects (n) VALUES (1)")
                                    .execute(&mut *tx)
                                    .await
                                    .unwrap();
                                tx.commit().await.unwrap();
                                message.unwrap().ack().await.unwrap();
                                handled += 1;
                            }
                        }
                        total += start.elapsed();
                    }
                    total
                }
            });
        },
    );
    group.bench_function("mainstay consumer, inbox on PostgreSQL", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (database, transport) = (database.clone(), transport.clone());
            async move {
                let consumer = Consumer::new(
                    ConsumerConfig::new("bench", &["bench.consumed"]),
                    transport.clone(),
                    database.clone(),
                    Arc::new(Accept),
                );
                let mut deliveries = transport.consumer(consumer.config()).await.unwrap();
                let relay = Relay::new(database.clone(), transport.clone()).batch(256);
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    enqueue(&database, MESSAGES, "bench.consumed").await;
                    while relay.relay_once().await.unwrap().published > 0 {}
                    let start = Instant::now();
                    let mut handled = 0;
                    while handled < MESSAGES {
                        for delivery in deliveries.fetch(256, Duration::from_secs(1)).await.unwrap()
                        {
                            consumer.deliver(delivery).await;
                            handled += 1;
                        }
                    }
                    total += start.elapsed();
                }
                total
            }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("messaging/enqueue");
    group.throughput(Throughput::Elements((WRITERS * COMMITS) as u64));
    for notify in [false, true] {
        if notify {
            runtime.block_on(notify_trigger(&database, true));
        }
        let name = if notify {
            "8 writers, NOTIFY trigger on commit (migration 0005, withdrawn)"
        } else {
            "8 writers, mainstay outbox (no trigger)"
        };
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let database = database.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let writers: Vec<_> = (0..WRITERS)
                            .map(|_| {
                                let database = database.clone();
                                tokio::spawn(async move {
                                    enqueue(&database, COMMITS, "bench.enqueued").await;
                                })
                            })
                            .collect();
                        for writer in writers {
                            writer.await.unwrap();
                        }
                        total += start.elapsed();
                        let Database::Postgres(pool) = &database else {
                            unreachable!("PostgreSQL")
                        };
                        sqlx::query("DELETE FROM messaging_outbox")
                            .execute(pool)
                            .await
                            .unwrap();
                    }
                    total
                }
            });
        });
        if notify {
            runtime.block_on(notify_trigger(&database, false));
        }
    }
    group.finish();

    runtime.block_on(async {
        transport.delete().await.unwrap();
        raw.delete_stream(format!("RAW{}", namespace.to_ascii_uppercase()))
            .await
            .unwrap();
        if let Database::Postgres(pool) = database {
            pool.close().await;
        }
        db.drop_database().await.unwrap();
    });
    c.final_summary();
}

const WRITERS: usize = 8;
const COMMITS: usize = 50;

/// Creates (or drops) the outbox's `NOTIFY` trigger of migration 0005.
async fn notify_trigger(database: &Database, on: bool) {
    let Database::Postgres(pool) = database else {
        unreachable!("PostgreSQL")
    };
    let sql = if on {
        "CREATE FUNCTION bench_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_notify('messaging_outbox', ''); RETURN NULL; END $$; \
         CREATE TRIGGER bench_outbox_notify AFTER INSERT ON messaging_outbox \
         FOR EACH STATEMENT EXECUTE FUNCTION bench_outbox_notify();"
    } else {
        "DROP TRIGGER bench_outbox_notify ON messaging_outbox; \
         DROP FUNCTION bench_outbox_notify();"
    };
    sqlx::raw_sql(sql).execute(pool).await.unwrap();
}

/// Publishes `MESSAGES` messages on `subject` and waits for the stream to hold them.
async fn publish_raw(raw: &jetstream::Context, subject: &str) {
    let mut acks = Vec::with_capacity(MESSAGES);
    for n in 0..MESSAGES {
        let body = serde_json::to_vec(&Tick { n, subject: "" }).unwrap();
        acks.push(raw.publish(subject.to_owned(), body.into()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// The durable pull consumer `name` of the raw stream on `subject`, with what earlier groups
/// left on it acknowledged before any clock starts.
async fn drained_consumer(
    raw: &jetstream::Context,
    stream_name: &str,
    name: &str,
    subject: &str,
) -> jetstream::consumer::PullConsumer {
    let stream = raw.get_stream(stream_name).await.unwrap();
    let consumer = stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: subject.to_owned(),
                ..pull::Config::default()
            },
        )
        .await
        .unwrap();
    drain(&consumer).await;
    consumer
}

/// Fetches and acknowledges whatever `consumer` has now.
async fn drain(consumer: &jetstream::consumer::PullConsumer) {
    loop {
        let mut batch = consumer.fetch().max_messages(256).messages().await.unwrap();
        let mut any = false;
        while let Some(message) = batch.next().await {
            message.unwrap().ack().await.unwrap();
            any = true;
        }
        if !any {
            return;
        }
    }
}
