//! A Consul agent for tests: the endpoints mainstay-discovery uses, answering with the JSON of
//! Consul's documentation, `X-Consul-Index` and blocking queries, TTL checks that go critical
//! when not updated, and deregistration after `DeregisterCriticalServiceAfter`.
//!
//! It can be stopped and restarted on the same port (state kept), have its index moved
//! backwards, and demand an ACL token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

struct Instance {
    registration: Value,
    status: String,
    /// The last check update's `Output`.
    output: String,
    ttl: Option<Duration>,
    last_update: Instant,
    deregister_after: Duration,
    critical_since: Option<Instant>,
    /// TTL check updates received.
    updates: u64,
}

#[derive(Default)]
struct Agent {
    index: u64,
    instances: BTreeMap<String, Instance>,
    /// The `index` parameter of every health query, in order (`None`: not sent).
    queries: Vec<Option<String>>,
}

struct Shared {
    state: Mutex<Agent>,
    changed: watch::Sender<u64>,
    token: Option<String>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Agent> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self, state: &mut Agent) {
        state.index += 1;
        let _ = self.changed.send(state.index);
    }

    fn denied(&self, headers: &HeaderMap) -> Option<Response> {
        let token = self.token.as_deref()?;
        let given = headers.get("x-consul-token").and_then(|v| v.to_str().ok());
        (given != Some(token)).then(|| (StatusCode::FORBIDDEN, "ACL not found").into_response())
    }
}

/// A running test agent.
pub struct ConsulTestServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
    expiry: JoinHandle<()>,
}

impl std::fmt::Debug for ConsulTestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulTestServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Parses Consul durations: `500ms`, `10s`, `5m`, `1h`.
#[must_use]
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => return None,
    })
}

impl ConsulTestServer {
    /// Starts an agent on a free loopback port.
    ///
    /// # Panics
    ///
    /// When no port can be bound.
    pub async fn start() -> Self {
        Self::start_with_token(None).await
    }

    /// Starts an agent that answers 403 unless `X-Consul-Token` is `token`.
    ///
    /// # Panics
    ///
    /// When no port can be bound.
    pub async fn start_with_token(token: Option<&str>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(Agent {
                index: 1,
                ..Agent::default()
            }),
            changed: watch::channel(1).0,
            token: token.map(str::to_owned),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address = listener.local_addr().expect("bound");
        let server = Some(serve(listener, shared.clone()));
        let expiry = tokio::spawn(expire(shared.clone()));
        Self {
            address,
            shared,
            server,
            expiry,
        }
    }

    /// `http://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops answering (the port is closed); the state is kept.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Answers again on the same port.
    ///
    /// # Panics
    ///
    /// When the port has been taken meanwhile.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = tokio::net::TcpListener::bind(self.address)
            .await
            .expect("the same port");
        self.server = Some(serve(listener, self.shared.clone()));
    }

    /// Sets the index (lower than before, to test a client's reset).
    pub fn set_index(&self, index: u64) {
        let mut state = self.shared.lock();
        state.index = index;
        let _ = self.shared.changed.send(index);
    }

    /// The current index.
    #[must_use]
    pub fn index(&self) -> u64 {
        self.shared.lock().index
    }

    /// The `index` parameter of every health query so far.
    #[must_use]
    pub fn queries(&self) -> Vec<Option<String>> {
        self.shared.lock().queries.clone()
    }

    /// How many TTL updates an instance's check has received, if the instance is registered.
    #[must_use]
    pub fn check_updates(&self, service_id: &str) -> Option<u64> {
        self.shared
            .lock()
            .instances
            .get(service_id)
            .map(|i| i.updates)
    }

    /// The status of an instance's check, if the instance is registered.
    #[must_use]
    pub fn status(&self, service_id: &str) -> Option<String> {
        self.shared
            .lock()
            .instances
            .get(service_id)
            .map(|i| i.status.clone())
    }

    /// The output of an instance's last check update, if the instance is registered.
    #[must_use]
    pub fn output(&self, service_id: &str) -> Option<String> {
        self.shared
            .lock()
            .instances
            .get(service_id)
            .map(|i| i.output.clone())
    }
}

impl Drop for ConsulTestServer {
    fn drop(&mut self) {
        self.stop();
        self.expiry.abort();
    }
}

fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    let app = Router::new()
        .route("/v1/agent/service/register", put(register))
        .route("/v1/agent/service/deregister/{id}", put(deregister))
        .route("/v1/agent/check/update/{check}", put(update_check))
        .route("/v1/health/service/{name}", get(health))
        .with_state(shared);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// Marks TTL checks critical when they were not updated in time, and deregisters instances
/// critical for longer than their `DeregisterCriticalServiceAfter`.
async fn expire(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut state = shared.lock();
        let mut changed = false;
        let mut gone = Vec::new();
        for (id, instance) in &mut state.instances {
            if let Some(ttl) = instance.ttl
                && instance.status != "critical"
                && now.duration_since(instance.last_update) > ttl
            {
                instance.status = "critical".to_owned();
                instance.critical_since = Some(now);
                changed = true;
            }
            if let Some(since) = instance.critical_since
                && now.duration_since(since) > instance.deregister_after
            {
                gone.push(id.clone());
            }
        }
        for id in gone {
            state.instances.remove(&id);
            changed = true;
        }
        if changed {
            shared.bump(&mut state);
        }
    }
}

async fn register(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    if let Some(denied) = shared.denied(&headers) {
        return denied;
    }
    let Ok(registration) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "Request decode failed").into_response();
    };
    let Some(id) = registration["ID"]
        .as_str()
        .or(registration["Name"].as_str())
        .map(str::to_owned)
    else {
        return (StatusCode::BAD_REQUEST, "Missing service name").into_response();
    };
    let check = &registration["Check"];
    let ttl = check["TTL"].as_str().and_then(parse_duration);
    // Consul enforces a one-minute minimum.
    let deregister_after = check["DeregisterCriticalServiceAfter"]
        .as_str()
        .and_then(parse_duration)
        .map_or(Duration::from_secs(3600 * 24 * 365), |d| {
            d.max(Duration::from_secs(60))
        });
    // A check registered without Status starts critical.
    let status = check["Status"].as_str().unwrap_or("critical").to_owned();
    let now = Instant::now();
    let mut state = shared.lock();
    state.instances.insert(
        id,
        Instance {
            critical_since: (status == "critical").then_some(now),
            registration,
            status,
            output: String::new(),
            ttl,
            last_update: now,
            deregister_after,
            updates: 0,
        },
    );
    shared.bump(&mut state);
    StatusCode::OK.into_response()
}

async fn deregister(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(denied) = shared.denied(&headers) {
        return denied;
    }
    let mut state = shared.lock();
    if state.instances.remove(&id).is_none() {
        return (StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}")).into_response();
    }
    shared.bump(&mut state);
    StatusCode::OK.into_response()
}

async fn update_check(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(check): Path<String>,
    body: String,
) -> Response {
    if let Some(denied) = shared.denied(&headers) {
        return denied;
    }
    let update: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let Some(status) = update["Status"].as_str().map(str::to_owned) else {
        return (StatusCode::BAD_REQUEST, "Request decode failed").into_response();
    };
    let id = check.strip_prefix("service:").unwrap_or(&check).to_owned();
    let now = Instant::now();
    let mut state = shared.lock();
    let Some(instance) = state.instances.get_mut(&id) else {
        return (StatusCode::NOT_FOUND, format!("Unknown check ID {check:?}")).into_response();
    };
    instance.last_update = now;
    instance.updates += 1;
    let changed = instance.status != status;
    instance.critical_since = if status == "critical" {
        instance.critical_since.or(Some(now))
    } else {
        None
    };
    instance.status = status;
    instance.output = update["Output"].as_str().unwrap_or_default().to_owned();
    if changed {
        shared.bump(&mut state);
    }
    StatusCode::OK.into_response()
}

async fn health(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(denied) = shared.denied(&headers) {
        return denied;
    }
    let requested: Option<u64> = params.get("index").and_then(|i| i.parse().ok());
    shared.lock().queries.push(params.get("index").cloned());
    if let Some(requested) = requested.filter(|&i| i > 0) {
        let wait = params
            .get("wait")
            .and_then(|w| parse_duration(w))
            .unwrap_or(Duration::from_secs(300));
        let mut changed = shared.changed.subscribe();
        let _ = tokio::time::timeout(wait, changed.wait_for(|&index| index != requested)).await;
    }
    let passing = params.contains_key("passing");
    let state = shared.lock();
    let entries: Vec<Value> = state
        .instances
        .iter()
        .filter(|(_, i)| i.registration["Name"].as_str() == Some(name.as_str()))
        .filter(|(_, i)| !passing || i.status == "passing")
        .map(|(id, i)| {
            let r = &i.registration;
            json!({
                "Node": {"ID": "00000000-0000-0000-0000-000000000001", "Node": "test", "Address": "127.0.0.1",
                         "Datacenter": "dc1", "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"}, "Meta": null},
                "Service": {"ID": id, "Service": r["Name"], "Tags": r.get("Tags").cloned().unwrap_or(Value::Null),
                            "Address": r.get("Address").cloned().unwrap_or_else(|| json!("")), "Port": r["Port"],
                            "Meta": r.get("Meta").cloned().unwrap_or(Value::Null), "Namespace": "default"},
                "Checks": [
                    {"Node": "test", "CheckID": format!("service:{id}"), "Status": i.status, "Output": i.output, "ServiceID": id, "ServiceName": r["Name"]},
                    {"Node": "test", "CheckID": "serfHealth", "Status": "passing", "ServiceID": "", "ServiceName": ""},
                ],
            })
        })
        .collect();
    (
        [("x-consul-index", state.index.to_string())],
        axum::Json(entries),
    )
        .into_response()
}
