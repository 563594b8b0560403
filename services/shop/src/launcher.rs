//! What the `shop` binary needs besides [`System`](crate::System): the first admin's
//! password, kept in the data directory, and a PostgreSQL database per service.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::SERVICES;

/// The file in the data directory that holds the first admin's password.
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";

/// The first admin's password file in `dir`: created on first start with a random password
/// (readable by its owner only), read as it is afterwards; its path.
///
/// # Errors
///
/// The file cannot be created or read.
pub fn admin_password(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(ADMIN_PASSWORD_FILE);
    if !path.exists() {
        let password = format!("admin-{}", uuid::Uuid::new_v4().simple());
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::io::Write::write_all(&mut options.open(&path)?, password.as_bytes())?;
    }
    Ok(path)
}

/// A database `shop_<service>` for each of [`SERVICES`] on the PostgreSQL server of
/// `server_url` (any database of it), created when missing; their URLs by service.
///
/// # Errors
///
/// The server cannot be reached, or a database cannot be created.
pub async fn databases(server_url: &str) -> std::io::Result<HashMap<String, String>> {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(server_url)
        .await
        .map_err(std::io::Error::other)?;
    let base = match server_url.rfind('/') {
        Some(slash) if server_url[..slash].ends_with(|c: char| c != '/') => &server_url[..slash],
        _ => server_url,
    };
    let mut urls = HashMap::new();
    for service in SERVICES {
        let name = format!("shop_{service}");
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&name)
                .fetch_optional(&mut admin)
                .await
                .map_err(std::io::Error::other)?;
        if exists.is_none() {
            // The name is ours (shop_ and a service's name): nothing to quote.
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .map_err(std::io::Error::other)?;
        }
        urls.insert(service.to_owned(), format!("{base}/{name}"));
    }
    Ok(urls)
}
