//! RFC 9457 problem details, and the JSON extractor whose rejections are problems too.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use mainstay_problem::{PROBLEM_JSON, Problem};

/// Field errors collected while validating a request, reported together in one problem of
/// type `/problems/validation` with an `errors` member of `{field, message}` objects.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<Value>);

impl FieldErrors {
    /// No errors yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is invalid.
    pub fn add(&mut self, field: &str, message: &str) {
        self.0
            .push(serde_json::json!({"field": field, "message": message}));
    }

    /// `Ok` when no field failed; otherwise the problem listing them, with `status` and `detail`.
    ///
    /// # Errors
    ///
    /// The problem.
    pub fn check(self, status: StatusCode, detail: &str) -> Result<(), Problem> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(Problem::new(status)
            .detail(detail)
            .typed("/problems/validation", "Invalid fields")
            .with("errors", Value::Array(self.0)))
    }
}

/// Like `axum::Json`, but a body that cannot be read answers with a problem: 400 for malformed
/// JSON, 415 for a missing `Content-Type: application/json`, 422 for JSON of the wrong shape,
/// 413 for a body over the limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(problem_of(&rejection)),
        }
    }
}

fn problem_of(rejection: &JsonRejection) -> Problem {
    let status = rejection.status();
    let detail = match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a request body with Content-Type: application/json".to_owned()
        }
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large".to_owned(),
        _ => rejection.body_text(),
    };
    Problem::new(status).detail(detail)
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
