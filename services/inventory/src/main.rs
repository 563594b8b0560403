//! `shop-inventory`: the inventory service, on the environment's configuration.

use shop_common::config::or_exit;
use shop_inventory::{Inventory, InventoryConfig, router};
use shop_messaging::service::Service;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(InventoryConfig::from_env());
    let _telemetry = config.service.init_telemetry();
    let validator = config.tokens.validator()?;
    let mut service = Service::start(config.service.clone()).await?;
    let inventory = Inventory::start(&config, &service.database, validator.clone())
        .await
        .map_err(std::io::Error::other)?;
    service.consume(Inventory::consumer_config(), inventory.participant());
    inventory.run_sweeper(&service.kit.tasks, config.sweep_every);
    service.serve(router(inventory), validator).await
}
