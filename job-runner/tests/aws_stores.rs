//! Credentials in AWS Secrets Manager and the KEK in AWS KMS, against moto
//! (the test services' AWS server, also used for S3 and STS): the run assumes
//! the role its Connector names with its own projected token and reads the
//! secret, or asks KMS for one data key per run. Conformance cases: the read,
//! a wrong id, a run without a token (denied), an unreachable service
//! (transient), a rotated secret read again once, canary values that appear in
//! no output; KMS: one data key per run whatever its objects, a reader with
//! its own AWS keys decrypts, a key wrapped by another KMS key is refused.
//! moto does not enforce IAM policies, so a role that may not read the secret
//! cannot be shown here; the vault tests show that case against OpenBao.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use support::service_env;

const REGION: &str = "eu-west-1";
const ROLE: &str = "arn:aws:iam::123456789012:role/ferry-acme";
/// The run's projected token as moto's STS takes it (it checks no signature).
const RUN_TOKEN: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJydW4ifQ.";
const CANARY_KEY_ID: &str = "AKIASMCANARY00000001";
const CANARY_SECRET: &str = "CANARY-secretsmanager-secret-access-key-0123";

/// One call of moto's JSON API (`target` as `secretsmanager.CreateSecret`).
fn aws(service: &str, target: &str, body: Value) -> Value {
    let out = Command::new("curl")
        .args(["-s", "-X", "POST", "-H", &format!("X-Amz-Target: {target}")])
        .args(["-H", "Content-Type: application/x-amz-json-1.1"])
        .args([
            "-H",
            &format!(
                "Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/{service}/aws4_request, SignedHeaders=host, Signature=x"
            ),
        ])
        .args(["--data", &body.to_string()])
        .arg(format!("{}/", service_env("FERRY_S3_ENDPOINT")))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {target}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(v.get("__type").is_none(), "{target}: {v}");
    v
}

fn random_name(prefix: &str) -> String {
    let mut b = [0u8; 4];
    ferry_runner::crypto::aead::random_bytes(&mut b).unwrap();
    format!("{prefix}-{}", hex::encode(b))
}

fn create_secret(name: &str, value: Value) -> String {
    aws(
        "secretsmanager",
        "secretsmanager.CreateSecret",
        json!({"Name": name, "SecretString": value.to_string()}),
    )["VersionId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A local source of two files and a moto S3 destination whose credentials
/// are the Secrets Manager secret `secret_id`.
fn setup(secret_id: &str) -> tempfile::TempDir {
    let dir = support::work_dir(2);
    let d = dir.path();
    std::fs::write(d.join("token"), RUN_TOKEN).unwrap();
    let endpoint = service_env("FERRY_S3_ENDPOINT");
    let bucket = random_name("sm-dst");
    let created = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "PUT"])
        .arg(format!("{endpoint}/{bucket}"))
        .status()
        .unwrap();
    assert!(created.success());
    std::fs::write(
        d.join("connector.yaml"),
        format!(
            r#"
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {{name: managed, namespace: acme}}
spec:
  source: {{local: {{path: src}}}}
  destination:
    s3:
      bucket: {bucket}
      region: us-east-1
      endpoint: "{endpoint}"
      forcePathStyle: true
      insecurePlainHttpOnLoopback: true
      credentials:
        awsSecretsManager:
          secretId: "{secret_id}"
          region: {REGION}
          webIdentity: {{roleArn: "{ROLE}"}}
          fields: {{accessKeyId: aws_key_id}}
  compliance: {{dataResidency: any}}
  encryption: {{keyRef: {{secretRef: {{name: kek}}}}}}
"#
        ),
    )
    .unwrap();
    dir
}

/// `job-runner` with moto as STS, Secrets Manager and KMS (`aws` the
/// endpoint, for an unreachable one), the run's token in `token`.
fn runner(d: &Path, aws: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_job-runner"))
        .current_dir(d)
        .args(["--sts-endpoint", aws, "--aws-endpoint", aws])
        .args(args)
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", d.join("token"))
        .env("RUST_LOG", "trace")
        .output()
        .unwrap()
}

fn run(d: &Path, aws: &str) -> Output {
    runner(
        d,
        aws,
        &[
            "run",
            "--connector",
            "connector.yaml",
            "--secrets-dir",
            "secrets",
            "--audit-log",
            "audit.jsonl",
        ],
    )
}

fn text(d: &Path, o: &Output) -> String {
    format!(
        "{}{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(d.join("audit.jsonl")).unwrap_or_default()
    )
}

fn audit_objects(d: &Path, action: &str) -> Vec<String> {
    std::fs::read_to_string(d.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["action"] == action && l["object"].is_string())
        .map(|l| l["object"].as_str().unwrap().to_string())
        .collect()
}

fn assert_no_canary(text: &str) {
    for canary in [CANARY_KEY_ID, CANARY_SECRET] {
        assert!(
            !text.contains(canary),
            "a value from the store leaked: {text}"
        );
    }
}

#[test]
fn credentials_are_read_from_secrets_manager_by_the_run_itself() {
    let id = random_name("acme/s3");
    let version = create_secret(
        &id,
        json!({"aws_key_id": CANARY_KEY_ID, "secretAccessKey": CANARY_SECRET}),
    );
    let dir = setup(&id);
    let d = dir.path();
    let o = run(d, &service_env("FERRY_S3_ENDPOINT"));
    let out = text(d, &o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("copied 2 object(s)"), "{out}");
    assert_eq!(
        audit_objects(d, "secret.read"),
        [format!("aws-secretsmanager:{REGION}/{id}@{version}")]
    );
    assert_no_canary(&out);
}

#[test]
fn a_wrong_secret_id_names_the_secret_and_is_not_retried() {
    let id = random_name("acme/missing");
    let dir = setup(&id);
    let d = dir.path();
    let o = run(d, &service_env("FERRY_S3_ENDPOINT"));
    let out = text(d, &o);
    assert!(!o.status.success());
    assert!(
        out.contains("SecretKeyMissing")
            && out.contains(&format!("aws-secretsmanager:{REGION}/{id}")),
        "{out}"
    );
}

#[test]
fn a_run_without_its_token_is_denied() {
    let id = random_name("acme/s3");
    create_secret(
        &id,
        json!({"aws_key_id": CANARY_KEY_ID, "secretAccessKey": CANARY_SECRET}),
    );
    let dir = setup(&id);
    let d = dir.path();
    std::fs::remove_file(d.join("token")).unwrap();
    let o = run(d, &service_env("FERRY_S3_ENDPOINT"));
    let out = text(d, &o);
    assert!(!o.status.success());
    assert!(
        out.contains("SecretStoreDenied") && out.contains(ROLE),
        "{out}"
    );
    assert_no_canary(&out);
}

#[test]
fn an_unreachable_secrets_manager_is_a_transient_failure() {
    let id = random_name("acme/s3");
    let dir = setup(&id);
    let d = dir.path();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let o = run(d, &addr);
    let out = text(d, &o);
    assert!(!o.status.success());
    assert!(
        out.contains("SecretStoreUnreachable") && out.contains("could not be reached"),
        "{out}"
    );
}

/// An Azure destination on Azurite whose account key is in Secrets Manager,
/// first a wrong one; the platform team puts a new version while the first
/// try fails (`rotate`).
async fn rotation(
    rotate_to: Option<&str>,
) -> (
    Result<ferry_runner::transfer::Report, ferry_runner::job::Failure>,
    String,
) {
    use ferry_runner::config::{Platform, SecretsDir};

    let id = random_name("acme/blob");
    create_secret(&id, json!({"accountKey": support::WRONG_ACCOUNT_KEY}));
    let (dir, connector) = support::to_azurite(
        "sm-rotation",
        &format!(
            "{{awsSecretsManager: {{secretId: \"{id}\", region: {REGION}, webIdentity: {{roleArn: \"{ROLE}\"}}}}}}"
        ),
    );
    let d = dir.path();
    let token = d.join("token");
    std::fs::write(&token, RUN_TOKEN).unwrap();
    let platform = Platform {
        sts_endpoint: Some(service_env("FERRY_S3_ENDPOINT")),
        aws_endpoint: Some(service_env("FERRY_S3_ENDPOINT")),
        aws_token_file: Some(token),
        ..Platform::default()
    };
    let reread = || async {
        if let Some(key) = rotate_to {
            aws(
                "secretsmanager",
                "secretsmanager.PutSecretValue",
                json!({"SecretId": id, "SecretString": json!({"accountKey": key}).to_string()}),
            );
        }
        Ok(SecretsDir::new(d.join("secrets")))
    };
    support::run_rotating(&connector, &platform, d, reread).await
}

#[tokio::test]
async fn a_secret_rotated_in_secrets_manager_is_read_again_once() {
    let (outcome, audit) = rotation(Some(support::AZURITE_DEV_KEY)).await;
    let report = outcome.unwrap_or_else(|e| panic!("the second try succeeds: {e}\n{audit}"));
    assert_eq!(report.objects_copied, 1);
    let versions = support::versions_read(&audit);
    assert_eq!(versions.len(), 2, "{audit}");
    assert_ne!(versions[0], versions[1], "two versions read: {audit}");
    assert!(audit.contains(r#""action":"secret.reread""#), "{audit}");
    assert!(!audit.contains(support::AZURITE_DEV_KEY));
}

#[tokio::test]
async fn a_secret_still_wrong_after_the_re_read_fails_with_invalid_credentials() {
    let (outcome, audit) = rotation(None).await;
    let failure = outcome.unwrap_err();
    assert_eq!(
        failure.reason,
        ferry_crds::Reason::InvalidCredentials,
        "{audit}"
    );
    assert!(!audit.contains(r#""action":"secret.reread""#));
}

/// A local-to-local Connector whose KEK is a new AWS KMS key; its key id.
fn setup_kms() -> (tempfile::TempDir, String) {
    let key = aws("kms", "TrentService.CreateKey", json!({}))["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = support::work_dir(2);
    let d = dir.path();
    std::fs::remove_dir_all(d.join("secrets/kek")).unwrap();
    std::fs::write(d.join("token"), RUN_TOKEN).unwrap();
    std::fs::write(
        d.join("connector.yaml"),
        format!(
            r#"
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {{name: kms, namespace: acme}}
spec:
  source: {{local: {{path: src}}}}
  destination: {{local: {{path: dst}}}}
  compliance: {{dataResidency: any}}
  encryption: {{kms: {{awsKms: {{keyId: {key}, region: {REGION}, webIdentity: {{roleArn: "{ROLE}"}}}}}}}}
"#
        ),
    )
    .unwrap();
    (dir, key)
}

fn read_back(d: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_job-runner"))
        .current_dir(d)
        .args(["--aws-endpoint", &service_env("FERRY_S3_ENDPOINT")])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "AKIAREADER0000000001")
        .env("AWS_SECRET_ACCESS_KEY", "reader-secret")
        .output()
        .unwrap()
}

#[test]
fn a_kek_in_aws_kms_costs_one_data_key_per_run_and_reads_back_with_decrypt_rights() {
    let (dir, key) = setup_kms();
    let d = dir.path();
    let aws_url = service_env("FERRY_S3_ENDPOINT");
    let o = run(d, &aws_url);
    assert!(o.status.success(), "{}", text(d, &o));
    let name = format!("aws-kms:{REGION}/{key}");
    assert_eq!(audit_objects(d, "kms.datakey"), std::slice::from_ref(&name));
    assert!(audit_objects(d, "kms.decrypt").is_empty());
    std::fs::write(d.join("src/c.csv"), "id\n3\n").unwrap();
    let o = run(d, &aws_url);
    assert!(o.status.success(), "{}", text(d, &o));
    assert_eq!(audit_objects(d, "kms.datakey").len(), 2);
    assert_eq!(audit_objects(d, "kms.decrypt"), std::slice::from_ref(&name));
    // Nothing at the destination in clear, and no key file anywhere.
    assert_ne!(std::fs::read(d.join("dst/a.csv")).unwrap(), b"id\n1\n");
    let o = read_back(d, &["verify", "--kms", &name, "--dir", "dst", "--deep"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = read_back(
        d,
        &["decrypt", "--kms", &name, "--dir", "dst", "--out", "plain"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    support::assert_plain(&d.join("plain"), 3);
    // Another KMS key is not trusted in its place.
    let other = aws("kms", "TrentService.CreateKey", json!({}))["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let o = read_back(
        d,
        &[
            "verify",
            "--kms",
            &format!("aws-kms:{REGION}/{other}"),
            "--dir",
            "dst",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success());
    assert!(err.contains("not the KMS key trusted here"), "{err}");
}

#[test]
fn an_unreachable_kms_is_a_transient_failure() {
    let (dir, _) = setup_kms();
    let d = dir.path();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let o = run(d, &addr);
    let out = text(d, &o);
    assert!(!o.status.success());
    assert!(out.contains("SecretStoreUnreachable"), "{out}");
    assert!(!d.join("dst/a.csv").exists());
}
