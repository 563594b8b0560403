//! Atomics used by the lock-free state machines, swapped for loom's under `--cfg mainstay_loom`
//! so `tests/loom.rs` can explore every interleaving of the breaker core.

#[cfg(not(mainstay_loom))]
pub(crate) use std::sync::atomic;

#[cfg(mainstay_loom)]
pub(crate) use loom::sync::atomic;
