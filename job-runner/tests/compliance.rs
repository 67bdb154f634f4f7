//! Compliance in the transfer engine, between local stores: data minimisation
//! (projected, encrypted, verified, change detection), refusals with their
//! audit lines, and erasure runs (destination, manifests, source, tombstones,
//! idempotence).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::sync::Arc;

use ferry_crds::ConnectorSpec;
use ferry_runner::audit::AuditLog;
use ferry_runner::crypto::{Kek, KeyRing, Manifest};
use ferry_runner::readback;
use ferry_runner::storage::ObjectStore;
use ferry_runner::storage::local::LocalStore;
use ferry_runner::transfer::{
    self, EraseRequest, Erased, Mode, Options, Progress, Report, TransferError,
};
use futures::StreamExt;
use serde_json::Value;
use support::Lines;

fn spec(extra: &str) -> ConnectorSpec {
    serde_saphyr::from_str(&format!(
        "source: {{local: {{path: src}}}}\ndestination: {{local: {{path: dst}}}}\nencryption: {{keyRef: {{secretRef: {{name: k}}}}}}\n{extra}"
    ))
    .unwrap()
}

fn keys() -> Arc<KeyRing> {
    Arc::new(KeyRing::new(vec![Kek::from_bytes([5; 32])]))
}

impl Lines {
    /// The records of `action`.
    fn of(&self, action: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["action"] == action)
            .collect()
    }
}

fn audit(lines: &Lines, run: &str) -> AuditLog {
    AuditLog::new(
        Box::new(lines.clone()),
        "c",
        "tenant",
        run,
        "local:src",
        "local:dst",
    )
}

/// The fields every audit line carries, checked on one.
fn assert_common(r: &Value, run: &str) {
    assert_eq!(r["connector"], "c");
    assert_eq!(r["tenant"], "tenant");
    assert_eq!(r["run"], run);
    assert_eq!(r["source"], "local:src");
    assert_eq!(r["destination"], "local:dst");
    assert!(r["timestamp"].as_str().unwrap().ends_with('Z'));
}

struct Ends {
    dir: tempfile::TempDir,
    src: Arc<dyn ObjectStore>,
    dst: Arc<dyn ObjectStore>,
}

fn ends(files: &[(&str, &[u8])]) -> Ends {
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in files {
        let p = dir.path().join("src").join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("dst")).unwrap();
    Ends {
        src: Arc::new(LocalStore::new(dir.path().join("src"))),
        dst: Arc::new(LocalStore::new(dir.path().join("dst"))),
        dir,
    }
}

fn opts(run: &str) -> Options {
    Options {
        run_id: run.into(),
        connector: "tenant/c".into(),
        backoff: std::time::Duration::from_millis(1),
        ..Options::default()
    }
}

async fn sync(
    spec: &ConnectorSpec,
    e: &Ends,
    run: &str,
    lines: &Lines,
) -> Result<Report, TransferError> {
    transfer::run(
        spec,
        e.src.clone(),
        e.dst.clone(),
        keys(),
        &opts(run),
        &audit(lines, run),
        Arc::new(Progress::default()),
    )
    .await
}

async fn erase(
    e: &Ends,
    run: &str,
    keys_: &[&str],
    from_source: bool,
    lines: &Lines,
) -> Result<Report, TransferError> {
    let request = EraseRequest {
        keys: keys_.iter().map(|k| k.to_string()).collect(),
        from_source,
    };
    let mut o = opts(run);
    o.mode = Mode::Erase;
    transfer::erase(
        e.src.clone(),
        e.dst.clone(),
        keys(),
        &request,
        &o,
        &audit(lines, run),
    )
    .await
}

/// The plaintext Ferry stored for `key`.
async fn decrypted(dst: &dyn ObjectStore, key: &str) -> Vec<u8> {
    let s = dst.get(key, None).await.unwrap();
    let mut plain = readback::decrypt_stream(s, keys(), key.to_string());
    let mut out = Vec::new();
    while let Some(c) = plain.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

fn exists(root: &Path, key: &str) -> bool {
    root.join(key).exists()
}

const MINIMISED: &str = "streams:\n- {name: customers, match: 'customers/**', sensitivity: [pii], fields: [id, country]}\ncompliance: {allowedSensitivity: [pii], dataResidency: any}\n";

#[tokio::test]
async fn minimised_columns_are_all_that_reach_the_destination() {
    let csv: &[u8] = b"\xef\xbb\xbfid,name,email,country\r\n1,\"Doe, Jane\",jane@example.com,FR\r\n2,\"Bob\nSmith\",bob@example.com,DE\r\n";
    let ndjson: &[u8] = b"{\"id\":1,\"email\":\"jane@example.com\",\"country\":\"FR\"}\n{\"id\":2,\"email\":\"bob@example.com\"}\n";
    let e = ends(&[
        ("customers/a.csv", csv),
        ("customers/b.ndjson", ndjson),
        ("orders/o.csv", b"order,email\n9,x@example.com\n"),
    ]);
    let lines = Lines::default();
    let spec = spec(MINIMISED);
    let r = sync(&spec, &e, "m1", &lines).await.unwrap();
    assert_eq!((r.objects_copied, r.objects_failed), (3, 0));
    assert_eq!(
        decrypted(e.dst.as_ref(), "customers/a.csv").await,
        b"id,country\n1,FR\n2,DE\n"
    );
    assert_eq!(
        decrypted(e.dst.as_ref(), "customers/b.ndjson").await,
        b"{\"id\":1,\"country\":\"FR\"}\n{\"id\":2}\n"
    );
    // Objects of no minimised stream are copied whole.
    assert_eq!(
        decrypted(e.dst.as_ref(), "orders/o.csv").await,
        b"order,email\n9,x@example.com\n"
    );
    // No dropped value is anywhere at the destination, encrypted or not.
    let mut manifest = readback::verify(e.dst.as_ref(), keys(), None, true)
        .await
        .unwrap()
        .manifest;
    ferry_runner::transfer::load_entries(e.dst.as_ref(), &mut manifest)
        .await
        .unwrap();
    let entry = manifest.by_key()["customers/a.csv"].clone();
    assert_eq!(entry.fields, vec!["id".to_string(), "country".to_string()]);
    assert_eq!(entry.source_size, Some(csv.len() as u64));
    assert_eq!(entry.size, "id,country\n1,FR\n2,DE\n".len() as u64);
    assert!(manifest.by_key()["orders/o.csv"].fields.is_empty());

    // Unchanged source objects are skipped although their copies are smaller.
    let r = sync(&spec, &e, "m2", &lines).await.unwrap();
    assert_eq!((r.objects_copied, r.objects_skipped), (0, 3));
    // Other fields: the minimised objects are copied again.
    let narrower = self::spec(&MINIMISED.replace("fields: [id, country]", "fields: [id]"));
    let r = sync(&narrower, &e, "m3", &lines).await.unwrap();
    assert_eq!((r.objects_copied, r.objects_skipped), (2, 1));
    assert_eq!(
        decrypted(e.dst.as_ref(), "customers/a.csv").await,
        b"id\n1\n2\n"
    );
}

#[tokio::test]
async fn an_object_that_cannot_be_minimised_is_refused_not_copied_whole() {
    let e = ends(&[
        ("customers/a.parquet", b"PAR1..."),
        (
            "customers/ok.csv",
            b"id,country,email\n1,FR,a@example.com\n",
        ),
        ("customers/bad.csv", b"id,email\n1,a@example.com\n"),
    ]);
    let lines = Lines::default();
    let err = sync(&spec(MINIMISED), &e, "p1", &lines).await.unwrap_err();
    // Two objects failed: one refused before reading, one whose header lacks a column.
    assert!(
        matches!(
            err,
            TransferError::Incomplete {
                failed: 2,
                refused: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.reason(), "ObjectsFailed");
    let dst = e.dir.path().join("dst");
    assert!(!exists(&dst, "customers/a.parquet"));
    assert!(
        !exists(&dst, "customers/bad.csv"),
        "a failed projection left an object"
    );
    assert!(
        !exists(&dst, ".ferry/manifests"),
        "a failed run wrote a manifest"
    );
    assert!(
        exists(&dst, ".ferry/audit"),
        "the lines of a failed run are kept at the destination too"
    );

    let refused = lines.of("object.refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["outcome"], "denied");
    assert_eq!(refused[0]["reason"], "NotProjectable");
    assert_eq!(refused[0]["object"], "customers/a.parquet");
    assert_common(&refused[0], "p1");
    let failed: Vec<Value> = lines
        .of("object.copy")
        .into_iter()
        .filter(|r| r["outcome"] == "failure")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["reason"], "NotProjectable");
    assert_eq!(failed[0]["object"], "customers/bad.csv");
    let all = serde_json::to_string(&lines.records()).unwrap();
    assert!(!all.contains("example.com"), "data reached the audit trail");

    // Only the refusal left: the run fails as refused (not retryable).
    std::fs::remove_file(e.dir.path().join("src/customers/bad.csv")).unwrap();
    let err = sync(&spec(MINIMISED), &e, "p2", &lines).await.unwrap_err();
    assert_eq!(err.reason(), "ObjectsRefused");
}

#[tokio::test]
async fn a_disallowed_sensitivity_is_refused_per_object_with_an_audit_line() {
    let e = ends(&[("cards/c.csv", b"pan\n4111\n"), ("other.csv", b"a\n1\n")]);
    let lines = Lines::default();
    let spec = spec(
        "streams: [{name: cards, match: 'cards/**', sensitivity: [pci]}]\ncompliance: {allowedSensitivity: [pii], dataResidency: any}\n",
    );
    let err = sync(&spec, &e, "s1", &lines).await.unwrap_err();
    assert_eq!(err.reason(), "ObjectsRefused");
    assert!(!exists(&e.dir.path().join("dst"), "cards/c.csv"));
    let refused = lines.of("object.refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["reason"], "SensitivityNotAllowed");
    assert_eq!(refused[0]["outcome"], "denied");
    assert_eq!(refused[0]["object"], "cards/c.csv");
    assert_common(&refused[0], "s1");
}

/// Every manifest of the destination, oldest first, each verified and with
/// its entries read from its segments.
async fn manifests(root: &Path) -> Vec<Manifest> {
    let mut names: Vec<_> = std::fs::read_dir(root.join("dst/.ferry/manifests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let dst = LocalStore::new(root.join("dst"));
    let mut out = Vec::new();
    for name in names {
        let key = format!(".ferry/manifests/{name}");
        let mut m = ferry_runner::transfer::read_manifest(&dst, &key, &keys())
            .await
            .unwrap();
        ferry_runner::transfer::load_entries(&dst, &mut m)
            .await
            .unwrap();
        out.push(m);
    }
    out
}

#[tokio::test]
async fn erasure_removes_copies_and_entries_and_is_not_undone_by_later_runs() {
    let e = ends(&[
        ("customers/7.csv", b"id\n7\n"),
        ("customers/8.csv", b"id\n8\n"),
        ("customers/9.csv", b"id\n9\n"),
    ]);
    let root = e.dir.path().to_path_buf();
    let dst = root.join("dst");
    let lines = Lines::default();
    let spec = spec("compliance: {dataResidency: any}\n");
    sync(&spec, &e, "s1", &lines).await.unwrap();
    std::fs::write(root.join("src/customers/9.csv"), b"id\n9\n10\n").unwrap();
    sync(&spec, &e, "s2", &lines).await.unwrap();

    // Erase 7 from the destination only, 8 from both ends; "none.csv" never existed.
    let r = erase(&e, "e1", &["customers/7.csv", "none.csv"], false, &lines)
        .await
        .unwrap();
    assert_eq!(
        r.erased,
        vec![
            Erased {
                key: "customers/7.csv".into(),
                from_destination: true,
                from_source: false
            },
            Erased {
                key: "none.csv".into(),
                from_destination: false,
                from_source: false
            },
        ]
    );
    let r = erase(&e, "e2", &["customers/8.csv"], true, &lines)
        .await
        .unwrap();
    assert_eq!(
        r.erased,
        vec![Erased {
            key: "customers/8.csv".into(),
            from_destination: true,
            from_source: true
        }]
    );
    assert!(!exists(&dst, "customers/7.csv") && !exists(&dst, "customers/8.csv"));
    assert!(
        exists(&root.join("src"), "customers/7.csv"),
        "the source was kept"
    );
    assert!(
        !exists(&root.join("src"), "customers/8.csv"),
        "the source was not erased"
    );
    assert!(exists(&dst, "customers/9.csv"));

    // No manifest, old or new, lists an erased key; all still verify.
    let all = manifests(&root).await;
    assert_eq!(all.len(), 4);
    for m in &all {
        assert!(!m.objects.is_empty());
        assert!(
            m.objects.iter().all(|o| o.key.ends_with("9.csv")),
            "{:?}",
            m.objects
        );
    }
    // Nor does any segment left at the destination: those that held the
    // erased keys are gone, not only unlisted.
    for segment in std::fs::read_dir(dst.join(".ferry/segments")).unwrap() {
        let text = std::fs::read_to_string(segment.unwrap().path()).unwrap();
        assert!(
            !text.contains("customers/7.csv") && !text.contains("customers/8.csv"),
            "{text}"
        );
    }
    let latest = readback::verify(e.dst.as_ref(), keys(), None, true)
        .await
        .unwrap()
        .manifest;
    // The source still holds 7: a tombstone keeps it out. 8 is gone at the
    // source and "none.csv" never was there: no tombstone, new data later is new.
    let tombs: Vec<&str> = latest.erased.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(tombs, vec!["customers/7.csv"]);
    assert_eq!(latest.erased[0].run, "e1");

    // Later runs, incremental or full, do not copy the erased key back.
    std::fs::write(root.join("src/none.csv"), b"x\n").unwrap();
    let r = sync(&spec, &e, "s3", &lines).await.unwrap();
    assert_eq!((r.objects_copied, r.objects_tombstoned), (1, 1));
    let full = self::spec("compliance: {dataResidency: any}\nsyncMode: full\n");
    let r = sync(&full, &e, "s4", &lines).await.unwrap();
    assert_eq!((r.objects_copied, r.objects_tombstoned), (2, 1));
    assert!(!exists(&dst, "customers/7.csv") && exists(&dst, "none.csv"));
    let skipped = lines.of("object.skipped");
    assert!(skipped.iter().all(|r| r["reason"] == "ErasedOnRequest"));
    assert_eq!(skipped.len(), 2);

    // Idempotent: erasing again finds nothing and still reports the keys erased.
    let r = erase(
        &e,
        "e3",
        &["customers/7.csv", "customers/8.csv"],
        true,
        &lines,
    )
    .await
    .unwrap();
    assert_eq!(r.erased.len(), 2);
    assert!(r.erased.iter().all(|x| !x.from_destination));
    // 7 was still at the source and is deleted there now; its tombstone stays.
    assert!(r.erased[0].from_source);

    // One audit line per object and side.
    let erasures = lines.of("object.erase");
    let seen: Vec<(String, String, String)> = erasures
        .iter()
        .map(|r| {
            assert_common(r, r["run"].as_str().unwrap());
            (
                r["run"].as_str().unwrap().to_string(),
                r["object"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = |run: &str, k: &str, side: &str| (run.to_string(), k.to_string(), side.to_string());
    assert_eq!(
        seen,
        vec![
            want("e1", "customers/7.csv", "Destination"),
            want("e2", "customers/8.csv", "Destination"),
            want("e2", "customers/8.csv", "Source"),
            want("e3", "customers/7.csv", "Source"),
        ]
    );
    assert!(erasures.iter().all(|r| r["outcome"] == "success"));
    assert!(!lines.of("manifest.rewrite").is_empty());
}

#[tokio::test]
async fn erasure_refuses_keys_outside_the_data() {
    let e = ends(&[("a.csv", b"a\n")]);
    let lines = Lines::default();
    for bad in ["../etc/passwd", ".ferry/manifests/x.json", "/abs", "a//b"] {
        let err = erase(&e, "bad", &[bad], true, &lines).await.unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec", "{bad}: {err}");
    }
    assert!(exists(&e.dir.path().join("src"), "a.csv"));
    assert!(lines.of("object.erase").is_empty());
}

/// The attack: someone who can write to the destination, holding no key,
/// copies an old valid manifest (one from before an erasure, so without its
/// tombstone) under a later name, so that it becomes "the newest". Incremental
/// runs would then copy the erased key back from the source. It is not a
/// manifest of that name: passed over (and audited), the run goes on from the
/// real newest manifest, and the erased key stays erased.
#[tokio::test]
async fn an_old_manifest_copied_under_a_later_name_does_not_undo_an_erasure() {
    let Erasure {
        e,
        root,
        lines,
        spec,
        before: old,
        ..
    } = synced_then_erased().await;

    // A name that sorts after every manifest Ferry wrote.
    let forged = root.join("dst/.ferry/manifests/29991231T235959999999Z-s1.json");
    std::fs::write(&forged, &old).unwrap();

    let report = sync(&spec, &e, "s2", &lines).await.unwrap();
    assert_eq!(report.objects_tombstoned, 1, "{report:?}");
    assert!(
        !exists(&root.join("dst"), "customers/7.csv"),
        "the erased key was copied back"
    );
    let passed_over = lines.of("manifest.foreign");
    assert_eq!(passed_over.len(), 1, "audited");
    assert_eq!(
        passed_over[0]["object"], ".ferry/manifests/29991231T235959999999Z-s1.json",
        "the forged manifest is named"
    );
}

/// The attack: someone who can write to the destination deletes the newest
/// manifests, so the destination's record rolls back to before an erasure.
/// The operator's anchor (the last manifest a run reported) catches it.
#[tokio::test]
async fn deleting_the_newest_manifest_is_a_rollback_the_anchor_catches() {
    let Erasure {
        e,
        root,
        lines,
        spec,
        erased: r,
        ..
    } = synced_then_erased().await;
    let anchor = r.anchor.clone().unwrap();
    assert_eq!(anchor.sequence, 2);
    std::fs::remove_file(manifest_files(&root).pop().unwrap()).unwrap();

    let mut o = opts("s2");
    o.anchor = Some(anchor.clone());
    let err = transfer::run(
        &spec,
        e.src.clone(),
        e.dst.clone(),
        keys(),
        &o,
        &audit(&lines, "s2"),
        Arc::new(Progress::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), ferry_crds::Reason::IntegrityFailure);
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert!(!exists(&root.join("dst"), "customers/7.csv"));

    // With the record intact, the anchor is met and the run goes on.
    let e2 = ends(&[("a.csv", b"a\n")]);
    let first = sync(&spec, &e2, "t1", &lines).await.unwrap();
    std::fs::write(e2.dir.path().join("src/b.csv"), b"b\n").unwrap();
    let second = sync(&spec, &e2, "t2", &lines).await.unwrap();
    let mut o = opts("t3");
    o.anchor = first.anchor.clone();
    let third = transfer::run(
        &spec,
        e2.src.clone(),
        e2.dst.clone(),
        keys(),
        &o,
        &audit(&lines, "t3"),
        Arc::new(Progress::default()),
    )
    .await
    .expect("an anchor one manifest behind the newest is met through the chain");
    assert_eq!(
        third.anchor.unwrap().sequence,
        second.anchor.unwrap().sequence + 1
    );
}

/// A destination after a sync of 7 and 9 and the erasure of 7 (kept at the
/// source, so a tombstone keeps it out).
struct Erasure {
    e: Ends,
    root: std::path::PathBuf,
    lines: Lines,
    spec: ConnectorSpec,
    /// The manifest as it was before the erasure.
    before: Vec<u8>,
    /// What the erasure run reported.
    erased: Report,
}

async fn synced_then_erased() -> Erasure {
    let e = ends(&[
        ("customers/7.csv", b"id\n7\n"),
        ("customers/9.csv", b"id\n9\n"),
    ]);
    let root = e.dir.path().to_path_buf();
    let lines = Lines::default();
    let spec = spec("compliance: {dataResidency: any}\n");
    sync(&spec, &e, "s1", &lines).await.unwrap();
    let before = std::fs::read(manifest_files(&root).pop().unwrap()).unwrap();
    let erased = erase(&e, "e1", &["customers/7.csv"], false, &lines)
        .await
        .unwrap();
    assert!(!exists(&root.join("dst"), "customers/7.csv"));
    Erasure {
        e,
        root,
        lines,
        spec,
        before,
        erased,
    }
}

fn manifest_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(root.join("dst/.ferry/manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

/// The attack: a manifest dated far in the future (signed with the tenant's
/// key, under a name that sorts last) would stay "the newest" for good. A run
/// refuses it.
#[tokio::test]
async fn a_manifest_created_in_the_future_is_refused() {
    use ferry_runner::crypto::{Contents, Place};
    let Erasure {
        e,
        root,
        lines,
        spec,
        ..
    } = synced_then_erased().await;
    let mut newest = manifests(&root).await.pop().unwrap();
    newest.objects.clear();
    let name = ".ferry/manifests/29991231T235959999999Z-future.json";
    let future = Manifest::sign(
        &Kek::from_bytes([5; 32]),
        Place::after(Some(&newest), name),
        Contents {
            run: "future".into(),
            connector: "tenant/c".into(),
            created: "2999-12-31T23:59:59Z".into(),
            segments: vec![],
            erased: vec![],
            records: vec![],
        },
    );
    future.verify_at(&keys(), name).unwrap();
    std::fs::write(
        root.join("dst").join(name),
        serde_json::to_vec(&future).unwrap(),
    )
    .unwrap();
    let err = sync(&spec, &e, "s2", &lines).await.unwrap_err();
    assert_eq!(err.reason(), ferry_crds::Reason::IntegrityFailure, "{err}");
    assert!(err.to_string().contains("in the future"), "{err}");
    assert!(!exists(&root.join("dst"), "customers/7.csv"));
}
