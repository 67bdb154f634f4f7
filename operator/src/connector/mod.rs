//! The Connector controller. A reconcile is the same pipeline as a run's:
//!
//! `validate -> decide -> act -> status -> effects`
//!
//! - [`validate`] (reads the tenant's rules and which keys the Secrets hold):
//!   what the schema cannot check, as the Ready condition;
//! - decide (no client): [`scheduling::decide`] which scheduled run to start
//!   under the concurrency policy, [`prune::doomed`] which finished runs fall
//!   beyond the history limits, from the Connector's runs in the cache that
//!   the controller's own watch of runs fills ([`history::runs_of`],
//!   [`crate::run_cache`]);
//! - act: create (and, for `Replace`, delete) the scheduled run, delete the
//!   pruned runs — each safe to repeat, and done before the status records the
//!   schedule as moved on, so a failed status write never loses a run;
//! - [`status::next`] (no client), written by [`crate::status::write`]: the
//!   operator is the Connector status's only writer;
//! - effects that must count once: missed schedules and the Warning Event of a
//!   Connector that turned not ready, after the status that records them.

pub mod history;
pub mod prune;
pub mod scheduling;
pub mod status;
pub mod validate;

use std::sync::Arc;

use ferry_crds::{Connector, ConnectorRun, ConnectorStatus};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::context::Context;
use crate::error::Error;
use scheduling::{Decision, Inputs};
use validate::Readiness;

pub use status::derive_run_status;

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
            crate::guard::report_invalid(&ctx, CONTROLLER, "Connector", invalid).await;
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
    error.policy(CONTROLLER, &connector.name_any())
}

/// What to do after a failed reconcile.
pub fn error_policy(connector: Arc<Connector>, error: &Error, _ctx: Arc<Context>) -> Action {
    error.policy(CONTROLLER, &connector.name_any())
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

    // validate
    let validated = validate::validate(ctx, &namespace, spec).await?;

    // decide
    let mut runs = history::runs_of(ctx, &namespace, &name).await?;
    let decision = match (&validated.schedule, spec.suspend) {
        (Some(schedule), false) => Some(scheduling::decide(Inputs {
            connector: &name,
            schedule,
            policy: spec.concurrency_policy,
            starting_deadline_seconds: spec.starting_deadline_seconds,
            last: status::schedule_origin(connector, now),
            now,
            runs: &runs,
        })),
        _ => None,
    };

    // act
    act(ctx, connector, decision.as_ref(), &mut runs).await?;

    // status
    let old = connector.status.clone().unwrap_or_default();
    let new = status::next(
        connector,
        &validated.readiness,
        decision.as_ref(),
        &runs,
        now,
    );
    if new != old {
        crate::status::write::<Connector, _>(
            ctx,
            &namespace,
            &name,
            &new,
            crate::status::CONNECTOR_FIELDS,
        )
        .await?;
    }

    // effects
    effects(
        ctx,
        connector,
        &old,
        &new,
        &validated.readiness,
        decision.as_ref(),
    )
    .await;
    Ok(decision.map_or(Action::await_change(), |d| d.requeue(now)))
}

/// Carries out the decision and prunes the history; `runs` is left as the
/// status should see it.
async fn act(
    ctx: &Context,
    connector: &Connector,
    decision: Option<&Decision>,
    runs: &mut Vec<ConnectorRun>,
) -> Result<(), Error> {
    let spec = &connector.spec;
    if let Some(d) = decision {
        if let scheduling::Start::Create { replace, .. } = &d.start {
            runs.retain(|r| !replace.contains(&r.name_any()));
        }
        if let Some(created) = scheduling::start(ctx, connector, &d.start).await? {
            runs.insert(0, created);
        }
    }
    let limits = prune::Limits {
        succeeded: spec.successful_runs_history_limit.max(0) as usize,
        failed: spec.failed_runs_history_limit.max(0) as usize,
        keep_for: ctx.config.keep_finished_runs_for,
    };
    let doomed = prune::doomed(runs, limits, ctx.now());
    let namespace = connector.namespace().unwrap_or_default();
    for run in &doomed {
        prune::delete(ctx, &namespace, run).await?;
    }
    runs.retain(|r| !doomed.contains(&r.name_any()));
    Ok(())
}

/// What follows a written status, once: the Warning Event of a Connector that
/// turned not ready, the missed schedules, the last-success gauge.
async fn effects(
    ctx: &Context,
    connector: &Connector,
    old: &ConnectorStatus,
    new: &ConnectorStatus,
    readiness: &Readiness,
    decision: Option<&Decision>,
) {
    let (namespace, name) = (
        connector.namespace().unwrap_or_default(),
        connector.name_any(),
    );
    let reference = connector.object_ref(&());
    if status::newly_not_ready(old, readiness) {
        let note = readiness.message.clone();
        ctx.event(&reference, true, readiness.reason, "Validate", note)
            .await;
    }
    if let Some(missed) = decision.map(|d| d.missed).filter(|m| *m > 0) {
        ctx.metrics
            .missed_schedules_total
            .with_label_values(&[&namespace, &name])
            .inc_by(missed as u64);
        let note = format!(
            "{missed} scheduled runs were missed (operator down, concurrencyPolicy Forbid, or startingDeadlineSeconds passed)"
        );
        ctx.event(&reference, true, "MissedSchedule", "Schedule", note)
            .await;
    }
    if let Some(t) = &new.last_successful_time {
        ctx.metrics
            .last_success_timestamp_seconds
            .with_label_values(&[&namespace, &name])
            .set(t.0.as_second() as f64);
    }
}
