//! Product views, counted in memory and announced in batches: `POST /product-views/{id}`
//! costs a lock and a map update, and one outbox row carries every view of a few seconds
//! ([`ProductsViewed`] on `catalog.views`), whatever the rate of views.
//!
//! A batch is bounded ([`MAX_VIEWED_PRODUCTS`] products, [`MAX_VIEWERS`] viewers): views past
//! the bounds are dropped and counted in the batch, never held. A signed-in user's views of one
//! product count once per batch, so that one account reloading a page does not make it popular
//! (past [`MAX_VIEWERS`], a signed-in view is dropped rather than counted without that
//! check). Anonymous views cannot be told apart: the gateway's rate limit per address bounds
//! them, and recommendations weighs views little (at most two orders' worth a product an
//! hour).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shop_common::store::Database;
use shop_common::tasks::{Stage, Supervisor};
use shop_messaging::contracts::{
    MAX_VIEWED_PRODUCTS, MAX_VIEWERS, ProductViews, ProductsViewed, Viewer,
};
use shop_messaging::{Outbox, OutboxError};

/// The views since the last batch.
#[derive(Debug, Default)]
struct Pending {
    from_ms: i64,
    to_ms: i64,
    counts: HashMap<String, u32>,
    viewers: HashMap<(String, String), i64>,
    dropped: u64,
}

/// Views counted since the last batch (cheap to clone: one shared counter).
#[derive(Debug, Clone, Default)]
pub struct Views(Arc<Mutex<Pending>>);

impl Views {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing here can panic while holding the lock; a poisoned one still holds counts.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a view of `product_id` (an existing product) at `now_ms`, by `user` when signed
    /// in.
    pub fn record(&self, product_id: &str, user: Option<&str>, now_ms: i64) {
        let mut pending = self.lock();
        if pending.counts.is_empty() && pending.viewers.is_empty() {
            pending.from_ms = now_ms;
        }
        pending.to_ms = pending.to_ms.max(now_ms);
        if let Some(user) = user {
            let key = (user.to_owned(), product_id.to_owned());
            if let Some(at) = pending.viewers.get_mut(&key) {
                *at = (*at).max(now_ms);
                return; // counted once per batch
            }
            if pending.viewers.len() >= MAX_VIEWERS {
                // Not remembered, so it could not be counted once: not counted at all.
                pending.dropped += 1;
                return;
            }
            pending.viewers.insert(key, now_ms);
        }
        let full = pending.counts.len() >= MAX_VIEWED_PRODUCTS;
        match pending.counts.get_mut(product_id) {
            Some(count) => *count = count.saturating_add(1),
            None if !full => {
                pending.counts.insert(product_id.to_owned(), 1);
            }
            None => pending.dropped += 1,
        }
    }

    /// The batch of what was counted since the last one, and a fresh count; `None` when
    /// nothing was viewed.
    #[must_use]
    pub fn take(&self) -> Option<ProductsViewed> {
        let pending = std::mem::take(&mut *self.lock());
        if pending.counts.is_empty() && pending.viewers.is_empty() && pending.dropped == 0 {
            return None;
        }
        let mut views: Vec<ProductViews> = pending
            .counts
            .into_iter()
            .map(|(product_id, count)| ProductViews { product_id, count })
            .collect();
        views.sort_by(|a, b| a.product_id.cmp(&b.product_id));
        let mut viewers: Vec<Viewer> = pending
            .viewers
            .into_iter()
            .map(|((user_id, product_id), viewed_at_ms)| Viewer {
                user_id,
                product_id,
                viewed_at_ms,
            })
            .collect();
        viewers.sort_by(|a, b| (&a.user_id, &a.product_id).cmp(&(&b.user_id, &b.product_id)));
        Some(ProductsViewed {
            batch_id: uuid::Uuid::new_v4().to_string(),
            from_ms: pending.from_ms,
            to_ms: pending.to_ms,
            views,
            viewers,
            dropped: pending.dropped,
        })
    }

    /// Writes the batch of what was counted to the outbox of `database` (its relay publishes
    /// it); whether there was one.
    ///
    /// # Errors
    ///
    /// The database fails: the batch is lost (views are a signal, not a record), and logged.
    pub async fn flush(&self, database: &Database) -> Result<bool, OutboxError> {
        let Some(batch) = self.take() else {
            return Ok(false);
        };
        let mut tx = database.begin().await?;
        Outbox::enqueue(&mut tx, &batch).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Flushes every `period` under `tasks`, and once more when the service stops (before its
    /// relay does: the last batch is published).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn flush_every(&self, tasks: &Supervisor, database: Database, period: Duration) {
        let views = self.clone();
        tasks.spawn("product-views", Stage::Consumers, move |stop| async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let stopping = tokio::select! {
                    () = stop.cancelled() => true,
                    _ = tick.tick() => false,
                };
                if let Err(error) = views.flush(&database).await {
                    tracing::warn!(%error, "a batch of product views was lost");
                }
                if stopping {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_product_and_once_per_signed_in_user() {
        let views = Views::default();
        views.record("a", None, 10);
        views.record("a", None, 11);
        views.record("a", Some("u1"), 12);
        views.record("a", Some("u1"), 15); // the same user again: not counted again
        views.record("b", Some("u2"), 13);
        let batch = views.take().expect("a batch");
        assert_eq!((batch.from_ms, batch.to_ms), (10, 15));
        assert_eq!(
            batch.views,
            vec![
                ProductViews {
                    product_id: "a".into(),
                    count: 3
                },
                ProductViews {
                    product_id: "b".into(),
                    count: 1
                },
            ]
        );
        assert_eq!(batch.viewers.len(), 2);
        assert_eq!(batch.viewers[0].user_id, "u1");
        assert_eq!(batch.viewers[0].viewed_at_ms, 15);
        assert_eq!(batch.dropped, 0);
        assert!(views.take().is_none(), "taken: nothing left");
    }

    #[test]
    fn bounded_and_counts_what_did_not_fit() {
        let views = Views::default();
        for i in 0..MAX_VIEWED_PRODUCTS + 5 {
            views.record(&format!("p{i}"), None, 1);
        }
        for i in 0..MAX_VIEWERS + 3 {
            views.record("p0", Some(&format!("u{i}")), 2);
        }
        // A viewer past the bound, twice: dropped both times, never counted.
        views.record("p0", Some("u-late"), 3);
        views.record("p0", Some("u-late"), 4);
        let batch = views.take().expect("a batch");
        assert_eq!(batch.views.len(), MAX_VIEWED_PRODUCTS);
        assert_eq!(batch.viewers.len(), MAX_VIEWERS);
        assert_eq!(
            batch.dropped,
            5 + 3 + 2,
            "products, then viewers past the bounds"
        );
        let p0 = batch.views.iter().find(|v| v.product_id == "p0").unwrap();
        // The signed-in views of p0 whose viewer fitted, and the anonymous one.
        assert_eq!(p0.count, 1 + u32::try_from(MAX_VIEWERS).unwrap());
    }
}
