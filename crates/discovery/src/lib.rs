//! Service discovery for tower services.
//!
//! Every source publishes a [`Snapshot`] of a service's [`Endpoint`]s on a
//! `tokio::sync::watch` channel:
//!
//! * [`consul`]: a thin client of the Consul agent (registration with a [`consul::Lease`] that
//!   heartbeats at TTL/3 and deregisters on shutdown, the ACL token header) and a
//!   blocking-query watch of a service's healthy instances that follows every rule Consul
//!   documents;
//! * [`dns`] (feature `dns`): SRV records, re-resolved as their TTL runs out (Kubernetes
//!   headless services, Consul DNS);
//! * [`fixed`]: a static list.
//!
//! [`balance::Balanced`] turns any of them into one tower service: power of two choices on
//! PeakEWMA over the endpoints, with outlier ejection, and an error naming the service when it
//! has no endpoint left.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod balance;
pub mod consul;
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub mod dns;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

/// What a source knows of a service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Healthy instances, sorted by id. After a failed query, the last good list.
    pub endpoints: Arc<Vec<Endpoint>>,
    /// Whether the last query succeeded.
    pub fresh: bool,
}

impl Snapshot {
    /// A fresh snapshot of `endpoints`, in the order every source publishes: sorted, one per
    /// id.
    fn of(mut endpoints: Vec<Endpoint>) -> Self {
        endpoints.sort();
        endpoints.dedup_by(|a, b| a.id == b.id);
        Self {
            endpoints: Arc::new(endpoints),
            fresh: true,
        }
    }

    /// Publishes a successful lookup's endpoints, waking receivers only when the list changed
    /// or the snapshot was stale: a lookup that returns is no proof of change.
    pub(crate) fn publish(sender: &watch::Sender<Self>, endpoints: Vec<Endpoint>) {
        let next = Self::of(endpoints);
        sender.send_if_modified(|snapshot| {
            let changed = *snapshot != next;
            if changed {
                *snapshot = next;
            }
            changed
        });
    }

    /// Marks the last good endpoints stale after a failed lookup, keeping them.
    pub(crate) fn mark_stale(sender: &watch::Sender<Self>) {
        sender.send_if_modified(|snapshot| std::mem::replace(&mut snapshot.fresh, false));
    }
}

/// A source that never changes: `endpoints`, as given (the embedded default's discovery).
///
/// ```
/// use mainstay_discovery::{Endpoint, fixed};
///
/// let source = fixed(vec![Endpoint::parse("127.0.0.1:8082").unwrap()]);
/// assert_eq!(source.borrow().endpoints[0].port, 8082);
/// ```
#[must_use]
pub fn fixed(endpoints: Vec<Endpoint>) -> watch::Receiver<Snapshot> {
    watch::channel(Snapshot::of(endpoints)).1
}

/// An address that is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad endpoint address {0:?}: expected host:port, optionally after http://")]
pub struct BadAddress(pub String);

/// An instance of a service, as discovery found it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// The instance's id (unique within the service).
    pub id: String,
    /// Host name or IP address to dial.
    pub host: String,
    /// Port to dial.
    pub port: u16,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint with no tags or metadata, whose id is its `host:port`.
    #[must_use]
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let mut endpoint = Self {
            id: String::new(),
            host: host.into(),
            port,
            tags: Vec::new(),
            meta: BTreeMap::new(),
        };
        endpoint.id = endpoint.authority();
        endpoint
    }

    /// Parses `host:port`, `[v6]:port` or `http://host:port` (a trailing `/` is allowed).
    ///
    /// # Errors
    ///
    /// [`BadAddress`] for anything else.
    pub fn parse(address: &str) -> Result<Self, BadAddress> {
        let bad = || BadAddress(address.to_owned());
        let rest = address.trim();
        let rest = rest.strip_prefix("http://").unwrap_or(rest);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || host.contains(['/', ' ', '@']) {
            return Err(bad());
        }
        Ok(Self::new(host, port))
    }

    /// Parses a comma-separated list of addresses (see [`parse`](Self::parse)); blanks are
    /// skipped.
    ///
    /// # Errors
    ///
    /// The first address that is not one.
    pub fn parse_list(addresses: &str) -> Result<Vec<Self>, BadAddress> {
        addresses
            .split(',')
            .filter(|a| !a.trim().is_empty())
            .map(Self::parse)
            .collect()
    }

    /// `host:port`, with IPv6 hosts in brackets.
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl From<&consul::model::ServiceEntry> for Endpoint {
    /// Dials `Service.Address`, or `Node.Address` when it is empty, as Consul documents.
    fn from(entry: &consul::model::ServiceEntry) -> Self {
        let host = if entry.service.address.is_empty() {
            entry.node.address.clone()
        } else {
            entry.service.address.clone()
        };
        Self {
            id: entry.service.id.clone(),
            host,
            port: entry.service.port,
            tags: entry.service.tags.clone().unwrap_or_default(),
            meta: entry
                .service
                .meta
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }
    }
}

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
