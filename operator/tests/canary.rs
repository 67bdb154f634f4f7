//! Planted secret values (access keys, account key, SSH private key and
//! passphrase, KEK) appear in no status, Event, audit line, error message or log
//! line of the operator, on the happy path and on the failure paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use serde_json::json;
use support::*;

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_clean(what: &str, text: &str) {
    for canary in CANARIES {
        assert!(
            !text.contains(canary),
            "{what} holds a secret value: {text}"
        );
    }
}

#[tokio::test]
async fn no_secret_value_appears_anywhere() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let w = World::new(namespace(Some("eu-west-1"), Some("pii"))).await;
    // A good Connector, one whose SFTP Secret lacks a key, one rejected by policy.
    w.create_connector(CONNECTOR).await;
    w.create_connector(
        &CONNECTOR
            .replace("name: sales", "name: sftp-out")
            .replace(
                "{azureBlob: {account: acmebronze, container: bronze, region: eu-west-1, credentials: {secretRef: {name: bronze-writer}}}}",
                "{sftp: {host: sftp.example.com, path: /in, region: eu-west-1, credentials: {secretRef: {name: s3-reader}}, hostKey: {secretRef: {name: sftp-login}}}}",
            ),
    )
    .await;
    w.create_connector(&format!(
        "{}  streams: [{{name: cards, match: 'c/**', sensitivity: [pci]}}]\n",
        CONNECTOR.replace("name: sales", "name: cards")
    ))
    .await;
    for (run, connector) in [
        ("ok", "sales"),
        ("bad-keys", "sftp-out"),
        ("denied", "cards"),
    ] {
        w.create_run(run, connector).await;
        w.reconcile_run(run).await;
    }
    // The good run fails with a runner error, retries, then succeeds.
    w.runner_reports("ok", json!({"attempt": 1, "objectsCopied": 0, "objectsSkipped": 0, "bytesRead": 0, "bytesWritten": 0,
        "error": {"reason": "EndpointUnreachable", "message": "source s3://acme-exports/daily/: connection refused", "retryable": true}})).await;
    w.set_pod_status("ok-1", json!({"phase": "Failed"})).await;
    w.reconcile_run("ok").await;
    w.advance(30);
    w.reconcile_run("ok").await;
    w.set_pod_status("ok-2", json!({"phase": "Succeeded"}))
        .await;
    w.reconcile_run("ok").await;
    for c in ["sales", "sftp-out", "cards"] {
        w.reconcile_connector(c).await;
    }

    let runs = w.runs().list(&Default::default()).await.unwrap().items;
    assert_eq!(runs.len(), 3);
    let phases: Vec<_> = runs
        .iter()
        .map(|r| r.status.as_ref().unwrap().phase)
        .collect();
    assert!(phases.contains(&Some(ferry_crds::RunPhase::Rejected)));
    assert!(phases.contains(&Some(ferry_crds::RunPhase::Succeeded)));
    assert_clean(
        "a ConnectorRun status",
        &serde_json::to_string(&runs).unwrap(),
    );
    let connectors = w
        .connectors()
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    let statuses =
        serde_json::to_string(&connectors.iter().map(|c| &c.status).collect::<Vec<_>>()).unwrap();
    assert!(
        statuses.contains("SecretKeyMissing"),
        "the failure paths were exercised: {statuses}"
    );
    assert_clean("a Connector status", &statuses);
    let events = w.events().await;
    assert!(events.len() >= 5);
    assert_clean("an Event", &serde_json::to_string(&events).unwrap());
    let audit = String::from_utf8(w.audit.lock().unwrap().clone()).unwrap();
    assert!(audit.lines().count() >= 4);
    assert_clean("an audit line", &audit);
    let pods = w.pods().list(&Default::default()).await.unwrap().items;
    assert_clean("a Pod", &serde_json::to_string(&pods).unwrap());
    let log_text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!log_text.is_empty(), "logs were captured");
    assert_clean("a log line", &log_text);
    let metrics = w.ctx.metrics.render();
    assert_clean("a metric", &metrics);
}
