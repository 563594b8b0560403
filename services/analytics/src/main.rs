//! `shop-analytics`: the analytics service, on the environment's configuration.

use shop_analytics::{AnalyticsConfig, launch};
use shop_common::config::or_exit;
use shop_messaging::config::TransportConfig;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(AnalyticsConfig::from_env());
    let _telemetry = config.service.init_telemetry();
    let (kit, app, _) = launch(config, &or_exit(TransportConfig::from_env())).await?;
    shop_common::serve(app, &kit).await
}
