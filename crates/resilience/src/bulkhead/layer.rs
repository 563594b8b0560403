use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower_layer::Layer;

use super::Bulkhead;

/// Wraps services in a [`Bulkhead`]; every service made from this layer (and its clones) shares
/// the same slots.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    semaphore: Arc<Semaphore>,
    capacity: usize,
    rejected: Arc<AtomicU64>,
    max_wait: Duration,
}

impl BulkheadLayer {
    /// At most `max_concurrent` calls in flight (at least one).
    #[must_use]
    pub fn new(max_concurrent: usize) -> Self {
        let capacity = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(capacity)),
            capacity,
            rejected: Arc::default(),
            max_wait: Duration::ZERO,
        }
    }

    /// How long a caller may wait for a slot before being rejected (default zero: reject at once).
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Free slots right now.
    #[must_use]
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Slots in all: calls in flight are `capacity() - available()`.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Calls refused for want of a slot since the layer was built.
    #[must_use]
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::new(
            inner,
            self.semaphore.clone(),
            self.rejected.clone(),
            self.max_wait,
        )
    }
}
