//! A thin client of the Consul agent API: registration with a TTL or HTTP check, TTL
//! heartbeats, deregistration, and the blocking-query watch of healthy instances.

mod client;
mod lease;
pub mod model;
mod watch;

pub use self::client::{ConsulClient, ConsulError, HealthQuery};
pub use self::lease::{CheckStatus, Lease};
pub use self::watch::{WatchOptions, watch_service};
