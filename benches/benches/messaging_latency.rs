//! End-to-end latency of the event backbone at half of its measured maximum, beside raw
//! async-nats at the same rate, on this machine's NATS JetStream and PostgreSQL.
//!
//! - **mainstay**: a message enqueued in a committed PostgreSQL transaction, relayed by a
//!   running `Relay` (woken by the commit), delivered by JetStream to a running `Consumer`,
//!   whose handler runs in the transaction of its inbox record. Latency: from the enqueuing
//!   commit to the handler's commit.
//! - **raw async-nats**: a message published with async-nats, fetched by a pull consumer, its
//!   effect written in one PostgreSQL transaction, then acknowledged. Latency: from the
//!   publish to that commit.
//!
//! - **mainstay on the embedded default**: the same on SQLite files and the local transport
//!   (its log in a SQLite file of its own), at half of its own maximum.
//!
//! First each pipeline's maximum is measured (a burst of `BURST` messages, enqueued or published
//! at once, until the last is handled); then `PACED` messages are sent, one every
//! 1 / (half of mainstay's maximum) seconds, through both, and p50, p99 and the maximum are
//! reported. Run with `cargo bench -p mainstay-benches --bench messaging_latency`.

// A benchmark binary: what it prints is its report.
#![allow(clippy::print_stdout)]

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use shop_common::store::{Database, Tx};
use shop_messaging::{
    Consumer, ConsumerConfig, HandleError, Handler, Inbound, JetStreamTransport, Message,
    MessageId, Outbox, Outcome, Relay,
};
use tokio::time::Instant;

const BURST: usize = 2_000;
const PACED: usize = 4_000;

#[derive(Serialize, Deserialize)]
struct Tick {
    n: usize,
}

impl Message for Tick {
    const KIND: &'static str = "Tick";
    const VERSION: u16 = 1;

    fn subject(&self) -> Cow<'static, str> {
        Cow::Borrowed("bench.latency")
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Owned((self.n % 64).to_string())
    }
}

/// When each message was sent and handled, by its number.
struct Clock {
    sent: Mutex<Vec<Option<Instant>>>,
    handled: Mutex<(Vec<Option<Instant>>, usize)>,
    done: tokio::sync::Notify,
}

impl Clock {
    fn new(count: usize) -> Arc<Self> {
        Arc::new(Self {
            sent: Mutex::new(vec![None; count]),
            handled: Mutex::new((vec![None; count], 0)),
            done: tokio::sync::Notify::new(),
        })
    }

    fn sent(&self, n: usize) {
        self.sent.lock().unwrap()[n] = Some(Instant::now());
    }

    fn handled(&self, n: usize) {
        let mut guard = self.handled.lock().unwrap();
        let (handled, count) = &mut *guard;
        if let Some(slot) = handled.get_mut(n)
            && slot.is_none()
        {
            *slot = Some(Instant::now());
            *count += 1;
            if *count == handled.len() {
                self.done.notify_one();
            }
        }
    }

    /// The latencies, sorted, in microseconds.
    fn latencies(&self) -> Vec<u128> {
        let sent = self.sent.lock().unwrap();
        let handled = self.handled.lock().unwrap();
        let mut latencies: Vec<u128> = sent
            .iter()
            .zip(handled.0.iter())
            .map(|(sent, handled)| {
                handled
                    .unwrap()
                    .saturating_duration_since(sent.unwrap())
                    .as_micros()
            })
            .collect();
        latencies.sort_unstable();
        latencies
    }
}

/// The clock the running handler reports to (swapped between runs).
type Current = Arc<Mutex<Arc<Clock>>>;

/// Records when each message's handling committed (with its inbox record).
struct Timed(Current);

#[async_trait]
impl Handler for Timed {
    async fn handle(&self, message: &Inbound, tx: &mut Tx) -> Result<Outcome, HandleError> {
        let tick: Tick = message.decode()?;
        let clock = self.0.lock().unwrap().clone();
        tx.after_commit(move || clock.handled(tick.n));
        Ok(Outcome::Ack)
    }
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn report(name: &str, maximum: f64, rate: f64, latencies: &[u128]) {
    println!(
        "| {name} | {maximum:.0}/s | {rate:.0}/s | {:.2} ms | {:.2} ms | {:.2} ms |",
        ms(percentile(latencies, 0.50)),
        ms(percentile(latencies, 0.99)),
        ms(*latencies.last().unwrap()),
    );
}

#[allow(clippy::cast_precision_loss)]
fn ms(micros: u128) -> f64 {
    micros as f64 / 1_000.0
}

#[allow(clippy::cast_precision_loss)]
fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Sends `count` messages through `send`, paced at `rate` per second (0: at once), and waits
/// until `clock` has each handled.
async fn run(
    clock: &Arc<Clock>,
    count: usize,
    rate: f64,
    mut send: impl AsyncFnMut(usize),
) -> Duration {
    let start = Instant::now();
    let done = clock.done.notified();
    tokio::pin!(done);
    done.as_mut().enable();
    for n in 0..count {
        if rate > 0.0 {
            #[allow(clippy::cast_precision_loss)]
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
        send(n).await;
    }
    done.await;
    start.elapsed()
}

/// mainstay's pipeline, as a service runs it: a running relay of `database`'s outbox to
/// `transport`, and a running consumer of it handling in `database`.
struct Backbone {
    database: Database,
    current: Current,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Backbone {
    fn start(database: &Database, transport: Arc<dyn shop_messaging::Transport>) -> Self {
        let current: Current = Arc::new(Mutex::new(Clock::new(0)));
        let (stop, stopped) = stop_signal();
        let relay = Relay::new(database.clone(), transport.clone());
        let consumer = Consumer::new(
            ConsumerConfig::new("latency", &["bench.latency"]),
            transport,
            database.clone(),
            Arc::new(Timed(current.clone())),
        );
        let tasks = vec![
            tokio::spawn(relay.run(stopped.clone().wait())),
            tokio::spawn(async move { consumer.run(stopped.wait()).await.unwrap() }),
        ];
        Self {
            database: database.clone(),
            current,
            stop,
            tasks,
        }
    }

    /// `count` messages, each enqueued in its own committed transaction, paced at `rate`.
    async fn run(&self, count: usize, rate: f64) -> (Arc<Clock>, Duration) {
        let clock = Clock::new(count);
        *self.current.lock().unwrap() = clock.clone();
        let elapsed = run(&clock, count, rate, async |n| {
            let mut tx = self.database.begin().await.unwrap();
            Outbox::enqueue(&mut tx, &Tick { n }).await.unwrap();
            tx.commit().await.unwrap();
            clock.sent(n);
        })
        .await;
        (clock, elapsed)
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The embedded default first: SQLite files for the service and the local bus.
    let dir = std::env::temp_dir().join(format!("latency-{}", MessageId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = |name: &str| format!("sqlite://{}?mode=rwc", dir.join(name).display());
    let embedded_db = Database::connect(&sqlite("shop.db")).await.unwrap();
    shop_messaging::migrate(&embedded_db).await.unwrap();
    let bus = Database::connect(&sqlite("bus.db")).await.unwrap();
    let local = Arc::new(shop_messaging::LocalTransport::open(bus).await.unwrap());
    let embedded = Backbone::start(&embedded_db, local);
    embedded.run(200, 0.0).await;
    let (_, elapsed) = embedded.run(BURST, 0.0).await;
    let embedded_max = per_second(BURST, elapsed);
    let (clock, _) = embedded.run(PACED / 4, embedded_max / 2.0).await;
    let embedded_latencies = clock.latencies();
    embedded.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    let db = shop_common::testing::PgTestDb::create_or_skip("latency")
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    let database = Database::connect(&db.url).await.unwrap();
    shop_messaging::migrate(&database).await.unwrap();
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("NATS at 127.0.0.1:4222");
    let namespace = format!(
        "l{}",
        &MessageId::new().as_uuid().simple().to_string()[..20]
    );
    let transport = Arc::new(
        JetStreamTransport::open(client.clone(), &namespace)
            .await
            .unwrap(),
    );

    // Production: PostgreSQL and JetStream.
    let production = Backbone::start(&database, transport.clone());
    let mainstay = async |count: usize, rate: f64| production.run(count, rate).await;

    // raw async-nats: a publisher, and a pull consumer writing each effect in a transaction.
    let raw = jetstream::new(client.clone());
    let raw_subject = format!("raw{namespace}.latency");
    let raw_stream = format!("RAW{}", namespace.to_ascii_uppercase());
    raw.get_or_create_stream(stream::Config {
        name: raw_stream.clone(),
        subjects: vec![raw_subject.clone()],
        ..stream::Config::default()
    })
    .await
    .unwrap();
    let Database::Postgres(pool) = database.clone() else {
        unreachable!("PostgreSQL")
    };
    sqlx::query("CREATE TABLE bench_effects (n BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let raw_current: Current = Arc::new(Mutex::new(Clock::new(0)));
    let raw_consumer = raw
        .get_stream(&raw_stream)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("raw".to_owned()),
            filter_subject: raw_subject.clone(),
            ..pull::Config::default()
        })
        .await
        .unwrap();
    let raw_consuming = tokio::spawn({
        let current = raw_current.clone();
        let pool = pool.clone();
        async move {
            let mut messages = raw_consumer.messages().await.unwrap();
            while let Some(message) = messages.next().await {
                let message = message.unwrap();
                let tick: Tick = serde_json::from_slice(&message.payload).unwrap();
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("INSERT INTO bench_effects (n) VALUES ($1)")
                    .bind(i64::try_from(tick.n).unwrap())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                let clock = current.lock().unwrap().clone();
                clock.handled(tick.n);
                message.ack().await.unwrap();
            }
        }
    });
    let raw_run = async |count: usize, rate: f64| {
        let clock = Clock::new(count);
        *raw_current.lock().unwrap() = clock.clone();
        let elapsed = run(&clock, count, rate, async |n| {
            let body = serde_json::to_vec(&Tick { n }).unwrap();
            // Sent, not awaited: the acknowledgement comes back while the consumer works.
            let ack = raw.publish(raw_subject.clone(), body.into()).await.unwrap();
            clock.sent(n);
            tokio::spawn(async move { ack.await.unwrap() });
        })
        .await;
        (clock, elapsed)
    };

    // Warm both up, then the maxima.
    mainstay(200, 0.0).await;
    raw_run(200, 0.0).await;
    let (_, elapsed) = mainstay(BURST, 0.0).await;
    let mainstay_max = per_second(BURST, elapsed);
    let (_, elapsed) = raw_run(BURST, 0.0).await;
    let raw_max = per_second(BURST, elapsed);
    let rate = mainstay_max / 2.0;
    let (clock, _) = mainstay(PACED, rate).await;
    let ours = clock.latencies();
    let (clock, _) = raw_run(PACED, rate).await;
    let theirs = clock.latencies();
    println!("| pipeline | maximum (a burst of {BURST}) | rate | p50 | p99 | max |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    report(
        &format!(
            "raw async-nats: publish → pull consumer, effect in a PostgreSQL transaction ({PACED} paced)"
        ),
        raw_max,
        rate,
        &theirs,
    );
    report(
        &format!(
            "mainstay, PostgreSQL + JetStream: enqueue commit → relay → JetStream → Consumer with inbox ({PACED} paced)"
        ),
        mainstay_max,
        rate,
        &ours,
    );
    report(
        &format!(
            "mainstay, embedded default (SQLite + local bus): enqueue commit → relay → local log → Consumer with inbox ({} paced)",
            PACED / 4
        ),
        embedded_max,
        embedded_max / 2.0,
        &embedded_latencies,
    );

    production.stop().await;
    raw_consuming.abort();
    transport.delete().await.unwrap();
    raw.delete_stream(raw_stream).await.unwrap();
    pool.close().await;
    db.drop_database().await.unwrap();
}

/// A stop signal: a watch channel whose receivers complete once it says so.
fn stop_signal() -> (tokio::sync::watch::Sender<bool>, Stop) {
    let (sender, receiver) = tokio::sync::watch::channel(false);
    (sender, Stop(receiver))
}

#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
