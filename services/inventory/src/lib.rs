//! The inventory service: stock per product, held for orders all or nothing, and a ledger of
//! every change.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `GET /stock/{sku}` | — | how many of a product can be ordered: `{"sku", "available"}` |
//! | `GET /admin/stock/{sku}` | role `admin` | its `on_hand`, `reserved` and `available` |
//! | `POST /admin/stock/{sku}/restock` | role `admin` | `{"quantity": 1..=1000000}` more on hand |
//!
//! The checkout saga's steps arrive as commands on `inventory.commands`
//! ([`shop_messaging::contracts`]), each carried out once per saga step ([`saga::Steps`]) in
//! the transaction of its reply:
//!
//! - `ReserveStock` holds every line of an order or none (`StockReserved` or `StockRejected`).
//!   Of many orders racing for the last unit, one gets it, on SQLite and on PostgreSQL.
//! - `ReleaseStock` gives a hold back (a compensation); a hold released before its
//!   reservation arrives refuses that reservation.
//! - `CommitStock` takes a hold out of stock for good (after the payment's capture). It cannot
//!   be refused: a hold the sweeper released meanwhile is taken again from what is available,
//!   and when there is too little the command fails (retried, then a dead letter an operator
//!   replays after restocking).
//!
//! - `ReturnStock` puts what an order committed back on hand (its refund, before the parcel
//!   left), once.
//!
//! A sweeper releases holds past their time (`ReservationExpired` on `inventory.events`).
//! [`store::StockStore::audit`] checks the invariants: per product, `on_hand` and `reserved`
//! equal the sums of the ledger, and `reserved` what the open holds hold.

#![forbid(unsafe_code)]

mod api;
pub mod config;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mainstay_auth::Validator;
use shop_common::store::{Database, StoreError, Tx};
use shop_common::tasks::{Stage, Supervisor};
use shop_messaging::contracts::{
    CommitStock, INVENTORY_COMMANDS, ReleaseStock, ReservationExpired, ReserveStock, ReturnStock,
    StockCommitted, StockRejected, StockRejection, StockReleased, StockReserved, StockReturned,
    check_order_id,
};
use shop_messaging::saga::{self, Participant, Reply};
use shop_messaging::{ConsumerConfig, HandleError, Inbound, Outbox, OutboxError, Poison, SagaRef};

pub use self::api::router;
pub use self::config::InventoryConfig;
use self::store::{Commitment, Ending, Reservation, StockStore};

/// The most lines one reservation may have.
pub const MAX_LINES: usize = 100;
/// The most of one product one line may ask for.
pub const MAX_QUANTITY: u32 = 10_000;
/// The longest product id, in bytes.
pub const MAX_SKU: usize = 64;
pub use shop_messaging::contracts::MAX_ORDER_ID;
/// The shortest a hold may be asked to last.
pub const MIN_HOLD: Duration = Duration::from_secs(1);
/// The longest a hold may be asked to last.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);

/// The most holds one sweep releases.
const SWEEP_BATCH: i64 = 100;

/// The service's state, shared by its handlers and its participant.
#[derive(Clone)]
pub struct Inventory(Arc<Inner>);

struct Inner {
    store: StockStore,
    validator: Validator,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory").finish_non_exhaustive()
    }
}

/// The demo catalog's products (`<category>-000` to `<category>-019`, as the catalog seeds
/// them), 50 of each on hand, except `kitchen-000`, of which there are none (the out-of-stock
/// demo).
#[must_use]
pub fn demo_stock() -> Vec<(String, i64)> {
    const CATEGORIES: [&str; 6] = [
        "kitchen",
        "garden",
        "books",
        "toys",
        "electronics",
        "outdoor",
    ];
    CATEGORIES
        .iter()
        .flat_map(|category| (0..20).map(move |n| format!("{category}-{n:03}")))
        .map(|sku| {
            let on_hand = if sku == "kitchen-000" { 0 } else { 50 };
            (sku, on_hand)
        })
        .collect()
}

impl Inventory {
    /// Opens the store (migrating it, and the backbone's tables beside it), and seeds the
    /// demo stock into an inventory with none when configured to. Admin routes trust tokens
    /// `validator` accepts.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn start(
        config: &InventoryConfig,
        database: &Database,
        validator: Validator,
    ) -> Result<Self, StoreError> {
        let store = StockStore::open(database).await?;
        shop_messaging::migrate(database).await?;
        if config.seed_demo_stock && store.count().await? == 0 {
            let stock = demo_stock();
            for (sku, on_hand) in &stock {
                store.restock(sku, *on_hand, "seed").await?;
            }
            tracing::info!(products = stock.len(), "seeded the demo stock");
        }
        Ok(Self(Arc::new(Inner { store, validator })))
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &StockStore {
        &self.0.store
    }

    /// The consumer of the saga's commands: `inventory` on [`INVENTORY_COMMANDS`].
    #[must_use]
    pub fn consumer_config() -> ConsumerConfig {
        ConsumerConfig::new("inventory", &[INVENTORY_COMMANDS])
    }

    /// The handler of those commands: each saga step carried out once, and replied to.
    #[must_use]
    pub fn participant(&self) -> saga::Steps<StockParticipant> {
        saga::Steps::new("inventory", StockParticipant(()))
    }

    /// Releases the holds past their time at `now_ms` (milliseconds since the epoch), each
    /// in its own transaction with its `ReservationExpired`; returns how many.
    ///
    /// # Errors
    ///
    /// The database fails (what was released before stays released).
    pub async fn sweep(&self, now_ms: i64) -> Result<usize, OutboxError> {
        let expired = self.0.store.expired(now_ms, SWEEP_BATCH).await?;
        let mut released = 0;
        for order_id in expired {
            // One hold that fails does not keep the others from expiring.
            match self.expire(&order_id).await {
                Ok(true) => released += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%order_id, %error, "an expired hold could not be released");
                }
            }
        }
        Ok(released)
    }

    async fn expire(&self, order_id: &str) -> Result<bool, OutboxError> {
        let mut tx = self.0.store.database().begin_read_committed().await?;
        if !StockStore::release(&mut tx, order_id, Ending::Expired).await? {
            return Ok(false);
        }
        Outbox::enqueue(
            &mut tx,
            &ReservationExpired {
                order_id: order_id.to_owned(),
            },
        )
        .await?;
        tx.commit().await?;
        tracing::warn!(%order_id, "a hold outlived its time: released");
        Ok(true)
    }

    /// Runs [`sweep`](Self::sweep) every `every` under `tasks` until they stop.
    pub fn run_sweeper(&self, tasks: &Supervisor, every: Duration) {
        let inventory = self.clone();
        tasks.every("hold-sweeper", Stage::Sweepers, every, move || {
            let inventory = inventory.clone();
            async move {
                if let Err(error) = inventory.sweep(shop_common::unix_millis()).await {
                    tracing::warn!(%error, "the hold sweep failed: tried again next time");
                }
            }
        });
    }
}

/// The inventory's side of the checkout saga (see the crate's documentation).
#[derive(Debug, Clone)]
pub struct StockParticipant(());

/// The lines of `reserve`, checked: 1 to [`MAX_LINES`], each of a product id of 1 to
/// [`MAX_SKU`] bytes and a quantity of 1 to [`MAX_QUANTITY`].
fn lines_of(reserve: &ReserveStock) -> Result<Vec<(String, i64)>, Poison> {
    if reserve.lines.is_empty() || reserve.lines.len() > MAX_LINES {
        return Err(Poison(format!(
            "{} lines (1 to {MAX_LINES})",
            reserve.lines.len()
        )));
    }
    reserve
        .lines
        .iter()
        .map(|line| {
            if !(1..=MAX_SKU).contains(&line.sku.len()) || line.sku.chars().any(char::is_control) {
                return Err(Poison(format!(
                    "a product id of {} bytes (1 to {MAX_SKU}, no control characters)",
                    line.sku.len()
                )));
            }
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                return Err(Poison(format!(
                    "a quantity of {} (1 to {MAX_QUANTITY})",
                    line.quantity
                )));
            }
            Ok((line.sku.clone(), i64::from(line.quantity)))
        })
        .collect()
}

#[async_trait]
impl Participant for StockParticipant {
    async fn execute(
        &self,
        command: &Inbound,
        _: &SagaRef,
        tx: &mut Tx,
    ) -> Result<Reply, HandleError> {
        if command.is::<ReserveStock>() {
            let reserve: ReserveStock = command.decode()?;
            check_order_id(&reserve.order_id)?;
            let lines = lines_of(&reserve)?;
            let hold = Duration::from_millis(reserve.hold_ms);
            if !(MIN_HOLD..=MAX_HOLD).contains(&hold) {
                return Err(Poison(format!(
                    "a hold of {} ms ({} to {})",
                    reserve.hold_ms,
                    MIN_HOLD.as_millis(),
                    MAX_HOLD.as_millis()
                ))
                .into());
            }
            let expires_at_ms = shop_common::unix_millis()
                .saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX));
            let order_id = reserve.order_id;
            let reply = match StockStore::reserve(tx, &order_id, &lines, expires_at_ms).await? {
                Reservation::Reserved => Reply::of(&StockReserved { order_id })?,
                Reservation::Short(short) => Reply::of(&StockRejected {
                    order_id,
                    reason: StockRejection::OutOfStock,
                    short,
                })?,
                Reservation::Released => Reply::of(&StockRejected {
                    order_id,
                    reason: StockRejection::Released,
                    short: Vec::new(),
                })?,
            };
            Ok(reply)
        } else if command.is::<ReleaseStock>() {
            let release: ReleaseStock = command.decode()?;
            check_order_id(&release.order_id)?;
            let released = StockStore::release(tx, &release.order_id, Ending::Released).await?;
            Ok(Reply::of(&StockReleased {
                order_id: release.order_id,
                released,
            })?)
        } else if command.is::<CommitStock>() {
            let commit: CommitStock = command.decode()?;
            check_order_id(&commit.order_id)?;
            match StockStore::commit(tx, &commit.order_id).await? {
                Commitment::Committed => Ok(Reply::of(&StockCommitted {
                    order_id: commit.order_id,
                })?),
                // After the pivot there is no refusing: retried (a restock lets it through),
                // then a dead letter for an operator.
                Commitment::Short(short) => Err(HandleError::Transient(
                    format!(
                        "order {}: too few of {} to commit what its expired hold held",
                        commit.order_id,
                        short.join(", ")
                    )
                    .into(),
                )),
                Commitment::Raced => Err(HandleError::Transient(
                    format!(
                        "order {}: committed by another step meanwhile",
                        commit.order_id
                    )
                    .into(),
                )),
                Commitment::Nothing => Err(HandleError::Poison(format!(
                    "order {} holds nothing to commit",
                    commit.order_id
                ))),
            }
        } else if command.is::<ReturnStock>() {
            let give_back: ReturnStock = command.decode()?;
            check_order_id(&give_back.order_id)?;
            let returned = StockStore::give_back(tx, &give_back.order_id).await?;
            Ok(Reply::of(&StockReturned {
                order_id: give_back.order_id,
                returned,
            })?)
        } else {
            Err(Poison(format!(
                "{} is not an inventory command",
                command.envelope.kind
            ))
            .into())
        }
    }
}

/// The the inventory service as its binary runs it, on `transport`, without serving: its kit (to serve
/// with `shop_common::serve`, or `serve_until` in the one-process system), its whole app, and
/// its state.
///
/// # Errors
///
/// The database or the transport cannot be opened, or the service cannot start on them.
pub async fn launch(
    config: InventoryConfig,
    transport: &shop_messaging::config::TransportConfig,
) -> std::io::Result<(shop_common::Kit, axum::Router, Inventory)> {
    let validator = config.tokens.validator()?;
    let mut service =
        shop_messaging::service::Service::start_with(config.service.clone(), transport).await?;
    let inventory = Inventory::start(&config, &service.database, validator.clone())
        .await
        .map_err(std::io::Error::other)?;
    service.consume(Inventory::consumer_config(), inventory.participant());
    inventory.run_sweeper(&service.kit.tasks, config.sweep_every);
    let (kit, app) = service.launch(router(inventory.clone()), validator);
    Ok((kit, app, inventory))
}
