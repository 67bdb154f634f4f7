//! No store required: what a run does with each listed object, from the
//! listing, the last manifest and the Connector's selector and rules. The
//! three inputs are streams in key order, merged as they come: nothing holds
//! every object.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::pin::Pin;

use futures::stream::{BoxStream, Peekable};
use futures::{Stream, StreamExt};

use ferry_crds::{Reason, Sensitivity};

use crate::crypto::manifest::RECORDS_DIR;
use crate::crypto::{ManifestEntry, Tombstone};
use crate::project::{Format, ProjectionError};
use crate::select::{Selection, Selector, StreamMatch};
use crate::storage::ObjectMeta;

use super::TransferError;

/// The Connector's rules a plan applies to each object.
#[derive(Debug)]
pub struct Rules<'a> {
    pub selector: &'a Selector,
    pub allowed: &'a [Sensitivity],
    /// Keys erased on request, never copied again (whatever the mode).
    pub erased: BTreeSet<String>,
}

impl<'a> Rules<'a> {
    pub fn new(
        selector: &'a Selector,
        allowed: &'a [Sensitivity],
        tombstones: &[Tombstone],
    ) -> Self {
        Self {
            selector,
            allowed,
            erased: tombstones.iter().map(|t| t.key.clone()).collect(),
        }
    }

    /// The verdict on `obj`, given the last manifest's entry for its key and
    /// the size of the copy the destination holds; `None` when the selector
    /// leaves it out.
    pub fn judge(
        &self,
        obj: &ObjectMeta,
        previous: Option<&ManifestEntry>,
        stored: Option<u64>,
    ) -> Option<Verdict> {
        let streams = match self.selector.select(&obj.key) {
            Selection::Skip => return None,
            Selection::Take(s) => s,
        };
        if obj.key.starts_with(RECORDS_DIR) {
            return Some(Verdict::Reserved);
        }
        if self.erased.contains(&obj.key) {
            return Some(Verdict::Erased);
        }
        Some(match admit(&obj.key, &streams, self.allowed) {
            Err(r) => Verdict::Refused(r),
            Ok(fields)
                if previous.is_some_and(|prev| {
                    same_source(prev, obj, fields.as_deref().unwrap_or_default())
                        && stored == Some(prev.encrypted_size)
                }) =>
            {
                Verdict::Unchanged
            }
            Ok(fields) => Verdict::Copy {
                fields,
                streams: streams.iter().map(|s| s.name.clone()).collect(),
            },
        })
    }
}

/// One step of a plan, in key order: a listed object the selector takes,
/// with its verdict, and the last manifest's entry for the same key; or an
/// entry of the last manifest whose object is not listed or not taken, which
/// stands as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub object: Option<(ObjectMeta, Verdict)>,
    pub previous: Option<ManifestEntry>,
}

type Input<'a, T> = Peekable<BoxStream<'a, Result<T, TransferError>>>;

struct Merge<'a, 'r> {
    listed: Input<'a, ObjectMeta>,
    previous: Input<'a, ManifestEntry>,
    stored: Input<'a, ObjectMeta>,
    rules: &'r Rules<'r>,
}

/// The key of the next item of `input`; an error there is taken and returned.
async fn peek_key<T>(
    input: &mut Input<'_, T>,
    key_of: impl Fn(&T) -> &str,
) -> Result<Option<String>, TransferError> {
    match Pin::new(&mut *input).peek().await {
        None => Ok(None),
        Some(Ok(item)) => Ok(Some(key_of(item).to_string())),
        Some(Err(_)) => match input.next().await {
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        },
    }
}

/// The next item of `input` if its key is `key`, skipping those before it.
async fn seek<T>(
    input: &mut Input<'_, T>,
    key: &str,
    key_of: impl Fn(&T) -> &str + Copy,
) -> Result<Option<T>, TransferError> {
    while let Some(next) = peek_key(input, key_of).await? {
        match next.as_str().cmp(key) {
            Ordering::Less => {
                input.next().await;
            }
            Ordering::Equal => return input.next().await.transpose(),
            Ordering::Greater => break,
        }
    }
    Ok(None)
}

impl Merge<'_, '_> {
    async fn next(&mut self) -> Result<Option<Step>, TransferError> {
        loop {
            let listed = peek_key(&mut self.listed, |o| o.key.as_str()).await?;
            let previous = peek_key(&mut self.previous, |e| e.key.as_str()).await?;
            let key = match (listed, previous) {
                (None, None) => return Ok(None),
                // An entry whose object is not listed (any more) stands.
                (None, Some(_)) => return self.keep().await,
                (Some(l), Some(p)) if p < l => return self.keep().await,
                (Some(l), _) => l,
            };
            let Some(obj) = self.listed.next().await.transpose()? else {
                return Ok(None);
            };
            let previous = seek(&mut self.previous, &key, |e| e.key.as_str()).await?;
            let stored = seek(&mut self.stored, &key, |o| o.key.as_str())
                .await?
                .map(|o| o.size);
            let object = self
                .rules
                .judge(&obj, previous.as_ref(), stored)
                .map(|v| (obj, v));
            if object.is_none() && previous.is_none() {
                continue; // neither taken nor recorded
            }
            return Ok(Some(Step { object, previous }));
        }
    }

    async fn keep(&mut self) -> Result<Option<Step>, TransferError> {
        let previous = self.previous.next().await.transpose()?;
        Ok(previous.map(|p| Step {
            object: None,
            previous: Some(p),
        }))
    }
}

/// The plan of a run, as a stream of steps in key order: the source's
/// listing, the last manifest's entries (none for a full run: everything is
/// copied again) and the destination's listing (a copy deleted or replaced
/// there since is copied again), each in key order.
pub fn plan<'a>(
    listed: BoxStream<'a, Result<ObjectMeta, TransferError>>,
    previous: BoxStream<'a, Result<ManifestEntry, TransferError>>,
    stored: BoxStream<'a, Result<ObjectMeta, TransferError>>,
    rules: &'a Rules<'a>,
) -> impl Stream<Item = Result<Step, TransferError>> + Send + 'a {
    let merge = Merge {
        listed: listed.peekable(),
        previous: previous.peekable(),
        stored: stored.peekable(),
        rules,
    };
    futures::stream::unfold(Some(merge), |state| async move {
        let mut merge = state?;
        match merge.next().await {
            Ok(step) => step.map(|step| (Ok(step), Some(merge))),
            // The first error ends the plan.
            Err(e) => Some((Err(e), None)),
        }
    })
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
    /// Under `.ferry/`, where the destination keeps Ferry's own records: a
    /// source's key there is never copied (it would land among them), only
    /// audited. A Ferry destination read as a source has its records there.
    Reserved,
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

    /// What the destination holds: the last manifest's entries and the
    /// stored copies' sizes.
    #[derive(Default)]
    struct Known {
        entries: Vec<ManifestEntry>,
        stored: Vec<(String, u64)>,
        tombstones: Vec<Tombstone>,
    }

    fn steps(listed: Vec<ObjectMeta>, known: &Known) -> Vec<Step> {
        let spec = spec(SPEC);
        let selector = Selector::new(&spec).expect("selector");
        let rules = Rules::new(
            &selector,
            &spec.compliance.allowed_sensitivity,
            &known.tombstones,
        );
        fn ok<'a, T: Send + 'a>(v: Vec<T>) -> BoxStream<'a, Result<T, TransferError>> {
            futures::stream::iter(v.into_iter().map(Ok)).boxed()
        }
        let stored = known
            .stored
            .iter()
            .map(|(k, size)| ObjectMeta {
                size: *size,
                ..obj(k, 0)
            })
            .collect();
        let plan = plan(ok(listed), ok(known.entries.clone()), ok(stored), &rules);
        futures::executor::block_on(plan.collect::<Vec<_>>())
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("plan")
    }

    fn verdicts(listed: Vec<ObjectMeta>, known: &Known) -> Vec<(String, Verdict)> {
        steps(listed, known)
            .into_iter()
            .filter_map(|s| s.object)
            .map(|(o, v)| (o.key, v))
            .collect()
    }

    #[test]
    fn each_listed_object_gets_one_verdict_in_listing_order() {
        let listed = vec![
            obj("a.txt", 3),
            obj("ignored.dat", 1),
            obj("people/p.csv", 5),
            obj("slim/s.bin", 7),
            obj("slim/s.csv", 7),
        ];
        let got = verdicts(listed, &Known::default());
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a.txt", "people/p.csv", "slim/s.bin", "slim/s.csv"]);
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
        assert!(matches!(&got[2].1, Verdict::Refused(r) if r.reason == Reason::NotProjectable));
        assert_eq!(
            got[3].1,
            Verdict::Copy {
                fields: Some(vec!["id".into()]),
                streams: vec!["slim".into()]
            }
        );
    }

    #[test]
    fn unchanged_only_when_the_source_and_the_stored_copy_both_match() {
        let a = obj("a.txt", 3);
        let mut known = Known {
            entries: vec![entry(&a, 50)],
            stored: vec![(a.key.clone(), 50)],
            ..Known::default()
        };
        assert_eq!(verdicts(vec![a.clone()], &known)[0].1, Verdict::Unchanged);

        // The copy at the destination was replaced, or deleted.
        known.stored = vec![(a.key.clone(), 49)];
        assert!(matches!(
            verdicts(vec![a.clone()], &known)[0].1,
            Verdict::Copy { .. }
        ));
        known.stored = vec![];
        assert!(matches!(
            verdicts(vec![a.clone()], &known)[0].1,
            Verdict::Copy { .. }
        ));
        known.stored = vec![(a.key.clone(), 50)];

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
    fn entries_whose_objects_are_gone_or_not_taken_stand_in_key_order() {
        // The last manifest lists b (gone from the source), c (unchanged),
        // ignored.dat (no longer selected) and z (gone); the source lists a
        // (new), c and ignored.dat; the destination holds more than either.
        let (a, c, ignored) = (obj("a.txt", 1), obj("c.txt", 2), obj("ignored.dat", 3));
        let known = Known {
            entries: vec![
                entry(&obj("b.txt", 9), 10),
                entry(&c, 20),
                entry(&ignored, 30),
                entry(&obj("z.txt", 9), 10),
            ],
            stored: vec![
                (".ferry/manifests/m.json".into(), 5),
                ("b.txt".into(), 10),
                ("c.txt".into(), 20),
                ("ignored.dat".into(), 30),
                ("y.txt".into(), 1),
            ],
            ..Known::default()
        };
        // Each step: the object taken and whether it is unchanged; the entry.
        type Seen = (Option<(String, bool)>, Option<String>);
        let got: Vec<Seen> = steps(vec![a, c, ignored], &known)
            .into_iter()
            .map(|s| {
                (
                    s.object.map(|(o, v)| (o.key, v == Verdict::Unchanged)),
                    s.previous.map(|e| e.key),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (Some(("a.txt".into(), false)), None),
                (None, Some("b.txt".into())),
                (Some(("c.txt".into(), true)), Some("c.txt".into())),
                (None, Some("ignored.dat".into())),
                (None, Some("z.txt".into())),
            ]
        );
    }

    #[test]
    fn a_listing_error_ends_the_plan_with_it() {
        let spec = spec(SPEC);
        let selector = Selector::new(&spec).expect("selector");
        let rules = Rules::new(&selector, &[], &[]);
        let listed = futures::stream::iter(vec![
            Ok(obj("a.txt", 1)),
            Err(TransferError::Erase("page 2 failed".into())),
            Ok(obj("b.txt", 1)),
        ])
        .boxed();
        let got = futures::executor::block_on(
            plan(
                listed,
                futures::stream::empty().boxed(),
                futures::stream::empty().boxed(),
                &rules,
            )
            .collect::<Vec<_>>(),
        );
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert!(matches!(&got[1], Err(TransferError::Erase(m)) if m == "page 2 failed"));
    }
}
