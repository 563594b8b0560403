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

pub use crate::deadline::DeadlineExceeded;
