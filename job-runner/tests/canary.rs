//! Planted secret values (S3 access keys, Azure account key, SSH private key and
//! passphrase, KEK) appear in no log line (at trace level), audit line, lineage
//! event, report or error message of the runner in local mode, on the happy
//! path and on each failure path, against the real test services.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::service_env;

const S3_KEY_ID: &str = "CANARYAKIDQWERTY1234";
const S3_SECRET: &str = "CANARY-s3-secret-9f8e7d6c5b4a";
const KEK: &str = "CANARY-KEK-0123456789abcdefghijk"; // 32 bytes: a valid raw KEK
const PASSPHRASE: &str = "CANARY-ssh-passphrase-77";
const AZURE_KEY_TEXT: &str = "CANARY-azure-account-key-000000"; // base64-encoded below

fn azure_key() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(AZURE_KEY_TEXT)
}

struct Env {
    dir: tempfile::TempDir,
    /// Lines of the encrypted private key's body: each one is secret.
    key_lines: Vec<String>,
    sftp_path: String,
    bucket: String,
}

fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The test server's client key, encrypted with a planted passphrase.
    let key = d.join("client_key");
    std::fs::copy(service_env("FERRY_SFTP_KEY"), &key).unwrap();
    let st = Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", PASSPHRASE, "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let private = std::fs::read_to_string(&key).unwrap();
    let key_lines: Vec<String> = private
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(String::from)
        .collect();
    assert!(!key_lines.is_empty());

    let mut b = [0u8; 4];
    ferry_runner::crypto::aead::random_bytes(&mut b).unwrap();
    let unique = hex::encode(b);
    let sftp_path = format!("canary-{unique}");
    let root = Path::new(&service_env("FERRY_SFTP_ROOT")).join(&sftp_path);
    std::fs::create_dir_all(root.join("customers")).unwrap();
    std::fs::write(root.join("customers/a.csv"), "id,email\n1,a@example.com\n").unwrap();

    let bucket = format!("canary-{unique}");
    let created = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "PUT"])
        .arg(format!("{}/{bucket}", service_env("FERRY_S3_ENDPOINT")))
        .status()
        .unwrap();
    assert!(created.success());

    let secret = |name: &str, key: &str, value: &[u8]| {
        std::fs::create_dir_all(d.join("secrets").join(name)).unwrap();
        std::fs::write(d.join("secrets").join(name).join(key), value).unwrap();
    };
    secret("kek", "kek", KEK.as_bytes());
    secret("s3", "accessKeyId", S3_KEY_ID.as_bytes());
    secret("s3", "secretAccessKey", S3_SECRET.as_bytes());
    secret("az", "accountKey", azure_key().as_bytes());
    secret(
        "sftp",
        "username",
        service_env("FERRY_SFTP_USER").as_bytes(),
    );
    secret("sftp", "privateKey", private.as_bytes());
    secret("sftp", "passphrase", PASSPHRASE.as_bytes());
    secret(
        "sftp-host",
        "knownHosts",
        std::fs::read(service_env("FERRY_SFTP_HOST_KEY"))
            .unwrap()
            .as_slice(),
    );
    Env {
        dir,
        key_lines,
        sftp_path,
        bucket,
    }
}

fn connector(env: &Env, destination: &str) -> String {
    format!(
        r#"apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {{name: canary, namespace: acme}}
spec:
  source:
    sftp: {{host: "{host}", port: {port}, path: {path}, region: eu-west-1, credentials: {{secretRef: {{name: sftp}}}}, hostKey: {{secretRef: {{name: sftp-host}}}}}}
  destination: {destination}
  streams: [{{name: customers, match: "customers/**", sensitivity: [pii], fields: [id]}}]
  compliance: {{allowedSensitivity: [pii], dataResidency: any}}
  encryption: {{keyRef: {{secretRef: {{name: kek}}, key: kek}}}}
"#,
        host = service_env("FERRY_SFTP_HOST"),
        port = service_env("FERRY_SFTP_PORT"),
        path = env.sftp_path,
    )
}

fn s3_destination(env: &Env) -> String {
    format!(
        "{{s3: {{bucket: {}, region: us-east-1, endpoint: \"{}\", forcePathStyle: true, insecurePlainHttpOnLoopback: true, credentials: {{secretRef: {{name: s3}}}}}}}}",
        env.bucket,
        service_env("FERRY_S3_ENDPOINT")
    )
}

fn azure_destination() -> String {
    format!(
        "{{azureBlob: {{account: devstoreaccount1, container: canary, region: eu-west-1, endpoint: \"{}\", insecurePlainHttpOnLoopback: true, credentials: {{secretRef: {{name: az}}}}}}}}",
        service_env("FERRY_AZURITE_ENDPOINT")
    )
}

/// Runs the runner with everything it can write captured: logs at trace level
/// (text and JSON), audit lines, lineage events, its report.
fn run(env: &Env, connector_yaml: &str, run_id: &str) -> (Output, String) {
    let d = env.dir.path();
    std::fs::write(d.join(format!("{run_id}.yaml")), connector_yaml).unwrap();
    let mut all = String::new();
    let mut last = None;
    // Asking for trace of the AWS SDK explicitly changes nothing.
    for (format, filter) in [
        ("text", "trace"),
        ("json", "trace,aws_smithy_runtime=trace,aws_sigv4=trace"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_job-runner"))
            .current_dir(d)
            .env("RUST_LOG", filter)
            .args(["--log-format", format, "run", "--connector"])
            .arg(format!("{run_id}.yaml"))
            .args(["--secrets-dir", "secrets", "--run-id", run_id])
            .args([
                "--audit-log",
                "audit.jsonl",
                "--lineage-file",
                "lineage.ndjson",
            ])
            .output()
            .unwrap();
        all.push_str(&String::from_utf8_lossy(&o.stdout));
        all.push_str(&String::from_utf8_lossy(&o.stderr));
        last = Some(o);
    }
    for file in ["audit.jsonl", "lineage.ndjson"] {
        all.push_str(&std::fs::read_to_string(d.join(file)).unwrap_or_default());
    }
    (last.unwrap(), all)
}

fn assert_clean(env: &Env, what: &str, text: &str) {
    let mut canaries = vec![
        S3_KEY_ID.to_string(),
        S3_SECRET.to_string(),
        KEK.to_string(),
        PASSPHRASE.to_string(),
        AZURE_KEY_TEXT.to_string(),
        azure_key(),
        "CANARY".to_string(),
    ];
    canaries.extend(env.key_lines.iter().cloned());
    for c in &canaries {
        assert!(
            !text.contains(c.as_str()),
            "{what}: a secret value leaked ({c}):\n{text}"
        );
    }
}

#[test]
fn no_secret_value_appears_on_success_or_failure() {
    let env = setup();

    // Happy path: SFTP (encrypted key + passphrase) to S3, minimised, with lineage.
    let (o, all) = run(&env, &connector(&env, &s3_destination(&env)), "ok");
    assert!(o.status.success(), "{all}");
    assert!(
        all.contains("\"action\":\"run.finished\",\"outcome\":\"success\""),
        "{all}"
    );
    assert!(all.contains("\"eventType\":\"COMPLETE\""), "{all}");
    assert!(
        all.to_lowercase().contains("trace") || all.contains("TRACE"),
        "trace logs were on"
    );
    assert_clean(&env, "success", &all);

    // A wrong Azure account key: refused by Azurite.
    let (o, all) = run(&env, &connector(&env, &azure_destination()), "bad-azure");
    assert!(!o.status.success());
    assert!(
        all.contains("InvalidCredentials") || all.contains("invalid credentials"),
        "{all}"
    );
    assert_clean(&env, "wrong Azure key", &all);

    // A wrong passphrase for the SSH key.
    let d = env.dir.path();
    std::fs::write(d.join("secrets/sftp/passphrase"), "CANARY-wrong-passphrase").unwrap();
    let (o, all) = run(&env, &connector(&env, &s3_destination(&env)), "bad-pass");
    assert!(!o.status.success());
    assert_clean(&env, "wrong passphrase", &all);
    std::fs::write(d.join("secrets/sftp/passphrase"), PASSPHRASE).unwrap();

    // A KEK that is not a key.
    std::fs::write(d.join("secrets/kek/kek"), "CANARY-short-kek").unwrap();
    let (o, all) = run(&env, &connector(&env, &s3_destination(&env)), "bad-kek");
    assert!(!o.status.success());
    assert!(all.contains("InvalidEncryptionKey"), "{all}");
    assert_clean(&env, "bad KEK", &all);
}

/// Debug of every type that holds a credential, and of the stores and
/// configurations around them, prints no secret value (`{:?}` and `{:#?}`).
#[test]
fn debug_output_of_credential_types_holds_no_secret() {
    use ferry_runner::config::SecretsDir;
    use ferry_runner::crypto::{Kek, KeyRing};
    use ferry_runner::storage::azure::{AzureAuth, AzureConfig, AzureStore};
    use ferry_runner::storage::s3::{ReadTuning, S3Auth, S3Config, S3Store};
    use ferry_runner::storage::sftp::{HostKeyCheck, SftpAuth, SftpConfig, SftpStore};
    use zeroize::Zeroizing;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let z = |s: &str| Zeroizing::new(s.to_string());
    let s3_auth = S3Auth::Static {
        access_key_id: z(S3_KEY_ID),
        secret_access_key: z(S3_SECRET),
        session_token: Some(z("CANARY-session-token")),
    };
    let s3_config = S3Config {
        bucket: "b".into(),
        prefix: String::new(),
        region: "eu-west-1".into(),
        endpoint: None,
        force_path_style: false,
        insecure_plain_http_on_loopback: false,
        network: Default::default(),
        auth: s3_auth.clone(),
        reads: ReadTuning::default(),
    };
    let azure_auths = [
        AzureAuth::AccountKey(z(&azure_key())),
        AzureAuth::Sas(z("sv=2024&sig=CANARY-sas-signature")),
        AzureAuth::ClientSecret {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: z("CANARY-client-secret"),
        },
    ];
    let sftp_auths = [
        SftpAuth::Key {
            private_key: z(
                "-----BEGIN OPENSSH PRIVATE KEY-----\nCANARY-key-body\n-----END OPENSSH PRIVATE KEY-----",
            ),
            passphrase: Some(z(PASSPHRASE)),
        },
        SftpAuth::Password(z("CANARY-password")),
    ];
    let mut printed = vec![
        format!("{s3_auth:?} {s3_auth:#?} {s3_config:?} {s3_config:#?}"),
        format!("{:?}", S3Store::new(s3_config.clone()).unwrap()),
    ];
    for auth in azure_auths {
        let config = AzureConfig {
            account: "a".into(),
            container: "c".into(),
            prefix: String::new(),
            endpoint: None,
            insecure_plain_http_on_loopback: false,
            network: Default::default(),
            auth: auth.clone(),
        };
        printed.push(format!("{auth:?} {auth:#?} {config:?} {config:#?}"));
        printed.push(format!("{:?}", AzureStore::new(config).unwrap()));
    }
    for auth in sftp_auths {
        let config = SftpConfig {
            host: "h".into(),
            port: 22,
            path: "p".into(),
            username: "u".into(),
            auth: auth.clone(),
            host_key: HostKeyCheck::Fingerprint("SHA256:x".into()),
            network: Default::default(),
        };
        printed.push(format!("{auth:?} {auth:#?} {config:?} {config:#?}"));
        printed.push(format!("{:?}", SftpStore::new(config)));
    }
    let kek = Kek::parse(KEK.as_bytes()).unwrap();
    let ring = KeyRing::new(vec![Kek::parse(KEK.as_bytes()).unwrap()]);
    printed.push(format!("{kek:?} {kek:#?} {ring:?}"));
    let fetched = SecretsDir::fetched(
        [(
            "s3".to_string(),
            [(
                "secretAccessKey".to_string(),
                Zeroizing::new(S3_SECRET.as_bytes().to_vec()),
            )]
            .into(),
        )]
        .into(),
    );
    printed.push(format!("{fetched:?} {fetched:#?}"));
    for text in printed {
        assert!(!text.contains("CANARY"), "a secret in Debug output: {text}");
        assert!(
            !text.contains(&azure_key()),
            "a secret in Debug output: {text}"
        );
    }
}
