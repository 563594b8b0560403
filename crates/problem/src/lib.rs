// The README is the front page; its examples run as doctests through `ReadmeDoctests` below.
#![cfg_attr(not(doctest), doc = include_str!("../README.md"))]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::fmt;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The media type of problem details (RFC 9457 §3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The members RFC 9457 defines; [`Problem::with`] leaves them to their own setters.
pub const STANDARD_MEMBERS: [&str; 5] = ["type", "title", "status", "detail", "instance"];

/// An RFC 9457 problem: the body of an error response.
///
/// Members are written in one order, `type`, `title`, `status`, `detail`, `instance`, then the
/// extension members by name; `detail` and `instance` only when set. Deserializing accepts any
/// problem document, so a client can read an upstream's problems with the same type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI naming the problem type; `about:blank` when the status says it all.
    #[serde(rename = "type", default = "about_blank")]
    pub type_uri: String,
    /// A short summary of the problem type: the status's reason phrase for `about:blank`.
    #[serde(default)]
    pub title: String,
    /// The HTTP status.
    #[serde(with = "status_code")]
    pub status: StatusCode,
    /// What went wrong with this occurrence, for a person to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A URI naming this occurrence. (A boxed `str`, so that a `Problem` stays small enough to
    /// be the error of a handler's `Result` without clippy's `result_large_err`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Box<str>>,
    /// Extension members (`"errors"`, `"reason"`, `"retry_after"`, …), written after the
    /// standard ones.
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

fn about_blank() -> String {
    "about:blank".to_owned()
}

mod status_code {
    use http::StatusCode;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(status.as_u16())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StatusCode, D::Error> {
        let code = u16::deserialize(d)?;
        StatusCode::from_u16(code).map_err(D::Error::custom)
    }
}

impl Problem {
    /// A problem of type `about:blank` with the status's reason phrase as its title.
    #[must_use]
    pub fn new(status: StatusCode) -> Self {
        Self {
            type_uri: about_blank(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status,
            detail: None,
            instance: None,
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

    /// An internal error (500). The cause is logged as an error event in the current span (and
    /// so with its request id and trace id), never sent to the client.
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

    /// Sets the type URI and the title of a problem type of your API
    /// (`/problems/validation`, `Invalid fields`).
    #[must_use]
    pub fn typed(mut self, type_uri: impl Into<String>, title: impl Into<String>) -> Self {
        self.type_uri = type_uri.into();
        self.title = title.into();
        self
    }

    /// Sets the URI of this occurrence.
    #[must_use]
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into().into_boxed_str());
        self
    }

    /// Adds an extension member. A standard member's name ([`STANDARD_MEMBERS`]) is ignored,
    /// so that the document never holds a name twice: use its setter.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let name = name.into();
        if !STANDARD_MEMBERS.contains(&name.as_str()) {
            self.extensions.insert(name, value.into());
        }
        self
    }

    /// The document as JSON text.
    #[must_use]
    pub fn to_json(&self) -> String {
        // Strings, a number and JSON values only, with string keys: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The problem as a response: its status, `Content-Type: application/problem+json` and the
    /// document as the body. Any body type that can be made from a `String` serves
    /// (`axum::body::Body`, `http_body_util::Full<Bytes>`, `String`).
    #[must_use]
    pub fn to_response<B: From<String>>(&self) -> Response<B> {
        let mut response = Response::new(B::from(self.to_json()));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Problem {
    fn into_response(self) -> axum_core::response::Response {
        self.to_response()
    }
}

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use http::header::CONTENT_TYPE;
    use serde_json::json;

    use super::Problem;

    #[test]
    fn a_problem_is_small_enough_for_an_err_variant() {
        assert!(size_of::<Problem>() < 128, "{}", size_of::<Problem>());
    }

    #[test]
    fn members_are_written_in_one_order_and_unset_ones_left_out() {
        let bare = Problem::new(StatusCode::SERVICE_UNAVAILABLE).to_json();
        assert_eq!(
            bare,
            r#"{"type":"about:blank","title":"Service Unavailable","status":503}"#
        );
        let full = Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
            .typed("/problems/validation", "Invalid fields")
            .detail("two fields are wrong")
            .instance("/orders/7")
            .with("zeta", 1)
            .with("errors", json!([{"field": "email"}]))
            .to_json();
        assert_eq!(
            full,
            r#"{"type":"/problems/validation","title":"Invalid fields","status":422,"detail":"two fields are wrong","instance":"/orders/7","errors":[{"field":"email"}],"zeta":1}"#
        );
    }

    #[test]
    fn an_extension_cannot_repeat_a_standard_member() {
        let problem = Problem::new(StatusCode::BAD_REQUEST)
            .with("status", 200)
            .with("type", "https://evil.example")
            .with("reason", "ok");
        let value: serde_json::Value = serde_json::from_str(&problem.to_json()).unwrap();
        assert_eq!(value["status"], 400);
        assert_eq!(value["type"], "about:blank");
        assert_eq!(problem.to_json().matches("\"status\"").count(), 1);
        assert_eq!(value["reason"], "ok");
    }

    #[test]
    fn detail_is_escaped_as_json() {
        let problem = Problem::bad_request("a \"quoted\" \\ back\nslash");
        let value: serde_json::Value = serde_json::from_str(&problem.to_json()).unwrap();
        assert_eq!(value["detail"], "a \"quoted\" \\ back\nslash");
    }

    #[test]
    fn a_response_carries_status_media_type_and_document() {
        let response = Problem::conflict("taken").to_response::<String>();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
        let back: Problem = serde_json::from_str(response.body()).unwrap();
        assert_eq!(back, Problem::conflict("taken"));
    }

    #[test]
    fn any_problem_document_reads_back() {
        let upstream = r#"{"status":429,"title":"Too Many Requests","retry_after":3}"#;
        let problem: Problem = serde_json::from_str(upstream).unwrap();
        assert_eq!(problem.type_uri, "about:blank");
        assert_eq!(problem.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(problem.extensions["retry_after"], 3);
        assert!(serde_json::from_str::<Problem>(r#"{"status":1000}"#).is_err());
    }
}
