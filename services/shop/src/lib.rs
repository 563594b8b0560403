//! The mainstay commerce system in one process: users, catalog, orders, inventory, payments,
//! shipping and the gateway, each on its own port and its own database as when run alone,
//! wired to one another ([`System::start`]); and the invariants of the checkout saga
//! (ARCHITECTURE.md §4) that must hold after any scenario ([`invariants`]).
//!
//! Each service starts through its crate's `launch`, the same function its own binary runs,
//! so what runs here is what runs in production, in one process.

#![forbid(unsafe_code)]

pub mod invariants;

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

/// The services behind the gateway, in the order they start (users first: every other one
/// validates its tokens).
pub const SERVICES: [&str; 6] = [
    "users",
    "catalog",
    "inventory",
    "payments",
    "shipping",
    "orders",
];

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
        })
    }

    /// Production mode: each service's PostgreSQL database from `database_urls` (by name),
    /// NATS JetStream at `nats_url` in `namespace`, the users service's keys in files in
    /// `keys_dir`, the demo data seeded.
    ///
    /// # Errors
    ///
    /// A key file cannot be created, or the namespace is not one.
    pub fn production(
        database_urls: HashMap<String, String>,
        nats_url: &str,
        namespace: &str,
        keys_dir: &std::path::Path,
    ) -> std::io::Result<Self> {
        let mut vars = Self::keys(keys_dir)?;
        vars.insert("NATS_URL".into(), nats_url.to_owned());
        vars.insert("MESSAGING_NAMESPACE".into(), namespace.to_owned());
        let transport = Self::transport(&vars)?;
        Ok(Self {
            database_url: Box::new(move |name| {
                database_urls.get(name).cloned().unwrap_or_default()
            }),
            transport,
            vars,
            gateway_port: 0,
        })
    }

    /// Sets a variable every service reads (a knob such as `SAGA_DEADLINE_MS`).
    #[must_use]
    pub fn var(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.insert(name.to_owned(), value.into());
        self
    }

    /// The users service's keys as files in `dir`, and the demo data seeded on every store.
    fn keys(dir: &std::path::Path) -> std::io::Result<HashMap<String, String>> {
        let mut vars = HashMap::new();
        for (var, file) in [
            ("SIGNING_KEY_KEK_FILE", shop_users::config::KEK_FILE),
            ("MAIL_TOKEN_KEY_FILE", shop_users::config::MAIL_KEY_FILE),
        ] {
            let path = dir.join(file);
            shop_common::seal::SealKey::load_or_create(&path).map_err(std::io::Error::other)?;
            vars.insert(var.to_owned(), path.display().to_string());
        }
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
        let vars_of = |name: &str| {
            let mut vars = common.clone();
            vars.insert("PORT".into(), addresses[name].port().to_string());
            vars.insert("DATABASE_URL".into(), (options.database_url)(name));
            vars
        };
        // A service's configuration, from the system's variables and its own.
        macro_rules! config {
            ($config:ty, $name:literal) => {{
                let vars = vars_of($name);
                let lookup = Vars(|var: &str| vars.get(var).cloned());
                let service = ServiceConfig::from_vars($name, addresses[$name].port(), &lookup)
                    .map_err(invalid)?;
                <$config>::from_vars(service, &lookup).map_err(invalid)?
            }};
        }
        let transport = &options.transport;
        let mut running = Vec::new();
        let mut take = |name: &str| {
            listeners
                .remove(name)
                .ok_or_else(|| std::io::Error::other(format!("{name} started twice")))
        };

        let config = config!(shop_users::UsersConfig, "users");
        let (kit, app, _) = shop_users::launch(config, transport).await?;
        running.push(serve("users", take("users")?, app, kit));

        let config = config!(shop_catalog::CatalogConfig, "catalog");
        let (kit, app, _) = shop_catalog::launch(config, transport).await?;
        running.push(serve("catalog", take("catalog")?, app, kit));

        let config = config!(shop_inventory::InventoryConfig, "inventory");
        let (kit, app, inventory) = shop_inventory::launch(config, transport).await?;
        running.push(serve("inventory", take("inventory")?, app, kit));

        let config = config!(shop_payments::PaymentsConfig, "payments");
        let cards = Arc::new(TestCards::new(config.knobs));
        let (kit, app, payments) = shop_payments::launch(config, transport, cards.clone()).await?;
        running.push(serve("payments", take("payments")?, app, kit));

        let config = config!(shop_shipping::ShippingConfig, "shipping");
        let (kit, app, _) = shop_shipping::launch(config, transport).await?;
        running.push(serve("shipping", take("shipping")?, app, kit));

        let config = config!(shop_orders::OrdersConfig, "orders");
        let (kit, app, orders) = shop_orders::launch(config, transport).await?;
        running.push(serve("orders", take("orders")?, app, kit));

        let mut vars = common.clone();
        vars.insert("PORT".into(), gateway.port().to_string());
        let config =
            shop_gateway::GatewayConfig::from_vars(&Vars(|var: &str| vars.get(var).cloned()))
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
            orders,
            inventory,
            payments,
            cards,
            running,
        })
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
    }
}
