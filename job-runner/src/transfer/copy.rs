//! Copying the objects a plan chose: bounded concurrency, retries of transient
//! failures, and each object read, minimised, encrypted and written as one
//! stream ([`crate::pipe::encrypt_stream`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::audit::{AuditLog, Outcome};
use crate::crypto::{Kek, ManifestEntry, ObjectEncrypter};
use crate::pipe::{Origin, SealError, encrypt_stream};
use crate::project::Projector;
use crate::storage::{ObjectMeta, ObjectStore};

use super::{Options, Progress, SMALL_FACTOR, SMALL_OBJECT, TransferError};

/// One object to copy, with the columns kept when it is minimised.
pub(super) type Work = (ObjectMeta, Option<Vec<String>>);

/// Copies every object of `work`: up to `concurrency` large objects at once
/// (they hold part and range buffers), however many small ones besides, up to
/// [`SMALL_FACTOR`] times as many in all. One audit line per object.
pub(super) async fn copy_all(
    src: Arc<dyn ObjectStore>,
    dst: Arc<dyn ObjectStore>,
    kek: &Kek,
    work: Vec<Work>,
    opts: &Options,
    audit: &AuditLog,
    progress: Arc<Progress>,
) -> Vec<Result<ManifestEntry, TransferError>> {
    let concurrency = opts.concurrency.max(1);
    let large = Arc::new(tokio::sync::Semaphore::new(concurrency));
    futures::stream::iter(work)
        .map(|(obj, fields)| {
            let (src, dst, progress) = (src.clone(), dst.clone(), progress.clone());
            let large = large.clone();
            async move {
                // The semaphore is never closed, so a permit always comes.
                let _slot = if obj.size > SMALL_OBJECT {
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
                (obj, r)
            }
        })
        .buffer_unordered(concurrency * SMALL_FACTOR)
        .map(|(obj, r)| {
            match &r {
                Ok(_) => audit.record("object.copy", Outcome::Success, None, Some(&obj.key)),
                Err(e) => audit.record(
                    "object.copy",
                    Outcome::Failure,
                    Some(e.reason().as_str()),
                    Some(&obj.key),
                ),
            }
            r
        })
        .collect()
        .await
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
