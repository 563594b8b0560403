//! `shop-orders`: the orders service, on the environment's configuration.

use std::sync::Arc;

use shop_common::client::{ClientSettings, upstream};
use shop_common::config::or_exit;
use shop_messaging::service::Service;
use shop_orders::catalog::HttpCatalog;
use shop_orders::{Orders, OrdersConfig, router};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(OrdersConfig::from_env());
    let _telemetry = config.service.init_telemetry();
    let validator = config.tokens.validator()?;
    let mut service = Service::start(config.service.clone()).await?;
    let catalog = upstream(
        "catalog",
        mainstay_discovery::fixed(config.catalog.clone()),
        ClientSettings {
            deadline: config.service.request_timeout,
            attempt_timeout: config.attempt_timeout,
            max_concurrent: 256,
        },
        &service.kit.metrics,
        &service.kit.resilience,
    );
    let orders = Orders::start(
        &service.database,
        Arc::new(HttpCatalog::new(catalog)),
        validator.clone(),
        config.timing,
    )
    .await
    .map_err(std::io::Error::other)?;
    service.consume(Orders::consumer_config(), orders.orchestrator());
    orders.run_scanner(&service.kit.tasks);
    service.serve(router(orders), validator).await
}
