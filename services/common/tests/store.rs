//! The example store behaves the same on SQLite and on PostgreSQL.

use serde_json::json;
use shop_common::store::{
    Database, IdempotencyStore, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, idempotency_store,
};
use shop_common::testing::PgTestDb;

async fn remembers_the_first_response_per_key(store: &dyn IdempotencyStore) {
    assert_eq!(store.lookup("k1").await.unwrap(), None);
    let first = store
        .remember("k1", "sha256:aaa", &json!({"order_id": 1}))
        .await
        .unwrap();
    assert!(first.first);
    assert_eq!(first.fingerprint, "sha256:aaa");
    let response: serde_json::Value = serde_json::from_str(&first.response).unwrap();
    assert_eq!(response, json!({"order_id": 1}));

    let again = store
        .remember("k1", "sha256:bbb", &json!({"order_id": 2}))
        .await
        .unwrap();
    assert!(!again.first, "the key was used before");
    assert_eq!(again.fingerprint, "sha256:aaa", "the first request is kept");
    let response: serde_json::Value = serde_json::from_str(&again.response).unwrap();
    assert_eq!(response, json!({"order_id": 1}));

    let looked_up = store.lookup("k1").await.unwrap().unwrap();
    assert_eq!(looked_up.fingerprint, "sha256:aaa");
    assert!(
        store
            .remember("k2", "sha256:ccc", &json!(null))
            .await
            .unwrap()
            .first
    );
}

async fn migrated(url: &str) -> Database {
    let database = Database::connect(url).await.unwrap();
    database
        .migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS)
        .await
        .unwrap();
    database.ping().await.unwrap();
    database
}

#[tokio::test]
async fn sqlite() {
    let database = migrated("sqlite::memory:").await;
    assert!(matches!(database, Database::Sqlite(_)));
    remembers_the_first_response_per_key(&*idempotency_store(&database)).await;
}

#[tokio::test]
async fn postgres() {
    let test_db = PgTestDb::create("shop_common")
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (set TEST_POSTGRES_URL to use another server)");
    let database = migrated(&test_db.url).await;
    assert!(matches!(database, Database::Postgres(_)));
    remembers_the_first_response_per_key(&*idempotency_store(&database)).await;
    if let Database::Postgres(pool) = database {
        pool.close().await;
    }
    test_db.drop_database().await.unwrap();
}

#[tokio::test]
async fn an_unknown_database_url_is_a_typed_error() {
    let error = Database::connect("mysql://root@localhost/test")
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"unsupported database URL "mysql://root@localhost/test": expected postgres:// or sqlite:"#
    );
}
