//! `shop-messaging dlq list|replay`, run as an operator runs it, on a local bus.

use std::sync::Arc;
use std::time::Duration;

use shop_common::store::Database;
use shop_messaging::{ConsumerConfig, LocalTransport, MessageId, Transport};

use super::{SOON, Script, Step, consumer, effect_count, enqueue_committed, prepare, relay_all};

async fn run(url: &str, args: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop-messaging"))
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("NATS_URL_FILE")
        .env("BUS_DATABASE_URL", url)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_the_dead_letters_and_replays_them() {
    let dir = std::env::temp_dir().join(format!("dlq-{}", MessageId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("bus.db").display());
    let database = Database::connect(&url).await.unwrap();
    prepare(&database).await;
    let transport = Arc::new(LocalTransport::open(database.clone()).await.unwrap());
    let sent = enqueue_committed(&database, &["a"]).await;
    relay_all(&database, &transport).await;
    let search = consumer(
        &database,
        &transport,
        ConsumerConfig::new("search", &["catalog.events"]),
        Script::with(&[Step::Reject]),
    );
    let mut deliveries = transport.consumer(search.config()).await.unwrap();
    for delivery in deliveries.fetch(1, SOON).await.unwrap() {
        search.deliver(delivery).await;
    }
    let seq = transport.dead_letters("search", 1).await.unwrap()[0].seq;

    let (code, listed) = run(&url, &["dlq", "list", "search"]).await;
    assert_eq!(code, 0, "{listed}");
    assert!(
        listed.starts_with(&format!(
            "{seq}\tcatalog.events\t{}\tdelivered 1\tunknown product",
            sent[0]
        )),
        "{listed}"
    );

    let (code, replayed) = run(
        &url,
        &["dlq", "replay", "search", "--seq", &seq.to_string()],
    )
    .await;
    assert_eq!((code, replayed.as_str()), (0, "replayed 1 to search\n"));
    // Delivered again, and handled this time.
    for delivery in deliveries.fetch(1, SOON).await.unwrap() {
        search.deliver(delivery).await;
    }
    assert_eq!(effect_count(&database).await, 1);
    let (code, listed) = run(&url, &["dlq", "list", "search"]).await;
    assert_eq!((code, listed.as_str()), (0, "no dead letters for search\n"));

    let (code, usage) = run(&url, &["dlq", "drop", "search"]).await;
    assert_eq!(code, 2);
    assert!(usage.starts_with("usage:"), "{usage}");
    let (code, bad) = run(&url, &["dlq", "list", "search", "--limit", "0"]).await;
    assert_eq!(
        (code, bad.as_str()),
        (2, "--limit takes a positive number\n")
    );

    drop(deliveries);
    if let Database::Sqlite(pool) = database {
        pool.close().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
