//! Helpers for the tests of services that use the backbone (feature `testing`).

use std::process::Stdio;
use std::time::Duration;

/// A private nats-server with JetStream on a free port of 127.0.0.1 and a store directory of
/// its own, for tests that stop and restart the broker; killed on drop, its store removed.
#[derive(Debug)]
pub struct PrivateNats {
    child: tokio::process::Child,
    port: u16,
    store: Store,
}

/// A server's store directory, removed on drop.
#[derive(Debug)]
struct Store(std::path::PathBuf);

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl PrivateNats {
    /// Starts one (`nats-server` on the `PATH`); `None` when it cannot be started.
    ///
    /// # Panics
    ///
    /// It cannot be started while `MAINSTAY_REQUIRE_SERVERS` is set, or it does not listen
    /// within 5 s.
    pub async fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let store = Store(std::env::temp_dir().join(format!("nats-{}", uuid::Uuid::now_v7())));
        let child = Self::spawn(port, &store).await?;
        Some(Self { child, port, store })
    }

    /// The same server again: its port and its store (the streams and consumers survive).
    ///
    /// # Panics
    ///
    /// It does not start again.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.child = Self::spawn(self.port, &self.store)
            .await
            .expect("restarted");
    }

    async fn spawn(port: u16, store: &Store) -> Option<tokio::process::Child> {
        let child = tokio::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                assert!(
                    std::env::var_os("MAINSTAY_REQUIRE_SERVERS").is_none(),
                    "nats-server is required (MAINSTAY_REQUIRE_SERVERS is set): {error}"
                );
                tracing::warn!(%error, "skipping: cannot start nats-server");
                return None;
            }
        };
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(child);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the private nats-server did not start on port {port}");
    }

    /// Its URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (its store stays, for [`restart`](Self::restart)).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}
