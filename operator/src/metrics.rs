//! Prometheus metrics of the webhook (prometheus-client), served on `/metrics`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of the admission metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// [`crate::webhook::AdmissionOutcome::as_str`], or `invalid` for a malformed review.
    pub outcome: &'static str,
}

/// The operator's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Admission requests by outcome.
    pub admissions: Family<OutcomeLabels, Counter>,
    /// Time spent answering an admission request (decode → encode), by outcome.
    pub admission_duration: Family<OutcomeLabels, Histogram>,
    /// Events on workloads about admitted pods (containers left alone, an unreadable drain
    /// annotation) dropped because the queue was full.
    pub events_dropped: Counter,
    /// Expiry (unix seconds) of the serving certificate in use.
    pub serving_cert_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let admissions = Family::<OutcomeLabels, Counter>::default();
        let admission_duration = Family::<OutcomeLabels, Histogram>::new_with_constructor(|| {
            // 25 µs … ~0.4 s.
            Histogram::new(exponential_buckets(0.000_025, 2.0, 15))
        });
        let events_dropped = Counter::default();
        let serving_cert_expiry = Gauge::default();
        let mut registry = Registry::with_prefix("lameduck");
        registry.register(
            "webhook_admissions",
            "Admission requests answered, by outcome",
            admissions.clone(),
        );
        registry.register(
            "webhook_admission_duration_seconds",
            "Time to answer an admission request, by outcome",
            admission_duration.clone(),
        );
        registry.register(
            "webhook_events_dropped",
            "Events on workloads about admitted pods (containers left alone, an unreadable drain annotation) dropped because the queue was full",
            events_dropped.clone(),
        );
        registry.register(
            "webhook_serving_certificate_expiry_timestamp_seconds",
            "Expiry of the webhook's serving certificate",
            serving_cert_expiry.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            admissions,
            admission_duration,
            events_dropped,
            serving_cert_expiry,
        }
    }
}

impl Metrics {
    /// Records one admission.
    pub fn observe_admission(&self, outcome: &'static str, elapsed: Duration) {
        let labels = OutcomeLabels { outcome };
        self.admissions.get_or_create(&labels).inc();
        self.admission_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }

    /// Registers more metrics (the controller side adds its own).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> Option<R> {
        self.registry.lock().ok().map(|mut r| f(&mut r))
    }
}
