//! The operator's Prometheus metrics (docs/metrics.md). Labels are namespace,
//! connector, result, reason, controller and error category: never a run name,
//! which would grow without bound.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric, registered in one registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub runs_total: IntCounterVec,
    pub run_duration_seconds: HistogramVec,
    pub bytes_transferred_total: IntCounterVec,
    pub objects_transferred_total: IntCounterVec,
    pub objects_failed_total: IntCounterVec,
    pub runs_active: Gauge,
    pub last_success_timestamp_seconds: GaugeVec,
    pub policy_denials_total: IntCounterVec,
    pub missed_schedules_total: IntCounterVec,
    pub integrity_failures_total: IntCounterVec,
    pub shard_attempts_total: IntCounterVec,
    pub reconcile_total: IntCounterVec,
    pub reconcile_errors_total: IntCounterVec,
    pub reconcile_duration_seconds: HistogramVec,
    pub queue_depth: IntGaugeVec,
}

/// Registers `metric` and hands it back.
#[allow(clippy::expect_used)] // static definitions: a failure is a programming error caught by tests
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let m = metric.expect("valid metric definition");
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(registry, HistogramVec::new(opts, labels))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric, one declaration each, in the order
    /// docs/metrics.md lists them (the function is long for that reason only).
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let nc = &["namespace", "connector"];
        Self {
            runs_total: counter(
                r,
                "ferry_runs_total",
                "Finished runs by result (succeeded, failed, rejected).",
                &["namespace", "connector", "result"],
            ),
            run_duration_seconds: histogram(
                r,
                "ferry_run_duration_seconds",
                "Duration of finished runs, from pod start to end.",
                vec![
                    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
                ],
                nc,
            ),
            bytes_transferred_total: counter(
                r,
                "ferry_bytes_transferred_total",
                "Bytes written to destinations by finished runs.",
                nc,
            ),
            objects_transferred_total: counter(
                r,
                "ferry_objects_transferred_total",
                "Objects copied by finished runs.",
                nc,
            ),
            objects_failed_total: counter(
                r,
                "ferry_objects_failed_total",
                "Objects refused or failed in finished runs.",
                nc,
            ),
            runs_active: register(
                r,
                Gauge::new("ferry_runs_active", "Runs that have started and not ended."),
            ),
            last_success_timestamp_seconds: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "ferry_last_success_timestamp_seconds",
                        "Unix time of the last successful run of each Connector.",
                    ),
                    nc,
                ),
            ),
            policy_denials_total: counter(
                r,
                "ferry_policy_denials_total",
                "Runs rejected by policy, by reason.",
                &["reason"],
            ),
            missed_schedules_total: counter(
                r,
                "ferry_missed_schedules_total",
                "Scheduled runs that were not started (missed or skipped).",
                nc,
            ),
            integrity_failures_total: counter(
                r,
                "ferry_integrity_failures_total",
                "Runs that found data failing its integrity check.",
                nc,
            ),
            shard_attempts_total: counter(
                r,
                "ferry_shard_attempts_total",
                "Ended attempts of the shards of runs spread over several pods, by result (succeeded, failed).",
                &["namespace", "connector", "result"],
            ),
            reconcile_total: counter(
                r,
                "ferry_reconcile_total",
                "Reconciles by controller and result (success, error, requeue).",
                &["controller", "result"],
            ),
            reconcile_errors_total: counter(
                r,
                "ferry_reconcile_errors_total",
                "Reconcile errors by controller and error category.",
                &["controller", "error"],
            ),
            reconcile_duration_seconds: histogram(
                r,
                "ferry_reconcile_duration_seconds",
                "Time of one reconcile.",
                vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
                &["controller"],
            ),
            queue_depth: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferry_reconcile_queue_depth",
                        "Objects changed and waiting for a reconcile, per controller.",
                    ),
                    &["controller"],
                ),
            ),
            registry,
        }
    }

    /// Creates the series of each controller at zero, so that they exist from
    /// the first scrape (rates and alerts need no "absent" special case).
    pub fn init_controllers(&self, controllers: &[&str]) {
        for c in controllers {
            for result in ["success", "requeue", "error"] {
                self.reconcile_total.with_label_values(&[c, result]);
            }
            self.reconcile_duration_seconds.with_label_values(&[c]);
            self.queue_depth.with_label_values(&[c]).set(0);
        }
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Starts timing a reconcile; the result is recorded by [`ReconcileTimer::finish`].
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }
}

/// Measures one reconcile.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl ReconcileTimer<'_> {
    /// Records the outcome: `Ok(requeue)` or the error's category.
    pub fn finish(self, outcome: Result<bool, &str>) {
        let m = self.metrics;
        m.reconcile_duration_seconds
            .with_label_values(&[self.controller])
            .observe(self.start.elapsed().as_secs_f64());
        let result = match outcome {
            Ok(false) => "success",
            Ok(true) => "requeue",
            Err(category) => {
                m.reconcile_errors_total
                    .with_label_values(&[self.controller, category])
                    .inc();
                "error"
            }
        };
        m.reconcile_total
            .with_label_values(&[self.controller, result])
            .inc();
    }
}

/// The resource version each object had when its last reconcile started.
/// Objects in a watch cache with another version are changed and waiting: the
/// queue depth.
#[derive(Debug, Default)]
pub struct Queue {
    reconciled: Mutex<HashMap<String, String>>,
}

impl Queue {
    /// A reconcile of `key` at `resource_version` starts.
    pub fn reconciled(&self, key: String, resource_version: Option<String>) {
        let mut r = self.reconciled.lock().unwrap_or_else(|e| e.into_inner());
        r.insert(key, resource_version.unwrap_or_default());
    }

    /// How many of `objects` (key, resource version) changed since their last
    /// reconcile. Keys no longer present are forgotten.
    pub fn depth(&self, objects: impl IntoIterator<Item = (String, Option<String>)>) -> usize {
        let mut r = self.reconciled.lock().unwrap_or_else(|e| e.into_inner());
        let mut present = HashSet::new();
        let mut waiting = 0;
        for (key, rv) in objects {
            if r.get(&key).map(String::as_str) != Some(rv.as_deref().unwrap_or_default()) {
                waiting += 1;
            }
            present.insert(key);
        }
        r.retain(|k, _| present.contains(k));
        waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_help_and_type() {
        let m = Metrics::new();
        m.runs_total
            .with_label_values(&["acme", "sales", "succeeded"])
            .inc();
        m.reconcile_started("connectorrun").finish(Err("kube"));
        let text = m.render();
        assert!(text.contains("# TYPE ferry_runs_total counter"));
        assert!(text.contains(
            "ferry_runs_total{connector=\"sales\",namespace=\"acme\",result=\"succeeded\"} 1"
        ));
        assert!(text.contains(
            "ferry_reconcile_errors_total{controller=\"connectorrun\",error=\"kube\"} 1"
        ));
        assert!(text.contains("# TYPE ferry_reconcile_duration_seconds histogram"));
    }

    #[test]
    fn queue_depth_counts_objects_changed_since_their_reconcile() {
        let q = Queue::default();
        let v = |k: &str, rv: &str| (k.to_string(), Some(rv.to_string()));
        assert_eq!(q.depth([v("a/x", "1"), v("a/y", "1")]), 2);
        q.reconciled("a/x".into(), Some("1".into()));
        assert_eq!(q.depth([v("a/x", "1"), v("a/y", "1")]), 1);
        assert_eq!(q.depth([v("a/x", "2"), v("a/y", "1")]), 2);
    }
}
