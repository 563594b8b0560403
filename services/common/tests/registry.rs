//! Registration with Consul in production mode, against the Consul test agent.

use std::collections::HashMap;

use mainstay_discovery::consul::{ConsulClient, HealthQuery};
use mainstay_telemetry::Health;
use mainstay_test_support::consul::ConsulTestServer;
use shop_common::config::{ServiceConfig, Vars};
use shop_common::registry::register_from_vars;

fn vars(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[tokio::test]
async fn without_consul_nothing_is_registered() {
    let config = ServiceConfig::from_vars("catalog", 8082, &Vars(|_: &str| None)).unwrap();
    let lease = register_from_vars(&config, &Health::new(), &Vars(|_: &str| None))
        .await
        .unwrap();
    assert!(lease.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_registers_where_callers_can_dial_it_and_leaves_on_shutdown() {
    let consul = ConsulTestServer::start().await;
    let env = vars(&[
        ("CONSUL_HTTP_ADDR", consul.url()),
        ("BIND_ADDR", "0.0.0.0".to_owned()),
        ("PORT", "18082".to_owned()),
    ]);
    let env = Vars(|k: &str| env.get(k).cloned());
    let config = ServiceConfig::from_vars("catalog", 8082, &env).unwrap();
    let lease = register_from_vars(&config, &Health::new(), &env)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.service_id(), "catalog-127.0.0.1-18082");

    let client = ConsulClient::new(&consul.url()).unwrap();
    let query = HealthQuery {
        passing: true,
        ..HealthQuery::default()
    };
    let (entries, _) = client.health_service("catalog", query).await.unwrap();
    assert_eq!(entries.len(), 1);
    // A wildcard listener is advertised on loopback, never as 0.0.0.0.
    assert_eq!(entries[0].service.address, "127.0.0.1");
    assert_eq!(entries[0].service.port, 18082);

    lease.deregister().await.unwrap();
    let (entries, _) = client.health_service("catalog", query).await.unwrap();
    assert!(entries.is_empty());
    assert_eq!(consul.status("catalog-127.0.0.1-18082"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_stops_the_service_from_starting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let env = vars(&[
        ("CONSUL_HTTP_ADDR", format!("http://{dead}")),
        ("SERVICE_ADDRESS", "10.1.2.3".to_owned()),
    ]);
    let env = Vars(|k: &str| env.get(k).cloned());
    let config = ServiceConfig::from_vars("users", 8081, &env).unwrap();
    let error = register_from_vars(&config, &Health::new(), &env)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("consul"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unready_service_is_registered_warning_and_found_once_ready() {
    let consul = ConsulTestServer::start().await;
    let env = vars(&[
        ("CONSUL_HTTP_ADDR", consul.url()),
        ("PORT", "18083".to_owned()),
    ]);
    let env = Vars(|k: &str| env.get(k).cloned());
    let config = ServiceConfig::from_vars("catalog", 8082, &env).unwrap();
    let database_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = Health::new();
    {
        let database_up = database_up.clone();
        health.add_check("database", move || {
            let up = database_up.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("connection refused")
                }
            }
        });
    }
    let lease = register_from_vars(&config, &health, &env)
        .await
        .unwrap()
        .unwrap();
    let id = "catalog-127.0.0.1-18083";
    // Its database is down: registered (an operator sees it), never routed to, and not
    // critical, which Consul would deregister after a minute. The output names the check only.
    assert_eq!(consul.status(id).as_deref(), Some("warning"));
    assert_eq!(
        consul.output(id).as_deref(),
        Some("not ready: database"),
        "the check's own error (it may name a host) stays out of the catalog"
    );
    let client = ConsulClient::new(&consul.url()).unwrap();
    let query = HealthQuery {
        passing: true,
        ..HealthQuery::default()
    };
    assert!(
        client
            .health_service("catalog", query)
            .await
            .unwrap()
            .0
            .is_empty()
    );

    // The database comes back: the next heartbeat (CHECK_TTL / 3) says so.
    database_up.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + shop_common::registry::CHECK_TTL;
    while consul.status(id).as_deref() != Some("passing") {
        assert!(tokio::time::Instant::now() < deadline, "never passing");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        client
            .health_service("catalog", query)
            .await
            .unwrap()
            .0
            .len(),
        1
    );
    lease.deregister().await.unwrap();
}
