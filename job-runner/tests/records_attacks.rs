//! Whoever can write a bucket (the source's or the destination's) tries to
//! break or take over the destination's records under `.ferry/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::sync::Arc;

use ferry_crds::ConnectorSpec;
use ferry_runner::audit::AuditLog;
use ferry_runner::crypto::{Anchor, Kek, KeyRing};
use ferry_runner::readback;
use ferry_runner::storage::ObjectStore;
use ferry_runner::storage::local::LocalStore;
use ferry_runner::transfer::{self, Mode, Options, Progress, Report, TransferError};
use support::Lines;

fn spec() -> ConnectorSpec {
    serde_saphyr::from_str(
        "source: {local: {path: src}}\ndestination: {local: {path: dst}}\nencryption: {keyRef: {secretRef: {name: k}}}\ncompliance: {dataResidency: any}\n",
    )
    .unwrap()
}

fn keys() -> Arc<KeyRing> {
    Arc::new(KeyRing::new(vec![Kek::from_bytes([3; 32])]))
}

fn write(root: &Path, key: &str, body: &[u8]) {
    let p = root.join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

async fn sync(
    src: &Path,
    dst: &Path,
    run_id: &str,
    anchor: Option<&Anchor>,
    lines: &Lines,
) -> Result<Report, TransferError> {
    let opts = Options {
        mode: Mode::Sync,
        run_id: run_id.into(),
        anchor: anchor.cloned(),
        backoff: std::time::Duration::from_millis(1),
        ..Options::default()
    };
    let audit = AuditLog::new(
        Box::new(lines.clone()),
        "c",
        "tenant",
        run_id,
        "local:src",
        "local:dst",
    );
    transfer::run(
        &spec(),
        Arc::new(LocalStore::new(src)) as Arc<dyn ObjectStore>,
        Arc::new(LocalStore::new(dst)) as Arc<dyn ObjectStore>,
        keys(),
        &opts,
        &audit,
        Arc::new(Progress::default()),
    )
    .await
}

/// A name that sorts after every manifest Ferry writes.
const LAST_NAME: &str = ".ferry/manifests/99999999T999999999999Z-x.json";

fn audited(lines: &Lines, action: &str, reason: &str) -> Vec<String> {
    lines
        .records()
        .into_iter()
        .filter(|r| r["action"] == action && r["reason"] == reason)
        .map(|r| r["object"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Attack: anyone who can drop a file in the source (a partner's SFTP
/// inbox, an upstream bucket) writes `.ferry/manifests/<a name sorting last>`
/// and a segment there. The run once copied them into the destination's own
/// records, where the file then passed for the newest manifest: every later
/// run and `verify` failed until someone deleted it by hand. Now source keys
/// under `.ferry/` are set apart and audited; the runs and `verify` go on.
#[tokio::test]
async fn a_source_file_under_ferry_never_lands_among_the_destinations_records() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    write(&src, "data/a.csv", b"id\n1\n");
    write(&src, LAST_NAME, b"{\"format\": \"ferry-manifest/v6\"}");
    write(&src, ".ferry/segments/0000.json", b"[]");
    let lines = Lines::default();
    let first = sync(&src, &dst, "r1", None, &lines).await.unwrap();
    assert_eq!(first.objects_copied, 1, "the data object alone");
    assert!(
        !dst.join(LAST_NAME).exists(),
        "the source's file was copied among the records"
    );
    assert!(!dst.join(".ferry/segments/0000.json").exists());
    let mut set_apart = audited(&lines, "object.skipped", "FerryRecords");
    set_apart.sort();
    assert_eq!(
        set_apart,
        [
            ".ferry/manifests/99999999T999999999999Z-x.json",
            ".ferry/segments/0000.json"
        ]
    );
    // The next run, and verify, go on (control: they see the real chain).
    write(&src, "data/b.csv", b"id\n2\n");
    let second = sync(&src, &dst, "r2", first.anchor.as_ref(), &Lines::default())
        .await
        .unwrap();
    assert_eq!(second.objects_copied, 1);
    let store = LocalStore::new(&dst);
    let verified = readback::verify(&store, keys(), None, true).await.unwrap();
    assert_eq!(verified.objects, 2);
    let chain = readback::verify_chain(&store, keys(), second.anchor.as_ref())
        .await
        .unwrap();
    assert_eq!((chain.manifests, chain.foreign.len()), (2, 0));
}

/// Attack: whoever can write the destination puts a file at a manifest name
/// that sorts after the real newest one. The newest manifest was the greatest
/// name: the next run failed on it, and so did every one after. Now the
/// newest is the end of the chain from the operator's anchor: the file is
/// passed over and audited, the run goes on, `verify` reports it.
#[tokio::test]
async fn a_file_named_as_the_newest_manifest_does_not_stop_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    write(&src, "data/a.csv", b"id\n1\n");
    let first = sync(&src, &dst, "r1", None, &Lines::default())
        .await
        .unwrap();
    write(&dst, LAST_NAME, b"not a manifest");
    write(&src, "data/b.csv", b"id\n2\n");
    let lines = Lines::default();
    let second = sync(&src, &dst, "r2", first.anchor.as_ref(), &lines)
        .await
        .unwrap();
    assert_eq!((second.objects_copied, second.objects_skipped), (1, 1));
    assert_eq!(
        audited(&lines, "manifest.foreign", "IntegrityFailure"),
        [LAST_NAME]
    );
    let store = LocalStore::new(&dst);
    let chain = readback::verify_chain(&store, keys(), second.anchor.as_ref())
        .await
        .unwrap();
    assert_eq!(chain.manifests, 2);
    assert_eq!(chain.foreign, [LAST_NAME]);
    let verified = readback::verify(&store, keys(), None, false).await.unwrap();
    assert_eq!(verified.key, second.manifest.clone().unwrap());
    // Control: the chain's own newest manifest removed is still a rollback,
    // whatever else lies there.
    std::fs::remove_file(dst.join(second.manifest.unwrap())).unwrap();
    let e = sync(&src, &dst, "r3", second.anchor.as_ref(), &Lines::default())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), ferry_crds::Reason::IntegrityFailure, "{e}");
    assert!(
        e.to_string().contains("rolled back") || e.to_string().contains("another link"),
        "{e}"
    );
}

/// A Ferry destination used as a source (a second hop): its data objects
/// are copied, its own records are not, and both chains verify.
#[tokio::test]
async fn a_ferry_destination_read_as_a_source_works() {
    let dir = tempfile::tempdir().unwrap();
    let (src, hop, far) = (
        dir.path().join("src"),
        dir.path().join("hop"),
        dir.path().join("far"),
    );
    write(&src, "data/a.csv", b"id\n1\n");
    write(&src, "data/b.csv", b"id\n2\n");
    sync(&src, &hop, "r1", None, &Lines::default())
        .await
        .unwrap();
    let lines = Lines::default();
    let second = sync(&hop, &far, "r2", None, &lines).await.unwrap();
    assert_eq!(second.objects_copied, 2);
    assert!(!audited(&lines, "object.skipped", "FerryRecords").is_empty());
    for store in [&hop, &far] {
        let verified = readback::verify(&LocalStore::new(store), keys(), None, true)
            .await
            .unwrap();
        assert_eq!(verified.objects, 2);
    }
}
