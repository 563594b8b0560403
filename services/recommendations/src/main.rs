//! `shop-recommendations`: the recommendations service, on the environment's configuration.

use shop_common::config::or_exit;
use shop_messaging::config::TransportConfig;
use shop_recommendations::{RecommendationsConfig, launch};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(RecommendationsConfig::from_env());
    let _telemetry = config.service.init_telemetry();
    let (kit, app, _) = launch(config, &or_exit(TransportConfig::from_env())).await?;
    shop_common::serve(app, &kit).await
}
