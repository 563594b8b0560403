//! Redis helpers for tests.

use std::time::Duration;

/// Waits until at least `subscribers` clients subscribe to `channel` on the Redis at `url`
/// (`PUBSUB NUMSUB`), so that a test publishes only once every subscriber will hear it.
///
/// # Panics
///
/// When Redis cannot be asked, or the subscribers are not there within 10 s.
pub async fn wait_for_subscribers(url: &str, channel: &str, subscribers: i64) {
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    for _ in 0..1000 {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut connection)
            .await
            .expect("PUBSUB NUMSUB");
        if count >= subscribers {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {subscribers} subscribers on {channel} after 10 s");
}
