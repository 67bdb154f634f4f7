//! Credentials kept in the platform's Vault, against a real OpenBao (the test
//! services: `bao server -dev`, its file audit device on): the run logs in with
//! its own signed token through the JWT auth method, as the role of its
//! namespace, and reads a KV version 2 secret; no static Vault token is used
//! by the run. Conformance cases: the read, a wrong path, a role whose policy
//! does not allow the path, a token the role does not accept, an unreachable
//! store; canary values planted in the store appear in no output. A KEK in
//! the Transit engine: one data-key call per run whatever its objects, read
//! back with decrypt rights only, old objects readable after a rotation. The tokens
//! are signed here with an Ed25519 key whose public half the JWT auth method
//! trusts, the way a cluster's service-account issuer signs projected tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use support::service_env;

const ISSUER: &str = "https://kubernetes.default.svc";
const AUDIENCE: &str = "vault";
const CANARY_KEY_ID: &str = "AKIAVAULTCANARY00001";
const CANARY_SECRET: &str = "CANARY-vault-secret-access-key-0123456789";

fn bao(method: &str, path: &str, body: Option<Value>) -> Value {
    let addr = service_env("FERRY_BAO_ADDR");
    let token = service_env("FERRY_BAO_ROOT_TOKEN");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-X", method, "-H", &format!("X-Vault-Token: {token}")]);
    if let Some(b) = body {
        cmd.args(["--data", &b.to_string()]);
    }
    let out = cmd.arg(format!("{addr}/v1/{path}")).output().unwrap();
    assert!(out.status.success(), "curl {method} {path}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    assert!(
        v.get("errors")
            .is_none_or(|e| e.as_array().is_some_and(Vec::is_empty)),
        "{method} {path}: {v}"
    );
    v
}

fn random_name(prefix: &str) -> String {
    let mut b = [0u8; 4];
    ferry_runner::crypto::aead::random_bytes(&mut b).unwrap();
    format!("{prefix}-{}", hex::encode(b))
}

/// A JWT auth method trusting `issuer_key`, a role `acme` for the run
/// ServiceAccounts of namespace acme that may read `secret/<prefix>/*`, and
/// an S3 secret at `secret/<prefix>/s3`.
struct Store {
    mount: String,
    prefix: String,
    issuer_key: SigningKey,
}

impl Store {
    fn new() -> Self {
        let mount = random_name("jwt");
        let prefix = random_name("tenant");
        let mut seed = [0u8; 32];
        ferry_runner::crypto::aead::random_bytes(&mut seed).unwrap();
        let issuer_key = SigningKey::from_bytes(&seed);
        let pem = issuer_key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        bao(
            "POST",
            &format!("sys/auth/{mount}"),
            Some(json!({"type": "jwt"})),
        );
        bao(
            "POST",
            &format!("auth/{mount}/config"),
            Some(json!({"jwt_validation_pubkeys": [pem], "bound_issuer": ISSUER})),
        );
        let transit = format!("transit-{prefix}");
        bao(
            "POST",
            &format!("sys/mounts/{transit}"),
            Some(json!({"type": "transit"})),
        );
        bao("POST", &format!("{transit}/keys/acme"), Some(json!({})));
        bao(
            "PUT",
            &format!("sys/policies/acl/{prefix}-read"),
            Some(json!({"policy": format!(
                "path \"secret/data/{prefix}/*\" {{ capabilities = [\"read\"] }}\n\
                 path \"{transit}/datakey/plaintext/acme\" {{ capabilities = [\"update\"] }}\n\
                 path \"{transit}/decrypt/acme\" {{ capabilities = [\"update\"] }}"
            )})),
        );
        bao(
            "PUT",
            &format!("sys/policies/acl/{prefix}-decrypt"),
            Some(json!({"policy": format!(
                "path \"{transit}/decrypt/acme\" {{ capabilities = [\"update\"] }}"
            )})),
        );
        bao(
            "PUT",
            &format!("sys/policies/acl/{prefix}-other"),
            Some(
                json!({"policy": format!("path \"secret/data/{prefix}-other/*\" {{ capabilities = [\"read\"] }}")}),
            ),
        );
        for (role, policy) in [("acme", "read"), ("elsewhere", "other")] {
            bao(
                "POST",
                &format!("auth/{mount}/role/{role}"),
                Some(json!({
                    "role_type": "jwt",
                    "bound_audiences": [AUDIENCE],
                    "user_claim": "sub",
                    "bound_claims_type": "glob",
                    "bound_claims": {"sub": "system:serviceaccount:acme:ferry-run-*"},
                    "token_policies": [format!("{prefix}-{policy}")],
                    "token_ttl": "120s",
                })),
            );
        }
        bao(
            "POST",
            &format!("secret/data/{prefix}/s3"),
            Some(json!({"data": {"aws_key_id": CANARY_KEY_ID, "secretAccessKey": CANARY_SECRET}})),
        );
        Self {
            mount,
            prefix,
            issuer_key,
        }
    }

    /// A projected-style token for the ServiceAccount `sub`.
    fn token(&self, sub: &str) -> String {
        let now = jiff::Timestamp::now().as_second();
        let header = B64URL.encode(json!({"alg": "EdDSA", "typ": "JWT"}).to_string());
        let claims = B64URL.encode(
            json!({"iss": ISSUER, "sub": sub, "aud": [AUDIENCE], "iat": now, "nbf": now, "exp": now + 600})
                .to_string(),
        );
        let signed = format!("{header}.{claims}");
        let sig = B64URL.encode(self.issuer_key.sign(signed.as_bytes()).to_bytes());
        format!("{signed}.{sig}")
    }
}

/// A local source of two files and the moto S3 destination, with S3
/// credentials in Vault at `path`.
fn setup(path: &str) -> tempfile::TempDir {
    let dir = support::work_dir(2);
    let d = dir.path();
    let endpoint = service_env("FERRY_S3_ENDPOINT");
    let bucket = random_name("vault-dst");
    let created = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "PUT"])
        .arg(format!("{endpoint}/{bucket}"))
        .status()
        .unwrap();
    assert!(created.success());
    let connector = format!(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {{name: vaulted, namespace: acme}}
spec:
  source: {{local: {{path: src, region: us-east-1}}}}
  destination:
    s3:
      bucket: {bucket}
      region: us-east-1
      endpoint: "{endpoint}"
      forcePathStyle: true
      insecurePlainHttpOnLoopback: true
      credentials: {{vault: {{path: "{path}", fields: {{accessKeyId: aws_key_id}}}}}}
  compliance: {{dataResidency: any}}
  encryption: {{keyRef: {{secretRef: {{name: kek}}}}}}
"#
    );
    std::fs::write(d.join("connector.yaml"), connector).unwrap();
    dir
}

fn run(d: &Path, store: &Store, addr: &str, role: &str, sub: &str) -> Output {
    run_with(d, store, addr, role, sub, &[])
}

/// [`run`], with `extra` arguments for the run.
fn run_with(d: &Path, store: &Store, addr: &str, role: &str, sub: &str, extra: &[&str]) -> Output {
    std::fs::write(d.join("vault-token"), store.token(sub)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_job-runner"))
        .current_dir(d)
        .args(["--vault-addr", addr, "--vault-role", role])
        .args([
            "--vault-auth-mount",
            &store.mount,
            "--vault-token-file",
            "vault-token",
        ])
        .args([
            "run",
            "--connector",
            "connector.yaml",
            "--secrets-dir",
            "secrets",
        ])
        .args(["--audit-log", "audit.jsonl"])
        .args(extra)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap()
}

fn text(d: &Path, o: &Output) -> String {
    format!(
        "{}{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(d.join("audit.jsonl")).unwrap_or_default()
    )
}

fn assert_no_canary(text: &str) {
    for canary in [CANARY_KEY_ID, CANARY_SECRET] {
        assert!(!text.contains(canary), "a value from Vault leaked: {text}");
    }
}

const RUN_SA: &str = "system:serviceaccount:acme:ferry-run-r1";

#[test]
fn credentials_are_read_from_vault_by_the_run_itself() {
    let store = Store::new();
    let path = format!("{}/s3", store.prefix);
    let dir = setup(&path);
    let d = dir.path();
    let o = run(d, &store, &service_env("FERRY_BAO_ADDR"), "acme", RUN_SA);
    let out = text(d, &o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("copied 2 object(s)"), "{out}");
    // Ferry's trail names the store, the path and the version read.
    let reads: Vec<Value> = std::fs::read_to_string(d.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &Value| l["action"] == "secret.read" && l["object"].as_str().is_some())
        .collect();
    assert_eq!(
        reads
            .iter()
            .map(|l| l["object"].clone())
            .collect::<Vec<_>>(),
        [json!(format!("vault:secret/{path}@v1"))],
        "{out}"
    );
    assert_no_canary(&out);
    // Vault's own trail has the run's login and read, under its role, and no
    // value in clear.
    let bao_audit = std::fs::read_to_string(service_env("FERRY_BAO_AUDIT_LOG")).unwrap();
    let ours: Vec<Value> = bao_audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["type"] == "response"
                && l["request"]["operation"] == "read"
                && l["request"]["path"] == format!("secret/data/{path}")
        })
        .collect();
    assert_eq!(ours.len(), 1, "one read of the secret");
    assert_eq!(ours[0]["auth"]["metadata"]["role"], "acme", "{}", ours[0]);
    assert_no_canary(&bao_audit);
    // The login that read it was revoked when the run ended: the token does
    // not outlive the run (its TTL is only the bound should the revocation
    // fail).
    let accessor = &ours[0]["auth"]["accessor"];
    let revoked = bao_audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|l| {
            l["type"] == "response"
                && l["request"]["path"] == "auth/token/revoke-self"
                && l["auth"]["accessor"] == *accessor
                && l.get("error").is_none_or(|e| e.as_str() == Some(""))
        });
    assert!(revoked, "the run's Vault token was not revoked at its end");
}

#[test]
fn a_wrong_path_names_the_secret_and_is_not_retried() {
    let store = Store::new();
    let path = format!("{}/missing", store.prefix);
    let dir = setup(&path);
    let d = dir.path();
    let o = run(d, &store, &service_env("FERRY_BAO_ADDR"), "acme", RUN_SA);
    let out = text(d, &o);
    assert!(!o.status.success());
    assert!(
        out.contains("SecretKeyMissing") && out.contains(&format!("vault:secret/{path}")),
        "{out}"
    );
    assert!(!ferry_crds::Reason::SecretKeyMissing.retryable());
}

#[test]
fn a_role_whose_policy_does_not_allow_the_path_is_denied() {
    let store = Store::new();
    let dir = setup(&format!("{}/s3", store.prefix));
    let d = dir.path();
    let o = run(
        d,
        &store,
        &service_env("FERRY_BAO_ADDR"),
        "elsewhere",
        RUN_SA,
    );
    let out = text(d, &o);
    assert!(!o.status.success());
    assert!(
        out.contains("SecretStoreDenied") && out.contains("its policy does not allow it"),
        "{out}"
    );
    assert_no_canary(&out);
}

#[test]
fn a_token_of_another_namespace_is_refused_at_login() {
    let store = Store::new();
    let dir = setup(&format!("{}/s3", store.prefix));
    let d = dir.path();
    let o = run(
        d,
        &store,
        &service_env("FERRY_BAO_ADDR"),
        "acme",
        "system:serviceaccount:other-tenant:ferry-run-r1",
    );
    let out = text(d, &o);
    assert!(!o.status.success());
    assert!(
        out.contains("SecretStoreDenied") && out.contains("refused the run's login"),
        "{out}"
    );
    assert!(
        !out.contains(&store.token(RUN_SA)[..40]),
        "the token leaked"
    );
    assert!(!ferry_crds::Reason::SecretStoreDenied.retryable());
}

#[test]
fn an_unreachable_store_is_a_transient_failure_with_a_clear_reason() {
    let store = Store::new();
    let dir = setup(&format!("{}/s3", store.prefix));
    let d = dir.path();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let o = run(d, &store, &addr, "acme", RUN_SA);
    let out = text(d, &o);
    assert!(!o.status.success());
    assert!(
        out.contains("SecretStoreUnreachable") && out.contains("could not be reached"),
        "{out}"
    );
    assert!(ferry_crds::Reason::SecretStoreUnreachable.retryable());
}

/// An Azure destination on Azurite whose account key is in Vault at
/// `secret/<prefix>/blob`, first a wrong one; the platform team rotates it
/// while the first try fails (`rotate`): the run reads Vault once more and,
/// when the secret changed, tries once more.
async fn rotation(
    rotate_to: Option<&str>,
) -> (
    Result<ferry_runner::transfer::Report, ferry_runner::job::Failure>,
    String,
) {
    use ferry_runner::config::{Platform, SecretsDir};

    let store = Store::new();
    let path = format!("{}/blob", store.prefix);
    bao(
        "POST",
        &format!("secret/data/{path}"),
        Some(json!({"data": {"accountKey": support::WRONG_ACCOUNT_KEY}})),
    );
    let (dir, connector) = support::to_azurite(
        "vault-rotation",
        &format!("{{vault: {{path: \"{path}\"}}}}"),
    );
    let d = dir.path();
    std::fs::write(d.join("vault-token"), store.token(RUN_SA)).unwrap();
    let platform = Platform {
        vault: Some(ferry_runner::vault::VaultSettings::new(
            service_env("FERRY_BAO_ADDR"),
            store.mount.clone(),
            "acme".into(),
            d.join("vault-token"),
        )),
        ..Platform::default()
    };
    let reread = || async {
        if let Some(key) = rotate_to {
            bao(
                "POST",
                &format!("secret/data/{path}"),
                Some(json!({"data": {"accountKey": key}})),
            );
        }
        Ok(SecretsDir::new(d.join("secrets")))
    };
    support::run_rotating(&connector, &platform, d, reread).await
}

#[tokio::test]
async fn a_secret_rotated_in_vault_is_read_again_once() {
    let (outcome, audit) = rotation(Some(support::AZURITE_DEV_KEY)).await;
    let report = outcome.unwrap_or_else(|e| panic!("the second try succeeds: {e}\n{audit}"));
    assert_eq!(report.objects_copied, 1);
    let reads = support::versions_read(&audit);
    assert_eq!(reads, ["v1", "v2"], "{audit}");
    assert!(audit.contains(r#""action":"secret.reread""#), "{audit}");
    assert!(
        !audit.contains(support::AZURITE_DEV_KEY) && !audit.contains(support::WRONG_ACCOUNT_KEY)
    );
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
    assert!(
        !audit.contains(r#""action":"secret.reread""#),
        "unchanged: no second try"
    );
}

/// A Connector from a local folder to a local folder whose KEK is the
/// Transit key `acme` of the store, with a namespace Secret that is not a key.
fn setup_transit(store: &Store) -> tempfile::TempDir {
    let dir = support::work_dir(2);
    let d = dir.path();
    std::fs::remove_dir_all(d.join("secrets/kek")).unwrap();
    std::fs::create_dir_all(d.join("secrets/sftp")).unwrap();
    std::fs::write(d.join("secrets/sftp/password"), "not-a-key").unwrap();
    // An account key: 32 bytes of base64, a KEK in form.
    std::fs::create_dir_all(d.join("secrets/blob")).unwrap();
    std::fs::write(d.join("secrets/blob/accountKey"), BASE64_ACCOUNT_KEY).unwrap();
    std::fs::write(
        d.join("connector.yaml"),
        format!(
            r#"
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {{name: transit, namespace: acme}}
spec:
  source: {{local: {{path: src}}}}
  destination: {{local: {{path: dst}}}}
  compliance: {{dataResidency: any}}
  encryption: {{kms: {{vaultTransit: {{mount: {}, key: acme}}}}}}
"#,
            store.transit()
        ),
    )
    .unwrap();
    dir
}

impl Store {
    fn transit(&self) -> String {
        format!("transit-{}", self.prefix)
    }

    fn kms(&self) -> String {
        format!("vault-transit:{}/acme", self.transit())
    }

    /// A Vault token whose only right is to decrypt with the Transit key.
    fn decrypt_only_token(&self) -> String {
        let t = bao(
            "POST",
            "auth/token/create",
            Some(
                json!({"policies": [format!("{}-decrypt", self.prefix)], "no_default_policy": true, "ttl": "10m"}),
            ),
        );
        t["auth"]["client_token"].as_str().unwrap().to_string()
    }

    /// The responses of Vault's audit log for `op` (`datakey/plaintext` or
    /// `decrypt`) on the Transit key.
    fn transit_calls(&self, op: &str) -> Vec<Value> {
        let path = format!("{}/{op}/acme", self.transit());
        std::fs::read_to_string(service_env("FERRY_BAO_AUDIT_LOG"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["type"] == "response" && l["request"]["path"] == path)
            .collect()
    }
}

/// `job-runner` reading back the destination `dst` with `args` and a Vault
/// token in the environment.
fn read_back(d: &Path, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_job-runner"))
        .current_dir(d)
        .args(args)
        .env("VAULT_ADDR", service_env("FERRY_BAO_ADDR"))
        .env("VAULT_TOKEN", token)
        .output()
        .unwrap()
}

/// `job-runner decrypt --kms` of `dst` into `plain` with a Vault token, which
/// must succeed.
fn decrypt_plain(d: &Path, token: &str, kms: &str) {
    let o = read_back(
        d,
        token,
        &["decrypt", "--kms", kms, "--dir", "dst", "--out", "plain"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn audit_objects(d: &Path, action: &str) -> Vec<String> {
    std::fs::read_to_string(d.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["action"] == action)
        .map(|l| l["object"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_kek_stays_in_transit_and_a_run_makes_one_data_key_call() {
    let store = Store::new();
    let dir = setup_transit(&store);
    let d = dir.path();
    let addr = service_env("FERRY_BAO_ADDR");
    let o = run(d, &store, &addr, "acme", RUN_SA);
    let out = text(d, &o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("copied 2 object(s)"), "{out}");
    assert_eq!(store.transit_calls("datakey/plaintext").len(), 1);
    assert_eq!(store.transit_calls("decrypt").len(), 0);
    // The run's login is the caller, as the role of its namespace.
    let call = &store.transit_calls("datakey/plaintext")[0];
    assert_eq!(call["auth"]["metadata"]["role"], "acme", "{call}");
    assert_eq!(
        audit_objects(d, "kms.datakey"),
        [format!("{}@v1", store.kms())]
    );
    // A second run with one more object: one data key for itself, one decrypt
    // of the first run's key to check the manifest it builds on.
    std::fs::write(d.join("src/c.csv"), "id\n3\n").unwrap();
    let o = run(d, &store, &addr, "acme", RUN_SA);
    assert!(o.status.success(), "{}", text(d, &o));
    assert_eq!(store.transit_calls("datakey/plaintext").len(), 2);
    assert_eq!(store.transit_calls("decrypt").len(), 1);
    assert_eq!(
        audit_objects(d, "kms.decrypt"),
        [format!("{}@v1", store.kms())]
    );
    let logins = std::fs::read_to_string(service_env("FERRY_BAO_AUDIT_LOG"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["type"] == "response" && l["request"]["path"] == format!("auth/{}/login", store.mount)
        })
        .count();
    assert_eq!(logins, 2, "one login per run");
    // No key material in any trail.
    for call in store.transit_calls("datakey/plaintext") {
        assert!(
            call["response"]["data"]["plaintext"]
                .as_str()
                .is_none_or(|p| p.starts_with("hmac-sha256:")),
            "the audit device keeps no data key in clear: {call}"
        );
    }
    assert!(!out.contains("plaintext"), "{out}");
}

const BASE64_ACCOUNT_KEY: &str = "YWNjb3VudC1rZXktb2YtMzItYnl0ZXMtZm9yLXRlc3Q=";

/// The attacker reads every Secret of the namespace and tries each as the KEK
/// of the destination; `true` if one decrypted it.
fn stolen_secrets_decrypt(d: &Path) -> bool {
    let mut decrypted = false;
    for secret in std::fs::read_dir(d.join("secrets")).unwrap() {
        for key in std::fs::read_dir(secret.unwrap().path()).unwrap() {
            let key = key.unwrap().path();
            let o = read_back(
                d,
                "",
                &[
                    "decrypt",
                    "--kek",
                    key.to_str().unwrap(),
                    "--dir",
                    "dst",
                    "--out",
                    "stolen",
                ],
            );
            let err = String::from_utf8_lossy(&o.stderr).to_string();
            assert!(
                o.status.success()
                    || err.contains("no key-encryption key with id")
                    || err.contains("no KMS was given to unwrap it")
                    || err.contains("must be 32 bytes"),
                "{err}"
            );
            decrypted |= o.status.success();
        }
    }
    decrypted
}

#[test]
fn every_secret_of_the_namespace_stolen_does_not_decrypt_the_data() {
    let store = Store::new();
    let dir = setup_transit(&store);
    let d = dir.path();
    // With the KEK in a Secret, as before, the attack works.
    let yaml = std::fs::read_to_string(d.join("connector.yaml")).unwrap();
    let with_secret = yaml.replace(
        &format!(
            "kms: {{vaultTransit: {{mount: {}, key: acme}}}}",
            store.transit()
        ),
        "keyRef: {secretRef: {name: kek}}",
    );
    std::fs::create_dir_all(d.join("secrets/kek")).unwrap();
    std::fs::write(d.join("secrets/kek/kek"), [7u8; 32]).unwrap();
    std::fs::write(d.join("connector.yaml"), &with_secret).unwrap();
    let o = run(d, &store, &service_env("FERRY_BAO_ADDR"), "acme", RUN_SA);
    assert!(o.status.success(), "{}", text(d, &o));
    assert!(stolen_secrets_decrypt(d), "the Secret KEK decrypts");
    // With the KEK in Transit, nothing in the namespace's Secrets does.
    std::fs::remove_dir_all(d.join("secrets/kek")).unwrap();
    std::fs::remove_dir_all(d.join("dst")).unwrap();
    std::fs::remove_dir_all(d.join("stolen")).unwrap();
    std::fs::write(d.join("connector.yaml"), &yaml).unwrap();
    let o = run(d, &store, &service_env("FERRY_BAO_ADDR"), "acme", RUN_SA);
    assert!(o.status.success(), "{}", text(d, &o));
    assert!(!stolen_secrets_decrypt(d));
    assert!(!d.join("stolen/a.csv").exists());
    // Nor does the wrapped run key the objects carry, without Transit rights.
    let o = read_back(
        d,
        "not-a-token",
        &[
            "decrypt",
            "--kms",
            &store.kms(),
            "--dir",
            "dst",
            "--out",
            "stolen",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success());
    assert!(err.contains("refused"), "{err}");
    assert!(!d.join("stolen/a.csv").exists());
}

#[test]
fn a_reader_with_only_transit_decrypt_rights_verifies_and_decrypts() {
    let store = Store::new();
    let dir = setup_transit(&store);
    let d = dir.path();
    let o = run(d, &store, &service_env("FERRY_BAO_ADDR"), "acme", RUN_SA);
    assert!(o.status.success(), "{}", text(d, &o));
    let token = store.decrypt_only_token();
    // The token may decrypt, and nothing else: no data keys.
    let denied = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", &format!("X-Vault-Token: {token}")])
        .arg(format!(
            "{}/v1/{}/datakey/plaintext/acme",
            service_env("FERRY_BAO_ADDR"),
            store.transit()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&denied.stdout), "403");
    let o = read_back(
        d,
        &token,
        &["verify", "--kms", &store.kms(), "--dir", "dst", "--deep"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    decrypt_plain(d, &token, &store.kms());
    support::assert_plain(&d.join("plain"), 2);
    // Another Transit key is not trusted in its place.
    let other = format!("vault-transit:{}/other", store.transit());
    let o = read_back(d, &token, &["verify", "--kms", &other, "--dir", "dst"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success());
    assert!(err.contains("not the KMS key trusted here"), "{err}");
}

#[test]
fn rotating_the_transit_key_leaves_old_objects_readable() {
    let store = Store::new();
    let dir = setup_transit(&store);
    let d = dir.path();
    let addr = service_env("FERRY_BAO_ADDR");
    let o = run(d, &store, &addr, "acme", RUN_SA);
    assert!(o.status.success(), "{}", text(d, &o));
    bao(
        "POST",
        &format!("{}/keys/acme/rotate", store.transit()),
        None,
    );
    std::fs::write(d.join("src/c.csv"), "id\n3\n").unwrap();
    let o = run(d, &store, &addr, "acme", RUN_SA);
    assert!(o.status.success(), "{}", text(d, &o));
    assert_eq!(
        audit_objects(d, "kms.datakey"),
        [format!("{}@v1", store.kms()), format!("{}@v2", store.kms())]
    );
    let token = store.decrypt_only_token();
    decrypt_plain(d, &token, &store.kms());
    support::assert_plain(&d.join("plain"), 3);
}

#[test]
fn a_role_without_rights_on_the_transit_key_is_denied() {
    let store = Store::new();
    let dir = setup_transit(&store);
    let d = dir.path();
    let o = run(
        d,
        &store,
        &service_env("FERRY_BAO_ADDR"),
        "elsewhere",
        RUN_SA,
    );
    let out = text(d, &o);
    assert!(!o.status.success());
    assert!(
        out.contains("SecretStoreDenied") && out.contains("datakey/plaintext/acme"),
        "{out}"
    );
    assert!(
        !d.join("dst/a.csv").exists(),
        "nothing is written unencrypted"
    );
}

#[test]
fn an_unreachable_kms_is_a_transient_failure() {
    let store = Store::new();
    let dir = setup_transit(&store);
    let d = dir.path();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let o = run(d, &store, &addr, "acme", RUN_SA);
    let out = text(d, &o);
    assert!(!o.status.success());
    assert!(out.contains("SecretStoreUnreachable"), "{out}");
}

/// SFTP credentials kept in Vault too: the run reads the user name and the
/// private key from KV and reaches the test SFTP server; the key appears in
/// no output.
#[test]
fn sftp_credentials_are_read_from_vault() {
    let store = Store::new();
    let private_key = std::fs::read_to_string(service_env("FERRY_SFTP_KEY")).unwrap();
    let path = format!("{}/sftp", store.prefix);
    bao(
        "POST",
        &format!("secret/data/{path}"),
        Some(
            json!({"data": {"username": service_env("FERRY_SFTP_USER"), "privateKey": private_key}}),
        ),
    );
    let folder = random_name("vault-sftp");
    let root = std::path::PathBuf::from(service_env("FERRY_SFTP_ROOT")).join(&folder);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.csv"), "id\n1\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("secrets/kek")).unwrap();
    std::fs::write(d.join("secrets/kek/kek"), [7u8; 32]).unwrap();
    std::fs::create_dir_all(d.join("secrets/hostkey")).unwrap();
    std::fs::copy(
        service_env("FERRY_SFTP_HOST_KEY"),
        d.join("secrets/hostkey/knownHosts"),
    )
    .unwrap();
    std::fs::write(
        d.join("connector.yaml"),
        format!(
            r#"
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {{name: sftp, namespace: acme}}
spec:
  source: {{sftp: {{host: "{}", port: {}, path: {folder}, region: eu-west-1, credentials: {{vault: {{path: "{path}"}}}}, hostKey: {{secretRef: {{name: hostkey}}}}}}}}
  destination: {{local: {{path: dst}}}}
  compliance: {{dataResidency: any}}
  encryption: {{keyRef: {{secretRef: {{name: kek}}}}}}
"#,
            service_env("FERRY_SFTP_HOST"),
            service_env("FERRY_SFTP_PORT"),
        ),
    )
    .unwrap();
    let o = run(d, &store, &service_env("FERRY_BAO_ADDR"), "acme", RUN_SA);
    let out = text(d, &o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("copied 1 object(s)"), "{out}");
    assert_eq!(
        audit_objects(d, "secret.read")
            .into_iter()
            .filter(|o| !o.is_empty())
            .collect::<Vec<_>>(),
        [format!("vault:secret/{path}@v1")]
    );
    let key_body = private_key.lines().nth(1).unwrap();
    assert!(!out.contains(key_body), "the private key leaked");
    std::fs::remove_dir_all(root).unwrap();
}

/// An erasure under a Transit KEK: the run rewrites the manifests that list
/// the erased key under its own run key (unwrapping the earlier run's key to
/// read them), and a reader with decrypt rights only still verifies the whole
/// chain.
#[test]
fn an_erasure_under_a_transit_kek_keeps_the_records_verifiable() {
    let store = Store::new();
    let dir = setup_transit(&store);
    let d = dir.path();
    let addr = service_env("FERRY_BAO_ADDR");
    let o = run(d, &store, &addr, "acme", RUN_SA);
    assert!(o.status.success(), "{}", text(d, &o));
    let o = run_with(
        d,
        &store,
        &addr,
        "acme",
        RUN_SA,
        &["--mode", "erase", "--erase-key", "a.csv"],
    );
    assert!(o.status.success(), "{}", text(d, &o));
    assert!(!d.join("dst/a.csv").exists());
    assert_eq!(store.transit_calls("datakey/plaintext").len(), 2);
    assert_eq!(
        store.transit_calls("decrypt").len(),
        1,
        "the first run's key, once"
    );
    let token = store.decrypt_only_token();
    let o = read_back(
        d,
        &token,
        &["verify", "--kms", &store.kms(), "--dir", "dst", "--deep"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("1 object(s)") && out.contains("2 manifest(s) form one chain"),
        "{out}"
    );
}
