//! [`ResponseCacheLayer`]: a shared HTTP cache for GET and HEAD, as tower middleware.
//!
//! It stores a response only when the origin allows a shared cache to (RFC 9111): status 200,
//! `Cache-Control` with `max-age` or `s-maxage`, and none of `no-store`, `no-cache`, `private`;
//! no `Set-Cookie`; `Vary` other than `*`; for a request with `Authorization`, only with `public`
//! or `s-maxage`. It serves the stored response while fresh, and for `stale-while-revalidate`
//! seconds after while one background request refreshes it; it answers `If-None-Match` with
//! `304 Not Modified` when the stored `ETag` matches. A request with `Cache-Control: no-store`
//! or `no-cache` goes to the origin.
//!
//! A `Vary`ing response is stored with the request header values it varied on and served only
//! to requests with the same values (the last variant stored wins).
//!
//! **Writes invalidate.** An unsafe request (`POST`, `PUT`, `PATCH`, `DELETE`) passes through,
//! and once it succeeds the entries of its target and of the `Location` it answers with are
//! dropped (RFC 9111 §4.4): send a service's writes through the same layer as its reads. A read
//! that was at the origin while the write succeeded is answered but not kept, and no later read
//! joins it: it may have seen the state before the write.
//!
//! **No stampede.** Concurrent `GET` misses for one key make one origin request: the first is
//! sent, the others wait for its response and are answered from it once stored. If it cannot be
//! stored (or varies on a header they sent otherwise), each then asks the origin itself; if the
//! request that was sent is dropped, the next waiter sends its own. A `HEAD` is answered from a
//! stored `GET` response, and never stored: its empty body is not the resource's.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use mainstay_cache::http::ResponseCacheLayer;
//!
//! let app: Router = Router::new()
//!     .route("/products/{id}", get(|| async {
//!         ([("cache-control", "public, max-age=60, stale-while-revalidate=30"), ("etag", "\"v1\"")], "a product")
//!     }))
//!     .layer(ResponseCacheLayer::new(10_000));
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, ETAG, IF_NONE_MATCH, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::cache::{BoxError, Cache};

/// Names the cache entry of a request; `None` leaves the request uncached.
pub trait MakeCacheKey<B>: Send + Sync + 'static {
    /// The key of `request`.
    fn make_key(&self, request: &Request<B>) -> Option<String>;
}

/// The default key: the request's path and query (GET and HEAD share entries).
#[derive(Debug, Clone, Copy, Default)]
pub struct UriKey;

impl<B> MakeCacheKey<B> for UriKey {
    fn make_key(&self, request: &Request<B>) -> Option<String> {
        Some(request.uri().path_and_query().map_or_else(
            || request.uri().path().to_owned(),
            |pq| pq.as_str().to_owned(),
        ))
    }
}

impl<B, F> MakeCacheKey<B> for F
where
    F: Fn(&Request<B>) -> Option<String> + Send + Sync + 'static,
{
    fn make_key(&self, request: &Request<B>) -> Option<String> {
        self(request)
    }
}

/// A stored response.
struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    stored_at: Instant,
    fresh_until: Instant,
    stale_until: Instant,
    /// The [`Shared::epoch`] it was stored in: served only in that one.
    epoch: u64,
}

/// What the origin's `Cache-Control` allows.
#[derive(Debug, Default, PartialEq, Eq)]
struct Directives {
    max_age: Option<u64>,
    s_maxage: Option<u64>,
    stale_while_revalidate: Option<u64>,
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
}

fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let (name, arg) = match directive.trim().split_once('=') {
                Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            let seconds = arg.and_then(|a| a.parse::<u64>().ok());
            match name.to_ascii_lowercase().as_str() {
                "max-age" => d.max_age = seconds,
                "s-maxage" => d.s_maxage = seconds,
                "stale-while-revalidate" => d.stale_while_revalidate = seconds,
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                _ => {}
            }
        }
    }
    d
}

/// Lifetime and grace of a response a shared cache may store, or `None`.
fn storable<B>(request_had_auth: bool, response: &Response<B>) -> Option<(Duration, Duration)> {
    if response.status() != StatusCode::OK || response.headers().contains_key(SET_COOKIE) {
        return None;
    }
    if response
        .headers()
        .get_all(VARY)
        .iter()
        .any(|v| v.as_bytes().trim_ascii() == b"*")
    {
        return None;
    }
    let d = directives(response.headers());
    if d.no_store || d.no_cache || d.private {
        return None;
    }
    if request_had_auth && !(d.public || d.s_maxage.is_some()) {
        return None;
    }
    let ttl = d.s_maxage.or(d.max_age).filter(|&s| s > 0)?;
    Some((
        Duration::from_secs(ttl),
        Duration::from_secs(d.stale_while_revalidate.unwrap_or(0)),
    ))
}

fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

fn etag_matches(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    list.trim() == "*"
        || list
            .split(',')
            .any(|candidate| weak(candidate) == weak(etag))
}

/// Caches GET and HEAD responses by their `Cache-Control`; see the [module docs](self).
pub struct ResponseCacheLayer<M = UriKey> {
    shared: Arc<Shared>,
    make_key: Arc<M>,
}

struct Shared {
    cache: Cache<String, Arc<Stored>>,
    max_body: usize,
    refreshing: Mutex<HashSet<String>>,
    /// Origin requests in flight for a missed key: the waiters' channel, and its number (so
    /// that a finished request removes its own entry, not a successor's).
    loading: Mutex<HashMap<String, (u64, Loading)>>,
    loads: std::sync::atomic::AtomicU64,
    /// Write generations, one per stripe of keys: a write bumps its keys' stripes, and a
    /// load that began under an older generation is not kept (it may have read the state
    /// before the write). Striped so that memory is fixed, whatever the keys.
    generations: Box<[std::sync::atomic::AtomicU64]>,
    hasher: std::hash::RandomState,
    /// Bumped by [`ResponseCacheLayer::invalidate_all`]: what was stored in an earlier epoch
    /// is not served, and a load that began in one is not kept.
    epoch: std::sync::atomic::AtomicU64,
}

/// How many generation stripes: a write costs other keys of its stripe one store each.
const GENERATION_STRIPES: usize = 256;

/// What waiters for an origin request in flight learn: `Some` the stored response, `None` that
/// nothing was stored. A closed channel means the request was dropped.
type Loading = tokio::sync::watch::Receiver<Option<Option<Arc<Stored>>>>;

/// The sending side of a miss being loaded: removes its entry when done or dropped.
struct LoadGuard {
    shared: Arc<Shared>,
    key: String,
    id: u64,
    sender: tokio::sync::watch::Sender<Option<Option<Arc<Stored>>>>,
}

impl LoadGuard {
    fn finish(self, stored: Option<Arc<Stored>>) {
        self.sender.send_replace(Some(stored));
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut loading = self
            .shared
            .loading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if loading.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            loading.remove(&self.key);
        }
    }
}

/// Who answers a `GET` miss.
enum Miss {
    /// This request loads it; the guard tells the waiters.
    Load(LoadGuard),
    /// Another request is loading it.
    Wait(Loading),
}

impl Shared {
    fn stripe(&self, key: &str) -> &std::sync::atomic::AtomicU64 {
        use std::hash::BuildHasher as _;
        let hash = self.hasher.hash_one(key);
        // The modulo keeps the index below the stripe count, so it fits a usize.
        #[allow(clippy::cast_possible_truncation)]
        &self.generations[(hash % GENERATION_STRIPES as u64) as usize]
    }

    /// The write generation of `key`, read before its origin request starts: its stripe's
    /// count plus the epoch, so that a bump of either changes it (neither goes down).
    fn generation(&self, key: &str) -> u64 {
        self.stripe(key)
            .load(std::sync::atomic::Ordering::Acquire)
            .wrapping_add(self.epoch())
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// After a successful write of `key`: loads that began before it are neither kept nor
    /// joined, and what is stored is dropped.
    async fn written(&self, key: &String) {
        self.stripe(key)
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.loading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        self.cache.invalidate(key).await;
    }

    fn miss(self: &Arc<Self>, key: &str) -> Miss {
        let mut loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, waiting)) = loading.get(key) {
            return Miss::Wait(waiting.clone());
        }
        let id = self
            .loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sender, receiver) = tokio::sync::watch::channel(None);
        loading.insert(key.to_owned(), (id, receiver));
        Miss::Load(LoadGuard {
            shared: Arc::clone(self),
            key: key.to_owned(),
            id,
            sender,
        })
    }
}

/// Waits for another request's load: the stored response, `Ok(None)` when nothing was stored,
/// `Err` when that request was dropped.
async fn wait_for(mut loading: Loading) -> Result<Option<Arc<Stored>>, ()> {
    loop {
        if let Some(result) = loading.borrow_and_update().clone() {
            return Ok(result);
        }
        if loading.changed().await.is_err() {
            // The sender is gone; it may have sent just before.
            return loading.borrow().clone().ok_or(());
        }
    }
}

impl<M> Clone for ResponseCacheLayer<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            make_key: self.make_key.clone(),
        }
    }
}

impl<M> fmt::Debug for ResponseCacheLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCacheLayer")
            .field("max_body", &self.shared.max_body)
            .finish_non_exhaustive()
    }
}

impl ResponseCacheLayer {
    /// A cache of at most `capacity` bytes of response bodies, keyed by path and query.
    #[must_use]
    pub fn new(capacity: u64) -> Self {
        let cache = Cache::builder("http")
            .max_capacity(capacity)
            .weigher(|key: &String, stored: &Arc<Stored>| {
                u32::try_from(key.len() + stored.body.len() + 256).unwrap_or(u32::MAX)
            })
            .ttl_for(|stored: &Arc<Stored>| {
                stored
                    .stale_until
                    .saturating_duration_since(stored.stored_at)
            })
            .build();
        Self {
            shared: Arc::new(Shared {
                cache,
                max_body: 1 << 20,
                refreshing: Mutex::new(HashSet::new()),
                loading: Mutex::new(HashMap::new()),
                loads: std::sync::atomic::AtomicU64::new(0),
                generations: (0..GENERATION_STRIPES)
                    .map(|_| std::sync::atomic::AtomicU64::new(0))
                    .collect(),
                hasher: std::hash::RandomState::new(),
                epoch: std::sync::atomic::AtomicU64::new(0),
            }),
            make_key: Arc::new(UriKey),
        }
    }
}

impl<M> ResponseCacheLayer<M> {
    /// Keys requests with `make_key` instead of path and query.
    pub fn make_key<N>(self, make_key: N) -> ResponseCacheLayer<N> {
        ResponseCacheLayer {
            shared: self.shared,
            make_key: Arc::new(make_key),
        }
    }

    /// Responses larger than this (by their exact size) are passed through, not stored
    /// (default 1 MiB).
    ///
    /// # Panics
    ///
    /// When called after the layer was cloned.
    #[must_use]
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("configure the layer before cloning it")
            .max_body = max;
        self
    }

    /// The counters of the underlying cache.
    #[must_use]
    pub fn stats(&self) -> crate::Stats {
        self.shared.cache.stats()
    }

    /// Drops the response stored for `key` (what the layer's [`MakeCacheKey`] names a request
    /// by: its path and query by default), as a successful write to it would: a load of it
    /// in flight is answered but not kept. For a change the cache hears of from elsewhere.
    pub async fn invalidate(&self, key: &str) {
        self.shared.written(&key.to_owned()).await;
    }

    /// Drops every stored response at once: none is served again, and a load in flight is
    /// answered but not kept (nor joined). For a change the cache hears of from elsewhere that
    /// may touch any entry, or for a gap in which one may have been missed. The entries'
    /// memory is reclaimed as they are replaced or expire.
    pub fn invalidate_all(&self) {
        self.shared
            .epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.shared
            .loading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl<S, M> Layer<S> for ResponseCacheLayer<M> {
    type Service = ResponseCache<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache {
            inner,
            layer: self.clone(),
        }
    }
}

/// The middleware made by [`ResponseCacheLayer`].
pub struct ResponseCache<S, M = UriKey> {
    inner: S,
    layer: ResponseCacheLayer<M>,
}

impl<S: Clone, M> Clone for ResponseCache<S, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for ResponseCache<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The body of a [`ResponseCache`] response: the origin's, or a stored one.
pub type CachedBody<B> = Either<B, Full<Bytes>>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Reads a response's body into a stored entry, if it is small enough to store; it is kept
/// only if no write of `key` succeeded since `generation` was read.
async fn store_response<B>(
    shared: &Shared,
    key: String,
    generation: u64,
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    (ttl, grace): (Duration, Duration),
    response: Response<B>,
) -> Result<Arc<Stored>, Response<B>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let small = response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| usize::try_from(n).is_ok_and(|n| n <= shared.max_body));
    if !small {
        return Err(response);
    }
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            // The origin's body broke off: the client gets a 502, and nothing is stored.
            let error: BoxError = error.into();
            tracing::warn!(%error, "response body failed while being cached");
            let (parts, body) = mainstay_problem::Problem::new(StatusCode::BAD_GATEWAY)
                .detail("the upstream's response broke off")
                .to_response::<String>()
                .into_parts();
            let now = Instant::now();
            return Ok(Arc::new(Stored {
                status: parts.status,
                headers: parts.headers,
                body: Bytes::from(body),
                vary: Vec::new(),
                stored_at: now,
                fresh_until: now,
                stale_until: now,
                epoch: shared.epoch(),
            }));
        }
    };
    let now = Instant::now();
    let stored = Arc::new(Stored {
        status: parts.status,
        headers: parts.headers,
        body,
        vary,
        stored_at: now,
        fresh_until: now + ttl,
        stale_until: now + ttl + grace,
        epoch: shared.epoch(),
    });
    if stored.status == StatusCode::OK && shared.generation(&key) == generation {
        shared.cache.insert(key.clone(), stored.clone()).await;
        // A write that succeeded between the check and the insert: its invalidation may have
        // come first, so this one drops what the insert kept.
        if shared.generation(&key) != generation {
            shared.cache.invalidate(&key).await;
        }
    }
    Ok(stored)
}

fn answer<B>(
    stored: &Stored,
    head: bool,
    if_none_match: Option<&HeaderValue>,
) -> Response<CachedBody<B>> {
    let not_modified = match (if_none_match, stored.headers.get(ETAG)) {
        (Some(inm), Some(etag)) => etag_matches(inm, etag),
        _ => false,
    };
    let body = if head || not_modified {
        Bytes::new()
    } else {
        stored.body.clone()
    };
    let mut response = Response::new(Either::Right(Full::new(body)));
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [ETAG, CACHE_CONTROL, VARY] {
            for value in stored.headers.get_all(&name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
    } else {
        *response.status_mut() = stored.status;
        *response.headers_mut() = stored.headers.clone();
        if head {
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
        }
    }
    let age = stored.stored_at.elapsed().as_secs();
    response.headers_mut().insert(AGE, HeaderValue::from(age));
    response
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for ResponseCache<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    M: MakeCacheKey<ReqBody>,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError> + Send,
{
    type Response = Response<CachedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let cacheable_method = request.method() == Method::GET || request.method() == Method::HEAD;
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !cacheable_method && !request.method().is_safe() {
            return invalidating(
                self.layer.shared.clone(),
                self.layer.make_key.clone(),
                inner,
                request,
            );
        }
        let key = cacheable_method
            .then(|| self.layer.make_key.make_key(&request))
            .flatten();
        let Some(key) = key else {
            return Box::pin(async move { Ok(inner.call(request).await?.map(Either::Left)) });
        };
        let shared = self.layer.shared.clone();
        Box::pin(async move {
            let asked = directives(request.headers());
            let head = request.method() == Method::HEAD;
            let if_none_match = request.headers().get(IF_NONE_MATCH).cloned();
            // A HEAD is answered from a stored GET, never stored (its body is empty), and does
            // not wait for a GET's load.
            let mut guard = None;
            let mut looking = !(asked.no_store || asked.no_cache);
            while looking {
                if let Some(stored) = shared.cache.get(&key).await
                    && stored.epoch == shared.epoch()
                    && serves(&stored, request.headers())
                {
                    let now = Instant::now();
                    if now < stored.fresh_until {
                        return Ok(answer(&stored, head, if_none_match.as_ref()));
                    }
                    if now < stored.stale_until {
                        // This request needs no origin call: its service refreshes instead.
                        refresh(shared.clone(), inner, key, &request);
                        return Ok(answer(&stored, head, if_none_match.as_ref()));
                    }
                }
                if head {
                    break;
                }
                match shared.miss(&key) {
                    Miss::Load(load) => {
                        guard = Some(load);
                        looking = false;
                    }
                    Miss::Wait(loading) => match wait_for(loading).await {
                        Ok(Some(stored)) if serves(&stored, request.headers()) => {
                            return Ok(answer(&stored, head, if_none_match.as_ref()));
                        }
                        // Not storable, or another variant: this request asks for itself.
                        Ok(_) => break,
                        // The request that was loading was dropped: look again (the first
                        // waiter back loads).
                        Err(()) => {}
                    },
                }
            }
            let had_auth = request.headers().contains_key(AUTHORIZATION);
            let vary_request = RequestHeaders::of(&request);
            let generation = shared.generation(&key);
            let response = inner.call(request).await?;
            let Some(lifetime) = (!asked.no_store && !head)
                .then(|| storable(had_auth, &response))
                .flatten()
            else {
                if let Some(guard) = guard {
                    guard.finish(None);
                }
                return Ok(response.map(Either::Left));
            };
            let vary = vary_request.values(&vary_names(response.headers()));
            match store_response(&shared, key, generation, vary, lifetime, response).await {
                Ok(stored) => {
                    if let Some(guard) = guard {
                        let shareable = stored.status == StatusCode::OK;
                        guard.finish(shareable.then(|| Arc::clone(&stored)));
                    }
                    Ok(answer(&stored, head, if_none_match.as_ref()))
                }
                Err(response) => {
                    if let Some(guard) = guard {
                        guard.finish(None);
                    }
                    Ok(response.map(Either::Left))
                }
            }
        })
    }
}

/// An unsafe request (`POST`, `PUT`, `PATCH`, `DELETE`, …) passed on; once it succeeds
/// (`2xx`, `3xx`), what is stored for its target and for the `Location` it names is dropped
/// (RFC 9111 §4.4), so that a `DELETE` through the cache is followed by a `404`, not a stored
/// `200`. Caches of other processes keep theirs until they expire.
fn invalidating<S, M, ReqBody, ResBody>(
    shared: Arc<Shared>,
    make_key: Arc<M>,
    mut inner: S,
    request: Request<ReqBody>,
) -> BoxFuture<Result<Response<CachedBody<ResBody>>, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    M: MakeCacheKey<ReqBody>,
    ReqBody: Default + Send + 'static,
    ResBody: Send + 'static,
{
    // The key a GET of `uri` has.
    fn key_of<M: MakeCacheKey<B>, B: Default>(
        make_key: &M,
        uri: http::Uri,
        headers: &HeaderMap,
    ) -> Option<String> {
        let mut probe = Request::new(B::default());
        *probe.uri_mut() = uri;
        *probe.headers_mut() = headers.clone();
        make_key.make_key(&probe)
    }
    let target = key_of::<M, ReqBody>(&make_key, request.uri().clone(), request.headers());
    let headers = request.headers().clone();
    let future = inner.call(request);
    Box::pin(async move {
        let response = future.await?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            // Only a path of this origin: a cache never drops another origin's entries.
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<http::Uri>().ok())
                .filter(|uri| uri.authority().is_none())
                .and_then(|uri| key_of::<M, ReqBody>(&make_key, uri, &headers));
            for key in [target, location].into_iter().flatten() {
                shared.written(&key).await;
            }
        }
        Ok(response.map(Either::Left))
    })
}

/// Whether `stored` may answer a request with `headers` (its `Vary` values match).
fn serves(stored: &Stored, headers: &HeaderMap) -> bool {
    stored
        .vary
        .iter()
        .all(|(name, value)| headers.get(name) == value.as_ref())
}

/// The request headers a `Vary` may name, kept after the request went to the origin.
struct RequestHeaders(HeaderMap);

impl RequestHeaders {
    fn of<B>(request: &Request<B>) -> Self {
        Self(request.headers().clone())
    }

    fn values(&self, names: &[HeaderName]) -> Vec<(HeaderName, Option<HeaderValue>)> {
        names
            .iter()
            .map(|name| (name.clone(), self.0.get(name).cloned()))
            .collect()
    }
}

/// Refreshes `key` in the background with a copy of `request`, once at a time per key.
fn refresh<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut service: S,
    key: String,
    request: &Request<ReqBody>,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError> + Send,
{
    if !shared
        .refreshing
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key.clone())
    {
        return;
    }
    let mut copy = Request::new(ReqBody::default());
    *copy.method_mut() = Method::GET;
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = Version::HTTP_11;
    *copy.headers_mut() = request.headers().clone();
    copy.headers_mut().remove(IF_NONE_MATCH);
    let had_auth = copy.headers().contains_key(AUTHORIZATION);
    let vary_request = RequestHeaders::of(&copy);
    let generation = shared.generation(&key);
    tokio::spawn(async move {
        let ready = std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .is_ok();
        if ready
            && let Ok(response) = service.call(copy).await
            && let Some(lifetime) = storable(had_auth, &response)
        {
            let vary = vary_request.values(&vary_names(response.headers()));
            let _ =
                store_response(&shared, key.clone(), generation, vary, lifetime, response).await;
        }
        shared
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn cache_control_is_parsed() {
        let d = directives(&headers(&[
            ("cache-control", "public, max-age=60"),
            ("cache-control", "stale-while-revalidate=\"30\""),
        ]));
        assert_eq!(
            (d.public, d.max_age, d.stale_while_revalidate),
            (true, Some(60), Some(30))
        );
        assert!(directives(&headers(&[("cache-control", "No-Store")])).no_store);
    }

    #[test]
    fn only_what_a_shared_cache_may_store_is_stored() {
        let response = |pairs: &[(&str, &str)]| {
            let mut r = Response::new(());
            *r.headers_mut() = headers(pairs);
            r
        };
        assert_eq!(
            storable(false, &response(&[("cache-control", "max-age=60")])),
            Some((Duration::from_secs(60), Duration::ZERO))
        );
        assert_eq!(
            storable(
                false,
                &response(&[("cache-control", "max-age=60, s-maxage=5")])
            )
            .unwrap()
            .0,
            Duration::from_secs(5)
        );
        for refused in [
            &[("cache-control", "no-store, max-age=60")][..],
            &[("cache-control", "private, max-age=60")],
            &[("cache-control", "no-cache, max-age=60")],
            &[("cache-control", "max-age=0")],
            &[],
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            &[("cache-control", "max-age=60"), ("vary", "*")],
        ] {
            assert_eq!(storable(false, &response(refused)), None, "{refused:?}");
        }
        assert_eq!(
            storable(true, &response(&[("cache-control", "max-age=60")])),
            None
        );
        assert!(storable(true, &response(&[("cache-control", "public, max-age=60")])).is_some());
    }

    #[test]
    fn etags_match_weakly() {
        let etag = HeaderValue::from_static("\"v1\"");
        assert!(etag_matches(
            &HeaderValue::from_static("\"v0\", W/\"v1\""),
            &etag
        ));
        assert!(etag_matches(&HeaderValue::from_static("*"), &etag));
        assert!(!etag_matches(&HeaderValue::from_static("\"v2\""), &etag));
    }
}
