//! Checkouts through the gateway, with the whole system in one process (`shop::System`), at
//! rising rates: on the embedded default (SQLite files and the local bus) and in production
//! mode (PostgreSQL and NATS JetStream on this machine, when they answer).
//!
//! At each rate, orders are placed for `SECONDS` seconds, one every 1/rate s, each for one
//! unit of a demo product (round robin), paid with the approving test card. Two latencies per
//! order:
//!
//! - **submit → 202**: from sending `POST /api/v1/checkout` to its answer (the seeds: the user
//!   has the order id in under 200 ms);
//! - **submit → CONFIRMED**: from sending it to the commit of the move to `CONFIRMED` (the
//!   order's `updated_at_ms`; the seeds: background processing done in under 5 s).
//!
//! The report gives p50 and p99 of both at each rate, and the highest rate at which both p99s
//! hold. Run with `cargo bench -p mainstay-benches --bench checkout`.

// A benchmark binary: what it prints is its report.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use shop::{Options, System};
use tokio::time::Instant;

const RATES: [u32; 6] = [10, 20, 40, 80, 160, 320];
const SECONDS: u32 = 10;
const ACCEPTED_P99: Duration = Duration::from_millis(200);
const CONFIRMED_P99: Duration = Duration::from_secs(5);

/// No rate limit in the way of one customer's load.
fn unlimited(options: Options) -> Options {
    options
        .var("RATE_LIMIT_PER_IP", "1000000/1")
        .var("RATE_LIMIT_PER_PRINCIPAL", "1000000/1")
        .var("LOGIN_PER_IP", "1000000/1")
        .var("LOGIN_PER_ACCOUNT", "1000000/1")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1_000.0)
}

/// One rate's outcome.
struct Outcome {
    accepted: Vec<Duration>,
    confirmed: Vec<Duration>,
    other: usize,
}

/// Places orders at `rate` per second for `SECONDS`, waits until they settle, and measures.
async fn at_rate(
    system: &System,
    http: &reqwest::Client,
    token: &str,
    skus: &[String],
    next: &mut usize,
    rate: u32,
) -> Outcome {
    let count = (rate * SECONDS) as usize;
    let every = Duration::from_secs(1) / rate;
    let start = Instant::now();
    let mut placed = Vec::with_capacity(count);
    for n in 0..count {
        tokio::time::sleep_until(start + every * u32::try_from(n).unwrap()).await;
        let sku = skus[*next % skus.len()].clone();
        *next += 1;
        let (http, url, token) = (http.clone(), system.url(), token.to_owned());
        placed.push(tokio::spawn(async move {
            let submitted_ms = shop_common::unix_millis();
            let sent = Instant::now();
            let response = http
                .post(format!("{url}/api/v1/checkout"))
                .bearer_auth(&token)
                .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                .json(&json!({
                    "lines": [{"product_id": sku, "quantity": 1}],
                    "shipping_address": {"name": "Alice", "line1": "1 Rabbit Hole",
                        "city": "Oxford", "postcode": "OX1 1AA", "country": "GB"},
                    "card": "4242424242424242",
                }))
                .send()
                .await
                .unwrap();
            let accepted = sent.elapsed();
            assert_eq!(response.status(), 202, "{:?}", response.text().await);
            let body: Value = response.json().await.unwrap();
            (
                body["order_id"].as_str().unwrap().to_owned(),
                submitted_ms,
                accepted,
            )
        }));
    }
    let mut submitted = HashMap::new();
    let mut accepted = Vec::with_capacity(count);
    for task in placed {
        let (id, at, latency) = task.await.unwrap();
        submitted.insert(id, at);
        accepted.push(latency);
    }
    // Until every order of this rate has settled (at most a minute).
    let settled = ["CONFIRMED", "REJECTED", "CANCELLED", "NEEDS_ATTENTION"];
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows: Vec<_> = system
            .orders
            .store()
            .all()
            .await
            .unwrap()
            .into_iter()
            .filter(|row| submitted.contains_key(&row.order_id))
            .collect();
        if rows
            .iter()
            .all(|row| settled.contains(&row.status.as_str()))
            || Instant::now() > deadline
        {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut confirmed = Vec::new();
    let mut other = 0;
    for row in rows {
        if row.status == "CONFIRMED" {
            let ms = u64::try_from(row.updated_at_ms - submitted[&row.order_id]).unwrap_or(0);
            confirmed.push(Duration::from_millis(ms));
        } else {
            other += 1;
        }
    }
    accepted.sort_unstable();
    confirmed.sort_unstable();
    Outcome {
        accepted,
        confirmed,
        other,
    }
}

async fn measure(mode: &str, system: System) {
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{}/api/v1/auth/login", system.url()))
        .json(&json!({"email": "alice@example.com", "password": "alice-in-wonderland"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let skus: Vec<String> = shop_inventory::demo_stock()
        .into_iter()
        .filter(|(_, on_hand)| *on_hand > 0)
        .map(|(sku, _)| sku)
        .collect();
    let mut next = 0;
    // Warm-up: connections, caches, the first of everything.
    let _ = at_rate(&system, &http, &token, &skus, &mut next, 5).await;
    println!("\n{mode}\n");
    println!(
        "| rate | orders | submit → 202 p50 | p99 | submit → CONFIRMED p50 | p99 | not confirmed | both hold |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut highest = None;
    for rate in RATES {
        let outcome = at_rate(&system, &http, &token, &skus, &mut next, rate).await;
        let holds = outcome.other == 0
            && percentile(&outcome.accepted, 0.99) < ACCEPTED_P99
            && !outcome.confirmed.is_empty()
            && percentile(&outcome.confirmed, 0.99) < CONFIRMED_P99;
        println!(
            "| {rate}/s | {} | {} | {} | {} | {} | {} | {} |",
            outcome.accepted.len(),
            ms(percentile(&outcome.accepted, 0.5)),
            ms(percentile(&outcome.accepted, 0.99)),
            outcome
                .confirmed
                .first()
                .map_or("-".into(), |_| ms(percentile(&outcome.confirmed, 0.5))),
            outcome
                .confirmed
                .first()
                .map_or("-".into(), |_| ms(percentile(&outcome.confirmed, 0.99))),
            outcome.other,
            if holds { "yes" } else { "no" },
        );
        if !holds {
            break;
        }
        highest = Some(rate);
    }
    println!(
        "\n{mode}: the highest rate where both hold: {}",
        highest.map_or("none".into(), |rate| format!("{rate} checkouts/s"))
    );
    system.stop(Duration::from_secs(10)).await;
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing else of use here.
    if std::env::args().any(|arg| arg == "--list" || arg == "--test") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("bench-checkout-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let system = System::start(unlimited(Options::embedded(&dir).unwrap()))
            .await
            .unwrap();
        measure("embedded default (SQLite, local bus)", system).await;
        let _ = std::fs::remove_dir_all(&dir);

        let mut databases = HashMap::new();
        for name in shop::SERVICES {
            let Some(db) = shop_common::testing::PgTestDb::create_or_skip(name).await else {
                println!("\nproduction mode skipped: no PostgreSQL");
                return;
            };
            databases.insert(name, db);
        }
        let urls = databases
            .iter()
            .map(|(name, db)| ((*name).to_owned(), db.url.clone()))
            .collect();
        let namespace = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let keys = std::env::temp_dir().join(format!("bench-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&keys).unwrap();
        let options = Options::production(urls, NATS, REDIS, &namespace, &keys).unwrap();
        let system = System::start(unlimited(options)).await.unwrap();
        measure("production mode (PostgreSQL, NATS JetStream)", system).await;
        shop_messaging::jetstream::JetStreamTransport::connect(NATS, &namespace)
            .await
            .unwrap()
            .delete()
            .await
            .unwrap();
        for (_, db) in databases {
            db.drop_database().await.unwrap();
        }
        let _ = std::fs::remove_dir_all(&keys);
    });
}

const NATS: &str = "nats://127.0.0.1:4222";
const REDIS: &str = "redis://127.0.0.1:6379";
