//! ConnectorRun reconciles against the fake API: the happy path and each way a
//! run can end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ferry_crds::RunPhase;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::json;
use std::sync::Arc;
use support::*;

fn phase(run: &ferry_crds::ConnectorRun) -> Option<RunPhase> {
    run.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test]
async fn happy_path_to_succeeded() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("manual-1", "sales").await;

    let run = w.reconcile_run("manual-1").await;
    let status = run.status.clone().unwrap();
    assert_eq!(status.phase, Some(RunPhase::Pending));
    assert_eq!(status.attempts, Some(1));
    assert_eq!(status.pod_name.as_deref(), Some("manual-1-1"));
    assert!(status.connector_spec.is_some(), "spec pinned");
    assert!(
        status
            .connector_spec_hash
            .as_deref()
            .unwrap()
            .starts_with("sha256:")
    );
    for exists in [
        w.exists::<ServiceAccount>("ferry-run-manual-1").await,
        w.exists::<Role>("ferry-run-manual-1").await,
        w.exists::<RoleBinding>("ferry-run-manual-1").await,
        w.exists::<NetworkPolicy>("ferry-run-manual-1").await,
        w.exists::<Pod>("manual-1-1").await,
    ] {
        assert!(exists);
    }

    w.set_pod_status("manual-1-1", json!({"phase": "Running"}))
        .await;
    let run = w.reconcile_run("manual-1").await;
    assert_eq!(phase(&run), Some(RunPhase::Running));
    assert!(run.status.as_ref().unwrap().start_time.is_some());

    w.advance(95);
    w.runner_reports(
        "manual-1",
        json!({"attempt": 1, "objectsCopied": 3, "objectsSkipped": 1, "bytesRead": 300, "bytesWritten": 420, "manifest": ".ferry/manifests/manual-1.json"}),
    )
    .await;
    w.set_pod_status("manual-1-1", json!({"phase": "Succeeded"}))
        .await;
    let run = w.reconcile_run("manual-1").await;
    let status = run.status.clone().unwrap();
    assert_eq!(status.phase, Some(RunPhase::Succeeded), "{status:?}");
    assert_eq!(status.duration.as_deref(), Some("1m35s"));
    assert_eq!(
        status.result.as_ref().unwrap().objects_copied,
        3,
        "runner's fields survive the operator's writes"
    );
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
    );
    assert!(
        !w.exists::<Pod>("manual-1-1").await,
        "pod deleted at the end"
    );
    assert!(
        !w.exists::<Role>("ferry-run-manual-1").await,
        "identity deleted at the end"
    );
    assert!(!w.exists::<ServiceAccount>("ferry-run-manual-1").await);

    // The Connector's status follows.
    let c = w.reconcile_connector("sales").await;
    let cs = c.status.unwrap();
    assert_eq!(cs.last_run.as_ref().unwrap().name, "manual-1");
    assert_eq!(
        cs.last_run.as_ref().unwrap().phase,
        Some(RunPhase::Succeeded)
    );
    assert!(cs.last_successful_time.is_some());
    assert_eq!(
        cs.cursor.as_ref().unwrap().manifest,
        ".ferry/manifests/manual-1.json"
    );
    assert_eq!(cs.cursor.as_ref().unwrap().objects, 4);

    let metrics = w.ctx.metrics.render();
    assert!(
        metrics.contains(
            r#"ferry_runs_total{connector="sales",namespace="acme",result="succeeded"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"ferry_bytes_transferred_total{connector="sales",namespace="acme"} 420"#)
    );
    let actions: Vec<String> = w
        .audit_lines()
        .iter()
        .map(|l| l["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["run.started", "run.finished"]);
    let events = w.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Started"))
    );
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Succeeded"))
    );
}

async fn rejected(w: &World, connector_yaml: &str) -> ferry_crds::ConnectorRun {
    w.create_connector(connector_yaml).await;
    w.create_run("r1", "sales").await;
    let run = w.reconcile_run("r1").await;
    assert_eq!(phase(&run), Some(RunPhase::Rejected), "{:?}", run.status);
    assert!(!w.exists::<Pod>("r1-1").await, "no pod for a rejected run");
    assert!(
        !w.exists::<ServiceAccount>("ferry-run-r1").await,
        "no identity for a rejected run"
    );
    let status = run.status.as_ref().unwrap();
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "PolicyViolation" && c.status == "True")
    );
    run
}

fn reason(run: &ferry_crds::ConnectorRun) -> &str {
    run.status.as_ref().unwrap().reason.as_deref().unwrap()
}

async fn assert_denial_recorded(w: &World, reason: &str) {
    let events = w.events().await;
    let e = events
        .iter()
        .find(|e| e.reason.as_deref() == Some(reason))
        .unwrap_or_else(|| panic!("a Warning Event {reason}: {events:?}"));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    let lines = w.audit_lines();
    let line = lines
        .iter()
        .find(|l| l["action"] == "run.rejected")
        .expect("an audit line");
    assert_eq!(line["outcome"], "denied");
    assert_eq!(line["reason"], reason);
    assert_eq!(line["tenant"], NS);
    assert_eq!(line["connector"], "sales");
    assert_eq!(line["run"], "r1");
    assert_eq!(line["source"], "s3://acme-exports/daily/");
    assert_eq!(line["destination"], "azure://acmebronze/bronze/");
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    let m = w.ctx.metrics.render();
    assert!(
        m.contains(&format!(
            "ferry_policy_denials_total{{reason=\"{reason}\"}} 1"
        )),
        "{m}"
    );
}

#[tokio::test]
async fn rejected_by_sensitivity() {
    let w = World::new(namespace(Some("eu-west-1"), Some("pii"))).await;
    let yaml = format!(
        "{CONNECTOR}  streams: [{{name: cards, match: 'cards/**', sensitivity: [pci]}}]\n  compliance: {{allowedSensitivity: [pii]}}\n"
    );
    let run = rejected(&w, &yaml).await;
    assert_eq!(reason(&run), "SensitivityNotAllowed");
    assert!(
        run.status
            .as_ref()
            .unwrap()
            .message
            .as_deref()
            .unwrap()
            .contains("\"cards\" is tagged pci")
    );
    assert_denial_recorded(&w, "SensitivityNotAllowed").await;
}

#[tokio::test]
async fn rejected_by_residency() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    let run = rejected(
        &w,
        &CONNECTOR.replace(
            "container: bronze, region: eu-west-1",
            "container: bronze, region: eastus",
        ),
    )
    .await;
    assert_eq!(reason(&run), "ResidencyViolation");
    assert_denial_recorded(&w, "ResidencyViolation").await;
}

#[tokio::test]
async fn rejected_for_a_missing_secret() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    let run = rejected(
        &w,
        &CONNECTOR.replace("name: bronze-writer", "name: nowhere"),
    )
    .await;
    assert_eq!(reason(&run), "SecretNotFound");
    assert_denial_recorded(&w, "SecretNotFound").await;
}

/// Attack: the tenant names a Secret nobody opted in for Ferry, hoping its run
/// reads it and sends it to a host the tenant controls.
#[tokio::test]
async fn a_connector_naming_a_secret_not_opted_in_is_rejected() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    let run = rejected(
        &w,
        &CONNECTOR.replace("name: bronze-writer", "name: team-db"),
    )
    .await;
    assert_eq!(reason(&run), "SecretNotOptedIn");
    assert_denial_recorded(&w, "SecretNotOptedIn").await;
}

/// A Connector that keeps its credentials in Vault, on a platform without
/// one: refused before any pod, with a reason that says what is missing.
#[tokio::test]
async fn vault_credentials_without_a_vault_are_rejected() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    let run = rejected(
        &w,
        &CONNECTOR.replace(
            "credentials: {secretRef: {name: s3-reader}}",
            "credentials: {vault: {path: acme/s3-reader}}",
        ),
    )
    .await;
    assert_eq!(reason(&run), "SecretStoreNotConfigured");
    let message = run.status.as_ref().unwrap().message.clone().unwrap();
    assert!(message.contains("vault:secret/acme/s3-reader"), "{message}");
}

/// A Connector whose KEK is a Transit key, on a platform without Vault.
#[tokio::test]
async fn a_transit_kek_without_a_vault_is_rejected() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    let run = rejected(
        &w,
        &CONNECTOR.replace(
            "encryption: {keyRef: {secretRef: {name: acme-kek}}}",
            "encryption: {kms: {vaultTransit: {key: acme}}}",
        ),
    )
    .await;
    assert_eq!(reason(&run), "SecretStoreNotConfigured");
    let message = run.status.as_ref().unwrap().message.clone().unwrap();
    assert!(message.contains("vault-transit:transit/acme"), "{message}");
}

/// Attack: the tenant names the namespace's ServiceAccount token Secret (even
/// one labelled for Ferry): a run must never read Kubernetes' own credentials.
#[tokio::test]
async fn a_connector_naming_a_service_account_token_is_rejected() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    let run = rejected(
        &w,
        &CONNECTOR.replace("name: bronze-writer", "name: default-token"),
    )
    .await;
    assert_eq!(reason(&run), "SecretTypeRefused");
    assert_denial_recorded(&w, "SecretTypeRefused").await;
}

/// Attack: the tenant asks for a web identity token whose audience is the API
/// server's, to be sent to a server of its choosing: no pod, no token.
#[tokio::test]
async fn a_run_asking_for_a_token_for_the_api_server_is_rejected() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    let run = rejected(
        &w,
        &CONNECTOR.replace(
            "credentials: {secretRef: {name: s3-reader}}",
            "credentials: {webIdentity: {roleArn: 'arn:aws:iam::123456789012:role/r', audience: 'https://kubernetes.default.svc'}}",
        ),
    )
    .await;
    assert_eq!(reason(&run), "TokenAudienceNotAllowed");
    assert_denial_recorded(&w, "TokenAudienceNotAllowed").await;
}

#[tokio::test]
async fn a_run_waits_for_its_connector() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_run("r1", "sales").await;
    let run = w.reconcile_run("r1").await;
    assert_eq!(phase(&run), Some(RunPhase::Pending));
    assert_eq!(reason(&run), "ConnectorNotFound");
    w.create_connector(CONNECTOR).await;
    let run = w.reconcile_run("r1").await;
    assert_eq!(run.status.as_ref().unwrap().attempts, Some(1));
}

#[tokio::test]
async fn the_pinned_spec_is_used_after_an_edit() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("r1", "sales").await;
    let pinned = w
        .reconcile_run("r1")
        .await
        .status
        .unwrap()
        .connector_spec_hash;
    let mut c = w.connectors().get("sales").await.unwrap();
    c.spec.source.s3.as_mut().unwrap().bucket = "elsewhere".into();
    w.connectors()
        .replace("sales", &Default::default(), &c)
        .await
        .unwrap();
    w.set_pod_status("r1-1", json!({"phase": "Running"})).await;
    let run = w.reconcile_run("r1").await;
    let status = run.status.unwrap();
    assert_eq!(status.connector_spec_hash, pinned);
    assert_eq!(
        status.connector_spec.unwrap().source.s3.unwrap().bucket,
        "acme-exports"
    );
}

#[tokio::test]
async fn a_failed_pod_is_retried_with_backoff_then_the_run_fails() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(&format!("{CONNECTOR}  run: {{backoffLimit: 1}}\n"))
        .await;
    w.create_run("r1", "sales").await;
    w.reconcile_run("r1").await;
    w.set_pod_status("r1-1", json!({"phase": "Failed", "containerStatuses": [{"name": "runner", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 3}}}]})).await;
    let run = w.reconcile_run("r1").await;
    let s = run.status.clone().unwrap();
    assert_eq!(s.phase, Some(RunPhase::Pending));
    assert_eq!(s.reason.as_deref(), Some("RunnerFailed"));
    assert!(s.next_attempt_time.is_some());
    assert!(!w.exists::<Pod>("r1-1").await, "the failed pod is removed");
    assert!(
        w.exists::<ServiceAccount>("ferry-run-r1").await,
        "the identity stays for the retry"
    );

    // A failed pod that is still there (its deletion after the retry was
    // written did not get through) changes nothing during the backoff, and is
    // deleted again.
    w.pods()
        .create(&Default::default(), &{
            let mut p = k8s_openapi::api::core::v1::Pod::default();
            p.metadata.name = Some("r1-1".into());
            p
        })
        .await
        .unwrap();
    w.set_pod_status("r1-1", json!({"phase": "Failed"})).await;
    let again = w.reconcile_run("r1").await.status.unwrap();
    assert_eq!(
        again.next_attempt_time, s.next_attempt_time,
        "the backoff does not restart"
    );
    assert!(
        !w.exists::<Pod>("r1-1").await,
        "the failed attempt's pod is deleted again"
    );

    // Not before the backoff has passed.
    w.advance(5);
    let run = w.reconcile_run("r1").await;
    assert_eq!(run.status.as_ref().unwrap().attempts, Some(1));
    w.advance(10);
    let run = w.reconcile_run("r1").await;
    assert_eq!(run.status.as_ref().unwrap().attempts, Some(2));
    assert!(w.exists::<Pod>("r1-2").await);
    let pod = w.pods().get("r1-2").await.unwrap();
    assert_eq!(pod.metadata.labels.unwrap()["ferry.dev/attempt"], "2");

    w.set_pod_status(
        "r1-2",
        json!({"phase": "Failed", "reason": "Evicted", "message": "node low on memory"}),
    )
    .await;
    let run = w.reconcile_run("r1").await;
    let s = run.status.unwrap();
    assert_eq!(s.phase, Some(RunPhase::Failed));
    assert_eq!(s.reason.as_deref(), Some("Evicted"));
    assert!(s.message.unwrap().ends_with("(after 2 attempts)"));
    assert!(!w.exists::<ServiceAccount>("ferry-run-r1").await);
    let events = w.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("AttemptFailed"))
    );
}

#[tokio::test]
async fn authentication_failures_are_not_retried() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("r1", "sales").await;
    w.reconcile_run("r1").await;
    w.runner_reports(
        "r1",
        json!({"attempt": 1, "objectsCopied": 0, "objectsSkipped": 0, "bytesRead": 0, "bytesWritten": 0,
               "error": {"reason": "InvalidCredentials", "message": "source s3://acme-exports/daily/: the access key was refused", "retryable": false}}),
    )
    .await;
    w.set_pod_status("r1-1", json!({"phase": "Failed"})).await;
    let run = w.reconcile_run("r1").await;
    let s = run.status.unwrap();
    assert_eq!(s.phase, Some(RunPhase::Failed));
    assert_eq!(s.reason.as_deref(), Some("InvalidCredentials"));
    assert_eq!(s.attempts, Some(1), "no retry");
    let line = w
        .audit_lines()
        .into_iter()
        .find(|l| l["action"] == "run.finished")
        .unwrap();
    assert_eq!(line["outcome"], "failure");
    assert_eq!(line["reason"], "InvalidCredentials");
}

#[tokio::test]
async fn a_refusal_only_the_runner_can_see_is_a_policy_violation() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("r1", "sales").await;
    w.reconcile_run("r1").await;
    w.runner_reports(
        "r1",
        json!({"attempt": 1, "objectsCopied": 0, "objectsSkipped": 0, "bytesRead": 0, "bytesWritten": 0,
               "error": {"reason": "ResidencyViolation", "message": "destination s3://acme-bronze/ is in region \"us-east-1\" (as the store reports), outside the tenant's region \"eu-west-1\"", "retryable": false}}),
    )
    .await;
    w.set_pod_status("r1-1", json!({"phase": "Failed"})).await;
    let s = w.reconcile_run("r1").await.status.unwrap();
    assert_eq!(s.phase, Some(RunPhase::Failed));
    assert_eq!(s.reason.as_deref(), Some("ResidencyViolation"));
    assert_eq!(s.attempts, Some(1), "no retry");
    let violation = s
        .conditions
        .iter()
        .find(|c| c.type_ == "PolicyViolation")
        .expect("a PolicyViolation condition");
    assert_eq!(
        (violation.status.as_str(), violation.reason.as_str()),
        ("True", "ResidencyViolation")
    );
    let events = w.events().await;
    assert!(events.iter().any(|e| e.type_.as_deref() == Some("Warning")
        && e.reason.as_deref() == Some("ResidencyViolation")));
    assert!(
        w.ctx
            .metrics
            .render()
            .contains("ferry_policy_denials_total{reason=\"ResidencyViolation\"} 1")
    );
    let line = w
        .audit_lines()
        .into_iter()
        .find(|l| l["action"] == "run.finished")
        .unwrap();
    assert_eq!(
        (line["outcome"].as_str(), line["reason"].as_str()),
        (Some("failure"), Some("ResidencyViolation"))
    );
}

#[tokio::test]
async fn deadline_exceeded_fails_the_run() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("r1", "sales").await;
    w.reconcile_run("r1").await;
    w.set_pod_status(
        "r1-1",
        json!({"phase": "Failed", "reason": "DeadlineExceeded"}),
    )
    .await;
    let run = w.reconcile_run("r1").await;
    let s = run.status.unwrap();
    assert_eq!(s.phase, Some(RunPhase::Failed));
    assert_eq!(s.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(s.attempts, Some(1));
}

#[tokio::test]
async fn a_pod_deleted_under_the_run_counts_as_a_failed_attempt() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("r1", "sales").await;
    w.reconcile_run("r1").await;
    w.pods().delete("r1-1", &Default::default()).await.unwrap();
    let run = w.reconcile_run("r1").await;
    assert_eq!(
        run.status.as_ref().unwrap().reason.as_deref(),
        Some("PodDeleted")
    );
    assert_eq!(phase(&run), Some(RunPhase::Pending));
}

#[tokio::test]
async fn reconciling_twice_changes_nothing() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("r1", "sales").await;
    let first = w.reconcile_run("r1").await;
    let second = w.reconcile_run("r1").await;
    assert_eq!(first.status, second.status);
    assert_eq!(
        first.metadata.resource_version, second.metadata.resource_version,
        "no write when nothing changed"
    );
}

/// The cache lags: a pod event makes the controller reconcile a copy of the
/// run from before this operator marked it Succeeded (and deleted its pod).
/// That copy must not be taken for a run whose pod was lost.
#[tokio::test]
async fn a_stale_copy_of_a_finished_run_starts_no_new_attempt() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("r1", "sales").await;
    w.reconcile_run("r1").await;
    w.set_pod_status("r1-1", json!({"phase": "Running"})).await;
    let stale = w.reconcile_run("r1").await;
    assert_eq!(phase(&stale), Some(RunPhase::Running));
    w.runner_reports(
        "r1",
        json!({"attempt": 1, "objectsCopied": 1, "objectsSkipped": 0, "bytesRead": 1, "bytesWritten": 2, "manifest": ".ferry/manifests/r1.json"}),
    )
    .await;
    w.set_pod_status("r1-1", json!({"phase": "Succeeded"}))
        .await;
    let done = w.reconcile_run("r1").await;
    assert_eq!(phase(&done), Some(RunPhase::Succeeded));
    assert!(!w.exists::<Pod>("r1-1").await, "the pod was cleaned up");

    // The pod's deletion triggers a reconcile of the copy still in the cache.
    ferry_operator::run::reconcile(Arc::new(stale), w.ctx.clone())
        .await
        .expect("reconcile the stale copy");
    let after = w.runs().get("r1").await.unwrap();
    assert_eq!(phase(&after), Some(RunPhase::Succeeded));
    assert_eq!(after.status.as_ref().unwrap().attempts, Some(1));
    assert!(!w.exists::<Pod>("r1-2").await, "no second attempt");
    let finished = w
        .audit_lines()
        .iter()
        .filter(|l| l["action"] == "run.finished")
        .count();
    assert_eq!(finished, 1, "the run finished once");
}

/// Attack: a run's runner, whose token may patch the run's status, rewrites the
/// operator's fields there: the pinned spec (so that the next attempt's Role
/// names other Secrets and its pod reads another source), the phase and
/// conditions (to end the run as it likes), the attempt count, and a result
/// that would move the Connector's cursor. The operator's record stands: the
/// attempt is flagged and failed, the next one is built from the spec pinned at
/// admission, and the Connector's status does not move.
#[tokio::test]
async fn a_runner_rewriting_the_operators_status_fields_steers_nothing() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("r1", "sales").await;
    let admitted = w.reconcile_run("r1").await.status.unwrap();
    w.set_pod_status("r1-1", json!({"phase": "Running"})).await;
    w.reconcile_run("r1").await;

    let mut forged = admitted.connector_spec.clone().unwrap();
    forged.source.s3.as_mut().unwrap().bucket = "someone-elses-bucket".into();
    forged
        .source
        .s3
        .as_mut()
        .unwrap()
        .credentials
        .secret_ref
        .as_mut()
        .unwrap()
        .name = "team-db".into();
    // The runner's token, posing as the operator's field manager.
    let tamper = json!({"status": {
        "connectorSpec": forged,
        "connectorSpecHash": ferry_crds::spec_hash(&forged),
        "phase": "Succeeded",
        "attempts": 7,
        "completionTime": "2026-11-23T10:00:30Z",
        "conditions": [{"type": "Complete", "status": "True", "reason": "Succeeded", "message": "done",
                        "lastTransitionTime": "2026-11-23T10:00:30Z"}],
        "result": {"attempt": 1, "objectsCopied": 0, "objectsSkipped": 0, "bytesRead": 0, "bytesWritten": 0,
                   "manifest": ".ferry/manifests/20261101T000000000000Z-an-old-run.json"},
    }});
    w.runs()
        .patch_status(
            "r1",
            &kube::api::PatchParams {
                field_manager: Some("ferry-operator".into()),
                ..Default::default()
            },
            &kube::api::Patch::Merge(&tamper),
        )
        .await
        .unwrap();

    let run = w.reconcile_run("r1").await;
    let status = run.status.clone().unwrap();
    // Flagged: the attempt failed for it, an Event, an audit line.
    assert_eq!(status.phase, Some(RunPhase::Pending), "{status:?}");
    assert_eq!(status.reason.as_deref(), Some("StatusTampered"));
    assert_eq!(status.attempts, Some(1));
    assert_eq!(
        status.connector_spec, admitted.connector_spec,
        "the pinned spec is shown again"
    );
    assert!(
        !w.exists::<Pod>("r1-1").await,
        "the flagged attempt's pod is gone"
    );
    let events = w.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("StatusTampered"))
    );
    assert!(
        w.audit_lines()
            .iter()
            .any(|l| l["action"] == "run.tampered")
    );
    // The Connector did not take the forged success or its manifest.
    let c = w.reconcile_connector("sales").await.status.unwrap();
    assert!(
        c.cursor.is_none() && c.last_successful_time.is_none(),
        "{c:?}"
    );

    // The next attempt is built from the spec pinned at admission.
    w.advance(3600);
    w.reconcile_run("r1").await;
    let role: Role = w.get("ferry-run-r1").await;
    let secrets = &role.rules.unwrap()[0];
    assert_eq!(
        secrets.resource_names.as_ref().unwrap(),
        &["acme-kek", "bronze-writer", "s3-reader"]
    );
    let pod: Pod = w.get("r1-2").await;
    let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
    let hash = env
        .iter()
        .find(|e| e.name == ferry_crds::contract::env::SPEC_HASH)
        .unwrap();
    assert_eq!(hash.value, admitted.connector_spec_hash);
}

/// A status write that fails after the record was written is not tampering:
/// the next reconcile writes the status again and flags nothing.
#[tokio::test]
async fn a_status_that_lags_the_record_is_not_taken_for_tampering() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("r1", "sales").await;
    let admitted = w.reconcile_run("r1").await.status.unwrap();
    // The record moves on (pod running) but the status write is lost: put the
    // status back to what it was.
    w.set_pod_status("r1-1", json!({"phase": "Running"})).await;
    w.reconcile_run("r1").await;
    w.runs()
        .patch_status(
            "r1",
            &Default::default(),
            &kube::api::Patch::Merge(
                &json!({"status": {"phase": admitted.phase, "startTime": null}}),
            ),
        )
        .await
        .unwrap();
    let run = w.reconcile_run("r1").await;
    assert_eq!(phase(&run), Some(RunPhase::Running));
    assert!(
        !w.audit_lines()
            .iter()
            .any(|l| l["action"] == "run.tampered")
    );
    assert!(w.exists::<Pod>("r1-1").await);
}

/// Someone with rights in the namespace edits a run's Role (or creates it
/// first) with more than the run needs. The operator never patches a run's
/// objects: a drifted one is deleted and created again as built.
#[tokio::test]
async fn a_drifted_run_object_is_deleted_and_created_again() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    let run = w.create_run("r1", "sales").await;
    let mut role = Role::default();
    role.metadata.name = Some("ferry-run-r1".into());
    role.metadata.namespace = Some(NS.into());
    role.metadata.labels = Some(ferry_operator::run::build::run_labels(&run));
    role.metadata.owner_references = Some(vec![ferry_operator::run::build::owner(&run).unwrap()]);
    role.rules = Some(vec![k8s_openapi::api::rbac::v1::PolicyRule {
        api_groups: Some(vec!["".into()]),
        resources: Some(vec!["secrets".into()]),
        verbs: vec!["list".into()],
        ..Default::default()
    }]);
    let roles: kube::Api<Role> = kube::Api::namespaced(w.client.clone(), NS);
    roles.create(&Default::default(), &role).await.unwrap();
    w.reconcile_run("r1").await;
    let rules = w.get::<Role>("ferry-run-r1").await.rules.unwrap();
    assert!(
        rules.iter().all(|r| !r.verbs.contains(&"list".to_string())),
        "{rules:?}"
    );
    assert_eq!(
        rules[0].resource_names.as_ref().unwrap(),
        &["acme-kek", "bronze-writer", "s3-reader"]
    );
}

/// A pod with the name of a run's attempt that the run does not own (made by
/// someone else to be taken for the run's) is never adopted: the reconcile
/// fails and names it.
#[tokio::test]
async fn a_pod_the_run_does_not_own_is_never_taken_over() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("r1", "sales").await;
    let mut pod = Pod::default();
    pod.metadata.name = Some("r1-1".into());
    pod.metadata.namespace = Some(NS.into());
    w.pods().create(&Default::default(), &pod).await.unwrap();
    let run = w.runs().get("r1").await.unwrap();
    let err = ferry_operator::run::reconcile(Arc::new(run), w.ctx.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("that this run does not own"),
        "{err}"
    );
    let run = w.runs().get("r1").await.unwrap();
    assert_ne!(
        run.status.and_then(|s| s.attempts),
        Some(1),
        "no attempt recorded on a pod not its own"
    );
}
