//! The kit's store behaves the same on SQLite and on PostgreSQL, and its migrations live beside
//! a service's own without meeting them.

use shop_common::idempotency::{Claim, IdempotencyStore, SqlIdempotency};
use std::sync::{Arc, Mutex};

use shop_common::store::{Database, Dialect, StoreError, Tx, TxConn};
use shop_common::{on_db, on_tx};

shop_common::on_both_stores!(
    keys_are_claimed_once_and_answers_kept,
    the_kits_migrations_never_meet_the_services,
    a_transaction_stands_or_falls_whole_and_hooks_follow_its_commit,
);

async fn keys_are_claimed_once_and_answers_kept(database: &Database, _: &str) {
    database.migrate_kit().await.unwrap();
    database.ping().await.unwrap();
    let store = SqlIdempotency::new(database.clone());
    let claim = |id: &'static str, fingerprint: &'static str, now: i64| {
        let store = store.clone();
        async move {
            store
                .claim(id, fingerprint, now, now - 60_000)
                .await
                .unwrap()
        }
    };

    assert_eq!(claim("k1", "fp-a", 1_000_000).await, Claim::Claimed);
    // While it runs: the same request waits, another one with the key is refused.
    assert_eq!(claim("k1", "fp-a", 1_000_500).await, Claim::InProgress);
    assert_eq!(claim("k1", "fp-b", 1_000_500).await, Claim::Mismatch);
    store
        .complete("k1", 1_000_000, b"sealed answer")
        .await
        .unwrap();
    assert_eq!(
        claim("k1", "fp-a", 1_001_000).await,
        Claim::Done(b"sealed answer".to_vec())
    );
    // A kept answer is not released.
    store.release("k1", 1_000_000).await.unwrap();
    assert_eq!(
        claim("k1", "fp-a", 1_001_000).await,
        Claim::Done(b"sealed answer".to_vec())
    );

    // A released claim (a 5xx) can be made again.
    assert_eq!(claim("k2", "fp-a", 1_000_000).await, Claim::Claimed);
    store.release("k2", 1_000_000).await.unwrap();
    assert_eq!(claim("k2", "fp-a", 1_000_100).await, Claim::Claimed);

    // A claim whose request died (older than the cut-off, no answer) is taken over once.
    assert_eq!(claim("k3", "fp-a", 1_000_000).await, Claim::Claimed);
    assert_eq!(claim("k3", "fp-a", 1_070_000).await, Claim::Claimed);
    assert_eq!(claim("k3", "fp-a", 1_070_001).await, Claim::InProgress);
    // The request that outran its claim neither releases nor answers for the new holder.
    store.release("k3", 1_000_000).await.unwrap();
    assert_eq!(claim("k3", "fp-a", 1_070_002).await, Claim::InProgress);
    store.complete("k3", 1_000_000, b"late").await.unwrap();
    assert_eq!(claim("k3", "fp-a", 1_070_003).await, Claim::InProgress);
    store.complete("k3", 1_070_000, b"on time").await.unwrap();
    assert_eq!(
        claim("k3", "fp-a", 1_070_004).await,
        Claim::Done(b"on time".to_vec())
    );

    // Old keys are forgotten.
    assert_eq!(store.prune(1_050_000).await.unwrap(), 2);
    assert_eq!(claim("k1", "fp-b", 1_100_000).await, Claim::Claimed);
}

async fn the_kits_migrations_never_meet_the_services(database: &Database, _: &str) {
    let service = shop_common::testing::ServiceMigrations::new().await;
    let service = &service.migrator;
    // Either order, and again on a restart: both sets apply, neither sees the other's.
    database.migrate(service, service).await.unwrap();
    database.migrate_kit().await.unwrap();
    database.migrate_kit().await.unwrap();
    database.migrate(service, service).await.unwrap();
    for query in [
        "SELECT COUNT(*) FROM things",
        "SELECT COUNT(*) FROM kit_idempotency",
    ] {
        let count: i64 = match database {
            Database::Sqlite(pool) => sqlx::query_scalar(query).fetch_one(pool).await,
            Database::Postgres(pool) => sqlx::query_scalar(query).fetch_one(pool).await,
        }
        .unwrap();
        assert_eq!(count, 0, "{query}");
    }
}

#[tokio::test]
async fn an_unknown_database_url_is_a_typed_error() {
    let error = Database::connect("mysql://root@localhost/test")
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"unsupported database URL scheme "mysql": expected postgres:// or sqlite:"#
    );
}

async fn insert(tx: &mut Tx, id: &str) {
    on_tx!(tx, conn => sqlx::query("INSERT INTO tx_things (id) VALUES ($1)")
        .bind(id)
        .execute(&mut **conn)
        .await.map(|done| done.rows_affected()))
    .unwrap();
}

async fn things(database: &Database) -> Vec<String> {
    on_db!(database, pool => sqlx::query_scalar("SELECT id FROM tx_things ORDER BY id")
        .fetch_all(pool)
        .await)
    .unwrap()
}

async fn a_transaction_stands_or_falls_whole_and_hooks_follow_its_commit(
    database: &Database,
    url: &str,
) {
    let expected = if url.starts_with("sqlite:") {
        Dialect::Sqlite
    } else {
        Dialect::Postgres
    };
    assert_eq!(database.dialect(), expected);
    on_db!(database, pool => sqlx::query("CREATE TABLE tx_things (id TEXT PRIMARY KEY NOT NULL)")
        .execute(pool)
        .await.map(|done| done.rows_affected()))
    .unwrap();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let hook = |name: &'static str| {
        let ran = ran.clone();
        move || ran.lock().unwrap().push(name)
    };

    // Rolled back: neither write stands, no hook runs.
    let mut tx = database.begin().await.unwrap();
    assert_eq!(tx.dialect(), expected);
    insert(&mut tx, "a").await;
    insert(&mut tx, "b").await;
    tx.after_commit(hook("rolled back"));
    tx.rollback().await.unwrap();
    assert!(things(database).await.is_empty());

    // Dropped uncommitted (a handler that failed or whose caller left): the same.
    let mut tx = database.begin().await.unwrap();
    insert(&mut tx, "c").await;
    tx.after_commit(hook("dropped"));
    drop(tx);
    assert!(things(database).await.is_empty());

    // A failing statement leaves the transaction to be dropped: the earlier write goes too.
    let mut tx = database.begin().await.unwrap();
    insert(&mut tx, "d").await;
    let duplicate = on_tx!(&mut tx, conn => sqlx::query("INSERT INTO tx_things (id) VALUES ($1)")
        .bind("d")
        .execute(&mut **conn)
        .await.map(|done| done.rows_affected()));
    assert!(duplicate.is_err());
    drop(tx);
    assert!(things(database).await.is_empty());

    // Committed after a failed statement: refused on both dialects, nothing written, no hook.
    // (PostgreSQL would answer the COMMIT with a rollback; SQLite would keep "g".)
    let mut tx = database.begin().await.unwrap();
    insert(&mut tx, "g").await;
    tx.after_commit(hook("after a failure"));
    let duplicate = on_tx!(&mut tx, conn => sqlx::query("INSERT INTO tx_things (id) VALUES ($1)")
        .bind("g")
        .execute(&mut **conn)
        .await.map(|done| done.rows_affected()));
    assert!(duplicate.is_err());
    assert!(tx.failed());
    let refused = tx.commit().await.unwrap_err();
    assert!(matches!(refused, StoreError::Aborted), "{refused:?}");
    assert!(things(database).await.is_empty());
    assert!(ran.lock().unwrap().is_empty());

    // On PostgreSQL, a failure the transaction was not told of is caught at the commit too.
    if expected == Dialect::Postgres {
        let mut tx = database.begin().await.unwrap();
        insert(&mut tx, "h").await;
        if let TxConn::Postgres(conn) = tx.conn() {
            let ignored = sqlx::query("INSERT INTO tx_things (id) VALUES ($1)")
                .bind("h")
                .execute(&mut **conn)
                .await;
            assert!(ignored.is_err());
        }
        assert!(!tx.failed(), "not told");
        let refused = tx.commit().await.unwrap_err();
        assert!(matches!(refused, StoreError::Aborted), "{refused:?}");
        assert!(things(database).await.is_empty());
    }

    // Rolled back to a savepoint after a failed statement: what came before it commits, what
    // came after it does not.
    let mut tx = database.begin().await.unwrap();
    insert(&mut tx, "s").await;
    let savepoint = tx.savepoint().await.unwrap();
    insert(&mut tx, "t").await;
    let duplicate = on_tx!(&mut tx, conn => sqlx::query("INSERT INTO tx_things (id) VALUES ($1)")
        .bind("s")
        .execute(&mut **conn)
        .await.map(|done| done.rows_affected()));
    assert!(duplicate.is_err());
    assert!(tx.failed());
    tx.rollback_to(savepoint).await.unwrap();
    assert!(!tx.failed());
    tx.commit().await.unwrap();
    assert_eq!(things(database).await, ["s"]);
    // Another transaction's savepoint cannot clear this one's failure.
    let mut other = database.begin().await.unwrap();
    let elsewhere = other.savepoint().await.unwrap();
    other.rollback().await.unwrap();
    let mut tx = database.begin().await.unwrap();
    let _own = tx.savepoint().await.unwrap();
    assert!(matches!(
        tx.rollback_to(elsewhere).await,
        Err(StoreError::Aborted)
    ));
    assert!(tx.failed());
    drop(tx);
    on_db!(database, pool => sqlx::query("DELETE FROM tx_things").execute(pool).await.map(|done| done.rows_affected())).unwrap();

    // Committed: both writes, then the hooks, in order.
    let mut tx = database.begin().await.unwrap();
    insert(&mut tx, "e").await;
    tx.after_commit(hook("first"));
    insert(&mut tx, "f").await;
    tx.after_commit(hook("second"));
    assert!(ran.lock().unwrap().is_empty(), "no hook before the commit");
    tx.commit().await.unwrap();
    assert_eq!(things(database).await, ["e", "f"]);
    assert_eq!(*ran.lock().unwrap(), ["first", "second"]);
}

/// Processes sharing one SQLite file (the local bus) migrate it at once on start: each one's
/// migrations end applied, none fails for the table another just created.
#[tokio::test]
async fn processes_migrating_one_sqlite_file_at_once_all_start() {
    let service = shop_common::testing::ServiceMigrations::new().await;
    for round in 0..5 {
        let path = std::env::temp_dir().join(format!(
            "racing-migrations-{}-{round}.db",
            uuid::Uuid::new_v4()
        ));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut processes = Vec::new();
        for _ in 0..4 {
            // A pool of its own each: as separate processes would have.
            processes.push(Database::connect(&url).await.unwrap());
        }
        let migrations = processes
            .iter()
            .map(|database| database.migrate(&service.migrator, &service.migrator));
        for result in futures_util::future::join_all(migrations).await {
            result.unwrap_or_else(|error| panic!("round {round}: {error}"));
        }
        let _ = std::fs::remove_file(&path);
    }
}
