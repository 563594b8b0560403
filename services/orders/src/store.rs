//! The orders store, on PostgreSQL and SQLite through the kit's store pattern: orders with
//! their saga's state, their lines and their history.

use serde::Serialize;
use shop_common::store::{Database, StoreError, Tx};
use shop_common::{on_db, on_tx};
use sqlx::migrate::Migrator;

use crate::flow::{Reason, Saga, Status, Step};

/// Migrations for SQLite.
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// An order as stored, with its saga's state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRow {
    /// Its id.
    pub order_id: String,
    /// Whose.
    pub user_id: String,
    /// The key it was placed with.
    pub idempotency_key: String,
    /// The digest of the request that placed it.
    pub request_hash: String,
    /// [`Status::name`].
    pub status: String,
    /// [`Step::name`] of the step awaited.
    pub step: Option<String>,
    /// The steps after it, comma-separated.
    pub plan: String,
    /// [`Reason::name`].
    pub reason: Option<String>,
    /// How often the step was sent again.
    pub attempts: i32,
    /// When the deadline scanner next looks, in milliseconds since the epoch.
    pub due_at_ms: Option<i64>,
    /// Past it, a saga that has not reached the pivot is undone.
    pub deadline_ms: i64,
    /// Its total, in minor units.
    pub total_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// What was captured.
    pub captured_minor: i64,
    /// What was refunded.
    pub refunded_minor: i64,
    /// The card sealed for the payments service
    /// ([`seal_card`](shop_messaging::contracts::seal_card)), until its authorisation is
    /// asked; then empty. The database never holds it in clear.
    pub card: String,
    /// Its last four digits.
    pub card_last4: String,
    /// Where to, as JSON.
    pub address: String,
    /// How many items.
    pub items: i32,
    /// Bumped by every move.
    pub version: i64,
    /// When it was placed.
    pub created_at_ms: i64,
    /// When it last moved.
    pub updated_at_ms: i64,
}

const COLUMNS: &str = "order_id, user_id, idempotency_key, request_hash, status, step, plan, \
    reason, attempts, due_at_ms, deadline_ms, total_minor, currency, captured_minor, \
    refunded_minor, card, card_last4, address, items, version, created_at_ms, updated_at_ms";

/// A stored saga that cannot be read (a name this build does not know).
#[derive(Debug, thiserror::Error)]
#[error("order {order_id}: unreadable saga state ({what})")]
pub struct CorruptSaga {
    /// The order.
    pub order_id: String,
    /// What could not be read.
    pub what: String,
}

impl OrderRow {
    /// The saga's state.
    ///
    /// # Errors
    ///
    /// A name in the row this build does not know.
    pub fn saga(&self) -> Result<Saga, CorruptSaga> {
        let corrupt = |what: &str| CorruptSaga {
            order_id: self.order_id.clone(),
            what: what.to_owned(),
        };
        let step = |name: &str| Step::parse(name).ok_or_else(|| corrupt(name));
        Ok(Saga {
            status: Status::parse(&self.status).ok_or_else(|| corrupt(&self.status))?,
            step: self.step.as_deref().map(step).transpose()?,
            plan: self
                .plan
                .split(',')
                .filter(|name| !name.is_empty())
                .map(step)
                .collect::<Result<_, _>>()?,
            reason: self
                .reason
                .as_deref()
                .map(|name| Reason::parse(name).ok_or_else(|| corrupt(name)))
                .transpose()?,
            captured_minor: self.captured_minor,
            refunded_minor: self.refunded_minor,
        })
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LineRow {
    /// The product.
    pub product_id: String,
    /// Its name when the order was placed.
    pub name: String,
    /// How many.
    pub quantity: i32,
    /// The catalog's price of one when the order was placed.
    pub unit_price_minor: i64,
}

/// One entry of an order's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct HistoryRow {
    /// Its place in the history, from 1.
    pub seq: i32,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
    /// The status after it.
    pub status: String,
    /// The step awaited after it.
    pub step: Option<String>,
    /// What happened.
    pub note: String,
}

/// A new order, as checkout places it.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Its id.
    pub order_id: String,
    /// Whose.
    pub user_id: String,
    /// The key it is placed with.
    pub idempotency_key: String,
    /// The digest of the request.
    pub request_hash: String,
    /// Past it, a saga that has not reached the pivot is undone.
    pub deadline_ms: i64,
    /// Its total, in minor units.
    pub total_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The card, sealed for the payments service
    /// ([`seal_card`](shop_messaging::contracts::seal_card)).
    pub card: String,
    /// Its last four digits.
    pub card_last4: String,
    /// Where to, as JSON.
    pub address: String,
    /// Its lines.
    pub lines: Vec<LineRow>,
    /// When.
    pub now_ms: i64,
}

/// What placing an order found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// The order is new.
    New,
    /// The user placed one with this key before: its id and its request's digest.
    Existing {
        /// The order.
        order_id: String,
        /// The digest of the request that placed it.
        request_hash: String,
    },
}

/// A saga's move, as the store writes it.
#[derive(Debug, Clone)]
pub struct Move<'a> {
    /// The state after.
    pub saga: &'a Saga,
    /// How often its step was sent again.
    pub attempts: i32,
    /// When the scanner next looks (`None`: never).
    pub due_at_ms: Option<i64>,
    /// Whether the card is no longer needed (its authorisation was asked).
    pub forget_card: bool,
    /// What happened, for the history.
    pub note: &'a str,
    /// When.
    pub now_ms: i64,
}

/// Orders, on the service's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OrderStore {
    db: Database,
}

impl OrderStore {
    /// The store on `database`, migrated.
    ///
    /// # Errors
    ///
    /// A migration fails.
    pub async fn open(database: &Database) -> Result<Self, StoreError> {
        database
            .migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS)
            .await?;
        Ok(Self {
            db: database.clone(),
        })
    }

    /// The database.
    #[must_use]
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Seals the cards that orders placed before cards were sealed still hold in clear (a
    /// card number is at most 19 digits; a sealed one is longer), with `seal` (the order id,
    /// the card); returns how many. Runs at start, so no card stays in clear after an upgrade
    /// and the orders in flight still pay.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn seal_clear_cards(
        &self,
        seal: impl Fn(&str, &str) -> String,
    ) -> Result<u64, StoreError> {
        let clear: Vec<(String, String)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT order_id, card FROM orders WHERE length(card) BETWEEN 1 AND 19",
        )
        .fetch_all(pool)
        .await)?;
        let mut sealed = 0;
        for (order_id, card) in clear {
            let done = on_db!(&self.db, pool => sqlx::query(
                "UPDATE orders SET card = $3 WHERE order_id = $1 AND card = $2",
            )
            .bind(&order_id)
            .bind(&card)
            .bind(seal(&order_id, &card))
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
            sealed += done;
        }
        Ok(sealed)
    }

    /// Places `order` within `tx`, with its lines and the first entry of its history, unless
    /// its user placed one with its key before.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn place(tx: &mut Tx, order: &NewOrder, note: &str) -> Result<Placed, StoreError> {
        let saga = Saga::start();
        let items: i64 = order
            .lines
            .iter()
            .map(|line| i64::from(line.quantity))
            .sum();
        let inserted = on_tx!(tx, conn => sqlx::query(
            "INSERT INTO orders (order_id, user_id, idempotency_key, request_hash, status, step, \
             plan, due_at_ms, deadline_ms, total_minor, currency, card, card_last4, address, \
             items, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11, $12, $13, $14, $15, $15) \
             ON CONFLICT (user_id, idempotency_key) DO NOTHING",
        )
        .bind(&order.order_id)
        .bind(&order.user_id)
        .bind(&order.idempotency_key)
        .bind(&order.request_hash)
        .bind(saga.status.name())
        .bind(saga.step.map(Step::name))
        .bind(plan_text(&saga.plan))
        .bind(order.deadline_ms)
        .bind(order.total_minor)
        .bind(&order.currency)
        .bind(&order.card)
        .bind(&order.card_last4)
        .bind(&order.address)
        .bind(i32::try_from(items).unwrap_or(i32::MAX))
        .bind(order.now_ms)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        if inserted == 0 {
            // Another request with the key committed first (this insert waited for it).
            let existing: (String, String) = on_tx!(tx, conn => sqlx::query_as(
                "SELECT order_id, request_hash FROM orders \
                 WHERE user_id = $1 AND idempotency_key = $2",
            )
            .bind(&order.user_id)
            .bind(&order.idempotency_key)
            .fetch_one(&mut **conn)
            .await)?;
            return Ok(Placed::Existing {
                order_id: existing.0,
                request_hash: existing.1,
            });
        }
        for (line_no, line) in order.lines.iter().enumerate() {
            on_tx!(tx, conn => sqlx::query(
                "INSERT INTO order_lines (order_id, line_no, product_id, name, quantity, \
                 unit_price_minor) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&order.order_id)
            .bind(i32::try_from(line_no).unwrap_or(i32::MAX))
            .bind(&line.product_id)
            .bind(&line.name)
            .bind(line.quantity)
            .bind(line.unit_price_minor)
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()))?;
        }
        Self::note(tx, &order.order_id, &saga, note, order.now_ms).await?;
        Ok(Placed::New)
    }

    /// Appends to an order's history within `tx` (whose move of the order holds its row).
    async fn note(
        tx: &mut Tx,
        order_id: &str,
        saga: &Saga,
        note: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO order_history (order_id, seq, at_ms, status, step, note) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 \
             FROM order_history WHERE order_id = $1",
        )
        .bind(order_id)
        .bind(now_ms)
        .bind(saga.status.name())
        .bind(saga.step.map(Step::name))
        .bind(note)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Records an event that does not move the order (a hold that expired, say) in its
    /// history, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn remark(
        tx: &mut Tx,
        order_id: &str,
        saga: &Saga,
        note: &str,
    ) -> Result<(), StoreError> {
        Self::note(tx, order_id, saga, note, shop_common::unix_millis()).await
    }

    /// Moves the order of `row` as `to` says, within `tx`, if it is still at `row.version`;
    /// `false` when another move came first.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn advance(tx: &mut Tx, row: &OrderRow, to: &Move<'_>) -> Result<bool, StoreError> {
        let saga = to.saga;
        let moved = on_tx!(tx, conn => sqlx::query(
            "UPDATE orders SET status = $3, step = $4, plan = $5, reason = $6, attempts = $7, \
             due_at_ms = $8, captured_minor = $9, refunded_minor = $10, \
             card = CASE WHEN $11 THEN '' ELSE card END, version = version + 1, \
             updated_at_ms = $12 WHERE order_id = $1 AND version = $2",
        )
        .bind(&row.order_id)
        .bind(row.version)
        .bind(saga.status.name())
        .bind(saga.step.map(Step::name))
        .bind(plan_text(&saga.plan))
        .bind(saga.reason.map(Reason::name))
        .bind(to.attempts)
        .bind(to.due_at_ms)
        .bind(saga.captured_minor)
        .bind(saga.refunded_minor)
        .bind(to.forget_card)
        .bind(to.now_ms)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        if moved == 0 {
            return Ok(false);
        }
        Self::note(tx, &row.order_id, saga, to.note, to.now_ms).await?;
        Ok(true)
    }

    /// An order, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn load(tx: &mut Tx, order_id: &str) -> Result<Option<OrderRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1");
        Ok(on_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(order_id)
            .fetch_optional(&mut **conn)
            .await)?)
    }

    /// An order.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn get(&self, order_id: &str) -> Result<Option<OrderRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1");
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(order_id)
            .fetch_optional(pool)
            .await)?,
        )
    }

    /// The order `user_id` placed with `key`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn by_key(&self, user_id: &str, key: &str) -> Result<Option<OrderRow>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM orders WHERE user_id = $1 AND idempotency_key = $2");
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(key)
            .fetch_optional(pool)
            .await)?,
        )
    }

    /// An order's lines, in order.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn lines(&self, order_id: &str) -> Result<Vec<LineRow>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT product_id, name, quantity, unit_price_minor FROM order_lines \
             WHERE order_id = $1 ORDER BY line_no",
        )
        .bind(order_id)
        .fetch_all(pool)
        .await)?)
    }

    /// An order's lines, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn lines_in(tx: &mut Tx, order_id: &str) -> Result<Vec<LineRow>, StoreError> {
        Ok(on_tx!(tx, conn => sqlx::query_as(
            "SELECT product_id, name, quantity, unit_price_minor FROM order_lines \
             WHERE order_id = $1 ORDER BY line_no",
        )
        .bind(order_id)
        .fetch_all(&mut **conn)
        .await)?)
    }

    /// An order's history, oldest first.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn history(&self, order_id: &str) -> Result<Vec<HistoryRow>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT seq, at_ms, status, step, note FROM order_history \
             WHERE order_id = $1 ORDER BY seq",
        )
        .bind(order_id)
        .fetch_all(pool)
        .await)?)
    }

    /// A user's orders, newest first: at most `limit`, placed before the order `before` (a
    /// page's last) when given.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn of_user(
        &self,
        user_id: &str,
        limit: i64,
        before: Option<(i64, &str)>,
    ) -> Result<Vec<OrderRow>, StoreError> {
        let (at, id) = before.unwrap_or((i64::MAX, ""));
        let sql = format!(
            "SELECT {COLUMNS} FROM orders WHERE user_id = $1 \
             AND (created_at_ms < $2 OR (created_at_ms = $2 AND order_id < $3) OR $4) \
             ORDER BY created_at_ms DESC, order_id DESC LIMIT $5"
        );
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(at)
            .bind(id)
            .bind(before.is_none())
            .bind(limit)
            .fetch_all(pool)
            .await)?,
        )
    }

    /// Everyone's latest `limit` orders, the newest first.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn latest(&self, limit: i64) -> Result<Vec<OrderRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM orders ORDER BY created_at_ms DESC, order_id DESC LIMIT $1"
        );
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(pool)
            .await)?,
        )
    }

    /// The orders due at `now_ms` (the scanner's), at most `limit`, the most overdue first.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn due(&self, now_ms: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT order_id FROM orders WHERE due_at_ms IS NOT NULL AND due_at_ms <= $1 \
             ORDER BY due_at_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(pool)
        .await)?)
    }

    /// Every order (for the invariant checker and the tests).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn all(&self) -> Result<Vec<OrderRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM orders ORDER BY created_at_ms, order_id");
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await)?,
        )
    }
}

fn plan_text(plan: &[Step]) -> String {
    plan.iter()
        .map(|step| step.name())
        .collect::<Vec<_>>()
        .join(",")
}
