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
    let newest_success = runs
        .iter()
        .filter(|r| phase(r) == Some(RunPhase::Succeeded))
        .filter_map(|r| Some((recorded(r)?.completion_time?, r)))
        .max_by_key(|(t, _)| t.0);
    let Some((t, run)) = newest_success else {
        return;
    };
    if status
        .last_successful_time
        .as_ref()
        .is_some_and(|old| old.0 >= t.0)
    {
        return;
    }
    status.last_successful_time = Some(t);
    // The result the operator accepted when the run succeeded.
    let result = recorded(run).and_then(|s| s.result);
    if run.spec.mode == RunMode::Sync
        && let Some(manifest) = result.as_ref().and_then(|r| r.manifest.clone())
    {
        status.cursor = Some(SyncCursor {
            manifest,
            run: run.name_any(),
            objects: result
                .map(|r| r.objects_copied + r.objects_skipped)
                .unwrap_or(0),
        });
    }
}
