//! Which transport a service uses, from its environment.

use std::sync::Arc;

use shop_common::config::{ConfigError, Secret, Vars};

use crate::jetstream::JetStreamTransport;
use crate::local::LocalTransport;
use crate::transport::{Transport, TransportError};

/// The transport, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportConfig {
    /// `NATS_URL` is set (or a file named by `NATS_URL_FILE`, as it may hold credentials):
    /// JetStream, in the namespace `MESSAGING_NAMESPACE` (default `shop`).
    JetStream {
        /// The server.
        url: Secret,
        /// The namespace: its streams and subjects.
        namespace: String,
    },
    /// Otherwise the local transport, on `BUS_DATABASE_URL` (default `sqlite://bus.db?mode=rwc`,
    /// in the working directory, beside the services' own files).
    Local {
        /// Its database.
        database_url: Secret,
    },
}

impl TransportConfig {
    /// From the process environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars(|var: &str| std::env::var(var).ok()))
    }

    /// From `vars`.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_vars<F: Fn(&str) -> Option<String>>(vars: &Vars<F>) -> Result<Self, ConfigError> {
        if let Some(url) = vars.secret("NATS_URL")? {
            let namespace = vars
                .raw("MESSAGING_NAMESPACE")
                .unwrap_or_else(|| "shop".to_owned());
            let valid = (1..=32).contains(&namespace.len())
                && namespace.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !valid {
                return Err(ConfigError {
                    var: "MESSAGING_NAMESPACE".to_owned(),
                    value: namespace,
                    expected: "1 to 32 of a-z 0-9 _ -".to_owned(),
                });
            }
            return Ok(Self::JetStream { url, namespace });
        }
        let database_url = vars
            .secret("BUS_DATABASE_URL")?
            .unwrap_or_else(|| Secret::new("sqlite://bus.db?mode=rwc"));
        Ok(Self::Local { database_url })
    }

    /// Connects to the transport.
    ///
    /// # Errors
    ///
    /// The server or the database cannot be reached, or refused.
    pub async fn open(&self) -> Result<Arc<dyn Transport>, TransportError> {
        Ok(match self {
            Self::JetStream { url, namespace } => {
                Arc::new(JetStreamTransport::connect(url.expose(), namespace).await?)
            }
            Self::Local { database_url } => {
                Arc::new(LocalTransport::open_url(database_url.expose()).await?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<TransportConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TransportConfig::from_vars(&Vars(|var: &str| map.get(var).cloned()))
    }

    #[test]
    fn nats_when_its_url_is_set_and_the_local_bus_otherwise() {
        assert_eq!(
            config(&[]).unwrap(),
            TransportConfig::Local {
                database_url: Secret::new("sqlite://bus.db?mode=rwc")
            }
        );
        assert_eq!(
            config(&[("BUS_DATABASE_URL", "postgres://db/bus")]).unwrap(),
            TransportConfig::Local {
                database_url: Secret::new("postgres://db/bus")
            }
        );
        assert_eq!(
            config(&[("NATS_URL", "nats://127.0.0.1:4222")]).unwrap(),
            TransportConfig::JetStream {
                url: Secret::new("nats://127.0.0.1:4222"),
                namespace: "shop".to_owned()
            }
        );
        let error = config(&[
            ("NATS_URL", "nats://x"),
            ("MESSAGING_NAMESPACE", "Shop.Prod"),
        ])
        .unwrap_err();
        assert_eq!(error.var, "MESSAGING_NAMESPACE");
    }
}
