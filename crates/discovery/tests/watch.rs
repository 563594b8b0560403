//! The client and the watch loop against the Consul test server: registration, heartbeat,
//! instances added and removed, a check going critical, the index going backwards, the agent
//! unreachable and back, the ACL token.

mod common;

use std::time::Duration;

use common::until;
use mainstay_discovery::Snapshot;
use mainstay_discovery::consul::model::{CheckDefinition, CheckUpdate, Registration};
use mainstay_discovery::consul::{
    CheckStatus, ConsulClient, ConsulError, HealthQuery, Lease, WatchOptions, watch_service,
};
use mainstay_test_support::consul::ConsulTestServer;

fn instance(id: &str, port: u16) -> Registration {
    let mut registration = Registration::new(id, "catalog", "127.0.0.1", port);
    registration.tags.push("v1".to_owned());
    registration.check = Some(CheckDefinition::ttl(
        Duration::from_secs(30),
        Duration::from_secs(60),
    ));
    registration
}

fn fast() -> WatchOptions {
    WatchOptions {
        wait: Duration::from_secs(2),
        burst: 2,
        refill: Duration::from_millis(10),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

fn ids(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.endpoints.iter().map(|e| e.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_follows_instances_as_they_come_and_go() {
    let server = ConsulTestServer::start().await;
    let client = ConsulClient::new(&server.url()).unwrap();
    client.register(&instance("catalog-1", 9001)).await.unwrap();
    let mut instances = watch_service(client.clone(), "catalog", fast());
    let first = until(&mut instances, |s| s.fresh && s.endpoints.len() == 1).await;
    assert_eq!(first.endpoints[0].authority(), "127.0.0.1:9001");
    assert_eq!(first.endpoints[0].tags, ["v1"]);

    client.register(&instance("catalog-2", 9002)).await.unwrap();
    let two = until(&mut instances, |s| s.endpoints.len() == 2).await;
    assert_eq!(ids(&two), ["catalog-1", "catalog-2"]);

    // A check going critical takes the instance out of the passing set.
    let critical = CheckUpdate {
        status: "critical".to_owned(),
        output: "disk full".to_owned(),
    };
    client
        .update_check("service:catalog-1", &critical)
        .await
        .unwrap();
    let one = until(&mut instances, |s| s.endpoints.len() == 1).await;
    assert_eq!(ids(&one), ["catalog-2"]);
    // A heartbeat brings it back.
    let passing = CheckUpdate {
        status: "passing".to_owned(),
        output: String::new(),
    };
    client
        .update_check("service:catalog-1", &passing)
        .await
        .unwrap();
    until(&mut instances, |s| s.endpoints.len() == 2).await;

    client.deregister("catalog-2").await.unwrap();
    let left = until(&mut instances, |s| s.endpoints.len() == 1).await;
    assert_eq!(ids(&left), ["catalog-1"]);

    // Every query after the first blocked on an index, and none sent an index below 1.
    let queries = server.queries();
    assert_eq!(queries[0], None);
    assert!(queries[1..].iter().all(|q| {
        q.as_deref()
            .and_then(|i| i.parse::<u64>().ok())
            .is_some_and(|i| i >= 1)
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_going_backwards_resets_the_watch() {
    let server = ConsulTestServer::start().await;
    let client = ConsulClient::new(&server.url()).unwrap();
    client.register(&instance("catalog-1", 9001)).await.unwrap();
    let mut instances = watch_service(client.clone(), "catalog", fast());
    until(&mut instances, |s| s.endpoints.len() == 1).await;
    let before = server.queries().len();

    server.set_index(1); // a snapshot restore, say
    // The blocked query returns index 1, below the watch's 2: the next query carries no index.
    let mut reset = false;
    for _ in 0..200 {
        if server.queries()[before..].contains(&None) {
            reset = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        reset,
        "the watch did not reset its index: {:?}",
        &server.queries()[before..]
    );
    assert!(
        !server.queries().contains(&Some("0".to_owned())),
        "index 0 sent"
    );
    // And it goes on watching from the new index.
    client.register(&instance("catalog-2", 9002)).await.unwrap();
    until(&mut instances, |s| s.endpoints.len() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_keeps_the_last_instances_until_it_is_back() {
    let mut server = ConsulTestServer::start().await;
    let client = ConsulClient::new(&server.url()).unwrap();
    client.register(&instance("catalog-1", 9001)).await.unwrap();
    let mut instances = watch_service(client.clone(), "catalog", fast());
    until(&mut instances, |s| s.fresh && s.endpoints.len() == 1).await;

    server.stop();
    let stale = until(&mut instances, |s| !s.fresh).await;
    assert_eq!(
        ids(&stale),
        ["catalog-1"],
        "the last good instances are kept"
    );

    server.restart().await;
    ConsulClient::new(&server.url())
        .unwrap()
        .register(&instance("catalog-3", 9003))
        .await
        .unwrap();
    let back = until(&mut instances, |s| s.fresh && s.endpoints.len() == 2).await;
    assert_eq!(ids(&back), ["catalog-1", "catalog-3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_token_is_sent_and_a_refusal_is_named() {
    let server = ConsulTestServer::start_with_token(Some("s3cret")).await;
    let anonymous = ConsulClient::new(&server.url()).unwrap();
    assert!(matches!(
        anonymous.register(&instance("x", 1)).await,
        Err(ConsulError::Denied(_))
    ));
    let client = anonymous.token("s3cret");
    client.register(&instance("catalog-1", 9001)).await.unwrap();
    assert_eq!(server.status("catalog-1").as_deref(), Some("passing"));
    assert!(!format!("{client:?}").contains("s3cret"));
}

#[test]
fn addresses_must_be_http() {
    assert!(ConsulClient::new("127.0.0.1:8500").is_ok());
    assert!(ConsulClient::new("https://consul:8501").is_err());
    assert!(ConsulClient::new("not a url").is_err());
}

/// Polls `probe` every 20 ms until it holds, for at most 10 s.
async fn eventually(what: &str, probe: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !probe() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_heartbeats_at_a_third_of_its_ttl_and_deregisters_on_shutdown() {
    let server = ConsulTestServer::start().await;
    let client = ConsulClient::new(&server.url()).unwrap();
    let mut registration = instance("catalog-1", 9001);
    registration.check = None;
    let ttl = Duration::from_secs(1);
    let lease = Lease::start(client.clone(), registration, ttl, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(server.status("catalog-1").as_deref(), Some("passing"));

    // Four heartbeats take 4/3 of the TTL: without them the check would have expired.
    let started = tokio::time::Instant::now();
    eventually("four heartbeats", || {
        server.check_updates("catalog-1").unwrap_or(0) >= 4
    })
    .await;
    assert!(started.elapsed() > ttl, "heartbeats came faster than TTL/3");
    assert_eq!(server.status("catalog-1").as_deref(), Some("passing"));

    // The agent forgets the instance (state lost, or removed by hand): the next heartbeat
    // registers it again.
    client.deregister("catalog-1").await.unwrap();
    assert_eq!(server.status("catalog-1"), None);
    eventually("the instance to be registered again", || {
        server.status("catalog-1").as_deref() == Some("passing")
    })
    .await;

    // Graceful shutdown: gone from the catalog at once.
    lease.deregister().await.unwrap();
    assert_eq!(server.status("catalog-1"), None);

    // A lease dropped without deregistering (a crash) stops heartbeating: the check goes
    // critical after its TTL (and Consul removes the instance after the critical timeout).
    let mut registration = instance("catalog-2", 9002);
    registration.check = None;
    let lease = Lease::start(client, registration, ttl, Duration::from_secs(60))
        .await
        .unwrap();
    drop(lease);
    let updates = server.check_updates("catalog-2");
    eventually("the check to go critical", || {
        server.status("catalog-2").as_deref() == Some("critical")
    })
    .await;
    assert_eq!(
        server.check_updates("catalog-2"),
        updates,
        "a dropped lease heartbeat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_reports_the_instances_health_and_only_passing_ones_are_found() {
    let server = ConsulTestServer::start().await;
    let client = ConsulClient::new(&server.url()).unwrap();
    // 0: passing, 1: warning, 2: critical, 3: the report hangs.
    let state = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(2));
    let report = {
        let state = state.clone();
        move || {
            let now = state.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                match now {
                    0 => CheckStatus::Passing,
                    1 => CheckStatus::Warning("cache tier down".into()),
                    2 => CheckStatus::Critical("database down".into()),
                    _ => std::future::pending().await,
                }
            }
        }
    };
    let mut registration = instance("catalog-1", 9001);
    registration.check = None;
    let lease = Lease::start_reporting(
        client.clone(),
        registration,
        Duration::from_secs(1),
        Duration::from_secs(60),
        report,
    )
    .await
    .unwrap();
    let passing = || async {
        let query = HealthQuery {
            passing: true,
            ..HealthQuery::default()
        };
        client
            .health_service("catalog", query)
            .await
            .unwrap()
            .0
            .len()
    };
    // Unready at start: registered, but never found by a caller asking for passing instances.
    assert_eq!(server.status("catalog-1").as_deref(), Some("critical"));
    assert_eq!(passing().await, 0);

    for (now, expected) in [
        (0, "passing"),
        (1, "warning"),
        (0, "passing"),
        (3, "critical"),
    ] {
        state.store(now, std::sync::atomic::Ordering::SeqCst);
        eventually(expected, || {
            server.status("catalog-1").as_deref() == Some(expected)
        })
        .await;
        let found = if expected == "passing" { 1 } else { 0 };
        assert_eq!(passing().await, found, "{expected}");
    }
    lease.deregister().await.unwrap();
}
