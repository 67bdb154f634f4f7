//! No store required: what a run does with each listed object, from the
//! listing, the last manifest and the Connector's selector and rules.

use std::collections::{BTreeMap, BTreeSet};

use ferry_crds::{Reason, Sensitivity, SyncMode};

use crate::crypto::{Manifest, ManifestEntry, Tombstone};
use crate::project::{Format, ProjectionError};
use crate::select::{Selection, Selector, StreamMatch};
use crate::storage::ObjectMeta;

/// What the destination already holds, as a plan needs it.
#[derive(Debug, Default)]
pub struct Known {
    /// The last manifest's entries, in an incremental run (a full run copies
    /// everything again).
    pub entries: BTreeMap<String, ManifestEntry>,
    /// Keys erased on request, never copied again (whatever the mode).
    pub tombstones: Vec<Tombstone>,
    /// What the destination holds now, by key and stored size: a copy deleted
    /// or replaced there since the last run is copied again.
    pub stored: BTreeMap<String, u64>,
}

impl Known {
    /// From the last manifest (if any) and the destination's listing.
    pub fn new(
        previous: Option<&Manifest>,
        sync_mode: SyncMode,
        at_destination: &[ObjectMeta],
    ) -> Self {
        let entries = match (previous, sync_mode) {
            (Some(m), SyncMode::Incremental) => m
                .objects
                .iter()
                .map(|e| (e.key.clone(), e.clone()))
                .collect(),
            _ => BTreeMap::new(),
        };
        Self {
            entries,
            tombstones: previous.map(|m| m.erased.clone()).unwrap_or_default(),
            stored: at_destination
                .iter()
                .map(|o| (o.key.clone(), o.size))
                .collect(),
        }
    }

    /// Whether the last copy of `obj` still stands for it.
    fn unchanged(&self, obj: &ObjectMeta, fields: &[String]) -> bool {
        self.entries.get(&obj.key).is_some_and(|prev| {
            same_source(prev, obj, fields)
                && self.stored.get(&obj.key) == Some(&prev.encrypted_size)
        })
    }
}

fn same_source(prev: &ManifestEntry, now: &ObjectMeta, fields: &[String]) -> bool {
    prev.source_size.unwrap_or(prev.size) == now.size
        && prev.fields == fields
        && prev.source_modified == now.modified
        && match (&prev.source_etag, &now.etag) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        }
}

/// Why an object is not read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

/// What a run does with one selected object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Copy it, keeping only `fields` when it is minimised; it belongs to
    /// `streams`.
    Copy {
        fields: Option<Vec<String>>,
        streams: Vec<String>,
    },
    /// Its last copy stands.
    Unchanged,
    /// Erased on request: never copied again.
    Erased,
    /// Not read at all.
    Refused(Refusal),
}

/// The verdict on each selected object, in listing order (objects the selector
/// skips are left out).
pub fn plan(
    listed: Vec<ObjectMeta>,
    selector: &Selector,
    allowed: &[Sensitivity],
    known: &Known,
) -> Vec<(ObjectMeta, Verdict)> {
    let erased: BTreeSet<&str> = known.tombstones.iter().map(|t| t.key.as_str()).collect();
    let mut out = Vec::new();
    for obj in listed {
        let streams = match selector.select(&obj.key) {
            Selection::Skip => continue,
            Selection::Take(s) => s,
        };
        let verdict = if erased.contains(obj.key.as_str()) {
            Verdict::Erased
        } else {
            match admit(&obj.key, &streams, allowed) {
                Err(r) => Verdict::Refused(r),
                Ok(fields) if known.unchanged(&obj, fields.as_deref().unwrap_or_default()) => {
                    Verdict::Unchanged
                }
                Ok(fields) => Verdict::Copy {
                    fields,
                    streams: streams.iter().map(|s| s.name.clone()).collect(),
                },
            }
        };
        out.push((obj, verdict));
    }
    out
}

/// Whether an object may be read, and which columns are kept: refused when a
/// stream it belongs to is tagged with a sensitivity the Connector does not
/// allow, or when it must be minimised and its format cannot be projected.
fn admit(
    key: &str,
    streams: &[StreamMatch],
    allowed: &[Sensitivity],
) -> Result<Option<Vec<String>>, Refusal> {
    for s in streams {
        if let Some(tag) = s.sensitivity.iter().find(|t| !allowed.contains(t)) {
            return Err(Refusal {
                reason: Reason::SensitivityNotAllowed,
                message: format!(
                    "stream {:?} is tagged {} which compliance.allowedSensitivity does not allow",
                    s.name,
                    tag.as_str()
                ),
            });
        }
    }
    let Some(fields) = crate::project::combine(streams.iter().map(|s| s.fields.as_slice())) else {
        return Ok(None);
    };
    if fields.is_empty() {
        return Err(Refusal {
            reason: Reason::NotProjectable,
            message: "the streams it belongs to have no field in common: nothing would be left"
                .into(),
        });
    }
    if Format::of(key).is_none() {
        return Err(Refusal {
            reason: Reason::NotProjectable,
            message: ProjectionError::Unsupported { key: key.into() }.to_string(),
        });
    }
    Ok(Some(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_crds::ConnectorSpec;

    fn spec(yaml: &str) -> ConnectorSpec {
        serde_saphyr::from_str(yaml).expect("spec")
    }

    fn obj(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            modified: Some("2026-12-01T00:00:00Z".into()),
            etag: Some(format!("e-{key}")),
        }
    }

    fn entry(o: &ObjectMeta, stored: u64) -> ManifestEntry {
        ManifestEntry {
            key: o.key.clone(),
            size: o.size,
            sha256: String::new(),
            encrypted_size: stored,
            encrypted_sha256: String::new(),
            source_modified: o.modified.clone(),
            source_etag: o.etag.clone(),
            source_size: None,
            fields: Vec::new(),
        }
    }

    const SPEC: &str = r#"
source: {local: {path: in}}
destination: {local: {path: out}}
encryption: {keyRef: {secretRef: {name: k}}}
include: ["*.txt", "people/*", "slim/*"]
streams:
  - {name: people, match: "people/*.csv", sensitivity: [pii]}
  - {name: slim, match: "slim/*", fields: [id]}
  - {name: rest, match: "*.txt"}
compliance: {allowedSensitivity: []}
"#;

    fn verdicts(listed: Vec<ObjectMeta>, known: &Known) -> Vec<(String, Verdict)> {
        let spec = spec(SPEC);
        let selector = Selector::new(&spec).expect("selector");
        plan(
            listed,
            &selector,
            &spec.compliance.allowed_sensitivity,
            known,
        )
        .into_iter()
        .map(|(o, v)| (o.key, v))
        .collect()
    }

    #[test]
    fn each_listed_object_gets_one_verdict_in_listing_order() {
        let listed = vec![
            obj("a.txt", 3),
            obj("ignored.dat", 1),
            obj("people/p.csv", 5),
            obj("slim/s.csv", 7),
            obj("slim/s.bin", 7),
        ];
        let got = verdicts(listed, &Known::default());
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a.txt", "people/p.csv", "slim/s.csv", "slim/s.bin"]);
        assert_eq!(
            got[0].1,
            Verdict::Copy {
                fields: None,
                streams: vec!["rest".into()]
            }
        );
        assert!(
            matches!(&got[1].1, Verdict::Refused(r) if r.reason == Reason::SensitivityNotAllowed)
        );
        assert_eq!(
            got[2].1,
            Verdict::Copy {
                fields: Some(vec!["id".into()]),
                streams: vec!["slim".into()]
            }
        );
        assert!(matches!(&got[3].1, Verdict::Refused(r) if r.reason == Reason::NotProjectable));
    }

    #[test]
    fn unchanged_only_when_the_source_and_the_stored_copy_both_match() {
        let a = obj("a.txt", 3);
        let mut known = Known::default();
        known.entries.insert(a.key.clone(), entry(&a, 50));
        known.stored.insert(a.key.clone(), 50);
        assert_eq!(verdicts(vec![a.clone()], &known)[0].1, Verdict::Unchanged);

        // The copy at the destination was replaced.
        known.stored.insert(a.key.clone(), 49);
        assert!(matches!(
            verdicts(vec![a.clone()], &known)[0].1,
            Verdict::Copy { .. }
        ));
        known.stored.insert(a.key.clone(), 50);

        // The source changed: a new etag.
        let mut changed = a.clone();
        changed.etag = Some("other".into());
        assert!(matches!(
            verdicts(vec![changed], &known)[0].1,
            Verdict::Copy { .. }
        ));
    }

    #[test]
    fn erased_keys_are_never_copied_again() {
        let a = obj("a.txt", 3);
        let known = Known {
            tombstones: vec![Tombstone {
                key: "a.txt".into(),
                run: "r".into(),
                erased: "2026-12-01T00:00:00Z".into(),
            }],
            ..Known::default()
        };
        assert_eq!(verdicts(vec![a], &known)[0].1, Verdict::Erased);
    }

    #[test]
    fn a_full_run_forgets_the_last_entries_but_keeps_its_tombstones() {
        let a = obj("a.txt", 3);
        let manifest = Manifest {
            format: String::new(),
            run: "r".into(),
            connector: "t/c".into(),
            created: String::new(),
            kek_id: String::new(),
            name: String::new(),
            sequence: None,
            previous: None,
            objects: vec![entry(&a, 50)],
            erased: vec![Tombstone {
                key: "b.txt".into(),
                run: "r".into(),
                erased: "2026-12-01T00:00:00Z".into(),
            }],
            records: vec![],
            kms: None,
            mac: String::new(),
            signature: None,
        };
        let full = Known::new(Some(&manifest), SyncMode::Full, &[]);
        assert!(full.entries.is_empty());
        assert_eq!(full.tombstones.len(), 1);
        let incremental = Known::new(Some(&manifest), SyncMode::Incremental, &[]);
        assert_eq!(incremental.entries.len(), 1);
    }
}
