//! The notifications service's configuration, from the environment.

use std::path::PathBuf;
use std::time::Duration;

use shop_common::config::{ConfigError, Secret, ServiceConfig, TokenConfig, Vars};

use crate::Channel;

/// What the notifications service is configured with, beyond [`ServiceConfig`].
///
/// | variable | default | meaning |
/// | --- | --- | --- |
/// | `USERS_JWKS_URL`, `TOKEN_ISSUER`, `TOKEN_AUDIENCE` | as for every service | how tokens are validated |
/// | `AMQP_URL` (or `AMQP_URL_FILE`) | unset: in-process queues | the RabbitMQ server of the channels' work queues, `amqp://user:password@host:5672/%2f` |
/// | `MESSAGING_NAMESPACE` | none | a prefix of the RabbitMQ exchanges' and queues' names (as NATS streams have) |
/// | `SMTP_URL` | unset: e-mail goes to the sink | `smtp://host:port` of the server e-mail is sent through (plain SMTP: a relay or mail catcher on the local network) |
/// | `MAIL_FROM` | `shop@mainstay.localhost` | the sender of the e-mails |
/// | `NOTIFICATIONS_SINK_DIR` | unset: the log | where the sink writes a JSON line per message, a file per channel |
/// | `NOTIFICATIONS_FAILURE_KNOBS` | `false` | whether admins may make a channel's sends fail (`PUT /admin/notifications/channels/{channel}`): for demos and tests, never in production |
/// | `NOTIFICATIONS_FAILING` | none | channels whose sends fail from the start (the failure knob; implies `NOTIFICATIONS_FAILURE_KNOBS`), comma-separated |
/// | `NOTIFICATIONS_MAX_ATTEMPTS` | `4` | attempts of a message (1 to 20) before it is dead-lettered |
/// | `NOTIFICATIONS_RETRY_MS` | `250` | the first wait before a message is tried again; it doubles on each attempt, with jitter |
/// | `NOTIFICATIONS_RETRY_MAX_MS` | `5000` | the longest wait between two attempts |
/// | `NOTIFICATIONS_SEND_TIMEOUT_MS` | `5000` | how long one attempt may take |
#[derive(Debug, Clone)]
pub struct NotificationsConfig {
    /// The common part.
    pub service: ServiceConfig,
    /// How the users service's tokens are validated.
    pub tokens: TokenConfig,
    /// The RabbitMQ server, if any.
    pub amqp_url: Option<Secret>,
    /// The prefix of the broker's names.
    pub namespace: String,
    /// The SMTP server, if any: `(host, port)`.
    pub smtp: Option<(String, u16)>,
    /// The e-mails' sender.
    pub mail_from: String,
    /// Where the sink writes.
    pub sink_dir: Option<PathBuf>,
    /// Whether the failure knobs may be turned.
    pub failure_knobs: bool,
    /// Channels failing from the start.
    pub failing: Vec<Channel>,
    /// Attempts before the dead letters.
    pub max_attempts: u32,
    /// The first wait between attempts.
    pub retry: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
    /// How long one attempt may take.
    pub send_timeout: Duration,
}

impl NotificationsConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars = Vars(|var: &str| std::env::var(var).ok());
        let service = ServiceConfig::from_vars("notifications", 8088, &vars)?;
        Self::from_vars(service, &vars)
    }

    /// Reads the configuration from any source of variables.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_vars<F: Fn(&str) -> Option<String>>(
        service: ServiceConfig,
        vars: &Vars<F>,
    ) -> Result<Self, ConfigError> {
        let bad = |var: &str, value: &str, expected: &str| ConfigError {
            var: var.to_owned(),
            value: value.to_owned(),
            expected: expected.to_owned(),
        };
        let namespace = match vars.raw("MESSAGING_NAMESPACE") {
            None => String::new(),
            Some(namespace) => format!("{namespace}."),
        };
        let smtp = match vars.raw("SMTP_URL") {
            None => None,
            Some(url) => {
                let expected = "smtp://host:port";
                let rest = url
                    .strip_prefix("smtp://")
                    .ok_or_else(|| bad("SMTP_URL", &url, expected))?;
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad("SMTP_URL", &url, expected))?;
                let port = port.parse().map_err(|_| bad("SMTP_URL", &url, expected))?;
                if host.is_empty() {
                    return Err(bad("SMTP_URL", &url, expected));
                }
                Some((host.to_owned(), port))
            }
        };
        let mut failing = Vec::new();
        if let Some(list) = vars.raw("NOTIFICATIONS_FAILING") {
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                failing.push(Channel::parse(name).ok_or_else(|| {
                    bad(
                        "NOTIFICATIONS_FAILING",
                        &list,
                        "channels among email, sms, push",
                    )
                })?);
            }
        }
        let max_attempts = vars.parse_or("NOTIFICATIONS_MAX_ATTEMPTS", 4, "1 to 20")?;
        if !(1..=20).contains(&max_attempts) {
            return Err(bad(
                "NOTIFICATIONS_MAX_ATTEMPTS",
                &max_attempts.to_string(),
                "1 to 20",
            ));
        }
        Ok(Self {
            tokens: TokenConfig::from_vars(vars),
            amqp_url: vars.secret("AMQP_URL")?,
            namespace,
            smtp,
            mail_from: vars
                .raw("MAIL_FROM")
                .unwrap_or_else(|| "shop@mainstay.localhost".to_owned()),
            sink_dir: vars.raw("NOTIFICATIONS_SINK_DIR").map(PathBuf::from),
            failure_knobs: vars.parse_or("NOTIFICATIONS_FAILURE_KNOBS", false, "true or false")?
                || !failing.is_empty(),
            failing,
            max_attempts,
            retry: vars.millis_or("NOTIFICATIONS_RETRY_MS", Duration::from_millis(250))?,
            retry_max: vars.millis_or("NOTIFICATIONS_RETRY_MAX_MS", Duration::from_secs(5))?,
            send_timeout: vars
                .millis_or("NOTIFICATIONS_SEND_TIMEOUT_MS", Duration::from_secs(5))?,
            service,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<NotificationsConfig, ConfigError> {
        let vars = Vars(|var: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| (*v).to_owned())
        });
        let service = ServiceConfig::from_vars("notifications", 0, &vars)?;
        NotificationsConfig::from_vars(service, &vars)
    }

    #[test]
    fn defaults_and_bad_values_name_their_variable() {
        let defaults = config(&[]).unwrap();
        assert!(defaults.amqp_url.is_none() && defaults.smtp.is_none());
        assert_eq!(defaults.max_attempts, 4);
        assert_eq!(defaults.namespace, "");
        let set = config(&[
            ("SMTP_URL", "smtp://mail.local:1025"),
            ("NOTIFICATIONS_FAILING", "sms, push"),
            ("MESSAGING_NAMESPACE", "t1"),
        ])
        .unwrap();
        assert_eq!(set.smtp, Some(("mail.local".to_owned(), 1025)));
        assert_eq!(set.failing, vec![Channel::Sms, Channel::Push]);
        assert_eq!(set.namespace, "t1.");
        for (var, value) in [
            ("SMTP_URL", "mail.local:25"),
            ("SMTP_URL", "smtp://mail.local"),
            ("NOTIFICATIONS_FAILING", "fax"),
            ("NOTIFICATIONS_MAX_ATTEMPTS", "0"),
            ("NOTIFICATIONS_RETRY_MS", "soon"),
        ] {
            assert_eq!(config(&[(var, value)]).unwrap_err().var, var);
        }
    }
}
