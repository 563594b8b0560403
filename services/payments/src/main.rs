//! `shop-payments`: the payments service, on the environment's configuration.

use std::sync::Arc;
use std::time::Duration;

use shop_common::config::or_exit;
use shop_messaging::service::Service;
use shop_payments::provider::TestCards;
use shop_payments::{Payments, PaymentsConfig, router};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(PaymentsConfig::from_env());
    let _telemetry = config.service.init_telemetry();
    let validator = config.tokens.validator()?;
    let mut service = Service::start(config.service.clone()).await?;
    let provider = Arc::new(TestCards::new(config.knobs));
    let payments = Payments::start(&config, &service.database, provider, validator.clone())
        .await
        .map_err(std::io::Error::other)?;
    service.consume(Payments::consumer_config(), payments.participant());
    payments.run_sweeper(
        &service.kit.tasks,
        Duration::from_secs(60),
        config.auth_expiry,
    );
    service.serve(router(payments), validator).await
}
