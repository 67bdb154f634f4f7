//! The operator's /metrics text: `promtool check metrics` accepts it, no label
//! can hold a run name, and every metric the chart's dashboard and alert rules
//! query is one the operator exports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use support::promtool_check_metrics;

use ferry_operator::metrics::Metrics;

/// Every metric with a sample, as a busy operator has them.
fn busy() -> String {
    let m = Metrics::new();
    let nc = ["acme", "sales"];
    m.runs_total
        .with_label_values(&["acme", "sales", "succeeded"])
        .inc();
    m.run_duration_seconds.with_label_values(&nc).observe(42.0);
    m.bytes_transferred_total
        .with_label_values(&nc)
        .inc_by(1 << 20);
    m.objects_transferred_total.with_label_values(&nc).inc_by(3);
    m.objects_failed_total.with_label_values(&nc).inc();
    m.runs_active.set(2.0);
    m.last_success_timestamp_seconds
        .with_label_values(&nc)
        .set(1.7e9);
    m.policy_denials_total
        .with_label_values(&["ResidencyViolation"])
        .inc();
    m.missed_schedules_total.with_label_values(&nc).inc();
    m.integrity_failures_total.with_label_values(&nc).inc();
    m.reconcile_started("connectorrun").finish(Ok(false));
    m.reconcile_started("connector").finish(Err("conflict"));
    m.queue_depth.with_label_values(&["connector"]).set(0);
    m.render()
}

fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn promtool_accepts_the_exposition() {
    let text = busy();
    promtool_check_metrics(&text);
    let names = exported(&text);
    for wanted in [
        "ferry_runs_total",
        "ferry_run_duration_seconds",
        "ferry_bytes_transferred_total",
        "ferry_objects_transferred_total",
        "ferry_objects_failed_total",
        "ferry_runs_active",
        "ferry_last_success_timestamp_seconds",
        "ferry_policy_denials_total",
        "ferry_missed_schedules_total",
        "ferry_integrity_failures_total",
        "ferry_reconcile_total",
        "ferry_reconcile_errors_total",
        "ferry_reconcile_duration_seconds",
        "ferry_reconcile_queue_depth",
    ] {
        assert!(names.contains(wanted), "{wanted} is exported");
    }
}

#[test]
fn no_label_can_hold_a_run_name() {
    let allowed = [
        "namespace",
        "connector",
        "result",
        "reason",
        "controller",
        "error",
        "le",
    ];
    for line in busy().lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = line
            .split_once('{')
            .map(|(_, rest)| rest.split_once('}').unwrap().0)
        else {
            continue;
        };
        for pair in labels.split(',') {
            let name = pair.split('=').next().unwrap();
            assert!(allowed.contains(&name), "label {name} in {line}");
        }
    }
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let names = exported(&busy());
    let files = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/ferry/files/");
    let dashboard = std::fs::read_to_string(format!("{files}dashboard.json")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("dashboard JSON parses");
    let mut queries = Vec::new();
    for panel in parsed["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            queries.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(queries.len() >= 10);
    queries.push(std::fs::read_to_string(format!("{files}alerts.yaml")).unwrap());
    let mut used = BTreeSet::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(i) = rest.find("ferry_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            used.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    assert!(!used.is_empty());
    for metric in used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| metric.strip_suffix(s).filter(|b| names.contains(*b)))
            .unwrap_or(&metric);
        assert!(names.contains(base), "{metric} is queried but not exported");
    }
}
