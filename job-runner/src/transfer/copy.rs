//! Carrying out a plan: the objects it chose copied with bounded concurrency, retries of transient
//! failures, and each object read, minimised, encrypted and written as one
//! stream ([`crate::pipe::encrypt_stream`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_crds::Reason;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::audit::{AuditLog, Outcome};
use crate::crypto::segments::SegmentRef;
use crate::crypto::{Kek, ManifestEntry, ObjectEncrypter};
use crate::pipe::{Origin, SealError, encrypt_stream};
use crate::project::Projector;
use crate::storage::{ObjectMeta, ObjectStore, StorageError};

use super::plan::{Step, Verdict};
use super::records::SegmentWriter;
use super::{Options, Planned, Progress, Report, SMALL_FACTOR, SMALL_OBJECT, TransferError};

/// Audit reason of a source key under `.ferry/`, set apart and not copied.
pub const RESERVED: &str = "FerryRecords";

/// How many steps of a plan may be under way at once, in times the copies
/// that may run at once: an object slower than the rest (a large one) does not
/// stall the others until this many steps came after it.
const WINDOW_FACTOR: usize = 4;

/// What became of one step of the plan.
enum Done {
    /// An entry of the last manifest that stands as it is.
    Kept(ManifestEntry),
    /// An object judged and not copied (unchanged, refused, erased), with
    /// the entry of the last manifest for its key.
    Judged(ObjectMeta, Verdict, Option<ManifestEntry>),
    /// An object copied, or not.
    Copied(ObjectMeta, Result<ManifestEntry, TransferError>),
}

/// Carries out a plan in key order: copies the objects it says to copy (up
/// to `concurrency` large objects at once, as they hold part and range
/// buffers, and [`SMALL_FACTOR`] times as many in all), and hands every
/// entry of the new manifest, kept or new, to `segments` in key order. One
/// audit line per object. Memory is bounded by the steps under way, not by
/// the number of objects.
#[allow(clippy::too_many_arguments)] // the two stores, the key, and what a run carries
pub(super) async fn copy_all(
    steps: BoxStream<'_, Result<Step, TransferError>>,
    src: Arc<dyn ObjectStore>,
    dst: Arc<dyn ObjectStore>,
    kek: &Kek,
    mut segments: SegmentWriter,
    opts: &Options,
    audit: &AuditLog,
    progress: Arc<Progress>,
) -> Result<(Report, Vec<SegmentRef>, u64), TransferError> {
    let concurrency = opts.concurrency.max(1);
    let large = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let copies = Arc::new(tokio::sync::Semaphore::new(concurrency * SMALL_FACTOR));
    let mut done = steps
        .map(|step| {
            let (src, dst, progress) = (src.clone(), dst.clone(), progress.clone());
            let (large, copies) = (large.clone(), copies.clone());
            async move {
                let Step { object, previous } = step?;
                let Some((obj, verdict)) = object else {
                    return Ok::<_, TransferError>(previous.map(Done::Kept));
                };
                let Verdict::Copy { fields, .. } = verdict else {
                    return Ok(Some(Done::Judged(obj, verdict, previous)));
                };
                // The semaphores are never closed, so a permit always comes.
                let _copy = copies.acquire_owned().await.ok();
                let _large = if obj.size > SMALL_OBJECT {
                    large.acquire_owned().await.ok()
                } else {
                    None
                };
                let r = copy_with_retry(
                    src.as_ref(),
                    dst.as_ref(),
                    kek,
                    &obj,
                    fields.as_deref(),
                    opts,
                )
                .await;
                if let Ok(e) = &r {
                    progress.objects.fetch_add(1, Ordering::Relaxed);
                    progress
                        .bytes
                        .fetch_add(e.encrypted_size, Ordering::Relaxed);
                }
                Ok(Some(Done::Copied(obj, r)))
            }
        })
        .buffered(concurrency * SMALL_FACTOR * WINDOW_FACTOR);
    let mut tally = Tally::default();
    while let Some(step) = done.next().await {
        let entry = match step? {
            None => None,
            Some(Done::Kept(e)) => Some(e),
            Some(Done::Judged(obj, verdict, previous)) => {
                tally.judged(obj, verdict, audit);
                previous
            }
            Some(Done::Copied(obj, r)) => tally.copied(&obj, r, audit),
        };
        // A run with a failure writes no manifest: no more segments either.
        if let Some(e) = entry
            && tally.failed() == 0
        {
            segments.push(e).await?;
        }
    }
    tally.settle()?;
    let (refs, written) = segments.finish().await?;
    Ok((tally.report, refs, written))
}

/// What a plan-only run would do: the steps counted, nothing copied.
pub(super) async fn plan_only(
    mut steps: BoxStream<'_, Result<Step, TransferError>>,
    audit: &AuditLog,
) -> Result<Report, TransferError> {
    let mut tally = Tally::default();
    while let Some(step) = steps.next().await {
        if let Some((obj, verdict)) = step?.object {
            tally.judged(obj, verdict, audit);
        }
    }
    Ok(tally.report)
}

/// A run's counts as its steps are done.
#[derive(Default)]
struct Tally {
    report: Report,
    first_error: Option<TransferError>,
    reasons: BTreeSet<Reason>,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.report.objects_failed
    }

    /// Counts an object not copied (with an audit line when refused or
    /// skipped as erased); one to copy is listed in the plan.
    fn judged(&mut self, obj: ObjectMeta, verdict: Verdict, audit: &AuditLog) {
        let report = &mut self.report;
        match verdict {
            Verdict::Erased => {
                audit.record(
                    "object.skipped",
                    Outcome::Success,
                    Some("ErasedOnRequest"),
                    Some(&obj.key),
                );
                report.objects_tombstoned += 1;
            }
            Verdict::Refused(r) => {
                audit.record(
                    "object.refused",
                    Outcome::Denied,
                    Some(r.reason.as_str()),
                    Some(&obj.key),
                );
                report.objects_failed += 1;
                report.refused.push((obj.key, r.message));
            }
            Verdict::Reserved => {
                // A source's own `.ferry/` (another Ferry destination used as
                // a source, or a file dropped there to pass for a record).
                audit.record(
                    "object.skipped",
                    Outcome::Denied,
                    Some(RESERVED),
                    Some(&obj.key),
                );
                report.objects_skipped += 1;
            }
            Verdict::Unchanged => report.objects_skipped += 1,
            Verdict::Copy { streams, .. } => report.planned.push(Planned {
                key: obj.key,
                size: obj.size,
                streams,
            }),
        }
    }

    /// Counts a copy, with its audit line: its entry when it was made.
    fn copied(
        &mut self,
        obj: &ObjectMeta,
        r: Result<ManifestEntry, TransferError>,
        audit: &AuditLog,
    ) -> Option<ManifestEntry> {
        match r {
            Ok(e) => {
                audit.record("object.copy", Outcome::Success, None, Some(&obj.key));
                self.report.objects_copied += 1;
                self.report.bytes_read += e.size;
                self.report.bytes_written += e.encrypted_size;
                Some(e)
            }
            Err(e) => {
                audit.record(
                    "object.copy",
                    Outcome::Failure,
                    Some(e.reason().as_str()),
                    Some(&obj.key),
                );
                self.report.objects_failed += 1;
                tracing::error!(error = %e, "object failed");
                self.reasons.insert(e.reason());
                self.first_error.get_or_insert(e);
                None
            }
        }
    }

    /// A run with any failure (or refusal) fails: it never advances the
    /// cursor, so no manifest is written; what it copied is complete and will
    /// be recognised (or copied again) next time.
    fn settle(&mut self) -> Result<(), TransferError> {
        let report = &self.report;
        if report.objects_failed == 0 {
            return Ok(());
        }
        Err(match self.first_error.take() {
            Some(e) if report.objects_failed == 1 && report.refused.is_empty() => e,
            _ => TransferError::Incomplete {
                failed: report.objects_failed,
                refused: report.refused.len() as u64,
                common: (self.reasons.len() == 1)
                    .then(|| self.reasons.iter().next().copied())
                    .flatten(),
            },
        })
    }
}

async fn copy_with_retry(
    src: &dyn ObjectStore,
    dst: &dyn ObjectStore,
    kek: &Kek,
    obj: &ObjectMeta,
    fields: Option<&[String]>,
    opts: &Options,
) -> Result<ManifestEntry, TransferError> {
    let mut delay = opts.backoff;
    let mut attempt = 1;
    loop {
        match copy_one(src, dst, kek, obj, fields).await {
            Err(TransferError::Storage(e)) if e.is_transient() && attempt < opts.attempts => {
                tracing::warn!(error = %e, attempt, "transient error, retrying");
                tokio::time::sleep(jitter(delay)).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A delay between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = crate::crypto::aead::random_bytes(&mut b)
        .map(|()| u16::from_le_bytes(b))
        .unwrap_or(u16::MAX);
    d / 2 + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

/// Copies one object: read, minimise (when asked), hash, encrypt, hash, write
/// atomically; the entry of the manifest that records it.
async fn copy_one(
    src: &dyn ObjectStore,
    dst: &dyn ObjectStore,
    kek: &Kek,
    obj: &ObjectMeta,
    fields: Option<&[String]>,
) -> Result<ManifestEntry, TransferError> {
    let started = Instant::now();
    let encrypt_error = |reason: String| TransferError::Encrypt {
        key: obj.key.clone(),
        reason,
    };
    if obj.key.starts_with(crate::crypto::manifest::RECORDS_DIR) {
        // Never reached (the plan sets such keys apart): a data object never
        // lands among the destination's own records.
        return Err(TransferError::Storage(StorageError::InvalidKey {
            endpoint: dst.describe(),
            key: obj.key.clone(),
            reason: "under .ferry/, where Ferry keeps its own records",
        }));
    }
    let projector = fields.map(|f| Projector::new(&obj.key, f)).transpose()?;
    let input = src.get(&obj.key, None).await?;
    let enc = ObjectEncrypter::new(kek, &obj.key).map_err(|e| encrypt_error(e.to_string()))?;
    let origin = Origin {
        endpoint: src.describe(),
        key: obj.key.clone(),
        size: Some(obj.size),
    };
    let (body, sealing) = encrypt_stream(input, enc, projector, origin);
    let (sealed, written) = tokio::join!(sealing, dst.put(&obj.key, body));
    let sealed = sealed.unwrap_or_else(|e| Err(SealError::Other(format!("reader task: {e}"))));
    // The encrypting side's own failure says more than the aborted write it caused.
    let sealed = match sealed {
        Ok(s) => s,
        Err(SealError::Projection(e)) => return Err(e.into()),
        Err(SealError::Other(reason)) => {
            written?;
            return Err(encrypt_error(reason));
        }
    };
    let written = written?;
    if written != sealed.cipher_len {
        return Err(encrypt_error(format!(
            "the destination stored {written} bytes of {}",
            sealed.cipher_len
        )));
    }
    tracing::debug!(key = %obj.key, size = sealed.plain_len, elapsed_ms = started.elapsed().as_millis() as u64, "copied");
    Ok(ManifestEntry {
        key: obj.key.clone(),
        size: sealed.plain_len,
        sha256: sealed.plain_sha256,
        encrypted_size: sealed.cipher_len,
        encrypted_sha256: sealed.cipher_sha256,
        source_modified: obj.modified.clone(),
        source_etag: obj.etag.clone(),
        source_size: fields.map(|_| obj.size),
        fields: fields.map(<[String]>::to_vec).unwrap_or_default(),
    })
}
