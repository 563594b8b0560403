//! A users service in the test, on either database, and a small client for it.
#![allow(dead_code, unreachable_pub)]

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode};
use serde_json::Value;
use shop_common::Kit;
use shop_common::config::{ServiceConfig, Vars};
use shop_common::store::Database;
pub use shop_common::testing::Reply;
use shop_common::testing::{call, send};
use shop_users::{Users, UsersConfig, router};

pub fn config(database_url: &str, extra: &[(&str, &str)]) -> UsersConfig {
    let mut pairs: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    pairs.push(("DATABASE_URL".into(), database_url.into()));
    pairs.push(("SEED_DEMO_USERS".into(), "true".into()));
    // One key each for every replica of a test (as production gives every replica the same).
    for (var, key) in [
        (
            "MAIL_TOKEN_KEY",
            "bWFpbC10b2tlbi1rZXktZm9yLXRoZS10ZXN0cy0wMDA",
        ),
        (
            "SIGNING_KEY_KEK",
            "c2lnbmluZy1rZXkta2VrLWZvci10aGUtdGVzdHMtMDA",
        ),
    ] {
        if !pairs.iter().any(|(k, _)| k == var) {
            pairs.push((var.into(), key.into()));
        }
    }
    if !pairs.iter().any(|(k, _)| k == "ADMIN_PASSWORD") {
        pairs.push(("ADMIN_PASSWORD".into(), "admin-change-me-now".into()));
    }
    let vars = Vars(move |var: &str| pairs.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone()));
    let service = ServiceConfig::from_vars("users", 0, &vars).unwrap();
    UsersConfig::from_vars(service, &vars).unwrap()
}

pub struct Client {
    pub app: Router,
    pub users: Users,
    /// The service's database, whose outbox holds what it announced (nothing relays it here).
    pub database: Database,
}

/// Where a test has read a subject's messages up to.
#[derive(Debug)]
pub struct Watch {
    subject: &'static str,
    seen: usize,
}

impl Client {
    pub async fn start(database: &Database, config: UsersConfig) -> Self {
        let kit = Kit::new(config.service.clone())
            .with_idempotency(database)
            .await
            .unwrap();
        let users = Users::start(config, database).await.unwrap();
        Self {
            app: kit.stack(router(users.clone())),
            users,
            database: database.clone(),
        }
    }

    /// Every message on `subject` the service wrote to its outbox, in order: kind and body.
    pub async fn messages(&self, subject: &str) -> Vec<(String, Value)> {
        shop_messaging::Outbox::pending(&self.database, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|pending| pending.subject == subject)
            .map(|pending| {
                let envelope: Value = serde_json::from_slice(&pending.payload).unwrap();
                (
                    envelope["kind"].as_str().unwrap().to_owned(),
                    envelope["body"].clone(),
                )
            })
            .collect()
    }

    /// A watch of `subject` from now on.
    pub async fn watch(&self, subject: &'static str) -> Watch {
        Watch {
            subject,
            seen: self.messages(subject).await.len(),
        }
    }

    /// The next message on the watched subject, if one was written.
    pub async fn try_next(&self, watch: &mut Watch) -> Option<(String, Value)> {
        let next = self
            .messages(watch.subject)
            .await
            .into_iter()
            .nth(watch.seen)?;
        watch.seen += 1;
        Some(next)
    }

    /// The next message on the watched subject, which must have been written.
    pub async fn next(&self, watch: &mut Watch) -> (String, Value) {
        self.try_next(watch)
            .await
            .unwrap_or_else(|| panic!("a message on {}", watch.subject))
    }

    /// Skips what was written on the watched subject so far.
    pub async fn skip(&self, watch: &mut Watch) {
        watch.seen = self.messages(watch.subject).await.len();
    }

    /// The token a `SendEmailConfirmation` carries, opened with the mail key as the mailer
    /// does.
    pub fn token_of(&self, command: &Value) -> String {
        self.open_token(command).unwrap()
    }

    /// [`token_of`](Self::token_of), or why it does not open.
    pub fn open_token(&self, command: &Value) -> Result<String, shop_common::seal::SealError> {
        let context = shop_users::events::SendEmailConfirmation::seal_context(
            command["user_id"].as_str().unwrap_or_default(),
            command["email"].as_str().unwrap_or_default(),
        );
        let opened = self.users.mail_key().open_text(
            command["sealed_token"].as_str().unwrap_or_default(),
            &context,
        )?;
        Ok(String::from_utf8(opened).unwrap())
    }

    pub async fn raw(&self, request: Request<Body>) -> Reply {
        send(&self.app, request).await
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        call(&self.app, method, path, token, body, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, None, Some(body)).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// Logs in and returns (access token, refresh token).
    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let reply = self
            .post(
                "/login",
                serde_json::json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        (
            reply.body["access_token"].as_str().unwrap().to_owned(),
            reply.body["refresh_token"].as_str().unwrap().to_owned(),
        )
    }
}
