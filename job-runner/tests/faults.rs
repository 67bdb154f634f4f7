//! Faults against the real test services: a connection cut mid-transfer (a
//! loopback proxy in front of the S3 test server drops the first upload that
//! passes a threshold), a listing page refused again and again (another proxy
//! answers 503), a server that is gone, and credentials that may read
//! but not write (an Azurite SAS token with read and list only).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_crds::ConnectorSpec;
use ferry_runner::audit::AuditLog;
use ferry_runner::crypto::{Kek, KeyRing};
use ferry_runner::job::Failure;
use ferry_runner::readback;
use ferry_runner::storage::ObjectStore;
use ferry_runner::storage::azure::{AzureAuth, AzureConfig, AzureStore};
use ferry_runner::storage::local::LocalStore;
use ferry_runner::storage::s3::{ReadTuning, S3Store};
use ferry_runner::transfer::{self, Options, Progress, Report, TransferError};
use futures::StreamExt;
use support::{Lines, create_azurite_container_with_sas, moto_s3_config, service_env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

fn keys() -> Arc<KeyRing> {
    Arc::new(KeyRing::new(vec![Kek::from_bytes([6; 32])]))
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 4];
    ferry_runner::crypto::aead::random_bytes(&mut b).unwrap();
    format!("{prefix}-{}", hex::encode(b))
}

/// A source folder with one 3 MiB object and two small ones.
fn source() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..3 * (1 << 20)).map(|i: usize| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), big).unwrap();
    std::fs::write(dir.path().join("a.csv"), b"id\n1\n").unwrap();
    std::fs::write(dir.path().join("b.csv"), b"id\n2\n").unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
    (dir, store)
}

async fn sync(
    src: Arc<dyn ObjectStore>,
    dst: Arc<dyn ObjectStore>,
    lines: &Lines,
) -> Result<Report, TransferError> {
    let spec: ConnectorSpec = serde_saphyr::from_str(
        "source: {local: {path: s}}\ndestination: {local: {path: d}}\nencryption: {keyRef: {secretRef: {name: k}}}\ncompliance: {dataResidency: any}\n",
    )
    .unwrap();
    let audit = AuditLog::new(Box::new(lines.clone()), "c", "t", "r", "local:s", "remote");
    let opts = Options {
        run_id: unique("run"),
        backoff: std::time::Duration::from_millis(50),
        concurrency: 2,
        ..Options::default()
    };
    transfer::run(
        &spec,
        src,
        dst,
        keys(),
        &opts,
        &audit,
        Arc::new(Progress::default()),
    )
    .await
}

/// A TCP proxy on loopback to `upstream` that cuts the first connection whose
/// client has sent more than `cut_after` bytes; later connections pass whole.
/// Returns its port and how many connections it cut.
async fn cutting_proxy(upstream: String, cut_after: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cuts = Arc::new(AtomicUsize::new(0));
    let counted = cuts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            let cuts = counted.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut sent = 0usize;
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        sent += n;
                        if sent > cut_after && cuts.load(Ordering::SeqCst) == 0 {
                            cuts.fetch_add(1, Ordering::SeqCst);
                            return; // drops both halves: the connection is cut
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::select! {
                    () = up => {},
                    () = down => {},
                }
            });
        }
    });
    (port, cuts)
}

/// Takes one off a count of requests in flight when the request ends.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Requests a [`listing_proxy`] saw.
#[derive(Debug, Default)]
struct Pages {
    /// Requests for the first page of a listing.
    first: AtomicUsize,
    /// Requests for a later page (with a continuation token).
    later: AtomicUsize,
    /// Of those, answered 503 by the proxy.
    refused: AtomicUsize,
    /// Listing requests being held now, and the most held at once.
    in_flight: AtomicUsize,
    most: AtomicUsize,
}

/// An HTTP proxy on loopback to `upstream`, one request to a connection (it
/// asks the server to close after answering), that answers `503 Slow Down` to
/// the first `refuse` requests for a second or later page of a listing, and
/// holds every listing request `delay` before it passes it on.
async fn listing_proxy(
    upstream: String,
    refuse: usize,
    delay: std::time::Duration,
) -> (u16, Arc<Pages>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let pages = Arc::new(Pages::default());
    let seen = pages.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let (upstream, pages) = (upstream.clone(), seen.clone());
            tokio::spawn(async move {
                // The request's head.
                let mut head = Vec::new();
                let mut buf = vec![0u8; 16 << 10];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let line = text.lines().next().unwrap_or_default().to_string();
                let listing = line.contains("list-type=2");
                if listing {
                    let now = pages.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    pages.most.fetch_max(now, Ordering::SeqCst);
                }
                if listing {
                    // Counted while held: how many the client waits for at once.
                    let counted = Counted(&pages.in_flight);
                    tokio::time::sleep(delay).await;
                    drop(counted);
                    if line.contains("continuation-token=") {
                        pages.later.fetch_add(1, Ordering::SeqCst);
                        // One page is asked for at a time.
                        if pages.refused.load(Ordering::SeqCst) < refuse {
                            pages.refused.fetch_add(1, Ordering::SeqCst);
                            let _ = client
                                .write_all(
                                    b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                                )
                                .await;
                            return;
                        }
                    } else {
                        pages.first.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let end = text.find("\r\n\r\n").unwrap_or(text.len());
                let (headers, rest) = head.split_at(end);
                let mut forwarded: Vec<u8> = String::from_utf8_lossy(headers)
                    .lines()
                    .filter(|h| !h.to_ascii_lowercase().starts_with("connection:"))
                    .flat_map(|h| [h, "\r\n"])
                    .collect::<String>()
                    .into_bytes();
                forwarded.extend_from_slice(b"Connection: close\r\n");
                forwarded.extend_from_slice(rest);
                if server.write_all(&forwarded).await.is_err() {
                    return;
                }
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                tokio::select! {
                    _ = tokio::io::copy(&mut cr, &mut sw) => {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    },
                    _ = tokio::io::copy(&mut sr, &mut cw) => {},
                }
            });
        }
    });
    (port, pages)
}

fn create_bucket(bucket: &str) {
    let created = std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "PUT"])
        .arg(format!("{}/{bucket}", service_env("FERRY_S3_ENDPOINT")))
        .status()
        .unwrap();
    assert!(created.success());
}

/// Stores a small object at each of `keys` in `bucket` on the test S3.
async fn fill(bucket: &str, keys: impl Iterator<Item = String>) {
    let direct = s3_store(service_env("FERRY_S3_ENDPOINT"), bucket);
    futures::stream::iter(keys)
        .map(|key| {
            let direct = direct.clone();
            async move {
                let line = format!("{key}\n");
                let body =
                    futures::stream::once(async move { Ok(bytes::Bytes::from(line)) }).boxed();
                direct.put(&key, body).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

fn s3_store(endpoint: String, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(S3Store::new(moto_s3_config(endpoint, bucket, "out/", "us-east-1")).unwrap())
}

#[tokio::test]
async fn a_connection_cut_mid_upload_is_retried_and_leaves_no_partial_object() {
    let bucket = unique("cut");
    create_bucket(&bucket);
    let upstream = service_env("FERRY_S3_ENDPOINT")
        .trim_start_matches("http://")
        .to_string();
    let (port, cuts) = cutting_proxy(upstream, 1 << 20).await;
    let (_src_dir, src) = source();
    let dst = s3_store(format!("http://127.0.0.1:{port}"), &bucket);
    let lines = Lines::default();
    let report = sync(src, dst.clone(), &lines).await.unwrap();
    assert_eq!(cuts.load(Ordering::SeqCst), 1, "the proxy cut one upload");
    assert_eq!(report.objects_copied, 3);
    // Every object whole, nothing half-written, straight from the server.
    let direct = s3_store(service_env("FERRY_S3_ENDPOINT"), &bucket);
    let verified = readback::verify(direct.as_ref(), keys(), None, true)
        .await
        .unwrap();
    assert_eq!(verified.objects, 3);
    let keys_there: Vec<String> = direct
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        keys_there.len(),
        6,
        "three objects, the manifest, its segment and the run's audit lines: {keys_there:?}"
    );
}

/// A listing of two pages whose second page the server refuses four times in
/// a row (more than the SDK's own three attempts): that page is asked for
/// again, the first ones are not, and the run copies everything. (The first
/// level is listed once with a delimiter, then the folder `p/`: two first
/// pages.)
#[tokio::test]
async fn a_listing_page_the_server_keeps_refusing_is_retried_alone() {
    let bucket = unique("pages");
    create_bucket(&bucket);
    fill(&bucket, (0..1100).map(|i| format!("p/{i:05}.txt"))).await;
    let upstream = service_env("FERRY_S3_ENDPOINT")
        .trim_start_matches("http://")
        .to_string();
    let (port, pages) = listing_proxy(upstream, 4, std::time::Duration::ZERO).await;
    let src = s3_store(format!("http://127.0.0.1:{port}"), &bucket);
    let dir = tempfile::tempdir().unwrap();
    let dst: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
    let report = sync(src, dst, &Lines::default()).await.unwrap();
    assert_eq!(report.objects_copied, 1100);
    assert_eq!(
        pages.first.load(Ordering::SeqCst),
        2,
        "the listing started over"
    );
    assert_eq!(pages.later.load(Ordering::SeqCst), 5, "{pages:?}");
    assert_eq!(pages.refused.load(Ordering::SeqCst), 4, "{pages:?}");
}

/// A source of ten folders, each listing answered slowly: the folders are
/// asked for a few at a time, never more than four, and the run copies
/// everything in order.
#[tokio::test]
async fn the_folders_of_a_listing_are_asked_for_a_few_at_a_time() {
    let bucket = unique("folders");
    create_bucket(&bucket);
    fill(
        &bucket,
        (0..50).map(|i| format!("part={:02}/{i:03}.txt", i % 10)),
    )
    .await;
    let upstream = service_env("FERRY_S3_ENDPOINT")
        .trim_start_matches("http://")
        .to_string();
    let (port, pages) = listing_proxy(upstream, 0, std::time::Duration::from_millis(300)).await;
    let src = s3_store(format!("http://127.0.0.1:{port}"), &bucket);
    let dir = tempfile::tempdir().unwrap();
    let dst: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
    let report = sync(src, dst, &Lines::default()).await.unwrap();
    assert_eq!(report.objects_copied, 50);
    assert_eq!(
        pages.first.load(Ordering::SeqCst),
        11,
        "the first level, then each folder once"
    );
    let most = pages.most.load(Ordering::SeqCst);
    assert!((2..=4).contains(&most), "{most} listing requests at once");
}

#[tokio::test]
async fn a_server_that_is_gone_fails_the_run_as_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_src_dir, src) = source();
    let dst = s3_store(format!("http://127.0.0.1:{port}"), "nowhere");
    let lines = Lines::default();
    let err = sync(src, dst, &lines).await.unwrap_err();
    assert_eq!(err.reason(), "EndpointUnreachable", "{err}");
    let failure = Failure {
        reason: err.reason(),
        message: err.to_string(),
    };
    assert!(failure.retryable(), "an outage is worth another attempt");
}

#[tokio::test]
async fn credentials_that_may_not_write_fail_as_access_denied_without_retry() {
    let container = unique("readonly");
    let sas = create_azurite_container_with_sas(&container, "rl");
    let dst: Arc<dyn ObjectStore> = Arc::new(
        AzureStore::new(AzureConfig {
            account: "devstoreaccount1".into(),
            container,
            prefix: "in/".into(),
            endpoint: Some(service_env("FERRY_AZURITE_ENDPOINT")),
            insecure_plain_http_on_loopback: true,
            network: Default::default(),
            auth: AzureAuth::Sas(Zeroizing::new(sas.clone())),
        })
        .unwrap(),
    );
    // Listing is allowed: the run gets as far as writing.
    assert!(dst.list().await.unwrap().is_empty());
    let (_src_dir, src) = source();
    let lines = Lines::default();
    let err = sync(src, dst.clone(), &lines).await.unwrap_err();
    // Every object failed the same way: the run's reason is that one.
    assert_eq!(err.reason(), "AccessDenied", "{err}");
    assert!(err.to_string().contains("3 object(s) failed"), "{err}");
    let audit = lines.text();
    let denied = audit
        .lines()
        .filter(|l| {
            l.contains(r#""action":"object.copy","outcome":"failure","reason":"AccessDenied""#)
        })
        .count();
    assert_eq!(denied, 3, "{audit}");
    assert!(!audit.contains(&sas) && !err.to_string().contains(&sas));
    assert!(dst.list().await.unwrap().is_empty(), "nothing was written");
    let one = Failure {
        reason: ferry_crds::Reason::AccessDenied,
        message: String::new(),
    };
    assert!(!one.retryable());
}

/// A whole S3 object is read as one stream, as concurrent ranges, or as both
/// in turn, every request after the first pinned to the first one's ETag.
/// Each way gives back the object's bytes; an object replaced while the reader
/// is behind either comes back whole, as it was when the read started (one
/// GET is one version), or fails as changed: two versions are never spliced.
#[tokio::test]
async fn an_s3_object_replaced_during_a_whole_read_is_never_spliced() {
    let bucket = unique("changed");
    create_bucket(&bucket);
    let v1: Vec<u8> = (0..24 << 20).map(|i: usize| (i % 249) as u8).collect();
    let put = |data: Vec<u8>| {
        let body: ferry_runner::storage::ByteStream =
            futures::stream::iter(vec![Ok(bytes::Bytes::from(data))]).boxed();
        body
    };
    let ways = [
        ("one stream", Some(false), None),
        (
            "ranges after the stream's first windows",
            Some(true),
            Some(true),
        ),
        (
            "ranges tried, then the stream again",
            Some(true),
            Some(false),
        ),
    ];
    for (way, try_ranges, keep_ranges) in ways {
        let mut config = moto_s3_config(
            service_env("FERRY_S3_ENDPOINT"),
            &bucket,
            "out/",
            "us-east-1",
        );
        config.reads = ReadTuning {
            window: 1 << 20,
            try_ranges,
            keep_ranges,
        };
        let store = S3Store::new(config).unwrap();
        store.put("big.bin", put(v1.clone())).await.unwrap();
        let mut whole = Vec::new();
        let mut stream = store.get("big.bin", None).await.unwrap();
        while let Some(chunk) = stream.next().await {
            whole.extend_from_slice(&chunk.unwrap());
        }
        assert!(whole == v1, "{way}: the read changed the bytes");

        // Start reading, stay behind (ranges fetch at most a few ahead),
        // replace the object, then read on.
        let mut stream = store.get("big.bin", None).await.unwrap();
        let mut read = stream.next().await.unwrap().unwrap().to_vec();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        store
            .put("big.bin", put(vec![9u8; 24 << 20]))
            .await
            .unwrap();
        let mut err = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => read.extend_from_slice(&c),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let noticed = err.is_some();
        match err {
            None => assert!(read == v1, "{way}: two versions were spliced"),
            Some(err) => {
                assert_eq!(err.reason(), "ObjectChanged", "{way}: {err}");
                assert!(err.to_string().contains("big.bin"), "{way}: {err}");
                assert!(
                    read.len() < v1.len() && read[..] == v1[..read.len()],
                    "{way}"
                );
            }
        }
        // Ranges are requested after the replacement: the read must notice.
        if try_ranges == Some(true) {
            assert!(noticed, "{way}: the replacement went unnoticed");
        }
    }
}
