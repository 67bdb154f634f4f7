//! A Connector's status, computed without a client: its conditions from the
//! validation, its schedule times from the schedule's decision, and last run,
//! last success and cursor from the runs. The operator is its only writer.

use ferry_crds::{
    Connector, ConnectorRun, ConnectorStatus, LastRun, RunMode, RunPhase, SyncCursor,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};

use super::history::{phase, recorded};
use super::scheduling::Decision;
use super::validate::Readiness;
use crate::conditions;

/// The status after this reconcile: `old` with the Ready and Suspended
/// conditions, the schedule's times (`decision` is `None` when nothing is
/// scheduled) and what the runs (newest first) say.
pub fn next(
    connector: &Connector,
    readiness: &Readiness,
    decision: Option<&Decision>,
    runs: &[ConnectorRun],
    now: Timestamp,
) -> ConnectorStatus {
    let generation = connector.meta().generation;
    let mut status = connector.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    conditions::set(
        &mut status.conditions,
        "Ready",
        readiness.ready,
        readiness.reason,
        readiness.message.clone(),
        generation,
        now,
    );
    let suspended = connector.spec.suspend;
    conditions::set(
        &mut status.conditions,
        "Suspended",
        suspended,
        if suspended { "Suspended" } else { "Active" },
        if suspended {
            "spec.suspend is true: no scheduled run starts"
        } else {
            "scheduled runs start"
        },
        generation,
        now,
    );
    match decision {
        Some(d) => {
            if let Some(t) = d.last_schedule_time {
                status.last_schedule_time = Some(Time(t));
            }
            status.next_schedule_time = d.next.map(Time);
        }
        None => status.next_schedule_time = None,
    }
    derive_run_status(&mut status, runs);
    status
}

/// The last scheduled time acted on, or when the Connector was created: where
/// the schedule counts from.
pub fn schedule_origin(connector: &Connector, now: Timestamp) -> Timestamp {
    connector
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(connector.meta().creation_timestamp.as_ref())
        .map(|t| t.0)
        .unwrap_or(now)
}

/// Whether the Ready condition changed to `readiness` from `old`, not ready:
/// worth a Warning Event, once.
pub fn newly_not_ready(old: &ConnectorStatus, readiness: &Readiness) -> bool {
    let was = old
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str());
    !readiness.ready && was != Some(readiness.reason)
}

/// The sequence number of a manifest's place (`SEQUENCE:LINK`).
fn sequence(anchor: Option<&str>) -> Option<u64> {
    anchor?.split_once(':')?.0.parse().ok()
}

/// Last run, last success and cursor, from the runs (newest first). The last
/// success and the cursor never go back, even once their run is pruned.
pub fn derive_run_status(status: &mut ConnectorStatus, runs: &[ConnectorRun]) {
    if let Some(newest) = runs.first() {
        let s = recorded(newest).unwrap_or_default();
        status.last_run = Some(LastRun {
            name: newest.name_any(),
            phase: s.phase,
            start_time: s.start_time,
            completion_time: s.completion_time,
        });
    }
    // Completion times have whole seconds: two runs that end in the same
    // second are told apart by the place of the manifest each wrote.
    let newest_success = runs
        .iter()
        .filter(|r| phase(r) == Some(RunPhase::Succeeded))
        .filter_map(|r| {
            let s = recorded(r)?;
            let place = s
                .result
                .as_ref()
                .and_then(|r| sequence(r.manifest_anchor.as_deref()));
            Some(((s.completion_time?.0, place), r))
        })
        .max_by_key(|(key, _)| *key);
    let Some(((when, place), run)) = newest_success else {
        return;
    };
    let current = status.last_successful_time.as_ref().map(|t| {
        let place = status
            .cursor
            .as_ref()
            .and_then(|c| sequence(c.anchor.as_deref()));
        (t.0, place)
    });
    if current.is_some_and(|current| current >= (when, place)) {
        return;
    }
    let t = Time(when);
    status.last_successful_time = Some(t);
    // The result the operator accepted when the run succeeded.
    let result = recorded(run).and_then(|s| s.result);
    // Sync and erase runs write the destination's newest manifest; plan runs none.
    if run.spec.mode != RunMode::Plan
        && let Some(manifest) = result.as_ref().and_then(|r| r.manifest.clone())
    {
        status.cursor = Some(SyncCursor {
            manifest,
            run: run.name_any(),
            objects: result
                .as_ref()
                .map(|r| r.objects_copied + r.objects_skipped)
                .unwrap_or(0),
            anchor: result.and_then(|r| r.manifest_anchor),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::history::test_run;
    use ferry_crds::RunResult;

    fn succeeded(name: &str, at: &str, mode: RunMode, anchor: Option<&str>) -> ConnectorRun {
        let mut r = test_run(name, Some(RunPhase::Succeeded));
        r.spec.mode = mode;
        let s = r.status.as_mut().expect("status");
        s.completion_time = Some(Time(at.parse().expect("time")));
        s.result = Some(RunResult {
            manifest: (mode != RunMode::Plan).then(|| format!(".ferry/manifests/{name}.json")),
            manifest_anchor: anchor.map(String::from),
            ..Default::default()
        });
        r
    }

    fn place(sequence: u64) -> String {
        format!("{sequence}:{}", "ab".repeat(32))
    }

    #[test]
    fn two_runs_ending_in_the_same_second_leave_the_cursor_at_the_later_manifest() {
        let at = "2026-12-01T10:00:00Z";
        let (p1, p2) = (place(1), place(2));
        // Newest first, as the runs are read; either order gives the later manifest.
        for runs in [
            vec![
                succeeded("b", at, RunMode::Sync, Some(&p2)),
                succeeded("a", at, RunMode::Sync, Some(&p1)),
            ],
            vec![
                succeeded("a", at, RunMode::Sync, Some(&p1)),
                succeeded("b", at, RunMode::Sync, Some(&p2)),
            ],
        ] {
            let mut status = ConnectorStatus::default();
            derive_run_status(&mut status, &runs[1..]);
            derive_run_status(&mut status, &runs);
            let cursor = status.cursor.expect("cursor");
            assert_eq!(
                (cursor.run.as_str(), cursor.anchor),
                ("b", Some(p2.clone()))
            );
        }
    }

    #[test]
    fn an_erasure_moves_the_anchor_a_plan_does_not() {
        let mut status = ConnectorStatus::default();
        let (p1, p2) = (place(1), place(2));
        let sync = succeeded("s", "2026-12-01T10:00:00Z", RunMode::Sync, Some(&p1));
        let erase = succeeded("e", "2026-12-01T11:00:00Z", RunMode::Erase, Some(&p2));
        let plan = succeeded("p", "2026-12-01T12:00:00Z", RunMode::Plan, None);
        derive_run_status(&mut status, &[erase.clone(), sync.clone()]);
        assert_eq!(
            status.cursor.as_ref().expect("cursor").anchor,
            Some(p2.clone())
        );
        derive_run_status(&mut status, &[plan, erase, sync]);
        assert_eq!(status.cursor.expect("cursor").anchor, Some(p2));
    }
}
