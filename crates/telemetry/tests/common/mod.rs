//! A tracing subscriber that keeps exported spans in memory, for one test thread.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

pub(crate) struct Spans {
    exporter: InMemorySpanExporter,
    _provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Spans {
    /// Installs the subscriber as this thread's default until the value is dropped.
    pub(crate) fn install() -> Self {
        Self::install_sampling(mainstay_telemetry::sampling::Sampling::default())
    }

    /// [`install`](Self::install), with the tracer provider sampling as `sampling` says.
    pub(crate) fn install_sampling(sampling: mainstay_telemetry::sampling::Sampling) -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampling.sdk_sampler())
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let guard = tracing::subscriber::set_default(subscriber);
        Self {
            exporter,
            _provider: provider,
            _guard: guard,
        }
    }

    /// The spans exported so far.
    #[allow(dead_code)] // not every test binary reads them without waiting
    pub(crate) fn exported(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().expect("spans")
    }

    /// The spans exported so far, waiting (by yielding to the runtime, never by sleeping) until
    /// there are at least `count`.
    pub(crate) async fn wait_for(&self, count: usize) -> Vec<SpanData> {
        for _ in 0..10_000 {
            let spans = self.exporter.get_finished_spans().expect("spans");
            if spans.len() >= count {
                return spans;
            }
            tokio::task::yield_now().await;
        }
        panic!(
            "expected {count} spans, got {:?}",
            self.exporter
                .get_finished_spans()
                .expect("spans")
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        );
    }
}
