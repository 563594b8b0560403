//! Service discovery for tower services.
//!
//! * [`consul`]: a thin client of the Consul agent (registration, TTL heartbeat,
//!   deregistration, the ACL token header) and a blocking-query watch of a service's healthy
//!   instances that follows every rule Consul documents.
//!
//! Static and DNS sources and the balancer come next; every source yields [`Endpoint`]s.

#![forbid(unsafe_code)]

pub mod consul;

use std::collections::BTreeMap;

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
