//! `shop-catalog`: the catalog service, on the environment's configuration.

use shop_catalog::{Catalog, CatalogConfig, router};
use shop_common::config::or_exit;
use shop_messaging::service::Service;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(CatalogConfig::from_env());
    let _telemetry = config.service.init_telemetry();
    let validator = config.tokens.validator()?;
    let service = Service::start(config.service.clone()).await?;
    let catalog = Catalog::start(&config, &service.database, validator.clone())
        .await
        .map_err(std::io::Error::other)?;
    // Other replicas' changes drop this one's cached pages.
    catalog.follow_events(&service.kit.tasks, service.transport.clone());
    let collector = catalog.product_cache().collector();
    service.kit.metrics.register_collector(Box::new(collector));
    service.serve(router(catalog), validator).await
}
