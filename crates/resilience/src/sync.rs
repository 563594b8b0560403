//! Atomics used by the lock-free state machines, swapped for loom's in the crate's own tests
//! under `--cfg mainstay_loom`, so that the loom tests can explore every interleaving. loom is
//! a dev-dependency: it never reaches a user's `Cargo.lock`.

#[cfg(not(all(test, mainstay_loom)))]
pub(crate) use std::sync::atomic;

#[cfg(all(test, mainstay_loom))]
pub(crate) use loom::sync::atomic;

/// Keeps a value on cache lines of its own (128 bytes: x86 prefetches lines in pairs), so that a
/// word written on every call does not evict a word read on every call from other cores.
#[derive(Debug, Default)]
#[repr(align(128))]
#[cfg_attr(not(feature = "circuit-breaker"), allow(dead_code))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}
