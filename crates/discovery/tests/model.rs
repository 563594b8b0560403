//! The serde model against the request and response bodies of Consul's API documentation
//! (`tests/fixtures`, copied from the Consul API documentation pages named in each test).

use mainstay_discovery::Endpoint;
use mainstay_discovery::consul::model::{CheckUpdate, Registration, ServiceEntry};

/// `api-docs/health.mdx`, "List Service Instances for Service".
#[test]
fn health_service_entries_parse_and_dial_the_right_address() {
    let entries: Vec<ServiceEntry> =
        serde_json::from_str(include_str!("fixtures/health-service.json")).unwrap();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(
        entry.service.tagged_addresses.as_ref().unwrap()["wan"].port,
        80
    );
    assert_eq!(
        entry.node.tagged_addresses.as_ref().unwrap()["lan"],
        "10.1.10.12"
    );
    assert_eq!(entry.checks.len(), 2);
    let endpoint = Endpoint::from(entry);
    assert_eq!(
        (endpoint.host.as_str(), endpoint.port),
        ("10.1.10.12", 8000)
    );
    assert_eq!(endpoint.tags, ["primary"]);

    // An empty Service.Address means the node's; null Tags and Meta are empty.
    let mut json: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/health-service.json")).unwrap();
    json[0]["Service"]["Address"] = "".into();
    json[0]["Node"]["Address"] = "10.9.9.9".into();
    json[0]["Service"]["Tags"] = serde_json::Value::Null;
    json[0]["Service"]["Meta"] = serde_json::Value::Null;
    json[0]["Service"]["SomethingNew"] = 1.into();
    let entries: Vec<ServiceEntry> = serde_json::from_value(json).unwrap();
    let endpoint = Endpoint::from(&entries[0]);
    assert_eq!(endpoint.authority(), "10.9.9.9:8000");
    assert!(endpoint.tags.is_empty() && endpoint.meta.is_empty());
}

/// `api-docs/agent/service.mdx`, "Register Service", and `agent/check.mdx`, "Update TTL Check".
#[test]
fn request_bodies_round_trip() {
    let registration: Registration =
        serde_json::from_str(include_str!("fixtures/agent-service-register.json")).unwrap();
    assert_eq!(registration.id, "redis1");
    assert_eq!(
        registration
            .check
            .as_ref()
            .unwrap()
            .deregister_critical_service_after,
        "90m"
    );
    let again: Registration =
        serde_json::from_str(&serde_json::to_string(&registration).unwrap()).unwrap();
    assert_eq!(again, registration);
    let update: CheckUpdate =
        serde_json::from_str(include_str!("fixtures/agent-check-update.json")).unwrap();
    assert_eq!(update.status, "passing");
}
