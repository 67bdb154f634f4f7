//! The storage conformance suite: what every backend must do, run against each
//! one: local folders, and S3, Azure Blob and SFTP on the real servers (moto,
//! Azurite, OpenSSH) that `tests/bootstrap.sh` starts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;
use support::{AZURITE_DEV_KEY, create_azurite_container, service_env};

use std::sync::Arc;

use bytes::Bytes;
use ferry_runner::storage::local::LocalStore;
use ferry_runner::storage::{ByteStream, ObjectStore, StorageError};
use futures::StreamExt;

fn body(data: Vec<u8>, chunk: usize) -> ByteStream {
    let chunks: Vec<Result<Bytes, StorageError>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

async fn read(store: &dyn ObjectStore, key: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut s = store.get(key, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

/// Runs the whole suite against an empty store.
async fn conformance(store: Arc<dyn ObjectStore>) {
    let s = store.as_ref();

    // Nested keys, unicode and spaces, an empty object, a multi-part object.
    let big: Vec<u8> = (0..(20 << 20) + 12345)
        .map(|i: usize| (i % 241) as u8)
        .collect();
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"alpha".to_vec()),
        ("empty", vec![]),
        ("dir/sub dir/ünï cödé.csv", b"x,y\n".to_vec()),
        ("dir/big.bin", big.clone()),
        // Sorts before "dir/...": '-' comes before '/', whatever a walk of
        // folders would find first.
        ("dir-b.txt", b"b".to_vec()),
    ];
    for (k, v) in &objects {
        let n = s.put(k, body(v.clone(), 65536)).await.unwrap();
        assert_eq!(n, v.len() as u64, "{k}");
    }
    for (k, v) in &objects {
        assert_eq!(&read(s, k, None).await, v, "{k}");
    }

    // Listing: sorted, relative keys, sizes.
    let listed = s.list().await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "a.txt",
            "dir-b.txt",
            "dir/big.bin",
            "dir/sub dir/ünï cödé.csv",
            "empty"
        ]
    );
    assert_eq!(listed[2].size, big.len() as u64);
    // Streamed from a folder: only what is under it, in the same order; a
    // folder that is not there lists nothing.
    let under = |prefix: &'static str| async move {
        s.list_from(prefix)
            .map(|o| o.unwrap().key)
            .collect::<Vec<_>>()
            .await
    };
    assert_eq!(
        under("dir/").await,
        ["dir/big.bin", "dir/sub dir/ünï cödé.csv"]
    );
    assert!(under(".ferry/segments/").await.is_empty());
    assert!(
        listed.iter().all(|o| o.modified.is_some()),
        "last-modified is reported"
    );

    // Ranged reads.
    assert_eq!(read(s, "dir/big.bin", Some(10..20)).await, big[10..20]);
    assert_eq!(
        read(s, "dir/big.bin", Some((8 << 20) - 5..(8 << 20) + 5)).await,
        big[(8 << 20) - 5..(8 << 20) + 5]
    );
    assert_eq!(read(s, "a.txt", Some(3..100)).await, b"ha");

    // Overwrite replaces the whole object.
    s.put("a.txt", body(b"A".to_vec(), 1)).await.unwrap();
    assert_eq!(read(s, "a.txt", None).await, b"A");

    // Atomicity: a write whose source fails midway leaves nothing visible, and
    // does not disturb the object it would have replaced. 18 MiB come first, so
    // multipart uploads have parts in flight and done when the source fails.
    for key in ["never.bin", "a.txt"] {
        let mut chunks: Vec<Result<Bytes, StorageError>> = (0..6)
            .map(|_| Ok(Bytes::from(vec![1u8; 3 << 20])))
            .collect();
        chunks.push(Err(StorageError::Source {
            endpoint: "test".into(),
            key: key.into(),
            reason: "cut".into(),
        }));
        let failing = futures::stream::iter(chunks).boxed();
        assert!(s.put(key, failing).await.is_err());
    }
    let keys: Vec<String> = s.list().await.unwrap().into_iter().map(|o| o.key).collect();
    assert!(
        !keys.contains(&"never.bin".to_string()),
        "a failed write is visible: {keys:?}"
    );
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert_eq!(read(s, "a.txt", None).await, b"A");

    // Errors: a missing object, invalid keys.
    let missing = s
        .get("nope/missing", None)
        .await
        .err()
        .expect("missing object read");
    assert!(
        matches!(missing, StorageError::NotFound { .. }),
        "{missing}"
    );
    assert!(missing.to_string().contains("nope/missing"));
    for bad in ["", "../escape", "a//b", "/abs"] {
        assert!(
            matches!(
                s.put(bad, body(vec![1], 1)).await,
                Err(StorageError::InvalidKey { .. })
            ),
            "{bad:?}"
        );
    }

    // Delete, idempotent.
    s.delete("dir/big.bin").await.unwrap();
    s.delete("dir/big.bin").await.unwrap();
    assert!(s.get("dir/big.bin", None).await.is_err());

    // Pagination: more objects than one page of any store (S3 lists 1000).
    for i in 0..1100 {
        s.put(&format!("many/{i:05}"), body(vec![i as u8], 1))
            .await
            .unwrap();
    }
    let many = s
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.key.starts_with("many/"))
        .count();
    assert_eq!(many, 1100);
}

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(LocalStore::new(dir.path().join("root")))).await;
    // Nothing but the objects is left behind.
    let mut tmp = 0;
    for e in walk(dir.path()) {
        if e.contains(".ferry-tmp-") {
            tmp += 1;
        }
    }
    assert_eq!(tmp, 0, "temporary files left");
}

#[tokio::test]
async fn local_store_reports_a_missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("absent"));
    let err = store.list().await.unwrap_err();
    assert!(matches!(err, StorageError::NoSuchContainer { .. }), "{err}");
    assert!(err.to_string().contains("absent"), "{err}");
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.to_string_lossy().into_owned());
        }
    }
    out
}

/// An endpoint of a test server started by `tests/bootstrap.sh`. Missing means
/// the bootstrap did not run: a failure, not a skip.
fn unique(prefix: &str) -> String {
    let mut b = [0u8; 4];
    ferry_runner::crypto::aead::random_bytes(&mut b).unwrap();
    format!("{prefix}-{}", hex::encode(b))
}

mod s3 {
    use super::*;
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
    use ferry_runner::storage::s3::{S3Auth, S3Config, S3Store};

    /// A plain SDK client on moto, to check what the store left behind.
    fn client(region: &str) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .endpoint_url(service_env("FERRY_S3_ENDPOINT"))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub async fn bucket(region: &str) -> String {
        let client = client(region);
        let name = unique("ferry-test");
        client
            .create_bucket()
            .bucket(&name)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        name
    }

    pub fn config(bucket: &str, prefix: &str, region: &str) -> S3Config {
        support::moto_s3_config(service_env("FERRY_S3_ENDPOINT"), bucket, prefix, region)
    }

    #[tokio::test]
    async fn s3_store_conforms() {
        let bucket = bucket("eu-west-1").await;
        let store = S3Store::new(config(&bucket, "tenant/prefix/", "eu-west-1")).unwrap();
        assert_eq!(store.region().await.unwrap().as_deref(), Some("eu-west-1"));
        conformance(Arc::new(store)).await;
        // The store stayed inside its prefix: a neighbour prefix sees nothing.
        let other = S3Store::new(config(&bucket, "tenant/other/", "eu-west-1")).unwrap();
        assert!(other.list().await.unwrap().is_empty());
        // The failed multipart writes were aborted, not left half-done.
        let uploads = client("eu-west-1")
            .list_multipart_uploads()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
    }

    /// Web identity: the projected token is exchanged with STS (moto serves STS
    /// on the same endpoint) for short-lived keys; no Secret is involved.
    #[tokio::test]
    async fn s3_web_identity() {
        let bucket = bucket("eu-west-1").await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(
            &token,
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dDpydW4ifQ.c2ln\n",
        )
        .unwrap();
        let mut cfg = config(&bucket, "wi/", "eu-west-1");
        cfg.auth = S3Auth::WebIdentity {
            role_arn: "arn:aws:iam::123456789012:role/ferry-run".into(),
            token_file: token.clone(),
            session_name: "ferry-test".into(),
            sts_endpoint: Some(service_env("FERRY_S3_ENDPOINT")),
            run_ends: None,
        };
        let store = S3Store::new(cfg.clone()).unwrap();
        store
            .put("a", body(b"web identity".to_vec(), 4))
            .await
            .unwrap();
        assert_eq!(read(&store, "a", None).await, b"web identity");
        // A run's session ends with it: with the run due to end in a minute,
        // STS is asked for its shortest session (15 minutes), not an hour.
        for (run_ends, longest) in [
            (Some(std::time::Duration::from_secs(60)), 900 + 30),
            (None, 3600 + 30),
        ] {
            let provider = ferry_runner::storage::s3::web_identity_provider(
                "arn:aws:iam::123456789012:role/ferry-run",
                token.clone(),
                "ferry-test",
                "eu-west-1",
                Some(&service_env("FERRY_S3_ENDPOINT")),
                &ferry_runner::net::NetworkGuard::default(),
                run_ends.map(|d| std::time::Instant::now() + d),
            )
            .unwrap();
            let creds =
                aws_credential_types::provider::ProvideCredentials::provide_credentials(&provider)
                    .await
                    .unwrap();
            let left = creds
                .expiry()
                .unwrap()
                .duration_since(std::time::SystemTime::now())
                .unwrap()
                .as_secs();
            assert!(
                left <= longest && left + 120 >= longest - 30,
                "{run_ends:?}: {left}s"
            );
        }
        // No token file: the failure says so, and is not an endless retry.
        std::fs::remove_file(&token).unwrap();
        let fresh = S3Store::new(cfg).unwrap();
        let err = fresh.list().await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidCredentials { .. }),
            "{err}"
        );
        assert!(!err.is_transient(), "{err}");
    }

    fn sync_spec() -> ferry_crds::ConnectorSpec {
        serde_saphyr::from_str(
            "source: {local: {path: src}}\ndestination: {local: {path: dst}}\nencryption: {keyRef: {secretRef: {name: k}}}\ncompliance: {dataResidency: any}\n",
        )
        .unwrap()
    }

    /// Copies `src` to `dst` (sync), or erases `erase` there, as run `run`;
    /// the report and the audit lines.
    async fn step(
        src: &std::path::Path,
        dst: &S3Store,
        run: &str,
        erase: Option<&str>,
    ) -> (ferry_runner::transfer::Report, Vec<serde_json::Value>) {
        use ferry_runner::transfer::{self, Mode, Options, Progress};
        let lines = support::Lines::default();
        let audit = ferry_runner::audit::AuditLog::new(
            Box::new(lines.clone()),
            "c",
            "t",
            run,
            "local:src",
            "s3:dst",
        );
        let keys = Arc::new(ferry_runner::crypto::KeyRing::new(vec![
            ferry_runner::crypto::Kek::from_bytes([5; 32]),
        ]));
        let src: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(src));
        let dst: Arc<dyn ObjectStore> = Arc::new(dst.clone());
        let mut opts = Options {
            mode: Mode::Sync,
            run_id: run.into(),
            ..Options::default()
        };
        let report = match erase {
            None => transfer::run(
                &sync_spec(),
                src,
                dst,
                keys,
                &opts,
                &audit,
                Arc::new(Progress::default()),
            )
            .await
            .unwrap(),
            Some(key) => {
                opts.mode = Mode::Erase;
                let request = transfer::EraseRequest {
                    keys: vec![key.into()],
                    from_source: false,
                };
                transfer::erase(src, dst, keys, &request, &opts, &audit)
                    .await
                    .unwrap()
            }
        };
        (report, lines.records())
    }

    /// The versions of `key` (and its delete markers) the bucket keeps.
    async fn versions_of(bucket: &str, key: &str) -> (usize, usize) {
        let out = client("eu-west-1")
            .list_object_versions()
            .bucket(bucket)
            .prefix(key)
            .send()
            .await
            .unwrap();
        (
            out.versions()
                .iter()
                .filter(|v| v.key() == Some(key))
                .count(),
            out.delete_markers()
                .iter()
                .filter(|m| m.key() == Some(key))
                .count(),
        )
    }

    /// Attack (on the record): a versioned destination, as the docs
    /// recommend, keeps every earlier version. An erasure deleted the current
    /// object and rewrote the manifests, and both copies of the erased file
    /// and the manifests listing it stayed one `GetObject?versionId=` away.
    /// Now the erasure deletes the earlier versions of what it erases and
    /// rewrites; where the bucket refuses (object lock), the result and the
    /// audit trail say so.
    #[tokio::test]
    async fn an_erasure_leaves_no_earlier_version_on_a_versioned_bucket() {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        let bucket = bucket("eu-west-1").await;
        client("eu-west-1")
            .put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let dst = S3Store::new(config(&bucket, "dst/", "eu-west-1")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.csv"), b"id,email\n1,a@example.com\n").unwrap();
        std::fs::write(src.join("b.csv"), b"id\n2\n").unwrap();
        step(&src, &dst, "r1", None).await;
        // A second copy of a.csv: two versions of its ciphertext.
        std::fs::write(src.join("a.csv"), b"id,email\n1,a2@example.com\n").unwrap();
        step(&src, &dst, "r2", None).await;
        assert_eq!(versions_of(&bucket, "dst/a.csv").await, (2, 0));
        let (report, lines) = step(&src, &dst, "e1", Some("a.csv")).await;
        assert_eq!(report.erase_incomplete, None, "{report:?}");
        assert!(report.versions_deleted >= 2, "{report:?}");
        // Nothing of a.csv is left but the delete marker.
        assert_eq!(versions_of(&bucket, "dst/a.csv").await, (0, 1));
        // Each rewritten manifest and replaced segment is left as it is now,
        // with no earlier version listing the erased key.
        let records = client("eu-west-1")
            .list_object_versions()
            .bucket(&bucket)
            .prefix("dst/.ferry/")
            .send()
            .await
            .unwrap();
        let mut per_key = std::collections::BTreeMap::<String, usize>::new();
        for v in records.versions() {
            *per_key.entry(v.key().unwrap().to_string()).or_default() += 1;
        }
        assert!(per_key.values().all(|n| *n == 1), "{per_key:?}");
        let earlier: Vec<_> = lines
            .iter()
            .filter(|l| l["action"] == "object.erase" && l["reason"] == "EarlierVersions")
            .map(|l| l["object"].as_str().unwrap().to_string())
            .collect();
        assert!(earlier.contains(&"a.csv".to_string()), "{earlier:?}");
        assert!(
            earlier.iter().any(|k| k.starts_with(".ferry/manifests/")),
            "{earlier:?}"
        );
        // Control: b.csv, not erased, keeps its one version.
        assert_eq!(versions_of(&bucket, "dst/b.csv").await, (1, 0));
    }

    /// Where the bucket keeps versions under object lock, the erasure cannot
    /// delete them: it says so in its result and its audit trail, naming the
    /// objects, instead of reporting a complete erasure.
    #[tokio::test]
    async fn an_erasure_says_what_an_object_lock_kept() {
        use aws_sdk_s3::types::{
            DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
            ObjectLockRule,
        };
        let c = client("eu-west-1");
        let bucket = unique("ferry-locked");
        c.create_bucket()
            .bucket(&bucket)
            .object_lock_enabled_for_bucket(true)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from("eu-west-1"))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        c.put_object_lock_configuration()
            .bucket(&bucket)
            .object_lock_configuration(
                ObjectLockConfiguration::builder()
                    .object_lock_enabled(ObjectLockEnabled::Enabled)
                    .rule(
                        ObjectLockRule::builder()
                            .default_retention(
                                DefaultRetention::builder()
                                    .mode(ObjectLockRetentionMode::Compliance)
                                    .days(1)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let dst = S3Store::new(config(&bucket, "dst/", "eu-west-1")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.csv"), b"id,email\n1,a@example.com\n").unwrap();
        step(&src, &dst, "r1", None).await;
        let (report, lines) = step(&src, &dst, "e1", Some("a.csv")).await;
        let left = report
            .erase_incomplete
            .expect("an incomplete erasure is said");
        assert!(
            left.contains("a.csv") && left.contains("object lock"),
            "{left}"
        );
        let kept: Vec<_> = lines
            .iter()
            .filter(|l| l["action"] == "object.erase" && l["reason"] == "VersionsKept")
            .map(|l| l["object"].as_str().unwrap().to_string())
            .collect();
        assert!(kept.contains(&"a.csv".to_string()), "{kept:?}");
    }

    #[tokio::test]
    async fn s3_errors_name_the_endpoint() {
        let missing = S3Store::new(config("no-such-bucket-ferry", "", "eu-west-1")).unwrap();
        let err = missing.list().await.unwrap_err();
        assert!(matches!(err, StorageError::NoSuchContainer { .. }), "{err}");
        assert!(
            err.to_string().contains("s3://no-such-bucket-ferry/"),
            "{err}"
        );
        let mut plain = config("b", "", "eu-west-1");
        plain.insecure_plain_http_on_loopback = false;
        let err = S3Store::new(plain).unwrap_err();
        assert!(
            err.to_string().contains("insecurePlainHttpOnLoopback"),
            "{err}"
        );
        let mut down = config("b", "", "eu-west-1");
        down.endpoint = Some("http://127.0.0.1:9".into());
        let err = S3Store::new(down).unwrap().list().await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }
}

mod azure {
    use super::*;
    use ferry_runner::storage::azure::{AzureAuth, AzureConfig, AzureStore};
    use zeroize::Zeroizing;

    use super::AZURITE_DEV_KEY as DEV_KEY;

    pub fn config(container: &str, prefix: &str) -> AzureConfig {
        AzureConfig {
            account: "devstoreaccount1".into(),
            container: container.into(),
            prefix: prefix.into(),
            endpoint: Some(service_env("FERRY_AZURITE_ENDPOINT")),
            insecure_plain_http_on_loopback: true,
            network: Default::default(),
            auth: AzureAuth::AccountKey(Zeroizing::new(DEV_KEY.into())),
        }
    }

    /// Creates a container in Azurite with the Azure SDK for Python.
    pub async fn container() -> String {
        let name = unique("ferry-test");
        super::create_azurite_container(&name);
        name
    }

    #[tokio::test]
    async fn azure_store_conforms() {
        let container = container().await;
        let store = AzureStore::new(config(&container, "tenant/prefix/")).unwrap();
        conformance(Arc::new(store)).await;
        let other = AzureStore::new(config(&container, "tenant/other")).unwrap();
        assert!(other.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn azure_errors_name_the_endpoint_and_hide_the_key() {
        let store = AzureStore::new(config("no-such-container", "")).unwrap();
        let err = store.list().await.unwrap_err();
        assert!(matches!(err, StorageError::NoSuchContainer { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("azure://devstoreaccount1/no-such-container"),
            "{err}"
        );
        let container = container().await;
        let mut wrong = config(&container, "");
        wrong.auth = AzureAuth::AccountKey(Zeroizing::new(
            "Q0FOQVJZLWtleS1DQU5BUlkta2V5LUNBTkFSWQ==".into(),
        ));
        let err = AzureStore::new(wrong).unwrap().list().await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidCredentials { .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("Q0FOQVJZ"), "{err}");
    }
}

mod sftp {
    use super::*;
    use ferry_runner::storage::sftp::{HostKeyCheck, SftpAuth, SftpConfig, SftpStore};
    use zeroize::Zeroizing;

    pub fn config(path: &str) -> SftpConfig {
        let host_key = std::fs::read_to_string(service_env("FERRY_SFTP_HOST_KEY")).unwrap();
        SftpConfig {
            host: service_env("FERRY_SFTP_HOST"),
            port: service_env("FERRY_SFTP_PORT").parse().unwrap(),
            path: path.into(),
            username: service_env("FERRY_SFTP_USER"),
            auth: SftpAuth::Key {
                private_key: Zeroizing::new(
                    std::fs::read_to_string(service_env("FERRY_SFTP_KEY")).unwrap(),
                ),
                passphrase: None,
            },
            host_key: HostKeyCheck::from_known_hosts(&host_key).expect("host key parses"),
            network: Default::default(),
        }
    }

    #[tokio::test]
    async fn sftp_store_conforms() {
        let root = unique("tenant");
        conformance(Arc::new(SftpStore::new(config(&format!("{root}/prefix"))))).await;
        let other = SftpStore::new(config(&format!("{root}/other")));
        assert!(matches!(
            other.list().await,
            Err(StorageError::NoSuchContainer { .. })
        ));
        // Nothing half-written stays behind on the server.
        let leftovers: Vec<_> =
            walk(&std::path::Path::new(&service_env("FERRY_SFTP_ROOT")).join(&root))
                .into_iter()
                .filter(|p| p.contains(".ferry-tmp-"))
                .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn sftp_verifies_the_host_key_and_credentials() {
        // A pinned fingerprint of the right key works.
        let pub_line = std::fs::read_to_string(service_env("FERRY_SFTP_HOST_KEY")).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .args(["-lf", &service_env("FERRY_SFTP_HOST_KEY")])
            .output()
            .unwrap();
        let fingerprint = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        let mut pinned = config(".");
        pinned.host_key = HostKeyCheck::Fingerprint(fingerprint);
        SftpStore::new(pinned).list().await.unwrap();
        assert!(pub_line.starts_with("ssh-ed25519 "));

        // Another key is refused before authentication, with what was presented.
        let mut wrong = config(".");
        wrong.host_key =
            HostKeyCheck::Fingerprint("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into());
        let err = SftpStore::new(wrong).list().await.unwrap_err();
        assert!(matches!(err, StorageError::HostKeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("SHA256:"), "{err}");

        // A client key the server does not know: invalid credentials, no key in the message.
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success());
        let private = std::fs::read_to_string(&key).unwrap();
        let mut stranger = config(".");
        stranger.auth = SftpAuth::Key {
            private_key: Zeroizing::new(private.clone()),
            passphrase: None,
        };
        let err = SftpStore::new(stranger).list().await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidCredentials { .. }),
            "{err}"
        );
        assert!(
            !err.to_string().contains(private.lines().nth(1).unwrap()),
            "{err}"
        );

        // Nobody listening: unreachable, transient.
        let mut down = config(".");
        down.port = 9;
        let err = SftpStore::new(down).list().await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }
}
