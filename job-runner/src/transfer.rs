//! The transfer engine: select, compare with the last manifest, copy with
//! encryption inline and bounded concurrency, then write the signed manifest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_crds::{ConnectorSpec, Sensitivity, SyncMode};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::audit::{AuditLog, Outcome};
use crate::crypto::{Kek, KeyRing, Manifest, ManifestEntry, ManifestError, ObjectEncrypter};
use crate::select::{GlobError, Selection, Selector, StreamMatch};
use crate::storage::{ByteStream, ObjectMeta, ObjectStore, StorageError};

/// Folder, under the destination prefix, holding Ferry's manifests.
pub const MANIFEST_DIR: &str = ".ferry/manifests/";
/// Encrypted bytes gathered before they are handed to the destination.
const WRITE_CHUNK: usize = 1 << 20;

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Copy.
    Sync,
    /// List what would be copied, copy nothing.
    Plan,
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// Run id: names the manifest.
    pub run_id: String,
    /// `namespace/name` of the Connector.
    pub connector: String,
    /// Objects copied at once.
    pub concurrency: usize,
    /// Attempts per object for transient errors.
    pub attempts: u32,
    /// First retry delay; doubles each time, with jitter.
    pub backoff: Duration,
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
    #[error("the previous manifest {key:?} is not valid JSON: {reason}")]
    ManifestParse { key: String, reason: String },
    #[error("failed to encrypt object {key:?}: {reason}")]
    Encrypt { key: String, reason: String },
    #[error(transparent)]
    Key(#[from] crate::crypto::KeyError),
    #[error(
        "{failed} object(s) failed or were refused; the manifest was not written and the cursor did not move"
    )]
    Incomplete { failed: u64 },
}

impl TransferError {
    /// A stable, machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            TransferError::Glob(_) => "InvalidSpec",
            TransferError::Storage(e) => e.reason(),
            TransferError::Integrity { .. } | TransferError::ManifestParse { .. } => {
                "IntegrityFailure"
            }
            TransferError::Encrypt { .. } => "EncryptionFailure",
            TransferError::Key(_) => "InvalidEncryptionKey",
            TransferError::Incomplete { .. } => "ObjectsFailed",
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
    /// What would be or was copied.
    pub planned: Vec<Planned>,
    /// Objects refused, with the reason.
    pub refused: Vec<(String, String)>,
}

/// Live counters, for progress reporting.
#[derive(Debug, Default)]
pub struct Progress {
    pub objects: AtomicU64,
    pub bytes: AtomicU64,
}

/// The newest manifest under the destination, verified.
pub async fn latest_manifest(
    dst: &dyn ObjectStore,
    keys: &KeyRing,
) -> Result<Option<(String, Manifest)>, TransferError> {
    let listed = match dst.list().await {
        Ok(l) => l,
        Err(StorageError::NoSuchContainer { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(key) = listed
        .iter()
        .filter(|o| o.key.starts_with(MANIFEST_DIR) && o.key.ends_with(".json"))
        .map(|o| o.key.clone())
        .max()
    else {
        return Ok(None);
    };
    let manifest = read_manifest(dst, &key, keys).await?;
    Ok(Some((key, manifest)))
}

/// Reads and verifies the manifest at `key`.
pub async fn read_manifest(
    dst: &dyn ObjectStore,
    key: &str,
    keys: &KeyRing,
) -> Result<Manifest, TransferError> {
    let bytes: Vec<u8> = dst
        .get(key, None)
        .await?
        .try_fold(Vec::new(), |mut acc, b| async move {
            acc.extend_from_slice(&b);
            Ok(acc)
        })
        .await?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| TransferError::ManifestParse {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
    manifest
        .verify(keys)
        .map_err(|source| TransferError::Integrity {
            key: key.to_string(),
            source,
        })?;
    Ok(manifest)
}

fn unchanged(prev: &ManifestEntry, now: &ObjectMeta) -> bool {
    prev.size == now.size
        && prev.source_modified == now.modified
        && match (&prev.source_etag, &now.etag) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        }
}

fn refusal(streams: &[StreamMatch], allowed: &[Sensitivity]) -> Option<String> {
    for s in streams {
        if let Some(tag) = s.sensitivity.iter().find(|t| !allowed.contains(t)) {
            return Some(format!(
                "stream {:?} is tagged {} which compliance.allowedSensitivity does not allow",
                s.name,
                tag.as_str()
            ));
        }
        if !s.fields.is_empty() {
            return Some(format!(
                "stream {:?} asks for data minimisation (fields), which this runner cannot apply yet; refusing rather than copying whole rows",
                s.name
            ));
        }
    }
    None
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
    let kek = keys.current()?;
    let listed = src.list().await?;
    let previous = match spec.sync_mode {
        SyncMode::Incremental => latest_manifest(dst.as_ref(), &keys)
            .await
            .inspect_err(|e| {
                if e.reason() == "IntegrityFailure" {
                    audit.record(
                        "integrity.check",
                        Outcome::Failure,
                        Some("IntegrityFailure"),
                        None,
                    );
                }
            })?,
        SyncMode::Full => None,
    };
    let mut entries: BTreeMap<String, ManifestEntry> = previous
        .as_ref()
        .map(|(_, m)| {
            m.objects
                .iter()
                .map(|e| (e.key.clone(), e.clone()))
                .collect()
        })
        .unwrap_or_default();

    let mut report = Report::default();
    let mut to_copy = Vec::new();
    for obj in listed {
        let streams = match selector.select(&obj.key) {
            Selection::Skip => continue,
            Selection::Take(s) => s,
        };
        if let Some(reason) = refusal(&streams, &spec.compliance.allowed_sensitivity) {
            audit.record(
                "object.refused",
                Outcome::Denied,
                Some("PolicyViolation"),
                Some(&obj.key),
            );
            report.objects_failed += 1;
            report.refused.push((obj.key.clone(), reason));
            continue;
        }
        if let Some(prev) = entries.get(&obj.key)
            && unchanged(prev, &obj)
        {
            report.objects_skipped += 1;
            continue;
        }
        report.planned.push(Planned {
            key: obj.key.clone(),
            size: obj.size,
            streams: streams.iter().map(|s| s.name.clone()).collect(),
        });
        to_copy.push(obj);
    }
    if opts.mode == Mode::Plan {
        return Ok(report);
    }

    let results: Vec<Result<ManifestEntry, TransferError>> = futures::stream::iter(to_copy)
        .map(|obj| {
            let (src, dst, progress) = (src.clone(), dst.clone(), progress.clone());
            async move {
                let r = copy_with_retry(src.as_ref(), dst.as_ref(), kek, &obj, opts).await;
                if let Ok(e) = &r {
                    progress.objects.fetch_add(1, Ordering::Relaxed);
                    progress
                        .bytes
                        .fetch_add(e.encrypted_size, Ordering::Relaxed);
                }
                (obj, r)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .map(|(obj, r)| {
            match &r {
                Ok(_) => audit.record("object.copy", Outcome::Success, None, Some(&obj.key)),
                Err(e) => audit.record(
                    "object.copy",
                    Outcome::Failure,
                    Some(e.reason()),
                    Some(&obj.key),
                ),
            }
            r
        })
        .collect()
        .await;

    let mut first_error = None;
    for r in results {
        match r {
            Ok(e) => {
                report.objects_copied += 1;
                report.bytes_read += e.size;
                report.bytes_written += e.encrypted_size;
                entries.insert(e.key.clone(), e);
            }
            Err(e) => {
                report.objects_failed += 1;
                tracing::error!(error = %e, "object failed");
                first_error.get_or_insert(e);
            }
        }
    }
    if report.objects_failed > 0 {
        // A failed run never advances the cursor: no manifest is written. What it
        // copied is complete and will be recognised (or re-copied) next time.
        return Err(match first_error {
            Some(e) if report.objects_failed == 1 && report.refused.is_empty() => e,
            _ => TransferError::Incomplete {
                failed: report.objects_failed,
            },
        });
    }

    let created = jiff::Timestamp::now().to_string();
    let manifest = Manifest::sign(
        kek,
        &opts.run_id,
        &opts.connector,
        &created,
        entries.into_values().collect(),
    );
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| TransferError::Encrypt {
        key: "manifest".into(),
        reason: e.to_string(),
    })?;
    let key = format!("{MANIFEST_DIR}{}.json", opts.run_id);
    let stream: ByteStream = futures::stream::once(async move { Ok(Bytes::from(body)) }).boxed();
    dst.put(&key, stream).await?;
    report.manifest = Some(key);
    Ok(report)
}

async fn copy_with_retry(
    src: &dyn ObjectStore,
    dst: &dyn ObjectStore,
    kek: &Kek,
    obj: &ObjectMeta,
    opts: &Options,
) -> Result<ManifestEntry, TransferError> {
    let mut delay = opts.backoff;
    let mut attempt = 1;
    loop {
        match copy_one(src, dst, kek, obj).await {
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

/// Copies one object: read, hash, encrypt, hash, write atomically.
async fn copy_one(
    src: &dyn ObjectStore,
    dst: &dyn ObjectStore,
    kek: &Kek,
    obj: &ObjectMeta,
) -> Result<ManifestEntry, TransferError> {
    let started = Instant::now();
    let mut input = src.get(&obj.key, None).await?;
    let mut enc = ObjectEncrypter::new(kek, &obj.key).map_err(|e| TransferError::Encrypt {
        key: obj.key.clone(),
        reason: e.to_string(),
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StorageError>>(4);
    let key = obj.key.clone();
    let src_name = src.describe();
    let producer = async move {
        let mut plain_hash = Sha256::new();
        let mut cipher_hash = Sha256::new();
        let (mut plain_len, mut cipher_len) = (0u64, 0u64);
        let mut out = Vec::with_capacity(WRITE_CHUNK + (1 << 16));
        let fail = |reason: String| StorageError::Source {
            endpoint: src_name.clone(),
            key: key.clone(),
            reason,
        };
        let send = |buf: Vec<u8>, hash: &mut Sha256, len: &mut u64| {
            hash.update(&buf);
            *len += buf.len() as u64;
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(buf))).await.is_ok() }
        };
        while let Some(chunk) = input.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let reason = e.to_string();
                    let _ = tx.send(Err(e)).await;
                    return Err(reason);
                }
            };
            plain_hash.update(&chunk);
            plain_len += chunk.len() as u64;
            if let Err(e) = enc.push(&chunk, &mut out) {
                let _ = tx.send(Err(fail(e.to_string()))).await;
                return Err(e.to_string());
            }
            if out.len() >= WRITE_CHUNK {
                let buf = std::mem::replace(&mut out, Vec::with_capacity(WRITE_CHUNK + (1 << 16)));
                if !send(buf, &mut cipher_hash, &mut cipher_len).await {
                    return Err("destination closed".into());
                }
            }
        }
        if plain_len != obj.size {
            let e = StorageError::ChangedDuringRead {
                endpoint: src_name.clone(),
                key: key.clone(),
            };
            let reason = e.to_string();
            let _ = tx.send(Err(e)).await;
            return Err(reason);
        }
        if let Err(e) = enc.finish(&mut out) {
            let _ = tx.send(Err(fail(e.to_string()))).await;
            return Err(e.to_string());
        }
        if !send(out, &mut cipher_hash, &mut cipher_len).await {
            return Err("destination closed".into());
        }
        drop(tx);
        Ok((
            plain_len,
            hex::encode(plain_hash.finalize()),
            cipher_len,
            hex::encode(cipher_hash.finalize()),
        ))
    };
    let body: ByteStream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
            .boxed();
    let (produced, written) = tokio::join!(producer, dst.put(&obj.key, body));
    let written = written?;
    let (size, sha256, encrypted_size, encrypted_sha256) =
        produced.map_err(|reason| TransferError::Encrypt {
            key: obj.key.clone(),
            reason,
        })?;
    if written != encrypted_size {
        return Err(TransferError::Encrypt {
            key: obj.key.clone(),
            reason: format!("the destination stored {written} bytes of {encrypted_size}"),
        });
    }
    tracing::debug!(key = %obj.key, size, elapsed_ms = started.elapsed().as_millis() as u64, "copied");
    Ok(ManifestEntry {
        key: obj.key.clone(),
        size,
        sha256,
        encrypted_size,
        encrypted_sha256,
        source_modified: obj.modified.clone(),
        source_etag: obj.etag.clone(),
    })
}
