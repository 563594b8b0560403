//! Process-wide setup for binaries: logs, traces, and a guard that flushes them.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::sampling::{Sampling, SamplingError};

/// The environment variable that turns on OTLP export (as in the OpenTelemetry specification).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The traces-only variant, which takes precedence.
pub const OTLP_TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The log filter (from `RUST_LOG` or [`Config::filter`]) does not parse.
    #[error("invalid log filter {directives:?}: {source}")]
    Filter {
        /// The directives that were given.
        directives: String,
        /// What is wrong with them.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built from its configuration.
    #[error("invalid OTLP exporter configuration ({endpoint}): {reason}")]
    Exporter {
        /// The endpoint configured.
        endpoint: String,
        /// What the exporter reported.
        reason: String,
    },
    /// An OTLP endpoint is configured but this build has no exporter.
    #[error(
        "{OTLP_ENDPOINT_ENV} is set to {0:?} but mainstay-telemetry was built without the `otlp` feature"
    )]
    ExporterNotBuilt(String),
    /// `OTEL_TRACES_SAMPLER` or `OTEL_TRACES_SAMPLER_ARG` is unusable.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// A global subscriber was already installed.
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInitialized(String),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// JSON when standard output is not a terminal, readable lines when it is.
    #[default]
    Auto,
    /// One JSON object per line, with the current span's fields (request id, trace id).
    Json,
    /// Readable, coloured lines.
    Pretty,
}

/// What [`Config::init`] sets up. Built from the environment by [`Config::new`].
#[derive(Debug, Clone)]
pub struct Config {
    service_name: String,
    filter: Option<String>,
    format: LogFormat,
    otlp_endpoint: Option<String>,
    sampling: Option<Sampling>,
}

impl Config {
    /// Settings for `service_name`: the filter from `RUST_LOG` (default `info`), the automatic
    /// format, OTLP export when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set and not empty, and the sampler from
    /// `OTEL_TRACES_SAMPLER` (see [`Config::sampling`]).
    #[must_use]
    pub fn new(service_name: impl Into<String>) -> Self {
        let non_empty = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            service_name: service_name.into(),
            filter: non_empty(EnvFilter::DEFAULT_ENV),
            format: LogFormat::Auto,
            otlp_endpoint: non_empty(OTLP_TRACES_ENDPOINT_ENV)
                .or_else(|| non_empty(OTLP_ENDPOINT_ENV)),
            sampling: None,
        }
    }

    /// Which traces the tracer provider samples; give the server layers the same setting
    /// ([`ServerLayer::sampling`](crate::ServerLayer::sampling)). Without it, `init` reads
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, defaulting to OpenTelemetry's
    /// `parentbased_always_on`.
    #[must_use]
    pub fn sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = Some(sampling);
        self
    }

    /// Filter directives, as in `RUST_LOG` (`info,sqlx=warn`).
    #[must_use]
    pub fn filter(mut self, directives: impl Into<String>) -> Self {
        self.filter = Some(directives.into());
        self
    }

    /// The log format.
    #[must_use]
    pub fn format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }

    /// Export spans over OTLP/HTTP to this collector base URL (`http://collector:4318`), or
    /// not at all with `None`; overrides the environment.
    #[must_use]
    pub fn otlp_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.otlp_endpoint = endpoint;
        self
    }

    /// The service name spans are reported under.
    #[must_use]
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// Installs the global subscriber: the filter, the log layer, and an OpenTelemetry layer so
    /// that spans have W3C trace ids (propagated to other services) even when nothing is
    /// exported.
    ///
    /// # Errors
    ///
    /// A filter that does not parse, an exporter that cannot be built, or a subscriber that was
    /// already installed.
    pub fn init(self) -> Result<TelemetryGuard, InitError> {
        let directives = self.filter.clone().unwrap_or_else(|| "info".to_owned());
        let filter = EnvFilter::try_new(&directives).map_err(|source| InitError::Filter {
            directives: directives.clone(),
            source,
        })?;
        let provider = self.provider()?;
        let otel =
            tracing_opentelemetry::layer().with_tracer(provider.tracer(self.service_name.clone()));
        let json = match self.format {
            LogFormat::Json => true,
            LogFormat::Pretty => false,
            LogFormat::Auto => !std::io::stdout().is_terminal(),
        };
        let (json_layer, pretty_layer) = if json {
            (Some(json_logs(std::io::stdout)), None)
        } else {
            (None, Some(tracing_subscriber::fmt::layer()))
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(otel)
            .with(json_layer)
            .with(pretty_layer)
            .try_init()
            .map_err(|e| InitError::AlreadyInitialized(e.to_string()))?;
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(TelemetryGuard {
            provider: Some(provider),
        })
    }

    fn provider(&self) -> Result<SdkTracerProvider, InitError> {
        let resource = Resource::builder()
            .with_service_name(self.service_name.clone())
            .build();
        let sampling = match self.sampling {
            Some(sampling) => sampling,
            None => Sampling::from_env_or(Sampling::default())?,
        };
        let builder = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(sampling.sdk_sampler());
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(builder.build());
        };
        #[cfg(feature = "otlp")]
        {
            use opentelemetry_otlp::WithExportConfig;
            let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .build()
                .map_err(|e| InitError::Exporter {
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                })?;
            Ok(builder.with_batch_exporter(exporter).build())
        }
        #[cfg(not(feature = "otlp"))]
        {
            let _ = builder;
            Err(InitError::ExporterNotBuilt(endpoint.clone()))
        }
    }
}

/// The JSON log layer [`init`] installs, writing to `writer`: one object per line with the
/// event's fields at the top level and the current span's fields (`request_id`, `trace_id`)
/// under `"span"`. A line written while serving a request the server layer did not sample
/// (which has no span) carries that request's `request_id` and `trace_id` at the top level
/// instead. For subscribers assembled by hand, and for tests that read the lines.
pub fn json_logs<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let format = tracing_subscriber::fmt::format()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false);
    tracing_subscriber::fmt::layer()
        .json()
        .fmt_fields(crate::json_fields::JsonSpanFields)
        .event_format(UnsampledRequest(format))
        .with_writer(writer)
}

/// Puts the unsampled request's ids at the start of each JSON line written while serving it
/// (only then: nothing is looked up or formatted for a line outside such a request).
struct UnsampledRequest<F>(F);

impl<S, N, F> FormatEvent<S, N> for UnsampledRequest<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // The server layer's own end-of-request line names the request already.
        let ids = crate::request_id::unsampled_ids()
            .filter(|_| event.metadata().fields().field("request_id").is_none());
        let Some((request_id, trace_id)) = ids else {
            return self.0.format_event(context, writer, event);
        };
        let mut line = String::new();
        self.0
            .format_event(context, Writer::new(&mut line), event)?;
        let Some(rest) = line.strip_prefix('{') else {
            return writer.write_str(&line);
        };
        let request_id = serde_json::to_string(request_id.to_str().unwrap_or(""))
            .map_err(|_| std::fmt::Error)?;
        write!(
            writer,
            "{{\"request_id\":{request_id},\"trace_id\":\"{trace_id}\","
        )?;
        writer.write_str(rest)
    }
}

/// Set up logs and traces for `service_name` from the environment; see [`Config::new`] and
/// [`Config::init`]. Keep the guard alive until the end of `main`.
///
/// # Errors
///
/// See [`Config::init`].
pub fn init(service_name: &str) -> Result<TelemetryGuard, InitError> {
    Config::new(service_name).init()
}

/// Flushes and stops span export when dropped (or on [`shutdown`](Self::shutdown)).
#[derive(Debug)]
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports the spans still buffered and stops the exporter.
    ///
    /// # Errors
    ///
    /// The exporter's own error, as text, when the last export failed.
    pub fn shutdown(mut self) -> Result<(), String> {
        self.provider.take().map_or(Ok(()), |provider| {
            provider.shutdown().map_err(|e| e.to_string())
        })
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Nothing is left to report the error to at this point.
            let _ = provider.shutdown();
        }
    }
}
