//! Saga request and reply: a step's command reaches its participant, which carries it out once
//! however often it comes, and the reply reaches the orchestrator with the step it answers.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shop_common::store::{Database, Tx};
use shop_common::{on_db, on_tx};
use shop_messaging::saga::{self, Participant, Reply, Steps};
use shop_messaging::{
    Consumer, ConsumerConfig, HandleError, Handler, Inbound, Message, MessageId, Outbox, Outcome,
    SagaRef, Transport,
};

use super::{SOON, effect_count, relay_all};

#[derive(Debug, Serialize, Deserialize)]
struct ReserveStock {
    order_id: String,
}

impl Message for ReserveStock {
    const KIND: &'static str = "ReserveStock";
    const VERSION: u16 = 1;

    fn subject(&self) -> Cow<'static, str> {
        Cow::Owned(saga::commands_of("inventory"))
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.order_id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StockReserved {
    order_id: String,
    /// Which reservation this was, counted by the participant: a step carried out twice would
    /// answer with another number.
    reservation: i64,
}

impl Message for StockReserved {
    const KIND: &'static str = "StockReserved";
    const VERSION: u16 = 1;

    fn subject(&self) -> Cow<'static, str> {
        Cow::Borrowed(saga::REPLIES)
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.order_id)
    }
}

/// Reserves by writing an effect, and answers with how many effects there are.
struct Inventory;

#[async_trait]
impl Participant for Inventory {
    async fn execute(
        &self,
        command: &Inbound,
        saga: &SagaRef,
        tx: &mut Tx,
    ) -> Result<Reply, HandleError> {
        let reserve: ReserveStock = command.decode()?;
        assert_eq!(saga.saga_id, reserve.order_id);
        on_tx!(tx, conn => sqlx::query("INSERT INTO effects (message_id, product) VALUES ($1, $2)")
            .bind(command.envelope.id.to_string())
            .bind(&reserve.order_id)
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()))?;
        let reservation: i64 = on_tx!(tx, conn => sqlx::query_scalar("SELECT COUNT(*) FROM effects")
            .fetch_one(&mut **conn)
            .await)?;
        Ok(Reply::of(&StockReserved {
            order_id: reserve.order_id,
            reservation,
        })?)
    }
}

/// The orchestrator's side: records each reply with the step it answers and its cause.
#[derive(Default)]
struct Replies {
    seen: Mutex<Vec<(SagaRef, Option<MessageId>, StockReserved)>>,
}

#[async_trait]
impl Handler for Replies {
    async fn handle(&self, message: &Inbound, _: &mut Tx) -> Result<Outcome, HandleError> {
        let saga = message.saga()?.clone();
        let reply: StockReserved = message.decode()?;
        self.seen
            .lock()
            .unwrap()
            .push((saga, message.envelope.causation_id, reply));
        Ok(Outcome::Ack)
    }
}

fn step(saga_id: &str) -> SagaRef {
    SagaRef {
        saga_id: saga_id.to_owned(),
        step: "reserve-stock".to_owned(),
    }
}

async fn send(database: &Database, saga_id: &str) -> MessageId {
    let mut tx = database.begin().await.unwrap();
    let id = saga::send(
        &mut tx,
        step(saga_id),
        &ReserveStock {
            order_id: saga_id.to_owned(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

/// Hands every delivery `consumer` has waiting to it.
async fn deliver_all(consumer: &Consumer, transport: &Arc<dyn Transport>, expected: usize) {
    let mut deliveries = transport.consumer(consumer.config()).await.unwrap();
    let batch = deliveries.fetch(10, SOON).await.unwrap();
    assert_eq!(batch.len(), expected);
    for delivery in batch {
        consumer.deliver(delivery).await;
    }
}

pub(super) async fn a_saga_step_is_carried_out_once_and_answered_alike_each_time<T: Transport>(
    database: &Database,
    transport: Arc<T>,
) {
    let dynamic: Arc<dyn Transport> = transport.clone();
    // The first order's step is sent, then sent again under a new id (the orchestrator's
    // deadline passed); a second order's step once. A command that names no step is poison.
    let first = send(database, "order-1").await;
    let again = send(database, "order-1").await;
    let other = send(database, "order-2").await;
    let mut tx = database.begin().await.unwrap();
    Outbox::enqueue(
        &mut tx,
        &ReserveStock {
            order_id: "order-3".into(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    relay_all(database, &transport).await;

    let inventory = Consumer::new(
        ConsumerConfig::new("inventory", &["inventory.commands"]),
        dynamic.clone(),
        database.clone(),
        Arc::new(Steps::new("inventory", Inventory)),
    );
    deliver_all(&inventory, &dynamic, 4).await;
    assert_eq!(effect_count(database).await, 2, "one effect per step");
    let dead = transport.dead_letters("inventory", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].reason,
        "poison: a ReserveStock that names no saga step"
    );

    relay_all(database, &transport).await;
    let replies = Arc::new(Replies::default());
    let orders = Consumer::new(
        ConsumerConfig::new("orders", &[saga::REPLIES]),
        dynamic.clone(),
        database.clone(),
        replies.clone(),
    );
    deliver_all(&orders, &dynamic, 3).await;
    let seen = replies.seen.lock().unwrap().clone();
    let reserved = |order_id: &str, reservation| StockReserved {
        order_id: order_id.to_owned(),
        reservation,
    };
    assert_eq!(
        seen,
        [
            (step("order-1"), Some(first), reserved("order-1", 1)),
            (step("order-1"), Some(again), reserved("order-1", 1)),
            (step("order-2"), Some(other), reserved("order-2", 2)),
        ],
        "each command answered, in order, the step sent again with the first answer"
    );
}

fn command(saga_id: &str) -> Inbound {
    let reserve = ReserveStock {
        order_id: saga_id.to_owned(),
    };
    Inbound::of(&reserve, Some(step(saga_id))).unwrap()
}

/// Two commands of one step handled at once on PostgreSQL: the second waits for the first's
/// transaction and answers with its reply, without an error (which would spend a delivery) and
/// without a second effect; had the first rolled back, the second carries the step out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_commands_of_one_step_at_once_have_one_effect_and_no_error() {
    let Some(db) = shop_common::testing::PgTestDb::create_or_skip("saga_race").await else {
        return;
    };
    let database = Database::connect(&db.url).await.unwrap();
    super::prepare(&database).await;
    let steps = Arc::new(Steps::new("inventory", Inventory));
    for first_commits in [true, false] {
        let saga_id = format!("order-{first_commits}");
        let mut first = database.begin().await.unwrap();
        steps.handle(&command(&saga_id), &mut first).await.unwrap();
        let second = {
            let (database, steps, saga_id) = (database.clone(), steps.clone(), saga_id.clone());
            tokio::spawn(async move {
                let mut tx = database.begin().await.unwrap();
                let outcome = steps.handle(&command(&saga_id), &mut tx).await;
                tx.commit().await.unwrap();
                outcome
            })
        };
        // The second waits on the first's claim.
        shop_common::testing::until_one_waits_on_a_lock(
            &database,
            &second,
            "the second did not wait for the first",
        )
        .await;
        if first_commits {
            first.commit().await.unwrap();
        } else {
            first.rollback().await.unwrap();
        }
        assert!(matches!(second.await.unwrap(), Ok(Outcome::Ack)));
    }
    // One effect per step: the first's, then (the first rolled back) the second's.
    assert_eq!(effect_count(&database).await, 2);
    let replies: Vec<(String, String)> = on_db!(&database, pool => sqlx::query_as(
        "SELECT saga_id, body FROM messaging_saga_steps ORDER BY saga_id",
    )
    .fetch_all(pool)
    .await)
    .unwrap();
    assert_eq!(replies.len(), 2);
    assert!(
        replies
            .iter()
            .all(|(_, body)| body.contains("\"reservation\""))
    );
    if let Database::Postgres(pool) = database {
        pool.close().await;
    }
    db.drop_database().await.unwrap();
}

/// A step a participant would take for poison is refused when it is sent, where the
/// orchestrator can still handle it.
#[tokio::test]
async fn a_step_no_participant_takes_is_refused_when_sent() {
    let database = Database::connect("sqlite::memory:").await.unwrap();
    super::prepare(&database).await;
    let long = "x".repeat(saga::MAX_SAGA_ID + 1);
    for (saga_id, step) in [
        ("", "reserve"),
        (long.as_str(), "reserve"),
        ("order", ""),
        ("or\u{0}der", "reserve"),
    ] {
        let mut tx = database.begin().await.unwrap();
        let refused = saga::send(
            &mut tx,
            SagaRef {
                saga_id: saga_id.to_owned(),
                step: step.to_owned(),
            },
            &ReserveStock {
                order_id: "order".into(),
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(refused, shop_messaging::OutboxError::Saga(_)),
            "{refused:?}"
        );
    }
}
