//! Typed configuration from the environment (12-factor), with errors that name the variable.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use mainstay_telemetry::sampling::{SAMPLER_ARG_ENV, SAMPLER_ENV, Sampling};

/// The exit status for bad configuration (`EX_CONFIG` in BSD's `sysexits.h`).
pub const EX_CONFIG: i32 = 78;

/// A variable that is set to something unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}={value:?}: {expected}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: String,
    /// Its value.
    pub value: String,
    /// What it should look like.
    pub expected: String,
}

/// A secret read from the configuration (a password, a token, a URL with credentials in it):
/// [`Debug`] shows `Secret(..)`, so that a configuration logged or printed whole shows none, and
/// it has no `Display`. [`expose`](Self::expose) gives the value to what needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The largest secret file [`Vars::secret`] reads.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads variables, from the environment or (in tests) from anything else.
#[derive(Debug, Clone, Copy)]
pub struct Vars<F>(pub F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    /// A variable's value, `None` when unset or blank.
    pub fn raw(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    /// A secret: `VAR`'s value, or the contents of the file `VAR_FILE` names (a mounted
    /// secret, as Docker and Kubernetes provide them), without the file's final line break.
    /// `None` when neither is set. Errors about a secret never show its value.
    ///
    /// # Errors
    ///
    /// Both `VAR` and `VAR_FILE` are set, or the file cannot be read, is empty, or is larger
    /// than [`MAX_SECRET_FILE`] bytes.
    pub fn secret(&self, var: &str) -> Result<Option<Secret>, ConfigError> {
        let file_var = format!("{var}_FILE");
        let Some(path) = self.raw(&file_var) else {
            return Ok(self.raw(var).map(Secret));
        };
        let error = |expected: String| ConfigError {
            var: file_var.clone(),
            value: path.clone(),
            expected,
        };
        if self.raw(var).is_some() {
            return Err(error(format!("unset when {var} is set: one of the two")));
        }
        let read = || -> std::io::Result<Vec<u8>> {
            use std::io::Read as _;
            let mut contents = Vec::new();
            std::fs::File::open(&path)?
                .take(MAX_SECRET_FILE + 1)
                .read_to_end(&mut contents)?;
            Ok(contents)
        };
        let contents = read().map_err(|e| error(format!("a readable file holding {var} ({e})")))?;
        if contents.len() as u64 > MAX_SECRET_FILE {
            return Err(error(format!(
                "a file of at most {MAX_SECRET_FILE} bytes holding {var}"
            )));
        }
        let text = String::from_utf8(contents)
            .map_err(|_| error(format!("a UTF-8 file holding {var}")))?;
        let value = text
            .strip_suffix('\n')
            .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
        if value.trim().is_empty() {
            return Err(error(format!("a file holding {var}, not an empty one")));
        }
        Ok(Some(Secret(value.to_owned())))
    }

    /// A parsed variable, or `default` when unset.
    ///
    /// # Errors
    ///
    /// The variable is set and does not parse; `expected` describes the right form.
    pub fn parse_or<T: FromStr>(
        &self,
        var: &str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(value) => value.trim().parse().map_err(|_| ConfigError {
                var: var.to_owned(),
                value,
                expected: expected.to_owned(),
            }),
        }
    }

    /// A rate as `count/seconds` (`5/60`: five per minute), or `default` when unset.
    ///
    /// # Errors
    ///
    /// The variable is set and is not two whole numbers above zero around a `/`.
    pub fn rate_or(
        &self,
        var: &str,
        default: (u32, Duration),
    ) -> Result<(u32, Duration), ConfigError> {
        let Some(raw) = self.raw(var) else {
            return Ok(default);
        };
        let parsed = raw.trim().split_once('/').and_then(|(count, secs)| {
            let count: u32 = count.trim().parse().ok()?;
            let secs: u64 = secs.trim().parse().ok()?;
            (count > 0 && secs > 0).then(|| (count, Duration::from_secs(secs)))
        });
        parsed.ok_or_else(|| ConfigError {
            var: var.to_owned(),
            value: raw,
            expected: "count/seconds, such as 5/60, both above zero".to_owned(),
        })
    }

    /// A comma-separated list of IP addresses, or `default` when unset.
    ///
    /// # Errors
    ///
    /// The variable is set and one of its entries is not an IP address.
    pub fn ip_list(
        &self,
        var: &str,
        default: &[std::net::IpAddr],
    ) -> Result<Vec<std::net::IpAddr>, ConfigError> {
        let Some(raw) = self.raw(var) else {
            return Ok(default.to_vec());
        };
        raw.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry.parse().map_err(|_| ConfigError {
                    var: var.to_owned(),
                    value: raw.clone(),
                    expected: "comma-separated IP addresses".to_owned(),
                })
            })
            .collect()
    }

    /// A Redis URL (`redis://` or `rediss://`; secret: it may hold a password), or `None`
    /// when unset.
    ///
    /// # Errors
    ///
    /// The variable is set to something else (its value is not repeated in the error).
    pub fn redis_url(&self, var: &str) -> Result<Option<Secret>, ConfigError> {
        let url = self.secret(var)?;
        if let Some(url) = &url
            && !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://"))
        {
            return Err(ConfigError {
                var: var.to_owned(),
                value: "(hidden)".to_owned(),
                expected: "a redis:// or rediss:// URL".to_owned(),
            });
        }
        Ok(url)
    }

    /// A comma-separated list of a service's endpoints (`host:port`), or `default` when unset.
    ///
    /// # Errors
    ///
    /// The variable is set and is not such a list.
    pub fn endpoints_or(
        &self,
        var: &str,
        default: mainstay_discovery::Endpoint,
    ) -> Result<Vec<mainstay_discovery::Endpoint>, ConfigError> {
        match self.raw(var) {
            Some(urls) => {
                mainstay_discovery::Endpoint::parse_list(&urls).map_err(|e| ConfigError {
                    var: var.to_owned(),
                    value: urls.clone(),
                    expected: e.to_string(),
                })
            }
            None => Ok(vec![default]),
        }
    }

    /// A duration given in milliseconds, or `default` when unset.
    ///
    /// # Errors
    ///
    /// The variable is set and is not a whole number of milliseconds greater than zero.
    pub fn millis_or(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        let millis: u64 = self.parse_or(
            var,
            u64::try_from(default.as_millis()).unwrap_or(u64::MAX),
            "a whole number of milliseconds greater than zero",
        )?;
        if millis == 0 {
            return Err(ConfigError {
                var: var.to_owned(),
                value: "0".to_owned(),
                expected: "a whole number of milliseconds greater than zero".to_owned(),
            });
        }
        Ok(Duration::from_millis(millis))
    }

    /// A duration given in whole hours, 1 to `most`, or `default` hours when unset.
    ///
    /// # Errors
    ///
    /// The variable is set and is not a whole number of hours from 1 to `most`.
    pub fn hours_or(&self, var: &str, default: u64, most: u64) -> Result<Duration, ConfigError> {
        let expected = format!("a whole number of hours, 1 to {most}");
        let hours: u64 = self.parse_or(var, default, &expected)?;
        if !(1..=most).contains(&hours) {
            return Err(ConfigError {
                var: var.to_owned(),
                value: hours.to_string(),
                expected,
            });
        }
        Ok(Duration::from_secs(hours * 3600))
    }
}

/// What every service is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The service's name: logs, traces, metrics.
    pub name: String,
    /// Where it listens: `BIND_ADDR` (default `127.0.0.1`) and `PORT`.
    pub listen: SocketAddr,
    /// `DATABASE_URL` (or a file named by `DATABASE_URL_FILE`, see [`Vars::secret`]):
    /// `postgres://…` in production, `sqlite://…` by default (`sqlite://<name>.db?mode=rwc` in
    /// the working directory).
    pub database_url: Secret,
    /// `REQUEST_TIMEOUT_MS`: the longest a request may take, including a shorter deadline sent
    /// by the caller (default 10 s).
    pub request_timeout: Duration,
    /// `DEADLINE_FLOOR_MS`: a deadline the caller sends (`x-request-deadline`) shorter than this
    /// is raised to it, so that a client cannot make every call it causes time out at once
    /// (default 0 for services behind the gateway, where the caller is the system itself; the
    /// gateway raises the default).
    pub deadline_floor: Duration,
    /// `BODY_LIMIT_BYTES`: the largest request body (default 1 MiB).
    pub body_limit: usize,
    /// `SHUTDOWN_GRACE_MS`: how long in-flight requests may take to finish once the listener
    /// stops accepting, which is `DRAIN_DELAY_MS` after SIGTERM (default 30 s). Keep the sum
    /// under the orchestrator's termination grace (Kubernetes: 30 s by default).
    pub shutdown_grace: Duration,
    /// `DRAIN_DELAY_MS`: after SIGTERM, how long readiness answers 503 while the listener still
    /// accepts, so that a balancer polling readiness (Kubernetes, a load balancer's health
    /// check) stops sending before connections are refused (default 0: set it to the
    /// balancer's polling period; Consul registrations are withdrawn at once anyway).
    pub drain_delay: Duration,
    /// `KEYED_MAX_RUNNING`: keyed requests (`Idempotency-Key`) running at once, including those
    /// whose caller has gone and that finish on their own; more are answered 503 with
    /// `Retry-After` before anything is claimed (default 256).
    pub keyed_max_running: usize,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`: which requests are traced
    /// (default `parentbased_traceidratio` at 0.1: a tenth of the traces that start here, and
    /// every trace a caller sampled). Unsampled requests build no span and still count in the
    /// metrics.
    pub sampling: Sampling,
}

/// The services' default sampling: a tenth of new traces, callers' decisions followed.
pub const DEFAULT_SAMPLING_RATIO: f64 = 0.1;

impl ServiceConfig {
    /// Reads the configuration of `name`, listening on `default_port` unless `PORT` says
    /// otherwise.
    ///
    /// # Errors
    ///
    /// The first variable that is set to something unusable.
    pub fn from_env(name: &str, default_port: u16) -> Result<Self, ConfigError> {
        Self::from_vars(
            name,
            default_port,
            &Vars(|var: &str| std::env::var(var).ok()),
        )
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    ///
    /// # Errors
    ///
    /// The first variable that is set to something unusable.
    pub fn from_vars<F: Fn(&str) -> Option<String>>(
        name: &str,
        default_port: u16,
        vars: &Vars<F>,
    ) -> Result<Self, ConfigError> {
        let ip: IpAddr = vars.parse_or(
            "BIND_ADDR",
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "an IP address such as 0.0.0.0 or ::1",
        )?;
        let port: u16 = vars.parse_or("PORT", default_port, "a port number from 0 to 65535")?;
        let database_url = match vars.secret("DATABASE_URL")? {
            None => Secret(format!("sqlite://{name}.db?mode=rwc")),
            Some(url)
                if ["postgres://", "postgresql://", "sqlite:"]
                    .iter()
                    .any(|scheme| url.expose().starts_with(scheme)) =>
            {
                url
            }
            Some(_) => {
                return Err(ConfigError {
                    var: "DATABASE_URL".to_owned(),
                    // It may hold a password.
                    value: "(hidden)".to_owned(),
                    expected: "a postgres:// or sqlite: URL".to_owned(),
                });
            }
        };
        let body_limit: usize = vars.parse_or("BODY_LIMIT_BYTES", 1 << 20, "a number of bytes")?;
        Ok(Self {
            name: name.to_owned(),
            listen: SocketAddr::new(ip, port),
            database_url,
            request_timeout: vars.millis_or("REQUEST_TIMEOUT_MS", Duration::from_secs(10))?,
            deadline_floor: Duration::from_millis(vars.parse_or(
                "DEADLINE_FLOOR_MS",
                0,
                "a whole number of milliseconds",
            )?),
            body_limit,
            shutdown_grace: vars.millis_or("SHUTDOWN_GRACE_MS", Duration::from_secs(30))?,
            drain_delay: Duration::from_millis(vars.parse_or(
                "DRAIN_DELAY_MS",
                0,
                "a whole number of milliseconds",
            )?),
            keyed_max_running: vars
                .parse_or("KEYED_MAX_RUNNING", 256, "a number of requests")?
                .max(1),
            sampling: Sampling::from_vars(
                vars.raw(SAMPLER_ENV).as_deref(),
                vars.raw(SAMPLER_ARG_ENV).as_deref(),
                Sampling::parent_based_ratio(DEFAULT_SAMPLING_RATIO),
            )
            .map_err(|e| ConfigError {
                var: e.var.to_owned(),
                value: e.value,
                expected: e.expected.to_owned(),
            })?,
        })
    }
}

/// How a service validates the users service's tokens: `USERS_JWKS_URL` (default
/// `http://127.0.0.1:8081/.well-known/jwks.json`), `TOKEN_ISSUER` (default `shop-users`),
/// `TOKEN_AUDIENCE` (default `shop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// The JWKS of the users service.
    pub jwks_url: String,
    /// Accepted `iss`.
    pub issuer: String,
    /// Accepted `aud`.
    pub audience: String,
}

impl TokenConfig {
    /// Reads the three variables from the process environment, with their defaults.
    #[must_use]
    pub fn from_env() -> Self {
        Self::from_vars(&Vars(|var: &str| std::env::var(var).ok()))
    }

    /// Reads the three variables, with their defaults.
    pub fn from_vars<F: Fn(&str) -> Option<String>>(vars: &Vars<F>) -> Self {
        let or = |var: &str, default: &str| vars.raw(var).unwrap_or_else(|| default.to_owned());
        Self {
            jwks_url: or(
                "USERS_JWKS_URL",
                "http://127.0.0.1:8081/.well-known/jwks.json",
            ),
            issuer: or("TOKEN_ISSUER", "shop-users"),
            audience: or("TOKEN_AUDIENCE", "shop"),
        }
    }

    /// A validator over the remote JWKS.
    ///
    /// # Errors
    ///
    /// The JWKS URL is not usable.
    pub fn validator(&self) -> std::io::Result<mainstay_auth::Validator> {
        let jwks = mainstay_auth::Jwks::from_url(&self.jwks_url).map_err(std::io::Error::other)?;
        mainstay_auth::Validator::builder()
            .issuer(&self.issuer)
            .audience(&self.audience)
            .jwks(jwks)
            .build()
            .map_err(std::io::Error::other)
    }
}

/// The value, or the error printed to standard error and the process ended with [`EX_CONFIG`]:
/// for `main`, before logging is set up.
pub fn or_exit<T>(result: Result<T, ConfigError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => {
            #[expect(clippy::print_stderr, reason = "logging is not set up yet")]
            {
                eprintln!("configuration error: {error}");
            }
            std::process::exit(EX_CONFIG)
        }
    }
}

impl ServiceConfig {
    /// Sets up logs and traces for this service ([`mainstay_telemetry::Config`]), sampling as
    /// [`sampling`](Self::sampling) says (the server stack samples the same way), or prints
    /// why not and ends the process with [`EX_CONFIG`]. Keep the guard until the end of `main`.
    #[must_use = "dropping the guard stops span export"]
    pub fn init_telemetry(&self) -> mainstay_telemetry::TelemetryGuard {
        match mainstay_telemetry::Config::new(&self.name)
            .sampling(self.sampling)
            .init()
        {
            Ok(guard) => guard,
            Err(error) => {
                #[expect(clippy::print_stderr, reason = "logging is not set up")]
                {
                    eprintln!("telemetry: {error}");
                }
                std::process::exit(EX_CONFIG)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<ServiceConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ServiceConfig::from_vars("catalog", 8082, &Vars(|var: &str| map.get(var).cloned()))
    }

    #[test]
    fn defaults_run_on_a_bare_machine() {
        let config = config(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8082".parse().unwrap());
        assert_eq!(config.database_url.expose(), "sqlite://catalog.db?mode=rwc");
        assert_eq!(config.request_timeout, Duration::from_secs(10));
        assert_eq!(config.body_limit, 1 << 20);
        assert_eq!(config.sampling, Sampling::parent_based_ratio(0.1));
    }

    #[test]
    fn variables_override_defaults() {
        let config = config(&[
            ("PORT", "9000"),
            ("BIND_ADDR", "0.0.0.0"),
            ("DATABASE_URL", "postgres://postgres@127.0.0.1/test"),
            ("REQUEST_TIMEOUT_MS", "2500"),
            ("BODY_LIMIT_BYTES", "1024"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ])
        .unwrap();
        assert_eq!(config.sampling, Sampling::parent_based_ratio(0.5));
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            config.database_url.expose(),
            "postgres://postgres@127.0.0.1/test"
        );
        assert!(
            !format!("{config:?}").contains("postgres@"),
            "Debug shows no secret"
        );
        assert_eq!(config.request_timeout, Duration::from_millis(2500));
        assert_eq!(config.body_limit, 1024);
    }

    #[test]
    fn bad_values_name_the_variable_the_value_and_the_expected_form() {
        let cases = [
            (
                ("PORT", "eighty"),
                r#"invalid PORT="eighty": a port number from 0 to 65535"#,
            ),
            (
                ("PORT", "70000"),
                r#"invalid PORT="70000": a port number from 0 to 65535"#,
            ),
            (
                ("BIND_ADDR", "localhost"),
                r#"invalid BIND_ADDR="localhost": an IP address such as 0.0.0.0 or ::1"#,
            ),
            (
                ("DATABASE_URL", "mysql://root:hunter2@x"),
                r#"invalid DATABASE_URL="(hidden)": a postgres:// or sqlite: URL"#,
            ),
            (
                ("REQUEST_TIMEOUT_MS", "0"),
                r#"invalid REQUEST_TIMEOUT_MS="0": a whole number of milliseconds greater than zero"#,
            ),
            (
                ("SHUTDOWN_GRACE_MS", "-1"),
                r#"invalid SHUTDOWN_GRACE_MS="-1": a whole number of milliseconds greater than zero"#,
            ),
            (
                ("OTEL_TRACES_SAMPLER", "sometimes"),
                r#"invalid OTEL_TRACES_SAMPLER="sometimes": always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"#,
            ),
        ];
        for ((var, value), message) in cases {
            let error = config(&[(var, value)]).unwrap_err();
            assert_eq!(error.to_string(), message);
        }
        assert!(config(&[("PORT", "  ")]).is_ok(), "blank means unset");
    }

    /// A file in a fresh temporary directory, removed with it.
    fn secret_file(contents: &[u8]) -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, contents).unwrap();
        let shown = path.to_string_lossy().into_owned();
        (dir, shown)
    }

    fn secret(pairs: &[(&str, &str)]) -> Result<Option<String>, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Vars(|var: &str| map.get(var).cloned())
            .secret("DATABASE_URL")
            .map(|secret| secret.map(|s| s.expose().to_owned()))
    }

    #[test]
    fn a_secret_comes_from_its_variable_or_from_the_file_its_file_variable_names() {
        assert_eq!(secret(&[]).unwrap(), None);
        assert_eq!(
            secret(&[("DATABASE_URL", "postgres://a")])
                .unwrap()
                .as_deref(),
            Some("postgres://a")
        );
        // The final line break is the file's, not the secret's; inner white space is kept.
        for contents in [
            &b"postgres://u:p w@db\n"[..],
            b"postgres://u:p w@db\r\n",
            b"postgres://u:p w@db",
        ] {
            let (dir, path) = secret_file(contents);
            assert_eq!(
                secret(&[("DATABASE_URL_FILE", &path)]).unwrap().as_deref(),
                Some("postgres://u:p w@db")
            );
            std::fs::remove_dir_all(dir).unwrap();
        }
        // Read through the service's configuration too.
        let (dir, path) = secret_file(b"postgres://postgres@127.0.0.1/test\n");
        assert_eq!(
            config(&[("DATABASE_URL_FILE", &path)])
                .unwrap()
                .database_url
                .expose(),
            "postgres://postgres@127.0.0.1/test"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_secret_file_is_named_and_its_contents_never_shown() {
        let (dir, path) = secret_file(b"hunter2-secret\n");
        let both = secret(&[("DATABASE_URL", "x"), ("DATABASE_URL_FILE", &path)]).unwrap_err();
        assert_eq!(both.var, "DATABASE_URL_FILE");
        assert!(both.expected.contains("one of the two"), "{both}");
        std::fs::remove_dir_all(&dir).unwrap();

        let missing = secret(&[("DATABASE_URL_FILE", &path)]).unwrap_err();
        assert_eq!(missing.var, "DATABASE_URL_FILE");
        assert_eq!(missing.value, path);
        assert!(
            missing
                .expected
                .starts_with("a readable file holding DATABASE_URL"),
            "{missing}"
        );

        for (contents, expected) in [
            (&b"\n"[..], "not an empty one"),
            (&[0xff, 0xfe][..], "a UTF-8 file"),
        ] {
            let (dir, path) = secret_file(contents);
            let error = secret(&[("DATABASE_URL_FILE", &path)]).unwrap_err();
            assert!(error.expected.contains(expected), "{error}");
            std::fs::remove_dir_all(dir).unwrap();
        }
        let huge = vec![b'a'; usize::try_from(MAX_SECRET_FILE).unwrap() + 1];
        let (dir, path) = secret_file(&huge);
        let error = secret(&[("DATABASE_URL_FILE", &path)]).unwrap_err();
        assert!(error.expected.contains("at most 65536 bytes"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
        let (dir, path) = secret_file(&huge[1..]);
        assert_eq!(
            secret(&[("DATABASE_URL_FILE", &path)])
                .unwrap()
                .map(|s| s.len()),
            Some(huge.len() - 1)
        );
        std::fs::remove_dir_all(dir).unwrap();
        assert!(!both.to_string().contains("hunter2"));
    }
}
