//! The operator's record of a run: what it decided, kept where the run's own
//! identity cannot write (an annotation: a status write ignores metadata), and
//! the checks that keep the runner's report from steering the operator.
//!
//! - No client required: [`RunRecordExt::trusted_status`], [`RunRecordExt::explains`],
//!   [`operators_part`], [`implausible`].
//! - Client required: [`write`].

use ferry_crds::{
    ConnectorRun, ConnectorRunStatus, RUN_RECORD_ANNOTATION, RunPhase, RunRecord, RunResult, digest,
};
use kube::api::{Api, Patch, PatchParams};

use crate::config::FIELD_MANAGER;
use crate::context::Context;
use crate::error::{Error, Step};

/// The record of a run; `Err` when its annotation is not a record.
pub fn read(run: &ConnectorRun) -> Result<Option<RunRecord>, serde_json::Error> {
    RunRecord::of(run)
}

/// The operator's fields of a status: all but the runners' `progress`,
/// `result` and `shardReports`.
pub fn operators_part(status: &ConnectorRunStatus) -> ConnectorRunStatus {
    ConnectorRunStatus {
        progress: None,
        result: None,
        shard_reports: Default::default(),
        ..status.clone()
    }
}

fn fingerprint(status: &ConnectorRunStatus) -> String {
    digest(&serde_json::to_vec(&operators_part(status)).unwrap_or_default())
}

/// What the operator reads of a record.
pub trait RunRecordExt {
    /// The status as the operator decided it, with the runner's progress and,
    /// until the operator accepted one, its result.
    fn trusted_status(&self, shown: &ConnectorRunStatus) -> ConnectorRunStatus;
    /// Whether the shown status is one the operator wrote: the recorded one, or
    /// the one before it (a status write that did not get through).
    fn explains(&self, shown: &ConnectorRunStatus) -> bool;
}

impl RunRecordExt for RunRecord {
    fn trusted_status(&self, shown: &ConnectorRunStatus) -> ConnectorRunStatus {
        ConnectorRunStatus {
            progress: shown.progress.clone(),
            result: self.status.result.clone().or_else(|| shown.result.clone()),
            shard_reports: shown.shard_reports.clone(),
            ..operators_part(&self.status)
        }
    }

    fn explains(&self, shown: &ConnectorRunStatus) -> bool {
        operators_part(shown) == operators_part(&self.status)
            || self.previous.as_deref() == Some(fingerprint(shown).as_str())
    }
}

/// Writes the record of `new` (a merge patch of the run's annotation), unless
/// it is already the one recorded. `old` is the status the decision started
/// from; its fingerprint is kept so that a status write that fails after this
/// one is not taken for tampering.
pub async fn write(
    ctx: &Context,
    namespace: &str,
    name: &str,
    recorded: Option<&RunRecord>,
    old: &ConnectorRunStatus,
    new: &ConnectorRunStatus,
) -> Result<(), Error> {
    // The result of the attempt that succeeded, never one an earlier attempt
    // left behind.
    let accepted = new
        .result
        .clone()
        .filter(|r| new.phase == Some(RunPhase::Succeeded) && r.attempt == new.attempts);
    let status = ConnectorRunStatus {
        result: accepted,
        ..operators_part(new)
    };
    if recorded.is_some_and(|r| r.status == status) {
        return Ok(());
    }
    let record = RunRecord {
        status,
        previous: Some(fingerprint(old)),
    };
    let text = serde_json::to_string(&record).map_err(|source| Error::Encode {
        name: name.to_string(),
        source,
    })?;
    let patch = serde_json::json!({"metadata": {"annotations": {RUN_RECORD_ANNOTATION: text}}});
    let api: Api<ConnectorRun> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(Step::Record, "record", "ConnectorRun", name, e))?;
    Ok(())
}

/// Why the runner's result of a successful attempt cannot be taken as it is
/// (it moves the Connector's cursor), or `None` when it can: no negative
/// count, a manifest under `.ferry/manifests/` named after this run. A result
/// another attempt reported is not this attempt's: it is never accepted into
/// the record ([`write`]), and not judged here.
pub fn implausible(result: Option<&RunResult>, run: &str, attempt: i32) -> Option<String> {
    let r = result.filter(|r| r.attempt == Some(attempt))?;
    let counts = [
        r.objects_copied,
        r.objects_skipped,
        r.objects_failed,
        r.objects_erased,
        r.bytes_read,
        r.bytes_written,
    ];
    if counts.iter().any(|c| *c < 0) {
        return Some("it has a negative count".into());
    }
    if let Some(m) = &r.manifest {
        let file = m.strip_prefix(ferry_crds::MANIFEST_DIR);
        // `<timestamp>Z-<run>.json`, or `<run>.json` as runners named it before.
        let named = file.is_some_and(|f| {
            (f.ends_with(&format!("Z-{run}.json")) || f == format!("{run}.json"))
                && !f.contains('/')
                && !f.contains("..")
        });
        if !named {
            return Some(format!(
                "its manifest {m:?} is not a manifest of run {run} under {}",
                ferry_crds::MANIFEST_DIR
            ));
        }
    }
    None
}

/// Why the place in the destination's chain that the runner of a successful
/// attempt reported (the next run's anchor) cannot be taken, or `None` when
/// it can. What the operator knows is checked: the place parses; it comes
/// after the anchor the run was `pinned` to (never at or before it); and when
/// it is the very next one, with the manifest's creation time the runner
/// reports, its link is the one a manifest of this run (`run`, of Connector
/// `connector`, `namespace/name`) under the key it reported, built on the
/// pinned manifest, has. A runner could otherwise move the cursor back to an
/// older manifest (a later rollback to it unseen) or to a link of its
/// choosing. A place further on is taken (another run of the Connector, or an
/// earlier attempt of this one, may have written in between); what the
/// operator cannot check (that the manifest was written at all) the next run
/// checks: it refuses an anchor its chain does not reach.
pub fn misplaced(
    result: Option<&RunResult>,
    run: &str,
    connector: &str,
    pinned: Option<&str>,
    attempt: i32,
) -> Option<String> {
    use ferry_crds::chain::{LinkInput, Place, manifest_link};
    let r = result.filter(|r| r.attempt == Some(attempt))?;
    let reported = r.manifest_anchor.as_deref()?;
    let place: Place = match reported.parse() {
        Ok(p) => p,
        Err(e) => return Some(format!("its manifest's place {e}")),
    };
    let pinned: Option<Place> = match pinned.map(str::parse).transpose() {
        Ok(p) => p,
        // The operator's own record: a bad one is not the runner's doing.
        Err(_) => return None,
    };
    if let Some(pinned) = &pinned
        && place.sequence <= pinned.sequence
    {
        return Some(format!(
            "its manifest has sequence {} in the destination's chain, at or before the {} the run was pinned to",
            place.sequence, pinned.sequence
        ));
    }
    if place.sequence == 0 {
        return Some("its manifest has sequence 0: chains start at 1".into());
    }
    // The link, where the operator knows everything it covers: the manifest
    // builds on the pinned one (or on none, as the first of its chain).
    let known_previous = match &pinned {
        Some(p) if place.sequence == p.sequence + 1 => Some(Some(p.link.as_str())),
        None if place.sequence == 1 => Some(None),
        _ => None,
    };
    if let (Some(previous), Some(created), Some(name)) = (
        known_previous,
        r.manifest_created.as_deref(),
        r.manifest.as_deref(),
    ) {
        let link = manifest_link(LinkInput {
            name,
            sequence: place.sequence,
            previous,
            run,
            connector,
            created,
        });
        if link != place.link {
            return Some(format!(
                "its manifest's link is not the one of manifest {name:?} of this run built on the pinned anchor"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(manifest: &str) -> RunResult {
        RunResult {
            objects_copied: 2,
            bytes_read: 10,
            bytes_written: 40,
            manifest: Some(manifest.into()),
            attempt: Some(1),
            ..RunResult::default()
        }
    }

    #[test]
    fn a_plausible_result_is_taken() {
        let r = result(".ferry/manifests/20261204T101010123456Z-sales-1.json");
        assert_eq!(implausible(Some(&r), "sales-1", 1), None);
        assert_eq!(implausible(None, "sales-1", 1), None);
    }

    /// Attack: the runner reports a result that would move the Connector's
    /// cursor to a manifest of its choosing (an older run's, or outside the
    /// manifest folder), or counts that are not counts.
    #[test]
    fn a_result_that_would_steer_the_cursor_is_refused() {
        for manifest in [
            ".ferry/manifests/20261204T101010123456Z-other-run.json",
            ".ferry/manifests/x/../../20261204T101010123456Z-sales-1.json",
            "elsewhere/20261204T101010123456Z-sales-1.json",
        ] {
            let r = result(manifest);
            assert!(implausible(Some(&r), "sales-1", 1).is_some(), "{manifest}");
        }
        let mut r = result(".ferry/manifests/20261204T101010123456Z-sales-1.json");
        r.bytes_written = -1;
        assert!(implausible(Some(&r), "sales-1", 1).is_some());
        let r = result(".ferry/manifests/20261204T101010123456Z-other.json");
        assert!(
            implausible(Some(&r), "sales-1", 2).is_none(),
            "another attempt's: not judged, and never accepted"
        );
    }

    /// Attack: a compromised runner reports, for its successful attempt, the
    /// place of an older manifest (so that a later rollback to it goes
    /// unseen) or a link of its choosing; the operator took any anchor as the
    /// Connector's cursor. Now the place must come after the pinned anchor,
    /// and the very next one must carry the link of this run's manifest built
    /// on it; a further one is taken (control: a retried attempt, or another
    /// run in between, wrote one before), as is the right one.
    #[test]
    fn a_runner_cannot_move_the_cursor_back_or_to_a_link_of_its_choosing() {
        use ferry_crds::chain::{LinkInput, manifest_link};
        let pinned_link = "ab".repeat(32);
        let pinned = format!("4:{pinned_link}");
        let name = ".ferry/manifests/20261204T101010123456Z-sales-1.json";
        let created = "2026-12-04T10:10:10.123456Z";
        let link = |sequence, previous: Option<&str>, run: &str| {
            manifest_link(LinkInput {
                name,
                sequence,
                previous,
                run,
                connector: "acme/sales",
                created,
            })
        };
        let reported = |place: String| RunResult {
            manifest: Some(name.into()),
            manifest_anchor: Some(place),
            manifest_created: Some(created.into()),
            attempt: Some(1),
            ..RunResult::default()
        };
        let judge = |r: RunResult, pinned: Option<&str>| {
            misplaced(Some(&r), "sales-1", "acme/sales", pinned, 1)
        };
        // Control: the manifest this run wrote on the pinned one.
        let right = reported(format!("5:{}", link(5, Some(&pinned_link), "sales-1")));
        assert_eq!(judge(right, Some(&pinned)), None);
        // Back to the pinned manifest's place, or before it.
        for back in [format!("4:{pinned_link}"), format!("2:{}", "cd".repeat(32))] {
            assert!(
                judge(reported(back.clone()), Some(&pinned)).is_some(),
                "{back}"
            );
        }
        // The next place with a link that is not this run's manifest's.
        for wrong in [
            format!("5:{}", "ef".repeat(32)),
            format!("5:{}", link(5, Some(&pinned_link), "other-run")),
            format!("5:{}", link(5, None, "sales-1")),
        ] {
            assert!(
                judge(reported(wrong.clone()), Some(&pinned)).is_some(),
                "{wrong}"
            );
        }
        assert!(judge(reported("5:nothex".into()), Some(&pinned)).is_some());
        // The first manifest of a chain builds on none.
        assert_eq!(
            judge(reported(format!("1:{}", link(1, None, "sales-1"))), None),
            None
        );
        assert!(judge(reported(format!("1:{}", "ef".repeat(32))), None).is_some());
        // Further on: written after another manifest the operator has not seen.
        assert_eq!(
            judge(reported(format!("7:{}", "ef".repeat(32))), Some(&pinned)),
            None
        );
        // Another attempt's result is not judged here.
        assert_eq!(
            misplaced(
                Some(&reported(format!("4:{pinned_link}"))),
                "sales-1",
                "acme/sales",
                Some(&pinned),
                2
            ),
            None
        );
    }

    #[test]
    fn a_failed_status_write_is_not_taken_for_tampering() {
        let before = ConnectorRunStatus {
            phase: Some(RunPhase::Pending),
            ..ConnectorRunStatus::default()
        };
        let after = ConnectorRunStatus {
            phase: Some(RunPhase::Running),
            attempts: Some(1),
            ..ConnectorRunStatus::default()
        };
        let record = RunRecord {
            status: after.clone(),
            previous: Some(fingerprint(&before)),
        };
        assert!(record.explains(&after));
        assert!(
            record.explains(&before),
            "the status write after the record failed"
        );
        let forged = ConnectorRunStatus {
            phase: Some(RunPhase::Succeeded),
            ..after.clone()
        };
        assert!(!record.explains(&forged));
        // The runner's own fields are its to write.
        let reported = ConnectorRunStatus {
            progress: Some(Default::default()),
            ..after
        };
        assert!(record.explains(&reported));
    }
}
