//! The destination's records: finding, reading, verifying and writing the
//! signed manifests under [`MANIFEST_DIR`].

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::audit::{AuditLog, Outcome};
use crate::crypto::segments::{self, Cutter, SEGMENT_DIR, Segment, SegmentRef};
use crate::crypto::{
    Anchor, ChainBreak, Contents, Kek, KeyError, KeyRing, Manifest, ManifestEntry, ManifestError,
    ObjectEncrypter, Place, Tombstone, check_anchor,
};
use crate::pipe::{Origin, encrypt_stream};
use crate::storage::{ByteStream, Listing, ObjectStore, StorageError};

use super::{MANIFEST_DIR, Options, TransferError};
use ferry_crds::{AUDIT_DIR, Reason};

/// How far ahead of this machine's clock a manifest's creation may be (clock
/// skew between the machines that ran the runs).
pub const CLOCK_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// The newest manifest under the destination, verified (no anchor: its place
/// is checked, not what it builds on).
pub async fn latest_manifest(
    dst: &dyn ObjectStore,
    keys: &KeyRing,
) -> Result<Option<(String, Manifest)>, TransferError> {
    newest_manifest(dst, keys, None, None).await
}

/// Everything under `under` at the destination, in key order; nothing when
/// its container or folder does not exist yet.
pub(super) fn list_destination<'a>(dst: &'a dyn ObjectStore, under: &'a str) -> Listing<'a> {
    dst.list_from(under)
        .filter(|o| futures::future::ready(!matches!(o, Err(StorageError::NoSuchContainer { .. }))))
        .boxed()
}

/// The names of the destination's manifests (a few per run, not per object).
pub(super) async fn manifest_names(dst: &dyn ObjectStore) -> Result<Vec<String>, TransferError> {
    Ok(list_destination(dst, MANIFEST_DIR)
        .try_filter_map(|o| futures::future::ready(Ok(is_manifest_key(&o.key).then_some(o.key))))
        .try_collect()
        .await?)
}

/// The segments stored at the destination, by key, with their sizes.
pub(super) async fn stored_segments(
    dst: &dyn ObjectStore,
) -> Result<BTreeMap<String, u64>, TransferError> {
    Ok(list_destination(dst, SEGMENT_DIR)
        .map_ok(|o| (o.key, o.size))
        .try_collect()
        .await?)
}

/// The most files under the manifests' folder that are not Ferry's manifests
/// (not JSON, not verifying with the Connector's key, stored under another
/// name than the one written into them) a search for the newest manifest
/// passes over before it gives up.
pub const MAX_FOREIGN_MANIFESTS: usize = 64;

/// Whether `e`, met reading a file under the manifests' folder, says the file
/// is no manifest of that name at all: not JSON, too large, or a manifest
/// written under another name (an older one copied there). A manifest stored
/// under its own name that does not verify is not such a file: it was
/// altered, and that is reported.
pub fn not_a_manifest(e: &TransferError) -> bool {
    matches!(
        e,
        TransferError::ManifestParse { .. }
            | TransferError::RecordTooLarge { .. }
            | TransferError::Integrity {
                source: ManifestError::Misplaced { .. },
                ..
            }
    )
}

/// Whether `e`, met reading a file under the manifests' folder, says the file
/// is none of the Connector's manifests: [`not_a_manifest`], or one that does
/// not verify with its key. With an anchor, such a file is passed over: the
/// chain from the anchor says whether a manifest of it is missing.
fn not_the_connectors(e: &TransferError) -> bool {
    not_a_manifest(e) || matches!(e, TransferError::Integrity { .. })
}

/// The newest manifest of the destination, verified: stored under the name
/// it was written with, not created in the future, and, given the operator's
/// `anchor`, the anchor's manifest or one built on it link by link: the end
/// of the chain that starts at the anchor, whatever other names sort after
/// it. A file under the manifests' folder that is not one of the Connector's
/// manifests (whoever can write the destination, or a source copied into it,
/// can put one there under any name) is passed over, said in the log and
/// the audit trail ([`MAX_FOREIGN_MANIFESTS`] at most); it never stops the
/// Connector's runs. A manifest of the chain that is missing or altered still
/// fails the run: the chain no longer reaches the anchor. Without an anchor
/// (a first run, a local one) only files that are no manifest of their name
/// ([`not_a_manifest`]) are passed over: an altered newest manifest fails.
pub(super) async fn newest_manifest(
    dst: &dyn ObjectStore,
    keys: &KeyRing,
    anchor: Option<&Anchor>,
    audit: Option<&AuditLog>,
) -> Result<Option<(String, Manifest)>, TransferError> {
    let mut names = manifest_names(dst).await?;
    // Newest name first.
    names.sort_by(|a, b| sort_key(b).cmp(&sort_key(a)));
    let mut foreign = 0usize;
    // The Connector's manifests, newest name first, down to the anchor's
    // sequence (without an anchor, the first one).
    let mut found: Vec<(String, Manifest)> = Vec::new();
    for key in &names {
        let enough = match anchor {
            Some(anchor) => found
                .last()
                .is_some_and(|(_, m)| m.sequence() <= anchor.sequence),
            None => !found.is_empty(),
        };
        if enough {
            break;
        }
        match read_manifest(dst, key, keys).await {
            Ok(m) => {
                not_in_the_future(key, &m)?;
                found.push((key.clone(), m));
            }
            Err(e) if anchor.map_or(not_a_manifest(&e), |_| not_the_connectors(&e)) => {
                foreign += 1;
                tracing::warn!(key, error = %e, "passing over a file under the manifests' folder that is not one of the Connector's manifests");
                if let Some(audit) = audit {
                    audit.record(
                        "manifest.foreign",
                        Outcome::Denied,
                        Some(Reason::IntegrityFailure.as_str()),
                        Some(key),
                    );
                }
                if foreign > MAX_FOREIGN_MANIFESTS {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    let Some(anchor) = anchor else {
        return Ok(found.into_iter().next());
    };
    if found.is_empty() {
        // The operator recorded a manifest; none is left.
        return Err(ChainBreak::Rollback {
            key: MANIFEST_DIR.to_string(),
            found: 0,
            anchor: anchor.sequence,
        }
        .into());
    }
    found.reverse();
    let tail = chain_from(found, anchor)?;
    Ok(tail.into_iter().last())
}

/// Of the Connector's manifests `found` (verified, oldest name first, the
/// oldest at or before the anchor's sequence), the chain from the anchor's
/// manifest to the newest built on it, link by link. The chain's end is the
/// newest manifest; a manifest off it (two runs built on the same one, an
/// older one put back) breaks the chain, as does an anchor not found.
fn chain_from(
    found: Vec<(String, Manifest)>,
    anchor: &Anchor,
) -> Result<Vec<(String, Manifest)>, TransferError> {
    let Some(start) = found
        .iter()
        .position(|(_, m)| m.sequence() == anchor.sequence && m.link() == anchor.link)
    else {
        // As before: the newest one says how (a rollback, another manifest
        // with the anchor's sequence).
        check_anchor(&found, anchor)?;
        return Err(ChainBreak::NotAnchor {
            key: found[0].0.clone(),
            sequence: anchor.sequence,
        }
        .into());
    };
    let mut tail = found;
    tail.drain(..start);
    check_anchor(&tail, anchor)?;
    Ok(tail)
}

/// The entries of a verified manifest, in key order, one segment read at a
/// time (the next one fetched while this one is used); the entries of an
/// older manifest, which holds them all, sorted.
pub fn entries<'a>(
    dst: &'a dyn ObjectStore,
    manifest: &Manifest,
) -> BoxStream<'a, Result<ManifestEntry, TransferError>> {
    if !manifest.is_segmented() {
        let mut objects = manifest.objects.clone();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        return futures::stream::iter(objects.into_iter().map(Ok)).boxed();
    }
    segment_entries(dst, manifest.segments.clone())
}

/// The entries of `segments` (listed by a verified manifest or part), in
/// order, one segment read at a time.
pub(super) fn segment_entries(
    dst: &dyn ObjectStore,
    segments: Vec<SegmentRef>,
) -> BoxStream<'_, Result<ManifestEntry, TransferError>> {
    futures::stream::iter(segments)
        .map(move |r| async move { read_segment(dst, &r).await })
        .buffered(2)
        .map(|segment| match segment {
            Ok(entries) => futures::stream::iter(entries.into_iter().map(Ok)).left_stream(),
            Err(e) => futures::stream::once(async { Err(e) }).right_stream(),
        })
        .flatten()
        .boxed()
}

/// Reads the segment `r` names and checks it against `r`.
async fn read_segment(
    dst: &dyn ObjectStore,
    r: &SegmentRef,
) -> Result<Vec<ManifestEntry>, TransferError> {
    let key = r.key();
    let mut body = dst.get(&key, None).await?;
    let mut bytes = Vec::with_capacity(usize::try_from(r.size).unwrap_or(0));
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk?);
        if bytes.len() as u64 > r.size {
            break; // larger than listed: refused below, unread
        }
    }
    segments::open(r, &bytes).map_err(|source| TransferError::Integrity { key, source })
}

/// Reads every entry of a verified manifest into `manifest.objects` (for
/// readers and erasure, which hold one manifest's entries).
pub async fn load_entries(
    dst: &dyn ObjectStore,
    manifest: &mut Manifest,
) -> Result<(), TransferError> {
    if !manifest.is_segmented() {
        return Ok(());
    }
    let mut objects = Vec::new();
    for r in &manifest.segments {
        objects.extend(read_segment(dst, r).await?);
    }
    manifest.objects = objects;
    Ok(())
}

/// Stores segments as a run produces its entries in key order: a segment
/// already at the destination (the same name and size: the same bytes) is
/// not written again.
pub(super) struct SegmentWriter {
    dst: Arc<dyn ObjectStore>,
    cutter: Cutter,
    stored: BTreeMap<String, u64>,
    refs: Vec<SegmentRef>,
    /// Bytes of segments written since the last cut was finished.
    written: u64,
}

impl SegmentWriter {
    pub(super) async fn new(dst: Arc<dyn ObjectStore>) -> Result<Self, TransferError> {
        let stored = stored_segments(dst.as_ref()).await?;
        Ok(Self {
            dst,
            cutter: Cutter::default(),
            stored,
            refs: Vec::new(),
            written: 0,
        })
    }

    /// Adds the next entry (in key order).
    pub(super) async fn push(&mut self, entry: ManifestEntry) -> Result<(), TransferError> {
        let key = entry.key.clone();
        let cut = self
            .cutter
            .push(entry)
            .map_err(|source| TransferError::Integrity {
                key: key.clone(),
                source,
            })?;
        if let Some(segment) = cut {
            self.store(segment).await?;
        }
        Ok(())
    }

    async fn store(&mut self, segment: Segment) -> Result<(), TransferError> {
        let key = segment.reference.key();
        if self.stored.get(&key) != Some(&segment.reference.size) {
            let size = segment.bytes.len() as u64;
            put_bytes(self.dst.as_ref(), &key, segment.bytes).await?;
            self.written += size;
            self.stored.insert(key, size);
        }
        self.refs.push(segment.reference);
        Ok(())
    }

    /// Stores the last segment; the list of segments for the manifest.
    pub(super) async fn finish(mut self) -> Result<(Vec<SegmentRef>, u64), TransferError> {
        self.finish_cut().await
    }

    /// Stores the last segment and returns the list of segments and the
    /// bytes written, leaving the writer ready for the entries of another
    /// manifest (it still knows which segments are stored).
    pub(super) async fn finish_cut(&mut self) -> Result<(Vec<SegmentRef>, u64), TransferError> {
        if let Some(last) = std::mem::take(&mut self.cutter).finish() {
            self.store(last).await?;
        }
        Ok((
            std::mem::take(&mut self.refs),
            std::mem::take(&mut self.written),
        ))
    }
}

/// Refuses a manifest created after this machine's clock (and its skew).
pub fn not_in_the_future(key: &str, m: &Manifest) -> Result<(), TransferError> {
    let created: jiff::Timestamp = m
        .created
        .parse()
        .map_err(|_| TransferError::ManifestParse {
            key: key.to_string(),
            reason: format!("created {:?} is not a timestamp", m.created),
        })?;
    if created > jiff::Timestamp::now() + CLOCK_SKEW {
        return Err(ChainBreak::Future {
            key: key.to_string(),
            created: m.created.clone(),
        }
        .into());
    }
    Ok(())
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
        .max_by_key(|k| sort_key(k))
        .map(str::to_string)
}

/// The order of manifest keys: timestamped names after the older `<run>.json`
/// ones, then by name.
pub fn sort_key(key: &str) -> (bool, &str) {
    let name = key.get(MANIFEST_DIR.len()..).unwrap_or_default();
    let stamped = name.len() > 23
        && name.as_bytes()[..8].iter().all(u8::is_ascii_digit)
        && name.as_bytes()[8] == b'T'
        && name.as_bytes()[21..23] == *b"Z-";
    (stamped, key)
}

/// Reads and verifies the manifest at `key`.
pub async fn read_manifest(
    dst: &dyn ObjectStore,
    key: &str,
    keys: &KeyRing,
) -> Result<Manifest, TransferError> {
    let manifest = read_manifest_unverified(dst, key).await?;
    resolve_key(keys, key, &manifest).await?;
    manifest
        .verify_at(keys, key)
        .map_err(|source| TransferError::Integrity {
            key: key.to_string(),
            source,
        })?;
    Ok(manifest)
}

/// Makes sure `keys` holds the KEK of `manifest`, stored at `key`: with a
/// KMS, the run key it carries is unwrapped (one KMS call per run key). A KMS
/// that cannot be reached or refuses is a failure of the key, not of the
/// manifest; a manifest naming another KMS key, or a swapped run key, is one of
/// the manifest.
pub async fn resolve_key(
    keys: &KeyRing,
    key: &str,
    manifest: &Manifest,
) -> Result<(), TransferError> {
    match keys
        .resolve(&manifest.kek_id, manifest.kms.as_deref())
        .await
    {
        Ok(_) => Ok(()),
        Err(e @ (KeyError::Kms(_) | KeyError::NoKms(_))) => Err(TransferError::Key(e)),
        Err(e) => Err(TransferError::Integrity {
            key: key.to_string(),
            source: ManifestError::Key(e),
        }),
    }
}

/// The most a manifest or a shard's part may weigh. Ferry's own are small
/// (entries live in segments, each at most [`segments::MAX_SEGMENT_BYTES`]);
/// a manifest of the formats before segments held its entries inline, a
/// million of them in about 300 MB. Whoever can write the destination could
/// put a file of any size at a record's key: reading stops at the cap, with
/// an error naming the record, before memory runs out.
pub const MAX_RECORD_BYTES: u64 = 512 << 20;

/// The bytes of the record at `key`, at most `limit` of them: a larger one is
/// [`TransferError::RecordTooLarge`], read no further.
pub async fn read_capped(
    dst: &dyn ObjectStore,
    key: &str,
    limit: u64,
) -> Result<Vec<u8>, TransferError> {
    let mut body = dst.get(key, None).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(TransferError::RecordTooLarge {
                key: key.to_string(),
                limit,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Reads the manifest at `key` without verifying it: the caller does.
pub async fn read_manifest_unverified(
    dst: &dyn ObjectStore,
    key: &str,
) -> Result<Manifest, TransferError> {
    read_manifest_capped(dst, key, MAX_RECORD_BYTES).await
}

/// [`read_manifest_unverified`] with the cap `limit`.
pub async fn read_manifest_capped(
    dst: &dyn ObjectStore,
    key: &str,
    limit: u64,
) -> Result<Manifest, TransferError> {
    let bytes = read_capped(dst, key, limit).await?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| TransferError::ManifestParse {
            key: key.to_string(),
            reason: e.to_string(),
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

/// Writes `manifest` at `key` (replacing what is there): a version 6
/// manifest without the entries its segments hold.
pub(super) async fn put_manifest(
    dst: &dyn ObjectStore,
    key: &str,
    manifest: &Manifest,
) -> Result<u64, TransferError> {
    let failed = |e: serde_json::Error| TransferError::Encrypt {
        key: key.into(),
        reason: e.to_string(),
    };
    let body = if manifest.is_segmented() && !manifest.objects.is_empty() {
        let mut value = serde_json::to_value(manifest).map_err(failed)?;
        if let Some(fields) = value.as_object_mut() {
            fields.remove("objects");
        }
        serde_json::to_vec_pretty(&value).map_err(failed)?
    } else {
        serde_json::to_vec_pretty(manifest).map_err(failed)?
    };
    put_bytes(dst, key, body).await
}

/// Writes `body` at `key`.
pub(super) async fn put_bytes(
    dst: &dyn ObjectStore,
    key: &str,
    body: Vec<u8>,
) -> Result<u64, TransferError> {
    let stream: ByteStream = futures::stream::once(async move { Ok(Bytes::from(body)) }).boxed();
    Ok(dst.put(key, stream).await?)
}

/// The run's audit lines, streamed to the destination while the run goes on,
/// encrypted like its objects (under their own key, `.ferry/audit/...`): the
/// lines outlive the pod and travel with the records they describe.
pub(super) struct AuditCopy {
    key: String,
    task: tokio::task::JoinHandle<Result<ManifestEntry, TransferError>>,
}

impl AuditCopy {
    /// Starts the copy of `audit` to `dst`, named after the run and `now`;
    /// `None` when the log has no copy to make.
    pub(super) fn start(
        dst: Arc<dyn ObjectStore>,
        kek: &Kek,
        audit: &AuditLog,
        opts: &Options,
    ) -> Result<Option<Self>, TransferError> {
        let now = jiff::Timestamp::now();
        let key = format!(
            "{AUDIT_DIR}{}{:06}Z-{}.jsonl",
            now.strftime("%Y%m%dT%H%M%S"),
            now.subsec_microsecond(),
            opts.record_name()
        );
        let enc = ObjectEncrypter::new(kek, &key).map_err(|e| TransferError::Encrypt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let Some(lines) = audit.start_copy() else {
            return Ok(None);
        };
        let input: ByteStream = futures::stream::unfold(lines, |mut rx| async move {
            rx.recv().await.map(|line| (Ok(line), rx))
        })
        .boxed();
        let origin = Origin {
            endpoint: "audit".into(),
            key: key.clone(),
            size: None,
        };
        let (body, sealing) = encrypt_stream(input, enc, None, origin);
        let k = key.clone();
        let task = tokio::spawn(async move {
            let (sealed, written) = tokio::join!(sealing, dst.put(&k, body));
            let encrypt_error = |reason: String| TransferError::Encrypt {
                key: k.clone(),
                reason,
            };
            let sealed = sealed
                .map_err(|e| encrypt_error(format!("audit copy task: {e}")))?
                .map_err(|e| encrypt_error(format!("{e:?}")))?;
            let written = written?;
            if written != sealed.cipher_len {
                return Err(encrypt_error(format!(
                    "the destination stored {written} bytes of {}",
                    sealed.cipher_len
                )));
            }
            Ok(ManifestEntry {
                key: k.clone(),
                size: sealed.plain_len,
                sha256: sealed.plain_sha256,
                encrypted_size: sealed.cipher_len,
                encrypted_sha256: sealed.cipher_sha256,
                source_modified: None,
                source_etag: None,
                source_size: None,
                fields: vec![],
            })
        });
        Ok(Some(Self { key, task }))
    }

    /// Ends the copy with the lines written so far and waits for it to be
    /// stored: its entry for the manifest.
    pub(super) async fn finish(self, audit: &AuditLog) -> Result<ManifestEntry, TransferError> {
        audit.end_copy();
        self.task.await.map_err(|e| TransferError::Encrypt {
            key: self.key.clone(),
            reason: format!("audit copy task: {e}"),
        })?
    }
}

/// Ends `copy` when there is one: the entries of the records for the manifest.
pub(super) async fn finish_copy(
    copy: Option<AuditCopy>,
    audit: &AuditLog,
) -> Result<Vec<ManifestEntry>, TransferError> {
    match copy {
        Some(c) => Ok(vec![c.finish(audit).await?]),
        None => Ok(Vec::new()),
    }
}

/// Signs (MAC, and signature when the run has a signing key) and writes this
/// run's manifest, the next in the chain after `previous`, over `segments`
/// (already stored); returns its key, its place as the next run's anchor,
/// and its size.
pub(super) async fn write_manifest(
    dst: &dyn ObjectStore,
    kek: &Kek,
    opts: &Options,
    previous: Option<&Manifest>,
    segments: Vec<SegmentRef>,
    erased: Vec<Tombstone>,
    records: Vec<ManifestEntry>,
) -> Result<Written, TransferError> {
    let now = jiff::Timestamp::now();
    let key = manifest_key(&opts.run_id, now);
    let mut manifest = Manifest::sign(
        kek,
        Place::after(previous, &key),
        Contents {
            run: opts.run_id.clone(),
            connector: opts.connector.clone(),
            created: now.to_string(),
            segments,
            erased,
            records,
        },
    );
    if let Some(signer) = &opts.signer {
        manifest.add_signature(signer);
    }
    let bytes = put_manifest(dst, &key, &manifest).await?;
    let anchor = Anchor {
        sequence: manifest.sequence(),
        link: manifest.link(),
    };
    Ok(Written {
        key,
        anchor,
        created: manifest.created,
        bytes,
    })
}

/// A manifest a run wrote.
pub(super) struct Written {
    pub key: String,
    pub anchor: Anchor,
    /// When it was created, as written into it (its link covers it).
    pub created: String,
    pub bytes: u64,
}

impl Written {
    /// Puts the manifest's key, place and creation into `report`; its size.
    pub fn report(self, report: &mut super::Report) -> u64 {
        report.manifest = Some(self.key);
        report.anchor = Some(self.anchor);
        report.manifest_created = Some(self.created);
        self.bytes
    }
}

#[cfg(test)]
mod capped_tests {
    use super::*;
    use crate::storage::local::LocalStore;

    /// Attack: whoever can write the destination puts a file of gigabytes at
    /// a manifest's (or a shard part's) key; every later run and `verify`
    /// read it whole into memory. Reading stops at the cap, with an error that
    /// names the record; a record within the cap reads as before (control).
    #[tokio::test]
    async fn a_huge_file_at_a_record_key_is_refused_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let key = ".ferry/manifests/20261207T000000Z-huge.json";
        std::fs::create_dir_all(dir.path().join(".ferry/manifests")).unwrap();
        std::fs::write(dir.path().join(key), vec![b' '; 256 << 10]).unwrap();
        let store = LocalStore::new(dir.path());
        let e = read_manifest_capped(&store, key, 64 << 10)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TransferError::RecordTooLarge { key: k, limit } if k == key && *limit == 64 << 10),
            "{e}"
        );
        assert!(e.to_string().contains(key), "{e}");
        assert_eq!(e.reason(), ferry_crds::Reason::IntegrityFailure);
        // Within the cap: read, and refused for what it is (not a manifest).
        let e = read_manifest_capped(&store, key, 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(e, TransferError::ManifestParse { .. }), "{e}");
        assert!(read_capped(&store, key, 256 << 10).await.is_ok());
    }
}
