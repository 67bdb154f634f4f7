//! A ConnectorRun spread over shard pods, against the fake API: a pod per
//! shard, a failed shard retried alone, the last step once every shard has
//! succeeded, and every pod of every shard deleted at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ferry_crds::{ConnectorRunStatus, RunPhase};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::*;

const SHARDED: &str = r#"
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {name: sales, namespace: acme}
spec:
  source: {s3: {bucket: acme-exports, prefix: daily/, region: eu-west-1, credentials: {secretRef: {name: s3-reader}}}}
  destination: {azureBlob: {account: acmebronze, container: bronze, region: eu-west-1, credentials: {secretRef: {name: bronze-writer}}}}
  encryption: {keyRef: {secretRef: {name: acme-kek}}}
  run: {parallelism: 3, backoffLimit: 1}
"#;

/// What shard `index`'s runner reports, as its own field manager.
async fn shard_reports(w: &World, run: &str, index: i32, result: serde_json::Value) {
    let patch = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "ConnectorRun",
        "status": {"shardReports": {index.to_string(): {"result": result}}},
    });
    w.runs()
        .patch_status(
            run,
            &PatchParams::apply(&format!("ferry-runner-shard-{index}")).force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("shard status");
}

fn status(run: &ferry_crds::ConnectorRun) -> ConnectorRunStatus {
    run.status.clone().unwrap()
}

fn env(pod: &Pod, name: &str) -> Option<String> {
    pod.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn failed_pod() -> serde_json::Value {
    json!({"phase": "Failed", "containerStatuses": [{"name": "runner", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 137}}}]})
}

#[tokio::test]
async fn a_failed_shard_is_retried_alone_and_the_last_step_writes_the_manifest() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(SHARDED).await;
    w.create_run("r1", "sales").await;

    let s = status(&w.reconcile_run("r1").await);
    assert_eq!(s.shards.as_deref(), Some("0/3"));
    assert_eq!(s.shard_statuses.len(), 3);
    assert_eq!(s.attempts, None, "the last step has not started");
    for i in 0..3 {
        let pod: Pod = w.get(&format!("r1-1-s{i}")).await;
        assert_eq!(env(&pod, "FERRY_SHARD"), Some(format!("{i}/3")));
        assert_eq!(env(&pod, "FERRY_RUN_ATTEMPT").as_deref(), Some("1"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["ferry.dev/shard"], i.to_string());
        assert_eq!(
            pod.spec.unwrap().service_account_name.as_deref(),
            Some("ferry-run-r1"),
            "one identity for the run's shards"
        );
    }
    assert!(!w.exists::<Pod>("r1-1").await);

    for i in 0..3 {
        w.set_pod_status(&format!("r1-1-s{i}"), json!({"phase": "Running"}))
            .await;
    }
    let s = status(&w.reconcile_run("r1").await);
    assert_eq!(s.phase, Some(RunPhase::Running));

    // Shards 0 and 2 succeed; shard 1's pod is killed.
    for i in [0, 2] {
        shard_reports(&w, "r1", i, json!({"attempt": 1, "objectsCopied": 5, "objectsSkipped": 0, "bytesRead": 50, "bytesWritten": 90, "manifest": ".ferry/shards/r1/0-of-3.json"})).await;
        w.set_pod_status(&format!("r1-1-s{i}"), json!({"phase": "Succeeded"}))
            .await;
    }
    w.set_pod_status("r1-1-s1", failed_pod()).await;
    let s = status(&w.reconcile_run("r1").await);
    assert_eq!(s.shards.as_deref(), Some("2/3"));
    assert_eq!(s.phase, Some(RunPhase::Running));
    let one = &s.shard_statuses[1];
    assert_eq!(one.phase, Some(RunPhase::Pending));
    assert_eq!(one.reason.as_deref(), Some("RunnerFailed"));
    assert!(one.next_attempt_time.is_some());
    assert!(
        !w.exists::<Pod>("r1-1-s1").await,
        "the failed pod is deleted"
    );

    w.advance(60);
    let s = status(&w.reconcile_run("r1").await);
    assert_eq!(s.shard_statuses[1].attempts, 2);
    assert!(w.exists::<Pod>("r1-2-s1").await, "shard 1 runs again");
    for other in ["r1-2-s0", "r1-2-s2"] {
        assert!(!w.exists::<Pod>(other).await, "{other}: the others are not");
    }
    let pod: Pod = w.get("r1-2-s1").await;
    assert_eq!(env(&pod, "FERRY_RUN_ATTEMPT").as_deref(), Some("2"));

    // A report of the first attempt does not stand for the second.
    shard_reports(&w, "r1", 1, json!({"attempt": 1, "objectsCopied": 0, "objectsSkipped": 0, "bytesRead": 0, "bytesWritten": 0, "error": {"reason": "InvalidCredentials", "message": "old", "retryable": false}})).await;
    w.set_pod_status("r1-2-s1", json!({"phase": "Running"}))
        .await;
    let s = status(&w.reconcile_run("r1").await);
    assert_eq!(s.shard_statuses[1].phase, Some(RunPhase::Running), "{s:?}");

    // (`error: null`: the fake API merges an apply into what the manager
    // applied before, where a real one would drop the fields left out.)
    shard_reports(&w, "r1", 1, json!({"attempt": 2, "objectsCopied": 4, "objectsSkipped": 0, "bytesRead": 40, "bytesWritten": 80, "error": null})).await;
    w.set_pod_status("r1-2-s1", json!({"phase": "Succeeded"}))
        .await;
    let s = status(&w.reconcile_run("r1").await);
    assert_eq!(s.shards.as_deref(), Some("3/3"), "{s:#?}");
    assert_eq!(s.attempts, Some(1));
    assert_eq!(s.pod_name.as_deref(), Some("r1-1"));
    assert_eq!(s.phase, Some(RunPhase::Running));
    let last: Pod = w.get("r1-1").await;
    assert_eq!(env(&last, "FERRY_SHARDS").as_deref(), Some("3"));
    assert_eq!(env(&last, "FERRY_SHARD"), None);

    w.runner_reports(
        "r1",
        json!({"attempt": 1, "objectsCopied": 14, "objectsSkipped": 0, "bytesRead": 140, "bytesWritten": 260, "manifest": ".ferry/manifests/20261206T120000000000Z-r1.json", "manifestAnchor": format!("1:{}", "a".repeat(64))}),
    )
    .await;
    w.set_pod_status("r1-1", json!({"phase": "Succeeded"}))
        .await;
    let s = status(&w.reconcile_run("r1").await);
    assert_eq!(s.phase, Some(RunPhase::Succeeded), "{s:?}");
    assert_eq!(s.result.unwrap().objects_copied, 14);
    for pod in ["r1-1-s0", "r1-1-s1", "r1-2-s1", "r1-1-s2", "r1-1"] {
        assert!(!w.exists::<Pod>(pod).await, "{pod} left behind");
    }
    assert!(
        !w.exists::<k8s_openapi::api::core::v1::ServiceAccount>("ferry-run-r1")
            .await
    );
    let m = w.ctx.metrics.render();
    assert!(
        m.contains(
            r#"ferry_shard_attempts_total{connector="sales",namespace="acme",result="succeeded"} 3"#
        ),
        "{m}"
    );
    assert!(
        m.contains(
            r#"ferry_shard_attempts_total{connector="sales",namespace="acme",result="failed"} 1"#
        ),
        "{m}"
    );
    promtool_check_metrics(&m);
}

#[tokio::test]
async fn a_shard_that_fails_for_good_fails_the_run_and_every_shard_pod_goes() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(SHARDED).await;
    w.create_run("r2", "sales").await;
    w.reconcile_run("r2").await;
    shard_reports(&w, "r2", 2, json!({"attempt": 1, "objectsCopied": 0, "objectsSkipped": 0, "bytesRead": 0, "bytesWritten": 0, "error": {"reason": "InvalidCredentials", "message": "the destination refused the account key", "retryable": false}})).await;
    w.set_pod_status("r2-1-s2", json!({"phase": "Failed"}))
        .await;
    let s = status(&w.reconcile_run("r2").await);
    assert_eq!(s.phase, Some(RunPhase::Failed), "{s:?}");
    assert_eq!(s.reason.as_deref(), Some("InvalidCredentials"));
    assert!(s.message.unwrap().starts_with("shard 2: "));
    for i in 0..3 {
        assert!(!w.exists::<Pod>(&format!("r2-1-s{i}")).await);
    }
    assert!(!w.exists::<Pod>("r2-1").await, "no last step");
}

#[tokio::test]
async fn a_plan_run_of_a_sharded_connector_uses_one_pod() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(SHARDED).await;
    let mut run = run_of("p1", "sales");
    run.spec.mode = ferry_crds::RunMode::Plan;
    w.runs().create(&Default::default(), &run).await.unwrap();
    let s = status(&w.reconcile_run("p1").await);
    assert!(s.shard_statuses.is_empty());
    assert!(w.exists::<Pod>("p1-1").await);
}
