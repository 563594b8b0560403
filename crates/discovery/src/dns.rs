//! DNS SRV discovery (Kubernetes headless services, Consul DNS) through hickory-resolver.
//!
//! [`watch_srv`] resolves a name's SRV records, then each target's addresses (from the
//! answer's additional section when the server sent them, as Consul and `CoreDNS` do, otherwise
//! with a lookup of their own), and publishes one [`Endpoint`] per address and port. It
//! resolves again when the shortest TTL runs out, within `min_interval..=max_interval`.
//!
//! * Only the records of the lowest priority are used (RFC 2782); weights are ignored, since
//!   the balancer weighs endpoints by their measured load.
//! * A name with no records is an empty service, not an error.
//! * On a failed lookup, the last good endpoints are kept, marked not fresh, and the lookup is
//!   retried with back-off.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use tokio::sync::watch;

use crate::{Endpoint, Snapshot};

pub use hickory_resolver;

/// How often a DNS source resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsOptions {
    /// Never resolve more often than this (default 1 s), whatever the TTL ...
    pub min_interval: Duration,
    /// ... nor less often than this (default 30 s).
    pub max_interval: Duration,
    /// Back-off after a failed lookup; doubled on each failure in a row (default 1 s) ...
    pub backoff: Duration,
    /// ... up to this (default 30 s).
    pub max_backoff: Duration,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Follows the SRV records of `name` (`_http._tcp.catalog.shop.svc.cluster.local`,
/// `catalog.service.consul`); see the [module docs](self).
///
/// The task stops when every receiver is dropped.
///
/// # Panics
///
/// Outside a tokio runtime.
pub fn watch_srv(
    resolver: TokioResolver,
    name: impl Into<String>,
    options: DnsOptions,
) -> watch::Receiver<Snapshot> {
    let name = name.into();
    let (sender, receiver) = watch::channel(Snapshot::default());
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let wait = match resolve(&resolver, &name).await {
                Ok((endpoints, ttl)) => {
                    failures = 0;
                    Snapshot::publish(&sender, endpoints);
                    ttl.clamp(options.min_interval, options.max_interval)
                }
                Err(error) => {
                    failures += 1;
                    let backoff = options
                        .backoff
                        .saturating_mul(1 << (failures - 1).min(16))
                        .min(options.max_backoff);
                    tracing::warn!(%name, %error, ?backoff, "SRV lookup failed; keeping the last endpoints");
                    Snapshot::mark_stale(&sender);
                    backoff
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = sender.closed() => return,
            }
        }
    });
    receiver
}

/// One resolution: the endpoints, and how long they may be trusted.
async fn resolve(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<Endpoint>, Duration), hickory_resolver::net::NetError> {
    let lookup = match resolver.srv_lookup(name).await {
        Ok(lookup) => lookup,
        Err(error) if error.is_no_records_found() => return Ok((Vec::new(), Duration::ZERO)),
        Err(error) => return Err(error),
    };
    let mut ttl = shortest_ttl(lookup.answers());
    let records: Vec<_> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv.clone()),
            _ => None,
        })
        .collect();
    let Some(priority) = records.iter().map(|srv| srv.priority).min() else {
        return Ok((Vec::new(), ttl));
    };
    // Addresses the server sent along (RFC 2782 allows it; Consul and `CoreDNS` do).
    let mut glue: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for record in lookup.additionals() {
        let ip = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        glue.entry(record.name.to_ascii()).or_default().push(ip);
    }
    let mut endpoints = Vec::new();
    for srv in records.iter().filter(|srv| srv.priority == priority) {
        let target = srv.target.to_ascii();
        if target == "." {
            continue; // "decidedly not available"
        }
        let addresses = if let Some(ips) = glue.get(&target) {
            ips.clone()
        } else {
            let found =
                hickory_resolver::lookup::Lookup::from(resolver.lookup_ip(target.as_str()).await?);
            ttl = ttl.min(shortest_ttl(found.answers()));
            found
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                    _ => None,
                })
                .collect()
        };
        for ip in addresses {
            let mut endpoint = Endpoint::new(ip.to_string(), srv.port);
            endpoint.meta =
                BTreeMap::from([("target".to_owned(), target.trim_end_matches('.').to_owned())]);
            endpoints.push(endpoint);
        }
    }
    Ok((endpoints, ttl))
}

/// The shortest TTL among `records` (none: zero, so the next lookup comes soon).
fn shortest_ttl(records: &[hickory_resolver::proto::rr::Record]) -> Duration {
    records
        .iter()
        .map(|record| Duration::from_secs(u64::from(record.ttl)))
        .min()
        .unwrap_or(Duration::ZERO)
}
