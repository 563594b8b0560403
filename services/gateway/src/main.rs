//! `shop-gateway`: the gateway, on the environment's configuration.

use shop_common::config::or_exit;
use shop_gateway::{GatewayConfig, launch};

/// mimalloc rather than the system allocator: malloc and free were a fifth of the instructions
/// of a proxied request (BENCHMARKS.md, the gateway's section, for the measurement).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(GatewayConfig::from_env());
    let telemetry = config.service.init_telemetry();
    let (kit, app) = launch(&config)?;
    // In production mode, `serve` registers the gateway with Consul too.
    shop_common::serve(app, &kit).await?;
    drop(telemetry);
    Ok(())
}
