//! The Connector controller: checks what the schema cannot (schedule, time zone,
//! Secrets, tenant rules), creates ConnectorRuns on schedule under the
//! concurrency policy, prunes the history, and is the one writer of the
//! Connector's status (last run, last success, cursor), which it derives from
//! the runs.

use std::sync::Arc;
use std::time::Duration;

use ferry_crds::{
    ConcurrencyPolicy, Connector, ConnectorRef, ConnectorRun, ConnectorRunSpec, ConnectorStatus,
    LastRun, RunMode, RunPhase, SyncCursor,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::conditions;
use crate::config::FIELD_MANAGER;
use crate::context::Context;
use crate::error::{Error, is_already_exists, is_not_found};
use crate::names;
use crate::policy::{self, Settings};
use crate::run::dereference;
use crate::schedule::Schedule;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "connector";

/// Reconciles one Connector as the controller reads it: one that cannot be read
/// is reported and left alone.
pub async fn reconcile_guarded(
    connector: Arc<DeserializeGuard<Connector>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match &connector.0 {
        Ok(c) => reconcile(Arc::new(c.clone()), ctx).await,
        Err(invalid) => {
            let timer = ctx.metrics.reconcile_started(CONTROLLER);
            crate::run::report_invalid(&ctx, "Connector", invalid).await;
            timer.finish(Err("invalid"));
            Ok(Action::await_change())
        }
    }
}

/// What to do after a failed reconcile, as the controller calls it.
pub fn error_policy_guarded(
    connector: Arc<DeserializeGuard<Connector>>,
    error: &Error,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(connector = %connector.name_any(), error = %error, category = error.category(), "reconcile failed");
    match error {
        Error::MissingMetadata { .. } => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(15)),
    }
}

/// Reconciles one Connector, recording metrics.
pub async fn reconcile(connector: Arc<Connector>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = format!(
        "{}/{}",
        connector.namespace().unwrap_or_default(),
        connector.name_any()
    );
    ctx.connector_queue
        .reconciled(key, connector.resource_version());
    let timer = ctx.metrics.reconcile_started(CONTROLLER);
    let result = reconcile_connector(&connector, &ctx).await;
    timer.finish(match &result {
        Ok(a) => Ok(*a != Action::await_change()),
        Err(e) => Err(e.category()),
    });
    result
}

/// The runs of a Connector (scheduled or created by hand), newest first.
pub async fn runs_of(
    ctx: &Context,
    namespace: &str,
    connector: &str,
) -> Result<Vec<ConnectorRun>, Error> {
    // A run that cannot be read (written by a newer version, or hand-edited)
    // is left out rather than failing the whole list.
    let api: Api<DeserializeGuard<ConnectorRun>> = Api::namespaced(ctx.client.clone(), namespace);
    let mut runs: Vec<ConnectorRun> = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list", "ConnectorRun", namespace, e))?
        .items
        .into_iter()
        .filter_map(|r| r.0.ok())
        .filter(|r| r.spec.connector_ref.name == connector)
        .collect();
    runs.sort_by_key(|r| std::cmp::Reverse(sort_time(r)));
    Ok(runs)
}

fn sort_time(run: &ConnectorRun) -> (Timestamp, String) {
    let t = run
        .meta()
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    (t, run.name_any())
}

/// A run's phase as the operator recorded it (never as its status says: the
/// run's own identity may write that).
fn phase(run: &ConnectorRun) -> Option<RunPhase> {
    recorded(run).and_then(|s| s.phase)
}

/// The operator's record of a run's status; a run from before records counts
/// by its status.
fn recorded(run: &ConnectorRun) -> Option<ferry_crds::ConnectorRunStatus> {
    match ferry_crds::RunRecord::of(run) {
        Ok(Some(r)) => Some(r.status),
        Ok(None) => run.status.clone(),
        Err(_) => None,
    }
}

fn is_active(run: &ConnectorRun) -> bool {
    !phase(run).is_some_and(RunPhase::is_terminal) && run.meta().deletion_timestamp.is_none()
}

/// The reconcile itself, without metrics.
pub async fn reconcile_connector(connector: &Connector, ctx: &Context) -> Result<Action, Error> {
    let namespace = connector.namespace().ok_or(Error::MissingMetadata {
        kind: "Connector",
        field: "namespace",
    })?;
    let name = connector.name_any();
    if connector.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = &connector.spec;
    let now = ctx.now();
    let generation = connector.meta().generation;
    let old = connector.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = generation;
    let reference = connector.object_ref(&());

    // validate what the schema cannot
    let schedule = spec
        .schedule
        .as_deref()
        .map(|s| Schedule::parse(s, spec.time_zone.as_deref()))
        .transpose();
    let tenant = dereference::tenant(ctx, &namespace);
    let secrets = dereference::secret_keys(ctx, &namespace, spec).await?;
    let settings = Settings::of(&ctx.config);
    let (violations, _) = policy::check(spec, &tenant, &secrets, settings);
    let (ready, ready_reason, ready_message) = match (&schedule, violations.first()) {
        (Err(e), _) => (false, "InvalidSchedule", e.to_string()),
        (_, Some(v)) => (
            false,
            v.reason,
            violations
                .iter()
                .map(|v| v.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (Ok(Some(_)), None) => (true, "Scheduled", "runs start on schedule".to_string()),
        (Ok(None), None) => (
            true,
            "Ready",
            "runs start when a ConnectorRun is created".to_string(),
        ),
    };
    let was_reason = old
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone());
    if !ready && was_reason.as_deref() != Some(ready_reason) {
        ctx.event(
            &reference,
            true,
            ready_reason,
            "Validate",
            ready_message.clone(),
        )
        .await;
    }
    conditions::set(
        &mut status.conditions,
        "Ready",
        ready,
        ready_reason,
        ready_message,
        generation,
        now,
    );
    conditions::set(
        &mut status.conditions,
        "Suspended",
        spec.suspend,
        if spec.suspend { "Suspended" } else { "Active" },
        if spec.suspend {
            "spec.suspend is true: no scheduled run starts"
        } else {
            "scheduled runs start"
        },
        generation,
        now,
    );

    let mut runs = runs_of(ctx, &namespace, &name).await?;
    let mut action = Action::await_change();

    // schedule
    match (&schedule, spec.suspend) {
        (Ok(Some(schedule)), false) => {
            let last = old
                .last_schedule_time
                .as_ref()
                .map(|t| t.0)
                .or_else(|| connector.meta().creation_timestamp.as_ref().map(|t| t.0))
                .unwrap_or(now);
            let due = schedule.due(last, now, spec.starting_deadline_seconds);
            let moved_on = match due.latest {
                Some(at) => {
                    if start_scheduled(ctx, connector, &namespace, &name, at, &mut runs).await? {
                        status.last_schedule_time = Some(Time(at));
                        true
                    } else {
                        // Forbid with a run still active: try again soon, until
                        // the starting deadline passes.
                        action = Action::requeue(Duration::from_secs(10));
                        false
                    }
                }
                None if due.skipped > 0 => {
                    // Every due time is past its deadline: remember it as handled.
                    let latest_missed = schedule.due(last, now, None).latest.unwrap_or(now);
                    status.last_schedule_time = Some(Time(latest_missed));
                    true
                }
                None => false,
            };
            // Missed times are counted once: when the schedule moves past them.
            if moved_on && due.skipped > 0 {
                ctx.metrics
                    .missed_schedules_total
                    .with_label_values(&[&namespace, &name])
                    .inc_by(due.skipped as u64);
                ctx.event(
                    &reference,
                    true,
                    "MissedSchedule",
                    "Schedule",
                    format!(
                        "{} scheduled runs were missed (operator down, concurrencyPolicy Forbid, or startingDeadlineSeconds passed)",
                        due.skipped
                    ),
                )
                .await;
            }
            status.next_schedule_time = due.next.map(Time);
            if let Some(next) = due.next {
                let wait = (next.as_second() - now.as_second()).max(1) as u64;
                if action == Action::await_change() {
                    action = Action::requeue(Duration::from_secs(wait));
                }
            }
        }
        _ => status.next_schedule_time = None,
    }

    // prune the history
    prune(ctx, connector, &namespace, &mut runs).await?;

    // status, derived from the runs
    derive_run_status(&mut status, &runs);
    if let Some(t) = &status.last_successful_time {
        ctx.metrics
            .last_success_timestamp_seconds
            .with_label_values(&[&namespace, &name])
            .set(t.0.as_second() as f64);
    }
    if status != old {
        write_status(ctx, &namespace, &name, &status).await?;
    }
    Ok(action)
}

/// Starts the run scheduled at `at`, honouring the concurrency policy. Returns
/// false when `Forbid` holds it back.
async fn start_scheduled(
    ctx: &Context,
    connector: &Connector,
    namespace: &str,
    name: &str,
    at: Timestamp,
    runs: &mut Vec<ConnectorRun>,
) -> Result<bool, Error> {
    let run_name = names::scheduled_run(name, at.as_second());
    if runs.iter().any(|r| r.name_any() == run_name) {
        return Ok(true); // created by an earlier reconcile
    }
    let api: Api<ConnectorRun> = Api::namespaced(ctx.client.clone(), namespace);
    let active: Vec<String> = runs
        .iter()
        .filter(|r| is_active(r))
        .map(|r| r.name_any())
        .collect();
    let reference = connector.object_ref(&());
    match connector.spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !active.is_empty() => {
            tracing::info!(namespace, connector = name, active = ?active, "scheduled run held back: concurrencyPolicy Forbid");
            return Ok(false);
        }
        ConcurrencyPolicy::Replace => {
            for old in &active {
                match api.delete(old, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(Error::kube("delete", "ConnectorRun", old, e)),
                }
                ctx.event(
                    &reference,
                    false,
                    "RunReplaced",
                    "Schedule",
                    format!("deleted active run {old} (concurrencyPolicy Replace)"),
                )
                .await;
            }
            runs.retain(|r| !active.contains(&r.name_any()));
        }
        _ => {}
    }
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(names::LABEL_CONNECTOR.to_string(), names::label_value(name));
    labels.insert(
        names::LABEL_MANAGED_BY.to_string(),
        names::MANAGED_BY.to_string(),
    );
    let run = ConnectorRun {
        metadata: ObjectMeta {
            name: Some(run_name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(
                [(names::ANNOTATION_SCHEDULED_AT.to_string(), at.to_string())].into(),
            ),
            owner_references: connector.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: ConnectorRunSpec {
            connector_ref: ConnectorRef {
                name: name.to_string(),
            },
            mode: RunMode::Sync,
            erase: None,
        },
        status: None,
    };
    match api.create(&PostParams::default(), &run).await {
        Ok(created) => runs.insert(0, created),
        Err(e) if is_already_exists(&e) => return Ok(true),
        Err(e) => return Err(Error::kube("create", "ConnectorRun", &run_name, e)),
    }
    ctx.event(
        &reference,
        false,
        "RunCreated",
        "Schedule",
        format!("created run {run_name} for {at}"),
    )
    .await;
    Ok(true)
}

/// Deletes the oldest finished runs beyond the history limits.
async fn prune(
    ctx: &Context,
    connector: &Connector,
    namespace: &str,
    runs: &mut Vec<ConnectorRun>,
) -> Result<(), Error> {
    let api: Api<ConnectorRun> = Api::namespaced(ctx.client.clone(), namespace);
    let limit_ok = connector.spec.successful_runs_history_limit.max(0) as usize;
    let limit_failed = connector.spec.failed_runs_history_limit.max(0) as usize;
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut doomed = Vec::new();
    // Newest first: the first ones are kept.
    for run in runs.iter() {
        let keep = match phase(run) {
            Some(RunPhase::Succeeded) => {
                ok += 1;
                ok <= limit_ok
            }
            Some(RunPhase::Failed | RunPhase::Rejected) => {
                failed += 1;
                failed <= limit_failed
            }
            _ => true,
        };
        if !keep {
            doomed.push(run.name_any());
        }
    }
    for name in &doomed {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::kube("delete", "ConnectorRun", name, e)),
        }
    }
    runs.retain(|r| !doomed.contains(&r.name_any()));
    Ok(())
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
    let succeeded = runs
        .iter()
        .filter(|r| phase(r) == Some(RunPhase::Succeeded))
        .filter_map(|r| Some((recorded(r)?.completion_time?, r)));
    let newest_success = succeeded.max_by_key(|(t, _)| t.0);
    if let Some((t, run)) = newest_success
        && status
            .last_successful_time
            .as_ref()
            .is_none_or(|old| old.0 < t.0)
    {
        {
            status.last_successful_time = Some(t);
            // The result the operator accepted when the run succeeded.
            let accepted = recorded(run).and_then(|s| s.result);
            let result = accepted.as_ref();
            if run.spec.mode == RunMode::Sync
                && let Some(manifest) = result.and_then(|r| r.manifest.clone())
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
    }
}

async fn write_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &ConnectorStatus,
) -> Result<(), Error> {
    // The operator is the only writer of a Connector's status: every field.
    let fields = [
        "observedGeneration",
        "conditions",
        "lastRun",
        "lastSuccessfulTime",
        "lastScheduleTime",
        "nextScheduleTime",
        "cursor",
    ];
    let patch = crate::run::apply::status_patch(status, &fields, name)?;
    let api: Api<Connector> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch_status(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube("update the status of", "Connector", name, e))?;
    Ok(())
}

/// What to do after a failed reconcile.
pub fn error_policy(connector: Arc<Connector>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(connector = %connector.name_any(), error = %error, category = error.category(), "reconcile failed");
    match error {
        Error::MissingMetadata { .. } => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(15)),
    }
}
