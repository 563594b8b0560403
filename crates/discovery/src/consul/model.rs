//! Consul's JSON, as its API documentation shows it (fixtures in the repository's tests).
//! Unknown fields are ignored; `Tags` and `Meta` may be `null`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One entry of `GET /v1/health/service/:service`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    /// The node the instance runs on.
    pub node: Node,
    /// The instance.
    pub service: AgentService,
    /// Its checks and the node's.
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

/// A Consul node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter.
    #[serde(default)]
    pub datacenter: String,
    /// Addresses by network; values are plain strings here.
    #[serde(default)]
    pub tagged_addresses: Option<HashMap<String, String>>,
}

/// A service instance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    /// Instance id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Address; empty means the node's.
    #[serde(default)]
    pub address: String,
    /// Port.
    pub port: u16,
    /// Metadata.
    #[serde(default)]
    pub meta: Option<HashMap<String, String>>,
    /// Addresses by network; values are `{address, port}` objects here.
    #[serde(default)]
    pub tagged_addresses: Option<HashMap<String, TaggedAddress>>,
}

/// A service's address on one network.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TaggedAddress {
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
}

/// A health check's state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    /// Check id.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// The service it checks; empty for node checks such as `serfHealth`.
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
}

/// The body of `PUT /v1/agent/service/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Registration {
    /// Instance id, unique on the agent.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub name: String,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Address to dial.
    pub address: String,
    /// Port to dial.
    pub port: u16,
    /// Metadata.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub meta: HashMap<String, String>,
    /// The instance's check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckDefinition>,
}

impl Registration {
    /// Instance `id` of service `name` at `address:port`, with no tags, metadata or check.
    #[must_use]
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        address: impl Into<String>,
        port: u16,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            tags: Vec::new(),
            address: address.into(),
            port,
            meta: HashMap::new(),
            check: None,
        }
    }
}

/// A check registered with a service: TTL (the service reports) or HTTP (the agent polls).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinition {
    /// Check id (default `service:<id>`).
    #[serde(rename = "CheckID", default, skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
    /// TTL, e.g. `15s`.
    #[serde(rename = "TTL", default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// URL the agent polls.
    #[serde(rename = "HTTP", default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Poll interval of an HTTP check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Poll timeout of an HTTP check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How long the check may stay critical before the agent removes the instance (at least 1m).
    pub deregister_critical_service_after: String,
    /// Initial status (Consul's default is `critical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl CheckDefinition {
    /// A TTL check of `ttl`, passing from registration, whose instance the agent removes once
    /// it has been critical for `deregister_after`.
    #[must_use]
    pub fn ttl(ttl: std::time::Duration, deregister_after: std::time::Duration) -> Self {
        Self {
            check_id: None,
            ttl: Some(consul_duration(ttl)),
            http: None,
            interval: None,
            timeout: None,
            deregister_critical_service_after: consul_duration(deregister_after),
            status: Some("passing".to_owned()),
        }
    }
}

/// The body of `PUT /v1/agent/check/update/:check_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckUpdate {
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// Human-readable output.
    #[serde(default)]
    pub output: String,
}

/// Formats a duration as Consul does (`90s`, `500ms`).
#[must_use]
pub fn consul_duration(duration: std::time::Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}
