//! The TLS floor of every HTTPS client of the runner (S3, Azure Blob, the
//! lineage sink): against an OpenSSL server that speaks only TLS 1.1 each one
//! fails at version negotiation; against the same server speaking TLS 1.2 each
//! one gets further (to the certificate check), which shows that the version,
//! not something else, was refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::{Child, Command, Stdio};

use ferry_runner::lineage::{EventType, Lineage, Sink};
use ferry_runner::storage::ObjectStore;
use ferry_runner::storage::azure::{AzureAuth, AzureConfig, AzureStore};
use ferry_runner::storage::s3::{ReadTuning, S3Auth, S3Config, S3Store};
use zeroize::Zeroizing;

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_server` on a loopback port, speaking only `version`.
fn server(version: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed by tests/bootstrap.sh");
    assert!(st.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .arg(version)
        // OpenSSL 3 refuses TLS 1.1 at its default security level.
        .args(["-cipher", "DEFAULT@SECLEVEL=0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed and reaped on drop, also when the wait below fails.
    let server = Server {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("openssl s_server did not start");
}

fn s3(port: u16) -> S3Store {
    S3Store::new(S3Config {
        bucket: "b".into(),
        prefix: String::new(),
        region: "eu-west-1".into(),
        endpoint: Some(format!("https://127.0.0.1:{port}")),
        force_path_style: true,
        insecure_plain_http_on_loopback: false,
        network: Default::default(),
        auth: S3Auth::Static {
            access_key_id: Zeroizing::new("id".into()),
            secret_access_key: Zeroizing::new("secret".into()),
            session_token: None,
        },
        reads: ReadTuning::default(),
    })
    .unwrap()
}

fn azure(port: u16) -> AzureStore {
    AzureStore::new(AzureConfig {
        account: "acct".into(),
        container: "c".into(),
        prefix: String::new(),
        endpoint: Some(format!("https://127.0.0.1:{port}/acct")),
        insecure_plain_http_on_loopback: false,
        network: Default::default(),
        auth: AzureAuth::AccountKey(Zeroizing::new("a2V5".into())),
    })
    .unwrap()
}

async fn lineage(port: u16) -> String {
    let spec: ferry_crds::ConnectorSpec = serde_saphyr::from_str(
        "source: {local: {path: a}}\ndestination: {local: {path: b}}\nencryption: {keyRef: {secretRef: {name: k}}}\nstreams: [{name: s, match: '**', sensitivity: [pii]}]\n",
    )
    .unwrap();
    let sink = Sink::http(&format!("https://127.0.0.1:{port}/api/v1/lineage"), false).unwrap();
    let l = Lineage::for_run(&spec, "t", "c", "r", sink).unwrap();
    l.emit(EventType::Start, None)
        .await
        .unwrap_err()
        .to_string()
}

/// What each client says when it talks to the server.
async fn errors(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("s3", s3(port).list().await.unwrap_err().to_string()),
        ("azure", azure(port).list().await.unwrap_err().to_string()),
        ("lineage", lineage(port).await),
    ]
}

fn is_version_refusal(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    e.contains("protocolversion") || e.contains("protocol version")
}

#[tokio::test]
async fn every_https_client_refuses_tls_1_1() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let old = server("-tls1_1");
    for (client, e) in errors(old.port).await {
        assert!(is_version_refusal(&e), "{client} against TLS 1.1: {e}");
    }
    let current = server("-tls1_2");
    for (client, e) in errors(current.port).await {
        assert!(!is_version_refusal(&e), "{client} against TLS 1.2: {e}");
    }
}
