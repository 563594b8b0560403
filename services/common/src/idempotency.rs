//! `Idempotency-Key` for `POST` and `PATCH` (draft-ietf-httpapi-idempotency-key-header), as a
//! layer every service with a database runs ([`Kit::with_idempotency`](crate::Kit::with_idempotency)).
//!
//! A client (or the gateway's retry) that sends a request again with the same key gets the
//! first answer again, marked `Idempotent-Replayed: true`, and the handler runs once:
//!
//! * the key is scoped to the method, the target and the `Authorization` header, so one caller
//!   can never read another's answer by guessing its key;
//! * the same key with another request body is `422`; while the first request runs, the same
//!   key is `409` with `Retry-After: 1`;
//! * answers that say nothing final (`5xx`, `401`, `403`, `408`, `409`, `425`, `429`) are not
//!   kept: the client may try again;
//! * once claimed, the request runs to its end even if the caller goes away (a gateway's
//!   attempt timeout, a closed connection), so that a retry finds its answer rather than a key
//!   left claimed by a request stopped halfway; such requests are bounded
//!   ([`IdempotencyLayer::max_running`], `KEYED_MAX_RUNNING`: `503` beyond it) and graceful
//!   shutdown waits for them ([`IdempotencyLayer::finished`]);
//! * answers are kept for 24 hours, **sealed**: encrypted (AES-256-GCM) under a key derived from
//!   the idempotency key and the request body, neither of which is stored, so the table never
//!   holds a readable response (a refresh's new tokens, say);
//! * a key is 1 to 255 visible ASCII characters (`400` otherwise); it should be unguessable
//!   (a UUID v4, as the draft recommends), since callers without `Authorization` share one
//!   scope; a body larger than the
//!   service's body limit is `413` before anything is stored;
//! * if the database cannot be asked, the request is refused with `503` rather than run
//!   without the guarantee.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::digest::{self, SHA256};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either};
use http::header::{AUTHORIZATION, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body::Body as _;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument as _;

use crate::Problem;
use crate::seal::SealKey;
use crate::store::{Database, StoreError};

/// The request header.
pub use mainstay_resilience::http::IDEMPOTENCY_KEY;

/// The response header that marks an answer given again.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What a request's key finds in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new (or its earlier request died): this request runs.
    Claimed,
    /// A request with this key is running now.
    InProgress,
    /// The key was used with another request.
    Mismatch,
    /// The key's answer, sealed.
    Done(Vec<u8>),
}

/// Keys and their sealed answers, in the service's database.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `id` for a request with `fingerprint` at `now_ms`; a claim older than
    /// `stale_before_ms` whose request never finished is taken over.
    async fn claim(
        &self,
        id: &str,
        fingerprint: &str,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<Claim, StoreError>;

    /// Keeps the sealed answer of the request that claimed `id` at `claimed_at_ms`; nothing is
    /// written when that claim was taken over since (its request outran it).
    async fn complete(&self, id: &str, claimed_at_ms: i64, sealed: &[u8])
    -> Result<(), StoreError>;

    /// Gives up the claim of `id` made at `claimed_at_ms`, whose answer is not kept, so that
    /// the key can be used again; a claim taken over since is left to its new holder.
    async fn release(&self, id: &str, claimed_at_ms: i64) -> Result<(), StoreError>;

    /// Forgets every key claimed before `before_ms`; returns how many.
    async fn prune(&self, before_ms: i64) -> Result<u64, StoreError>;
}

/// [`IdempotencyStore`] on the service's database (either dialect), in the kit's
/// `kit_idempotency` table (see [`Database::migrate_kit`]).
#[derive(Debug, Clone)]
pub struct SqlIdempotency {
    database: Database,
}

impl SqlIdempotency {
    /// The store on `database`, whose kit migrations have run.
    #[must_use]
    pub fn new(database: Database) -> Self {
        Self { database }
    }
}

#[async_trait]
impl IdempotencyStore for SqlIdempotency {
    async fn claim(
        &self,
        id: &str,
        fingerprint: &str,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<Claim, StoreError> {
        // Twice at most: a row released between the insert and the read is claimed anew.
        for _ in 0..2 {
            let inserted = crate::on_db!(&self.database, pool => sqlx::query(
                "INSERT INTO kit_idempotency (id, fingerprint, response, created_at_ms) \
                 VALUES ($1, $2, NULL, $3) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(fingerprint)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected());
            if inserted == 1 {
                return Ok(Claim::Claimed);
            }
            let row: Option<(String, Option<Vec<u8>>, i64)> = crate::on_db!(&self.database, pool => sqlx::query_as(
                "SELECT fingerprint, response, created_at_ms FROM kit_idempotency WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?);
            let Some((stored, response, created_at_ms)) = row else {
                continue;
            };
            if stored != fingerprint {
                return Ok(Claim::Mismatch);
            }
            if let Some(sealed) = response {
                return Ok(Claim::Done(sealed));
            }
            if created_at_ms >= stale_before_ms {
                return Ok(Claim::InProgress);
            }
            // The request that claimed it died: take it over, unless another did first.
            let taken = crate::on_db!(&self.database, pool => sqlx::query(
                "UPDATE kit_idempotency SET created_at_ms = $1 \
                 WHERE id = $2 AND response IS NULL AND created_at_ms = $3",
            )
            .bind(now_ms)
            .bind(id)
            .bind(created_at_ms)
            .execute(pool)
            .await?
            .rows_affected());
            return Ok(if taken == 1 {
                Claim::Claimed
            } else {
                Claim::InProgress
            });
        }
        Ok(Claim::InProgress)
    }

    async fn complete(
        &self,
        id: &str,
        claimed_at_ms: i64,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        crate::on_db!(&self.database, pool => sqlx::query(
            "UPDATE kit_idempotency SET response = $1 \
             WHERE id = $2 AND created_at_ms = $3 AND response IS NULL",
        )
        .bind(sealed)
        .bind(id)
        .bind(claimed_at_ms)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    async fn release(&self, id: &str, claimed_at_ms: i64) -> Result<(), StoreError> {
        crate::on_db!(&self.database, pool => sqlx::query(
            "DELETE FROM kit_idempotency \
             WHERE id = $1 AND created_at_ms = $2 AND response IS NULL",
        )
        .bind(id)
        .bind(claimed_at_ms)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    async fn prune(&self, before_ms: i64) -> Result<u64, StoreError> {
        Ok(crate::on_db!(&self.database, pool => sqlx::query(
            "DELETE FROM kit_idempotency WHERE created_at_ms < $1",
        )
        .bind(before_ms)
        .execute(pool)
        .await?
        .rows_affected()))
    }
}

/// How long answers are kept.
const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Old keys are pruned once per this many claims.
const PRUNE_EVERY: u64 = 256;
/// The largest answer kept; a larger one is passed on and its key released.
const MAX_ANSWER: usize = 1 << 20;

/// Applies `Idempotency-Key` to the routes it wraps; see the [module docs](self).
#[derive(Clone)]
pub struct IdempotencyLayer {
    store: Arc<dyn IdempotencyStore>,
    body_limit: usize,
    /// A claim older than this whose request never finished is taken over.
    in_progress_for: Duration,
    claims: Arc<AtomicU64>,
    /// A permit per keyed request running, held to its end even when its caller has gone.
    running: Arc<Semaphore>,
    /// The keyed requests' tasks, which shutdown waits for.
    tasks: TaskTracker,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("body_limit", &self.body_limit)
            .field("in_progress_for", &self.in_progress_for)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// Keys in `store`; request bodies up to `body_limit` bytes; a request still running after
    /// `in_progress_for` is taken to have died (set it above the service's request timeout).
    #[must_use]
    pub fn new(
        store: Arc<dyn IdempotencyStore>,
        body_limit: usize,
        in_progress_for: Duration,
    ) -> Self {
        Self {
            store,
            body_limit,
            in_progress_for,
            claims: Arc::new(AtomicU64::new(0)),
            running: Arc::new(Semaphore::new(256)),
            tasks: TaskTracker::new(),
        }
    }

    /// At most `max` keyed requests running at once (default 256), counting those whose
    /// caller went away: the server's timeout and load shedding stop at the caller, so this
    /// bounds the work that goes on without one. Beyond it, 503 with `Retry-After`, before
    /// anything is claimed.
    #[must_use]
    pub fn max_running(mut self, max: usize) -> Self {
        self.running = Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS)));
        self
    }

    /// Completes when no keyed request is running. Graceful shutdown waits on it after the
    /// server stops, so that a request whose caller left is not cut off halfway with its key
    /// claimed. (Closing the tracker only lets `wait` finish; requests are still admitted and
    /// tracked, so calling this twice, or at once from two places, is safe.)
    pub async fn finished(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            layer: self.clone(),
        }
    }
}

/// The middleware made by [`IdempotencyLayer`].
#[derive(Clone, Debug)]
pub struct Idempotency<S> {
    inner: S,
    layer: IdempotencyLayer,
}

impl<S> Service<Request<Body>> for Idempotency<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let keyed = matches!(*request.method(), Method::POST | Method::PATCH)
            && request.headers().contains_key(&IDEMPOTENCY_KEY);
        if !keyed {
            return Either::Left(self.inner.call(request));
        }
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        Either::Right(Box::pin(async move {
            Ok(keyed_call(inner, &layer, request).await)
        }))
    }
}

/// A valid key: 1 to 255 visible ASCII characters.
fn valid_key(value: &HeaderValue) -> Option<&[u8]> {
    let key = value.as_bytes();
    let visible = key.iter().all(|b| (0x21..=0x7e).contains(b));
    (!key.is_empty() && key.len() <= 255 && visible).then_some(key)
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut context = digest::Context::new(&SHA256);
    for part in parts {
        // Length-prefixed, so that no two different lists of parts hash alike.
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

async fn keyed_call<S>(inner: S, layer: &IdempotencyLayer, request: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let (parts, body) = request.into_parts();
    let Some(key) = parts.headers.get(&IDEMPOTENCY_KEY).and_then(valid_key) else {
        return Problem::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters")
            .into_response();
    };
    let key = key.to_vec();
    let Ok(bytes) = axum::body::to_bytes(body, layer.body_limit).await else {
        return Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
            .detail(format!(
                "the request body is larger than {} bytes",
                layer.body_limit
            ))
            .into_response();
    };
    let method = parts.method.as_str().as_bytes();
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), http::uri::PathAndQuery::as_str)
        .as_bytes();
    let credentials = parts
        .headers
        .get(AUTHORIZATION)
        .map_or(&b""[..], HeaderValue::as_bytes);
    let id = hex(&sha256(&[b"id", method, target, credentials, &key]));
    // Keyed by the idempotency key and the caller too: the table never holds a plain digest
    // of a body (a sign-in's password) that a dictionary could be run against.
    let fingerprint = hex(&sha256(&[
        b"fingerprint",
        &key,
        credentials,
        method,
        target,
        &bytes,
    ]));
    let seal = sealing_key(&key, method, target, &bytes);

    // Held by the request's task to its end, caller or not.
    let Ok(running) = layer.running.clone().try_acquire_owned() else {
        tracing::warn!("too many keyed requests running: refused");
        return unavailable("too many requests with an Idempotency-Key are running");
    };
    // The claim's clock and the handler's bound start together: a retry may take the claim
    // over only once this request can no longer be running.
    let now = crate::unix_millis();
    let claimed_at = tokio::time::Instant::now();
    let stale_before = now - i64::try_from(layer.in_progress_for.as_millis()).unwrap_or(i64::MAX);
    if layer
        .claims
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(PRUNE_EVERY)
    {
        // Beside the request, not in front of it.
        let store = layer.store.clone();
        let before = now - i64::try_from(RETENTION.as_millis()).unwrap_or(i64::MAX);
        tokio::spawn(async move {
            if let Err(error) = store.prune(before).await {
                tracing::warn!(%error, "cannot prune old idempotency keys");
            }
        });
    }
    let claim = match layer
        .store
        .claim(&id, &fingerprint, now, stale_before)
        .await
    {
        Ok(claim) => claim,
        Err(error) => {
            tracing::error!(%error, "cannot check an Idempotency-Key");
            return unavailable("the Idempotency-Key cannot be checked now");
        }
    };
    match claim {
        Claim::Claimed => {}
        Claim::InProgress => {
            let mut response = Problem::new(StatusCode::CONFLICT)
                .detail("a request with this Idempotency-Key is still being processed")
                .into_response();
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Claim::Mismatch => {
            return Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
                .detail("this Idempotency-Key was used with another request")
                .into_response();
        }
        Claim::Done(sealed) => {
            return match open(&seal, &sealed).and_then(|plain| decode(&plain)) {
                Some(mut response) => {
                    response
                        .headers_mut()
                        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                    response
                }
                None => {
                    tracing::error!("a kept answer cannot be opened");
                    Problem::internal(&std::io::Error::other("unreadable idempotent answer"))
                        .into_response()
                }
            };
        }
    }

    // The handler runs to its end in a task of its own, even if the caller goes away (a
    // gateway's attempt timeout, a closed connection): its answer is kept for the retry, and
    // the key is never left claimed by a request that stopped halfway.
    let request = Request::from_parts(parts, Body::from(bytes));
    let store = layer.store.clone();
    let bound = layer.in_progress_for;
    let task = layer.tasks.spawn(
        async move {
            let _running = running;
            let claim = (id.as_str(), now);
            let running = run(inner, &*store, claim, &seal, request);
            match tokio::time::timeout_at(claimed_at + bound, running).await {
                Ok(response) => response,
                Err(_) => {
                    // The claim is stale now: a retry takes it over.
                    tracing::error!(?bound, "a keyed request outran its claim");
                    Problem::new(StatusCode::GATEWAY_TIMEOUT)
                        .detail("the request took too long")
                        .into_response()
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
    task.await.unwrap_or_else(|error| {
        // A panic in the handler: the claim is left to go stale, as its effect is unknown.
        tracing::error!(%error, "a keyed request failed");
        Problem::internal(&std::io::Error::other("the request failed")).into_response()
    })
}

/// Runs the claimed request and keeps its answer if it is final.
async fn run<S>(
    mut inner: S,
    store: &dyn IdempotencyStore,
    (id, claimed_at_ms): (&str, i64),
    seal: &[u8; 32],
    request: Request<Body>,
) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    let Ok(service) = inner.ready().await;
    let Ok(response) = service.call(request).await;
    let status = response.status();
    let fits = response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| usize::try_from(n).is_ok_and(|n| n <= MAX_ANSWER));
    if !final_answer(status) || !fits {
        if let Err(error) = store.release(id, claimed_at_ms).await {
            tracing::warn!(%error, "cannot release an Idempotency-Key");
        }
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_ANSWER).await else {
        if let Err(error) = store.release(id, claimed_at_ms).await {
            tracing::warn!(%error, "cannot release an Idempotency-Key");
        }
        return Problem::new(StatusCode::BAD_GATEWAY)
            .detail("the answer broke off")
            .into_response();
    };
    let response = Response::from_parts(parts, Body::from(body.clone()));
    if let Some(sealed) = seal_answer(seal, &response, &body)
        && let Err(error) = store.complete(id, claimed_at_ms, &sealed).await
    {
        // The effect happened: the answer goes out; a retry waits for the claim to go stale.
        tracing::error!(%error, "cannot keep an idempotent answer");
    }
    response
}

/// Whether an answer is final: kept, and given again to a retry. A refusal of the caller
/// (`401`, `403`) is not: it says who asked, not what the request did.
fn final_answer(status: StatusCode) -> bool {
    !status.is_server_error()
        && !matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::CONFLICT
                | StatusCode::TOO_EARLY
                | StatusCode::TOO_MANY_REQUESTS
        )
}

fn unavailable(detail: &str) -> Response {
    let mut response = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
        .detail(detail)
        .into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The AES-256-GCM key of an answer: derived from the idempotency key and the request, which
/// only a client that sent that request again can present.
fn sealing_key(key: &[u8], method: &[u8], target: &[u8], body: &[u8]) -> [u8; 32] {
    sha256(&[b"seal", key, method, target, body])
}

fn seal_answer(key: &[u8; 32], response: &Response, body: &[u8]) -> Option<Vec<u8>> {
    let plain = encode(response, body);
    Some(SealKey::from_bytes(key).ok()?.seal(&plain, b""))
}

fn open(key: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
    SealKey::from_bytes(key).ok()?.open(sealed, b"").ok()
}

/// Headers an answer is given again without: they describe the first exchange only.
fn kept_header(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "date" | "set-cookie" | "x-request-id" | "traceparent" | "ratelimit" | "ratelimit-policy"
    )
}

/// `status (2) | header count (2) | (name length (2) name value length (2) value)* | body`.
fn encode(response: &Response, body: &[u8]) -> Vec<u8> {
    let headers: Vec<(&HeaderName, &HeaderValue)> = response
        .headers()
        .iter()
        .filter(|(name, _)| kept_header(name))
        .filter(|(name, value)| name.as_str().len() <= 0xffff && value.len() <= 0xffff)
        .take(0xffff)
        .collect();
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(&response.status().as_u16().to_be_bytes());
    out.extend_from_slice(&(headers.len() as u16).to_be_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(body);
    out
}

fn decode(bytes: &[u8]) -> Option<Response> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    fn number(bytes: &mut &[u8]) -> Option<usize> {
        let raw = take(bytes, 2)?;
        Some(usize::from(u16::from_be_bytes([raw[0], raw[1]])))
    }
    let mut bytes = bytes;
    let status = StatusCode::from_u16(u16::try_from(number(&mut bytes)?).ok()?).ok()?;
    let count = number(&mut bytes)?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    for _ in 0..count {
        let length = number(&mut bytes)?;
        let name = HeaderName::from_bytes(take(&mut bytes, length)?).ok()?;
        let length = number(&mut bytes)?;
        let value = HeaderValue::from_bytes(take(&mut bytes, length)?).ok()?;
        response.headers_mut().append(name, value);
    }
    *response.body_mut() = Body::from(bytes.to_vec());
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_seal_and_open_with_the_same_request_only() {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::CREATED;
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        response
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static("first"));
        let key = sealing_key(b"k1", b"POST", b"/products", br#"{"name":"kettle"}"#);
        let sealed = seal_answer(&key, &response, br#"{"id":"p1"}"#).unwrap();
        assert!(
            !sealed.windows(4).any(|w| w == b"p1\"}"),
            "the answer is stored readable"
        );

        let opened = decode(&open(&key, &sealed).unwrap()).unwrap();
        assert_eq!(opened.status(), StatusCode::CREATED);
        assert_eq!(opened.headers()["content-type"], "application/json");
        assert!(!opened.headers().contains_key("x-request-id"));

        let other = sealing_key(b"k1", b"POST", b"/products", br#"{"name":"teapot"}"#);
        assert!(open(&other, &sealed).is_none());
    }

    #[test]
    fn keys_are_bounded_visible_ascii() {
        assert!(valid_key(&HeaderValue::from_static("order-2026-12-03-0001")).is_some());
        assert!(valid_key(&HeaderValue::from_static("")).is_none());
        assert!(valid_key(&HeaderValue::from_static("has space")).is_none());
        let long = HeaderValue::from_str(&"k".repeat(256)).unwrap();
        assert!(valid_key(&long).is_none());
    }

    #[test]
    fn a_truncated_answer_decodes_to_nothing() {
        let response = Response::new(Body::empty());
        let encoded = encode(&response, b"body");
        for cut in 0..4 {
            assert!(decode(&encoded[..cut]).is_none(), "{cut}");
        }
    }
}
