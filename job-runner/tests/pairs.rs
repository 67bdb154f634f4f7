//! Every source/destination pair of the real servers moves a tree of mixed
//! sizes, encrypted; decrypting gives back identical bytes; a second run copies
//! nothing; a changed object is copied again. Connectors are read from YAML and
//! credentials from a secrets folder, as in local mode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ferry_runner::audit::AuditLog;
use ferry_runner::config::{self, SecretsDir};
use ferry_runner::crypto::KeyRing;
use ferry_runner::readback;
use ferry_runner::storage::local::LocalStore;
use ferry_runner::storage::{ObjectStore, StorageError};
use ferry_runner::transfer::{self, Mode, Options, Progress};
use futures::StreamExt;
use support::{AZURITE_DEV_KEY, create_azurite_container, service_env};

fn unique() -> String {
    let mut b = [0u8; 4];
    ferry_runner::crypto::aead::random_bytes(&mut b).unwrap();
    hex::encode(b)
}

/// The YAML of one end, and the secrets it needs written under `secrets`.
fn endpoint(kind: &str, secrets: &Path, scratch: &Path) -> String {
    match kind {
        "s3" => {
            let bucket = format!("pairs-{}", unique());
            let out = std::process::Command::new("curl")
                .args([
                    "-sf",
                    "-X",
                    "PUT",
                    &format!("{}/{bucket}", service_env("FERRY_S3_ENDPOINT")),
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "create bucket");
            std::fs::create_dir_all(secrets.join("s3")).unwrap();
            std::fs::write(secrets.join("s3/accessKeyId"), "testing").unwrap();
            std::fs::write(secrets.join("s3/secretAccessKey"), "testing\n").unwrap();
            format!(
                "s3: {{bucket: {bucket}, prefix: data/, region: us-east-1, endpoint: \"{}\", forcePathStyle: true, insecurePlainHttpOnLoopback: true, credentials: {{secretRef: {{name: s3}}}}}}",
                service_env("FERRY_S3_ENDPOINT")
            )
        }
        "azure" => {
            let container = format!("pairs-{}", unique());
            create_azurite_container(&container);
            std::fs::create_dir_all(secrets.join("az")).unwrap();
            std::fs::write(secrets.join("az/accountKey"), AZURITE_DEV_KEY).unwrap();
            format!(
                "azureBlob: {{account: devstoreaccount1, container: {container}, prefix: data/, region: westeurope, endpoint: \"{}\", insecurePlainHttpOnLoopback: true, credentials: {{secretRef: {{name: az}}}}}}",
                service_env("FERRY_AZURITE_ENDPOINT")
            )
        }
        "sftp" => {
            std::fs::create_dir_all(secrets.join("ssh")).unwrap();
            std::fs::write(secrets.join("ssh/username"), service_env("FERRY_SFTP_USER")).unwrap();
            std::fs::copy(
                service_env("FERRY_SFTP_KEY"),
                secrets.join("ssh/privateKey"),
            )
            .unwrap();
            std::fs::create_dir_all(secrets.join("hostkey")).unwrap();
            std::fs::copy(
                service_env("FERRY_SFTP_HOST_KEY"),
                secrets.join("hostkey/knownHosts"),
            )
            .unwrap();
            format!(
                "sftp: {{host: \"{}\", port: {}, path: pairs-{}/data, region: eu-west-1, credentials: {{secretRef: {{name: ssh}}}}, hostKey: {{secretRef: {{name: hostkey}}}}}}",
                service_env("FERRY_SFTP_HOST"),
                service_env("FERRY_SFTP_PORT"),
                unique()
            )
        }
        "local" => {
            let dir = scratch.join(format!("local-{}", unique()));
            format!("local: {{path: \"{}\"}}", dir.display())
        }
        other => panic!("unknown backend {other}"),
    }
}

fn tree() -> Vec<(String, Vec<u8>)> {
    vec![
        ("empty.csv".into(), vec![]),
        ("small.csv".into(), b"id,country\n1,FR\n".to_vec()),
        ("nested/a b/ünï.json".into(), br#"{"k":"v"}"#.to_vec()),
        (
            "big/multipart.bin".into(),
            (0..(17 << 20) + 3)
                .map(|i: usize| (i % 251) as u8)
                .collect(),
        ),
    ]
}

async fn put(store: &dyn ObjectStore, key: &str, data: Vec<u8>) {
    let body =
        futures::stream::once(async move { Ok::<_, StorageError>(Bytes::from(data)) }).boxed();
    store.put(key, body).await.unwrap();
}

async fn pair(src_kind: &str, dst_kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let secrets_path = dir.path().join("secrets");
    std::fs::create_dir_all(secrets_path.join("kek")).unwrap();
    std::fs::write(secrets_path.join("kek/kek"), [0x2au8; 32]).unwrap();
    let yaml = format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: Connector\nmetadata: {{name: pair, namespace: t}}\nspec:\n  source: {{{}}}\n  destination: {{{}}}\n  compliance: {{dataResidency: any}}\n  encryption: {{keyRef: {{secretRef: {{name: kek}}}}}}\n",
        endpoint(src_kind, &secrets_path, dir.path()),
        endpoint(dst_kind, &secrets_path, dir.path()),
    );
    let file = dir.path().join("connector.yaml");
    std::fs::write(&file, yaml).unwrap();
    let connector = config::load_connector(&file).unwrap();
    let secrets = SecretsDir::new(&secrets_path);
    let platform = config::Platform::default();
    let src = config::open_store(
        "source",
        &connector.spec.source,
        dir.path(),
        &secrets,
        &platform,
    )
    .unwrap();
    let dst = config::open_store(
        "destination",
        &connector.spec.destination,
        dir.path(),
        &secrets,
        &platform,
    )
    .unwrap();
    for (k, v) in tree() {
        put(src.as_ref(), &k, v).await;
    }
    let keys = Arc::new(KeyRing::new(vec![secrets.kek(&connector).unwrap()]));
    let audit = AuditLog::new(
        Box::new(std::io::sink()),
        "pair",
        "t",
        "run",
        &src.describe(),
        &dst.describe(),
    );
    let run = |id: &str| Options {
        mode: Mode::Sync,
        run_id: id.into(),
        ..Options::default()
    };

    let r1 = transfer::run(
        &connector.spec,
        src.clone(),
        dst.clone(),
        keys.clone(),
        &run("r1"),
        &audit,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("{src_kind} -> {dst_kind}: {e}"));
    assert_eq!(r1.objects_copied, 4, "{src_kind} -> {dst_kind}");

    // Stored encrypted, verified, and decrypted back to the same bytes.
    readback::verify(dst.as_ref(), keys.clone(), None, true)
        .await
        .unwrap();
    let out = LocalStore::new(dir.path().join("decrypted"));
    readback::decrypt_all(dst.as_ref(), keys.clone(), None, &out)
        .await
        .unwrap();
    for (k, v) in tree() {
        assert_eq!(
            std::fs::read(dir.path().join("decrypted").join(&k)).unwrap(),
            v,
            "{src_kind} -> {dst_kind}: {k}"
        );
    }

    let r2 = transfer::run(
        &connector.spec,
        src.clone(),
        dst.clone(),
        keys.clone(),
        &run("r2"),
        &audit,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert_eq!(
        (r2.objects_copied, r2.objects_skipped),
        (0, 4),
        "{src_kind} -> {dst_kind}: second run"
    );

    put(
        src.as_ref(),
        "small.csv",
        b"id,country\n1,FR\n2,DE\n".to_vec(),
    )
    .await;
    let r3 = transfer::run(
        &connector.spec,
        src.clone(),
        dst.clone(),
        keys.clone(),
        &run("r3"),
        &audit,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert_eq!(
        (r3.objects_copied, r3.objects_skipped),
        (1, 3),
        "{src_kind} -> {dst_kind}: changed object"
    );
    readback::verify(dst.as_ref(), keys, None, true)
        .await
        .unwrap();
}

#[tokio::test]
async fn s3_to_azure() {
    pair("s3", "azure").await;
}

#[tokio::test]
async fn azure_to_s3() {
    pair("azure", "s3").await;
}

#[tokio::test]
async fn s3_to_s3() {
    pair("s3", "s3").await;
}

#[tokio::test]
async fn sftp_to_s3() {
    pair("sftp", "s3").await;
}

#[tokio::test]
async fn azure_to_sftp() {
    pair("azure", "sftp").await;
}

#[tokio::test]
async fn s3_to_sftp_and_sftp_to_azure() {
    pair("s3", "sftp").await;
    pair("sftp", "azure").await;
}

#[tokio::test]
async fn local_to_azure_and_s3_to_local() {
    pair("local", "azure").await;
    pair("s3", "local").await;
}
