//! What a tenant can write in a Connector, played as an attack on the runner:
//! each test names the attack, and fails if the runner lets it through. The
//! operator's side of the same boundaries is in operator/tests; the whole map is
//! docs/security.md, "Threat model".

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::service_env;

/// A server on 127.0.0.1 that keeps every byte sent to it and refuses each
/// request (403): the host a tenant controls.
struct Eavesdropper {
    url: String,
    heard: Arc<Mutex<Vec<u8>>>,
}

impl Eavesdropper {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heard = Arc::new(Mutex::new(Vec::new()));
        let keep = heard.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let keep = keep.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
                    let mut buf = [0u8; 16 << 10];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => keep.lock().unwrap().extend_from_slice(&buf[..n]),
                            Err(_) => break,
                        }
                    }
                    // Refused, not failed: the client does not retry.
                    let body = "<Error><Code>AccessDenied</Code><Message>no</Message></Error>";
                    let _ = conn.write_all(
                        format!(
                            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                });
            }
        });
        Self { url, heard }
    }

    fn heard(&self) -> String {
        String::from_utf8_lossy(&self.heard.lock().unwrap()).into_owned()
    }
}

/// Attack: a tenant points its S3 `endpoint` at a server it controls and uses
/// web identity, so that the runner sends the run's cluster-signed token there
/// (the STS call used to go to the S3 endpoint). The token must only ever go to
/// the STS endpoint the platform team configured (here moto's).
#[test]
fn a_tenant_endpoint_never_receives_the_runs_web_identity_token() {
    let evil = Eavesdropper::start();
    let dir = tempfile::tempdir().unwrap();
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YWNtZTpydW4ifQ.Y2FuYXJ5LXRva2Vu";
    std::fs::write(dir.path().join("token"), token).unwrap();
    std::fs::write(dir.path().join("kek"), [7u8; 32]).unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("connector.yaml"),
        format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: Connector\nmetadata: {{name: c, namespace: acme}}\nspec:\n  source: {{local: {{path: in}}}}\n  destination: {{s3: {{bucket: b, region: eu-west-1, endpoint: '{}', forcePathStyle: true, insecurePlainHttpOnLoopback: true, credentials: {{webIdentity: {{roleArn: 'arn:aws:iam::123456789012:role/r'}}}}}}}}\n  encryption: {{keyRef: {{secretRef: {{name: kek}}}}}}\n",
            evil.url
        ),
    )
    .unwrap();
    // `verify` lists the destination: the S3 requests go to the tenant's
    // server (which refuses them), the token to the platform's STS.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_job-runner"))
        .current_dir(dir.path())
        .args(["verify", "--kek", "kek", "--connector", "connector.yaml"])
        .args(["--secrets-dir", "secrets"])
        .args(["--sts-endpoint", &service_env("FERRY_S3_ENDPOINT")])
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", dir.path().join("token"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "nothing to verify there");
    let heard = evil.heard();
    assert!(
        !heard.contains(token) && !heard.contains("AssumeRoleWithWebIdentity"),
        "the run's token was sent to the tenant's endpoint:\n{heard}"
    );
    assert!(
        heard.contains("GET /b"),
        "the S3 requests reach the tenant's endpoint: {heard}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
