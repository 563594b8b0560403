//! Helpers shared by the source tests.

use std::time::Duration;

use mainstay_discovery::Snapshot;
use tokio::sync::watch;

/// The first snapshot that satisfies `ready`, within 10 s.
pub(crate) async fn until(
    receiver: &mut watch::Receiver<Snapshot>,
    ready: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    tokio::time::timeout(Duration::from_secs(10), receiver.wait_for(|s| ready(s)))
        .await
        .expect("the source never reached the expected state")
        .expect("the source stopped")
        .clone()
}
