//! Errors returned by the bulkhead.

/// The bulkhead had no free slot within its wait time; the call was not sent.
///
/// A local rejection (see [`crate::rejection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, thiserror::Error)]
#[error("bulkhead full")]
pub struct Full {
    pub(crate) _private: (),
}

impl Full {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    pub(crate) fn rejection(self) -> crate::rejection::LocalRejection {
        crate::rejection::LocalRejection {
            kind: crate::rejection::RejectionKind::BulkheadFull,
            retry_after: None,
        }
    }
}
