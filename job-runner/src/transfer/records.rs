//! The destination's records: finding, reading, verifying and writing the
//! signed manifests under [`MANIFEST_DIR`].

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::audit::{AuditLog, Outcome};
use crate::crypto::{Kek, KeyRing, Manifest, ManifestEntry, Tombstone};
use crate::storage::{ByteStream, ObjectMeta, ObjectStore, StorageError};

use super::{MANIFEST_DIR, Options, TransferError};
use ferry_crds::Reason;

/// The newest manifest under the destination, verified.
pub async fn latest_manifest(
    dst: &dyn ObjectStore,
    keys: &KeyRing,
) -> Result<Option<(String, Manifest)>, TransferError> {
    let listed = list_destination(dst).await?;
    newest_manifest(dst, &listed, keys).await
}

/// Everything under the destination prefix; nothing when its container or
/// folder does not exist yet.
pub(super) async fn list_destination(
    dst: &dyn ObjectStore,
) -> Result<Vec<ObjectMeta>, TransferError> {
    match dst.list().await {
        Ok(l) => Ok(l),
        Err(StorageError::NoSuchContainer { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// The newest manifest of a destination listing, verified.
pub(super) async fn newest_manifest(
    dst: &dyn ObjectStore,
    listed: &[ObjectMeta],
    keys: &KeyRing,
) -> Result<Option<(String, Manifest)>, TransferError> {
    let Some(key) = newest_manifest_key(listed.iter().map(|o| o.key.as_str())) else {
        return Ok(None);
    };
    let manifest = read_manifest(dst, &key, keys).await?;
    Ok(Some((key, manifest)))
}

/// Whether `key` names a manifest.
pub fn is_manifest_key(key: &str) -> bool {
    key.starts_with(MANIFEST_DIR) && key.ends_with(".json")
}

/// The key of a new manifest: a UTC timestamp, to the microsecond, then the run
/// id, so the newest sorts last whatever the runs are called.
pub fn manifest_key(run_id: &str, now: jiff::Timestamp) -> String {
    let stamp = now.strftime("%Y%m%dT%H%M%S");
    format!(
        "{MANIFEST_DIR}{stamp}{:06}Z-{run_id}.json",
        now.subsec_microsecond()
    )
}

/// The newest of the manifest keys among `keys`: the greatest timestamped key;
/// manifests from before timestamped names (`<run>.json`) only when there is no
/// timestamped one.
pub fn newest_manifest_key<'a>(keys: impl Iterator<Item = &'a str>) -> Option<String> {
    keys.filter(|k| is_manifest_key(k))
        .max_by_key(|k| {
            let name = &k[MANIFEST_DIR.len()..];
            let stamped = name.len() > 23
                && name.as_bytes()[..8].iter().all(u8::is_ascii_digit)
                && name.as_bytes()[8] == b'T'
                && name.as_bytes()[21..23] == *b"Z-";
            (stamped, *k)
        })
        .map(str::to_string)
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

/// `found`, with an integrity failure audited.
pub(super) fn audited<T>(
    found: Result<T, TransferError>,
    audit: &AuditLog,
) -> Result<T, TransferError> {
    found.inspect_err(|e| {
        if e.reason() == Reason::IntegrityFailure {
            audit.record(
                "integrity.check",
                Outcome::Failure,
                Some(Reason::IntegrityFailure.as_str()),
                None,
            );
        }
    })
}

/// Writes `manifest` at `key` (replacing what is there).
pub(super) async fn put_manifest(
    dst: &dyn ObjectStore,
    key: &str,
    manifest: &Manifest,
) -> Result<(), TransferError> {
    let body = serde_json::to_vec_pretty(manifest).map_err(|e| TransferError::Encrypt {
        key: key.into(),
        reason: e.to_string(),
    })?;
    let stream: ByteStream = futures::stream::once(async move { Ok(Bytes::from(body)) }).boxed();
    dst.put(key, stream).await?;
    Ok(())
}

/// Signs and writes this run's manifest; returns its key.
pub(super) async fn write_manifest(
    dst: &dyn ObjectStore,
    kek: &Kek,
    opts: &Options,
    objects: Vec<ManifestEntry>,
    erased: Vec<Tombstone>,
) -> Result<String, TransferError> {
    let now = jiff::Timestamp::now();
    let manifest = Manifest::sign_with_tombstones(
        kek,
        &opts.run_id,
        &opts.connector,
        &now.to_string(),
        objects,
        erased,
    );
    let key = manifest_key(&opts.run_id, now);
    put_manifest(dst, &key, &manifest).await?;
    Ok(key)
}
