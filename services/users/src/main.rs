//! `shop-users`: the users service, on the environment's configuration.

use shop_common::config::or_exit;
use shop_messaging::service::Service;
use shop_users::{Users, UsersConfig, router};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(UsersConfig::from_env());
    let _telemetry = config.service.init_telemetry();
    let service = Service::start(config.service.clone()).await?;
    let users = Users::start(config, &service.database)
        .await
        .map_err(std::io::Error::other)?;
    let validator = users.validator();
    service.serve(router(users), validator).await
}
