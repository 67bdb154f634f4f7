//! Erasure runs: delete what came from given source keys, remove it from every
//! manifest, and leave tombstones so later runs do not copy it back.

use std::collections::BTreeSet;
use std::sync::Arc;

use ferry_crds::Reason;

use crate::audit::{AuditLog, Outcome};
use crate::crypto::segments::SegmentRef;
use crate::crypto::{Kek, KeyRing, ManifestSigner, Tombstone};
use crate::storage::{Listing, ObjectStore, StorageError, Versions, check_key};
use futures::TryStreamExt;

use super::records::{
    SegmentWriter, audited, entries, list_destination, manifest_names, newest_manifest,
    put_manifest, read_manifest, write_manifest,
};
use super::{Erased, Options, Report, TransferError};

/// A right-to-erasure request: the run's `erase` field.
pub use ferry_crds::EraseSpec as EraseRequest;

/// Erases the copies of the requested source keys: deletes each destination
/// object, removes its entry from every manifest (each signed again), deletes
/// the source object when asked, and records a tombstone for every key whose
/// source object is still there, so later runs do not copy it back. Idempotent:
/// erasing again finds nothing left and reports the keys as erased. One audit
/// line per key and side.
pub async fn erase(
    src: Arc<dyn ObjectStore>,
    dst: Arc<dyn ObjectStore>,
    keys: Arc<KeyRing>,
    request: &EraseRequest,
    opts: &Options,
    audit: &AuditLog,
) -> Result<Report, TransferError> {
    let kek = &*keys.current()?;
    let wanted = wanted_keys(request)?;
    let audit_copy = super::records::AuditCopy::start(dst.clone(), kek, audit, opts)?;
    let erased = erase_and_rewrite(&src, &dst, &keys, request, &wanted, opts, audit).await;
    let records = super::records::finish_copy(audit_copy, audit).await;
    let (mut report, previous, tombstones) = erased?;
    // A new manifest carries the remaining entries and the tombstones
    // forward: those of the newest manifest as the rewrite left it, a segment
    // at a time. Its segments are those the rewrite just stored.
    let previous = match previous {
        Some(key) => Some(read_manifest(dst.as_ref(), &key, &keys).await?),
        None => None,
    };
    let mut segments = SegmentWriter::new(dst.clone()).await?;
    if let Some(m) = &previous {
        let mut carried = entries(dst.as_ref(), m);
        while let Some(e) = carried.try_next().await? {
            segments.push(e).await?;
        }
    }
    let (segments, segment_bytes) = segments.finish().await?;
    let written = write_manifest(
        dst.as_ref(),
        kek,
        opts,
        previous.as_ref(),
        segments,
        tombstones,
        records?,
    )
    .await?;
    report.manifest_bytes += segment_bytes + written.report(&mut report);
    Ok(report)
}

/// Erases each wanted key and rewrites the manifests that list them: the
/// report, the key of the newest manifest, and the tombstones to keep.
async fn erase_and_rewrite(
    src: &Arc<dyn ObjectStore>,
    dst: &Arc<dyn ObjectStore>,
    keys: &KeyRing,
    request: &EraseRequest,
    wanted: &BTreeSet<&str>,
    opts: &Options,
    audit: &AuditLog,
) -> Result<(Report, Option<String>, Vec<Tombstone>), TransferError> {
    let kek = &*keys.current()?;
    let previous = audited(
        newest_manifest(dst.as_ref(), keys, opts.anchor.as_ref(), Some(audit)).await,
        audit,
    )?;
    // Of each side's listing, only the keys asked for are kept.
    let at_destination = wanted_in(list_destination(dst.as_ref(), ""), wanted).await?;
    let at_source = wanted_in(src.list_from(""), wanted).await?;
    let mut report = Report::default();
    let mut tombstones = previous
        .as_ref()
        .map(|(_, m)| m.erased.clone())
        .unwrap_or_default();
    let now = jiff::Timestamp::now().to_string();
    let mut first_error = None;
    let sides = Sides {
        src: src.as_ref(),
        dst: dst.as_ref(),
        at_source: &at_source,
        at_destination: &at_destination,
        from_source: request.from_source,
        audit,
    };
    let mut versions = EarlierVersions::default();
    for key in wanted {
        let Some((done, source_remains)) =
            sides.erase_one(key, &mut report, &mut first_error).await
        else {
            continue;
        };
        // On a versioned destination the erased bytes stay as earlier
        // versions (an erasure run again finds them too).
        versions.purge(dst.as_ref(), key, audit).await?;
        if source_remains && !tombstones.iter().any(|t| t.key == *key) {
            tombstones.push(Tombstone {
                key: key.to_string(),
                run: opts.run_id.clone(),
                erased: now.clone(),
            });
        }
        report.erased.push(done);
    }
    tombstones.sort_by(|a, b| a.key.cmp(&b.key));
    let sealer = (kek, opts.signer.as_deref());
    report.manifest_bytes =
        rewrite_manifests(dst, keys, sealer, wanted, audit, &mut versions).await?;
    report.erase_incomplete = versions.incomplete();
    report.versions_deleted = versions.deleted;
    if report.objects_failed > 0 {
        return Err(match first_error {
            Some(e) if report.objects_failed == 1 => e,
            _ => TransferError::Incomplete {
                failed: report.objects_failed,
                refused: 0,
                common: None,
            },
        });
    }
    Ok((report, previous.map(|(key, _)| key), tombstones))
}

/// The requested keys, checked: valid keys, none of Ferry's own records.
/// The keys of `listing` among `wanted`.
async fn wanted_in(
    listing: Listing<'_>,
    wanted: &BTreeSet<&str>,
) -> Result<BTreeSet<String>, TransferError> {
    Ok(listing
        .try_filter(|o| futures::future::ready(wanted.contains(o.key.as_str())))
        .map_ok(|o| o.key)
        .try_collect()
        .await?)
}

fn wanted_keys(request: &EraseRequest) -> Result<BTreeSet<&str>, TransferError> {
    let wanted: BTreeSet<&str> = request.keys.iter().map(String::as_str).collect();
    for key in &wanted {
        check_key("erase.keys", key).map_err(|e| TransferError::Erase(e.to_string()))?;
        if key.starts_with(".ferry/") {
            return Err(TransferError::Erase(format!(
                "{key:?} is under .ferry/, where Ferry keeps its own records"
            )));
        }
    }
    Ok(wanted)
}

/// Both ends of an erasure run, and what they held when it started.
struct Sides<'a> {
    src: &'a dyn ObjectStore,
    dst: &'a dyn ObjectStore,
    at_source: &'a BTreeSet<String>,
    at_destination: &'a BTreeSet<String>,
    from_source: bool,
    audit: &'a AuditLog,
}

impl Sides<'_> {
    /// Erases one key: its copy, then (when asked) its source. What was done
    /// and whether the source object remains; `None` when the copy could not be
    /// deleted (counted and kept in `first_error`).
    async fn erase_one(
        &self,
        key: &str,
        report: &mut Report,
        first_error: &mut Option<TransferError>,
    ) -> Option<(Erased, bool)> {
        let mut done = Erased {
            key: key.to_string(),
            from_destination: false,
            from_source: false,
        };
        if self.at_destination.contains(key) {
            match self.dst.delete(key).await {
                Ok(()) => {
                    self.record(Outcome::Success, "Destination", key);
                    done.from_destination = true;
                }
                Err(e) => {
                    self.record(Outcome::Failure, e.reason().as_str(), key);
                    report.objects_failed += 1;
                    first_error.get_or_insert(TransferError::from(e));
                    return None;
                }
            }
        }
        let mut source_remains = self.at_source.contains(key);
        if self.from_source && source_remains {
            match self.src.delete(key).await {
                Ok(()) => {
                    self.record(Outcome::Success, "Source", key);
                    done.from_source = true;
                    source_remains = false;
                }
                Err(e) => {
                    let outcome = if e.reason() == Reason::AccessDenied {
                        Outcome::Denied
                    } else {
                        Outcome::Failure
                    };
                    self.record(outcome, e.reason().as_str(), key);
                    report.objects_failed += 1;
                    first_error.get_or_insert(TransferError::from(e));
                }
            }
        }
        Some((done, source_remains))
    }

    fn record(&self, outcome: Outcome, reason: &str, key: &str) {
        self.audit
            .record("object.erase", outcome, Some(reason), Some(key));
    }
}

/// Every manifest that still lists an erased key is rewritten without it, and
/// signed again: the MAC with `kek`, and the signature with the run's signing
/// key (without one, the old signature, which no longer holds, is dropped).
/// A version 6 manifest is read a segment at a time and cut again: the
/// segments that held an erased key are replaced, the others come out with
/// the same bytes and are kept; the replaced ones are deleted once no
/// manifest lists them. Older manifests hold their entries themselves. The
/// bytes of manifests and segments written.
async fn rewrite_manifests(
    dst: &Arc<dyn ObjectStore>,
    keys: &KeyRing,
    (kek, signer): (&Kek, Option<&ManifestSigner>),
    wanted: &BTreeSet<&str>,
    audit: &AuditLog,
    versions: &mut EarlierVersions,
) -> Result<u64, TransferError> {
    let mut replaced = BTreeSet::new();
    let mut written = 0;
    let mut segments = SegmentWriter::new(dst.clone()).await?;
    for mkey in manifest_names(dst.as_ref()).await? {
        let mut m = read_manifest(dst.as_ref(), &mkey, keys).await?;
        if m.is_segmented() {
            // Only a segment whose key range holds an erased key can list it.
            let may_list = |r: &SegmentRef| {
                wanted
                    .iter()
                    .any(|k| *k >= r.first.as_str() && *k <= r.last.as_str())
            };
            if !m.segments.iter().any(may_list) {
                continue;
            }
            let mut removed = false;
            let mut listed = entries(dst.as_ref(), &m);
            while let Some(e) = listed.try_next().await? {
                if wanted.contains(e.key.as_str()) {
                    removed = true;
                } else {
                    segments.push(e).await?;
                }
            }
            drop(listed);
            let (refs, bytes) = segments.finish_cut().await?;
            written += bytes;
            if !removed {
                continue;
            }
            let kept: BTreeSet<String> = refs.iter().map(SegmentRef::key).collect();
            replaced.extend(
                m.segments
                    .iter()
                    .map(SegmentRef::key)
                    .filter(|k| !kept.contains(k)),
            );
            m.segments = refs;
        } else {
            let before = m.objects.len();
            m.objects.retain(|e| !wanted.contains(e.key.as_str()));
            if m.objects.len() == before {
                continue;
            }
        }
        m.resign(kek, signer);
        written += put_manifest(dst.as_ref(), &mkey, &m).await?;
        audit.record(
            "manifest.rewrite",
            Outcome::Success,
            Some("Erasure"),
            Some(&mkey),
        );
        // The manifest as it was, listing the erased keys, is not kept as an
        // earlier version either.
        versions.purge(dst.as_ref(), &mkey, audit).await?;
    }
    // Each replaced segment held an erased key, so no rewritten manifest
    // lists it, and a manifest that did not list the key never did.
    for key in replaced {
        match dst.delete(&key).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        versions.purge(dst.as_ref(), &key, audit).await?;
    }
    Ok(written)
}

/// What an erasure found of the earlier versions a versioned destination
/// keeps: of the erased copies, of the manifests as they were before they
/// were rewritten, of the segments replaced.
#[derive(Debug, Default)]
pub(super) struct EarlierVersions {
    /// Earlier versions deleted.
    pub deleted: u64,
    /// Keys with earlier versions the store refused to delete (object lock,
    /// a legal hold, no right to delete versions).
    pub kept: Vec<String>,
    /// The store may keep versions this client cannot list (said once).
    pub unknown: bool,
}

impl EarlierVersions {
    /// Deletes the earlier versions of `key` (`dst`), each outcome audited
    /// (`object.erase`: `EarlierVersions`, `VersionsKept`, or once
    /// `VersionsNotChecked`).
    pub(super) async fn purge(
        &mut self,
        dst: &dyn ObjectStore,
        key: &str,
        audit: &AuditLog,
    ) -> Result<(), TransferError> {
        match dst.delete_versions(key).await? {
            Versions::NotKept => {}
            Versions::Listed { deleted, kept } => {
                self.deleted += deleted;
                if deleted > 0 {
                    audit.record(
                        "object.erase",
                        Outcome::Success,
                        Some("EarlierVersions"),
                        Some(key),
                    );
                }
                if kept > 0 {
                    audit.record(
                        "object.erase",
                        Outcome::Denied,
                        Some("VersionsKept"),
                        Some(key),
                    );
                    self.kept.push(key.to_string());
                }
            }
            Versions::Unknown if !self.unknown => {
                self.unknown = true;
                audit.record(
                    "object.erase",
                    Outcome::Failure,
                    Some("VersionsNotChecked"),
                    None,
                );
            }
            Versions::Unknown => {}
        }
        Ok(())
    }

    /// What the result says of them when not everything could be deleted.
    pub(super) fn incomplete(&self) -> Option<String> {
        let mut said = Vec::new();
        if !self.kept.is_empty() {
            said.push(format!(
                "the destination refused to delete earlier versions of {} object(s) (object lock, a legal hold, or no right to delete versions): {}",
                self.kept.len(),
                self.kept.join(", ")
            ));
        }
        if self.unknown {
            said.push(
                "the destination may keep earlier versions or soft-deleted copies the run could not list (Azure Blob, or an S3 role without s3:ListBucketVersions): check its versioning and soft delete settings".to_string(),
            );
        }
        (!said.is_empty()).then(|| said.join("; "))
    }
}
