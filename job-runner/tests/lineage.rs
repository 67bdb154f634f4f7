//! OpenLineage events from the real binary: to an HTTP sink (a loopback server
//! here) and to a file, on success and on failure, each validated with the
//! OpenLineage Python client's models (tests/lineage/validate_events.py).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use support::service_env;

const CONNECTOR: &str = r#"
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {name: customers, namespace: acme}
spec:
  source: {local: {path: src}}
  destination: {local: {path: dst}}
  streams:
  - {name: customers, match: "customers/**", sensitivity: [pii], fields: [id, country]}
  - {name: logs, match: "logs/**"}
  compliance: {allowedSensitivity: [pii], dataResidency: any}
  encryption: {keyRef: {secretRef: {name: kek}, key: kek}}
"#;

fn setup(kek: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("src/customers")).unwrap();
    std::fs::create_dir_all(d.join("src/logs")).unwrap();
    std::fs::write(
        d.join("src/customers/a.csv"),
        "id,email,country\n1,jane@example.com,FR\n",
    )
    .unwrap();
    std::fs::write(d.join("src/logs/l.txt"), "x").unwrap();
    std::fs::create_dir_all(d.join("secrets/kek")).unwrap();
    std::fs::write(d.join("secrets/kek/kek"), kek).unwrap();
    std::fs::write(d.join("c.yaml"), CONNECTOR).unwrap();
    dir
}

fn run(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_job-runner"))
        .current_dir(dir)
        .args(["run", "--connector", "c.yaml", "--secrets-dir", "secrets"])
        .args(["--run-id", "r1", "--audit-log", "audit.jsonl"])
        .args(extra)
        .env_remove("FERRY_LINEAGE_URL")
        .env_remove("FERRY_LINEAGE_FILE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs the OpenLineage client's models over the events in `file`.
fn validate(file: &Path, types: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lineage/validate_events.py");
    let o = Command::new(service_env("FERRY_PYTHON"))
        .arg(script)
        .arg(file)
        .arg(types)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// A loopback HTTP server that answers 200 to every POST and keeps the bodies.
fn lineage_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/v1/lineage", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if first {
                            assert!(line.starts_with("POST /api/v1/lineage "), "{line}");
                            first = false;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    kept.lock().unwrap().push(String::from_utf8(body).unwrap());
                    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    (url, bodies)
}

#[test]
fn a_sensitive_run_sends_start_and_complete_to_an_http_sink() {
    let dir = setup(&[4u8; 32]);
    let d = dir.path();
    let (url, bodies) = lineage_server();
    // Plain http needs the explicit loopback opt-out.
    let o = run(d, &["--lineage-url", &url]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("insecurePlainHttpOnLoopback") || text(&o).contains("plain http"),
        "{}",
        text(&o)
    );
    let o = run(
        d,
        &["--lineage-url", &url, "--lineage-allow-plain-loopback"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let events = bodies.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}");
    std::fs::write(d.join("events.ndjson"), events.join("\n") + "\n").unwrap();
    validate(&d.join("events.ndjson"), "START,COMPLETE");

    let complete: serde_json::Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(complete["job"]["namespace"], "ferry/acme");
    assert_eq!(complete["job"]["name"], "customers");
    // Only the sensitive stream is a dataset; its tags and kept columns are there.
    assert_eq!(complete["inputs"].as_array().unwrap().len(), 1);
    assert_eq!(complete["inputs"][0]["name"], "src/customers/**");
    assert_eq!(
        complete["inputs"][0]["facets"]["tags"]["tags"][0]["key"],
        "pii"
    );
    assert_eq!(
        complete["outputs"][0]["facets"]["schema"]["fields"],
        serde_json::json!([{"name": "id"}, {"name": "country"}])
    );
    assert!(
        !events.concat().contains("example.com"),
        "data in a lineage event"
    );
    let audit = std::fs::read_to_string(d.join("audit.jsonl")).unwrap();
    assert_eq!(
        audit
            .matches(r#""action":"lineage.emit","outcome":"success""#)
            .count(),
        2
    );
}

#[test]
fn a_failed_run_sends_fail_with_the_reason_to_a_file_sink() {
    let dir = setup(b"CANARY-not-a-key");
    let d = dir.path();
    let o = run(d, &["--lineage-file", "lineage.ndjson"]);
    assert!(!o.status.success());
    let events = std::fs::read_to_string(d.join("lineage.ndjson")).unwrap();
    validate(&d.join("lineage.ndjson"), "START,FAIL");
    let fail: serde_json::Value = serde_json::from_str(events.lines().nth(1).unwrap()).unwrap();
    let message = fail["run"]["facets"]["errorMessage"]["message"]
        .as_str()
        .unwrap();
    assert!(message.starts_with("InvalidEncryptionKey"), "{message}");
    assert!(!events.contains("CANARY"), "a secret in a lineage event");
}

#[test]
fn runs_without_sensitive_streams_and_unreachable_sinks_do_not_stop_the_data() {
    let dir = setup(&[4u8; 32]);
    let d = dir.path();
    // No sensitive stream: no lineage.
    let plain = CONNECTOR.replace("sensitivity: [pii], ", "");
    std::fs::write(d.join("c.yaml"), plain).unwrap();
    let o = run(d, &["--lineage-file", "lineage.ndjson"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!d.join("lineage.ndjson").exists());
    // A sink that does not answer: the run completes, the failure is audited.
    std::fs::write(d.join("c.yaml"), CONNECTOR).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/api/v1/lineage");
    let o = run(
        d,
        &["--lineage-url", &url, "--lineage-allow-plain-loopback"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let audit = std::fs::read_to_string(d.join("audit.jsonl")).unwrap();
    assert!(
        audit.contains(
            r#""action":"lineage.emit","outcome":"failure","reason":"LineageSinkFailed""#
        ),
        "{audit}"
    );
}
