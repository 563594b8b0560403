//! RED metrics on [prometheus-client](https://docs.rs/prometheus-client), and the registry other
//! crates add to.
//!
//! [`Metrics`] owns one [`Registry`] and the HTTP families the server and client layers fill:
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `http_server_requests_total` | counter | `method`, `route`, `status` |
//! | `http_server_request_duration_seconds` | histogram | `method`, `route`, `status` |
//! | `http_server_requests_in_flight` | gauge | `method`, `route` |
//! | `http_client_requests_total` | counter | `peer`, `method`, `route`, `status` |
//! | `http_client_request_duration_seconds` | histogram | `peer`, `method`, `route`, `status` |
//!
//! Cardinality is bounded by construction: `method` is one of the nine standard methods or
//! `_OTHER`, `route` is a route *template* (`/products/{id}`, never the raw path) or
//! `unmatched`, and `status` is a class (`2xx` … `5xx`) or `error` when the service failed
//! without a response.
//!
//! # Example
//!
//! ```
//! use mainstay_telemetry::Metrics;
//! use prometheus_client::metrics::counter::Counter;
//!
//! let metrics = Metrics::new();
//! // Any crate can add its own metrics to the same registry.
//! let hits = Counter::<u64>::default();
//! metrics.register("cache_hits", "Cache hits", hits.clone());
//! hits.inc();
//! assert!(metrics.encode().contains("cache_hits_total 1"));
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use http::{Method, Request, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of [`Metrics::encode_prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `route` label of requests no route template matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Request duration buckets, in seconds: 5 ms to 10 s. 200 ms is one: the latency SLO's
/// threshold (95 % of requests under 200 ms) is then read exactly from `le="0.2"`, not
/// interpolated.
const DURATION_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The route template of a request, for labels and span names, when the framework does not
/// provide one (with the `axum` feature, axum's `MatchedPath` is read first).
///
/// Insert it as a request extension; client requests use it to name the remote route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTemplate(pub Cow<'static, str>);

impl RouteTemplate {
    /// A template known at compile time.
    #[must_use]
    pub const fn new(template: &'static str) -> Self {
        Self(Cow::Borrowed(template))
    }
}

/// The route template of `request`: axum's `MatchedPath`, then [`RouteTemplate`], then
/// [`UNMATCHED_ROUTE`].
pub(crate) fn route_of<B>(request: &Request<B>) -> &str {
    #[cfg(feature = "axum")]
    if let Some(path) = request.extensions().get::<axum::extract::MatchedPath>() {
        return path.as_str();
    }
    request
        .extensions()
        .get::<RouteTemplate>()
        .map_or(UNMATCHED_ROUTE, |route| &route.0)
}

/// The index of a `method` label in a [`Handles`] row.
fn method_index(method: &'static str) -> usize {
    match method {
        "GET" => 0,
        "POST" => 1,
        "PUT" => 2,
        "DELETE" => 3,
        "PATCH" => 4,
        "HEAD" => 5,
        "OPTIONS" => 6,
        "CONNECT" => 7,
        "TRACE" => 8,
        _ => 9,
    }
}

/// The index of a `status` label in [`RouteMetrics::record`].
fn status_index(status: &'static str) -> usize {
    match status {
        "1xx" => 0,
        "2xx" => 1,
        "3xx" => 2,
        "4xx" => 3,
        "5xx" => 4,
        _ => 5,
    }
}

/// The most routes whose handles are kept; beyond, handles are looked up per request (still
/// correct, only slower: routes are templates, so a service never gets near it).
const MAX_CACHED_ROUTES: usize = 1024;

/// The metric handles of one method and route (server) or peer, method and route (client):
/// the families are looked up (a lock, `SipHash` over every label) once per route and status,
/// not once per request.
pub(crate) struct RouteMetrics {
    pub(crate) in_flight: Option<Gauge>,
    method: &'static str,
    route: Cow<'static, str>,
    peer: Option<Cow<'static, str>>,
    records: [std::sync::OnceLock<(Counter, Histogram)>; 6],
}

impl RouteMetrics {
    /// Counts one request that ended with `status`, after `seconds`.
    pub(crate) fn record(&self, metrics: &HttpMetrics, status: &'static str, seconds: f64) {
        let (requests, duration) =
            self.records[status_index(status)].get_or_init(|| match &self.peer {
                None => {
                    let labels = ServerLabels {
                        method: self.method,
                        route: self.route.clone(),
                        status,
                    };
                    (
                        metrics.server_requests.get_or_create(&labels).clone(),
                        metrics.server_duration.get_or_create(&labels).clone(),
                    )
                }
                Some(peer) => {
                    let labels = ClientLabels {
                        peer: peer.clone(),
                        method: self.method,
                        route: self.route.clone(),
                        status,
                    };
                    (
                        metrics.client_requests.get_or_create(&labels).clone(),
                        metrics.client_duration.get_or_create(&labels).clone(),
                    )
                }
            });
        requests.inc();
        duration.observe(seconds);
    }
}

impl fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("method", &self.method)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

type Row = [Option<Arc<RouteMetrics>>; 10];

/// [`RouteMetrics`] by route and method, for one side (server, or one client's peer).
#[derive(Clone, Default)]
pub(crate) struct Handles {
    routes: Arc<RwLock<HashMap<Box<str>, Row, foldhash::fast::RandomState>>>,
}

impl fmt::Debug for Handles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handles")
    }
}

impl Handles {
    /// The handles of `method` and `route`, created on first use (`peer` for a client's).
    pub(crate) fn get(
        &self,
        metrics: &HttpMetrics,
        peer: Option<&Cow<'static, str>>,
        method: &'static str,
        route: &str,
    ) -> Arc<RouteMetrics> {
        let index = method_index(method);
        if let Some(found) = self
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(route)
            .and_then(|row| row[index].clone())
        {
            return found;
        }
        let in_flight = peer.is_none().then(|| {
            let labels = InFlightLabels {
                method,
                route: Cow::Owned(route.to_owned()),
            };
            metrics.server_in_flight.get_or_create(&labels).clone()
        });
        let made = Arc::new(RouteMetrics {
            in_flight,
            method,
            route: Cow::Owned(route.to_owned()),
            peer: peer.cloned(),
            records: Default::default(),
        });
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        if routes.len() < MAX_CACHED_ROUTES || routes.contains_key(route) {
            let row = routes.entry(route.into()).or_default();
            // Another request may have made them first: keep one.
            return row[index].get_or_insert(made).clone();
        }
        made
    }
}

/// The `method` label: a standard method's name, or `_OTHER`.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The `status` label of a response status.
pub(crate) fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The `status` label of a call that failed without a response.
pub(crate) const STATUS_ERROR: &str = "error";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServerLabels {
    pub(crate) method: &'static str,
    pub(crate) route: Cow<'static, str>,
    pub(crate) status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct InFlightLabels {
    pub(crate) method: &'static str,
    pub(crate) route: Cow<'static, str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClientLabels {
    pub(crate) peer: Cow<'static, str>,
    pub(crate) method: &'static str,
    pub(crate) route: Cow<'static, str>,
    pub(crate) status: &'static str,
}

type Durations<L> = Family<L, Histogram, fn() -> Histogram>;

/// The HTTP families, shared by every layer made from one [`Metrics`].
#[derive(Debug, Clone)]
pub(crate) struct HttpMetrics {
    /// The server's handles, shared by every server layer of this registry.
    pub(crate) server: Handles,
    pub(crate) server_requests: Family<ServerLabels, Counter>,
    pub(crate) server_duration: Durations<ServerLabels>,
    pub(crate) server_in_flight: Family<InFlightLabels, Gauge>,
    pub(crate) client_requests: Family<ClientLabels, Counter>,
    pub(crate) client_duration: Durations<ClientLabels>,
}

impl HttpMetrics {
    fn new() -> Self {
        Self {
            server: Handles::default(),
            server_requests: Family::default(),
            server_duration: Family::new_with_constructor(duration_histogram),
            server_in_flight: Family::default(),
            client_requests: Family::default(),
            client_duration: Family::new_with_constructor(duration_histogram),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_server_requests",
            "HTTP requests served, by method, route template and status class",
            self.server_requests.clone(),
        );
        registry.register(
            "http_server_request_duration_seconds",
            "Time to answer an HTTP request, until the response head, in seconds",
            self.server_duration.clone(),
        );
        registry.register(
            "http_server_requests_in_flight",
            "HTTP requests being served",
            self.server_in_flight.clone(),
        );
        registry.register(
            "http_client_requests",
            "Outbound HTTP requests, by peer, method, route template and status class",
            self.client_requests.clone(),
        );
        registry.register(
            "http_client_request_duration_seconds",
            "Time until an outbound HTTP request's response head, in seconds",
            self.client_duration.clone(),
        );
    }
}

/// A Prometheus registry holding the HTTP RED metrics, cheap to clone; every clone is the same
/// registry. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub(crate) http: HttpMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the HTTP families registered.
    #[must_use]
    pub fn new() -> Self {
        Self::with_registry(Registry::default())
    }

    /// Adds the HTTP families to `registry` (for example one with a prefix or constant labels).
    #[must_use]
    pub fn with_registry(mut registry: Registry) -> Self {
        let http = HttpMetrics::new();
        http.register(&mut registry);
        Self {
            registry: Arc::new(Mutex::new(registry)),
            http,
        }
    }

    /// Registers a metric. Counters get the `_total` suffix when encoded.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.edit(|registry| registry.register(name, help, metric));
    }

    /// Registers a collector, asked for its metrics at every scrape (for values read from
    /// elsewhere: breaker states, pool sizes, outbox lag).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.edit(|registry| registry.register_collector(collector));
    }

    /// Runs `edit` with the registry, for sub-registries and metrics with units.
    pub fn edit<R>(&self, edit: impl FnOnce(&mut Registry) -> R) -> R {
        // A panic while registering leaves the registry usable: registration is append-only.
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        edit(&mut registry)
    }

    /// Every metric in the OpenMetrics text format, ending with `# EOF`; serve it with
    /// [`OPENMETRICS_CONTENT_TYPE`].
    #[must_use]
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing to a `String` cannot fail, and our own label values always encode.
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }

    /// Every metric in the Prometheus text format 0.0.4, for scrapers and tools that do not
    /// accept OpenMetrics (`promtool check metrics`, older agents); serve it with
    /// [`PROMETHEUS_CONTENT_TYPE`].
    ///
    /// The samples are the same; only the metadata differs: a counter's `HELP` and `TYPE` name
    /// its `_total` sample, `info` metrics become gauges named `_info`, and there is no `UNIT`
    /// or `EOF` line.
    #[must_use]
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
    }
}

/// Whether an `Accept` header value asks for OpenMetrics.
#[must_use]
pub fn accepts_openmetrics(accept: &str) -> bool {
    accept
        .split(',')
        .any(|part| part.trim().starts_with("application/openmetrics-text"))
}

/// Rewrites OpenMetrics metadata as Prometheus 0.0.4 metadata.
fn openmetrics_to_prometheus(text: &str) -> String {
    let mut renamed: std::collections::HashMap<&str, (String, &str)> =
        std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            match kind {
                "counter" => {
                    renamed.insert(name, (format!("{name}_total"), "counter"));
                }
                "info" => {
                    renamed.insert(name, (format!("{name}_info"), "gauge"));
                }
                "unknown" => {
                    renamed.insert(name, (name.to_owned(), "untyped"));
                }
                _ => {}
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let (new_name, new_kind) = renamed.get(name)?;
            Some(if *prefix == "# TYPE " {
                format!("{prefix}{new_name} {new_kind}")
            } else {
                format!("{prefix}{new_name} {tail}")
            })
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let open = "# HELP hits Cache hits.\n# TYPE hits counter\nhits_total 3\n\
                    # HELP build Build.\n# TYPE build info\nbuild_info{v=\"1\"} 1\n\
                    # HELP up Up.\n# TYPE up gauge\n# UNIT up seconds\nup 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(open),
            "# HELP hits_total Cache hits.\n# TYPE hits_total counter\nhits_total 3\n\
             # HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{v=\"1\"} 1\n\
             # HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
        assert!(accepts_openmetrics(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        ));
        assert!(!accepts_openmetrics("text/plain"));
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"PURGE").unwrap()),
            "_OTHER"
        );
        assert_eq!(status_class(StatusCode::OK), "2xx");
        assert_eq!(status_class(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(status_class(StatusCode::BAD_GATEWAY), "5xx");
        let request = Request::new(());
        assert_eq!(route_of(&request), UNMATCHED_ROUTE);
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(RouteTemplate::new("/products/{id}"));
        assert_eq!(route_of(&request), "/products/{id}");
    }
}
