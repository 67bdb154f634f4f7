//! The transfer engine between local stores: round trips, incremental sync,
//! faults in the middle, plan mode, refusals, and verification findings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use ferry_crds::ConnectorSpec;
use ferry_runner::audit::AuditLog;
use ferry_runner::crypto::{Finding, Kek, KeyRing};
use ferry_runner::readback::{self, ReadbackError};
use ferry_runner::storage::local::LocalStore;
use ferry_runner::storage::{ByteStream, ObjectMeta, ObjectStore, StorageError};
use ferry_runner::transfer::{self, Mode, Options, Progress, Report, TransferError};
use futures::StreamExt;
use support::Lines;

fn spec(extra: &str) -> ConnectorSpec {
    let compliance = if extra.contains("compliance:") {
        ""
    } else {
        "compliance: {dataResidency: any}\n"
    };
    serde_saphyr::from_str(&format!(
        "source: {{local: {{path: src}}}}\ndestination: {{local: {{path: dst}}}}\nencryption: {{keyRef: {{secretRef: {{name: k}}}}}}\n{compliance}{extra}"
    ))
    .unwrap()
}

fn keys() -> Arc<KeyRing> {
    Arc::new(KeyRing::new(vec![Kek::from_bytes([3; 32])]))
}

fn audit(lines: &Lines) -> AuditLog {
    AuditLog::new(
        Box::new(lines.clone()),
        "c",
        "tenant",
        "run",
        "local:src",
        "local:dst",
    )
}

fn write_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = vec![
        ("empty.csv".into(), vec![]),
        ("one.csv".into(), b"x".to_vec()),
        (
            "nested/deeper/table.csv".into(),
            (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect(),
        ),
        (
            "with space/ünïcode naïve.csv".into(),
            b"id,name\n1,\"a, b\"\n".to_vec(),
        ),
        (
            "big/three-segments.bin".into(),
            (0..3 * (1 << 20) + 77)
                .map(|i: usize| (i % 253) as u8)
                .collect(),
        ),
    ];
    for (k, v) in &files {
        let p = root.join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    }
    files
}

async fn run_once(
    spec: &ConnectorSpec,
    src: Arc<dyn ObjectStore>,
    dst: Arc<dyn ObjectStore>,
    run_id: &str,
    mode: Mode,
    lines: &Lines,
) -> Result<Report, TransferError> {
    let opts = Options {
        mode,
        run_id: run_id.into(),
        backoff: std::time::Duration::from_millis(1),
        ..Options::default()
    };
    transfer::run(
        spec,
        src,
        dst,
        keys(),
        &opts,
        &audit(lines),
        Arc::new(Progress::default()),
    )
    .await
}

/// The files of a tree: key and content.
type Files = Vec<(String, Vec<u8>)>;

/// The tree of [`write_tree`] in `src/` under `dir`, and the local stores of
/// `src/` and `dst/`.
fn ends(dir: &Path) -> (Files, Arc<dyn ObjectStore>, Arc<dyn ObjectStore>) {
    let files = write_tree(&dir.join("src"));
    let src: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.join("src")));
    let dst: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.join("dst")));
    (files, src, dst)
}

#[tokio::test]
async fn round_trip_incremental_and_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (files, src, dst) = ends(dir.path());
    let lines = Lines::default();
    let spec = spec("");

    let r1 = run_once(&spec, src.clone(), dst.clone(), "r1", Mode::Sync, &lines)
        .await
        .unwrap();
    assert_eq!(r1.objects_copied, files.len() as u64);
    assert_eq!(r1.objects_skipped, 0);
    assert_eq!(
        r1.bytes_read,
        files.iter().map(|(_, v)| v.len() as u64).sum::<u64>()
    );
    assert!(r1.bytes_written > r1.bytes_read);

    // Stored objects are encrypted: no plaintext appears in them.
    let stored = std::fs::read(dir.path().join("dst/with space/ünïcode naïve.csv")).unwrap();
    assert!(stored.starts_with(b"FERRY"));
    assert!(!stored.windows(7).any(|w| w == b"id,name"));

    readback::verify(dst.as_ref(), keys(), None, true)
        .await
        .unwrap();
    let out = LocalStore::new(dir.path().join("out"));
    let (_, n) = readback::decrypt_all(dst.as_ref(), keys(), None, &out)
        .await
        .unwrap();
    assert_eq!(n, r1.bytes_read);
    for (k, v) in &files {
        assert_eq!(
            &std::fs::read(dir.path().join("out").join(k)).unwrap(),
            v,
            "{k}"
        );
    }

    // Second run: nothing new.
    let r2 = run_once(&spec, src.clone(), dst.clone(), "r2", Mode::Sync, &lines)
        .await
        .unwrap();
    assert_eq!(
        (r2.objects_copied, r2.objects_skipped),
        (0, files.len() as u64)
    );

    // A changed object (other size) and a new one are copied again, the rest skipped.
    std::fs::write(dir.path().join("src/one.csv"), b"changed").unwrap();
    std::fs::write(dir.path().join("src/new.csv"), b"new").unwrap();
    let r3 = run_once(&spec, src.clone(), dst.clone(), "r3", Mode::Sync, &lines)
        .await
        .unwrap();
    assert_eq!(
        (r3.objects_copied, r3.objects_skipped),
        (2, files.len() as u64 - 1)
    );
    let verified = readback::verify(dst.as_ref(), keys(), None, true)
        .await
        .unwrap();
    let key = &verified.key;
    assert!(
        key.starts_with(".ferry/manifests/2") && key.ends_with("Z-r3.json"),
        "{key}"
    );
    assert_eq!(
        verified.objects,
        files.len() as u64 + 1,
        "the manifest describes the whole destination"
    );

    let audit = lines.text();
    assert!(
        audit
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    assert!(audit.contains(r#""action":"object.copy""#));
}

/// Incremental runs notice what size alone does not: a same-size edit (by its
/// modification time), and copies deleted or replaced at the destination since
/// the last run, which are copied again.
#[tokio::test]
async fn same_size_edits_and_copies_lost_at_the_destination_are_copied_again() {
    let dir = tempfile::tempdir().unwrap();
    let (files, src, dst) = ends(dir.path());
    let lines = Lines::default();
    let spec = spec("");
    run_once(&spec, src.clone(), dst.clone(), "r1", Mode::Sync, &lines)
        .await
        .unwrap();

    // Same size, other bytes, a later modification time.
    let one = dir.path().join("src/one.csv");
    std::fs::write(&one, b"y").unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&one)
        .unwrap()
        .set_modified(later)
        .unwrap();
    // One copy deleted at the destination, one cut short there.
    std::fs::remove_file(dir.path().join("dst/empty.csv")).unwrap();
    let table = dir.path().join("dst/nested/deeper/table.csv");
    let stored = std::fs::read(&table).unwrap();
    std::fs::write(&table, &stored[..stored.len() / 2]).unwrap();

    let second = Lines::default();
    let r2 = run_once(&spec, src.clone(), dst.clone(), "r2", Mode::Sync, &second)
        .await
        .unwrap();
    let mut copied: Vec<String> = second
        .records()
        .into_iter()
        .filter(|r| r["action"] == "object.copy")
        .map(|r| r["object"].as_str().unwrap().to_string())
        .collect();
    copied.sort();
    assert_eq!(
        copied,
        vec!["empty.csv", "nested/deeper/table.csv", "one.csv"],
        "the edited object and the two lost copies"
    );
    assert_eq!(r2.objects_skipped, files.len() as u64 - 3);
    readback::verify(dst.as_ref(), keys(), None, true)
        .await
        .unwrap();
}

#[tokio::test]
async fn plan_moves_nothing_and_globs_select() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("src"));
    let src: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("src")));
    let dst: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("dst")));
    let spec = spec("include: ['**/*.csv']\nexclude: ['nested/**']\n");
    let r = run_once(&spec, src, dst, "p", Mode::Plan, &Lines::default())
        .await
        .unwrap();
    let keys: Vec<&str> = r.planned.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["empty.csv", "one.csv", "with space/ünïcode naïve.csv"]
    );
    assert!(!dir.path().join("dst").exists(), "plan wrote something");
}

#[tokio::test]
async fn disallowed_sensitivity_is_refused_not_read() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("src"));
    let src: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("src")));
    let dst: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("dst")));
    let spec = spec(
        "streams: [{name: cards, match: 'nested/**', sensitivity: [pci]}]\ncompliance: {allowedSensitivity: [pii], dataResidency: any}\n",
    );
    let lines = Lines::default();
    let err = run_once(&spec, src, dst, "s", Mode::Sync, &lines)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ObjectsRefused");
    assert!(
        !dir.path().join("dst/nested").exists(),
        "refused object was copied"
    );
    assert!(
        !dir.path().join("dst/.ferry/manifests").exists(),
        "a failed run wrote a manifest"
    );
    let audit = lines.text();
    let refused: serde_json::Value = serde_json::from_str(
        audit
            .lines()
            .find(|l| l.contains("object.refused"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(refused["outcome"], "denied");
    assert_eq!(refused["reason"], "SensitivityNotAllowed");
    assert_eq!(refused["object"], "nested/deeper/table.csv");
    assert_eq!(refused["tenant"], "tenant");
}

/// A local source for the fault and scheduling tests: its reads break after
/// some bytes, `failures_left` times; with a gauge, every read is also held
/// open for a while and counted.
#[derive(Debug)]
struct Source {
    inner: LocalStore,
    failures_left: AtomicU32,
    kind: std::io::ErrorKind,
    gauge: Option<Arc<Gauge>>,
}

impl Source {
    fn flaky(root: impl Into<std::path::PathBuf>, failures: u32, kind: std::io::ErrorKind) -> Self {
        Self {
            inner: LocalStore::new(root),
            failures_left: AtomicU32::new(failures),
            kind,
            gauge: None,
        }
    }

    fn gauged(root: impl Into<std::path::PathBuf>, gauge: Arc<Gauge>) -> Self {
        Self {
            gauge: Some(gauge),
            ..Self::flaky(root, 0, std::io::ErrorKind::Other)
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Source {
    fn describe(&self) -> String {
        "flaky".into()
    }
    async fn list(&self) -> Result<Vec<ObjectMeta>, StorageError> {
        self.inner.list().await
    }
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StorageError> {
        let s = match &self.gauge {
            Some(gauge) => gauge.held(&self.inner, key, range).await?,
            None => self.inner.get(key, range).await?,
        };
        let fail = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !fail {
            return Ok(s);
        }
        let kind = self.kind;
        let key = key.to_string();
        Ok(s.take(1)
            .chain(futures::stream::once(async move {
                Err::<Bytes, _>(StorageError::Io {
                    endpoint: "flaky".into(),
                    action: "read",
                    key: Some(key),
                    source: std::io::Error::new(kind, "connection cut"),
                })
            }))
            .boxed())
    }
    async fn put(&self, key: &str, data: ByteStream) -> Result<u64, StorageError> {
        self.inner.put(key, data).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn region(&self) -> Result<Option<String>, StorageError> {
        Ok(None)
    }
}

fn no_temp_files(root: &Path) {
    for entry in std::fs::read_dir(root).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            no_temp_files(&p);
        } else {
            assert!(
                !p.to_string_lossy().contains(".ferry-tmp-"),
                "partial object left: {}",
                p.display()
            );
        }
    }
}

#[tokio::test]
async fn transient_cut_is_retried_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_tree(&dir.path().join("src"));
    let src: Arc<dyn ObjectStore> = Arc::new(Source::flaky(
        dir.path().join("src"),
        2,
        std::io::ErrorKind::ConnectionReset,
    ));
    let dst: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("dst")));
    let r = run_once(
        &spec(""),
        src,
        dst.clone(),
        "t",
        Mode::Sync,
        &Lines::default(),
    )
    .await
    .unwrap();
    assert_eq!(r.objects_copied, files.len() as u64);
    readback::verify(dst.as_ref(), keys(), None, true)
        .await
        .unwrap();
    no_temp_files(&dir.path().join("dst"));
}

#[tokio::test]
async fn permanent_cut_leaves_no_partial_object_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_tree(&dir.path().join("src"));
    let dst: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("dst")));
    let flaky: Arc<dyn ObjectStore> = Arc::new(Source::flaky(
        dir.path().join("src"),
        1,
        std::io::ErrorKind::PermissionDenied,
    ));
    let err = run_once(
        &spec(""),
        flaky,
        dst.clone(),
        "f1",
        Mode::Sync,
        &Lines::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("flaky"), "{err}");
    assert!(
        !dir.path().join("dst/.ferry/manifests").exists(),
        "failed run advanced the cursor"
    );
    no_temp_files(&dir.path().join("dst"));
    // Every object present is complete (it decrypts) — nothing half-written.
    // (The run's audit lines are kept under .ferry/ too, failed or not.)
    let present: Vec<_> = LocalStore::new(dir.path().join("dst"))
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|o| !o.key.starts_with(".ferry/"))
        .collect();
    assert!(present.len() < files.len());

    let src: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("src")));
    let r = run_once(
        &spec(""),
        src,
        dst.clone(),
        "f2",
        Mode::Sync,
        &Lines::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        r.objects_copied,
        files.len() as u64,
        "the rerun copies everything once"
    );
    let verified = readback::verify(dst.as_ref(), keys(), None, true)
        .await
        .unwrap();
    assert_eq!(verified.objects, files.len() as u64, "no duplicates");
}

#[tokio::test]
async fn verify_finds_changed_missing_extra_and_swapped_objects() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("src"));
    let src: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("src")));
    let dst_path = dir.path().join("dst");
    let dst: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&dst_path));
    run_once(
        &spec(""),
        src,
        dst.clone(),
        "v",
        Mode::Sync,
        &Lines::default(),
    )
    .await
    .unwrap();

    // Swap two objects' bytes: sizes differ, so swap two of equal ciphertext size.
    std::fs::write(
        dst_path.join("a-copy.csv"),
        std::fs::read(dst_path.join("one.csv")).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(dst_path.join("empty.csv")).unwrap();
    let mut big = std::fs::read(dst_path.join("nested/deeper/table.csv")).unwrap();
    let mid = big.len() / 2;
    big[mid] ^= 1;
    std::fs::write(dst_path.join("nested/deeper/table.csv"), big).unwrap();
    let err = readback::verify(dst.as_ref(), keys(), None, false)
        .await
        .unwrap_err();
    let ReadbackError::Findings(findings) = err else {
        panic!("{err}")
    };
    assert!(findings.contains(&Finding::Missing("empty.csv".into())));
    assert!(findings.contains(&Finding::Extra("a-copy.csv".into())));
    assert!(findings.contains(&Finding::Changed {
        key: "nested/deeper/table.csv".into(),
        what: "stored SHA-256"
    }));

    // Decrypting a manifest-less swapped object under another key fails naming it.
    let moved = std::fs::read(dst_path.join("one.csv")).unwrap();
    let s = futures::stream::once(async move { Ok(Bytes::from(moved)) }).boxed();
    let mut plain = readback::decrypt_stream(s, keys(), "other.csv".into());
    let mut failed = None;
    while let Some(c) = plain.next().await {
        if let Err(e) = c {
            failed = Some(e.to_string());
        }
    }
    let failed = failed.expect("swapped object decrypted");
    assert!(failed.contains("other.csv"), "{failed}");

    // A tampered segment of the manifest does not verify, and is named.
    let segment = std::fs::read_dir(dst_path.join(".ferry/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let original = std::fs::read_to_string(&segment).unwrap();
    let text = original.replacen("\"size\":1,", "\"size\":2,", 1);
    assert_ne!(text, original);
    std::fs::write(&segment, text).unwrap();
    let err = readback::verify(dst.as_ref(), keys(), None, false)
        .await
        .unwrap_err();
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(
        err.to_string().contains("segment") && err.to_string().contains(name),
        "{err}"
    );
    std::fs::write(&segment, original).unwrap();
    // A tampered manifest does not verify.
    let mpath = std::fs::read_dir(dst_path.join(".ferry/manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("Z-v.json"))
        .unwrap();
    let text = std::fs::read_to_string(&mpath)
        .unwrap()
        .replacen("\"count\": ", "\"count\": 1", 1);
    std::fs::write(&mpath, text).unwrap();
    let err = readback::verify(dst.as_ref(), keys(), None, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("MAC does not verify"), "{err}");
}

/// Counts the reads open at once: all of them, and those of objects above
/// `SMALL_OBJECT`.
#[derive(Debug, Default)]
struct Gauge {
    open: AtomicU32,
    open_large: AtomicU32,
    most: AtomicU32,
    most_large: AtomicU32,
}

impl Gauge {
    /// A read of `inner`, held open for a while and counted.
    async fn held(
        &self,
        inner: &LocalStore,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StorageError> {
        let size = inner
            .list()
            .await?
            .into_iter()
            .find(|o| o.key == key)
            .map_or(0, |o| o.size);
        let large = size > transfer::SMALL_OBJECT;
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(open, Ordering::SeqCst);
        if large {
            let open = self.open_large.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_large.fetch_max(open, Ordering::SeqCst);
        }
        // Every read that can start does, before any of them ends.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let data = inner.get(key, range).await;
        self.open.fetch_sub(1, Ordering::SeqCst);
        if large {
            self.open_large.fetch_sub(1, Ordering::SeqCst);
        }
        data
    }
}

/// Small objects are copied `SMALL_FACTOR` times as many at once as large
/// ones; large ones never more than `concurrency` at once, small ones beside.
#[tokio::test]
async fn small_objects_are_copied_more_at_once_than_large_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    std::fs::create_dir_all(&root).unwrap();
    let large_size = transfer::SMALL_OBJECT as usize + 1;
    for i in 0..12 {
        std::fs::write(
            root.join(format!("large-{i:02}.bin")),
            vec![i as u8; large_size],
        )
        .unwrap();
    }
    for i in 0..80 {
        std::fs::write(root.join(format!("small-{i:02}.bin")), vec![i as u8; 1000]).unwrap();
    }
    let gauge = Arc::new(Gauge::default());
    let src: Arc<dyn ObjectStore> = Arc::new(Source::gauged(&root, gauge.clone()));
    let dst: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("dst")));
    let r = run_once(
        &spec(""),
        src,
        dst.clone(),
        "c",
        Mode::Sync,
        &Lines::default(),
    )
    .await
    .unwrap();
    assert_eq!(r.objects_copied, 92);
    let concurrency = Options::default().concurrency as u32;
    let small_factor = transfer::SMALL_FACTOR as u32;
    // Keys sort large first: they take their slots, small ones fill the rest.
    assert_eq!(gauge.most_large.load(Ordering::SeqCst), concurrency);
    assert_eq!(
        gauge.most.load(Ordering::SeqCst),
        concurrency * small_factor
    );
    readback::verify(dst.as_ref(), keys(), None, true)
        .await
        .unwrap();
}

/// A destination whose newest manifest is a version 5 one (every entry in
/// the manifest itself), as the release before segments wrote it: the next
/// run verifies it, finds every object unchanged, and writes a version 6
/// manifest built on it, whose segments hold the same entries.
#[tokio::test]
async fn a_destination_recorded_in_version_5_is_carried_into_segments_by_the_next_run() {
    use ferry_runner::crypto::manifest::{FORMAT, FORMAT_V5};
    let dir = tempfile::tempdir().unwrap();
    let (files, src, dst) = ends(dir.path());
    let spec = spec("");
    let lines = Lines::default();
    let r1 = run_once(&spec, src.clone(), dst.clone(), "r1", Mode::Sync, &lines)
        .await
        .unwrap();
    // Made version 5: the entries back in the manifest, signed again, and
    // no segment left.
    let key = r1.manifest.unwrap();
    let mut m = transfer::read_manifest(dst.as_ref(), &key, &keys())
        .await
        .unwrap();
    transfer::load_entries(dst.as_ref(), &mut m).await.unwrap();
    m.format = FORMAT_V5.into();
    m.segments.clear();
    m.resign(&Kek::from_bytes([3; 32]), None);
    std::fs::write(
        dir.path().join("dst").join(&key),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    std::fs::remove_dir_all(dir.path().join("dst/.ferry/segments")).unwrap();
    let old = readback::verify(dst.as_ref(), keys(), None, true)
        .await
        .unwrap();
    assert_eq!(old.manifest.format, FORMAT_V5);
    assert_eq!(old.objects, files.len() as u64);

    let r2 = run_once(&spec, src.clone(), dst.clone(), "r2", Mode::Sync, &lines)
        .await
        .unwrap();
    assert_eq!(
        (r2.objects_copied, r2.objects_skipped),
        (0, files.len() as u64)
    );
    let new = readback::verify(dst.as_ref(), keys(), None, true)
        .await
        .unwrap();
    assert_eq!(new.manifest.format, FORMAT);
    assert_eq!(new.objects, files.len() as u64);
    assert!(!new.manifest.segments.is_empty());
    let chain = readback::verify_chain(dst.as_ref(), keys(), r2.anchor.as_ref())
        .await
        .unwrap();
    assert_eq!(chain.manifests, 2);
}
