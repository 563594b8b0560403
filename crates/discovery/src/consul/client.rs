//! The Consul agent's HTTP API: registration, TTL updates, and the health query.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use super::model::{CheckUpdate, Registration, ServiceEntry};

/// A failed Consul call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsulError {
    /// The agent could not be reached, or the connection broke.
    #[error("consul unreachable: {0}")]
    Unreachable(String),
    /// No answer within the client timeout.
    #[error("consul did not answer within {0:?}")]
    Timeout(Duration),
    /// The ACL token was refused (403).
    #[error("consul refused the ACL token: {0}")]
    Denied(String),
    /// Another error status.
    #[error("consul answered {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The body, for the log.
        body: String,
    },
    /// The answer was not the documented JSON.
    #[error("consul answered with unexpected JSON: {0}")]
    Decode(String),
    /// The configured address is not a URL.
    #[error("bad consul address {0:?}")]
    Address(String),
}

/// A health query: which instances, and whether to block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthQuery {
    /// Block until the index moves past this one (blocking query); never below 1.
    pub index: Option<u64>,
    /// How long to block at most (Consul's default is 5 minutes).
    pub wait: Option<Duration>,
    /// Only instances whose checks all pass (the node's `serfHealth` included).
    pub passing: bool,
    /// Let any server answer, not only the leader.
    pub stale: bool,
}

/// A client of one Consul agent. Cheap to clone.
#[derive(Clone)]
pub struct ConsulClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ConsulClient {
    /// A client of the agent at `address` (`http://127.0.0.1:8500`, or `127.0.0.1:8500`).
    ///
    /// # Errors
    ///
    /// [`ConsulError::Address`] when `address` is not an HTTP URL.
    pub fn new(address: &str) -> Result<Self, ConsulError> {
        let base = if address.contains("://") {
            address.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", address.trim_end_matches('/'))
        };
        let uri: Uri = base
            .parse()
            .map_err(|_| ConsulError::Address(address.to_owned()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ConsulError::Address(address.to_owned()));
        }
        Ok(Self {
            base,
            token: None,
            http: Client::builder(TokioExecutor::new()).build_http(),
            timeout: Duration::from_secs(10),
        })
    }

    /// The agent of `CONSUL_HTTP_ADDR` with the token of `CONSUL_HTTP_TOKEN`; `None` when
    /// `CONSUL_HTTP_ADDR` is unset, and [`ConsulError::Address`] inside when it is not an HTTP
    /// address.
    #[must_use]
    pub fn from_env() -> Option<Result<Self, ConsulError>> {
        let address = std::env::var("CONSUL_HTTP_ADDR")
            .ok()
            .filter(|a| !a.trim().is_empty())?;
        Some(
            Self::new(&address).map(|client| match std::env::var("CONSUL_HTTP_TOKEN") {
                Ok(token) if !token.is_empty() => client.token(token),
                _ => client,
            }),
        )
    }

    /// Sends `X-Consul-Token` with every call.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The timeout of calls that do not block (default 10 s). A blocking query waits its
    /// `wait` plus `wait / 16` (Consul's jitter) plus this.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), ConsulError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.base));
        if let Some(token) = &self.token {
            request = request.header("x-consul-token", token);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ConsulError::Address(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| ConsulError::Unreachable(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| ConsulError::Unreachable(e.to_string()))?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        let (status, headers, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ConsulError::Timeout(timeout))??;
        match status {
            s if s.is_success() => Ok((status, headers, body)),
            StatusCode::FORBIDDEN => Err(ConsulError::Denied(
                String::from_utf8_lossy(&body).into_owned(),
            )),
            s => Err(ConsulError::Status {
                status: s.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            }),
        }
    }

    async fn put(&self, path: &str, body: Option<&impl Serialize>) -> Result<(), ConsulError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ConsulError::Decode(e.to_string()))?;
        self.call(Method::PUT, path, body, self.timeout)
            .await
            .map(drop)
    }

    /// Registers a service instance with the agent (`PUT /v1/agent/service/register`).
    ///
    /// # Errors
    ///
    /// The agent refused or could not be reached.
    pub async fn register(&self, registration: &Registration) -> Result<(), ConsulError> {
        self.put("/v1/agent/service/register", Some(registration))
            .await
    }

    /// Removes a service instance (`PUT /v1/agent/service/deregister/:id`).
    ///
    /// # Errors
    ///
    /// The agent refused or could not be reached.
    pub async fn deregister(&self, service_id: &str) -> Result<(), ConsulError> {
        self.put(
            &format!("/v1/agent/service/deregister/{}", encode(service_id)),
            None::<&()>,
        )
        .await
    }

    /// Reports a TTL check's status (`PUT /v1/agent/check/update/:check_id`).
    ///
    /// # Errors
    ///
    /// The agent refused or could not be reached.
    pub async fn update_check(
        &self,
        check_id: &str,
        update: &CheckUpdate,
    ) -> Result<(), ConsulError> {
        self.put(
            &format!("/v1/agent/check/update/{}", encode(check_id)),
            Some(update),
        )
        .await
    }

    /// The instances of `service` and the `X-Consul-Index` of the answer
    /// (`GET /v1/health/service/:service`).
    ///
    /// # Errors
    ///
    /// The agent refused, could not be reached, did not answer in time, or answered with
    /// something other than the documented JSON.
    pub async fn health_service(
        &self,
        service: &str,
        query: HealthQuery,
    ) -> Result<(Vec<ServiceEntry>, u64), ConsulError> {
        let mut params = Vec::new();
        if query.passing {
            params.push("passing".to_owned());
        }
        if query.stale {
            params.push("stale".to_owned());
        }
        let mut timeout = self.timeout;
        if let Some(index) = query.index {
            params.push(format!("index={}", index.max(1)));
            if let Some(wait) = query.wait {
                params.push(format!("wait={}", super::model::consul_duration(wait)));
                // Consul adds up to wait/16 of jitter before answering.
                timeout += wait + wait / 16;
            }
        }
        let path = format!(
            "/v1/health/service/{}?{}",
            encode(service),
            params.join("&")
        );
        let (_, headers, body) = self.call(Method::GET, &path, None, timeout).await?;
        let index = headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let entries =
            serde_json::from_slice(&body).map_err(|e| ConsulError::Decode(e.to_string()))?;
        Ok((entries, index))
    }
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
