//! Cluster mode against the in-process fake API (kube-fake-client) and the real
//! Azurite of the test bootstrap: the runner reads its run and pinned spec,
//! fetches Secrets through the API, reports progress and result by server-side
//! apply without touching the operator's fields, re-reads rotated credentials
//! once, and no planted secret value reaches the status or the audit trail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;
use std::time::Duration;

use ferry_crds::{Connector, ConnectorRun};
use ferry_runner::audit::AuditLog;
use ferry_runner::cluster::{self, RunRef, Settings};
use ferry_runner::job::{self, Job};
use ferry_runner::transfer::{Mode, Progress};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_fake_client::ClientBuilder;
use support::{AZURITE_DEV_KEY, Lines, create_azurite_container, service_env};

const NS: &str = "acme";
const KEK: &str = "Y2FuYXJ5LWtlay0wMTIzNDU2Nzg5YWJjZGVmMDEyMzQ="; // base64 of 32 bytes
const AZURITE_KEY: &str = AZURITE_DEV_KEY;
const WRONG_KEY: &str = "Q2FuYXJ5V3JvbmdBY2NvdW50S2V5Q2FuYXJ5V3JvbmdBY2NvdW50S2V5Q2FuYXJ5V3Jvbmc=";

fn secret(name: &str, key: &str, value: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some(NS.into());
    s.data = Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into());
    s.metadata.labels = Some(
        [(
            ferry_crds::SECRET_OPT_IN_LABEL.to_string(),
            ferry_crds::SECRET_OPT_IN_VALUE.to_string(),
        )]
        .into(),
    );
    s
}

struct Fixture {
    client: kube::Client,
    dir: tempfile::TempDir,
}

/// A fake API holding a Connector from a local folder of three files to `destination`,
/// a run admitted by the operator (spec pinned, phase Running), and `secrets`.
async fn fixture(destination: &str, secrets: Vec<Secret>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("nested")).unwrap();
    std::fs::write(src.join("a.csv"), "id,country\n1,FR\n").unwrap();
    std::fs::write(src.join("nested/b.json"), r#"{"k":"v"}"#).unwrap();
    std::fs::write(src.join("empty.txt"), "").unwrap();
    let connector: Connector = serde_saphyr::from_str(&format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: Connector\nmetadata: {{name: sales, namespace: {NS}}}\nspec:\n  source: {{local: {{path: \"{}\"}}}}\n  destination: {{{destination}}}\n  compliance: {{dataResidency: any}}\n  encryption: {{keyRef: {{secretRef: {{name: acme-kek}}}}}}\n",
        src.display()
    ))
    .unwrap();
    let run: ConnectorRun = serde_saphyr::from_str(&format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: ConnectorRun\nmetadata: {{name: sales-1, namespace: {NS}}}\nspec: {{connectorRef: {{name: sales}}}}\n"
    ))
    .unwrap();
    let mut builder = ClientBuilder::new()
        .with_resource::<Connector>()
        .with_resource::<ConnectorRun>()
        .with_status_subresource::<Connector>()
        .with_status_subresource::<ConnectorRun>();
    for s in secrets {
        builder = builder.with_object(s);
    }
    let client = builder.build().await.unwrap();
    let connectors: Api<Connector> = Api::namespaced(client.clone(), NS);
    let runs: Api<ConnectorRun> = Api::namespaced(client.clone(), NS);
    let spec = connector.spec.clone();
    connectors
        .create(&PostParams::default(), &connector)
        .await
        .unwrap();
    runs.create(&PostParams::default(), &run).await.unwrap();
    admit(&client, "sales-1", &spec).await;
    Fixture { client, dir }
}

/// What the operator writes when it admits a run: its record (the pinned spec
/// and its hash, in an annotation) and the status that shows it.
async fn admit(client: &kube::Client, name: &str, spec: &ferry_crds::ConnectorSpec) {
    let runs: Api<ConnectorRun> = Api::namespaced(client.clone(), NS);
    let status: ferry_crds::ConnectorRunStatus = serde_json::from_value(serde_json::json!({
        "phase": "Running", "attempts": 1, "podName": format!("{name}-1"),
        "connectorSpec": spec, "connectorSpecHash": ferry_crds::spec_hash(spec),
        "attribution": {"requestedBy": "alice@example.com", "connectorChangedBy": "oidc:bob"},
    }))
    .unwrap();
    let record = ferry_crds::RunRecord {
        status: status.clone(),
        previous: None,
    };
    let annotations = serde_json::json!({"metadata": {"annotations": {
        ferry_crds::RUN_RECORD_ANNOTATION: serde_json::to_string(&record).unwrap(),
    }}});
    runs.patch(name, &PatchParams::default(), &Patch::Merge(&annotations))
        .await
        .unwrap();
    let admitted = serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "ConnectorRun", "status": status,
    });
    runs.patch_status(
        name,
        &PatchParams::apply("ferry-operator").force(),
        &Patch::Apply(&admitted),
    )
    .await
    .unwrap();
}

/// The run as its pod knows it: name, attempt and the hash of the spec the
/// operator recorded.
async fn run_ref_of(client: &kube::Client, name: &str) -> RunRef {
    let runs: Api<ConnectorRun> = Api::namespaced(client.clone(), NS);
    let run = runs.get(name).await.unwrap();
    let record = ferry_crds::RunRecord::of(&run).unwrap().unwrap();
    RunRef {
        namespace: NS.into(),
        name: name.into(),
        attempt: 1,
        spec_hash: record.status.connector_spec_hash.unwrap(),
        part: Default::default(),
    }
}

fn settings(base: &std::path::Path) -> Settings {
    Settings {
        tenant_region: None,
        anchor: None,
        concurrency: 2,
        base_dir: base.to_path_buf(),
        progress_every: Duration::from_millis(50),
        lineage: None,
        platform: Default::default(),
    }
}

async fn run_ref(f: &Fixture) -> RunRef {
    run_ref_of(&f.client, "sales-1").await
}

fn azurite_destination() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let container = format!("cluster-{}-{n}", std::process::id());
    create_azurite_container(&container);
    format!(
        "azureBlob: {{account: devstoreaccount1, container: {container}, prefix: \"{}/\", region: westeurope, endpoint: \"{}\", insecurePlainHttpOnLoopback: true, credentials: {{secretRef: {{name: blob}}}}}}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        service_env("FERRY_AZURITE_ENDPOINT")
    )
}

async fn status_json(client: &kube::Client) -> String {
    let runs: Api<ConnectorRun> = Api::namespaced(client.clone(), NS);
    serde_json::to_string(&runs.get("sales-1").await.unwrap().status).unwrap()
}

fn assert_no_canary(text: &str) {
    for canary in [KEK, AZURITE_KEY, WRONG_KEY, "canary-kek"] {
        assert!(!text.contains(canary), "a secret value leaked into: {text}");
    }
}

#[tokio::test]
async fn a_run_reports_its_result_next_to_the_operators_fields() {
    let f = fixture("local: {path: dst}", vec![secret("acme-kek", "kek", KEK)]).await;
    let audit = Lines::default();
    let (outcome, reported) = cluster::attempt(
        &f.client,
        &run_ref(&f).await,
        &settings(f.dir.path()),
        Box::new(audit.clone()),
    )
    .await;
    let report = outcome.unwrap();
    reported.unwrap();
    assert_eq!(report.objects_copied, 3);

    let runs: Api<ConnectorRun> = Api::namespaced(f.client.clone(), NS);
    let status = runs.get("sales-1").await.unwrap().status.unwrap();
    let result = status.result.as_ref().unwrap();
    assert_eq!(result.attempt, Some(1));
    assert_eq!(result.objects_copied, 3);
    assert!(result.error.is_none());
    assert!(
        result
            .manifest
            .as_deref()
            .unwrap()
            .ends_with("Z-sales-1.json")
    );
    assert_eq!(status.progress.as_ref().unwrap().objects, 3);
    // The operator's fields are still there: each side owns its own.
    assert_eq!(status.phase, Some(ferry_crds::RunPhase::Running));
    assert_eq!(status.pod_name.as_deref(), Some("sales-1-1"));
    assert!(status.connector_spec.is_some());
    for key in ["a.csv", "nested/b.json", "empty.txt"] {
        assert!(
            f.dir.path().join("dst").join(key).is_file(),
            "{key} written"
        );
    }

    let lines = audit.text();
    let actions: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        actions.first().is_some_and(|a| a == "run.started"),
        "{actions:?}"
    );
    assert!(actions.contains(&"secret.read".to_string()));
    assert!(actions.last().is_some_and(|a| a == "run.finished"));
    // Every line names who asked for the run, from the operator's record.
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(
            (v["requestedBy"].as_str(), v["connectorChangedBy"].as_str()),
            (Some("alice@example.com"), Some("oidc:bob")),
            "{l}"
        );
    }
    assert_no_canary(&lines);
    assert_no_canary(&status_json(&f.client).await);
}

#[tokio::test]
async fn a_run_that_is_not_admitted_fails_without_retry() {
    let f = fixture("local: {path: dst}", vec![secret("acme-kek", "kek", KEK)]).await;
    let run = RunRef {
        name: "nope".into(),
        ..run_ref(&f).await
    };
    let (outcome, _) = cluster::attempt(
        &f.client,
        &run,
        &settings(f.dir.path()),
        Box::new(Lines::default()),
    )
    .await;
    let failure = outcome.unwrap_err();
    assert_eq!(failure.reason, "NotAdmitted");
    assert!(!failure.retryable());
}

/// Attack: the Secret the operator checked is replaced, after the pod was
/// created, by one nobody opted in for Ferry (or by a token Secret). The runner
/// refuses it before it reads a value: the run fails, not retried.
#[tokio::test]
async fn a_secret_swapped_for_one_not_opted_in_is_refused_by_the_runner() {
    let mut unlabelled = secret("blob", "accountKey", AZURITE_KEY);
    unlabelled.metadata.labels = None;
    let mut token = secret("blob", "accountKey", AZURITE_KEY);
    token.type_ = Some("kubernetes.io/service-account-token".into());
    for (swapped, reason) in [
        (unlabelled, "SecretNotOptedIn"),
        (token, "SecretTypeRefused"),
    ] {
        let f = fixture(
            "local: {path: dst}",
            vec![secret("acme-kek", "kek", KEK), swapped],
        )
        .await;
        // The local destination needs no Secret: name `blob` as the KEK's.
        let runs: Api<ConnectorRun> = Api::namespaced(f.client.clone(), NS);
        let mut spec = runs
            .get("sales-1")
            .await
            .unwrap()
            .status
            .unwrap()
            .connector_spec
            .unwrap();
        let kek = spec.encryption.key_ref.as_mut().unwrap();
        kek.secret_ref.name = "blob".into();
        kek.key = "accountKey".into();
        admit(&f.client, "sales-1", &spec).await;
        let (outcome, _) = cluster::attempt(
            &f.client,
            &run_ref(&f).await,
            &settings(f.dir.path()),
            Box::new(Lines::default()),
        )
        .await;
        let failure = outcome.unwrap_err();
        assert_eq!(failure.reason, reason, "{failure}");
        assert!(!failure.retryable());
        assert_no_canary(&failure.to_string());
        assert!(!f.dir.path().join("dst").exists(), "nothing was written");
    }
}

/// Attack: an earlier attempt's runner, whose token may patch the run's status,
/// rewrote the pinned spec there (another destination). The next attempt's
/// runner reads the operator's record, not the status, and the record's spec
/// must hash to what its pod was created with.
#[tokio::test]
async fn a_spec_rewritten_by_an_earlier_runner_is_not_used() {
    let f = fixture("local: {path: dst}", vec![secret("acme-kek", "kek", KEK)]).await;
    let expected = run_ref(&f).await;
    let runs: Api<ConnectorRun> = Api::namespaced(f.client.clone(), NS);
    let mut spec = runs
        .get("sales-1")
        .await
        .unwrap()
        .status
        .unwrap()
        .connector_spec
        .unwrap();
    spec.destination.local.as_mut().unwrap().path = "stolen".into();
    // The runner's own token can write the status...
    let forged = serde_json::json!({"status": {"connectorSpec": spec, "connectorSpecHash": ferry_crds::spec_hash(&spec)}});
    runs.patch_status("sales-1", &PatchParams::default(), &Patch::Merge(&forged))
        .await
        .unwrap();
    let (_, connector) = cluster::load(&f.client, &expected).await.unwrap();
    assert_eq!(connector.spec.destination.local.unwrap().path, "dst");
    // ...and where the record itself was changed, the hash the pod was
    // created with does not match: the run stops.
    admit(&f.client, "sales-1", &spec).await;
    let failure = cluster::load(&f.client, &expected).await.unwrap_err();
    assert_eq!(failure.reason, "PinnedSpecTampered");
    assert!(!failure.retryable());
}

#[tokio::test]
async fn refused_credentials_fail_fast_with_invalid_credentials() {
    let f = fixture(
        &azurite_destination(),
        vec![
            secret("acme-kek", "kek", KEK),
            secret("blob", "accountKey", WRONG_KEY),
        ],
    )
    .await;
    let audit = Lines::default();
    let (outcome, reported) = cluster::attempt(
        &f.client,
        &run_ref(&f).await,
        &settings(f.dir.path()),
        Box::new(audit.clone()),
    )
    .await;
    reported.unwrap();
    let failure = outcome.unwrap_err();
    assert_eq!(failure.reason, "InvalidCredentials", "{failure}");
    assert!(!failure.retryable());
    let status = status_json(&f.client).await;
    assert!(
        status.contains("\"reason\":\"InvalidCredentials\""),
        "{status}"
    );
    assert!(status.contains("\"retryable\":false"));
    let text = audit.text();
    assert!(text.contains("\"action\":\"auth.failure\""), "{text}");
    assert!(
        !text.contains("secret.reread"),
        "the Secret did not change: no second try"
    );
    assert_no_canary(&text);
    assert_no_canary(&status);
    assert_no_canary(&failure.to_string());
}

#[tokio::test]
async fn rotated_credentials_are_read_again_once() {
    let f = fixture(
        &azurite_destination(),
        vec![
            secret("acme-kek", "kek", KEK),
            secret("blob", "accountKey", WRONG_KEY),
        ],
    )
    .await;
    let (_, connector) = cluster::load(&f.client, &run_ref(&f).await).await.unwrap();
    let stale = cluster::fetch_secrets(&f.client, NS, &connector.spec)
        .await
        .unwrap();
    let audit_buf = Lines::default();
    let audit = AuditLog::new(
        Box::new(audit_buf.clone()),
        "sales",
        NS,
        "sales-1",
        "local",
        "azure",
    );
    let job = Job {
        connector: &connector,
        mode: Mode::Sync,
        erase: None,
        tenant_region: None,
        anchor: None,
        run_id: "sales-1",
        concurrency: 2,
        base_dir: f.dir.path(),
        lineage: None,
        platform: &Default::default(),
        part: Default::default(),
    };
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), NS);
    let reads = std::sync::atomic::AtomicUsize::new(0);
    // The platform team rotated the key while the first try was failing: the
    // re-read sees the new one.
    let reread = || async {
        reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut s = secrets.get("blob").await.unwrap();
        s.data = Some(
            [(
                "accountKey".to_string(),
                ByteString(AZURITE_KEY.as_bytes().to_vec()),
            )]
            .into(),
        );
        secrets
            .replace("blob", &PostParams::default(), &s)
            .await
            .unwrap();
        cluster::fetch_secrets(&f.client, NS, &connector.spec).await
    };
    let report =
        job::execute_with_rotation(job, stale, reread, &audit, Arc::new(Progress::default()))
            .await
            .unwrap_or_else(|e| panic!("the second try succeeds: {e}\n{}", audit_buf.text()));
    assert_eq!(report.objects_copied, 3);
    assert_eq!(
        reads.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "read again exactly once"
    );
    let text = audit_buf.text();
    assert!(text.contains("\"action\":\"auth.failure\""), "{text}");
    assert!(text.contains("\"action\":\"secret.reread\""), "{text}");
    assert_no_canary(&text);
}

/// An erasure run in cluster mode: after a sync, `mode: erase` deletes the copy
/// and the source object and reports per key what it erased.
#[tokio::test]
async fn an_erase_run_reports_what_it_erased() {
    let f = fixture("local: {path: dst}", vec![secret("acme-kek", "kek", KEK)]).await;
    let (outcome, reported) = cluster::attempt(
        &f.client,
        &run_ref(&f).await,
        &settings(f.dir.path()),
        Box::new(Lines::default()),
    )
    .await;
    outcome.unwrap();
    reported.unwrap();
    assert!(f.dir.path().join("dst/a.csv").is_file());

    let runs: Api<ConnectorRun> = Api::namespaced(f.client.clone(), NS);
    let spec = runs
        .get("sales-1")
        .await
        .unwrap()
        .status
        .unwrap()
        .connector_spec;
    let erase: ConnectorRun = serde_saphyr::from_str(&format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: ConnectorRun\nmetadata: {{name: erase-1, namespace: {NS}}}\nspec: {{connectorRef: {{name: sales}}, mode: erase, erase: {{keys: [a.csv, never-there.csv], fromSource: true}}}}\n"
    ))
    .unwrap();
    runs.create(&PostParams::default(), &erase).await.unwrap();
    admit(&f.client, "erase-1", &spec.unwrap()).await;
    let audit = Lines::default();
    let erase_ref = run_ref_of(&f.client, "erase-1").await;
    let (outcome, reported) = cluster::attempt(
        &f.client,
        &erase_ref,
        &settings(f.dir.path()),
        Box::new(audit.clone()),
    )
    .await;
    outcome.unwrap();
    reported.unwrap();
    assert!(!f.dir.path().join("dst/a.csv").exists());
    assert!(!f.dir.path().join("src/a.csv").exists());
    assert!(f.dir.path().join("dst/empty.txt").exists());
    let result = runs
        .get("erase-1")
        .await
        .unwrap()
        .status
        .unwrap()
        .result
        .unwrap();
    assert_eq!(result.objects_erased, 2);
    assert!(!result.erased_truncated);
    let erased = serde_json::to_value(&result.erased).unwrap();
    assert_eq!(
        erased,
        serde_json::json!([
            {"key": "a.csv", "fromDestination": true, "fromSource": true},
            {"key": "never-there.csv", "fromDestination": false, "fromSource": false},
        ])
    );
    let text = audit.text();
    assert_eq!(
        text.matches(r#""action":"object.erase""#).count(),
        2,
        "{text}"
    );
}
