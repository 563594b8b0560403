//! `shop-payments`: the payments service, on the environment's configuration, over the test
//! card scheme.

use std::sync::Arc;

use shop_common::config::or_exit;
use shop_messaging::config::TransportConfig;
use shop_payments::provider::TestCards;
use shop_payments::{PaymentsConfig, launch};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(PaymentsConfig::from_env());
    let _telemetry = config.service.init_telemetry();
    let provider = Arc::new(TestCards::new(config.knobs));
    let transport = or_exit(TransportConfig::from_env());
    let (kit, app, _) = launch(config, &transport, provider).await?;
    shop_common::serve(app, &kit).await
}
