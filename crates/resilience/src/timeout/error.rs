//! Errors returned by the timeout and deadline layers.

/// One attempt took longer than its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, thiserror::Error)]
#[error("request timed out")]
pub struct Elapsed {
    _private: (),
}

impl Elapsed {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }
}

/// Whether `error` or anything in its `source()` chain is a timeout or a passed deadline.
pub(crate) fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<Elapsed>() || e.is::<DeadlineExceeded>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Whether a service's error value, whatever its type, is a timeout ([`Elapsed`]) or a passed
/// deadline ([`DeadlineExceeded`]): a [`BoxError`](crate::BoxError) is searched through its
/// `source()` chain.
#[must_use]
pub fn timed_out<E: 'static>(error: &E) -> bool {
    let any: &dyn std::any::Any = error;
    if let Some(boxed) = any.downcast_ref::<crate::BoxError>() {
        return is_timeout(&**boxed);
    }
    any.is::<Elapsed>() || any.is::<DeadlineExceeded>()
}

pub use crate::deadline::DeadlineExceeded;
