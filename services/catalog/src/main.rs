//! `shop-catalog`: the catalog service, on the environment's configuration.

use shop_catalog::{Catalog, CatalogConfig, router};
use shop_common::Kit;
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
    let catalog = Catalog::start(&config, &database, validator)
        .await
        .map_err(std::io::Error::other)?;
    // The outbox's relay, to NATS JetStream (NATS_URL) or the local bus (BUS_DATABASE_URL),
    // under the kit's supervisor: serve stops it after the last request.
    let transport = shop_messaging::start_from_env(&kit, &database, |_, _| Vec::new())
        .await
        .map_err(std::io::Error::other)?;
    catalog.follow_events(&kit.tasks, transport);
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
