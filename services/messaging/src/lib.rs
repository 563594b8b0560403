//! `shop-messaging`: the event backbone every service of the commerce system stands on.
//!
//! Events and commands are Rust types ([`Message`]) with a kind and a version, sent in an
//! [`Envelope`]. A service writes a message with [`Outbox::enqueue`] in the same transaction
//! (`shop_common::store::Tx`) as the state change it announces, so that the two commit together
//! or not at all: a crash between a database write and a publish loses nothing. A relay then
//! publishes the outbox, in order per key, with the message id as the broker's de-duplication
//! id; consumers record each message id in an inbox within their own transaction, so that a
//! redelivered message has no second effect. Delivery is at least once; with the inbox, each
//! message has its effect once.
//!
//! Two transports keep one contract ([`transport`]): NATS JetStream in production, and the
//! [`LocalTransport`] on the embedded default, a durable log in a database of its own. A
//! service consumes by writing a [`Handler`] and running a [`Consumer`], which records the
//! inbox, runs the handler in the same transaction, and settles each delivery: acknowledged,
//! retried with back-off, or a dead letter with the reason, replayable. A cache that change
//! events invalidate [`follow`]s their subjects instead: every replica sees every message.
//!
//! The outbox lives in the service's database, in tables this crate migrates ([`migrate`]) and
//! records in [`MIGRATIONS_TABLE`], apart from the service's own migrations and the kit's.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod contracts;
pub mod inbox;
pub mod jetstream;
pub mod local;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod relay;
pub mod saga;
pub mod service;
mod shared;
pub mod subscription;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;

use std::sync::LazyLock;

use shop_common::store::{Database, StoreError};
use sqlx::migrate::Migrator;

pub use self::consumer::{Consumer, HandleError, Handler, Inbound, Outcome, Poison};
pub use self::inbox::Inbox;
pub use self::jetstream::JetStreamTransport;
pub use self::local::LocalTransport;
pub use self::message::{Envelope, Message, MessageId, SagaRef};
pub use self::metrics::{DeliveryOutcome, MessagingMetrics};
pub use self::outbox::{Context, Lag, Outbox, OutboxError, Pending, SetAside};
pub use self::relay::{PublishError, Publisher, Relay, RelayError, Round};
pub use self::subscription::{Followed, follow, follow_config};
pub use self::transport::{
    Broadcast, ConsumerConfig, DeadLetter, Deliveries, Delivery, MAX_REPLAYED, Settlement,
    Subscription, Transport, TransportError,
};

/// The table this crate's migrations are recorded in.
pub const MIGRATIONS_TABLE: &str = "_messaging_migrations";

/// This crate's tables, for SQLite (recorded in [`MIGRATIONS_TABLE`]).
pub static SQLITE_MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
});

/// This crate's tables, for PostgreSQL (recorded in [`MIGRATIONS_TABLE`]).
pub static POSTGRES_MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
});

/// Creates or updates this crate's tables in the service's database.
///
/// # Errors
///
/// A migration fails, or one already applied has changed.
pub async fn migrate(database: &Database) -> Result<(), StoreError> {
    database
        .migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS)
        .await
}

/// How long the outbox keeps what it published and the inbox what it received, by default:
/// longer than JetStream keeps a message ([`jetstream::EVENTS_MAX_AGE`]), so that no message
/// the broker can still deliver is forgotten by an inbox.
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(8 * 24 * 3_600);

/// Starts the service's part of the backbone under its supervisor (`kit.tasks`): the relay of
/// `database`'s outbox, each of `consumers`, and the sweeper that prunes the outbox, the inbox
/// and the saga steps past [`RETENTION`] every hour, and what `transport` keeps past its own
/// ([`Transport::prune_expired`]). `serve` stops them in order: the
/// consumers, then the relay, then the sweeper.
pub fn start(
    tasks: &shop_common::tasks::Supervisor,
    relay: Relay,
    consumers: Vec<Consumer>,
    database: &Database,
    transport: &std::sync::Arc<dyn Transport>,
) {
    use shop_common::tasks::Stage;
    tasks.spawn("outbox-relay", Stage::Relay, move |stop| async move {
        relay.run(stop.cancelled_owned()).await;
    });
    for consumer in consumers {
        let name = format!("consumer {}", consumer.config().name);
        tasks.spawn(name, Stage::Consumers, move |stop| async move {
            if let Err(error) = consumer.run(stop.cancelled_owned()).await {
                // The task ends, and readiness says so.
                tracing::error!(%error, "the consumer cannot run");
            }
        });
    }
    let database = database.clone();
    let transport = transport.clone();
    tasks.spawn(
        "messaging-sweeper",
        Stage::Sweepers,
        move |stop| async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3_600));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = every.tick() => {}
                }
                let before = shop_common::unix_millis()
                    - i64::try_from(RETENTION.as_millis()).unwrap_or(i64::MAX);
                match Outbox::prune(&database, before).await {
                    Ok(pruned) if pruned > 0 => tracing::info!(pruned, "outbox pruned"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "could not prune the outbox"),
                }
                match Inbox::prune(&database, before).await {
                    Ok(pruned) if pruned > 0 => tracing::info!(pruned, "inbox pruned"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "could not prune the inbox"),
                }
                match saga::prune(&database, before).await {
                    Ok(pruned) if pruned > 0 => tracing::info!(pruned, "saga steps pruned"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "could not prune the saga steps"),
                }
                match transport.prune_expired().await {
                    Ok(pruned) if pruned > 0 => tracing::info!(pruned, "message log pruned"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "could not prune the message log"),
                }
            }
        },
    );
}
