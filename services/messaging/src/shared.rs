//! State shared by everything of this process that works on one resource (a database, a SQLite
//! file): kept while someone holds it, forgotten when the last holder lets go.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// One `V` per key, alive while an `Arc` of it is held.
pub(crate) struct PerKey<K, V>(Mutex<HashMap<K, Weak<V>>>);

impl<K: Hash + Eq, V: Default> PerKey<K, V> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    /// The key's value, made when no one holds one (a key whose holders are gone may be used
    /// again: a pool's address, say).
    pub(crate) fn get_or_make(&self, key: K) -> Arc<V> {
        let mut values = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        values.retain(|_, value| value.strong_count() > 0);
        if let Some(value) = values.get(&key).and_then(Weak::upgrade) {
            return value;
        }
        let value = Arc::new(V::default());
        values.insert(key, Arc::downgrade(&value));
        value
    }

    /// The key's value, if someone holds one.
    pub(crate) fn get(&self, key: &K) -> Option<Arc<V>> {
        let values = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        values.get(key).and_then(Weak::upgrade)
    }
}

/// Runs `sql`, a `DELETE` of at most `$2` rows older than `$1` (`before_ms`), until a run
/// deletes fewer than that: no one statement holds the table for long. Returns how many.
pub(crate) async fn delete_in_batches(
    database: &shop_common::store::Database,
    sql: &'static str,
    before_ms: i64,
) -> Result<u64, sqlx::Error> {
    const BATCH: i64 = 10_000;
    let mut deleted = 0;
    loop {
        let batch = shop_common::on_db!(database, pool => sqlx::query(sql)
            .bind(before_ms)
            .bind(BATCH)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        deleted += batch;
        if batch < u64::try_from(BATCH).unwrap_or(u64::MAX) {
            return Ok(deleted);
        }
    }
}
