//! Request ids: `x-request-id`, generated when a request arrives without one, echoed in the
//! response, and carried to outbound requests made while serving it.
//!
//! [`ServerLayer`](crate::ServerLayer) sets and echoes the header with tower-http's
//! `SetRequestId` and `PropagateRequestId`, and keeps the id in a task-local for the duration
//! of the request: [`current`] reads it, and [`ClientLayer`](crate::ClientLayer) copies it into
//! every outbound request made from that task.

use std::future::Future;

use http::HeaderValue;
use http::header::HeaderName;

/// The request id header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: HeaderValue;
}

/// The id of the request being served by this task, if any.
#[must_use]
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `future` with `id` as the [`current`] request id (for work outside the server layer,
/// such as a message consumer handling one message).
pub fn scope<F: Future>(
    id: HeaderValue,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<HeaderValue, F> {
    CURRENT.scope(id, future)
}
