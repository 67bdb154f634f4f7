//! A Connector over more objects than fit the memory it is given: this test
//! binary's allocator refuses to hold more than a fixed amount at once (an
//! allocation past it aborts the test), and a run, an unchanged run, a run
//! that changes one object, a verification and an erasure all stay under it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ferry_crds::ConnectorSpec;
use ferry_runner::audit::AuditLog;
use ferry_runner::crypto::{Kek, KeyRing};
use ferry_runner::readback;
use ferry_runner::storage::ObjectStore;
use ferry_runner::storage::local::LocalStore;
use ferry_runner::transfer::{self, Options, Progress, Report};

#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Objects in the tree: at the 1.6 KiB each a run held before its listing
/// and manifest were streamed, about 64 MiB.
const OBJECTS: usize = 40_000;
/// What a run may hold at once on top of what the test itself holds.
const BUDGET: usize = 24 << 20;

fn spec() -> ConnectorSpec {
    serde_saphyr::from_str(
        "source: {local: {path: src}}\ndestination: {local: {path: dst}}\n\
         encryption: {keyRef: {secretRef: {name: k}}}\ncompliance: {dataResidency: any}\n",
    )
    .unwrap()
}

fn write_tree(root: &Path) {
    for dir in 0..OBJECTS / 1000 {
        let d = root.join(format!("part={dir:03}"));
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..1000 {
            std::fs::write(d.join(format!("{i:04}.json")), format!("{{\"n\":{i}}}\n")).unwrap();
        }
    }
}

/// Samples the bytes allocated while a run goes on; the largest seen.
struct Peak {
    most: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl Peak {
    fn start() -> Self {
        let most = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (most.clone(), stop.clone());
        let sampler = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(ALLOCATOR.allocated(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        Self {
            most,
            stop,
            sampler: Some(sampler),
        }
    }

    fn end(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sampler.take() {
            t.join().unwrap();
        }
        self.most.load(Ordering::Relaxed)
    }
}

async fn run(src: &Arc<dyn ObjectStore>, dst: &Arc<dyn ObjectStore>, id: &str) -> (Report, usize) {
    let opts = Options {
        run_id: id.into(),
        ..Options::default()
    };
    let keys = Arc::new(KeyRing::new(vec![Kek::from_bytes([3; 32])]));
    // The audit lines go nowhere here: the run's own copy of them at the
    // destination is what the run holds.
    let audit = AuditLog::new(Box::new(std::io::sink()), "c", "t", id, "src", "dst");
    let peak = Peak::start();
    let report = transfer::run(
        &spec(),
        src.clone(),
        dst.clone(),
        keys,
        &opts,
        &audit,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    (report, peak.end())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_over_more_objects_than_its_memory_holds_runs_within_it() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("src"));
    let src: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("src")));
    let dst: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("dst")));
    let base = ALLOCATOR.allocated();
    ALLOCATOR.set_limit(base + BUDGET).unwrap();

    let (full, peak_full) = run(&src, &dst, "r1").await;
    assert_eq!(full.objects_copied, OBJECTS as u64);
    let (unchanged, peak_unchanged) = run(&src, &dst, "r2").await;
    assert_eq!(
        (unchanged.objects_copied, unchanged.objects_skipped),
        (0, OBJECTS as u64)
    );
    std::fs::write(dir.path().join("src/part=017/0123.json"), "{\"n\":-1}\n").unwrap();
    let (one, peak_one) = run(&src, &dst, "r3").await;
    assert_eq!(one.objects_copied, 1);
    let keys = Arc::new(KeyRing::new(vec![Kek::from_bytes([3; 32])]));
    let peak = Peak::start();
    let verified = readback::verify(dst.as_ref(), keys, None, false)
        .await
        .unwrap();
    let peak_verify = peak.end();
    assert_eq!(verified.objects, OBJECTS as u64);
    // An erasure reads and cuts every manifest again, a segment at a time.
    let peak = Peak::start();
    let erased = transfer::erase(
        src.clone(),
        dst.clone(),
        Arc::new(KeyRing::new(vec![Kek::from_bytes([3; 32])])),
        &transfer::EraseRequest {
            keys: vec!["part=017/0123.json".into()],
            from_source: false,
        },
        &Options {
            run_id: "e1".into(),
            ..Options::default()
        },
        &AuditLog::new(Box::new(std::io::sink()), "c", "t", "e1", "src", "dst"),
    )
    .await
    .unwrap();
    let peak_erase = peak.end();
    assert!(erased.erased[0].from_destination);
    ALLOCATOR.set_limit(usize::MAX).unwrap();

    // What each run wrote of the manifest: all of it once, then the root
    // alone, then the root and the segment that changed.
    let segment = (full.manifest_bytes as usize) / (OBJECTS / 1024);
    assert!(unchanged.manifest_bytes < 8 << 10, "{unchanged:?}");
    assert!(
        (one.manifest_bytes as usize) < 4 * segment,
        "{} bytes for one object, {} for all",
        one.manifest_bytes,
        full.manifest_bytes
    );
    // The erasure rewrote the segment that held the key in each manifest
    // (one, shared by all three) and wrote a root: its new manifest reuses it.
    assert!((erased.manifest_bytes as usize) < 2 * segment, "{erased:?}");
    let mib = |n: usize| (n.saturating_sub(base)) as f64 / f64::from(1 << 20);
    println!(
        "{OBJECTS} objects; peak above the test's own: full {:.1} MiB, unchanged {:.1} MiB, \
         one changed {:.1} MiB, verify {:.1} MiB, erase {:.1} MiB; manifest bytes written: \
         {} / {} / {} / {}",
        mib(peak_full),
        mib(peak_unchanged),
        mib(peak_one),
        mib(peak_verify),
        mib(peak_erase),
        full.manifest_bytes,
        unchanged.manifest_bytes,
        one.manifest_bytes,
        erased.manifest_bytes
    );
}
