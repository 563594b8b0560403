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

/// The request's deadline passed, either while it ran or before it started (in which case the
/// inner service was never called).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, thiserror::Error)]
#[error("request deadline exceeded")]
pub struct DeadlineExceeded {
    _private: (),
}

impl DeadlineExceeded {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }
}
