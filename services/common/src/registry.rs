//! Registration with the local Consul agent in production mode (`CONSUL_HTTP_ADDR`), for as
//! long as the service runs: TTL heartbeats at TTL/3 that carry the service's readiness,
//! deregistration when shutdown begins.

use std::time::Duration;

use mainstay_discovery::consul::model::Registration;
use mainstay_discovery::consul::{CheckStatus, ConsulClient, Lease};
use mainstay_telemetry::{CheckOutcome, Health};

use crate::config::{ServiceConfig, Vars};

/// The TTL of a service's check: a process that stops heartbeating is critical within 10 s.
pub const CHECK_TTL: Duration = Duration::from_secs(10);

/// Consul removes an instance critical for this long (its documented minimum).
pub const DEREGISTER_AFTER: Duration = Duration::from_secs(60);

/// Registers the service when `CONSUL_HTTP_ADDR` is set (with `CONSUL_HTTP_TOKEN` as the ACL
/// token), as `<name>-<address>-<port>` at `SERVICE_ADDRESS` (default: the listening address,
/// or `127.0.0.1` when that is a wildcard).
///
/// Each heartbeat runs `health`'s readiness checks (those `/health/ready` runs) and reports
/// the result: passing when ready, warning, with the names of the failed checks as the
/// output, when not (a database down, or draining; see `status` in the source for why not
/// critical). Callers that follow passing instances (the gateway) stop
/// choosing an unready replica within a heartbeat, and come back when it recovers.
///
/// # Errors
///
/// The agent refused the registration or could not be reached: a service that was asked to
/// register and cannot would be invisible, so it does not start.
pub async fn register_from_env(
    config: &ServiceConfig,
    health: &Health,
) -> std::io::Result<Option<Lease>> {
    register_from_vars(config, health, &Vars(|var: &str| std::env::var(var).ok())).await
}

/// [`register_from_env`] over any source of variables.
///
/// # Errors
///
/// As [`register_from_env`].
pub async fn register_from_vars<F: Fn(&str) -> Option<String>>(
    config: &ServiceConfig,
    health: &Health,
    vars: &Vars<F>,
) -> std::io::Result<Option<Lease>> {
    let Some(address) = vars.raw("CONSUL_HTTP_ADDR") else {
        return Ok(None);
    };
    let mut client = ConsulClient::new(&address).map_err(std::io::Error::other)?;
    if let Some(token) = vars
        .secret("CONSUL_HTTP_TOKEN")
        .map_err(std::io::Error::other)?
    {
        client = client.token(token.expose());
    }
    let advertised = match vars.raw("SERVICE_ADDRESS") {
        Some(address) => address,
        None if config.listen.ip().is_unspecified() => "127.0.0.1".to_owned(),
        None => config.listen.ip().to_string(),
    };
    let port = config.listen.port();
    let id = format!("{}-{advertised}-{port}", config.name);
    let mut registration = Registration::new(id, &config.name, advertised, port);
    registration.tags.push("http".to_owned());
    let health = health.clone();
    let report = move || {
        let health = health.clone();
        async move { status(&health).await }
    };
    let lease = Lease::start_reporting(client, registration, CHECK_TTL, DEREGISTER_AFTER, report)
        .await
        .map_err(std::io::Error::other)?;
    tracing::info!(service_id = %lease.service_id(), "registered with consul");
    Ok(Some(lease))
}

/// The readiness of `health` as a check status: passing when ready, warning when not.
///
/// Not critical: Consul deregisters an instance critical for [`DEREGISTER_AFTER`], and an
/// instance whose database is down for a minute would be removed, re-registered by its next
/// heartbeat, and removed again. Warning keeps it listed for operators, while callers that ask
/// for passing instances (`?passing`, as the gateway does) skip it. Critical stays for what
/// Consul sees itself: a process that stopped heartbeating, or whose report timed out.
///
/// The output names the failed checks and nothing else: a check's error can carry a host name
/// or a driver's message, and the check output is readable by anyone who can read the catalog.
async fn status(health: &Health) -> CheckStatus {
    let readiness = health.readiness().await;
    if readiness.is_ready() {
        return CheckStatus::Passing;
    }
    if readiness.draining {
        return CheckStatus::Warning("draining".to_owned());
    }
    let failed: Vec<&str> = readiness
        .checks
        .iter()
        .filter(|check| check.outcome != CheckOutcome::Up)
        .map(|check| check.name.as_str())
        .collect();
    CheckStatus::Warning(format!("not ready: {}", failed.join(", ")))
}
