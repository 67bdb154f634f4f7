//! The transfer engine: list, [`plan`] (a pure function of the listing, the
//! last manifest and the Connector: what to copy, skip or refuse), [`copy`]
//! (minimisation and encryption inline, bounded concurrency), then write the
//! signed manifest ([`records`]). Also erasure runs ([`erase`]): delete what came
//! from given source keys and leave tombstones so later runs do not copy them
//! again.

mod copy;
pub mod erase;
pub mod plan;
pub mod records;
pub mod shard;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_crds::{ConnectorSpec, Reason, SyncMode};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::audit::AuditLog;
use crate::crypto::{Anchor, ChainBreak, KeyError, KeyRing, ManifestError, ManifestSigner};
use crate::project::ProjectionError;
use crate::select::{GlobError, Selector};
use crate::storage::{Listing, ObjectMeta, ObjectStore, StorageError};

pub use crate::crypto::part::Shard;
pub use erase::{EraseRequest, erase};
pub use ferry_crds::MANIFEST_DIR;
pub use plan::{Rules, Step, Verdict};
pub use records::{
    entries, is_manifest_key, latest_manifest, load_entries, manifest_key, newest_manifest_key,
    read_manifest, read_manifest_unverified, sort_key,
};
pub use shard::commit;
/// Objects up to this size (one encryption segment) cost a few requests and
/// little memory each: their pace is set by round trips, not bandwidth, so
/// more of them are copied at once. On s3s-fs here, 1000 objects of 64 KiB
/// from S3 to SFTP took 5.5 s four at a time, 1.5 s sixteen at a time.
pub const SMALL_OBJECT: u64 = 1 << 20;
/// How many times `Options::concurrency` small objects are copied at once.
pub const SMALL_FACTOR: usize = 4;

/// Which part of a run a pod does: all of it, one shard of it, or the last
/// step of a run spread over shards ([`shard`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Part {
    #[default]
    Whole,
    Shard(Shard),
    /// The manifest of a run over this many shards, from their parts.
    Commit(u32),
}

/// What a run does: the ConnectorRun's own `mode`.
pub use ferry_crds::RunMode as Mode;

/// Options of a run.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// Run id: names the manifest.
    pub run_id: String,
    /// `namespace/name` of the Connector.
    pub connector: String,
    /// Objects larger than `SMALL_OBJECT` copied at once; smaller ones are
    /// copied up to `SMALL_FACTOR` times as many at once.
    pub concurrency: usize,
    /// Attempts per object for transient errors.
    pub attempts: u32,
    /// First retry delay; doubles each time, with jitter.
    pub backoff: Duration,
    /// The manifest the last successful run wrote, as the operator recorded it:
    /// the destination's newest manifest must be it or build on it.
    pub anchor: Option<Anchor>,
    /// Signs the manifests the run writes or rewrites, when the Connector
    /// names a signing key.
    pub signer: Option<Arc<ManifestSigner>>,
    /// The shard of the run this one is, when the run is spread over several
    /// ([`shard`]): it copies the keys it owns and writes a part, not a
    /// manifest.
    pub shard: Option<Shard>,
}

impl Options {
    /// What names this run's (or shard's) records.
    fn record_name(&self) -> String {
        match self.shard {
            Some(s) => format!("{}-shard-{}", self.run_id, s.index),
            None => self.run_id.clone(),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: Mode::Sync,
            run_id: String::from("run"),
            connector: String::from("default/connector"),
            concurrency: 4,
            attempts: 4,
            backoff: Duration::from_millis(200),
            anchor: None,
            signer: None,
            shard: None,
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Glob(#[from] GlobError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the previous manifest {key:?} does not verify: {source}")]
    Integrity { key: String, source: ManifestError },
    #[error("the destination's manifests do not form one chain: {0}")]
    Chain(#[from] ChainBreak),
    #[error("the previous manifest {key:?} is not valid JSON: {reason}")]
    ManifestParse { key: String, reason: String },
    #[error("failed to encrypt object {key:?}: {reason}")]
    Encrypt { key: String, reason: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("invalid erasure request: {0}")]
    Erase(String),
    #[error("the record {key:?} is larger than any Ferry writes ({limit} bytes): not read further")]
    RecordTooLarge { key: String, limit: u64 },
    #[error(
        "{failed} object(s) failed or were refused ({refused} refused by policy{}); the manifest was not written and the cursor did not move",
        common.map(|r| format!(", all {r}")).unwrap_or_default()
    )]
    Incomplete {
        failed: u64,
        refused: u64,
        /// The reason every failure had, when they all had the same one.
        common: Option<Reason>,
    },
}

impl TransferError {
    /// A stable, machine-readable reason.
    pub fn reason(&self) -> Reason {
        match self {
            TransferError::Glob(_) => Reason::InvalidSpec,
            TransferError::Storage(e) => e.reason(),
            TransferError::Integrity { .. }
            | TransferError::ManifestParse { .. }
            | TransferError::RecordTooLarge { .. }
            | TransferError::Chain(_) => Reason::IntegrityFailure,
            TransferError::Encrypt { .. } => Reason::EncryptionFailure,
            TransferError::Key(KeyError::Kms(e)) if e.unreachable => Reason::SecretStoreUnreachable,
            TransferError::Key(KeyError::Kms(_)) => Reason::SecretStoreDenied,
            TransferError::Key(_) => Reason::InvalidEncryptionKey,
            TransferError::Projection(_) => Reason::NotProjectable,
            TransferError::Erase(_) => Reason::InvalidSpec,
            TransferError::Incomplete {
                failed, refused, ..
            } if failed == refused => Reason::ObjectsRefused,
            // All failed the same way (access denied, say): that is the reason,
            // and whether it is worth retrying.
            TransferError::Incomplete {
                refused: 0,
                common: Some(reason),
                ..
            } => *reason,
            TransferError::Incomplete { .. } => Reason::ObjectsFailed,
        }
    }
}

/// One object a plan would copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub key: String,
    pub size: u64,
    pub streams: Vec<String>,
}

/// What a run did (or, in plan mode, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub objects_copied: u64,
    pub objects_skipped: u64,
    pub objects_failed: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Key of the manifest written, in sync mode.
    pub manifest: Option<String>,
    /// Its place in the destination's chain: the next run's anchor.
    pub anchor: Option<Anchor>,
    /// When it was created, as written into it.
    pub manifest_created: Option<String>,
    /// Erase mode: earlier versions a versioned destination kept, deleted.
    pub versions_deleted: u64,
    /// Erase mode: what of the erasure the destination did not let the run
    /// carry out (earlier versions kept), said plainly; `None` when complete.
    pub erase_incomplete: Option<String>,
    /// In plan mode, what would be copied (a sync run counts what it copies
    /// and lists each in its audit lines, holding no list of them).
    pub planned: Vec<Planned>,
    /// Objects refused, with the reason.
    pub refused: Vec<(String, String)>,
    /// Objects not copied because an erasure run removed them.
    pub objects_tombstoned: u64,
    /// Erasure runs: what was erased, per requested key.
    pub erased: Vec<Erased>,
    /// Bytes of manifest written: the segments that changed and the root.
    pub manifest_bytes: u64,
}

/// What an erasure run did for one requested key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    pub key: String,
    /// A copy was deleted from the destination by this run.
    pub from_destination: bool,
    /// The source object was deleted by this run.
    pub from_source: bool,
}

/// Live counters, for progress reporting.
#[derive(Debug, Default)]
pub struct Progress {
    /// Objects listed at the source so far.
    pub listed: AtomicU64,
    pub objects: AtomicU64,
    pub bytes: AtomicU64,
}

/// Runs a Connector between two stores.
pub async fn run(
    spec: &ConnectorSpec,
    src: Arc<dyn ObjectStore>,
    dst: Arc<dyn ObjectStore>,
    keys: Arc<KeyRing>,
    opts: &Options,
    audit: &AuditLog,
    progress: Arc<Progress>,
) -> Result<Report, TransferError> {
    let selector = Selector::new(spec)?;
    let kek = &*keys.current()?;
    let previous = records::audited(
        records::newest_manifest(dst.as_ref(), &keys, opts.anchor.as_ref(), Some(audit)).await,
        audit,
    )?;
    let last = previous.as_ref().map(|(_, m)| m);
    let tombstones = last.map(|m| m.erased.clone()).unwrap_or_default();
    let rules = plan::Rules::new(&selector, &spec.compliance.allowed_sensitivity, &tombstones);
    // A full run copies everything again: it carries no entry forward.
    let shard = opts.shard;
    let carried = match last {
        Some(m) if spec.sync_mode == SyncMode::Incremental => records::entries(dst.as_ref(), m)
            .try_filter(move |e| futures::future::ready(shard.is_none_or(|s| s.owns(&e.key))))
            .boxed(),
        _ => futures::stream::empty().boxed(),
    };
    let listed = listing(src.list_from(""), Some(progress.clone()), opts);
    let stored = listing(records::list_destination(dst.as_ref(), ""), None, opts);
    let steps = plan::plan(listed, carried, stored, &rules).boxed();
    if opts.mode != Mode::Sync {
        return copy::plan_only(steps, audit).await;
    }
    let audit_copy = records::AuditCopy::start(dst.clone(), kek, audit, opts)?;
    let copied = match records::SegmentWriter::new(dst.clone()).await {
        Ok(segments) => {
            copy::copy_all(
                steps,
                src.clone(),
                dst.clone(),
                kek,
                segments,
                opts,
                audit,
                progress,
            )
            .await
        }
        Err(e) => Err(e),
    };
    // The lines of a failed run are stored too; those of a run that wrote
    // its manifest are listed in it.
    let records = records::finish_copy(audit_copy, audit).await;
    let (mut report, segments, segment_bytes) = copied?;
    if let Some(shard) = opts.shard {
        report.manifest_bytes = segment_bytes;
        let part = shard::PartContents {
            run: opts.run_id.clone(),
            connector: opts.connector.clone(),
            shard,
            base: last.map(crate::crypto::Manifest::link),
            segments,
            records: records?,
            counts: shard::counts(&report),
        };
        let (key, part_bytes) = shard::write_part(dst.as_ref(), kek, part).await?;
        report.manifest = Some(key);
        report.manifest_bytes += part_bytes;
        return Ok(report);
    }
    let written = records::write_manifest(
        dst.as_ref(),
        kek,
        opts,
        last,
        segments,
        tombstones,
        records?,
    )
    .await?;
    report.manifest_bytes = segment_bytes + written.report(&mut report);
    Ok(report)
}

/// A store's listing as a plan takes it: what this run (or shard) owns,
/// counted in `listed` as it comes.
fn listing<'a>(
    objects: Listing<'a>,
    progress: Option<Arc<Progress>>,
    opts: &Options,
) -> BoxStream<'a, Result<ObjectMeta, TransferError>> {
    let shard = opts.shard;
    objects
        .filter(move |o| {
            let keep = match o {
                Ok(o) => shard.is_none_or(|s| s.owns(&o.key)),
                Err(_) => true,
            };
            futures::future::ready(keep)
        })
        .map(move |o| {
            if let Some(p) = &progress {
                p.listed.fetch_add(1, Ordering::Relaxed);
            }
            o.map_err(TransferError::from)
        })
        .boxed()
}
