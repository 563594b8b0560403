//! The ops console: a page at `/console` (self-contained: its script and style are in the
//! binary, nothing is fetched from elsewhere) and the admin routes it reads and acts through.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `GET /console`, `/console/console.js`, `/console/console.css` | — | the page; it signs in through the users service and keeps the token in the tab's session storage |
//! | `GET /console/api/state` | role `admin` | [`State`]: each service's readiness, outbox and dead letters; the gateway's breakers per upstream endpoint; bulkhead and rate-limit refusals; the last 15 minutes' analytics; the latest orders with their steps |
//! | `GET /console/api/events` | role `admin` | the same as server-sent events (`event: state`), every `CONSOLE_TICK_MS`; at most [`MAX_STREAMS`] open, each until its token expires and for at most 10 minutes |
//! | `PUT /console/api/breakers/{service}` | role `admin` | `{"state": "forced_open" \| "closed" \| "disabled"}`: every breaker the gateway holds now in front of `service` (one per endpoint it has called; an endpoint found later starts closed) |
//! | `POST /console/api/dead-letters/{service}/{consumer}/replay` | role `admin` | the consumer's dead letters delivered again (the service's own admin route) |
//!
//! What the console shows of a service it asks that service, through the gateway's client of
//! it, with the caller's token (the services' admin routes check it again). Those calls are
//! the gateway's calls to the service like any other: a stopped service's breaker opens, and
//! the console says so (payments, which the public API never calls, has a breaker only for
//! this). Every open view and poll shares one look for half a tick, so the services are asked
//! at most twice a tick however many consoles are open. The page's other actions (replaying
//! dead notifications, restocking) are the public API's admin routes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State as AxumState};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use futures_util::stream::Stream;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use mainstay_auth::{Principal, RequireRoleLayer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shop_common::Problem;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::{BACKENDS, Gateway};

/// The page.
const INDEX: &str = include_str!("../console/index.html");
/// Its script.
const SCRIPT: &str = include_str!("../console/console.js");
/// Its style.
const STYLE: &str = include_str!("../console/console.css");

/// The most live views open at once (each asks every service every tick).
pub const MAX_STREAMS: usize = 16;

/// How long a live view stays open (the page opens another).
const STREAM_FOR: Duration = Duration::from_secs(600);

/// How long one question to a service may take.
const ASK_TIMEOUT: Duration = Duration::from_millis(1500);

/// The most bytes of a service's answer the console reads.
const MAX_ANSWER: usize = 256 * 1024;

/// The page's content security policy: its own script and style, and calls to its own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// A service as the console sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceState {
    /// Its name.
    pub name: &'static str,
    /// Whether `/health/ready` answered 200.
    pub ready: bool,
    /// What it answered: its status, or why there was none.
    pub health: String,
    /// Its outbox: `{"pending", "oldest_age_ms"}`, when it has one and answered.
    pub outbox: Option<Value>,
    /// Its consumers' dead letters, by consumer.
    pub dead_letters: BTreeMap<String, i64>,
}

/// A breaker of the gateway, in front of one endpoint of a service.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerState {
    /// The service.
    pub service: String,
    /// The endpoint.
    pub endpoint: String,
    /// `closed`, `open`, `half_open`, `forced_open`, `disabled` or `metrics_only`.
    pub state: &'static str,
    /// Calls in its window.
    pub calls: u64,
    /// Failed calls in its window.
    pub failures: u64,
    /// Calls it refused.
    pub refused: u64,
}

/// What the console shows.
#[derive(Debug, Clone, Serialize)]
pub struct State {
    /// The dead notifications per channel, as the notifications service counts them, when it
    /// answered.
    pub dead_notifications: Option<Value>,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
    /// Every service behind the gateway.
    pub services: Vec<ServiceState>,
    /// The gateway's breakers.
    pub breakers: Vec<BreakerState>,
    /// Calls refused by the gateway's bulkheads (by service) and rate limits (by limiter).
    pub refusals: BTreeMap<String, BTreeMap<String, u64>>,
    /// The analytics summary of the last 15 minutes, when analytics answered.
    pub analytics: Option<Value>,
    /// The latest orders with their step history, when orders answered.
    pub orders: Option<Value>,
}

/// The console's own state: the live views open, and the last [`State`] (shared by every
/// view and poll for half a tick: however many consoles are open, the services are asked at
/// most twice a tick).
#[derive(Clone)]
pub(crate) struct Console {
    gateway: Gateway,
    streams: Arc<Semaphore>,
    tick: Duration,
    last: mainstay_cache::Cache<(), Arc<State>>,
}

/// The samples of `family` in Prometheus text, by the value of `label`.
fn samples(text: &str, family: &str, label: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{family}{{");
    let key = format!("{label}=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (labels, value) = rest.split_once("} ")?;
            let start = labels.find(&key)? + key.len();
            let end = start + labels[start..].find('"')?;
            let value = value.split_whitespace().next()?.parse::<f64>().ok()?;
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a counter: a whole, non-negative number"
            )]
            Some((labels[start..end].to_owned(), value as u64))
        })
        .collect()
}

impl State {
    /// Nothing known (what a failed look shows).
    fn unknown() -> Self {
        Self {
            dead_notifications: None,
            at_ms: shop_common::unix_millis(),
            services: Vec::new(),
            breakers: Vec::new(),
            refusals: BTreeMap::new(),
            analytics: None,
            orders: None,
        }
    }
}

impl Console {
    pub(crate) fn new(gateway: Gateway, tick: Duration) -> Self {
        Self {
            gateway,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            tick,
            last: mainstay_cache::Cache::builder("console_state")
                .max_capacity(1)
                .ttl((tick / 2).max(Duration::from_millis(100)))
                .build(),
        }
    }

    /// What the console shows now: the last [`State`] while it is fresh, or one asked with
    /// `token` (an admin's, checked before: every viewer is one) for all who wait meanwhile.
    async fn current(&self, token: Option<&HeaderValue>) -> Arc<State> {
        let this = self.clone();
        let token = token.cloned();
        self.last
            .get_or_load(&(), move || async move {
                Ok::<_, Infallible>(Some(Arc::new(this.state(token.as_ref()).await)))
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| Arc::new(State::unknown()))
    }

    /// `method path` on `service` with `authorization`, within [`ASK_TIMEOUT`]: its status
    /// and JSON body, or why there is none.
    async fn ask(
        &self,
        service: &str,
        method: Method,
        path: &str,
        authorization: Option<&HeaderValue>,
    ) -> Result<(StatusCode, Value), String> {
        let client = self
            .gateway
            .0
            .upstreams
            .client(service, false)
            .ok_or_else(|| format!("no client for {service}"))?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, value.clone());
        }
        let call = async {
            let response = client.oneshot(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        };
        tokio::time::timeout(ASK_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| Err("no answer in time".to_owned()))
    }

    async fn service(&self, name: &'static str, token: Option<&HeaderValue>) -> ServiceState {
        let (health, messaging) = tokio::join!(
            self.ask(name, Method::GET, "/health/ready", None),
            self.ask(name, Method::GET, "/admin/messaging", token),
        );
        let (ready, health) = match health {
            Ok((status, _)) => (status == StatusCode::OK, status.to_string()),
            Err(error) => (false, error),
        };
        let mut outbox = None;
        let mut dead_letters = BTreeMap::new();
        if let Ok((StatusCode::OK, body)) = messaging {
            outbox = body.get("outbox").cloned();
            for consumer in body["consumers"].as_array().into_iter().flatten() {
                if let (Some(name), Some(depth)) =
                    (consumer["name"].as_str(), consumer["dead_letters"].as_i64())
                {
                    dead_letters.insert(name.to_owned(), depth);
                }
            }
        }
        ServiceState {
            name,
            ready,
            health,
            outbox,
            dead_letters,
        }
    }

    /// What the console shows now, asked with `token` (an admin's).
    pub(crate) async fn state(&self, token: Option<&HeaderValue>) -> State {
        let services = futures_util::future::join_all(
            BACKENDS
                .iter()
                .map(|backend| self.service(backend.name, token)),
        );
        let analytics = self.ask(
            "analytics",
            Method::GET,
            "/analytics/summary?window=15m",
            token,
        );
        let orders = self.ask("orders", Method::GET, "/admin/orders?limit=8", token);
        let dead = self.ask(
            "notifications",
            Method::GET,
            "/admin/notifications/dead-letters?limit=0",
            token,
        );
        let (services, analytics, orders, dead) = tokio::join!(services, analytics, orders, dead);
        let ok = |answer: Result<(StatusCode, Value), String>| match answer {
            Ok((StatusCode::OK, body)) => Some(body),
            _ => None,
        };
        let breakers = self
            .gateway
            .0
            .resilience
            .breakers()
            .into_iter()
            .map(|(service, endpoint, breaker)| {
                let metrics = breaker.metrics();
                BreakerState {
                    service,
                    endpoint,
                    state: metrics.state.as_str(),
                    calls: metrics.calls,
                    failures: metrics.failures,
                    refused: metrics.refused,
                }
            })
            .collect();
        let text = self.gateway.0.metrics.encode();
        let refusals = BTreeMap::from([
            (
                "bulkhead".to_owned(),
                samples(&text, "resilience_bulkhead_rejected_calls_total", "service"),
            ),
            (
                "rate_limit".to_owned(),
                samples(
                    &text,
                    "resilience_rate_limit_refused_calls_total",
                    "limiter",
                ),
            ),
        ]);
        State {
            dead_notifications: ok(dead).and_then(|dead| dead.get("counts").cloned()),
            at_ms: shop_common::unix_millis(),
            services,
            breakers,
            refusals,
            analytics: ok(analytics),
            orders: ok(orders),
        }
    }
}

async fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn state(AxumState(console): AxumState<Console>, headers: HeaderMap) -> Response {
    let state = console.current(headers.get(header::AUTHORIZATION)).await;
    let mut response = axum::Json(&*state).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One live view: its slot, held until it ends.
struct Live {
    console: Console,
    token: Option<HeaderValue>,
    until: tokio::time::Instant,
    first: bool,
    _slot: OwnedSemaphorePermit,
}

async fn events(
    AxumState(console): AxumState<Console>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let slot = console.streams.clone().try_acquire_owned().map_err(|_| {
        Problem::new(StatusCode::TOO_MANY_REQUESTS)
            .detail("too many live views are open: close one, or poll /console/api/state")
    })?;
    // The view ends when the token does (the page signs in again), or after STREAM_FOR.
    let now_s = u64::try_from(shop_common::unix_millis() / 1000).unwrap_or(0);
    let token_left = Duration::from_secs(principal.expires_at().saturating_sub(now_s));
    let live = Live {
        token: headers.get(header::AUTHORIZATION).cloned(),
        until: tokio::time::Instant::now() + STREAM_FOR.min(token_left),
        first: true,
        console,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(live, |mut live| async move {
        if !live.first {
            tokio::time::sleep(live.console.tick).await;
        }
        live.first = false;
        if tokio::time::Instant::now() >= live.until {
            return None;
        }
        let state = live.console.current(live.token.as_ref()).await;
        let event = Event::default()
            .event("state")
            .json_data(&*state)
            .unwrap_or_else(|_| Event::default().comment("unencodable"));
        Some((Ok(event), live))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Switch {
    state: String,
}

/// `service` as one of [`BACKENDS`].
fn backend_named(service: &str) -> Result<&'static str, Problem> {
    BACKENDS
        .iter()
        .map(|backend| backend.name)
        .find(|name| *name == service)
        .ok_or_else(|| Problem::not_found(format!("no service {service:?} behind the gateway")))
}

async fn switch(
    AxumState(console): AxumState<Console>,
    Extension(principal): Extension<Principal>,
    service: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<Switch>, JsonRejection>,
) -> Result<Response, Problem> {
    let Path(service) = service.map_err(|r| Problem::bad_request(r.body_text()))?;
    let axum::Json(body) = body.map_err(|r| Problem::unprocessable(r.body_text()))?;
    let service = backend_named(&service)?;
    let apply: fn(&mainstay_resilience::circuit_breaker::Breaker) = match body.state.as_str() {
        "forced_open" => |breaker| breaker.force_open(),
        "closed" => |breaker| breaker.reset(),
        "disabled" => |breaker| breaker.disable(),
        _ => {
            return Err(Problem::unprocessable(
                "state is forced_open, closed or disabled",
            ));
        }
    };
    let mut switched = 0;
    for (_, _, breaker) in console
        .gateway
        .0
        .resilience
        .breakers()
        .into_iter()
        .filter(|(name, _, _)| name == service)
    {
        apply(&breaker);
        switched += 1;
    }
    tracing::warn!(
        admin = principal.subject(),
        service,
        state = body.state,
        switched,
        "breakers switched from the console"
    );
    Ok(
        axum::Json(json!({"service": service, "state": body.state, "breakers": switched}))
            .into_response(),
    )
}

async fn replay(
    AxumState(console): AxumState<Console>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, Problem> {
    let Path((service, consumer)) = path.map_err(|r| Problem::bad_request(r.body_text()))?;
    let service = backend_named(&service)?;
    if consumer.is_empty()
        || consumer.len() > 64
        || !consumer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Problem::bad_request(
            "a consumer is 1 to 64 letters, digits, - and _",
        ));
    }
    let path = format!("/admin/messaging/dead-letters/{consumer}/replay");
    match console
        .ask(
            service,
            Method::POST,
            &path,
            headers.get(header::AUTHORIZATION),
        )
        .await
    {
        Ok((status, body)) => Ok((status, axum::Json(body)).into_response()),
        Err(error) => Err(Problem::new(StatusCode::BAD_GATEWAY)
            .detail(format!("the {service} service did not answer: {error}"))),
    }
}

/// The console's routes: the page, open; its API behind `admission` and the admin role.
pub(crate) fn routes(console: Console, admission: crate::AdmissionLayer) -> axum::Router {
    let api = axum::Router::new()
        .route("/console/api/state", get(state))
        .route("/console/api/events", get(events))
        .route("/console/api/breakers/{service}", put(switch))
        .route(
            "/console/api/dead-letters/{service}/{consumer}/replay",
            post(replay),
        )
        .route_layer(RequireRoleLayer::new("admin"))
        .route_layer(admission)
        .with_state(console);
    axum::Router::new()
        .route("/console", get(|| page(INDEX, "text/html; charset=utf-8")))
        .route(
            "/console/console.js",
            get(|| page(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console/console.css",
            get(|| page(STYLE, "text/css; charset=utf-8")),
        )
        .merge(api)
}
