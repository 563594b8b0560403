//! The orders service: checkout, and the checkout saga's orchestrator.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `POST /checkout` | signed in, `Idempotency-Key` | places an order: `202` with `Location` |
//! | `GET /orders` | signed in | mine, newest first (`?limit=1..=100&before=<order id>`) |
//! | `GET /orders/{id}` | its owner, or role `admin` | status, reason, lines and step history |
//! | `POST /orders/{id}/cancel` | its owner | cancels it (undoing, or refunding once paid) |
//! | `GET /orders/{id}/events` | its owner, or role `admin` | its status as server-sent events |
//!
//! A checkout re-prices every line from the catalog (through the client stack), stores the
//! order with the first step of its saga, and answers at once; the saga runs in the background
//! (ARCHITECTURE.md §4, and [`flow`] for the state machine):
//!
//! - **Each move is one transaction**: the order's new state (a conditional `UPDATE` on its
//!   version), its history and the next command, written to the outbox. A crash at any point
//!   resumes from the last committed move: the relay publishes what was committed, and the
//!   participants answer each step once however often it is sent.
//! - **Replies** arrive on `orders.replies` (and shipping's events on `shipping.events`); one
//!   for a step the saga has moved past is acknowledged and ignored.
//! - **The deadline scanner** undoes a saga that has not reached the pivot by its deadline
//!   (`PAYMENT_TIMEOUT`, say), and sends a later step again while it is not answered.
//! - **Events** on `orders.events`: `OrderPlaced`, `OrderConfirmed`, `OrderRejected`,
//!   `OrderCancelled`.

#![forbid(unsafe_code)]

mod api;
pub use shop_common::catalog;
pub mod config;
pub mod flow;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use mainstay_auth::Validator;
use shop_common::seal::SealKey;
use shop_common::store::{StoreError, Tx};
use shop_common::tasks::{Stage, Supervisor};
use shop_messaging::contracts::{
    AuthorizePayment, CancelShipment, CaptureFailed, CapturePayment, CommitStock, CreateShipment,
    INVENTORY_EVENTS, OrderCancelled, OrderConfirmed, OrderDelivered, OrderLine, OrderRejected,
    OrderShipped, PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentRefunded,
    PaymentVoided, RefundPayment, ReleaseStock, ReservationExpired, ReserveStock, ReturnStock,
    SHIPPING_EVENTS, ShipmentCancelled, ShipmentCreated, ShipmentRejected, StockCommitted,
    StockLine, StockRejected, StockRejection, StockReleased, StockReserved, StockReturned,
    VoidPayment, check_order_id,
};
use shop_messaging::saga::{self, REPLIES};
use shop_messaging::{
    ConsumerConfig, HandleError, Handler, Inbound, Message, Outbox, Outcome, Poison, SagaRef,
};
use tokio::sync::broadcast;

pub use self::api::{
    MAX_LINES, MAX_PAGE, MAX_QUANTITY, MAX_STREAMS, MAX_STREAMS_PER_USER, STREAM_FOR, router,
};
use self::catalog::Prices;
pub use self::config::{OrdersConfig, SagaTiming};
use self::flow::{Answer, Event, Next, Saga, Status, Step};
use self::store::{Move, OrderRow, OrderStore};

/// The most orders the deadline scanner moves in one pass.
const SCAN_BATCH: i64 = 100;

/// The service's state, shared by its handlers, its orchestrator and its scanner.
#[derive(Clone)]
pub struct Orders(Arc<Inner>);

struct Inner {
    store: OrderStore,
    prices: Arc<dyn Prices>,
    validator: Validator,
    timing: SagaTiming,
    /// Seals the card for the payments service.
    card_key: SealKey,
    /// The card key's subkey that keys the hash of a checkout's body (it holds the card).
    request_hash_key: aws_lc_rs::hmac::Key,
    /// The ids of orders that moved in this process (for the live status streams).
    moved: broadcast::Sender<Arc<str>>,
}

impl std::fmt::Debug for Orders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders")
            .field("timing", &self.0.timing)
            .finish_non_exhaustive()
    }
}

/// What applying an event to an order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// There is no such order.
    Unknown,
    /// Nothing changed: why.
    Stayed(&'static str),
    /// The event was refused: why.
    Refused(&'static str),
    /// The order moved to this status.
    Moved(Status),
}

impl Orders {
    /// Opens the store (migrating it, and the backbone's tables beside it). Prices come from
    /// `prices`; tokens `validator` accepts are trusted.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn start(
        database: &shop_common::store::Database,
        prices: Arc<dyn Prices>,
        validator: Validator,
        timing: SagaTiming,
        card_key: SealKey,
    ) -> Result<Self, StoreError> {
        let store = OrderStore::open(database).await?;
        shop_messaging::migrate(database).await?;
        let sealed = store
            .seal_clear_cards(|order_id, card| {
                shop_messaging::contracts::seal_card(&card_key, order_id, card)
            })
            .await?;
        if sealed > 0 {
            tracing::info!(
                sealed,
                "cards stored in clear before this version are now sealed"
            );
        }
        let (moved, _) = broadcast::channel(1024);
        Ok(Self(Arc::new(Inner {
            store,
            prices,
            validator,
            timing,
            request_hash_key: card_key.hmac_key("orders checkout request hash"),
            card_key,
            moved,
        })))
    }

    /// The key of the checkout bodies' hashes (kept per `Idempotency-Key`): derived from the
    /// card key, as a body holds the card and a plain digest of a card number can be
    /// reversed by trying them all.
    #[must_use]
    pub fn request_hash_key(&self) -> &aws_lc_rs::hmac::Key {
        &self.0.request_hash_key
    }

    /// The key the card is sealed with for the payments service.
    #[must_use]
    pub fn card_key(&self) -> &SealKey {
        &self.0.card_key
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &OrderStore {
        &self.0.store
    }

    /// The saga's timing.
    #[must_use]
    pub fn timing(&self) -> &SagaTiming {
        &self.0.timing
    }

    /// The ids of the orders that move in this process from now on.
    #[must_use]
    pub fn moves(&self) -> broadcast::Receiver<Arc<str>> {
        self.0.moved.subscribe()
    }

    /// The consumer of the participants' replies and of the events that move orders:
    /// `orders` on `orders.replies`, `inventory.events` and `shipping.events`.
    #[must_use]
    pub fn consumer_config() -> ConsumerConfig {
        ConsumerConfig::new("orders", &[REPLIES, INVENTORY_EVENTS, SHIPPING_EVENTS])
    }

    /// The handler of those messages: the orchestrator.
    #[must_use]
    pub fn orchestrator(&self) -> Orchestrator {
        Orchestrator(self.clone())
    }

    /// Applies `event` to the order `order_id` within `tx`: moves it (writing the next
    /// command and, once it settles, its event), or says why not.
    ///
    /// # Errors
    ///
    /// [`HandleError::Transient`]: the database failed, or another move of the order came
    /// first (try again). [`HandleError::Poison`]: the stored order cannot be read.
    pub async fn apply(
        &self,
        tx: &mut Tx,
        order_id: &str,
        event: &Event,
    ) -> Result<Applied, HandleError> {
        let Some(row) = OrderStore::load(tx, order_id).await? else {
            return Ok(Applied::Unknown);
        };
        let saga = row
            .saga()
            .map_err(|error| HandleError::Poison(error.to_string()))?;
        let (next, send, note) = match saga.on(event) {
            Next::Stay(why) => return Ok(Applied::Stayed(why)),
            Next::Refused(why) => return Ok(Applied::Refused(why)),
            Next::Move { saga, send, note } => (saga, send, note),
        };
        let now = shop_common::unix_millis();
        let again = send && next.step == saga.step && next.status == saga.status;
        let attempts = if again {
            row.attempts.saturating_add(1)
        } else {
            0
        };
        let due_at_ms = if next.status.settled() {
            None
        } else if next.status == Status::Pending {
            Some(row.deadline_ms)
        } else {
            Some(self.0.timing.resend_due(now, attempts))
        };
        let to = Move {
            saga: &next,
            attempts,
            due_at_ms,
            forget_card: next.status.settled() || (send && next.step == Some(Step::Authorize)),
            note: &note,
            now_ms: now,
        };
        if !OrderStore::advance(tx, &row, &to).await? {
            return Err(HandleError::Transient(
                format!("order {order_id} moved meanwhile").into(),
            ));
        }
        if let (true, Some(step)) = (send, next.step) {
            self.send_step(tx, &row, step).await?;
        }
        if next.status.settled() && !saga.status.settled() {
            self.announce(tx, &row, &next).await?;
        }
        if next.status == Status::NeedsAttention {
            tracing::error!(
                %order_id,
                "ALERT: the order's capture can never succeed; it needs an operator"
            );
        }
        tracing::info!(%order_id, from = %saga.status, to = %next.status, %note, "order moved");
        let moved = self.0.moved.clone();
        let id: Arc<str> = Arc::from(order_id);
        tx.after_commit(move || {
            let _ = moved.send(id);
        });
        Ok(Applied::Moved(next.status))
    }

    /// Writes the command of `step` of `row`'s saga within `tx`.
    async fn send_step(&self, tx: &mut Tx, row: &OrderRow, step: Step) -> Result<(), HandleError> {
        let order_id = row.order_id.clone();
        let saga = SagaRef {
            saga_id: order_id.clone(),
            step: step.name().to_owned(),
        };
        match step {
            Step::Reserve => {
                let lines = OrderStore::lines_in(tx, &order_id).await?;
                let hold = self.0.timing.hold();
                let command = ReserveStock {
                    order_id,
                    lines: lines
                        .into_iter()
                        .map(|line| StockLine {
                            sku: line.product_id,
                            quantity: u32::try_from(line.quantity).unwrap_or(0),
                        })
                        .collect(),
                    hold_ms: u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
                };
                saga::send(tx, saga, &command).await?;
            }
            Step::Authorize => {
                if row.card.is_empty() {
                    return Err(HandleError::Poison(format!(
                        "order {order_id}: its card was forgotten before its authorisation"
                    )));
                }
                let command = AuthorizePayment {
                    order_id,
                    amount_minor: row.total_minor,
                    currency: row.currency.clone(),
                    sealed_card: row.card.clone(),
                };
                saga::send(tx, saga, &command).await?;
            }
            Step::Ship => {
                let address = serde_json::from_str(&row.address).map_err(|error| {
                    HandleError::Poison(format!("order {order_id}: its address: {error}"))
                })?;
                let command = CreateShipment {
                    order_id,
                    address,
                    items: u32::try_from(row.items).unwrap_or(0),
                };
                saga::send(tx, saga, &command).await?;
            }
            Step::Capture => {
                saga::send(tx, saga, &CapturePayment { order_id }).await?;
            }
            Step::Commit => {
                saga::send(tx, saga, &CommitStock { order_id }).await?;
            }
            Step::CancelShipment => {
                saga::send(tx, saga, &CancelShipment { order_id }).await?;
            }
            Step::Void => {
                saga::send(tx, saga, &VoidPayment { order_id }).await?;
            }
            Step::Release => {
                saga::send(tx, saga, &ReleaseStock { order_id }).await?;
            }
            Step::Refund => {
                saga::send(tx, saga, &RefundPayment { order_id }).await?;
            }
            Step::Restock => {
                saga::send(tx, saga, &ReturnStock { order_id }).await?;
            }
        }
        Ok(())
    }

    /// Writes the event of a saga that settled, within `tx`.
    async fn announce(&self, tx: &mut Tx, row: &OrderRow, saga: &Saga) -> Result<(), HandleError> {
        let order_id = row.order_id.clone();
        let user_id = row.user_id.clone();
        match saga.status {
            Status::Confirmed => {
                let lines = OrderStore::lines_in(tx, &order_id).await?;
                Outbox::enqueue(
                    tx,
                    &OrderConfirmed {
                        order_id,
                        user_id,
                        lines: lines
                            .into_iter()
                            .map(|line| OrderLine {
                                product_id: line.product_id,
                                quantity: u32::try_from(line.quantity).unwrap_or(0),
                                unit_price_minor: line.unit_price_minor,
                            })
                            .collect(),
                        total_minor: saga.captured_minor,
                        currency: row.currency.clone(),
                        placed_at_ms: row.created_at_ms,
                    },
                )
                .await?;
            }
            Status::Rejected | Status::NeedsAttention => {
                Outbox::enqueue(
                    tx,
                    &OrderRejected {
                        order_id,
                        user_id,
                        reason: saga.reason.map_or("", |reason| reason.name()).to_owned(),
                        placed_at_ms: row.created_at_ms,
                    },
                )
                .await?;
            }
            Status::Cancelled => {
                Outbox::enqueue(
                    tx,
                    &OrderCancelled {
                        order_id,
                        user_id,
                        refunded_minor: saga.refunded_minor,
                    },
                )
                .await?;
            }
            // Shipped and delivered are the shipping service's events.
            _ => {}
        }
        Ok(())
    }

    /// Moves on the orders due at `now_ms` (milliseconds since the epoch): undoes the sagas
    /// past their deadline before the pivot, and sends the other awaited steps again. Each
    /// order in a transaction of its own; returns how many moved.
    ///
    /// # Errors
    ///
    /// The database fails before any order is looked at (one order that fails is logged and
    /// left for the next pass).
    pub async fn scan(&self, now_ms: i64) -> Result<usize, StoreError> {
        let due = self.0.store.due(now_ms, SCAN_BATCH).await?;
        let mut moved = 0;
        for order_id in due {
            match self.time_out(&order_id, now_ms).await {
                Ok(true) => moved += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%order_id, %error, "a due order could not be moved on");
                }
            }
        }
        Ok(moved)
    }

    async fn time_out(&self, order_id: &str, now_ms: i64) -> Result<bool, HandleError> {
        let mut tx = self.0.store.database().begin_read_committed().await?;
        // Moved since it was found due (its answer came): nothing to do.
        match OrderStore::load(&mut tx, order_id).await? {
            Some(row) if row.due_at_ms.is_some_and(|due| due <= now_ms) => {}
            _ => return Ok(false),
        }
        let applied = self
            .apply(&mut tx, order_id, &Event::DeadlinePassed)
            .await?;
        tx.commit().await?;
        Ok(matches!(applied, Applied::Moved(_)))
    }

    /// Runs [`scan`](Self::scan) every `timing.scan_every` under `tasks` until they stop.
    pub fn run_scanner(&self, tasks: &Supervisor) {
        let orders = self.clone();
        let every = self.0.timing.scan_every;
        tasks.every("saga-deadlines", Stage::Sweepers, every, move || {
            let orders = orders.clone();
            async move {
                if let Err(error) = orders.scan(shop_common::unix_millis()).await {
                    tracing::warn!(%error, "the deadline scan failed: tried again next time");
                }
            }
        });
    }
}

/// The orchestrator: moves orders by the participants' replies and the shipping events.
#[derive(Debug, Clone)]
pub struct Orchestrator(Orders);

/// The order a reply is for, and what it says: its body's order id must be its saga's.
fn answer<M>(
    message: &Inbound,
    saga: &SagaRef,
    order_of: impl FnOnce(&M) -> &str,
    answer: impl FnOnce(M) -> Answer,
) -> Result<(String, Event), HandleError>
where
    M: Message + serde::de::DeserializeOwned,
{
    let body: M = message.decode()?;
    if order_of(&body) != saga.saga_id {
        return Err(Poison(format!(
            "a {} whose order is not its saga's",
            message.envelope.kind
        ))
        .into());
    }
    let step = Step::parse(&saga.step)
        .ok_or_else(|| Poison(format!("{} is not a step of the checkout saga", saga.step)))?;
    Ok((saga.saga_id.clone(), Event::Answered(step, answer(body))))
}

impl Orchestrator {
    /// The order `message` is about and the event it is, or `None` for a message that moves
    /// no order.
    fn event_of(message: &Inbound) -> Result<Option<(String, Event)>, HandleError> {
        let kind = message.envelope.kind.as_str();
        if kind == OrderShipped::KIND {
            let shipped: OrderShipped = message.decode()?;
            return Ok(Some((shipped.order_id, Event::Shipped)));
        }
        if kind == OrderDelivered::KIND {
            let delivered: OrderDelivered = message.decode()?;
            return Ok(Some((delivered.order_id, Event::Delivered)));
        }
        if message.subject != REPLIES {
            return Ok(None);
        }
        let saga = message.saga()?;
        if Step::parse(&saga.step).is_none() {
            // Not a step of this saga: nothing the orchestrator awaits.
            return Ok(None);
        }
        let answered = match kind {
            k if k == StockReserved::KIND => answer(
                message,
                saga,
                |m: &StockReserved| &m.order_id,
                |_| Answer::Reserved,
            )?,
            k if k == StockRejected::KIND => answer(
                message,
                saga,
                |m: &StockRejected| &m.order_id,
                |m| match m.reason {
                    StockRejection::OutOfStock => Answer::OutOfStock,
                    StockRejection::Released => Answer::ReservationRefused,
                },
            )?,
            k if k == StockReleased::KIND => answer(
                message,
                saga,
                |m: &StockReleased| &m.order_id,
                |_| Answer::Released,
            )?,
            k if k == StockReturned::KIND => answer(
                message,
                saga,
                |m: &StockReturned| &m.order_id,
                |_| Answer::Returned,
            )?,
            k if k == StockCommitted::KIND => answer(
                message,
                saga,
                |m: &StockCommitted| &m.order_id,
                |_| Answer::Committed,
            )?,
            k if k == PaymentAuthorized::KIND => answer(
                message,
                saga,
                |m: &PaymentAuthorized| &m.order_id,
                |_| Answer::Authorized,
            )?,
            k if k == PaymentDeclined::KIND => answer(
                message,
                saga,
                |m: &PaymentDeclined| &m.order_id,
                |m| {
                    let reason = serde_json::to_value(m.reason).unwrap_or_default();
                    Answer::Declined(reason.as_str().unwrap_or("DECLINED").to_owned())
                },
            )?,
            k if k == PaymentCaptured::KIND => answer(
                message,
                saga,
                |m: &PaymentCaptured| &m.order_id,
                |m| Answer::Captured(m.amount_minor),
            )?,
            k if k == CaptureFailed::KIND => answer(
                message,
                saga,
                |m: &CaptureFailed| &m.order_id,
                |m| Answer::CaptureFailed(m.reason),
            )?,
            k if k == PaymentVoided::KIND => answer(
                message,
                saga,
                |m: &PaymentVoided| &m.order_id,
                |_| Answer::Voided,
            )?,
            k if k == PaymentRefunded::KIND => answer(
                message,
                saga,
                |m: &PaymentRefunded| &m.order_id,
                |m| Answer::Refunded(m.amount_minor),
            )?,
            k if k == ShipmentCreated::KIND => answer(
                message,
                saga,
                |m: &ShipmentCreated| &m.order_id,
                |_| Answer::Booked,
            )?,
            k if k == ShipmentRejected::KIND => answer(
                message,
                saga,
                |m: &ShipmentRejected| &m.order_id,
                |_| Answer::Undeliverable,
            )?,
            k if k == ShipmentCancelled::KIND => answer(
                message,
                saga,
                |m: &ShipmentCancelled| &m.order_id,
                |m| Answer::ShipmentCancelled(m.cancelled),
            )?,
            _ => {
                return Err(Poison(format!("{kind} is not a reply of the checkout saga")).into());
            }
        };
        Ok(Some(answered))
    }
}

#[async_trait]
impl Handler for Orchestrator {
    async fn handle(&self, message: &Inbound, tx: &mut Tx) -> Result<Outcome, HandleError> {
        if message.is::<ReservationExpired>() {
            let expired: ReservationExpired = message.decode()?;
            check_order_id(&expired.order_id)?;
            if let Some(row) = OrderStore::load(tx, &expired.order_id).await? {
                let saga = row
                    .saga()
                    .map_err(|error| HandleError::Poison(error.to_string()))?;
                // The commit after the pivot takes the stock again; before it, the deadline
                // undoes the saga first. Only worth remembering.
                OrderStore::remark(
                    tx,
                    &row.order_id,
                    &saga,
                    "the inventory released the hold: it outlived its time",
                )
                .await?;
            }
            return Ok(Outcome::Ack);
        }
        let Some((order_id, event)) = Self::event_of(message)? else {
            tracing::debug!(kind = %message.envelope.kind, "a message that moves no order");
            return Ok(Outcome::Ack);
        };
        check_order_id(&order_id)?;
        match self.0.apply(tx, &order_id, &event).await? {
            Applied::Moved(_) => {}
            Applied::Unknown => {
                tracing::warn!(%order_id, kind = %message.envelope.kind, "a message for no order");
            }
            Applied::Stayed(why) | Applied::Refused(why) => {
                tracing::debug!(%order_id, kind = %message.envelope.kind, why, "nothing moved");
            }
        }
        Ok(Outcome::Ack)
    }
}

/// The the orders service as its binary runs it, on `transport`, without serving: its kit (to serve
/// with `shop_common::serve`, or `serve_until` in the one-process system), its whole app, and
/// its state.
///
/// # Errors
///
/// The database or the transport cannot be opened, or the service cannot start on them.
pub async fn launch(
    config: OrdersConfig,
    transport: &shop_messaging::config::TransportConfig,
) -> std::io::Result<(shop_common::Kit, axum::Router, Orders)> {
    let validator = config.tokens.validator()?;
    let mut service =
        shop_messaging::service::Service::start_with(config.service.clone(), transport).await?;
    let catalog = catalog::HttpCatalog::at(
        config.catalog.clone(),
        config.service.request_timeout,
        config.attempt_timeout,
        &service.kit,
    );
    let orders = Orders::start(
        &service.database,
        Arc::new(catalog),
        validator.clone(),
        config.timing,
        shop_common::seal::key_or_file(
            config.card_key.as_ref(),
            std::path::Path::new(shop_messaging::contracts::CARD_KEY_FILE),
        )
        .map_err(std::io::Error::other)?,
    )
    .await
    .map_err(std::io::Error::other)?;
    service.consume(Orders::consumer_config(), orders.orchestrator());
    orders.run_scanner(&service.kit.tasks);
    let (kit, app) = service.launch(router(orders.clone()), validator);
    Ok((kit, app, orders))
}
