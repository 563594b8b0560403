//! Request and reply for an orchestrated saga: commands on `<service>.commands`, replies on
//! [`REPLIES`], each carrying the saga step it belongs to ([`SagaRef`]).
//!
//! - **The orchestrator** writes a step's command with [`send`], in the transaction that
//!   records the step, and consumes [`REPLIES`] with a [`Handler`] of its own: each reply says
//!   which saga and step it answers ([`Inbound::saga`]) and which command caused it
//!   ([`Envelope::causation_id`](crate::Envelope::causation_id)). A reply to a step the saga has
//!   moved past is stale: acknowledge it and do nothing.
//! - **A participant** writes a [`Participant`] and runs it as [`Steps`], a [`Handler`] over its
//!   `<service>.commands`. A step is carried out once, however often its command comes: the
//!   inbox absorbs a redelivered message, and [`Steps`] absorbs the same step sent again under
//!   a new id (the orchestrator resending after its deadline), answering it with the reply it
//!   gave the first time. The effect, the record of the step and the reply commit together.
//!
//! ```no_run
//! use std::borrow::Cow;
//! use async_trait::async_trait;
//! use serde::{Deserialize, Serialize};
//! use shop_common::store::Tx;
//! use shop_messaging::saga::{self, Participant, Reply};
//! use shop_messaging::{HandleError, Inbound, Message, SagaRef};
//!
//! #[derive(Serialize, Deserialize)]
//! struct ReserveStock { order_id: String, lines: Vec<(String, u32)> }
//!
//! impl Message for ReserveStock {
//!     const KIND: &'static str = "ReserveStock";
//!     const VERSION: u16 = 1;
//!     fn subject(&self) -> Cow<'static, str> { Cow::Borrowed("inventory.commands") }
//!     fn key(&self) -> Cow<'_, str> { Cow::Borrowed(&self.order_id) }
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! struct StockReserved { order_id: String, reserved: bool }
//!
//! impl Message for StockReserved {
//!     const KIND: &'static str = "StockReserved";
//!     const VERSION: u16 = 1;
//!     fn subject(&self) -> Cow<'static, str> { Cow::Borrowed(saga::REPLIES) }
//!     fn key(&self) -> Cow<'_, str> { Cow::Borrowed(&self.order_id) }
//! }
//!
//! struct Inventory;
//!
//! #[async_trait]
//! impl Participant for Inventory {
//!     async fn execute(
//!         &self,
//!         command: &Inbound,
//!         _saga: &SagaRef,
//!         _tx: &mut Tx,
//!     ) -> Result<Reply, HandleError> {
//!         let reserve: ReserveStock = command.decode()?;
//!         // ... reserve every line within `tx` ...
//!         Ok(Reply::of(&StockReserved { order_id: reserve.order_id, reserved: true })?)
//!     }
//! }
//! ```

use async_trait::async_trait;
use serde_json::value::RawValue;
use shop_common::store::Tx;
use shop_common::{on_db, on_tx};

use crate::consumer::{HandleError, Handler, Inbound, Outcome, Poison};
use crate::message::{Message, MessageId, SagaRef};
use crate::outbox::{Context, Outbox, OutboxError, Parts};

/// The subject every participant replies on: the orchestrator's.
pub const REPLIES: &str = "orders.replies";

/// The longest saga id a command may carry, in bytes.
pub const MAX_SAGA_ID: usize = 128;

/// The longest step name a command may carry, in bytes.
pub const MAX_STEP: usize = 64;

/// The subject of `service`'s commands: `<service>.commands`.
#[must_use]
pub fn commands_of(service: &str) -> String {
    format!("{service}.commands")
}

/// Writes `command`, the command of `saga`'s step, within `tx` (the orchestrator's transaction
/// that records the step): it is published once `tx` commits.
///
/// # Errors
///
/// As [`Outbox::enqueue`]; and [`OutboxError::Saga`] for a saga id or step that is empty or
/// longer than [`MAX_SAGA_ID`] or [`MAX_STEP`] (a participant would take it for poison).
pub async fn send<M: Message>(
    tx: &mut Tx,
    saga: SagaRef,
    command: &M,
) -> Result<MessageId, OutboxError> {
    if let Some(problem) = saga_problem(&saga) {
        return Err(OutboxError::Saga(problem));
    }
    Outbox::enqueue_with(
        tx,
        command,
        Context {
            saga: Some(saga),
            causation_id: None,
        },
    )
    .await
}

/// What is wrong with `saga`, if anything.
fn saga_problem(saga: &SagaRef) -> Option<&'static str> {
    // A control character (a NUL, which PostgreSQL refuses in text) could never be recorded.
    let control = |text: &str| text.chars().any(char::is_control);
    if saga.saga_id.is_empty() || saga.saga_id.len() > MAX_SAGA_ID || control(&saga.saga_id) {
        Some("the saga id is empty, longer than MAX_SAGA_ID, or has control characters")
    } else if saga.step.is_empty() || saga.step.len() > MAX_STEP || control(&saga.step) {
        Some("the step is empty, longer than MAX_STEP, or has control characters")
    } else {
        None
    }
}

impl Inbound {
    /// The saga step this command belongs to, or this reply answers.
    ///
    /// # Errors
    ///
    /// [`Poison`]: the message carries none, or one longer than [`MAX_SAGA_ID`] or
    /// [`MAX_STEP`], or empty.
    pub fn saga(&self) -> Result<&SagaRef, Poison> {
        let saga =
            self.envelope.saga.as_ref().ok_or_else(|| {
                Poison(format!("a {} that names no saga step", self.envelope.kind))
            })?;
        if saga_problem(saga).is_some() {
            return Err(Poison(format!(
                "a saga id of {} bytes and a step of {} (1 to {MAX_SAGA_ID} and 1 to {MAX_STEP}, \
                 no control characters)",
                saga.saga_id.len(),
                saga.step.len()
            )));
        }
        Ok(saga)
    }
}

/// A participant's answer to a step's command: a [`Message`] (on [`REPLIES`], keyed by the
/// saga), kept as JSON so that the same step asked again is answered the same.
#[derive(Debug, Clone)]
pub struct Reply {
    kind: String,
    version: u16,
    subject: String,
    key: String,
    body: Box<RawValue>,
}

impl Reply {
    /// `message` as a reply.
    ///
    /// # Errors
    ///
    /// The message does not serialize (a map with keys that are not strings).
    pub fn of<M: Message>(message: &M) -> Result<Self, serde_json::Error> {
        Ok(Self {
            kind: M::KIND.to_owned(),
            version: M::VERSION,
            subject: message.subject().into_owned(),
            key: message.key().into_owned(),
            body: serde_json::value::to_raw_value(message)?,
        })
    }

    /// [`Message::KIND`] of the reply.
    #[must_use]
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Writes the reply to `command` (whose step is `saga`) within `tx`.
    async fn enqueue(
        &self,
        tx: &mut Tx,
        saga: &SagaRef,
        command: MessageId,
    ) -> Result<MessageId, OutboxError> {
        Outbox::enqueue_parts(
            tx,
            Parts {
                kind: &self.kind,
                version: self.version,
                subject: &self.subject,
                key: &self.key,
                body: &*self.body,
            },
            Context {
                saga: Some(saga.clone()),
                causation_id: Some(command),
            },
        )
        .await
    }
}

/// A saga participant's logic for its commands: carries out one step.
#[async_trait]
pub trait Participant: Send + Sync + 'static {
    /// Carries out `command`, the command of step `saga`, writing its effects within `tx`,
    /// and says what to reply: a failure the orchestrator should know of (out of stock, say)
    /// is a reply too. Never commit or roll back `tx`. [`HandleError::Transient`] has the
    /// command delivered again after a back-off; [`HandleError::Poison`] makes it a dead
    /// letter. Its effects in `tx` happen once per step: the step sent again is answered with
    /// this reply. It may be *called* more than once for a step, though, when a call's
    /// transaction rolls back (an error, a failed commit, a crash before it): anything it does
    /// outside `tx` (a payment provider's call, say) must be idempotent on the step.
    async fn execute(
        &self,
        command: &Inbound,
        saga: &SagaRef,
        tx: &mut Tx,
    ) -> Result<Reply, HandleError>;
}

/// A [`Handler`] that runs a [`Participant`] once per saga step, and replies.
///
/// Each step's reply is recorded (the table `messaging_saga_steps`, by participant, saga and
/// step) in the transaction of its effect. A command for a step already carried out is
/// answered with the recorded reply, and the participant is not called. The step is claimed
/// before the participant runs: of two commands for one step handled at once, the second waits
/// for the first's transaction and answers with its reply (or, if it rolled back, carries the
/// step out itself). That wait holds at READ COMMITTED, the default of PostgreSQL and what the
/// consumer's transaction uses unless the server is configured otherwise.
pub struct Steps<P> {
    participant: String,
    inner: P,
}

impl<P> std::fmt::Debug for Steps<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steps")
            .field("participant", &self.participant)
            .finish_non_exhaustive()
    }
}

impl<P: Participant> Steps<P> {
    /// `inner`'s steps, recorded as `participant`'s (its consumer's name, say).
    #[must_use]
    pub fn new(participant: impl Into<String>, inner: P) -> Self {
        Self {
            participant: participant.into(),
            inner,
        }
    }
}

type StepRow = (String, i32, String, String, String);

#[async_trait]
impl<P: Participant> Handler for Steps<P> {
    async fn handle(&self, message: &Inbound, tx: &mut Tx) -> Result<Outcome, HandleError> {
        let saga = message.saga()?;
        // Claims the step: of two handlers of one step at once, the second waits here for the
        // first's transaction, then finds its reply (or, if it rolled back, claims the step).
        let claimed = on_tx!(tx, conn => sqlx::query(
            "INSERT INTO messaging_saga_steps \
             (participant, saga_id, step, kind, version, subject, key, body, done_at_ms) \
             VALUES ($1, $2, $3, '', 0, '', '', '', $4) ON CONFLICT DO NOTHING",
        )
        .bind(&self.participant)
        .bind(&saga.saga_id)
        .bind(&saga.step)
        .bind(shop_common::unix_millis())
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?
            == 1;
        let reply = if claimed {
            let reply = self.inner.execute(message, saga, tx).await?;
            on_tx!(tx, conn => sqlx::query(
                "UPDATE messaging_saga_steps SET kind = $4, version = $5, subject = $6, key = $7, \
                 body = $8, done_at_ms = $9 WHERE participant = $1 AND saga_id = $2 AND step = $3",
            )
            .bind(&self.participant)
            .bind(&saga.saga_id)
            .bind(&saga.step)
            .bind(&reply.kind)
            .bind(i32::from(reply.version))
            .bind(&reply.subject)
            .bind(&reply.key)
            .bind(reply.body.get())
            .bind(shop_common::unix_millis())
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()))?;
            reply
        } else {
            let done: Option<StepRow> = on_tx!(tx, conn => sqlx::query_as(
                "SELECT kind, version, subject, key, body FROM messaging_saga_steps \
                 WHERE participant = $1 AND saga_id = $2 AND step = $3",
            )
            .bind(&self.participant)
            .bind(&saga.saga_id)
            .bind(&saga.step)
            .fetch_optional(&mut **conn)
            .await)?;
            // Gone between the two statements (pruned): delivered again later. (Above READ
            // COMMITTED, the claim itself fails with a serialization error when another
            // transaction claimed the step after this one's snapshot: transient too.)
            let Some((kind, version, subject, key, body)) = done else {
                return Err(HandleError::Transient(
                    "the step's record was claimed but cannot be read yet".into(),
                ));
            };
            tracing::debug!(
                saga_id = %saga.saga_id,
                step = %saga.step,
                "the step was carried out before: its reply again"
            );
            Reply {
                kind,
                version: u16::try_from(version).unwrap_or(u16::MAX),
                subject,
                key,
                body: RawValue::from_string(body).map_err(|error| {
                    HandleError::Poison(format!("a recorded reply is not JSON: {error}"))
                })?,
            }
        };
        reply.enqueue(tx, saga, message.envelope.id).await?;
        Ok(Outcome::Ack)
    }
}

/// Forgets the steps carried out before `before_ms` (milliseconds since the epoch); returns how
/// many. Keep them longer than an orchestrator may send a step again.
///
/// # Errors
///
/// The database fails.
pub async fn prune(
    database: &shop_common::store::Database,
    before_ms: i64,
) -> Result<u64, shop_common::store::StoreError> {
    Ok(on_db!(database, pool => sqlx::query(
        "DELETE FROM messaging_saga_steps WHERE done_at_ms < $1",
    )
    .bind(before_ms)
    .execute(pool)
    .await
    .map(|done| done.rows_affected()))?)
}

/// Helpers for the tests of participants (feature `testing`).
#[cfg(feature = "testing")]
pub mod testing {
    use serde::de::DeserializeOwned;
    use shop_common::store::Database;

    use crate::consumer::{HandleError, Handler, Inbound, Outcome};
    use crate::message::{Envelope, Message, SagaRef};
    use crate::outbox::Outbox;

    /// Hands `message`, as the command of step `step` of the saga its key names, to `handler`
    /// in a transaction of its own on `database`, committed when the handler acknowledges;
    /// returns the reply the handler wrote (the outbox's newest message), as an `R`.
    ///
    /// # Errors
    ///
    /// The handler's error (its transaction rolled back).
    ///
    /// # Panics
    ///
    /// The handler settles otherwise than by acknowledging, the database fails, or the reply
    /// is not an `R`: a test's failure.
    pub async fn reply_to<R, M, H>(
        handler: &H,
        database: &Database,
        message: &M,
        step: &str,
    ) -> Result<R, HandleError>
    where
        R: Message + DeserializeOwned,
        M: Message,
        H: Handler,
    {
        let saga = SagaRef {
            saga_id: message.key().into_owned(),
            step: step.to_owned(),
        };
        let inbound = Inbound::of(message, Some(saga)).expect("the command serializes");
        let mut tx = database.begin().await.expect("a transaction");
        match handler.handle(&inbound, &mut tx).await? {
            Outcome::Ack => tx.commit().await.expect("the step commits"),
            other => panic!("the handler answered {other:?}"),
        }
        let pending = Outbox::pending(database, i64::MAX)
            .await
            .expect("the outbox");
        let newest = pending.last().expect("a reply");
        let envelope: Envelope<serde_json::Value> =
            serde_json::from_slice(&newest.payload).expect("an envelope");
        assert_eq!(envelope.kind, R::KIND, "the reply: {:?}", envelope.body);
        Ok(serde_json::from_value(envelope.body).expect("the reply decodes"))
    }
}
