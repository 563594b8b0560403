//! Where carts live: [`RedisCarts`] in production (a hash per cart), [`MemoryCarts`] on the
//! embedded default; both behind [`CartStore`], both expiring a cart [`CART_TTL`] after its
//! last write.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use moka::ops::compute::Op;
use redis::aio::ConnectionManager;

/// How long a cart lives after its last write (the seeds: 7 days).
pub const CART_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How many orders a cart remembers having given its lines to (so that a confirmation
/// delivered again takes nothing twice).
const ORDERS_REMEMBERED: usize = 64;

/// A cart's lines: each product's quantity, by product id.
pub type Lines = BTreeMap<String, u32>;

/// The store failed.
#[derive(Debug, thiserror::Error)]
#[error("the cart store: {0}")]
pub struct CartError(String);

impl From<redis::RedisError> for CartError {
    fn from(error: redis::RedisError) -> Self {
        Self(error.to_string())
    }
}

/// What [`CartStore::set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// The line holds the quantity now.
    Done,
    /// The line holds the quantity now, and the cart was empty before: it starts a cart.
    Started,
    /// The cart already holds `max_lines` other products: nothing changed.
    Full,
}

/// One cart per user.
#[async_trait]
pub trait CartStore: Send + Sync + 'static {
    /// The user's cart (empty when they have none, or it expired).
    async fn lines(&self, user: &str) -> Result<Lines, CartError>;

    /// Sets the quantity of `product` in the user's cart, unless that would make it hold more
    /// than `max_lines` products; refreshes the cart's time to live.
    async fn set(
        &self,
        user: &str,
        product: &str,
        quantity: u32,
        max_lines: usize,
    ) -> Result<Set, CartError>;

    /// Takes `product` out of the user's cart; whether it was there.
    async fn remove(&self, user: &str, product: &str) -> Result<bool, CartError>;

    /// Empties the user's cart.
    async fn clear(&self, user: &str) -> Result<(), CartError>;

    /// Takes what the order `order_id` bought out of the user's cart, once per order (a
    /// confirmation delivered again takes nothing more): each product's quantity lowered by
    /// what was ordered, the line gone at zero. What the user added meanwhile stays.
    async fn ordered(&self, user: &str, order_id: &str, bought: &Lines) -> Result<(), CartError>;
}

#[async_trait]
impl<S: CartStore + ?Sized> CartStore for Arc<S> {
    async fn lines(&self, user: &str) -> Result<Lines, CartError> {
        (**self).lines(user).await
    }
    async fn set(
        &self,
        user: &str,
        product: &str,
        quantity: u32,
        max_lines: usize,
    ) -> Result<Set, CartError> {
        (**self).set(user, product, quantity, max_lines).await
    }
    async fn remove(&self, user: &str, product: &str) -> Result<bool, CartError> {
        (**self).remove(user, product).await
    }
    async fn clear(&self, user: &str) -> Result<(), CartError> {
        (**self).clear(user).await
    }
    async fn ordered(&self, user: &str, order_id: &str, bought: &Lines) -> Result<(), CartError> {
        (**self).ordered(user, order_id, bought).await
    }
}

/// A cart in memory: its lines and the orders that took from it.
#[derive(Debug, Clone, Default)]
struct Cart {
    lines: Lines,
    orders: VecDeque<String>,
}

/// Carts in this process's memory (the embedded default): bounded in number, each gone
/// [`CART_TTL`] after its last write, as in Redis. Every change of one cart is atomic.
#[derive(Clone)]
pub struct MemoryCarts {
    carts: moka::sync::Cache<String, Arc<Cart>>,
}

impl std::fmt::Debug for MemoryCarts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCarts")
            .field("carts", &self.carts.entry_count())
            .finish()
    }
}

impl MemoryCarts {
    /// At most `capacity` carts (the least recently used leave first), each living `ttl`
    /// after its last write.
    #[must_use]
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            carts: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Applies `change` to the user's cart atomically (an empty cart is removed; `None`:
    /// nothing changed); what it returned.
    fn change<T>(&self, user: &str, change: impl FnOnce(&mut Cart) -> Option<T>) -> Option<T> {
        let mut result = None;
        self.carts.entry(user.to_owned()).and_compute_with(|entry| {
            let mut cart = entry
                .map(|entry| (*entry.into_value()).clone())
                .unwrap_or_default();
            match change(&mut cart) {
                None => Op::Nop,
                Some(value) => {
                    result = Some(value);
                    if cart.lines.is_empty() && cart.orders.is_empty() {
                        Op::Remove
                    } else {
                        Op::Put(Arc::new(cart))
                    }
                }
            }
        });
        result
    }
}

impl Default for MemoryCarts {
    fn default() -> Self {
        Self::new(1_000_000, CART_TTL)
    }
}

#[async_trait]
impl CartStore for MemoryCarts {
    async fn lines(&self, user: &str) -> Result<Lines, CartError> {
        Ok(self
            .carts
            .get(user)
            .map(|cart| cart.lines.clone())
            .unwrap_or_default())
    }

    async fn set(
        &self,
        user: &str,
        product: &str,
        quantity: u32,
        max_lines: usize,
    ) -> Result<Set, CartError> {
        let done = self.change(user, |cart| {
            if !cart.lines.contains_key(product) && cart.lines.len() >= max_lines {
                return None;
            }
            let started = cart.lines.is_empty();
            cart.lines.insert(product.to_owned(), quantity);
            Some(started)
        });
        Ok(match done {
            Some(true) => Set::Started,
            Some(false) => Set::Done,
            None => Set::Full,
        })
    }

    async fn remove(&self, user: &str, product: &str) -> Result<bool, CartError> {
        Ok(self
            .change(user, |cart| cart.lines.remove(product))
            .is_some())
    }

    async fn clear(&self, user: &str) -> Result<(), CartError> {
        self.change(user, |cart| {
            cart.lines.clear();
            Some(())
        });
        Ok(())
    }

    async fn ordered(&self, user: &str, order_id: &str, bought: &Lines) -> Result<(), CartError> {
        self.change(user, |cart| {
            if cart.orders.iter().any(|seen| seen == order_id) {
                return None;
            }
            take(&mut cart.lines, bought);
            if cart.orders.len() == ORDERS_REMEMBERED {
                cart.orders.pop_front();
            }
            cart.orders.push_back(order_id.to_owned());
            Some(())
        });
        Ok(())
    }
}

/// Lowers each of `lines` by what `bought` holds of it, removing those that reach zero.
fn take(lines: &mut Lines, bought: &Lines) {
    for (product, quantity) in bought {
        if let Some(held) = lines.get_mut(product) {
            *held = held.saturating_sub(*quantity);
            if *held == 0 {
                lines.remove(product);
            }
        }
    }
}

/// Sets a line unless the cart would hold more than `ARGV[3]` products, and refreshes the
/// cart's TTL. `KEYS[1]`: the cart; `ARGV`: product, quantity, most lines, TTL in seconds.
/// Returns 0 (full), 1 (set) or 2 (set, and the cart was empty).
const SET: &str = r"
local held = redis.call('HLEN', KEYS[1])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and held >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if held == 0 then
  return 2
end
return 1
";

/// Takes an order's lines out of a cart once per order. `KEYS[1]`: the cart, `KEYS[2]`: the
/// marker of that order; `ARGV`: TTL in seconds, then product and quantity pairs.
const ORDERED: &str = r"
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) == false then
  return 0
end
for i = 2, #ARGV - 1, 2 do
  local held = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local left = held - tonumber(ARGV[i + 1])
  if left > 0 then
    redis.call('HSET', KEYS[1], ARGV[i], left)
  elseif held > 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 1
";

/// Carts in Redis (production): a hash per cart, `<prefix>:cart:<user>`, product → quantity,
/// expiring [`CART_TTL`] after its last write. Each change is one atomic script.
#[derive(Clone)]
pub struct RedisCarts {
    connection: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for RedisCarts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCarts")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisCarts {
    /// Connects to Redis at `url`; keys start with `prefix`, carts live `ttl` after their
    /// last write.
    ///
    /// # Errors
    ///
    /// The URL is not one, or Redis cannot be reached.
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<Self, CartError> {
        let client = redis::Client::open(url)?;
        let connection = ConnectionManager::new(client).await?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            ttl,
        })
    }

    /// The prefix of its keys.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, user: &str) -> String {
        format!("{}:cart:{user}", self.prefix)
    }

    fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(1)
    }
}

#[async_trait]
impl CartStore for RedisCarts {
    async fn lines(&self, user: &str) -> Result<Lines, CartError> {
        let raw: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key(user))
            .query_async(&mut self.connection.clone())
            .await?;
        // A field that is not a positive quantity (written by something else) is not a line.
        Ok(raw
            .into_iter()
            .filter_map(|(product, quantity)| {
                quantity
                    .parse::<u32>()
                    .ok()
                    .filter(|quantity| *quantity > 0)
                    .map(|quantity| (product, quantity))
            })
            .collect())
    }

    async fn set(
        &self,
        user: &str,
        product: &str,
        quantity: u32,
        max_lines: usize,
    ) -> Result<Set, CartError> {
        let done: i64 = redis::cmd("EVAL")
            .arg(SET)
            .arg(1)
            .arg(self.key(user))
            .arg(product)
            .arg(quantity)
            .arg(max_lines)
            .arg(self.ttl_secs())
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(match done {
            2 => Set::Started,
            1 => Set::Done,
            _ => Set::Full,
        })
    }

    async fn remove(&self, user: &str, product: &str) -> Result<bool, CartError> {
        let removed: i64 = redis::cmd("HDEL")
            .arg(self.key(user))
            .arg(product)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(removed == 1)
    }

    async fn clear(&self, user: &str) -> Result<(), CartError> {
        let _: i64 = redis::cmd("DEL")
            .arg(self.key(user))
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    async fn ordered(&self, user: &str, order_id: &str, bought: &Lines) -> Result<(), CartError> {
        let mut script = redis::cmd("EVAL");
        script
            .arg(ORDERED)
            .arg(2)
            .arg(self.key(user))
            .arg(format!("{}:ordered:{order_id}", self.prefix))
            .arg(self.ttl_secs());
        for (product, quantity) in bought {
            script.arg(product).arg(quantity);
        }
        let _: i64 = script.query_async(&mut self.connection.clone()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_an_order_lowers_lines_and_drops_those_at_zero() {
        let mut lines = Lines::from([("mug".to_owned(), 3), ("tea".to_owned(), 1)]);
        let bought = Lines::from([
            ("mug".to_owned(), 2),
            ("tea".to_owned(), 5),
            ("pen".to_owned(), 1),
        ]);
        take(&mut lines, &bought);
        assert_eq!(lines, Lines::from([("mug".to_owned(), 1)]));
    }
}
