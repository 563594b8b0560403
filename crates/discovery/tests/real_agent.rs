//! Against a real Consul agent, named by `CONSUL_HTTP_ADDR` (with `CONSUL_HTTP_TOKEN` if its
//! ACLs demand it). Ignored unless asked for, since it needs one:
//!
//! ```text
//! CONSUL_HTTP_ADDR=http://127.0.0.1:8500 cargo test -p mainstay-discovery --all-features \
//!     --test real_agent -- --ignored
//! ```
//!
//! CI runs it so whenever `CONSUL_HTTP_ADDR` is set. Consul cannot be installed on this
//! project's CI machines; the same behaviour is proven against the test agent in `watch.rs`.

use std::time::Duration;

use mainstay_discovery::consul::model::{CheckDefinition, CheckUpdate, Registration};
use mainstay_discovery::consul::{ConsulClient, WatchOptions, watch_service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Consul agent (CONSUL_HTTP_ADDR)"]
async fn register_heartbeat_watch_and_deregister_on_a_real_agent() {
    let client = ConsulClient::from_env()
        .expect("CONSUL_HTTP_ADDR names the agent to test against")
        .expect("CONSUL_HTTP_ADDR is an HTTP address");
    let id = format!("mainstay-test-{}", std::process::id());
    let mut registration = Registration::new(&id, "mainstay-test", "127.0.0.1", 9);
    registration.check = Some(CheckDefinition {
        status: None, // critical until the test reports
        ..CheckDefinition::ttl(Duration::from_secs(30), Duration::from_secs(60))
    });
    client.register(&registration).await.unwrap();
    let mut instances = watch_service(
        client.clone(),
        "mainstay-test",
        WatchOptions {
            wait: Duration::from_secs(5),
            ..WatchOptions::default()
        },
    );
    let passing = CheckUpdate {
        status: "passing".to_owned(),
        output: String::new(),
    };
    client
        .update_check(&format!("service:{id}"), &passing)
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        instances.wait_for(|s| s.endpoints.iter().any(|e| e.id == id)),
    )
    .await
    .expect("the instance never passed")
    .unwrap();
    client.deregister(&id).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        instances.wait_for(|s| s.endpoints.iter().all(|e| e.id != id)),
    )
    .await
    .expect("the instance never left")
    .unwrap();
}
