//! The notifications store, on PostgreSQL and SQLite through the kit's store pattern: the
//! messages rendered for each channel, who receives them, and each user's channels.
//!
//! A notification moves `QUEUED` → `SENDING` (claimed by one worker, under a lease) → `SENT`,
//! or back to `QUEUED` when its lease ran out, or to `DEAD` when its attempts ran out; a replay
//! moves `DEAD` back to `QUEUED`. Every move is a conditional `UPDATE`, so two workers that
//! hold the same id cannot both send it.

use serde::{Deserialize, Serialize};
use shop_common::store::{Database, StoreError, Tx};
use shop_common::{on_db, on_tx};
use sqlx::migrate::Migrator;

use shop_messaging::contracts::{NotificationDead, NotificationSent, NotificationsReplayed};
use shop_messaging::{Outbox, OutboxError};

use crate::Channel;

/// Writes `event` to the outbox within `tx` (the relay publishes it once `tx` commits).
async fn announce<M: shop_messaging::Message>(tx: &mut Tx, event: &M) -> Result<(), StoreError> {
    Outbox::enqueue(tx, event)
        .await
        .map(|_| ())
        .map_err(|error| match error {
            OutboxError::Store(error) => error,
            // A few short fields: it always encodes, and fits.
            other => StoreError::Database(sqlx::Error::Encode(Box::new(other))),
        })
}

/// Migrations for SQLite.
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A message to a user on one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Notification {
    /// Its id: the event's id and the channel, so that one event makes one per channel.
    pub id: String,
    /// Whose.
    pub user_id: String,
    /// `email`, `sms` or `push`.
    pub channel: String,
    /// What it tells: `order_confirmed`, `order_rejected`, `order_shipped`, `order_delivered`.
    pub kind: String,
    /// The order it is about.
    pub order_id: Option<String>,
    /// Its subject (the e-mail's, or the title of a push message).
    pub subject: String,
    /// Its text.
    pub body: String,
    /// `QUEUED`, `SENDING`, `SENT` or `DEAD`.
    pub status: String,
    /// How many times sending it failed.
    pub attempts: i32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was made, in milliseconds since the epoch.
    pub created_at_ms: i64,
    /// When it was sent.
    pub sent_at_ms: Option<i64>,
}

const COLUMNS: &str = "id, user_id, channel, kind, order_id, subject, body, status, attempts, \
    last_error, created_at_ms, sent_at_ms";

/// The channels a user wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// E-mail.
    pub email: bool,
    /// SMS.
    pub sms: bool,
    /// Push messages to the user's devices.
    pub push: bool,
}

impl Default for Preferences {
    /// E-mail and push; SMS only when asked for.
    fn default() -> Self {
        Self {
            email: true,
            sms: false,
            push: true,
        }
    }
}

impl Preferences {
    /// Whether `channel` is wanted.
    #[must_use]
    pub fn wants(&self, channel: Channel) -> bool {
        match channel {
            Channel::Email => self.email,
            Channel::Sms => self.sms,
            Channel::Push => self.push,
        }
    }
}

/// Who receives a user's messages.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Recipient {
    /// The e-mail address.
    pub email: String,
    /// The name to greet.
    pub name: String,
}

/// Notifications, on the service's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NotificationStore {
    db: Database,
}

impl NotificationStore {
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

    /// Keeps (or replaces) a user's address and name, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn set_recipient(
        tx: &mut Tx,
        user_id: &str,
        email: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = shop_common::unix_millis();
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO recipients (user_id, email, name, updated_at_ms) \
             VALUES ($1, COALESCE($2, ''), COALESCE($3, ''), $4) \
             ON CONFLICT (user_id) DO UPDATE SET \
             email = COALESCE($2, recipients.email), name = COALESCE($3, recipients.name), \
             updated_at_ms = $4",
        )
        .bind(user_id)
        .bind(email)
        .bind(name)
        .bind(now)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// A user's address and name, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn recipient_in(tx: &mut Tx, user_id: &str) -> Result<Option<Recipient>, StoreError> {
        Ok(on_tx!(tx, conn => sqlx::query_as(
            "SELECT email, name FROM recipients WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&mut **conn)
        .await)?)
    }

    /// A user's address and name.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn recipient(&self, user_id: &str) -> Result<Option<Recipient>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT email, name FROM recipients WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(pool)
        .await)?)
    }

    /// Remembers whose order `order_id` is, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn set_owner(tx: &mut Tx, order_id: &str, user_id: &str) -> Result<(), StoreError> {
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO order_owners (order_id, user_id, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(user_id)
        .bind(shop_common::unix_millis())
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Whose order `order_id` is, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn owner_in(tx: &mut Tx, order_id: &str) -> Result<Option<String>, StoreError> {
        Ok(on_tx!(tx, conn => sqlx::query_scalar(
            "SELECT user_id FROM order_owners WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(&mut **conn)
        .await)?)
    }

    /// A user's channels (the defaults when they never chose).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn preferences(&self, user_id: &str) -> Result<Preferences, StoreError> {
        let found: Option<Preferences> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT email, sms, push FROM preferences WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(pool)
        .await)?;
        Ok(found.unwrap_or_default())
    }

    /// A user's channels within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn preferences_in(tx: &mut Tx, user_id: &str) -> Result<Preferences, StoreError> {
        let found: Option<Preferences> = on_tx!(tx, conn => sqlx::query_as(
            "SELECT email, sms, push FROM preferences WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&mut **conn)
        .await)?;
        Ok(found.unwrap_or_default())
    }

    /// Sets a user's channels.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn set_preferences(
        &self,
        user_id: &str,
        preferences: Preferences,
    ) -> Result<(), StoreError> {
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO preferences (user_id, email, sms, push, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO UPDATE SET \
             email = $2, sms = $3, push = $4, updated_at_ms = $5",
        )
        .bind(user_id)
        .bind(preferences.email)
        .bind(preferences.sms)
        .bind(preferences.push)
        .bind(shop_common::unix_millis())
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Records a rendered notification as `QUEUED`, within `tx`; `false` when its id exists.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn add(tx: &mut Tx, notification: &Notification) -> Result<bool, StoreError> {
        let done = on_tx!(tx, conn => sqlx::query(
            "INSERT INTO notifications (id, user_id, channel, kind, order_id, subject, body, \
             status, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'QUEUED', $8, $8) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&notification.id)
        .bind(&notification.user_id)
        .bind(&notification.channel)
        .bind(&notification.kind)
        .bind(&notification.order_id)
        .bind(&notification.subject)
        .bind(&notification.body)
        .bind(notification.created_at_ms)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(done == 1)
    }

    /// One notification.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn get(&self, id: &str) -> Result<Option<Notification>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM notifications WHERE id = $1");
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(pool)
            .await)?,
        )
    }

    /// A user's notifications, the newest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn of_user(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE user_id = $1 \
             ORDER BY created_at_ms DESC, id DESC LIMIT $2"
        );
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?,
        )
    }

    /// The dead notifications (of `channel`, or of all), the oldest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn dead(
        &self,
        channel: Option<Channel>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE status = 'DEAD' \
             AND ($1 IS NULL OR channel = $1) ORDER BY updated_at_ms, id LIMIT $2"
        );
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(channel.map(Channel::as_str))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?,
        )
    }

    /// How many notifications are dead, per channel.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn dead_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT channel, COUNT(*) FROM notifications WHERE status = 'DEAD' GROUP BY channel",
        )
        .fetch_all(pool)
        .await)?)
    }

    /// Up to `limit` queued notifications (of `channel`, or of all) due for their queue (their
    /// back-off over) and not handed to it since `rehand_before` (a hand-off the queue lost is
    /// made again): `(id, channel)`, the oldest first.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn unqueued(
        &self,
        limit: u32,
        now_ms: i64,
        rehand_before_ms: i64,
        channel: Option<Channel>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT id, channel FROM notifications WHERE status = 'QUEUED' \
             AND next_attempt_at_ms <= $2 AND (enqueued_at_ms IS NULL OR enqueued_at_ms < $3) \
             AND ($4 IS NULL OR channel = $4) ORDER BY created_at_ms, id LIMIT $1",
        )
        .bind(i64::from(limit))
        .bind(now_ms)
        .bind(rehand_before_ms)
        .bind(channel.map(Channel::as_str))
        .fetch_all(pool)
        .await)?)
    }

    /// Marks a queued notification handed to its queue now, if it still is due and not
    /// handed since `rehand_before_ms` (a worker, or another replica's dispatcher, may have
    /// moved it since it was read); returns the mark's time, to
    /// [`unmark_enqueued`](Self::unmark_enqueued) it if the hand-off fails, or `None`: do not
    /// hand it.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn mark_enqueued(
        &self,
        id: &str,
        rehand_before_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let now = shop_common::unix_millis();
        let marked = on_db!(&self.db, pool => sqlx::query(
            "UPDATE notifications SET enqueued_at_ms = $2 WHERE id = $1 AND status = 'QUEUED' \
             AND next_attempt_at_ms <= $2 AND (enqueued_at_ms IS NULL OR enqueued_at_ms < $3)",
        )
        .bind(id)
        .bind(now)
        .bind(rehand_before_ms)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        Ok((marked == 1).then_some(now))
    }

    /// Takes back the mark of a hand-off that failed (unless something else moved the
    /// notification since).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn unmark_enqueued(&self, id: &str, stamp: i64) -> Result<(), StoreError> {
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE notifications SET enqueued_at_ms = NULL \
             WHERE id = $1 AND status = 'QUEUED' AND enqueued_at_ms = $2",
        )
        .bind(id)
        .bind(stamp)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Claims a notification to send it, under `token`: `QUEUED` and due (or `SENDING` with
    /// its lease run out, which counts the abandoned attempt) → `SENDING` until
    /// `lease_until_ms`. `None` when it is sent, dead,
    /// not due yet, or another worker holds it.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn claim(
        &self,
        id: &str,
        token: &str,
        lease_until_ms: i64,
    ) -> Result<Option<Notification>, StoreError> {
        let sql = format!(
            "UPDATE notifications SET \
             attempts = CASE WHEN status = 'SENDING' THEN attempts + 1 ELSE attempts END, \
             status = 'SENDING', claim_token = $2, lease_until_ms = $3, \
             updated_at_ms = $4 WHERE id = $1 AND ((status = 'QUEUED' AND next_attempt_at_ms <= $4) \
             OR (status = 'SENDING' AND lease_until_ms < $4)) RETURNING {COLUMNS}"
        );
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(token)
            .bind(lease_until_ms)
            .bind(shop_common::unix_millis())
            .fetch_optional(pool)
            .await)?,
        )
    }

    /// Marks a notification claimed under `token` sent; `false` when the claim was lost (its
    /// lease ran out and another worker took it).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn sent(&self, id: &str, token: &str) -> Result<bool, StoreError> {
        let now = shop_common::unix_millis();
        let mut tx = self.db.begin().await?;
        let row: Option<(String, String, i32)> = on_tx!(&mut tx, conn => sqlx::query_as(
            "UPDATE notifications SET status = 'SENT', sent_at_ms = $3, updated_at_ms = $3, \
             claim_token = NULL WHERE id = $1 AND status = 'SENDING' AND claim_token = $2 \
             RETURNING channel, kind, attempts",
        )
        .bind(id)
        .bind(token)
        .bind(now)
        .fetch_optional(&mut **conn)
        .await)?;
        let Some((channel, kind, attempts)) = row else {
            return Ok(false);
        };
        let event = NotificationSent {
            notification_id: id.to_owned(),
            channel,
            kind,
            attempts,
            sent_at_ms: now,
        };
        announce(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records a failed attempt of a notification claimed under `token`: `DEAD` when it was
    /// its `max_attempts`th, or `permanent` (it can never be sent), and otherwise `QUEUED`
    /// again, due at `next_attempt_at_ms`. Returns its attempts and whether it is dead;
    /// `None` when the claim was lost.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn failed(
        &self,
        id: &str,
        token: &str,
        error: &str,
        next_attempt_at_ms: i64,
        max_attempts: u32,
        permanent: bool,
    ) -> Result<Option<(i32, bool)>, StoreError> {
        let error: String = error.chars().take(500).collect();
        let now = shop_common::unix_millis();
        let mut tx = self.db.begin().await?;
        let row: Option<(i32, String, String, String)> = on_tx!(&mut tx, conn => sqlx::query_as(
            "UPDATE notifications SET attempts = attempts + 1, last_error = $3, \
             status = CASE WHEN $6 OR attempts + 1 >= $5 THEN 'DEAD' ELSE 'QUEUED' END, \
             next_attempt_at_ms = $4, enqueued_at_ms = NULL, claim_token = NULL, \
             updated_at_ms = $7 WHERE id = $1 AND status = 'SENDING' AND claim_token = $2 \
             RETURNING attempts, status, channel, kind",
        )
        .bind(id)
        .bind(token)
        .bind(error)
        .bind(next_attempt_at_ms)
        .bind(i64::from(max_attempts))
        .bind(permanent)
        .bind(now)
        .fetch_optional(&mut **conn)
        .await)?;
        let Some((attempts, status, channel, kind)) = row else {
            return Ok(None);
        };
        let dead = status == "DEAD";
        if dead {
            let event = NotificationDead {
                notification_id: id.to_owned(),
                channel,
                kind,
                attempts,
                dead_at_ms: now,
            };
            announce(&mut tx, &event).await?;
        }
        tx.commit().await?;
        Ok(Some((attempts, dead)))
    }

    /// Gives the dead notifications (of `channel`, or of all) another round of attempts:
    /// `DEAD` → `QUEUED`, due now, to be handed to their queues again. Returns how many.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn replay(&self, channel: Option<Channel>) -> Result<u64, StoreError> {
        let now = shop_common::unix_millis();
        let mut tx = self.db.begin().await?;
        let channels: Vec<(String,)> = on_tx!(&mut tx, conn => sqlx::query_as(
            "UPDATE notifications SET status = 'QUEUED', attempts = 0, enqueued_at_ms = NULL, \
             next_attempt_at_ms = 0, updated_at_ms = $2 \
             WHERE status = 'DEAD' AND ($1 IS NULL OR channel = $1) RETURNING channel",
        )
        .bind(channel.map(Channel::as_str))
        .bind(now)
        .fetch_all(&mut **conn)
        .await)?;
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for (channel,) in &channels {
            *counts.entry(channel.clone()).or_default() += 1;
        }
        for (channel, count) in counts {
            let event = NotificationsReplayed {
                channel,
                count,
                replayed_at_ms: now,
            };
            announce(&mut tx, &event).await?;
        }
        tx.commit().await?;
        Ok(channels.len() as u64)
    }

    /// Takes back what a worker claimed and never finished (its lease ran out: the worker
    /// stopped, or its attempt crashed it, mid-send), to be queued again; the abandoned
    /// attempt counts, so that one that crashes every time ends `DEAD` at its
    /// `max_attempts`th. Returns how many.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn take_back_abandoned(&self, max_attempts: u32) -> Result<u64, StoreError> {
        let now = shop_common::unix_millis();
        let mut tx = self.db.begin().await?;
        let taken: Vec<(String, String, String, String, i32)> = on_tx!(&mut tx, conn => sqlx::query_as(
            "UPDATE notifications SET attempts = attempts + 1, \
             status = CASE WHEN attempts + 1 >= $2 THEN 'DEAD' ELSE 'QUEUED' END, \
             last_error = COALESCE(last_error, 'abandoned mid-send'), enqueued_at_ms = NULL, \
             claim_token = NULL, updated_at_ms = $1 WHERE status = 'SENDING' AND lease_until_ms < $1 \
             RETURNING id, status, channel, kind, attempts",
        )
        .bind(now)
        .bind(i64::from(max_attempts))
        .fetch_all(&mut **conn)
        .await)?;
        for (id, status, channel, kind, attempts) in &taken {
            if status == "DEAD" {
                let event = NotificationDead {
                    notification_id: id.clone(),
                    channel: channel.clone(),
                    kind: kind.clone(),
                    attempts: *attempts,
                    dead_at_ms: now,
                };
                announce(&mut tx, &event).await?;
            }
        }
        tx.commit().await?;
        Ok(taken.len() as u64)
    }

    /// Forgets every hand-off of a queued notification (an in-process queue lost what it held
    /// when the process stopped): they are all handed again. Returns how many.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn forget_handoffs(&self) -> Result<u64, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query(
            "UPDATE notifications SET enqueued_at_ms = NULL \
             WHERE status = 'QUEUED' AND enqueued_at_ms IS NOT NULL",
        )
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?)
    }
}
