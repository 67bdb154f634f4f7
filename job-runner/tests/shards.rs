//! A run spread over shards between local stores: the shards and the last
//! step leave the record one pod would have left, a failed shard is run
//! again alone, and the last step refuses parts that are not what their
//! shard may write.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::sync::Arc;

use ferry_crds::ConnectorSpec;
use ferry_runner::audit::AuditLog;
use ferry_runner::crypto::part::{PartContents, PartCounts, Shard, ShardPart};
use ferry_runner::crypto::{Kek, KeyRing, ManifestError};
use ferry_runner::readback;
use ferry_runner::storage::ObjectStore;
use ferry_runner::storage::local::LocalStore;
use ferry_runner::transfer::{self, Options, Progress, Report, TransferError};
use support::Lines;

fn spec() -> ConnectorSpec {
    serde_saphyr::from_str(
        "source: {local: {path: src}}\ndestination: {local: {path: dst}}\nencryption: {keyRef: {secretRef: {name: k}}}\ncompliance: {dataResidency: any}\n",
    )
    .unwrap()
}

fn keys() -> Arc<KeyRing> {
    Arc::new(KeyRing::new(vec![Kek::from_bytes([5; 32])]))
}

fn audit() -> AuditLog {
    AuditLog::new(
        Box::new(Lines::default()),
        "c",
        "tenant",
        "run",
        "local:src",
        "local:dst",
    )
}

/// 1500 small files in a few folders, and one of 3 MiB.
fn write_source(root: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..1500 {
        let key = format!("d{}/f{i:05}.csv", i % 4);
        let p = root.join(&key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("id,{i}\n")).unwrap();
        keys.push(key);
    }
    std::fs::write(root.join("big.bin"), vec![7u8; 3 << 20]).unwrap();
    keys.push("big.bin".into());
    keys.sort();
    keys
}

fn opts(run: &str, shard: Option<Shard>) -> Options {
    Options {
        run_id: run.into(),
        backoff: std::time::Duration::from_millis(1),
        shard,
        ..Options::default()
    }
}

async fn shard(
    src: &Arc<dyn ObjectStore>,
    dst: &Arc<dyn ObjectStore>,
    run: &str,
    index: u32,
) -> Result<Report, TransferError> {
    let shard = Shard { index, count: 3 };
    transfer::run(
        &spec(),
        src.clone(),
        dst.clone(),
        keys(),
        &opts(run, Some(shard)),
        &audit(),
        Arc::new(Progress::default()),
    )
    .await
}

async fn commit(dst: &Arc<dyn ObjectStore>, run: &str) -> Result<Report, TransferError> {
    transfer::commit(dst.clone(), keys(), &opts(run, None), 3, &audit()).await
}

/// The keys stored at `dst` outside Ferry's own records.
async fn stored(dst: &dyn ObjectStore) -> Vec<String> {
    let mut keys: Vec<String> = dst
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !k.starts_with(".ferry/"))
        .collect();
    keys.sort();
    keys
}

async fn under(dst: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    dst.list()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.starts_with(prefix))
        .collect()
}

struct Ends {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    src: Arc<dyn ObjectStore>,
    dst: Arc<dyn ObjectStore>,
    keys: Vec<String>,
}

fn ends() -> Ends {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let keys = write_source(&root.join("src"));
    Ends {
        src: Arc::new(LocalStore::new(root.join("src"))),
        dst: Arc::new(LocalStore::new(root.join("dst"))),
        root,
        keys,
        _dir: dir,
    }
}

#[tokio::test]
async fn three_shards_leave_the_record_one_pod_would() {
    let e = ends();
    let mut copied = 0;
    for i in 0..3 {
        let r = shard(&e.src, &e.dst, "run-1", i).await.unwrap();
        assert!(
            r.objects_copied > 300,
            "shard {i} copied {}",
            r.objects_copied
        );
        assert_eq!(r.anchor, None, "a shard moves no cursor");
        copied += r.objects_copied;
    }
    assert_eq!(
        copied,
        e.keys.len() as u64,
        "each object copied by one shard"
    );
    assert_eq!(under(e.dst.as_ref(), ".ferry/manifests/").await.len(), 0);
    assert_eq!(under(e.dst.as_ref(), ".ferry/shards/").await.len(), 3);

    let report = commit(&e.dst, "run-1").await.unwrap();
    assert_eq!(report.objects_copied, e.keys.len() as u64);
    let plain: u64 = e
        .keys
        .iter()
        .map(|k| std::fs::metadata(e.root.join("src").join(k)).unwrap().len())
        .sum();
    assert_eq!(report.bytes_read, plain, "the shards' counts, summed");
    assert!(report.anchor.is_some());
    assert_eq!(stored(e.dst.as_ref()).await, e.keys);
    assert!(
        under(e.dst.as_ref(), ".ferry/shards/").await.is_empty(),
        "parts deleted"
    );
    let verified = readback::verify(e.dst.as_ref(), keys(), None, true)
        .await
        .unwrap();
    assert_eq!(verified.objects, e.keys.len() as u64);

    // One pod over the same tree cuts the same segments.
    let alone: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(e.root.join("alone")));
    transfer::run(
        &spec(),
        e.src.clone(),
        alone.clone(),
        keys(),
        &opts("run-1", None),
        &audit(),
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    let one = readback::verify(alone.as_ref(), keys(), None, false)
        .await
        .unwrap();
    assert!(one.manifest.segments.len() > 1, "several segments");
    // (The same cuts; not the same bytes: every copy has its own data key.)
    let cuts = |v: &readback::Verified| -> Vec<(u64, String, String)> {
        v.manifest
            .segments
            .iter()
            .map(|s| (s.count, s.first.clone(), s.last.clone()))
            .collect()
    };
    assert_eq!(cuts(&one), cuts(&verified));

    // The next run, sharded too, finds everything unchanged and writes no segment.
    for i in 0..3 {
        let r = shard(&e.src, &e.dst, "run-2", i).await.unwrap();
        assert_eq!(r.objects_copied, 0);
    }
    let second = commit(&e.dst, "run-2").await.unwrap();
    assert_eq!(second.objects_skipped, e.keys.len() as u64);
    let again = readback::verify(e.dst.as_ref(), keys(), None, false)
        .await
        .unwrap();
    assert_eq!(again.manifest.segments, verified.manifest.segments);
    assert_eq!(under(e.dst.as_ref(), ".ferry/manifests/").await.len(), 2);
}

#[tokio::test]
async fn a_failed_shard_is_run_again_alone() {
    let e = ends();
    // An object of shard 1 cannot be stored (a folder stands in its place):
    // shard 1 fails, the others succeed.
    let locked = e
        .keys
        .iter()
        .find(|k| Shard { index: 1, count: 3 }.owns(k))
        .unwrap()
        .clone();
    let blocker = e.root.join("dst").join(&locked).join("in-the-way");
    std::fs::create_dir_all(&blocker).unwrap();
    let first = [
        shard(&e.src, &e.dst, "run-1", 0).await,
        shard(&e.src, &e.dst, "run-1", 1).await,
        shard(&e.src, &e.dst, "run-1", 2).await,
    ];
    assert!(first[0].is_ok() && first[2].is_ok());
    let failed = first[1].as_ref().unwrap_err();
    assert!(failed.to_string().contains(&locked), "{failed}");
    // No part of shard 1: the run cannot end yet.
    let early = commit(&e.dst, "run-1").await.unwrap_err();
    assert!(early.to_string().contains("1-of-3"), "{early}");
    assert!(under(e.dst.as_ref(), ".ferry/manifests/").await.is_empty());

    std::fs::remove_dir_all(e.root.join("dst").join(&locked)).unwrap();
    let again = shard(&e.src, &e.dst, "run-1", 1).await.unwrap();
    let owned = e
        .keys
        .iter()
        .filter(|k| Shard { index: 1, count: 3 }.owns(k))
        .count() as u64;
    assert_eq!(
        again.objects_copied, owned,
        "the retried shard copies its own keys only"
    );
    let report = commit(&e.dst, "run-1").await.unwrap();
    assert_eq!(
        report.objects_copied + report.objects_skipped,
        e.keys.len() as u64
    );
    assert_eq!(stored(e.dst.as_ref()).await, e.keys, "each object once");
    readback::verify(e.dst.as_ref(), keys(), None, true)
        .await
        .unwrap();
}

/// Attack: one shard's pod (every shard has the run's KEK and may write the
/// destination) writes a part that claims keys of another shard, a part of
/// another run copied into this run's place, or a part planned against
/// another manifest; the last step must refuse each rather than record it.
#[tokio::test]
async fn a_part_claiming_keys_of_another_shard_or_run_is_refused() {
    let e = ends();
    for i in 0..3 {
        shard(&e.src, &e.dst, "run-1", i).await.unwrap();
    }
    let part_key = Shard { index: 0, count: 3 }.part_key("run-1");
    let part_path = e.root.join("dst").join(&part_key);
    let honest = std::fs::read(&part_path).unwrap();
    let read = |key: &str| -> ShardPart {
        serde_json::from_slice(&std::fs::read(e.root.join("dst").join(key)).unwrap()).unwrap()
    };
    let kek = Kek::from_bytes([5; 32]);
    let forge = |part: &ShardPart, base: Option<String>, segments| {
        ShardPart::sign(
            &kek,
            PartContents {
                run: "run-1".into(),
                connector: part.connector.clone(),
                shard: Shard { index: 0, count: 3 },
                base,
                segments,
                records: part.records.clone(),
                counts: PartCounts::default(),
            },
        )
    };
    let zero = read(&part_key);
    let one = read(&Shard { index: 1, count: 3 }.part_key("run-1"));

    // Shard 0 claims shard 1's entries as its own.
    let forged = forge(&zero, zero.base.clone(), one.segments.clone());
    std::fs::write(&part_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let err = commit(&e.dst, "run-1").await.unwrap_err();
    assert!(
        matches!(
            &err,
            TransferError::Integrity {
                source: ManifestError::NotOwned { .. },
                ..
            }
        ),
        "{err}"
    );

    // A part planned against another manifest.
    let forged = forge(&zero, Some("0".repeat(64)), zero.segments.clone());
    std::fs::write(&part_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let err = commit(&e.dst, "run-1").await.unwrap_err();
    assert!(
        matches!(
            &err,
            TransferError::Integrity {
                source: ManifestError::OtherBase { .. },
                ..
            }
        ),
        "{err}"
    );

    // Shard 1's part copied into shard 0's place.
    std::fs::write(
        &part_path,
        std::fs::read(
            e.root
                .join("dst")
                .join(Shard { index: 1, count: 3 }.part_key("run-1")),
        )
        .unwrap(),
    )
    .unwrap();
    let err = commit(&e.dst, "run-1").await.unwrap_err();
    assert!(
        matches!(
            &err,
            TransferError::Integrity {
                source: ManifestError::Misplaced { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(under(e.dst.as_ref(), ".ferry/manifests/").await.is_empty());

    // The honest part back: the run ends.
    std::fs::write(&part_path, honest).unwrap();
    commit(&e.dst, "run-1").await.unwrap();
    readback::verify(e.dst.as_ref(), keys(), None, true)
        .await
        .unwrap();
}
