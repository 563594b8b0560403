//! Helpers shared by the mainstay workspace's tests and benchmarks. Not published.
//!
//! * [`CountingAllocator`]: a global allocator that counts allocations per thread, so a test or a
//!   benchmark can assert how many heap allocations a call makes.
//! * `consul` (feature `consul`): a Consul agent for tests.
//! * `redis` (feature `redis`): waiting for pub/sub subscribers.
//! * [`promtool`]: `promtool check metrics` on an exposition.

#[cfg(feature = "consul")]
pub mod consul;
pub mod promtool;
#[cfg(feature = "redis")]
pub mod redis;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // `const` initialisation: reading it never allocates, which an allocator requires.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Forwards to the system allocator and counts allocations made by the current thread.
///
/// Install it in a test or bench binary:
///
/// ```
/// use mainstay_test_support::CountingAllocator;
///
/// #[global_allocator]
/// static ALLOC: CountingAllocator = CountingAllocator;
///
/// fn main() {
///     let (_, allocations) = CountingAllocator::count(|| vec![1u8; 16]);
///     assert_eq!(allocations, 1);
/// }
/// ```
///
/// The counter is thread-local, so two threads measuring at once do not contend or see each
/// other's allocations.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

impl CountingAllocator {
    /// Allocations (including reallocations) made by this thread so far.
    #[must_use]
    pub fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }

    /// Runs `f` and returns its result with the number of allocations it made on this thread.
    pub fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
        let before = Self::allocations();
        let result = f();
        (result, Self::allocations() - before)
    }
}

fn bump() {
    // `try_with` so an allocation during thread teardown (after the slot is destroyed) is
    // forwarded without being counted instead of panicking.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every method forwards to `System` with exactly the arguments it received, so each
// contract of `GlobalAlloc` (layout validity, pointer provenance, size/alignment on dealloc and
// realloc) is upheld by `System` itself. The only extra work is a thread-local `Cell` update,
// which neither allocates (const-initialised) nor unwinds, so it cannot re-enter the allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: `ptr` came from `System` through this allocator with this `layout`; the caller
        // upholds `realloc`'s contract for `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
