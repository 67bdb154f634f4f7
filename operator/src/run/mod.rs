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
pub mod effects;
pub mod fate;
pub mod finalizer;
pub mod record;
pub mod shards;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use ferry_crds::contract;
use ferry_crds::{
    Attribution, CREATED_BY_ANNOTATION, Connector, ConnectorRun, ConnectorRunStatus, ConnectorSpec,
    Reason, RunMode, RunPhase, SPEC_CHANGED_BY_ANNOTATION,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

use crate::audit::{self, Attributed, Outcome, Record};
use crate::conditions;
use crate::context::Context;
use crate::dereference;
use crate::error::{self, Error};
use crate::names;
use crate::policy::{Violation, Warning};
use effects::Effect;
use fate::Fate;
use record::RunRecordExt;
use validate::Validation;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "connectorrun";

/// How often a run in progress is looked at even without a watch event.
const RESYNC: Duration = Duration::from_secs(60);

/// Reconciles one ConnectorRun as the controller reads it: an object that
/// cannot be read as a ConnectorRun (written by a newer version of Ferry, or a
/// hand-edited status) is reported and left alone, and the controller goes on
/// with the others.
pub async fn reconcile_guarded(
    run: Arc<DeserializeGuard<ConnectorRun>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match &run.0 {
        Ok(r) => reconcile(Arc::new(r.clone()), ctx).await,
        Err(invalid) => {
            crate::guard::report_invalid(&ctx, CONTROLLER, "ConnectorRun", invalid).await;
            Ok(Action::await_change())
        }
    }
}

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

pub use ferry_crds::spec_hash;

/// The run being reconciled, with what every step needs.
#[derive(Clone, Copy)]
struct Subject<'a> {
    run: &'a ConnectorRun,
    ctx: &'a Context,
    namespace: &'a str,
    name: &'a str,
    /// The pinned Connector spec.
    spec: &'a ConnectorSpec,
    /// Who asked for the run, as pinned.
    attribution: &'a Attribution,
}

/// What the reconcile decided about the run: its new status, when to look
/// again, and what to do once the status is written.
struct Decision {
    status: ConnectorRunStatus,
    action: Action,
    effects: Vec<Effect>,
}

impl Decision {
    fn new(status: ConnectorRunStatus, action: Action) -> Self {
        Self {
            status,
            action,
            effects: Vec::new(),
        }
    }
}

impl Subject<'_> {
    /// An audit record about this run.
    fn record(&self, action: &str, outcome: Outcome, reason: Option<&str>) -> Record {
        audit::record(
            action,
            outcome,
            reason,
            self.namespace,
            &self.run.spec.connector_ref.name,
            self.name,
            Some(self.spec),
        )
        .by(self.attribution)
    }
}

fn reference(run: &ConnectorRun) -> ObjectReference {
    run.object_ref(&())
}

/// The reconcile itself, without metrics.
///
/// What the operator decided is kept in the run's record (an annotation, see
/// [`ferry_crds::RunRecord`]), which the run's own ServiceAccount cannot write;
/// `status` shows the same, plus the runner's `progress` and `result`. Each
/// reconcile starts from the record: anything else written into the operator's
/// fields of the status is undone, and flagged.
pub async fn reconcile_run(run: &ConnectorRun, ctx: &Context) -> Result<Action, Error> {
    let namespace = run.namespace().ok_or(Error::MissingMetadata {
        kind: "ConnectorRun",
        field: "namespace",
    })?;
    let name = run.name_any();
    if run.meta().deletion_timestamp.is_some() {
        return deleted(run, ctx, &namespace, &name).await;
    }
    finalizer::ensure(ctx, run).await?;
    let fresh;
    let run = if in_flight(run) {
        match fresh_copy(ctx, &namespace, &name).await? {
            Some(r) => {
                fresh = r;
                &fresh
            }
            None => return Ok(Action::await_change()),
        }
    } else {
        run
    };
    let shown = run.status.clone().unwrap_or_default();
    let recorded = record::read(run);
    // What the operator itself decided, with the runner's progress and result.
    let (old, tampered) = trusted(&recorded, &shown);
    let tampering_effects = if tampered {
        tampering(run, &namespace, &name)
    } else {
        Vec::new()
    };
    let unreadable = recorded.is_err();
    let recorded = recorded.ok().flatten();
    let attribution = old.attribution.clone().unwrap_or_default();
    let subject = Subject {
        run,
        ctx,
        namespace: &namespace,
        name: &name,
        spec: &ConnectorSpec::default(),
        attribution: &attribution,
    };
    let mut decision = decide(subject, &old, unreadable, tampered).await?;
    decision.effects.splice(0..0, tampering_effects);
    commit(
        ctx,
        run,
        &namespace,
        &name,
        recorded.as_ref(),
        &old,
        &shown,
        decision,
    )
    .await
}

/// A run being deleted: its objects removed and an audit line written (with
/// its phase, who asked for it and what it moved between), then the
/// operator's finalizer released so that the deletion completes. A release
/// that fails is tried again, the line written again: a deletion is never
/// unseen, at worst seen twice.
async fn deleted(
    run: &ConnectorRun,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Action, Error> {
    if !finalizer::holds(run) {
        return Ok(Action::await_change());
    }
    let status = record::read(run)
        .ok()
        .flatten()
        .map(|r| r.status)
        .unwrap_or_default();
    let phase = status.phase.map_or("Pending", RunPhase::as_str);
    let spec = status
        .connector_spec
        .as_ref()
        .filter(|s| status.connector_spec_hash.as_deref() == Some(spec_hash(s).as_str()));
    let line = audit::record(
        "run.deleted",
        Outcome::Success,
        Some(phase),
        namespace,
        &run.spec.connector_ref.name,
        name,
        spec,
    )
    .by(&status.attribution.clone().unwrap_or_default());
    let effects = vec![Effect::cleanup(&status), Effect::Audit(line)];
    effects::perform(ctx, run, namespace, name, effects).await?;
    finalizer::release(ctx, run).await?;
    Ok(Action::await_change())
}

/// Whether the run has pods and has not ended. Once a run has pods, its cached
/// copy may lag behind this operator's own last write: a pod event (the cleanup
/// deleting the pod of a run just marked Succeeded) can arrive before the
/// run's own. Acting on the stale copy would take the deleted pod for a lost
/// one and start another attempt: such runs are decided on the run as the API
/// has it now.
fn in_flight(run: &ConnectorRun) -> bool {
    record::read(run).is_ok_and(|r| {
        r.is_some_and(|r| {
            (r.status.attempts.unwrap_or(0) > 0 || !r.status.shard_statuses.is_empty())
                && !r.status.phase.is_some_and(RunPhase::is_terminal)
        })
    })
}

/// The run as the API has it now; `None` when it is gone.
async fn fresh_copy(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<ConnectorRun>, Error> {
    let api: Api<ConnectorRun> = Api::namespaced(ctx.client.clone(), namespace);
    api.get_opt(name)
        .await
        .map_err(|e| Error::kube(error::Step::Read, "get", "ConnectorRun", name, e))
}

/// The status the operator decided (from its record, with the runner's
/// progress and result from the status `shown`), and whether the shown status
/// was changed by someone else. A run from before records has its status
/// adopted once; a record that is not one trusts nothing.
fn trusted(
    recorded: &Result<Option<ferry_crds::RunRecord>, serde_json::Error>,
    shown: &ConnectorRunStatus,
) -> (ConnectorRunStatus, bool) {
    match recorded {
        Ok(Some(r)) => (r.trusted_status(shown), !r.explains(shown)),
        Ok(None) => (shown.clone(), false),
        Err(_) => (
            ConnectorRunStatus {
                progress: shown.progress.clone(),
                result: shown.result.clone(),
                ..ConnectorRunStatus::default()
            },
            true,
        ),
    }
}

/// The next step of a run from the status the operator recorded (`old`).
/// `unreadable`: the record is not one; `tampered`: the status was changed by
/// someone else.
async fn decide(
    subject: Subject<'_>,
    old: &ConnectorRunStatus,
    unreadable: bool,
    tampered: bool,
) -> Result<Decision, Error> {
    let run = subject.run;
    if old.phase.is_some_and(RunPhase::is_terminal) {
        // An ended run: its status written back if someone changed it, and its
        // objects removed; nothing counted again.
        let mut decision = Decision::new(old.clone(), Action::await_change());
        decision.effects.push(Effect::cleanup(old));
        return Ok(decision);
    }

    // dereference: the spec pinned at the run's first reconcile.
    let mut status = old.clone();
    let spec = match (old.connector_spec.clone(), unreadable) {
        (Some(spec), _)
            if ferry_crds::spec_hash(&spec)
                == old.connector_spec_hash.clone().unwrap_or_default() =>
        {
            spec
        }
        (Some(_), _) | (None, true) => {
            // The record's spec does not match its hash (or the record is not
            // one): the run cannot be trusted to do what was admitted.
            return Ok(finish(
                subject,
                status,
                RunPhase::Failed,
                Reason::PinnedSpecTampered.as_str(),
                "the run's pinned Connector spec does not match the hash recorded when it was pinned; the run is stopped".into(),
            ));
        }
        (None, false) => match pin(subject, old, &mut status).await? {
            Some(spec) => spec,
            None => {
                return Ok(Decision::new(
                    status,
                    Action::requeue(Duration::from_secs(30)),
                ));
            }
        },
    };
    // The spec of a run is immutable: the status speaks of the generation it
    // was admitted at.
    status.observed_generation = old.observed_generation.or(run.meta().generation);
    let attribution = status.attribution.clone().unwrap_or_default();
    let subject = Subject {
        spec: &spec,
        attribution: &attribution,
        ..subject
    };
    advance(subject, status, tampered).await
}

/// Pins the Connector's spec into the run's record, before anything is made
/// from it: the pod about to be created reads it from the record, even if
/// this reconcile goes no further. `None` (and `status` saying why) when the
/// Connector does not exist: the run waits for it.
async fn pin(
    subject: Subject<'_>,
    old: &ConnectorRunStatus,
    status: &mut ConnectorRunStatus,
) -> Result<Option<ConnectorSpec>, Error> {
    let Subject {
        run,
        ctx,
        namespace,
        name,
        ..
    } = subject;
    let connector_name = &run.spec.connector_ref.name;
    let Some(connector) = dereference::connector(ctx, namespace, connector_name).await? else {
        status.phase = Some(RunPhase::Pending);
        status.reason = Some("ConnectorNotFound".into());
        status.message = Some(format!(
            "Connector {connector_name:?} does not exist in namespace {namespace}; the run waits for it"
        ));
        status.observed_generation = run.meta().generation;
        return Ok(None);
    };
    status.connector_spec_hash = Some(spec_hash(&connector.spec));
    status.connector_generation = connector.meta().generation;
    status.connector_spec = Some(connector.spec.clone());
    status.attribution = ctx
        .config
        .record_requesters
        .then(|| attribution(run, &connector))
        .filter(|a| !a.is_empty());
    // The record the run's destination must reach: the cursor as it is now.
    status.manifest_anchor = connector
        .status
        .as_ref()
        .and_then(|s| s.cursor.as_ref())
        .and_then(|c| c.anchor.clone());
    status.phase = Some(RunPhase::Pending);
    status.reason = None;
    status.message = None;
    record::write(ctx, namespace, name, None, old, status).await?;
    Ok(Some(connector.spec))
}

/// Who asked for `run`, from the annotations the chart's admission policies
/// keep (their values are the API server's own user information: a value
/// that is not its writer's name is refused at admission).
fn attribution(run: &ConnectorRun, connector: &Connector) -> Attribution {
    let annotation = |meta: &kube::api::ObjectMeta, key: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    Attribution {
        requested_by: annotation(run.meta(), CREATED_BY_ANNOTATION),
        connector_changed_by: annotation(connector.meta(), SPEC_CHANGED_BY_ANNOTATION),
    }
}

/// Writes a decision, then acts on it. The record is the commit point: once it
/// is written the decision stands, and its effects follow it at once, before
/// the status is written (a status write that fails is done again by the next
/// reconcile, which reads the record, not the status). A record write that
/// fails leaves nothing done.
#[allow(clippy::too_many_arguments)]
async fn commit(
    ctx: &Context,
    run: &ConnectorRun,
    namespace: &str,
    name: &str,
    recorded: Option<&ferry_crds::RunRecord>,
    old: &ConnectorRunStatus,
    shown: &ConnectorRunStatus,
    decision: Decision,
) -> Result<Action, Error> {
    record::write(ctx, namespace, name, recorded, old, &decision.status).await?;
    effects::perform(ctx, run, namespace, name, decision.effects).await?;
    write_if_changed(ctx, namespace, name, shown, &decision.status).await?;
    Ok(decision.action)
}

/// Someone other than the operator (the run's own runner, whose token may
/// patch the status) changed the operator's fields of the run's status: a
/// Warning Event, an audit line and a metric. The record stands, and the
/// attempt in flight, if any, is failed ([`advance`]).
fn tampering(run: &ConnectorRun, namespace: &str, name: &str) -> Vec<Effect> {
    tracing::warn!(
        namespace,
        run = name,
        "the run's status was changed by someone other than the operator"
    );
    vec![
        Effect::Denial(TAMPERED.into()),
        Effect::Audit(audit::record(
            "run.tampered",
            Outcome::Denied,
            Some(TAMPERED),
            namespace,
            &run.spec.connector_ref.name,
            name,
            None,
        )),
        Effect::Event {
            warning: true,
            reason: TAMPERED.into(),
            action: "Verify",
            note: "the run's status was changed by someone other than the operator (its runner?): the operator's record stands".into(),
        },
    ]
}

/// Reason of a run whose status someone else rewrote.
pub const TAMPERED: &str = "StatusTampered";

async fn write_if_changed(
    ctx: &Context,
    namespace: &str,
    name: &str,
    old: &ConnectorRunStatus,
    new: &ConnectorRunStatus,
) -> Result<(), Error> {
    if record::operators_part(old) != record::operators_part(new) {
        apply::write_status(ctx, namespace, name, new).await?;
    }
    Ok(())
}

/// Moves the run one step on from `status`. `tampered`: the operator's fields
/// were rewritten by someone else; an attempt in flight is failed for it.
async fn advance(
    subject: Subject<'_>,
    status: ConnectorRunStatus,
    tampered: bool,
) -> Result<Decision, Error> {
    let Subject {
        run,
        ctx,
        namespace,
        name,
        ..
    } = subject;
    let now = ctx.now();
    let attempts = status.attempts.unwrap_or(0);
    if attempts == 0
        && let Some(count) = shards::count(subject)
    {
        // Spread over shards: the shards first, then the last step.
        return match shards::advance(subject, status, count, tampered).await? {
            shards::Step::Waiting(decision) => Ok(decision),
            shards::Step::Done(status, effects) => {
                let mut decision = start_attempt(subject, status, 1).await?;
                decision.effects.splice(0..0, effects);
                Ok(decision)
            }
        };
    }
    if attempts == 0 {
        return start_attempt(subject, status, 1).await;
    }
    let pod_name = names::pod(name, attempts);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let pod = pods
        .get_opt(&pod_name)
        .await
        .map_err(|e| Error::kube(error::Step::Read, "get", "Pod", &pod_name, e))?;
    if let Some(at) = &status.next_attempt_time {
        // Backing off before the next attempt; the failed attempt's pod may
        // still be terminating and says nothing new.
        if at.0 <= now {
            return start_attempt(subject, status, attempts + 1).await;
        }
        let wait = (at.0.as_second() - now.as_second()).max(1) as u64;
        let mut decision = Decision::new(status, Action::requeue(Duration::from_secs(wait)));
        // The failed attempt's pod is deleted after the retry was written;
        // should that have failed, here again.
        if pod.is_some() {
            decision.effects.push(Effect::DeletePod(pod_name));
        }
        return Ok(decision);
    }
    if let Some(p) = &pod
        && !made_by_operator(p, status.pod_uid.as_deref())
    {
        // Ferry's pod was deleted and another made under its name: its exit
        // and whatever was reported while it ran are not the run's.
        let message = format!(
            "attempt {attempts}: pod {pod_name} is not the one the operator created (another UID): deleted, nothing it reported is believed"
        );
        let mut decision = failed(subject, status, true, FOREIGN_POD.into(), message, true);
        decision.effects.extend(pod_tampering(
            subject,
            &pod_name,
            "deleted, the attempt failed",
        ));
        return Ok(decision);
    }
    let connector = format!("{namespace}/{}", run.spec.connector_ref.name);
    let fate = attempt_fate(pod.as_ref(), &status, tampered, name, &connector, attempts);
    Ok(match fate {
        Fate::Waiting { running, message } => waiting(status, running, message, now),
        Fate::Succeeded => {
            let message = summary(run.spec.mode, status.result.as_ref());
            finish(subject, status, RunPhase::Succeeded, "Succeeded", message)
        }
        Fate::Failed {
            reason,
            message,
            retryable,
        } => failed(subject, status, pod.is_some(), reason, message, retryable),
    })
}

/// Whether `pod` is the one the operator created for the attempt, whose UID
/// it recorded as `recorded`. An attempt started by an operator from before
/// UIDs were recorded has none: its pod is taken when it carries Ferry's
/// labels, which the chart's run-identity policy leaves to the operator alone.
pub fn made_by_operator(pod: &Pod, recorded: Option<&str>) -> bool {
    match recorded {
        Some(uid) => pod.metadata.uid.as_deref() == Some(uid),
        None => pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(names::LABEL_MANAGED_BY))
            .is_some_and(|v| v == names::MANAGED_BY),
    }
}

/// The fate of attempt `attempts` (no client required), from its pod (`None`:
/// gone), the runner's result and whether the status was tampered with.
fn attempt_fate(
    pod: Option<&Pod>,
    status: &ConnectorRunStatus,
    tampered: bool,
    name: &str,
    connector: &str,
    attempts: i32,
) -> Fate {
    let pod_name = names::pod(name, attempts);
    let result = status.result.as_ref();
    match pod_fate(pod, result, tampered, &pod_name, attempts) {
        Fate::Succeeded => match record::implausible(result, name, attempts).or_else(|| {
            record::misplaced(
                result,
                name,
                connector,
                status.manifest_anchor.as_deref(),
                attempts,
            )
        }) {
            None => Fate::Succeeded,
            Some(why) => Fate::Failed {
                reason: "ImplausibleResult".into(),
                message: format!("attempt {attempts}: the runner's result was refused: {why}"),
                retryable: true,
            },
        },
        other => other,
    }
}

/// The fate of the pod `pod_name` of attempt `attempts` (of the run or of a
/// shard), from the pod (`None`: gone), the result its runner reported and
/// whether the status was tampered with.
fn pod_fate(
    pod: Option<&Pod>,
    result: Option<&ferry_crds::RunResult>,
    tampered: bool,
    pod_name: &str,
    attempts: i32,
) -> Fate {
    match pod {
        None => Fate::Failed {
            reason: "PodDeleted".into(),
            message: format!("pod {pod_name} disappeared before the run ended"),
            retryable: true,
        },
        Some(_) if tampered => Fate::Failed {
            reason: TAMPERED.into(),
            message: format!(
                "attempt {attempts}: the run's status was changed by someone other than the operator"
            ),
            retryable: true,
        },
        Some(pod) => fate::fate(pod, result, attempts),
    }
}

/// An attempt still under way: Running once its pod runs, else Pending with
/// what the pod waits for.
fn waiting(
    mut status: ConnectorRunStatus,
    running: bool,
    message: Option<String>,
    now: Timestamp,
) -> Decision {
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
    Decision::new(status, Action::requeue(RESYNC))
}

/// A failed attempt: another one after a backoff when the failure is
/// retryable and the backoff limit allows, else the end of the run.
fn failed(
    subject: Subject<'_>,
    mut status: ConnectorRunStatus,
    pod_exists: bool,
    reason: String,
    message: String,
    retryable: bool,
) -> Decision {
    let now = subject.ctx.now();
    let attempts = status.attempts.unwrap_or(0);
    let backoff_limit = subject.spec.run.backoff_limit;
    if retryable && attempts <= backoff_limit {
        let wait = fate::backoff_seconds(attempts);
        let at = Timestamp::from_second(now.as_second() + wait).unwrap_or(now);
        status.phase = Some(RunPhase::Pending);
        status.reason = Some(reason);
        status.message = Some(format!(
            "attempt {attempts} of {} failed: {message}; retrying in {wait}s",
            backoff_limit + 1
        ));
        status.next_attempt_time = Some(Time(at));
        let note = status.message.clone().unwrap_or_default();
        let mut decision = Decision::new(status, Action::requeue(Duration::from_secs(wait as u64)));
        decision.effects.push(Effect::Event {
            warning: true,
            reason: "AttemptFailed".into(),
            action: "Retry",
            note,
        });
        if pod_exists {
            decision
                .effects
                .push(Effect::DeletePod(names::pod(subject.name, attempts)));
        }
        return decision;
    }
    let message = if retryable {
        format!("{message} (after {attempts} attempts)")
    } else {
        message
    };
    let mut decision = finish(subject, status, RunPhase::Failed, &reason, message);
    if reason == Reason::IntegrityFailure.as_str() {
        decision.effects.push(Effect::IntegrityFailure);
    }
    if contract::policy_refusal(&reason) {
        // Refused by the runner (what only it can see: where a bucket
        // really is, an object's stream, a file that cannot be minimised).
        decision.effects.push(Effect::Denial(reason));
    }
    decision
}

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
        RunMode::Erase => match &r.erase_incomplete {
            None => format!("erased {} objects", r.objects_erased),
            Some(left) => format!("erased {} objects, but {left}", r.objects_erased),
        },
    }
}

/// Starts attempt `attempt`: `dereference -> validate -> build -> apply`, then
/// the status that says so. Creation is idempotent: an object this run already
/// made is kept, so an attempt whose status write failed is started again
/// without a second pod. After shards, the attempt is the run's last step.
async fn start_attempt(
    subject: Subject<'_>,
    status: ConnectorRunStatus,
    attempt: i32,
) -> Result<Decision, Error> {
    let part = match status.shard_statuses.len() {
        0 => build::Part::Whole,
        n => build::Part::Commit { count: n as i32 },
    };
    match launch(subject, &status, &[(part, attempt)]).await? {
        Launched::Started { warnings, pod_uids } => {
            let mut status = status;
            status.pod_uid = pod_uids.into_iter().next();
            Ok(started(subject, status, attempt, &warnings))
        }
        Launched::Rejected(violations) => Ok(reject(subject, status, &violations)),
        Launched::Foreign(pod) => Ok(foreign_pod(subject, status, &pod)),
    }
}

/// What [`launch`] did.
enum Launched {
    /// The pods exist (with the run's identity), with the policy's warnings
    /// and the UIDs of the pods, in the order they were asked for.
    Started {
        warnings: Vec<Warning>,
        pod_uids: Vec<String>,
    },
    /// The policy refused the run: nothing was created.
    Rejected(Vec<Violation>),
    /// A pod of the attempt's name claimed to be the run's and was not the
    /// operator's: deleted; the attempt starts again once it is gone.
    Foreign(String),
}

/// How long after deleting a pod someone else made under an attempt's name
/// the operator tries to create the attempt's own.
const FOREIGN_POD_RETRY: Duration = Duration::from_secs(5);

/// A pod someone else made under the name of the attempt about to start
/// (owner reference and labels copied from the run) was found and deleted:
/// nothing of it is believed; the status stands, the attempt starts when the
/// name is free; audited and said as tampering.
fn foreign_pod(subject: Subject<'_>, status: ConnectorRunStatus, pod: &str) -> Decision {
    let mut decision = Decision::new(status, Action::requeue(FOREIGN_POD_RETRY));
    decision.effects = pod_tampering(subject, pod, "deleted before the attempt started");
    decision
}

/// Reason of a pod that claimed to be a run's and was not the operator's.
pub const FOREIGN_POD: &str = "ForeignPod";

/// The Warning Event, audit line and denial metric of a pod that passed for
/// one of the run's and was not made by the operator.
fn pod_tampering(subject: Subject<'_>, pod: &str, what: &str) -> Vec<Effect> {
    tracing::warn!(
        namespace = subject.namespace,
        run = subject.name,
        pod,
        "a pod that the operator did not create passed for the run's"
    );
    vec![
        Effect::Denial(FOREIGN_POD.into()),
        Effect::Audit(subject.record("run.tampered", Outcome::Denied, Some(FOREIGN_POD))),
        Effect::Event {
            warning: true,
            reason: FOREIGN_POD.into(),
            action: "Verify",
            note: format!(
                "pod {pod} claims to be this run's but the operator did not create it: {what}; nothing it reports is believed"
            ),
        },
    ]
}

/// Creates the pods `pods` (which part of the run, which attempt) and the
/// run's identity: `dereference -> validate -> build -> apply`.
async fn launch(
    subject: Subject<'_>,
    status: &ConnectorRunStatus,
    pods: &[(build::Part, i32)],
) -> Result<Launched, Error> {
    let Subject {
        run,
        ctx,
        namespace,
        spec,
        ..
    } = subject;
    // dereference
    let tenant = dereference::tenant(ctx, namespace);
    let secrets = dereference::secret_keys(ctx, namespace, spec).await?;
    let discovered;
    let config = if ctx.config.network.api_server_cidrs.is_empty() {
        let mut c = ctx.config.clone();
        c.network.api_server_cidrs = dereference::api_server_cidrs(ctx).await?;
        discovered = c;
        &discovered
    } else {
        &ctx.config
    };
    let mut objects = Vec::with_capacity(pods.len());
    let mut warnings = Vec::new();
    for &(part, attempt) in pods {
        // validate
        let input = build::RunInput {
            run,
            spec,
            manifest_anchor: status.manifest_anchor.as_deref(),
            attempt,
            part,
            tenant_region: tenant.region.as_deref(),
            config,
        };
        match validate::validate(input, &tenant, &secrets)? {
            Validation::Valid { run, warnings: w } => {
                objects.push(run.objects());
                warnings = w;
            }
            Validation::Rejected(violations) => return Ok(Launched::Rejected(violations)),
        }
    }
    // build, apply
    let mut pod_uids = Vec::with_capacity(objects.len());
    for o in &objects {
        match apply::apply(ctx, namespace, o).await {
            Ok(uid) => pod_uids.push(uid),
            Err(Error::ForeignPod { name }) => return Ok(Launched::Foreign(name)),
            Err(e) => return Err(e),
        }
    }
    Ok(Launched::Started { warnings, pod_uids })
}

/// The run breaks `violations`: it ends Rejected, each violation denied and
/// audited.
fn reject(subject: Subject<'_>, status: ConnectorRunStatus, violations: &[Violation]) -> Decision {
    let reason = violations[0].reason;
    let message = violations
        .iter()
        .map(|v| v.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let mut decision = finish(subject, status, RunPhase::Rejected, reason, message);
    for v in violations {
        decision.effects.push(Effect::Denial(v.reason.into()));
        decision.effects.push(Effect::Audit(subject.record(
            "run.rejected",
            Outcome::Denied,
            Some(v.reason),
        )));
    }
    decision
}

/// The status of a run whose attempt `attempt` was just created, and the
/// Events and audit line that say so.
fn started(
    subject: Subject<'_>,
    mut status: ConnectorRunStatus,
    attempt: i32,
    warnings: &[Warning],
) -> Decision {
    let pod_name = names::pod(subject.name, attempt);
    // After shards, the run started with them and is under way.
    let sharded = !status.shard_statuses.is_empty();
    if !sharded {
        status.phase = Some(RunPhase::Pending);
    }
    status.attempts = Some(attempt);
    status.pod_name = Some(pod_name.clone());
    status.next_attempt_time = None;
    if attempt == 1 {
        status.reason = None;
        status.message = None;
    }
    let note = if sharded {
        format!(
            "attempt {attempt}: created pod {pod_name}, which writes the run's manifest from its shards' parts"
        )
    } else {
        format!("attempt {attempt}: created pod {pod_name}")
    };
    let mut decision = Decision::new(status, Action::requeue(RESYNC));
    if sharded {
        decision.effects.push(Effect::Event {
            warning: false,
            reason: "Started".into(),
            action: "CreatePod",
            note,
        });
        return decision;
    }
    if attempt == 1 {
        for w in warnings {
            decision.effects.push(Effect::Event {
                warning: true,
                reason: w.reason.into(),
                action: "Validate",
                note: w.message.clone(),
            });
        }
    }
    decision.effects.push(Effect::Audit(subject.record(
        "run.started",
        Outcome::Success,
        (attempt > 1).then_some("Retry"),
    )));
    decision.effects.push(Effect::Event {
        warning: false,
        reason: "Started".into(),
        action: "CreatePod",
        note,
    });
    decision
}

/// Ends the run: final phase and conditions (no client required); the metrics,
/// Event, audit line and cleanup are effects, done once the end is written.
fn finish(
    subject: Subject<'_>,
    mut status: ConnectorRunStatus,
    phase: RunPhase,
    reason: &str,
    message: String,
) -> Decision {
    let Subject { run, ctx, name, .. } = subject;
    let now = ctx.now();
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
    end_conditions(
        &mut status,
        phase,
        reason,
        &message,
        run.meta().generation,
        now,
    );
    tracing::info!(namespace = subject.namespace, run = name, connector = run.spec.connector_ref.name, phase = ?phase, reason, "run ends");
    let effects = end_effects(subject, &status, phase, reason, message, seconds);
    Decision {
        status,
        action: Action::await_change(),
        effects,
    }
}

/// The conditions of an ended run: Complete or Failed, and PolicyViolation
/// when a rule refused it.
fn end_conditions(
    status: &mut ConnectorRunStatus,
    phase: RunPhase,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let (complete, failed, violation) = match phase {
        RunPhase::Succeeded => (true, false, false),
        RunPhase::Rejected => (false, true, true),
        _ => (false, true, contract::policy_refusal(reason)),
    };
    for (kind, on) in [("Complete", complete), ("Failed", failed)] {
        conditions::set(
            &mut status.conditions,
            kind,
            on,
            reason,
            message,
            generation,
            now,
        );
    }
    if violation {
        conditions::set(
            &mut status.conditions,
            "PolicyViolation",
            true,
            reason,
            message,
            generation,
            now,
        );
    }
}

/// What follows the end of a run, once: the counters, the audit line (a
/// rejection is audited per violation instead), the Event and the cleanup.
fn end_effects(
    subject: Subject<'_>,
    status: &ConnectorRunStatus,
    phase: RunPhase,
    reason: &str,
    message: String,
    seconds: i64,
) -> Vec<Effect> {
    let mut effects = vec![Effect::Ended {
        phase,
        seconds,
        result: status.result.clone(),
    }];
    if phase != RunPhase::Rejected {
        let outcome = if phase == RunPhase::Succeeded {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        effects.push(Effect::Audit(subject.record(
            "run.finished",
            outcome,
            Some(reason),
        )));
    }
    effects.push(Effect::Event {
        warning: phase != RunPhase::Succeeded,
        reason: reason.into(),
        action: "Finish",
        note: message,
    });
    effects.push(Effect::cleanup(status));
    effects
}

/// What to do after a failed reconcile: an invalid object waits for a change, a
/// transient failure is retried with backoff.
pub fn error_policy(run: Arc<ConnectorRun>, error: &Error, _ctx: Arc<Context>) -> Action {
    error.policy(CONTROLLER, &run.name_any())
}

/// [`error_policy`], as the controller calls it.
pub fn error_policy_guarded(
    run: Arc<DeserializeGuard<ConnectorRun>>,
    error: &Error,
    _ctx: Arc<Context>,
) -> Action {
    error.policy(CONTROLLER, &run.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, managed: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        if managed {
            p.metadata.labels = Some(
                [(
                    names::LABEL_MANAGED_BY.to_string(),
                    names::MANAGED_BY.to_string(),
                )]
                .into(),
            );
        }
        p
    }

    /// The pod judged is the one the operator created: another under its
    /// name (Ferry's labels copied or not) is not; an attempt from before
    /// UIDs were recorded takes the pod the run-identity policy leaves to the
    /// operator (Ferry's labels).
    #[test]
    fn only_the_pod_the_operator_created_stands_for_the_attempt() {
        assert!(made_by_operator(&pod("u1", true), Some("u1")));
        assert!(!made_by_operator(&pod("u2", true), Some("u1")));
        assert!(!made_by_operator(&pod("u2", false), Some("u1")));
        assert!(made_by_operator(&pod("u1", true), None));
        assert!(!made_by_operator(&pod("u1", false), None));
    }
}
