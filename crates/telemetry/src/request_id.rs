//! Request ids: `x-request-id`, generated when a request arrives without one, echoed in the
//! response, and carried to outbound requests made while serving it.
//!
//! [`ServerLayer`](crate::ServerLayer) sets and echoes the header, and keeps the id in a
//! task-local for the duration of the request: [`current`] reads it, and
//! [`ClientLayer`](crate::ClientLayer) copies it into every outbound request made from that
//! task. A generated id is a UUID v4 from a fast thread-local generator: unique, not secret.

use std::future::Future;

use http::HeaderValue;
use http::header::HeaderName;
use opentelemetry::Context;
use tokio::task::futures::TaskLocalFuture;

/// The request id header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the server layer knows of the request a task is serving.
#[derive(Debug, Clone)]
pub(crate) struct RequestScope {
    pub(crate) id: HeaderValue,
    /// For a request that is not sampled (and so has no span): the trace context it passes on.
    pub(crate) unsampled: Option<Context>,
}

tokio::task_local! {
    static CURRENT: RequestScope;
}

/// The id of the request being served by this task, if any.
#[must_use]
pub fn current() -> Option<HeaderValue> {
    CURRENT
        .try_with(|scope| scope.id.clone())
        .ok()
        .filter(|id| !id.is_empty())
}

/// The trace context of the unsampled request this task serves, if it serves one.
pub(crate) fn unsampled_context() -> Option<Context> {
    CURRENT.try_with(|scope| scope.unsampled.clone()).ok()?
}

/// The id and trace id of the unsampled request this task serves, if it serves one.
#[cfg(feature = "init")]
pub(crate) fn unsampled_ids() -> Option<(HeaderValue, opentelemetry::trace::TraceId)> {
    use opentelemetry::trace::TraceContextExt;
    CURRENT
        .try_with(|scope| {
            let context = scope.unsampled.as_ref()?;
            Some((scope.id.clone(), context.span().span_context().trace_id()))
        })
        .ok()?
}

/// Runs `future` with `id` as the [`current`] request id (for work outside the server layer,
/// such as a message consumer handling one message).
pub fn scope<F: Future>(id: HeaderValue, future: F) -> impl Future<Output = F::Output> {
    scoped(
        RequestScope {
            id,
            unsampled: None,
        },
        future,
    )
}

pub(crate) fn scoped<F: Future>(
    scope: RequestScope,
    future: F,
) -> TaskLocalFuture<RequestScope, F> {
    CURRENT.scope(scope, future)
}

pub(crate) fn sync_scoped<R>(scope: RequestScope, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(scope, f)
}

/// A new request id: a UUID v4.
pub(crate) fn generate() -> HeaderValue {
    let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_ne_bytes()).into_uuid();
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid.hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}
