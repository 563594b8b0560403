//! `shop-users`: the users service, on the environment's configuration.

use std::sync::Arc;

use shop_common::Kit;
use shop_common::bus::InProcessBus;
use shop_common::config::or_exit;
use shop_common::store::Database;
use shop_users::{Users, UsersConfig, router};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = or_exit(UsersConfig::from_env());
    let telemetry = config.service.init_telemetry();
    let database = Database::connect(config.service.database_url.expose())
        .await
        .map_err(std::io::Error::other)?;
    // Every keyed POST and PATCH is answered once (the gateway retries them).
    let kit = Kit::new(config.service.clone())
        .with_idempotency(&database)
        .await
        .map_err(std::io::Error::other)?;
    // Events stay in the process until the event backbone lands (NATS in production).
    let users = Users::start(config, &database, Arc::new(InProcessBus::new()))
        .await
        .map_err(std::io::Error::other)?;
    let db = database.clone();
    kit.health.add_check("database", move || {
        let db = db.clone();
        async move { db.ping().await }
    });
    shop_common::serve(kit.stack(router(users)), &kit).await?;
    drop(telemetry);
    Ok(())
}
