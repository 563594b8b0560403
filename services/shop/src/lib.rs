//! The mainstay commerce system in one process: users, catalog, carts, orders, inventory,
//! payments, shipping, notifications and the gateway, each on its own port and its own database as when run alone,
//! wired to one another ([`System::start`]); and the invariants of the checkout saga
//! (ARCHITECTURE.md §4) that must hold after any scenario ([`invariants`]).
//!
//! Each service starts through its crate's `launch`, the same function its own binary runs,
//! so what runs here is what runs in production, in one process.

#![forbid(unsafe_code)]

pub mod demo;
pub mod invariants;
pub mod launcher;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shop_common::Kit;
use shop_common::config::{ServiceConfig, Vars};
use shop_messaging::config::TransportConfig;
use shop_payments::provider::TestCards;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How the system starts.
pub struct Options {
    /// The database URL of each service, by name.
    pub database_url: Box<dyn Fn(&str) -> String + Send + Sync>,
    /// The event backbone every service uses.
    pub transport: TransportConfig,
    /// Variables every service reads beside its own (knobs such as `SAGA_DEADLINE_MS`), over
    /// the system's defaults.
    pub vars: HashMap<String, String>,
    /// The gateway's port (0: any free one).
    pub gateway_port: u16,
    /// The card scheme payments asks; `None`: a new one. The scheme stands for a processor
    /// outside the shop, which remembers its authorisations across the shop's restarts: a
    /// system started again after a stop is given the one it had.
    pub cards: Option<Arc<TestCards>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("transport", &self.transport)
            .field("gateway_port", &self.gateway_port)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// The embedded default in `dir`: a SQLite file per service and one for the local bus,
    /// and the users service's keys in files there (created on first start), the demo data
    /// seeded.
    ///
    /// # Errors
    ///
    /// A key file cannot be created.
    pub fn embedded(dir: &std::path::Path) -> std::io::Result<Self> {
        let mut vars = Self::keys(dir)?;
        // A demo system: admins may make a notification channel fail, to watch its dead
        // letters and their replay.
        vars.insert("NOTIFICATIONS_FAILURE_KNOBS".into(), "true".into());
        vars.insert(
            "BUS_DATABASE_URL".into(),
            format!("sqlite://{}/bus.db?mode=rwc", dir.display()),
        );
        let transport = Self::transport(&vars)?;
        let dir = dir.to_owned();
        Ok(Self {
            database_url: Box::new(move |name| {
                format!("sqlite://{}/{name}.db?mode=rwc", dir.display())
            }),
            transport,
            vars,
            gateway_port: 0,
            cards: None,
        })
    }

    /// Production mode: each service's PostgreSQL database from `database_urls` (by name),
    /// NATS JetStream at `nats_url` in `namespace`, Redis at `redis_url` (carts, and the
    /// catalog's second tier) under keys that start with `namespace`, the users service's keys
    /// in files in `keys_dir`, the demo data seeded.
    ///
    /// # Errors
    ///
    /// A key file cannot be created, or the namespace is not one.
    pub fn production(
        database_urls: HashMap<String, String>,
        nats_url: &str,
        redis_url: &str,
        namespace: &str,
        keys_dir: &std::path::Path,
    ) -> std::io::Result<Self> {
        let mut vars = Self::keys(keys_dir)?;
        vars.insert("NATS_URL".into(), nats_url.to_owned());
        vars.insert("MESSAGING_NAMESPACE".into(), namespace.to_owned());
        vars.insert("REDIS_URL".into(), redis_url.to_owned());
        vars.insert("REDIS_KEY_PREFIX".into(), namespace.to_owned());
        let transport = Self::transport(&vars)?;
        Ok(Self {
            database_url: Box::new(move |name| {
                database_urls.get(name).cloned().unwrap_or_default()
            }),
            transport,
            vars,
            gateway_port: 0,
            cards: None,
        })
    }

    /// Sets a variable every service reads (a knob such as `SAGA_DEADLINE_MS`).
    #[must_use]
    pub fn var(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.insert(name.to_owned(), value.into());
        self
    }

    /// The users service's keys and the card key (orders seals, payments opens) as files in
    /// `dir`, and the demo data seeded on every store.
    fn keys(dir: &std::path::Path) -> std::io::Result<HashMap<String, String>> {
        let mut vars = HashMap::new();
        for (var, file) in [
            ("SIGNING_KEY_KEK_FILE", shop_users::config::KEK_FILE),
            ("MAIL_TOKEN_KEY_FILE", shop_users::config::MAIL_KEY_FILE),
            (
                "CARD_SEAL_KEY_FILE",
                shop_messaging::contracts::CARD_KEY_FILE,
            ),
        ] {
            let path = dir.join(file);
            shop_common::seal::SealKey::load_or_create(&path).map_err(std::io::Error::other)?;
            vars.insert(var.to_owned(), path.display().to_string());
        }
        // What notifications sends on SMS and push (and e-mail, without SMTP_URL): a file per
        // channel.
        vars.insert(
            "NOTIFICATIONS_SINK_DIR".to_owned(),
            dir.join("sent").display().to_string(),
        );
        for seed in ["SEED_DEMO_USERS", "SEED_DEMO_CATALOG", "SEED_DEMO_STOCK"] {
            vars.insert(seed.to_owned(), "true".to_owned());
        }
        Ok(vars)
    }

    fn transport(vars: &HashMap<String, String>) -> std::io::Result<TransportConfig> {
        TransportConfig::from_vars(&Vars(|var: &str| vars.get(var).cloned())).map_err(invalid)
    }
}

/// A running service: what stops it, and its task.
struct Running {
    name: &'static str,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

/// The whole system, running.
pub struct System {
    /// Where the gateway listens.
    pub gateway: SocketAddr,
    /// Where each service listens, by name.
    pub addresses: HashMap<&'static str, SocketAddr>,
    /// The orders service's state.
    pub orders: shop_orders::Orders,
    /// The inventory's state.
    pub inventory: shop_inventory::Inventory,
    /// The payments service's state.
    pub payments: shop_payments::Payments,
    /// The card scheme payments asks.
    pub cards: Arc<TestCards>,
    /// The gateway first: it stops before the services behind it.
    running: Vec<Running>,
    /// Each service's variables, to start it again.
    vars: HashMap<&'static str, HashMap<String, String>>,
    /// The event backbone.
    transport: TransportConfig,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("gateway", &self.gateway)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

fn invalid(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, error.to_string())
}

fn serve(name: &'static str, listener: TcpListener, app: axum::Router, kit: Kit) -> Running {
    let stop = CancellationToken::new();
    let until = stop.clone();
    let task = tokio::spawn(async move {
        shop_common::serve_until(listener, app, &kit, until.cancelled_owned()).await
    });
    Running { name, stop, task }
}

/// What a service's launch hands the system besides its kit and app.
enum Started {
    Other,
    Orders(shop_orders::Orders),
    Inventory(shop_inventory::Inventory),
    Payments(shop_payments::Payments),
}

/// A service whose state the system does not keep.
fn other<T>(_: T) -> Started {
    Started::Other
}

/// The card scheme payments asks, as its provider.
fn test_cards(cards: &Arc<TestCards>) -> Arc<dyn shop_payments::provider::Provider> {
    cards.clone()
}

/// The system's services, in the order they start, each by one line: its name, its crate and
/// configuration (read by `from_vars`, started by the crate's `launch`, as its binary does),
/// what else its `launch` takes (`with`), and what the system keeps of its state. This makes
/// [`SERVICES`] and the launcher's dispatch.
macro_rules! services {
    ($($name:literal: $krate:ident::$config:ident $(with $with:path)? => $started:expr;)*) => {
        /// The services behind the gateway, in the order they start (users first: every
        /// other one validates its tokens).
        pub const SERVICES: [&str; [$($name),*].len()] = [$($name),*];

        /// Launches the service `name` (one of [`SERVICES`]) with `vars` on `transport`, as
        /// its binary would; payments asks `cards`.
        async fn launch(
            name: &'static str,
            vars: &HashMap<String, String>,
            transport: &TransportConfig,
            cards: &Arc<TestCards>,
        ) -> std::io::Result<(Kit, axum::Router, Started)> {
            let lookup = Vars(|var: &str| vars.get(var).cloned());
            let port = vars
                .get("PORT")
                .and_then(|port| port.parse().ok())
                .unwrap_or(0);
            let service = ServiceConfig::from_vars(name, port, &lookup).map_err(invalid)?;
            match name {
                $($name => {
                    let config = $krate::$config::from_vars(service, &lookup).map_err(invalid)?;
                    let (kit, app, state) =
                        $krate::launch(config, transport $(, $with(cards))?).await?;
                    Ok((kit, app, ($started)(state)))
                })*
                other => Err(invalid(format!("{other} is not a service of the system"))),
            }
        }
    };
}

services! {
    "users": shop_users::UsersConfig => other;
    "catalog": shop_catalog::CatalogConfig => other;
    "carts": shop_carts::CartsConfig => other;
    "inventory": shop_inventory::InventoryConfig => Started::Inventory;
    "payments": shop_payments::PaymentsConfig with test_cards => Started::Payments;
    "shipping": shop_shipping::ShippingConfig => other;
    "notifications": shop_notifications::NotificationsConfig => other;
    "recommendations": shop_recommendations::RecommendationsConfig => other;
    "analytics": shop_analytics::AnalyticsConfig => other;
    "orders": shop_orders::OrdersConfig => Started::Orders;
}

/// `name` as one of [`SERVICES`].
fn service_named(name: &str) -> std::io::Result<&'static str> {
    SERVICES
        .into_iter()
        .find(|service| *service == name)
        .ok_or_else(|| invalid(format!("{name} is not a service of the system")))
}

/// Stops one running service, waiting at most `grace`.
async fn stop_one(running: Running, grace: Duration) {
    running.stop.cancel();
    match tokio::time::timeout(grace, running.task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => {
            tracing::warn!(service = running.name, %error, "stopped with an error");
        }
        Ok(Err(error)) => tracing::warn!(service = running.name, %error, "its task failed"),
        Err(_) => tracing::warn!(service = running.name, "did not stop in time"),
    }
}

impl System {
    /// Starts every service and the gateway, each on a free port of 127.0.0.1 (the gateway on
    /// `options.gateway_port`), and returns once all of them listen.
    ///
    /// # Errors
    ///
    /// A port cannot be bound, a variable is unusable, or a service cannot start.
    pub async fn start(options: Options) -> std::io::Result<Self> {
        let mut listeners = HashMap::new();
        let mut addresses = HashMap::new();
        for name in SERVICES {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addresses.insert(name, listener.local_addr()?);
            listeners.insert(name, listener);
        }
        let gateway_listener = TcpListener::bind(("127.0.0.1", options.gateway_port)).await?;
        let gateway = gateway_listener.local_addr()?;
        let url = |name: &str| format!("http://{}", addresses[name]);
        let mut common: HashMap<String, String> = HashMap::from([
            (
                "USERS_JWKS_URL".to_owned(),
                format!("{}/.well-known/jwks.json", url("users")),
            ),
            ("CATALOG_URLS".to_owned(), url("catalog")),
        ]);
        for name in SERVICES {
            common.insert(format!("{}_URLS", name.to_ascii_uppercase()), url(name));
        }
        common.extend(options.vars.clone());
        let mut vars = HashMap::new();
        for name in SERVICES {
            let mut own = common.clone();
            own.insert("PORT".into(), addresses[name].port().to_string());
            own.insert("DATABASE_URL".into(), (options.database_url)(name));
            vars.insert(name, own);
        }
        let knobs = {
            let lookup = Vars(|var: &str| vars["payments"].get(var).cloned());
            let service = ServiceConfig::from_vars("payments", 0, &lookup).map_err(invalid)?;
            shop_payments::PaymentsConfig::from_vars(service, &lookup)
                .map_err(invalid)?
                .knobs
        };
        let cards = options
            .cards
            .clone()
            .unwrap_or_else(|| Arc::new(TestCards::new(knobs)));
        let transport = options.transport.clone();
        let (mut orders, mut inventory, mut payments) = (None, None, None);
        let mut running = Vec::new();
        for name in SERVICES {
            let (kit, app, started) = launch(name, &vars[name], &transport, &cards).await?;
            match started {
                Started::Orders(state) => orders = Some(state),
                Started::Inventory(state) => inventory = Some(state),
                Started::Payments(state) => payments = Some(state),
                Started::Other => {}
            }
            let listener = listeners
                .remove(name)
                .ok_or_else(|| std::io::Error::other(format!("{name} started twice")))?;
            running.push(serve(name, listener, app, kit));
        }
        let missing = || std::io::Error::other("a service of the system did not start");

        let mut own = common.clone();
        own.insert("PORT".into(), gateway.port().to_string());
        let config =
            shop_gateway::GatewayConfig::from_vars(&Vars(|var: &str| own.get(var).cloned()))
                .map_err(invalid)?;
        let (kit, app) = shop_gateway::launch(&config)?;
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            shop_common::serve_until(gateway_listener, app, &kit, until.cancelled_owned()).await
        });
        running.insert(
            0,
            Running {
                name: "gateway",
                stop,
                task,
            },
        );
        Ok(Self {
            gateway,
            addresses,
            orders: orders.ok_or_else(missing)?,
            inventory: inventory.ok_or_else(missing)?,
            payments: payments.ok_or_else(missing)?,
            cards,
            running,
            vars,
            transport,
        })
    }

    /// Stops the service `name` (one of [`SERVICES`]) as [`stop`](Self::stop) would, then
    /// starts it again on its port and its database, as after a deploy or a crash that left
    /// its database whole: what it was doing resumes from what it stored.
    ///
    /// # Errors
    ///
    /// No such service, its port cannot be bound again, or it cannot start.
    pub async fn restart(&mut self, name: &str, grace: Duration) -> std::io::Result<()> {
        self.stop_service(name, grace).await?;
        self.start_service(name).await
    }

    /// Stops the service `name` (one of [`SERVICES`]) as [`stop`](Self::stop) would, and
    /// leaves it stopped: its port refuses connections until
    /// [`start_service`](Self::start_service) (an outage, for the demo and the chaos tests).
    ///
    /// # Errors
    ///
    /// No such service, or it is not running.
    pub async fn stop_service(&mut self, name: &str, grace: Duration) -> std::io::Result<()> {
        let name = service_named(name)?;
        let index = self
            .running
            .iter()
            .position(|running| running.name == name)
            .ok_or_else(|| invalid(format!("{name} is not running")))?;
        stop_one(self.running.remove(index), grace).await;
        Ok(())
    }

    /// Starts the stopped service `name` (one of [`SERVICES`]) again, on its port and its
    /// database.
    ///
    /// # Errors
    ///
    /// No such service, it is running, its port cannot be bound again, or it cannot start.
    pub async fn start_service(&mut self, name: &str) -> std::io::Result<()> {
        let name = service_named(name)?;
        if self.running.iter().any(|running| running.name == name) {
            return Err(invalid(format!("{name} is running")));
        }
        let listener = TcpListener::bind(self.addresses[name]).await?;
        let (kit, app, started) =
            launch(name, &self.vars[name], &self.transport, &self.cards).await?;
        match started {
            Started::Orders(state) => self.orders = state,
            Started::Inventory(state) => self.inventory = state,
            Started::Payments(state) => self.payments = state,
            Started::Other => {}
        }
        self.running.push(serve(name, listener, app, kit));
        Ok(())
    }

    /// The gateway's base URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.gateway)
    }

    /// Stops the gateway, then every service (each finishing its requests, its consumers'
    /// messages and its relay's batch), and waits for all of them, at most `grace` each.
    pub async fn stop(self, grace: Duration) {
        for running in self.running {
            stop_one(running, grace).await;
        }
    }
}
