//! `shop-gateway`: the gateway, on the environment's configuration.

use std::collections::HashMap;
use std::time::Duration;

use mainstay_discovery::consul::model::Registration;
use mainstay_discovery::consul::{ConsulClient, Lease};
use shop_common::Kit;
use shop_common::config::{EX_CONFIG, or_exit};
use shop_gateway::{Gateway, GatewayConfig, app, discover};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(GatewayConfig::from_env());
    let telemetry = mainstay_telemetry::init(&config.service.name).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(EX_CONFIG)
    });
    let validator = config.tokens.validator()?;
    let sources = discover(&config).map_err(std::io::Error::other)?;
    let kit = Kit::new(config.service.clone());
    let gateway =
        Gateway::new(&config, &kit, validator, &sources).map_err(std::io::Error::other)?;
    let lease = match &config.consul_addr {
        Some(address) => Some(register(address, &config).await?),
        None => None,
    };
    let app = app(gateway, &kit, &config.cors_origins);
    // Leave Consul first, so that callers stop choosing this instance while it drains.
    let shutdown = async move {
        shop_common::shutdown_signal().await;
        if let Some(lease) = lease
            && let Err(error) = lease.deregister().await
        {
            tracing::warn!(%error, "could not deregister from consul");
        }
    };
    let listener = tokio::net::TcpListener::bind(kit.config.listen).await?;
    shop_common::serve_until(listener, app, &kit, shutdown).await?;
    drop(telemetry);
    Ok(())
}

/// Registers this gateway with the local Consul agent for as long as it runs.
async fn register(address: &str, config: &GatewayConfig) -> std::io::Result<Lease> {
    let mut client = ConsulClient::new(address).map_err(std::io::Error::other)?;
    if let Ok(token) = std::env::var("CONSUL_HTTP_TOKEN") {
        client = client.token(token);
    }
    let listen = config.service.listen;
    let registration = Registration {
        id: format!("gateway-{}-{}", listen.ip(), listen.port()),
        name: "gateway".to_owned(),
        tags: vec!["http".to_owned()],
        address: listen.ip().to_string(),
        port: listen.port(),
        meta: HashMap::new(),
        check: None,
    };
    Lease::start(
        client,
        registration,
        Duration::from_secs(10),
        Duration::from_secs(60),
    )
    .await
    .map_err(std::io::Error::other)
}
