//! `shop-catalog`: the catalog service, on the environment's configuration.

use std::sync::Arc;

use shop_catalog::{Catalog, CatalogConfig, router};
use shop_common::Kit;
use shop_common::bus::InProcessBus;
use shop_common::config::or_exit;
use shop_common::store::Database;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(CatalogConfig::from_env());
    let telemetry = config.service.init_telemetry();
    let validator = config.tokens.validator()?;
    let database = Database::connect(config.service.database_url.expose())
        .await
        .map_err(std::io::Error::other)?;
    // Every keyed POST and PATCH is answered once (the gateway retries them).
    let kit = Kit::new(config.service.clone())
        .with_idempotency(&database)
        .await
        .map_err(std::io::Error::other)?;
    let catalog = Catalog::start(&config, &database, validator, Arc::new(InProcessBus::new()))
        .await
        .map_err(std::io::Error::other)?;
    kit.metrics
        .register_collector(Box::new(catalog.product_cache().collector()));
    let db = database.clone();
    kit.health.add_check("database", move || {
        let db = db.clone();
        async move { db.ping().await }
    });
    shop_common::serve(kit.stack(router(catalog)), &kit).await?;
    drop(telemetry);
    Ok(())
}
