//! `shop-gateway`: the gateway, on the environment's configuration.

use shop_common::Kit;
use shop_common::config::or_exit;
use shop_gateway::{Gateway, GatewayConfig, app, discover};

/// mimalloc rather than the system allocator: malloc and free were a fifth of the instructions
/// of a proxied request (BENCHMARKS.md, the gateway's section, for the measurement).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(GatewayConfig::from_env());
    let telemetry = config.service.init_telemetry();
    let validator = config.tokens.validator()?;
    let sources = discover(&config).map_err(std::io::Error::other)?;
    let kit = Kit::new(config.service.clone());
    let gateway =
        Gateway::new(&config, &kit, validator, &sources).map_err(std::io::Error::other)?;
    // What catalog announces (price changes) drops its cached answers at once, not at max-age.
    gateway.invalidate_on_events(&kit, config.messaging.clone());
    // In production mode, `serve` registers the gateway with Consul too.
    shop_common::serve(app(gateway, &kit, &config.cors_origins), &kit).await?;
    drop(telemetry);
    Ok(())
}
