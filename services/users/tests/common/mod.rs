//! A users service in the test, on either database, and a small client for it.
#![allow(dead_code, unreachable_pub)]

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode};
use serde_json::Value;
use shop_common::Kit;
use shop_common::bus::InProcessBus;
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
    /// The bus the service publishes its events on.
    pub bus: InProcessBus,
}

impl Client {
    pub async fn start(database: &Database, config: UsersConfig) -> Self {
        let kit = Kit::new(config.service.clone())
            .with_idempotency(database)
            .await
            .unwrap();
        let bus = InProcessBus::new();
        let users = Users::start(config, database, std::sync::Arc::new(bus.clone()))
            .await
            .unwrap();
        Self {
            app: kit.stack(router(users.clone())),
            users,
            bus,
        }
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

/// The next users event, which must come at once: its kind and payload.
pub fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<shop_common::bus::Envelope>,
) -> (String, Value) {
    let event = events.try_recv().expect("an event was published");
    (event.kind, event.payload)
}
