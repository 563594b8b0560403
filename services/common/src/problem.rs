//! RFC 9457 problem details, and the JSON extractor whose rejections are problems too.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem: the body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// A URI naming the problem type; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// The status's reason phrase, or a short summary of the type.
    pub title: String,
    /// The HTTP status.
    #[serde(serialize_with = "serialize_status")]
    pub status: StatusCode,
    /// What went wrong with this request, for a person to read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extension members (`"errors"`, `"reason"`, …).
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    /// A problem of type `about:blank` with the status's reason phrase as title.
    #[must_use]
    pub fn new(status: StatusCode) -> Self {
        Self {
            type_uri: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status,
            detail: None,
            extensions: Map::new(),
        }
    }

    /// Status 400, with `detail`.
    #[must_use]
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST).detail(detail)
    }

    /// Status 404, with `detail`.
    #[must_use]
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND).detail(detail)
    }

    /// Status 409, with `detail`.
    #[must_use]
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT).detail(detail)
    }

    /// Status 422, with `detail`.
    #[must_use]
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY).detail(detail)
    }

    /// An internal error (500). The cause is logged with the request's span (and so its request
    /// id and trace id), never sent to the client.
    #[must_use]
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Sets the detail.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the type URI and title of a problem type of this API.
    #[must_use]
    pub fn typed(mut self, type_uri: impl Into<String>, title: impl Into<String>) -> Self {
        self.type_uri = type_uri.into();
        self.title = title.into();
        self
    }

    /// Adds an extension member.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extensions.insert(name.into(), value.into());
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        // A `Problem` holds only strings, numbers and JSON values: it always serializes.
        let body = serde_json::to_string(&self).unwrap_or_default();
        (status, [(CONTENT_TYPE, PROBLEM_JSON)], body).into_response()
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

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
