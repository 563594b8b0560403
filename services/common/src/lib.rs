//! The service kit of the mainstay commerce system: every service starts, serves, fails and
//! stores the same way.
//!
//! * [`config`]: typed configuration from the environment; bad values end the process with
//!   status 64 and a message naming the variable.
//! * [`Kit`]: metrics, health and configuration shared by a service, and
//!   [`Kit::stack`], the standard server stack of ARCHITECTURE.md §3.
//! * [`serve`]: graceful shutdown on SIGTERM/SIGINT: readiness turns 503, in-flight requests
//!   finish within the grace period; in production mode, registration with Consul for the
//!   service's lifetime ([`registry`]).
//! * [`Problem`] and [`Json`]: RFC 9457 errors, and JSON bodies whose rejections are problems
//!   (400, 413, 415, 422).
//! * [`store`]: the store pattern (trait, PostgreSQL and SQLite implementations, per-dialect
//!   migrations), and the kit's own migrations.
//! * [`idempotency`]: `Idempotency-Key` on `POST` and `PATCH`, answered once and given again
//!   ([`Kit::with_idempotency`]).
//! * [`tasks`]: the background tasks (relay, consumers, sweepers) started with the service,
//!   watched by readiness, and stopped in order after the last request ([`Kit::tasks`]).
//! * [`seal`]: small secrets sealed (AES-256-GCM) for whoever holds one key.
//! * `testing` (feature `testing`): a fresh PostgreSQL database per test.
//!
//! A service's `main.rs` is then:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use shop_common::{Kit, config::{ServiceConfig, or_exit}};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let config = or_exit(ServiceConfig::from_env("catalog", 8082));
//!     let telemetry = config.init_telemetry(); // logs, traces; exits on a bad setting
//!     let kit = Kit::new(config);
//!     let app = kit.stack(Router::new().route("/products", get(|| async { "[]" })));
//!     shop_common::serve(app, &kit).await?;
//!     drop(telemetry); // flush spans
//!     Ok(())
//! }
//! ```

#![forbid(unsafe_code)]

pub mod catalog;
pub mod client;
pub mod config;
pub mod domain;
pub mod fields;
pub mod idempotency;
mod problem;
pub mod registry;
pub mod seal;
mod serve;
mod stack;
pub mod store;
pub mod tasks;
#[cfg(feature = "testing")]
pub mod testing;

pub use self::problem::{FieldErrors, Json, PROBLEM_JSON, Problem};
pub use self::serve::{serve, serve_until, shutdown_signal};
pub use self::stack::{Kit, Limits};

/// Seconds since the Unix epoch, the unit the stores keep times in (0 before 1970).
#[must_use]
pub fn unix_seconds() -> i64 {
    since_epoch().map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch (0 before 1970).
#[must_use]
pub fn unix_millis() -> i64 {
    since_epoch().map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn since_epoch() -> Option<std::time::Duration> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
}

/// The key a per-address limit counts `client` under: an IPv4 address itself (an IPv4-mapped
/// IPv6 address as its IPv4 address), an IPv6 address its /64, the smallest block a home or a
/// cloud instance is handed. Keyed on whole IPv6 addresses, one client would have 2^64 budgets.
#[must_use]
pub fn limit_key(client: std::net::IpAddr) -> std::net::IpAddr {
    match client {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V4(v4),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
        },
    }
}

/// The client's address: the connection's `peer`, or, when the peer is one of the `trusted`
/// proxies, the last address of `X-Forwarded-For` that is not one of them (each proxy appends
/// the address it was called from, so the addresses left of the first untrusted one are the
/// client's to choose).
#[must_use]
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &http::HeaderMap,
    trusted: &[std::net::IpAddr],
) -> std::net::IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<std::net::IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|ip| ip.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::limit_key;

    #[test]
    fn ipv6_clients_are_limited_per_64_and_ipv4_per_address() {
        let key = |ip: &str| limit_key(ip.parse::<IpAddr>().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(key("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:203.0.113.7").to_string(), "203.0.113.7");
        assert_ne!(key("203.0.113.7"), key("203.0.113.8"));
    }
}
