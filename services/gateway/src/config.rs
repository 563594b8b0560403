//! The gateway's configuration, from the environment.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use mainstay_discovery::Endpoint;
use shop_common::config::{ConfigError, Secret, ServiceConfig, TokenConfig, Vars};
use shop_messaging::config::TransportConfig;

/// The gateway's default `DEADLINE_FLOOR_MS`: the shortest deadline a client may ask for.
pub const DEFAULT_DEADLINE_FLOOR: Duration = Duration::from_millis(100);

/// Where a service's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// A fixed list (the embedded default): `<NAME>_URLS`, comma-separated.
    Static(Vec<Endpoint>),
    /// Consul's passing instances of the service (when `CONSUL_HTTP_ADDR` is set).
    Consul,
    /// DNS SRV records of this name (`<NAME>_SRV`).
    Srv(String),
}

/// The gateway's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Listening address, timeouts, body limit (`PORT` defaults to 8080).
    pub service: ServiceConfig,
    /// Where each service's endpoints come from.
    pub discovery: BTreeMap<&'static str, Discovery>,
    /// `CONSUL_HTTP_ADDR`: the Consul agent, for services discovered through it.
    pub consul_addr: Option<String>,
    /// `CONSUL_HTTP_TOKEN` (or `CONSUL_HTTP_TOKEN_FILE`): its ACL token.
    pub consul_token: Option<Secret>,
    /// How the users service's tokens are validated.
    pub tokens: TokenConfig,
    /// `RATE_LIMIT_PER_PRINCIPAL` (default `50/1`): signed-in callers, by token subject.
    pub per_principal: (u32, Duration),
    /// `RATE_LIMIT_PER_IP` (default `20/1`): anonymous callers, by client address.
    pub per_ip: (u32, Duration),
    /// `TRUSTED_PROXIES`: addresses whose `X-Forwarded-For` is believed (default none: the
    /// client address is the connection's peer).
    pub trusted_proxies: Vec<IpAddr>,
    /// `CORS_ALLOWED_ORIGINS`: origins browsers may call from (default none: same origin only).
    pub cors_origins: Vec<String>,
    /// `UPSTREAM_ATTEMPT_TIMEOUT_MS`: one attempt at an upstream (default 2 s).
    pub attempt_timeout: Duration,
    /// `UPSTREAM_MAX_CONCURRENT`: calls in flight per upstream service (default 512).
    pub max_concurrent: usize,
    /// `HOME_PART_TIMEOUT_MS`: each part of `/api/v1/home` (default 800 ms).
    pub home_part_timeout: Duration,
    /// `CONSOLE_TICK_MS`: how often the ops console's live view is refreshed (default 2 s).
    pub console_tick: Duration,
    /// `RESPONSE_CACHE_BYTES`: the most bytes of responses kept for each service with cached
    /// routes, bodies and keys counted (default 64 MiB).
    pub response_cache_bytes: u64,
    /// Where the services announce their changes, which drop the cached answers: `NATS_URL`
    /// and `MESSAGING_NAMESPACE`, or the local bus at `BUS_DATABASE_URL` (see
    /// [`TransportConfig`]).
    pub messaging: TransportConfig,
}

impl GatewayConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars(|var: &str| std::env::var(var).ok()))
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_vars<F: Fn(&str) -> Option<String>>(vars: &Vars<F>) -> Result<Self, ConfigError> {
        let mut service = ServiceConfig::from_vars("gateway", 8080, vars)?;
        // Clients are untrusted: a deadline shorter than this is not believed.
        if vars.raw("DEADLINE_FLOOR_MS").is_none() {
            service.deadline_floor = DEFAULT_DEADLINE_FLOOR;
        }
        let consul_addr = vars
            .raw("CONSUL_HTTP_ADDR")
            .filter(|a| !a.trim().is_empty());
        let mut discovery = BTreeMap::new();
        for &crate::routes::Backend {
            name,
            default_port: port,
            ..
        } in crate::routes::BACKENDS
        {
            let upper = name.to_ascii_uppercase();
            let source = if let Some(urls) = vars.raw(&format!("{upper}_URLS")) {
                Discovery::Static(Endpoint::parse_list(&urls).map_err(|e| ConfigError {
                    var: format!("{upper}_URLS"),
                    value: urls.clone(),
                    expected: e.to_string(),
                })?)
            } else if let Some(name) = vars.raw(&format!("{upper}_SRV")) {
                Discovery::Srv(name)
            } else if consul_addr.is_some() {
                Discovery::Consul
            } else {
                Discovery::Static(
                    port.map(|p| vec![Endpoint::new("127.0.0.1", p)])
                        .unwrap_or_default(),
                )
            };
            discovery.insert(name, source);
        }
        let list = |var: &str| -> Vec<String> {
            vars.raw(var)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let trusted_proxies = vars.ip_list("TRUSTED_PROXIES", &[])?;
        Ok(Self {
            service,
            discovery,
            consul_addr,
            consul_token: vars.secret("CONSUL_HTTP_TOKEN")?,
            tokens: TokenConfig::from_vars(vars),
            per_principal: vars
                .rate_or("RATE_LIMIT_PER_PRINCIPAL", (50, Duration::from_secs(1)))?,
            per_ip: vars.rate_or("RATE_LIMIT_PER_IP", (20, Duration::from_secs(1)))?,
            trusted_proxies,
            cors_origins: list("CORS_ALLOWED_ORIGINS"),
            attempt_timeout: vars
                .millis_or("UPSTREAM_ATTEMPT_TIMEOUT_MS", Duration::from_secs(2))?,
            max_concurrent: vars.parse_or("UPSTREAM_MAX_CONCURRENT", 512, "a number of calls")?,
            home_part_timeout: vars
                .millis_or("HOME_PART_TIMEOUT_MS", Duration::from_millis(800))?,
            console_tick: vars.millis_or("CONSOLE_TICK_MS", Duration::from_secs(2))?,
            response_cache_bytes: vars.parse_or(
                "RESPONSE_CACHE_BYTES",
                64 << 20,
                "a number of bytes",
            )?,
            messaging: TransportConfig::from_vars(vars)?,
        })
    }
}
