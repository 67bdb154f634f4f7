//! The ConnectorRun controller. A reconcile is a pipeline:
//!
//! `dereference -> validate -> build -> apply -> update_status`
//!
//! - [`dereference`] (client required): the Connector (pinned into the run's
//!   status the first time), the namespace's rules, which keys the Secrets hold;
//! - [`crate::policy::check`] (no client): sensitivity, residency, TLS, secrets;
//! - [`build`] (no client): ServiceAccount, Role, RoleBinding, NetworkPolicy, Pod;
//! - [`apply`] (client required): server-side apply, deletion at the end;
//! - status (no client to compute, [`apply::write_status`] to write): phase and
//!   conditions from the pod's fate ([`fate`]) and the runner's report.

pub mod apply;
pub mod build;
pub mod dereference;
pub mod fate;

use std::sync::Arc;
use std::time::Duration;

use ferry_crds::{ConnectorRun, ConnectorRunStatus, ConnectorSpec, RunMode, RunPhase};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::audit::{Outcome, Record};
use crate::conditions;
use crate::context::Context;
use crate::error::Error;
use crate::names;
use crate::policy::{self, Settings};
use fate::Fate;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "connectorrun";

/// How often a run in progress is looked at even without a watch event.
const RESYNC: Duration = Duration::from_secs(60);

/// Reconciles one ConnectorRun, recording metrics.
pub async fn reconcile(run: Arc<ConnectorRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = format!("{}/{}", run.namespace().unwrap_or_default(), run.name_any());
    ctx.run_queue.reconciled(key, run.resource_version());
    let timer = ctx.metrics.reconcile_started(CONTROLLER);
    let result = reconcile_run(&run, &ctx).await;
    timer.finish(match &result {
        Ok(a) => Ok(*a != Action::await_change()),
        Err(e) => Err(e.category()),
    });
    result
}

/// SHA-256 of a Connector spec, as pinned in a run's status.
pub fn spec_hash(spec: &ConnectorSpec) -> String {
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The run being reconciled, with what every step needs.
#[derive(Clone, Copy)]
struct Subject<'a> {
    run: &'a ConnectorRun,
    ctx: &'a Context,
    namespace: &'a str,
    name: &'a str,
    /// The pinned Connector spec.
    spec: &'a ConnectorSpec,
}

/// What the reconcile decided about the run.
struct Step {
    status: ConnectorRunStatus,
    action: Action,
}

fn reference(run: &ConnectorRun) -> ObjectReference {
    run.object_ref(&())
}

/// The reconcile itself, without metrics.
pub async fn reconcile_run(run: &ConnectorRun, ctx: &Context) -> Result<Action, Error> {
    let namespace = run.namespace().ok_or(Error::MissingMetadata {
        kind: "ConnectorRun",
        field: "namespace",
    })?;
    let name = run.name_any();
    if run.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Once a run has pods, its cached copy may lag behind this operator's own
    // last status write: a pod event (the cleanup deleting the pod of a run
    // just marked Succeeded) can arrive before the run's own. Acting on the
    // stale copy would take the deleted pod for a lost one and start another
    // attempt. Such runs are decided on the run as the API has it now.
    let in_flight = run.status.as_ref().is_some_and(|s| {
        s.attempts.unwrap_or(0) > 0 && !s.phase.is_some_and(RunPhase::is_terminal)
    });
    let fresh;
    let run = if in_flight {
        let api: Api<ConnectorRun> = Api::namespaced(ctx.client.clone(), &namespace);
        match api
            .get_opt(&name)
            .await
            .map_err(|e| Error::kube("get", "ConnectorRun", &name, e))?
        {
            Some(r) => {
                fresh = r;
                &fresh
            }
            None => return Ok(Action::await_change()),
        }
    } else {
        run
    };
    let old = run.status.clone().unwrap_or_default();
    if old.phase.is_some_and(RunPhase::is_terminal) {
        apply::cleanup(ctx, &namespace, &name, old.attempts.unwrap_or(0)).await?;
        return Ok(Action::await_change());
    }

    // dereference: the spec pinned at the run's first reconcile.
    let mut status = old.clone();
    let spec = match old.connector_spec.clone() {
        Some(spec) => spec,
        None => {
            let Some(connector) =
                dereference::connector(ctx, &namespace, &run.spec.connector_ref.name).await?
            else {
                status.phase = Some(RunPhase::Pending);
                status.reason = Some("ConnectorNotFound".into());
                status.message = Some(format!(
                    "Connector {:?} does not exist in namespace {namespace}; the run waits for it",
                    run.spec.connector_ref.name
                ));
                status.observed_generation = run.meta().generation;
                write_if_changed(ctx, &namespace, &name, &old, &status).await?;
                return Ok(Action::requeue(Duration::from_secs(30)));
            };
            status.connector_spec_hash = Some(spec_hash(&connector.spec));
            status.connector_generation = connector.meta().generation;
            status.connector_spec = Some(connector.spec.clone());
            status.phase = Some(RunPhase::Pending);
            status.reason = None;
            status.message = None;
            connector.spec
        }
    };
    status.observed_generation = run.meta().generation;

    let subject = Subject {
        run,
        ctx,
        namespace: &namespace,
        name: &name,
        spec: &spec,
    };
    let step = advance(subject, status).await?;
    write_if_changed(ctx, &namespace, &name, &old, &step.status).await?;
    Ok(step.action)
}

async fn write_if_changed(
    ctx: &Context,
    namespace: &str,
    name: &str,
    old: &ConnectorRunStatus,
    new: &ConnectorRunStatus,
) -> Result<(), Error> {
    let strip = |s: &ConnectorRunStatus| ConnectorRunStatus {
        progress: None,
        result: None,
        ..s.clone()
    };
    if strip(old) != strip(new) {
        apply::write_status(ctx, namespace, name, new).await?;
    }
    Ok(())
}

/// Moves the run one step on from `status`.
async fn advance(subject: Subject<'_>, mut status: ConnectorRunStatus) -> Result<Step, Error> {
    let Subject {
        run,
        ctx,
        namespace,
        name,
        spec,
    } = subject;
    let now = ctx.now();
    let attempts = status.attempts.unwrap_or(0);
    if attempts == 0 {
        return start_attempt(subject, status, 1).await;
    }
    let pod_name = names::pod(name, attempts);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let pod = pods
        .get_opt(&pod_name)
        .await
        .map_err(|e| Error::kube("get", "Pod", &pod_name, e))?;

    let fate = match (&pod, &status.next_attempt_time) {
        (_, Some(at)) => {
            // Backing off before the next attempt; the failed attempt's pod may
            // still be terminating and says nothing new.
            if at.0 <= now {
                return start_attempt(subject, status, attempts + 1).await;
            }
            let wait = (at.0.as_second() - now.as_second()).max(1) as u64;
            return Ok(Step {
                status,
                action: Action::requeue(Duration::from_secs(wait)),
            });
        }
        (None, None) => Fate::Failed {
            reason: "PodDeleted".into(),
            message: format!("pod {pod_name} disappeared before the run ended"),
            retryable: true,
        },
        (Some(pod), _) => fate::fate(pod, status.result.as_ref(), attempts),
    };

    match fate {
        Fate::Waiting { running, message } => {
            if running {
                status.phase = Some(RunPhase::Running);
                status.reason = None;
                status.message = None;
                if status.start_time.is_none() {
                    status.start_time = Some(Time(now));
                }
            } else {
                status.reason = message.as_ref().map(|_| "PodPending".to_string());
                status.message = message;
            }
            Ok(Step {
                status,
                action: Action::requeue(RESYNC),
            })
        }
        Fate::Succeeded => {
            let message = summary(run.spec.mode, status.result.as_ref());
            finish(subject, status, RunPhase::Succeeded, "Succeeded", message).await
        }
        Fate::Failed {
            reason,
            message,
            retryable,
        } => {
            let backoff_limit = spec.run.backoff_limit;
            if retryable && attempts <= backoff_limit {
                if let Some(pod) = &pod {
                    apply::delete_pod(ctx, namespace, &pod.name_any()).await?;
                }
                let wait = fate::backoff_seconds(attempts);
                let at = Timestamp::from_second(now.as_second() + wait).unwrap_or(now);
                status.phase = Some(RunPhase::Pending);
                status.reason = Some(reason.clone());
                status.message = Some(format!(
                    "attempt {attempts} of {} failed: {message}; retrying in {wait}s",
                    backoff_limit + 1
                ));
                status.next_attempt_time = Some(Time(at));
                ctx.event(
                    &reference(run),
                    true,
                    "AttemptFailed",
                    "Retry",
                    status.message.clone().unwrap_or_default(),
                )
                .await;
                return Ok(Step {
                    status,
                    action: Action::requeue(Duration::from_secs(wait as u64)),
                });
            }
            let message = if retryable {
                format!("{message} (after {attempts} attempts)")
            } else {
                message
            };
            if reason == "IntegrityFailure" {
                ctx.metrics
                    .integrity_failures_total
                    .with_label_values(&[namespace, &run.spec.connector_ref.name])
                    .inc();
            }
            if let Some(policy) = RUNNER_POLICY_REASONS.iter().find(|r| **r == reason) {
                // Refused by the runner (what only it can see: where a bucket
                // really is, an object's stream, a file that cannot be minimised).
                ctx.metrics
                    .policy_denials_total
                    .with_label_values(&[policy])
                    .inc();
            }
            finish(subject, status, RunPhase::Failed, &reason, message).await
        }
    }
}

/// Failure reasons of the runner that are policy refusals: counted with the
/// operator's own denials and shown as a PolicyViolation condition.
const RUNNER_POLICY_REASONS: [&str; 4] = [
    "ResidencyViolation",
    "SensitivityNotAllowed",
    "NotProjectable",
    "ObjectsRefused",
];

fn summary(mode: RunMode, result: Option<&ferry_crds::RunResult>) -> String {
    let Some(r) = result else {
        return "the runner finished without reporting counts".into();
    };
    match mode {
        RunMode::Sync => format!(
            "copied {} objects ({} bytes written), {} unchanged",
            r.objects_copied, r.bytes_written, r.objects_skipped
        ),
        RunMode::Plan => format!(
            "plan: {} objects would be copied, {} unchanged",
            r.objects_copied, r.objects_skipped
        ),
        RunMode::Erase => format!("erased {} objects", r.objects_erased),
    }
}

/// Checks the run, then builds and applies the objects of attempt `attempt`.
async fn start_attempt(
    subject: Subject<'_>,
    mut status: ConnectorRunStatus,
    attempt: i32,
) -> Result<Step, Error> {
    let Subject {
        run,
        ctx,
        namespace,
        name,
        spec,
    } = subject;
    // dereference
    let tenant = dereference::tenant(ctx, namespace);
    let secrets = dereference::secret_keys(ctx, namespace, spec).await?;
    // validate
    let settings = Settings {
        allow_local_endpoints: ctx.config.allow_local_endpoints,
    };
    let (violations, warnings) = policy::check(spec, &tenant, &secrets, settings);
    let connector = &run.spec.connector_ref.name;
    if !violations.is_empty() {
        for v in &violations {
            ctx.metrics
                .policy_denials_total
                .with_label_values(&[v.reason])
                .inc();
            ctx.audit(&Record::new(
                "run.rejected",
                Outcome::Denied,
                Some(v.reason),
                namespace,
                connector,
                name,
                Some(spec),
            ));
        }
        let reason = violations[0].reason;
        let message = violations
            .iter()
            .map(|v| v.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        return finish(subject, status, RunPhase::Rejected, reason, message).await;
    }
    if attempt == 1 {
        for w in &warnings {
            ctx.event(
                &reference(run),
                true,
                w.reason,
                "Validate",
                w.message.clone(),
            )
            .await;
        }
    }
    // build
    let objects = build::build(build::RunInput {
        run,
        spec,
        attempt,
        tenant_region: tenant.region.as_deref(),
        config: &ctx.config,
    })?;
    // apply
    apply::apply(ctx, namespace, &objects).await?;

    let pod_name = names::pod(name, attempt);
    ctx.audit(&Record::new(
        "run.started",
        Outcome::Success,
        (attempt > 1).then_some("Retry"),
        namespace,
        connector,
        name,
        Some(spec),
    ));
    ctx.event(
        &reference(run),
        false,
        "Started",
        "CreatePod",
        format!("attempt {attempt}: created pod {pod_name}"),
    )
    .await;
    status.phase = Some(RunPhase::Pending);
    status.attempts = Some(attempt);
    status.pod_name = Some(pod_name);
    status.next_attempt_time = None;
    if attempt == 1 {
        status.reason = None;
        status.message = None;
    }
    Ok(Step {
        status,
        action: Action::requeue(RESYNC),
    })
}

/// Ends the run: final phase, conditions, metrics, Event, audit line, cleanup.
async fn finish(
    subject: Subject<'_>,
    mut status: ConnectorRunStatus,
    phase: RunPhase,
    reason: &str,
    message: String,
) -> Result<Step, Error> {
    let Subject {
        run,
        ctx,
        namespace,
        name,
        spec,
    } = subject;
    let now = ctx.now();
    let connector = run.spec.connector_ref.name.as_str();
    let generation = run.meta().generation;
    status.phase = Some(phase);
    status.reason = Some(reason.to_string());
    status.message = Some(crate::context::truncate(message.clone(), 4096));
    status.completion_time = Some(Time(now));
    status.next_attempt_time = None;
    let started = status
        .start_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| run.meta().creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let seconds = now.as_second() - started.as_second();
    status.duration = Some(conditions::human_duration(seconds));
    let (complete, failed, violation) = match phase {
        RunPhase::Succeeded => (true, false, false),
        RunPhase::Rejected => (false, true, true),
        _ => (false, true, RUNNER_POLICY_REASONS.contains(&reason)),
    };
    conditions::set(
        &mut status.conditions,
        "Complete",
        complete,
        reason,
        &message,
        generation,
        now,
    );
    conditions::set(
        &mut status.conditions,
        "Failed",
        failed,
        reason,
        &message,
        generation,
        now,
    );
    if violation {
        conditions::set(
            &mut status.conditions,
            "PolicyViolation",
            true,
            reason,
            &message,
            generation,
            now,
        );
    }

    let result_label = match phase {
        RunPhase::Succeeded => "succeeded",
        RunPhase::Rejected => "rejected",
        _ => "failed",
    };
    let m = &ctx.metrics;
    m.runs_total
        .with_label_values(&[namespace, connector, result_label])
        .inc();
    if phase != RunPhase::Rejected {
        m.run_duration_seconds
            .with_label_values(&[namespace, connector])
            .observe(seconds.max(0) as f64);
    }
    if let Some(r) = status.result.as_ref() {
        let nc = [namespace, connector];
        m.bytes_transferred_total
            .with_label_values(&nc)
            .inc_by(r.bytes_written.max(0) as u64);
        m.objects_transferred_total
            .with_label_values(&nc)
            .inc_by(r.objects_copied.max(0) as u64);
        m.objects_failed_total
            .with_label_values(&nc)
            .inc_by(r.objects_failed.max(0) as u64);
    }

    let (action, outcome) = match phase {
        RunPhase::Rejected => ("run.rejected", Outcome::Denied),
        RunPhase::Succeeded => ("run.finished", Outcome::Success),
        _ => ("run.finished", Outcome::Failure),
    };
    if phase != RunPhase::Rejected {
        // Rejections were audited per violation already.
        ctx.audit(&Record::new(
            action,
            outcome,
            Some(reason),
            namespace,
            connector,
            name,
            Some(spec),
        ));
    }
    ctx.event(
        &reference(run),
        phase != RunPhase::Succeeded,
        reason,
        "Finish",
        message,
    )
    .await;
    apply::cleanup(ctx, namespace, name, status.attempts.unwrap_or(0)).await?;
    tracing::info!(namespace, run = name, connector, phase = ?phase, reason, "run ended");
    Ok(Step {
        status,
        action: Action::await_change(),
    })
}

/// What to do after a failed reconcile: an invalid object waits for a change, a
/// transient failure is retried with backoff.
pub fn error_policy(run: Arc<ConnectorRun>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(run = %run.name_any(), error = %error, category = error.category(), "reconcile failed");
    match error {
        Error::MissingMetadata { .. } | Error::Build(_) => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(15)),
    }
}
