//! `shop-shipping`: the shipping service, on the environment's configuration.

use shop_common::config::or_exit;
use shop_messaging::service::Service;
use shop_shipping::{Shipping, ShippingConfig, router};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(ShippingConfig::from_env());
    let _telemetry = config.service.init_telemetry();
    let validator = config.tokens.validator()?;
    let mut service = Service::start(config.service.clone()).await?;
    let shipping = Shipping::start(&config, &service.database, validator.clone())
        .await
        .map_err(std::io::Error::other)?;
    service.consume(Shipping::consumer_config(), shipping.participant());
    service.serve(router(shipping), validator).await
}
