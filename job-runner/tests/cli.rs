//! The `job-runner` binary as a user runs it: keygen, run, verify, decrypt, and
//! the errors a user sees. Key material never appears in any output.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::process::{Command, Output};

fn runner(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_job-runner"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// `job-runner run` of the test Connector, with the tenant in its region.
fn run_local(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--connector",
        "connector.yaml",
        "--secrets-dir",
        "secrets",
    ];
    args.extend(["--tenant-region", "eu-west-1"]);
    args.extend(extra);
    runner(dir, &args)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const CONNECTOR: &str = r#"
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {name: cli, namespace: tenant-a}
spec:
  source: {local: {path: src, region: eu-west-1}}
  destination: {local: {path: dst, region: eu-west-1}}
  include: ["**/*.csv"]
  compliance: {dataResidency: in-region-only}
  encryption: {keyRef: {secretRef: {name: kek}, key: kek}}
"#;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("src/d")).unwrap();
    std::fs::write(dir.path().join("src/a.csv"), "id,email\n1,a@example.com\n").unwrap();
    std::fs::write(dir.path().join("src/d/b.csv"), vec![b'x'; 2_500_000]).unwrap();
    std::fs::write(dir.path().join("src/skip.txt"), "not included").unwrap();
    std::fs::write(dir.path().join("connector.yaml"), CONNECTOR).unwrap();
    dir
}

#[test]
fn keygen_run_verify_decrypt() {
    let dir = setup();
    let d = dir.path();
    let o = runner(d, &["keygen", "--out", "secrets/kek/kek"]);
    assert!(o.status.success(), "{}", text(&o));
    let key = std::fs::read_to_string(d.join("secrets/kek/kek")).unwrap();
    let key = key.trim();
    assert_eq!(key.len(), 44, "base64 of 32 bytes");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("secrets/kek/kek"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key file readable by others");
    }
    assert!(!text(&o).contains(key), "keygen printed the key");
    let again = runner(d, &["keygen", "--out", "secrets/kek/kek"]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("refusing to replace a key"),
        "{}",
        text(&again)
    );

    let o = run_local(d, &["--run-id", "r1"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("copied 2 object(s)"), "{out}");
    assert!(!out.contains(key), "run printed the key");
    assert!(
        out.contains(r#""action":"run.finished","outcome":"success""#),
        "audit lines: {out}"
    );
    assert!(!d.join("dst/skip.txt").exists());

    let o = runner(
        d,
        &[
            "verify",
            "--kek",
            "secrets/kek/kek",
            "--dir",
            "dst",
            "--deep",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ok: 2 object(s)"));

    let o = runner(
        d,
        &[
            "decrypt",
            "--kek",
            "secrets/kek/kek",
            "--dir",
            "dst",
            "--out",
            "plain",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(d.join("plain/d/b.csv")).unwrap(),
        vec![b'x'; 2_500_000]
    );
    let o = runner(
        d,
        &[
            "decrypt",
            "--kek",
            "secrets/kek/kek",
            "--file",
            "dst/a.csv",
            "--object-key",
            "a.csv",
            "--out",
            "-",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "id,email\n1,a@example.com\n"
    );

    // Incremental: a second run copies nothing.
    let o = run_local(d, &["--run-id", "r2"]);
    assert!(
        text(&o).contains("copied 0 object(s)") && text(&o).contains("skipped 2 unchanged"),
        "{}",
        text(&o)
    );

    // Plan mode lists and moves nothing.
    std::fs::write(d.join("src/new.csv"), "n").unwrap();
    let o = run_local(d, &["--mode", "plan"]);
    assert!(text(&o).contains("would copy new.csv"), "{}", text(&o));
    assert!(!d.join("dst/new.csv").exists());
}

#[test]
fn errors_are_clear_and_name_the_object() {
    let dir = setup();
    let d = dir.path();
    // A KEK that is not 32 bytes: the error names the Secret and key, not the content.
    std::fs::create_dir_all(d.join("secrets/kek")).unwrap();
    std::fs::write(d.join("secrets/kek/kek"), "CANARY-not-a-key").unwrap();
    let o = run_local(d, &[]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(out.contains("secret \"kek\" key \"kek\""), "{out}");
    assert!(
        !out.contains("CANARY"),
        "the secret's content leaked: {out}"
    );

    // Residency: a tenant in another region is refused before anything moves.
    std::fs::write(d.join("secrets/kek/kek"), [7u8; 32]).unwrap();
    let o = runner(
        d,
        &[
            "run",
            "--connector",
            "connector.yaml",
            "--secrets-dir",
            "secrets",
            "--tenant-region",
            "us-east-1",
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("outside the tenant's region"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains(r#""action":"policy.residency","outcome":"denied""#),
        "{}",
        text(&o)
    );
    assert!(!d.join("dst").exists());

    // Missing secret key.
    let o = runner(
        d,
        &[
            "run",
            "--connector",
            "connector.yaml",
            "--secrets-dir",
            "nowhere",
            "--tenant-region",
            "eu-west-1",
        ],
    );
    assert!(
        text(&o).contains("secret \"kek\" has no key \"kek\""),
        "{}",
        text(&o)
    );

    // A corrupt object: decrypt fails naming it, writes nothing.
    let o = run_local(d, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let mut bytes = std::fs::read(d.join("dst/d/b.csv")).unwrap();
    bytes[1_500_000] ^= 0x80;
    std::fs::write(d.join("dst/d/b.csv"), bytes).unwrap();
    let o = runner(
        d,
        &[
            "decrypt",
            "--kek",
            "secrets/kek/kek",
            "--file",
            "dst/d/b.csv",
            "--object-key",
            "d/b.csv",
            "--out",
            "b.out",
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("d/b.csv") && text(&o).contains("failed authentication"),
        "{}",
        text(&o)
    );
    assert!(!d.join("b.out").exists(), "partial plaintext written");
    let o = runner(d, &["verify", "--kek", "secrets/kek/kek", "--dir", "dst"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("object \"d/b.csv\": stored SHA-256 does not match"),
        "{}",
        text(&o)
    );

    // Invalid YAML / unknown field / wrong kind.
    std::fs::write(d.join("bad.yaml"), "kind: Connector\nspec: [").unwrap();
    let o = runner(
        d,
        &["run", "--connector", "bad.yaml", "--secrets-dir", "secrets"],
    );
    assert!(
        !o.status.success() && text(&o).contains("bad.yaml is not a valid Connector"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_inline_secret_field_is_refused_not_ignored() {
    let dir = setup();
    let d = dir.path();
    let with_secret = CONNECTOR.replace(
        "  include:",
        "  credentials: {secretAccessKey: CANARY-inline}\n  include:",
    );
    std::fs::write(d.join("c.yaml"), with_secret).unwrap();
    let o = runner(
        d,
        &["run", "--connector", "c.yaml", "--secrets-dir", "secrets"],
    );
    assert!(!o.status.success());
    let out = text(&o);
    assert!(out.contains("unknown field(s): spec.credentials"), "{out}");
    assert!(!out.contains("CANARY"), "{out}");
}

/// A destination that cannot take the data: the runner runs under a 1 MiB file
/// size limit (SIGXFSZ ignored, so writes fail with EFBIG as they fail with
/// ENOSPC on a full disk), and the 2.5 MB object cannot be written.
#[test]
fn a_full_destination_fails_clearly_and_leaves_no_partial_object() {
    let dir = setup();
    let d = dir.path();
    std::fs::create_dir_all(d.join("secrets/kek")).unwrap();
    std::fs::write(d.join("secrets/kek/kek"), [7u8; 32]).unwrap();
    let o = Command::new("bash")
        .current_dir(d)
        .args(["-c", r#"trap '' XFSZ; ulimit -f 1024; exec "$0" "$@""#])
        .arg(env!("CARGO_BIN_EXE_job-runner"))
        .args([
            "run",
            "--connector",
            "connector.yaml",
            "--secrets-dir",
            "secrets",
        ])
        .args(["--tenant-region", "eu-west-1"])
        .output()
        .unwrap();
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains(r#"no space left while writing \"d/b.csv\""#)
            || out.contains(r#"no space left while writing "d/b.csv""#),
        "{out}"
    );
    assert!(
        out.contains(r#""action":"object.copy","outcome":"failure","reason":"NoSpace""#),
        "{out}"
    );
    // Nothing half-written is visible or left behind, and no manifest claims
    // a run that did not finish.
    let mut left = Vec::new();
    for entry in walkdir(&d.join("dst")) {
        left.push(entry);
    }
    assert!(!left.iter().any(|p| p.ends_with("d/b.csv")), "{left:?}");
    assert!(!left.iter().any(|p| p.contains(".ferry-tmp-")), "{left:?}");
    assert!(
        !left.iter().any(|p| p.contains(".ferry/manifests")),
        "{left:?}"
    );
}

fn walkdir(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        } else {
            out.push(path.to_string_lossy().into_owned());
        }
    }
    out
}

/// A new bucket on the S3 test server, in `region`.
fn create_bucket(endpoint: &str, prefix: &str, region: &str) -> String {
    let mut b = [0u8; 4];
    ferry_runner::crypto::aead::random_bytes(&mut b).unwrap();
    let bucket = format!("{prefix}-{}", hex::encode(b));
    let body = format!(
        "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
    );
    let created = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "PUT"])
        .args(["-H", "Content-Type: application/xml", "--data", &body])
        .arg(format!("{endpoint}/{bucket}"))
        .status()
        .unwrap();
    assert!(created.success(), "create bucket {bucket} in {region}");
    bucket
}

/// Residency as the store reports it: a bucket declared in the tenant's region
/// but really elsewhere is refused before anything is read or written, with an
/// audit line naming the systems and the reason.
#[test]
fn a_bucket_outside_the_tenant_region_is_refused_whatever_it_declares() {
    let endpoint =
        std::env::var("FERRY_S3_ENDPOINT").expect("FERRY_S3_ENDPOINT: run through `make test`");
    let dir = setup();
    let d = dir.path();
    let bucket = create_bucket(&endpoint, "elsewhere", "us-west-2");
    std::fs::create_dir_all(d.join("secrets/kek")).unwrap();
    std::fs::write(d.join("secrets/kek/kek"), [9u8; 32]).unwrap();
    std::fs::create_dir_all(d.join("secrets/s3")).unwrap();
    std::fs::write(d.join("secrets/s3/accessKeyId"), "testing").unwrap();
    std::fs::write(d.join("secrets/s3/secretAccessKey"), "CANARY-s3-secret").unwrap();
    let connector = std::fs::read_to_string(d.join("connector.yaml"))
        .unwrap()
        .replace(
            "destination: {local: {path: dst, region: eu-west-1}}",
            &format!("destination: {{s3: {{bucket: {bucket}, prefix: out/, region: eu-west-1, endpoint: \"{endpoint}\", forcePathStyle: true, insecurePlainHttpOnLoopback: true, credentials: {{secretRef: {{name: s3}}}}}}}}"),
        );
    std::fs::write(d.join("s3.yaml"), connector).unwrap();
    let o = runner(
        d,
        &[
            "run",
            "--connector",
            "s3.yaml",
            "--secrets-dir",
            "secrets",
            "--tenant-region",
            "eu-west-1",
            "--run-id",
            "moved-1",
            "--audit-log",
            "audit.jsonl",
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("is in region \"us-west-2\" (as the store reports), outside the tenant's region \"eu-west-1\""),
        "{}",
        text(&o)
    );
    let audit = std::fs::read_to_string(d.join("audit.jsonl")).unwrap();
    assert!(!audit.contains("CANARY") && !text(&o).contains("CANARY"));
    let denied: serde_json::Value = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["action"] == "policy.residency")
        .expect("a policy.residency audit line");
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["reason"], "ResidencyViolation");
    assert_eq!(denied["run"], "moved-1");
    assert_eq!(denied["tenant"], "tenant-a");
    assert_eq!(denied["connector"], "cli");
    assert_eq!(denied["source"], "local:src");
    assert_eq!(denied["destination"], format!("s3://{bucket}/out/"));
    // Nothing was written.
    let listed = Command::new("curl")
        .args(["-sf", &format!("{endpoint}/{bucket}?list-type=2")])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("<Key>"));
}

/// Local folder to S3 (the moto server of the test services) through the CLI,
/// then verify and decrypt the remote destination through the Connector.
#[test]
fn run_verify_and_decrypt_a_remote_destination() {
    let endpoint =
        std::env::var("FERRY_S3_ENDPOINT").expect("FERRY_S3_ENDPOINT: run through `make test`");
    let dir = setup();
    let d = dir.path();
    let bucket = create_bucket(&endpoint, "cli", "eu-west-1");
    std::fs::create_dir_all(d.join("secrets/s3")).unwrap();
    std::fs::write(d.join("secrets/s3/accessKeyId"), "testing").unwrap();
    std::fs::write(d.join("secrets/s3/secretAccessKey"), "CANARY-s3-secret").unwrap();
    std::fs::create_dir_all(d.join("secrets/kek")).unwrap();
    std::fs::write(d.join("secrets/kek/kek"), [9u8; 32]).unwrap();
    let connector = CONNECTOR
        .replace(
            "destination: {local: {path: dst, region: eu-west-1}}",
            &format!("destination: {{s3: {{bucket: {bucket}, prefix: out/, region: eu-west-1, endpoint: \"{endpoint}\", forcePathStyle: true, insecurePlainHttpOnLoopback: true, credentials: {{secretRef: {{name: s3}}}}}}}}"),
        );
    std::fs::write(d.join("s3.yaml"), connector).unwrap();
    let o = runner(
        d,
        &[
            "run",
            "--connector",
            "s3.yaml",
            "--secrets-dir",
            "secrets",
            "--tenant-region",
            "eu-west-1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("CANARY"), "{}", text(&o));
    std::fs::write(d.join("kek.bin"), [9u8; 32]).unwrap();
    let o = runner(
        d,
        &[
            "verify",
            "--kek",
            "kek.bin",
            "--connector",
            "s3.yaml",
            "--secrets-dir",
            "secrets",
            "--deep",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ok: 2 object(s)"), "{}", text(&o));
    let o = runner(
        d,
        &[
            "decrypt",
            "--kek",
            "kek.bin",
            "--connector",
            "s3.yaml",
            "--secrets-dir",
            "secrets",
            "--out",
            "back",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(d.join("back/d/b.csv")).unwrap(),
        vec![b'x'; 2_500_000]
    );
    assert!(
        text(&o).contains(&format!("s3://{bucket}/out/")),
        "{}",
        text(&o)
    );
}

/// Cluster mode with an API server that does not answer (over TLS, so the TLS
/// stack is exercised): a clear error naming the run, no panic, no token.
#[test]
fn cluster_mode_without_an_api_server_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: canary-api-token}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_job-runner"))
        .current_dir(dir.path())
        .args(["cluster"])
        .env("KUBECONFIG", dir.path().join("kubeconfig"))
        .env("FERRY_RUN_NAME", "sales-1")
        .env("FERRY_RUN_NAMESPACE", "acme")
        .env(ferry_crds::contract::env::SPEC_HASH, "sha256:00")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("failed to read ConnectorRun acme/sales-1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("canary-api-token"), "{stderr}");
}

/// The attack: someone with access to the kept audit lines deletes or edits
/// one (the object copied, a denial). `audit verify` names the line.
#[test]
fn an_audit_trail_with_a_line_deleted_or_edited_is_rejected_naming_the_line() {
    let dir = setup();
    let p = dir.path();
    assert!(
        runner(p, &["keygen", "--out", "secrets/kek/kek"])
            .status
            .success()
    );
    for _ in 0..2 {
        let o = run_local(p, &["--audit-log", "audit.jsonl"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let ok = runner(p, &["audit", "verify", "audit.jsonl"]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).contains("from 2 writer(s)"),
        "two runs, two writers: {}",
        text(&ok)
    );

    let kept = std::fs::read_to_string(p.join("audit.jsonl")).unwrap();
    let lines: Vec<&str> = kept.lines().collect();
    assert!(lines.len() >= 4, "{kept}");
    // Deleted: the chain breaks at the line after it.
    let deleted = [&lines[..1], &lines[2..]].concat().join("\n");
    std::fs::write(p.join("deleted.jsonl"), deleted).unwrap();
    let o = runner(p, &["audit", "verify", "deleted.jsonl"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("line 2 "), "{}", text(&o));
    // Edited: the edited line is named.
    let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    edited[1] = edited[1].replacen("\"success\"", "\"failure\"", 1);
    assert_ne!(edited[1], lines[1]);
    std::fs::write(p.join("edited.jsonl"), edited.join("\n")).unwrap();
    let o = runner(p, &["audit", "verify", "edited.jsonl"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("line 2 ") && text(&o).contains("edited"),
        "{}",
        text(&o)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed by tests/bootstrap.sh");
    assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
}

/// The newest manifest file under `dst`.
fn newest_manifest(dst: &Path) -> std::path::PathBuf {
    let mut names: Vec<_> = std::fs::read_dir(dst.join(".ferry/manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names.pop().unwrap()
}

/// Someone who holds the KEK (an operator of the platform, a run) can make a
/// manifest whose MAC verifies; a signed record lets an auditor, who holds
/// only the public key, tell it from one a run signed. Keys made by openssl.
#[test]
fn a_kek_holder_forging_a_record_is_caught_by_the_public_key_alone() {
    let dir = setup();
    let d = dir.path();
    assert!(
        runner(d, &["keygen", "--out", "secrets/kek/kek"])
            .status
            .success()
    );
    // A run from before signing was turned on.
    let o = run_local(d, &["--run-id", "r1"]);
    assert!(o.status.success(), "{}", text(&o));

    std::fs::create_dir_all(d.join("secrets/signing")).unwrap();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            "secrets/signing/signing-key",
        ],
    );
    openssl(
        d,
        &[
            "pkey",
            "-in",
            "secrets/signing/signing-key",
            "-pubout",
            "-out",
            "auditor.pub",
        ],
    );
    let signed = CONNECTOR.replace(
        "encryption: {keyRef: {secretRef: {name: kek}, key: kek}}",
        "encryption: {keyRef: {secretRef: {name: kek}, key: kek}, signingKeyRef: {secretRef: {name: signing}}}",
    );
    std::fs::write(d.join("connector.yaml"), &signed).unwrap();
    std::fs::write(d.join("src/c.csv"), "id\n3\n").unwrap();
    let o = run_local(d, &["--run-id", "r2"]);
    assert!(o.status.success(), "{}", text(&o));
    let key = std::fs::read_to_string(d.join("secrets/signing/signing-key")).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(!text(&o).contains(body), "the run printed the signing key");

    let auditor = |extra: &[&str]| {
        let mut args = vec!["verify", "--public-key", "auditor.pub", "--dir", "dst"];
        args.extend(extra);
        runner(d, &args)
    };
    let o = auditor(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ok: 3 object(s)"), "{}", text(&o));
    assert!(
        text(&o).contains("1 manifest(s) signed; 1 older unsigned manifest(s) not checked"),
        "{}",
        text(&o)
    );
    // One byte of the signed record changed: caught, the manifest named.
    let newest = newest_manifest(&d.join("dst"));
    let original = std::fs::read_to_string(&newest).unwrap();
    let altered = original.replacen("\"count\": 3,", "\"count\": 4,", 1);
    assert_ne!(altered, original);
    std::fs::write(&newest, altered).unwrap();
    let o = auditor(&[]);
    assert!(!o.status.success());
    let name = newest.file_name().unwrap().to_str().unwrap();
    assert!(
        text(&o).contains("signature does not verify") && text(&o).contains(name),
        "{}",
        text(&o)
    );
    std::fs::write(&newest, &original).unwrap();
    // Another key is not this one.
    assert!(
        runner(d, &["keygen", "--signing", "--out", "other.pem"])
            .status
            .success()
    );
    let o = runner(
        d,
        &["verify", "--public-key", "other.pem.pub", "--dir", "dst"],
    );
    assert!(
        text(&o).contains("not among the public keys"),
        "{}",
        text(&o)
    );

    // The forgery: the KEK holder writes the next record without the signing
    // key. Its MAC verifies; the auditor refuses it.
    std::fs::write(d.join("connector.yaml"), CONNECTOR).unwrap();
    std::fs::write(d.join("src/d.csv"), "id\n4\n").unwrap();
    let o = run_local(d, &["--run-id", "r3"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = runner(d, &["verify", "--kek", "secrets/kek/kek", "--dir", "dst"]);
    assert!(
        o.status.success(),
        "the MAC alone cannot tell: {}",
        text(&o)
    );
    let o = auditor(&[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("is not signed"), "{}", text(&o));
    std::fs::remove_file(newest_manifest(&d.join("dst"))).unwrap();
    std::fs::remove_file(d.join("dst/d.csv")).unwrap();

    // An erasure signs again every manifest it rewrites; the record still
    // verifies with the public key, deep with the KEK too.
    std::fs::write(d.join("connector.yaml"), &signed).unwrap();
    let o = run_local(
        d,
        &["--run-id", "e1", "--mode", "erase", "--erase-key", "a.csv"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = auditor(&["--kek", "secrets/kek/kek", "--deep"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ok: 2 object(s)"), "{}", text(&o));
    assert!(text(&o).contains("0 older unsigned"), "{}", text(&o));
    let o = auditor(&["--deep"]);
    assert!(
        text(&o).contains("--deep needs the key-encryption key"),
        "{}",
        text(&o)
    );
}

/// The runner's audit lines used to live only in its pod's log, gone with the
/// pod. They are now stored with the records they describe: encrypted at the
/// destination, listed in the manifest, so that deleting or swapping them is
/// found by `verify`.
#[test]
fn a_runs_audit_lines_outlive_it_at_the_destination_and_cannot_be_swapped_unseen() {
    let dir = setup();
    let d = dir.path();
    assert!(
        runner(d, &["keygen", "--out", "secrets/kek/kek"])
            .status
            .success()
    );
    let o = run_local(d, &["--run-id", "r1", "--audit-log", "r1.audit"]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(d.join("src/c.csv"), "id\n3\n").unwrap();
    let o = run_local(d, &["--run-id", "r2", "--audit-log", "r2.audit"]);
    assert!(o.status.success(), "{}", text(&o));

    let stored: Vec<_> = std::fs::read_dir(d.join("dst/.ferry/audit"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
    let plain_text = std::fs::read(d.join("dst/.ferry/audit").join(&stored[0])).unwrap();
    assert!(
        !String::from_utf8_lossy(&plain_text).contains("object.copy"),
        "the stored copy is encrypted"
    );
    // Decrypted with the records: the lines of run r2 as it wrote them, up to
    // its manifest, a chain that verifies.
    let o = runner(
        d,
        &[
            "decrypt",
            "--kek",
            "secrets/kek/kek",
            "--dir",
            "dst",
            "--out",
            "plain",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let copies: Vec<_> = std::fs::read_dir(d.join("plain/.ferry/audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "the newest manifest lists its own run's copy"
    );
    let copy = std::fs::read_to_string(&copies[0]).unwrap();
    let full = std::fs::read_to_string(d.join("r2.audit")).unwrap();
    assert!(
        full.starts_with(&copy),
        "the copy is the log, byte for byte"
    );
    assert!(copy.contains(r#""action":"run.started""#) && copy.contains(r#""object":"c.csv""#));
    let o = runner(d, &["audit", "verify", copies[0].to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    let verify = || {
        runner(
            d,
            &[
                "verify",
                "--kek",
                "secrets/kek/kek",
                "--dir",
                "dst",
                "--deep",
            ],
        )
    };
    assert!(verify().status.success(), "{}", text(&verify()));
    // Swapped: r1's copy put in place of r2's.
    let mut names = stored.clone();
    names.sort();
    let (older, newer) = (
        d.join("dst/.ferry/audit").join(&names[0]),
        d.join("dst/.ferry/audit").join(&names[1]),
    );
    let kept = std::fs::read(&newer).unwrap();
    std::fs::copy(&older, &newer).unwrap();
    let o = verify();
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&format!("object \".ferry/audit/{}\"", names[1])),
        "{}",
        text(&o)
    );
    // Deleted.
    std::fs::remove_file(&newer).unwrap();
    let o = verify();
    assert!(
        text(&o).contains("listed in the manifest but missing"),
        "{}",
        text(&o)
    );
    std::fs::write(&newer, kept).unwrap();
    assert!(verify().status.success());
}
