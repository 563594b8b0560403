//! The runtime every service with a database starts from: what it does around its own routes
//! and handlers, once, so that its `main.rs` is a few lines.
//!
//! [`Service::start`] opens the service's database (and migrates the kit's and the backbone's
//! tables), makes its [`Kit`] with `Idempotency-Key` support and a `database` readiness check,
//! and opens its message transport. The service then builds its own state on
//! [`Service::database`], adds its consumers ([`Service::consume`]), and
//! [`Service::serve`]s its routes: the outbox relay, the consumers and the sweeper start under
//! the kit's supervisor, the backbone's admin routes ([`crate::admin`]) join the service's,
//! and everything stops in order after the last request.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use shop_common::config::{ServiceConfig, or_exit};
//! use shop_messaging::service::Service;
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let config = or_exit(ServiceConfig::from_env("inventory", 8086));
//!     let _telemetry = config.init_telemetry();
//!     let tokens = shop_common::config::TokenConfig::from_env();
//!     let service = Service::start(config).await?;
//!     // service.consume(ConsumerConfig::new(..), handler) for each consumer
//!     let api = Router::new().route("/stock", get(|| async { "[]" }));
//!     service.serve(api, tokens.validator()?).await
//! }
//! ```

use std::sync::Arc;

use axum::Router;
use mainstay_auth::Validator;
use shop_common::Kit;
use shop_common::config::ServiceConfig;
use shop_common::store::{Database, StoreError};

use crate::admin::Admin;
use crate::config::TransportConfig;
use crate::consumer::{Consumer, Handler};
use crate::metrics::MessagingMetrics;
use crate::relay::Relay;
use crate::transport::{ConsumerConfig, Transport, TransportError};

/// A service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its database cannot be opened or migrated.
    #[error("the service's database: {0}")]
    Database(#[from] StoreError),
    /// Its message transport cannot be opened.
    #[error("the message transport: {0}")]
    Transport(#[from] TransportError),
}

impl From<StartError> for std::io::Error {
    fn from(error: StartError) -> Self {
        Self::other(error)
    }
}

/// A service as it starts: its kit, its database and its part of the backbone.
pub struct Service {
    /// The kit: configuration, metrics, readiness, tasks.
    pub kit: Kit,
    /// The service's database, with the kit's and the backbone's tables.
    pub database: Database,
    /// The message transport (for subscriptions; consumers are added with
    /// [`consume`](Self::consume)).
    pub transport: Arc<dyn Transport>,
    /// The backbone's metrics, registered with the kit's.
    pub metrics: MessagingMetrics,
    consumers: Vec<Consumer>,
    relay: Option<Box<dyn FnOnce(Relay) -> Relay + Send>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.kit.config.name)
            .field("consumers", &self.consumers)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Starts the service of `config` on the transport its environment names
    /// ([`TransportConfig::from_env`]; a bad value ends the process, naming the variable).
    ///
    /// # Errors
    ///
    /// The database or the transport cannot be opened.
    pub async fn start(config: ServiceConfig) -> Result<Self, StartError> {
        let transport = shop_common::config::or_exit(TransportConfig::from_env());
        Self::start_with(config, &transport).await
    }

    /// [`start`](Self::start), on `transport`.
    ///
    /// # Errors
    ///
    /// The database or the transport cannot be opened.
    pub async fn start_with(
        config: ServiceConfig,
        transport: &TransportConfig,
    ) -> Result<Self, StartError> {
        let database = Database::connect(config.database_url.expose()).await?;
        crate::migrate(&database).await?;
        // Every keyed POST and PATCH is answered once (the gateway retries them).
        let kit = Kit::new(config).with_idempotency(&database).await?;
        let db = database.clone();
        kit.health.add_check("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        });
        let transport = transport.open().await?;
        let metrics = MessagingMetrics::new();
        metrics.register(&kit.metrics);
        Ok(Self {
            kit,
            database,
            transport,
            metrics,
            consumers: Vec::new(),
            relay: None,
        })
    }

    /// Configures the outbox relay the service starts (its batch, poll or publish timeout, or
    /// [`keep_published`](Relay::keep_published)), from the relay of the defaults. A second
    /// call replaces the first.
    #[must_use]
    pub fn relay(mut self, configure: impl FnOnce(Relay) -> Relay + Send + 'static) -> Self {
        self.relay = Some(Box::new(configure));
        self
    }

    /// Adds a consumer by `config`, handling with `handler` in the service's database; it
    /// starts with [`serve`](Self::serve).
    pub fn consume(&mut self, config: ConsumerConfig, handler: impl Handler) {
        self.consumers.push(
            Consumer::new(
                config,
                self.transport.clone(),
                self.database.clone(),
                Arc::new(handler),
            )
            .metrics(self.metrics.clone()),
        );
    }

    /// Starts the backbone's tasks under the kit's supervisor (the outbox relay, the
    /// consumers, the sweeper), and returns the kit with the whole app: `api` and the
    /// backbone's admin routes, for callers with the `admin` role in a token `validator`
    /// accepts, in the kit's server stack. [`serve`](Self::serve) serves it; a test or the
    /// one-process launcher serves it with `shop_common::serve_until`.
    pub fn launch(self, api: Router, validator: Validator) -> (Kit, Router) {
        let names = self
            .consumers
            .iter()
            .map(|consumer| consumer.config().name.clone())
            .collect();
        let admin = Admin::new(self.transport.clone(), self.database.clone(), names)
            .metrics(self.metrics.clone())
            .router(validator);
        let mut relay =
            Relay::new(self.database.clone(), self.transport.clone()).metrics(self.metrics);
        if let Some(configure) = self.relay {
            relay = configure(relay);
        }
        crate::start(
            &self.kit.tasks,
            relay,
            self.consumers,
            &self.database,
            &self.transport,
        );
        let app = self.kit.stack(api.merge(admin));
        (self.kit, app)
    }

    /// [`launch`](Self::launch)es, and serves until SIGTERM or Ctrl-C
    /// ([`shop_common::serve`]); returns once the tasks have stopped.
    ///
    /// # Errors
    ///
    /// As [`shop_common::serve`].
    pub async fn serve(self, api: Router, validator: Validator) -> std::io::Result<()> {
        let (kit, app) = self.launch(api, validator);
        shop_common::serve(app, &kit).await
    }
}
