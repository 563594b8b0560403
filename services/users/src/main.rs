//! `shop-users`: the users service, on the environment's configuration.

use shop_common::Kit;
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
    let users = Users::start(config, &database)
        .await
        .map_err(std::io::Error::other)?;
    // The outbox's relay, to NATS JetStream (NATS_URL) or the local bus (BUS_DATABASE_URL),
    // under the kit's supervisor: serve stops it after the last request.
    shop_messaging::start_from_env(&kit, &database, |_, _| Vec::new())
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
