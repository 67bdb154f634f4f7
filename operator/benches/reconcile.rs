//! Reconcile 1000 Connectors and 1000 ConnectorRuns against the in-process fake
//! API: time per reconcile (p50/p99), ConnectorRun created -> Pod applied latency,
//! and the process's peak RSS. Run with `cargo bench -p ferry-operator --bench
//! reconcile`; docs/bench/operator.sh writes the numbers to docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_crds::{Connector, ConnectorRun};
use ferry_operator::audit::AuditLog;
use ferry_operator::config::Config;
use ferry_operator::context::Context;
use ferry_operator::metrics::Metrics;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, PartialObjectMeta, PostParams};
use kube::runtime::{reflector, watcher};
use kube_fake_client::ClientBuilder;

const N: usize = 1000;
const NS: &str = "acme";

fn connector(i: usize) -> Connector {
    serde_saphyr::from_str(&format!(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {{name: c{i}, namespace: {NS}}}
spec:
  source: {{s3: {{bucket: b{i}, prefix: daily/, region: eu-west-1, credentials: {{secretRef: {{name: s3}}}}}}}}
  destination: {{azureBlob: {{account: a, container: c{i}, region: eu-west-1, credentials: {{secretRef: {{name: az}}}}}}}}
  encryption: {{keyRef: {{secretRef: {{name: kek}}}}}}
  schedule: "0 2 * * *"
"#
    ))
    .unwrap()
}

fn secret(name: &str, keys: &[&str]) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some(NS.into());
    s.data = Some(
        keys.iter()
            .map(|k| (k.to_string(), ByteString(b"x".to_vec())))
            .collect(),
    );
    s.metadata.labels = Some(
        [(
            ferry_crds::SECRET_OPT_IN_LABEL.to_string(),
            ferry_crds::SECRET_OPT_IN_VALUE.to_string(),
        )]
        .into(),
    );
    s
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        times.len(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap())
    );
}

/// The operator's watch caches for what the benchmark created, in a process of
/// their own (the fake API keeps every object in the benchmark's process, so its
/// RSS says nothing about the operator's): the Connectors, ConnectorRuns and Pods
/// are read from `dump` into reflector stores, as the operator's watches hold them
/// (pods as metadata only: the operator reads a pod's status when it reconciles).
fn caches_only(dump: &str) {
    #[derive(serde::Deserialize)]
    struct Dump {
        connectors: Vec<Connector>,
        runs: Vec<ConnectorRun>,
        pods: Vec<PartialObjectMeta<Pod>>,
    }
    let before = current_rss_mib();
    let file = std::io::BufReader::new(std::fs::File::open(dump).unwrap());
    let d: Dump = serde_json::from_reader(file).unwrap();
    let (connectors, mut wc) = reflector::store::<Connector>();
    let (runs, mut wr) = reflector::store::<ConnectorRun>();
    let (pods, mut wp) = reflector::store::<PartialObjectMeta<Pod>>();
    for c in d.connectors {
        wc.apply_watcher_event(&watcher::Event::Apply(c));
    }
    for r in d.runs {
        wr.apply_watcher_event(&watcher::Event::Apply(r));
    }
    for p in d.pods {
        wp.apply_watcher_event(&watcher::Event::Apply(p));
    }
    println!(
        "operator caches: {} Connectors, {} ConnectorRuns, {} Pods; RSS {:.1} MiB empty, {:.1} MiB holding them, peak {:.1} MiB while parsing the dump",
        connectors.state().len(),
        runs.state().len(),
        pods.state().len(),
        before,
        current_rss_mib(),
        peak_rss_mib()
    );
}

fn current_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--caches-only") {
        caches_only(&args[i + 1]);
        return;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

async fn bench() {
    let client = ClientBuilder::new()
        .with_resource::<Connector>()
        .with_resource::<ConnectorRun>()
        .with_status_subresource::<Connector>()
        .with_status_subresource::<ConnectorRun>()
        .with_status_subresource::<Pod>()
        .with_object(secret("s3", &["accessKeyId", "secretAccessKey"]))
        .with_object(secret("az", &["accountKey"]))
        .with_object(secret("kek", &["kek"]))
        .build()
        .await
        .unwrap();
    let mut ns = Namespace::default();
    ns.metadata.name = Some(NS.into());
    ns.metadata.labels = Some(
        [(
            ferry_crds::REGION_LABEL.to_string(),
            "eu-west-1".to_string(),
        )]
        .into(),
    );
    let (namespaces, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(ns));
    let (audit, _) = AuditLog::memory();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Config::default(),
        Arc::new(Metrics::new()),
        audit,
        namespaces,
        // No run exists while the Connectors are reconciled: a filled, empty cache.
        ferry_operator::run_cache::filled_with(Some(NS.to_string()), []),
    ));

    let connectors: Api<Connector> = Api::namespaced(client.clone(), NS);
    let runs: Api<ConnectorRun> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    let mut connector_times = Vec::with_capacity(N);
    for i in 0..N {
        let c = connectors
            .create(&PostParams::default(), &connector(i))
            .await
            .unwrap();
        let start = Instant::now();
        ferry_operator::connector::reconcile(Arc::new(c), ctx.clone())
            .await
            .unwrap();
        connector_times.push(start.elapsed());
    }

    let mut run_times = Vec::with_capacity(N);
    let mut latency = Vec::with_capacity(N);
    for i in 0..N {
        let run: ConnectorRun = serde_saphyr::from_str(&format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: ConnectorRun\nmetadata: {{name: r{i}, namespace: {NS}}}\nspec: {{connectorRef: {{name: c{i}}}}}\n"
        ))
        .unwrap();
        let created_at = Instant::now();
        let run = runs.create(&PostParams::default(), &run).await.unwrap();
        let start = Instant::now();
        ferry_operator::run::reconcile(Arc::new(run), ctx.clone())
            .await
            .unwrap();
        run_times.push(start.elapsed());
        assert!(
            pods.get_opt(&format!("r{i}-1")).await.unwrap().is_some(),
            "pod applied"
        );
        latency.push(created_at.elapsed());
    }
    // A second pass: steady state, nothing to change.
    let mut steady = Vec::with_capacity(N);
    for run in runs.list(&Default::default()).await.unwrap().items {
        let start = Instant::now();
        ferry_operator::run::reconcile(Arc::new(run), ctx.clone())
            .await
            .unwrap();
        steady.push(start.elapsed());
    }

    println!(
        "reconcile benchmark: {N} Connectors, {N} ConnectorRuns, fake API in process, one thread"
    );
    report(
        "connector reconcile (schedule, checks, cached runs, status)",
        connector_times,
    );
    report(
        "run reconcile, first (pin spec, checks, 5 objects applied, status)",
        run_times,
    );
    report("run created -> pod applied", latency);
    report("run reconcile, steady state (pod pending)", steady);
    println!(
        "peak RSS of this process (fake API and all its objects included): {:.1} MiB",
        peak_rss_mib()
    );

    // The operator's own memory: its caches, measured in a fresh process.
    let dump =
        std::env::temp_dir().join(format!("ferry-reconcile-bench-{}.json", std::process::id()));
    let body = serde_json::json!({
        "connectors": connectors.list(&Default::default()).await.unwrap().items,
        "runs": runs.list(&Default::default()).await.unwrap().items,
        "pods": pods.list(&Default::default()).await.unwrap().items,
    });
    std::fs::write(&dump, serde_json::to_vec(&body).unwrap()).unwrap();
    drop(body);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--caches-only", dump.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&dump);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
