//! Prometheus metrics every controller exports: reconciles, their failures by reason and
//! duration, and API requests by verb (so "no writes at rest" can be read off /metrics).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller (one binary may run several).
    pub controller: String,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The controller.
    pub controller: String,
    /// The failure's stable reason: the variant of the controller's error ([`crate::Failure`]).
    pub reason: String,
}

/// Labels of an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method: GET (read, list, watch), POST, PUT, PATCH, DELETE.
    pub method: String,
    /// The resource, as its URL names it (`pods`, `taskruns/status`, `leases`); `discovery`
    /// for the API server's lists of its APIs.
    pub resource: String,
}

/// Reconcile metrics, cheap to clone into every controller.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    runs: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    /// Failures of each controller whatever their reason, for reading back without knowing
    /// the reasons (not exported: `failures` is).
    failed_runs: Family<ControllerLabels, Counter>,
    duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        Self {
            runs: Family::default(),
            failures: Family::default(),
            failed_runs: Family::default(),
            // 1 ms to 8 s.
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 14))),
        }
    }
}

impl ReconcileMetrics {
    /// Runs one reconcile of `controller` and records it: how long it took, and its failure
    /// reason if it failed. [`crate::Context::reconcile`] does this and more (a span naming the
    /// object, backoff reset on success); this logs failures itself, without the object.
    pub async fn measure<T, E: crate::Failure>(
        &self,
        controller: &str,
        reconcile: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let result = reconcile.await;
        match &result {
            // Expected under concurrent writers: read again and retried at once.
            Err(err) if err.is_conflict() => tracing::debug!(controller, error = %err, "reconcile retried"),
            Err(err) => tracing::warn!(controller, error = %err, "reconcile failed; retrying after a pause"),
            Ok(_) => {}
        }
        self.observe(controller, started.elapsed(), result.as_ref().err().map(E::reason));
        result
    }

    /// How many reconciles of `controller` failed with `reason` so far.
    pub fn failures(&self, controller: &str, reason: &str) -> u64 {
        self.failures
            .get_or_create(&FailureLabels {
                controller: controller.to_owned(),
                reason: reason.to_owned(),
            })
            .get()
    }

    /// How many reconciles of `controller` ran so far, failed or not.
    pub fn runs(&self, controller: &str) -> u64 {
        self.runs
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .get()
    }

    /// How many reconciles of `controller` failed so far, whatever the reason.
    pub fn failed_runs(&self, controller: &str) -> u64 {
        self.failed_runs
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .get()
    }

    /// Records one reconcile of `controller` that took `elapsed`, failing with `failure` (a
    /// stable reason) or not.
    pub fn observe(&self, controller: &str, elapsed: Duration, failure: Option<&str>) {
        let labels = ControllerLabels {
            controller: controller.to_owned(),
        };
        self.runs.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        if let Some(reason) = failure {
            self.failed_runs.get_or_create(&labels).inc();
            self.failures
                .get_or_create(&FailureLabels {
                    controller: controller.to_owned(),
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }
}

/// API request metrics, fed by the client's request layer.
#[derive(Clone, Debug, Default)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    throttled: Counter,
}

impl RequestMetrics {
    pub(crate) fn request(&self, method: &http::Method, path: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.as_str().to_owned(),
                resource: resource_of(path),
            })
            .inc();
    }

    pub(crate) fn throttled(&self) {
        self.throttled.inc();
    }
}

/// The resource a request's path names: `/apis/G/V/namespaces/N/R/NAME/SUB` is `R/SUB`.
fn resource_of(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    match rest {
        [] => "discovery".to_owned(),
        [resource] | [resource, _] => (*resource).to_owned(),
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
    }
}

/// The registry and the metrics in it.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry served on /metrics.
    pub registry: Arc<Registry>,
    /// Reconcile metrics for controllers.
    pub reconcile: ReconcileMetrics,
    /// API request metrics for the client layer.
    pub requests: RequestMetrics,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
}

impl Metrics {
    /// A registry with every metric under the `orrery` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orrery");
        let reconcile = ReconcileMetrics::default();
        let requests = RequestMetrics::default();
        let leader = Gauge::default();
        registry.register("reconcile", "Reconciles run", reconcile.runs.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by reason",
            reconcile.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile.duration.clone(),
        );
        registry.register(
            "api_requests",
            "API requests sent, by HTTP method and resource",
            requests.requests.clone(),
        );
        registry.register(
            "api_requests_throttled",
            "API requests delayed by the client-side rate limit",
            requests.throttled.clone(),
        );
        registry.register("leader", "1 while this replica holds the Lease", leader.clone());
        Self {
            registry: Arc::new(registry),
            reconcile,
            requests,
            leader,
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::resource_of;

    #[test]
    fn a_request_is_counted_under_the_resource_its_path_names() {
        for (path, resource) in [
            ("/api/v1/namespaces/ns/pods", "pods"),
            ("/api/v1/namespaces/ns/pods/p", "pods"),
            ("/api/v1/namespaces/ns/pods/p/log", "pods/log"),
            ("/api/v1/namespaces", "namespaces"),
            ("/api/v1/namespaces/ns", "namespaces"),
            ("/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", "leases"),
            (
                "/apis/workflow.orrery.dev/v1alpha1/namespaces/ns/taskruns/r/status",
                "taskruns/status",
            ),
            ("/apis/hierarchy.orrery.dev/v1alpha1/projects", "projects"),
            ("/apis/hierarchy.orrery.dev/v1alpha1", "discovery"),
            ("/api", "discovery"),
            ("/version", "discovery"),
        ] {
            assert_eq!(resource_of(path), resource, "{path}");
        }
    }
}
