//! A run spread over shard pods (a Connector's `parallelism`). Every shard
//! lists the whole source, the last manifest and the destination, and keeps
//! the keys it owns ([`Shard::owns`], by a hash of the key): it copies those,
//! cuts their entries into segments and stores a signed part
//! ([`crate::crypto::part`]) in place of a manifest. A shard that fails is run
//! again alone; its part replaces the one it may have left.
//!
//! When every shard has its part, the run's last step ([`commit`]) reads the
//! parts, checks each (its MAC, that it is this run's shard `i` of `n`, that
//! it planned against the same manifest, that it lists only keys it owns),
//! merges their entries by key into the run's segments and writes the one
//! manifest of the run: the destination's record is the same as one pod
//! would have left. The parts are then deleted.

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::audit::{AuditLog, Outcome};
pub(super) use crate::crypto::part::PartContents;
use crate::crypto::part::{PartCounts, Shard, ShardPart};
use crate::crypto::{Kek, KeyRing, Manifest, ManifestEntry, ManifestError};
use crate::storage::ObjectStore;

use super::records::{self, AuditCopy, SegmentWriter};
use super::{Options, Report, TransferError};

/// What a shard's part records of what it did.
pub(super) fn counts(report: &Report) -> PartCounts {
    PartCounts {
        copied: report.objects_copied,
        skipped: report.objects_skipped,
        tombstoned: report.objects_tombstoned,
        bytes_read: report.bytes_read,
        bytes_written: report.bytes_written,
        manifest_bytes: report.manifest_bytes,
    }
}

/// Signs and stores a shard's part. Returns its key and its size.
pub(super) async fn write_part(
    dst: &dyn ObjectStore,
    kek: &Kek,
    contents: PartContents,
) -> Result<(String, u64), TransferError> {
    let key = contents.shard.part_key(&contents.run);
    let part = ShardPart::sign(kek, contents);
    let body = serde_json::to_vec_pretty(&part).map_err(|e| TransferError::Encrypt {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    let written = records::put_bytes(dst, &key, body).await?;
    Ok((key, written))
}

/// Reads and checks shard `shard`'s part of this run.
async fn read_part(
    dst: &dyn ObjectStore,
    keys: &KeyRing,
    run: &str,
    shard: Shard,
) -> Result<ShardPart, TransferError> {
    let key = shard.part_key(run);
    let integrity = |source| TransferError::Integrity {
        key: key.clone(),
        source,
    };
    let bytes = super::records::read_capped(dst, &key, super::records::MAX_RECORD_BYTES).await?;
    let part: ShardPart =
        serde_json::from_slice(&bytes).map_err(|e| TransferError::ManifestParse {
            key: key.clone(),
            reason: e.to_string(),
        })?;
    keys.resolve(&part.kek_id, part.kms.as_deref())
        .await
        .map_err(|e| match e {
            e @ (crate::crypto::KeyError::Kms(_) | crate::crypto::KeyError::NoKms(_)) => {
                TransferError::Key(e)
            }
            e => integrity(ManifestError::Key(e)),
        })?;
    part.verify(keys, run, shard).map_err(integrity)?;
    Ok(part)
}

/// The entries of `part`, in order, each checked to be one its shard owns.
fn owned_entries<'a>(
    dst: &'a dyn ObjectStore,
    part: &ShardPart,
    run: &str,
) -> BoxStream<'a, Result<ManifestEntry, TransferError>> {
    let shard = Shard {
        index: part.shard,
        count: part.shards,
    };
    let key = shard.part_key(run);
    records::segment_entries(dst, part.segments.clone())
        .and_then(move |e| {
            let checked = if shard.owns(&e.key) {
                Ok(e)
            } else {
                Err(TransferError::Integrity {
                    key: key.clone(),
                    source: ManifestError::NotOwned {
                        key: e.key,
                        shard: shard.to_string(),
                    },
                })
            };
            futures::future::ready(checked)
        })
        .boxed()
}

/// Merges key-ordered streams of entries with no key in common into one.
fn merge<'a>(
    streams: Vec<BoxStream<'a, Result<ManifestEntry, TransferError>>>,
) -> BoxStream<'a, Result<ManifestEntry, TransferError>> {
    let heads: Vec<Option<ManifestEntry>> = vec![None; streams.len()];
    futures::stream::try_unfold(
        (streams, heads, false),
        |(mut streams, mut heads, started)| async move {
            if !started {
                for (s, h) in streams.iter_mut().zip(heads.iter_mut()) {
                    *h = s.try_next().await?;
                }
            }
            let least = heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.as_ref().map(|e| (i, e.key.as_str())))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i);
            let Some(i) = least else {
                return Ok(None);
            };
            let entry = heads[i].take();
            heads[i] = streams[i].try_next().await?;
            Ok(entry.map(|e| (e, (streams, heads, true))))
        },
    )
    .boxed()
}

/// The last step of a run over `count` shards: one manifest from their parts.
pub async fn commit(
    dst: Arc<dyn ObjectStore>,
    keys: Arc<KeyRing>,
    opts: &Options,
    count: u32,
    audit: &AuditLog,
) -> Result<Report, TransferError> {
    let kek = &*keys.current()?;
    let previous = records::audited(
        records::newest_manifest(dst.as_ref(), &keys, opts.anchor.as_ref(), Some(audit)).await,
        audit,
    )?;
    let last = previous.as_ref().map(|(_, m)| m);
    let base = last.map(Manifest::link);
    let mut parts = Vec::with_capacity(count as usize);
    for index in 0..count {
        let shard = Shard { index, count };
        let part = records::audited(
            read_part(dst.as_ref(), &keys, &opts.run_id, shard).await,
            audit,
        )?;
        if part.base != base {
            audit.record(
                "integrity.check",
                Outcome::Failure,
                Some(ferry_crds::Reason::IntegrityFailure.as_str()),
                None,
            );
            return Err(TransferError::Integrity {
                key: shard.part_key(&opts.run_id),
                source: ManifestError::OtherBase {
                    found: part.base,
                    expected: base,
                },
            });
        }
        parts.push(part);
    }
    let streams = parts
        .iter()
        .map(|p| owned_entries(dst.as_ref(), p, &opts.run_id))
        .collect();
    let audit_copy = AuditCopy::start(dst.clone(), kek, audit, opts)?;
    let merged = async {
        let mut writer = SegmentWriter::new(dst.clone()).await?;
        let mut entries = merge(streams);
        while let Some(e) = entries.try_next().await? {
            writer.push(e).await?;
        }
        writer.finish().await
    }
    .await;
    let own_records = records::finish_copy(audit_copy, audit).await;
    let (segments, segment_bytes) = records::audited(merged, audit)?;
    let mut all_records: Vec<ManifestEntry> = parts
        .iter()
        .flat_map(|p| p.records.iter().cloned())
        .collect();
    all_records.extend(own_records?);
    all_records.sort_by(|a, b| a.key.cmp(&b.key));
    let tombstones = last.map(|m| m.erased.clone()).unwrap_or_default();
    let written = records::write_manifest(
        dst.as_ref(),
        kek,
        opts,
        last,
        segments,
        tombstones,
        all_records,
    )
    .await?;
    let mut report = Report::default();
    report.manifest_bytes = segment_bytes + written.report(&mut report);
    for p in &parts {
        let c = &p.counts;
        report.objects_copied += c.copied;
        report.objects_skipped += c.skipped;
        report.objects_tombstoned += c.tombstoned;
        report.bytes_read += c.bytes_read;
        report.bytes_written += c.bytes_written;
        report.manifest_bytes += c.manifest_bytes;
    }
    // The parts served their purpose: the manifest stands without them.
    for index in 0..count {
        let key = Shard { index, count }.part_key(&opts.run_id);
        if let Err(e) = dst.delete(&key).await {
            tracing::warn!(key, error = %e, "failed to delete a shard's part");
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> ManifestEntry {
        ManifestEntry {
            key: key.into(),
            size: 1,
            sha256: "00".into(),
            encrypted_size: 2,
            encrypted_sha256: "11".into(),
            source_modified: None,
            source_etag: None,
            source_size: None,
            fields: vec![],
        }
    }

    #[tokio::test]
    async fn shards_merge_back_into_key_order() {
        let keys: Vec<String> = (0..500).map(|i| format!("k/{i:04}")).collect();
        let streams = (0..3)
            .map(|s| {
                let mine: Vec<_> = keys
                    .iter()
                    .filter(|k| Shard { index: s, count: 3 }.owns(k))
                    .map(|k| Ok(entry(k)))
                    .collect();
                futures::stream::iter(mine).boxed()
            })
            .collect();
        let merged: Vec<String> = merge(streams)
            .map_ok(|e| e.key)
            .try_collect()
            .await
            .expect("merged");
        assert_eq!(merged, keys);
        let none: Vec<ManifestEntry> = merge(Vec::new()).try_collect().await.expect("empty");
        assert!(none.is_empty());
    }
}
