//! A sync run spread over shard pods (`spec.run.parallelism`), until every
//! shard has succeeded; then the run goes on as any other, its attempt being
//! the last step, which writes the manifest from the shards' parts.
//!
//! - Every shard is a pod of its own with the run's identity (one
//!   ServiceAccount, Role, RoleBinding and NetworkPolicy for all of them),
//!   named `<run>-<attempt>-s<shard>`, labelled `ferry.dev/shard`.
//! - Each shard has its own attempts, backoff and `backoffLimit`: a shard that
//!   fails is retried alone, the others keep what they did.
//! - A shard that fails for good (not retryable, or out of attempts) fails
//!   the run; the cleanup deletes every pod of every shard.
//! - What a shard's runner reports is in `status.shardReports[<index>]`; what
//!   the operator decided in `status.shardStatuses`, in its record like the
//!   rest of its fields.

use std::time::Duration;

use ferry_crds::{ConnectorRunStatus, RunMode, RunPhase, ShardStatus};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::runtime::controller::Action;

use super::effects::Effect;
use super::fate::{self, Fate};
use super::{Decision, Launched, RESYNC, Subject, build, launch, pod_fate, reject};
use crate::audit::Outcome;
use crate::error::{self, Error};
use crate::names;

/// Where the shards of a run stand.
pub(super) enum Step {
    /// Not all have succeeded: this is what to write and do.
    Waiting(Decision),
    /// All have: the run's last step comes next, after these effects.
    Done(ConnectorRunStatus, Vec<Effect>),
}

/// How many shards the run is spread over; `None` for a run in one pod (a
/// `parallelism` of 1, or a plan or erase run).
pub(super) fn count(subject: Subject<'_>) -> Option<i32> {
    let n = subject.spec.run.parallelism;
    (n > 1 && subject.run.spec.mode == RunMode::Sync).then_some(n)
}

/// Moves the shards of a run one step on.
pub(super) async fn advance(
    subject: Subject<'_>,
    mut status: ConnectorRunStatus,
    count: i32,
    tampered: bool,
) -> Result<Step, Error> {
    if status.shard_statuses.is_empty() {
        return start(subject, status, count).await.map(Step::Waiting);
    }
    let now = subject.ctx.now();
    let mut effects = Vec::new();
    let mut wake = RESYNC;
    let mut due = Vec::new();
    let mut end = None;
    for i in 0..status.shard_statuses.len() {
        let shard = &status.shard_statuses[i];
        if shard.phase == Some(RunPhase::Succeeded) {
            continue;
        }
        if let Some(at) = &shard.next_attempt_time {
            if at.0 <= now {
                due.push(i);
            } else {
                wake = wake.min(Duration::from_secs(
                    (at.0.as_second() - now.as_second()).max(1) as u64,
                ));
            }
            continue;
        }
        let pod = shard_pod(subject, shard).await?;
        if let Some(p) = &pod
            && !super::made_by_operator(p, shard.pod_uid.as_deref())
        {
            let pod_name = pod_name(subject, shard);
            effects.extend(super::pod_tampering(
                subject,
                &pod_name,
                "deleted, the shard's attempt failed",
            ));
            let fate = Fate::Failed {
                reason: super::FOREIGN_POD.into(),
                message: format!(
                    "attempt {}: pod {pod_name} is not the one the operator created (another UID): deleted, nothing it reported is believed",
                    shard.attempts
                ),
                retryable: true,
            };
            let shard = &mut status.shard_statuses[i];
            if let Some(failure) = judge(subject, shard, fate, true, now, &mut effects) {
                end = Some(failure);
                break;
            }
            if let Some(at) = &shard.next_attempt_time {
                let wait = (at.0.as_second() - now.as_second()).max(1) as u64;
                wake = wake.min(Duration::from_secs(wait));
            }
            continue;
        }
        let fate = {
            let result = status
                .shard_reports
                .get(&shard.index.to_string())
                .and_then(|r| r.result.as_ref());
            let pod_name = pod_name(subject, shard);
            pod_fate(pod.as_ref(), result, tampered, &pod_name, shard.attempts)
        };
        let shard = &mut status.shard_statuses[i];
        if let Some(failure) = judge(subject, shard, fate, pod.is_some(), now, &mut effects) {
            end = Some(failure);
            break;
        }
        if let Some(at) = &shard.next_attempt_time {
            let wait = (at.0.as_second() - now.as_second()).max(1) as u64;
            wake = wake.min(Duration::from_secs(wait));
        }
    }
    if let Some((reason, message)) = end {
        let mut decision = super::failed(subject, status, false, reason, message, false);
        decision.effects.splice(0..0, effects);
        return Ok(Step::Waiting(decision));
    }
    if !due.is_empty() {
        match retry(subject, &mut status, count, &due, &mut effects).await? {
            Some(violations) => return Ok(Step::Waiting(reject(subject, status, &violations))),
            None => wake = RESYNC,
        }
    }
    summarise(&mut status, count, now);
    if status
        .shard_statuses
        .iter()
        .all(|s| s.phase == Some(RunPhase::Succeeded))
    {
        return Ok(Step::Done(status, effects));
    }
    let mut decision = Decision::new(status, Action::requeue(wake));
    decision.effects = effects;
    Ok(Step::Waiting(decision))
}

/// The pod of a shard's current attempt.
fn pod_name(subject: Subject<'_>, shard: &ShardStatus) -> String {
    names::shard_pod(subject.name, shard.index, shard.attempts)
}

async fn shard_pod(subject: Subject<'_>, shard: &ShardStatus) -> Result<Option<Pod>, Error> {
    let name = pod_name(subject, shard);
    let pods: Api<Pod> = Api::namespaced(subject.ctx.client.clone(), subject.namespace);
    pods.get_opt(&name)
        .await
        .map_err(|e| Error::kube(error::Step::Read, "get", "Pod", &name, e))
}

/// Takes the fate of a shard's attempt into its status; the reason and
/// message that end the run when the shard failed for good.
fn judge(
    subject: Subject<'_>,
    shard: &mut ShardStatus,
    fate: Fate,
    pod_exists: bool,
    now: Timestamp,
    effects: &mut Vec<Effect>,
) -> Option<(String, String)> {
    let index = shard.index;
    match fate {
        Fate::Waiting { running, message } => {
            shard.phase = Some(if running {
                RunPhase::Running
            } else {
                RunPhase::Pending
            });
            shard.reason = message.as_ref().map(|_| "PodPending".to_string());
            shard.message = message;
            None
        }
        Fate::Succeeded => {
            shard.phase = Some(RunPhase::Succeeded);
            shard.reason = None;
            shard.message = None;
            effects.push(Effect::ShardAttempt { succeeded: true });
            None
        }
        Fate::Failed {
            reason,
            message,
            retryable,
        } => {
            effects.push(Effect::ShardAttempt { succeeded: false });
            let attempts = shard.attempts;
            let limit = subject.spec.run.backoff_limit;
            if !(retryable && attempts <= limit) {
                let after = if retryable {
                    format!(" (after {attempts} attempts)")
                } else {
                    String::new()
                };
                shard.phase = Some(RunPhase::Failed);
                return Some((reason, format!("shard {index}: {message}{after}")));
            }
            let wait = fate::backoff_seconds(attempts);
            let at = Timestamp::from_second(now.as_second() + wait).unwrap_or(now);
            let note = format!(
                "shard {index}: attempt {attempts} of {} failed: {message}; retrying in {wait}s",
                limit + 1
            );
            shard.phase = Some(RunPhase::Pending);
            shard.reason = Some(reason);
            shard.message = Some(crate::context::truncate(note.clone(), 1024));
            shard.next_attempt_time = Some(Time(at));
            effects.push(Effect::Event {
                warning: true,
                reason: "ShardAttemptFailed".into(),
                action: "Retry",
                note,
            });
            if pod_exists {
                effects.push(Effect::DeletePod(pod_name(subject, shard)));
            }
            None
        }
    }
}

/// Creates the pods of every shard's first attempt, and the run's identity.
async fn start(
    subject: Subject<'_>,
    mut status: ConnectorRunStatus,
    count: i32,
) -> Result<Decision, Error> {
    let pods: Vec<_> = (0..count)
        .map(|index| (build::Part::Shard { index, count }, 1))
        .collect();
    let (warnings, pod_uids) = match launch(subject, &status, &pods).await? {
        Launched::Started { warnings, pod_uids } => (warnings, pod_uids),
        Launched::Rejected(violations) => return Ok(reject(subject, status, &violations)),
        Launched::Foreign(pod) => return Ok(super::foreign_pod(subject, status, &pod)),
    };
    status.shard_statuses = (0..count)
        .zip(pod_uids)
        .map(|(index, uid)| ShardStatus {
            index,
            phase: Some(RunPhase::Pending),
            attempts: 1,
            pod_name: Some(names::shard_pod(subject.name, index, 1)),
            pod_uid: Some(uid),
            ..ShardStatus::default()
        })
        .collect();
    status.shards = Some(format!("0/{count}"));
    status.phase = Some(RunPhase::Pending);
    status.reason = None;
    status.message = None;
    let mut decision = Decision::new(status, Action::requeue(RESYNC));
    for w in warnings {
        decision.effects.push(Effect::Event {
            warning: true,
            reason: w.reason.into(),
            action: "Validate",
            note: w.message,
        });
    }
    decision.effects.push(Effect::Audit(subject.record(
        "run.started",
        Outcome::Success,
        None,
    )));
    decision.effects.push(Effect::Event {
        warning: false,
        reason: "Started".into(),
        action: "CreatePod",
        note: format!(
            "created {count} shard pods, {}-1-s0 to {}-1-s{}",
            subject.name,
            subject.name,
            count - 1
        ),
    });
    Ok(decision)
}

/// Starts the next attempt of the shards `due` (indexes into
/// `shard_statuses`); the violations when the policy now refuses the run.
async fn retry(
    subject: Subject<'_>,
    status: &mut ConnectorRunStatus,
    count: i32,
    due: &[usize],
    effects: &mut Vec<Effect>,
) -> Result<Option<Vec<crate::policy::Violation>>, Error> {
    let pods: Vec<_> = due
        .iter()
        .map(|&i| {
            let s = &status.shard_statuses[i];
            (
                build::Part::Shard {
                    index: s.index,
                    count,
                },
                s.attempts + 1,
            )
        })
        .collect();
    let pod_uids = match launch(subject, status, &pods).await? {
        Launched::Started { pod_uids, .. } => pod_uids,
        Launched::Rejected(violations) => return Ok(Some(violations)),
        Launched::Foreign(pod) => {
            // Deleted; these shards start when the name is free again.
            effects.extend(super::pod_tampering(
                subject,
                &pod,
                "deleted before the attempt started",
            ));
            return Ok(None);
        }
    };
    for (&i, uid) in due.iter().zip(pod_uids) {
        let shard = &mut status.shard_statuses[i];
        shard.pod_uid = Some(uid);
        shard.attempts += 1;
        shard.next_attempt_time = None;
        shard.phase = Some(RunPhase::Pending);
        let name = pod_name(subject, shard);
        shard.pod_name = Some(name.clone());
        effects.push(Effect::Audit(subject.record(
            "run.started",
            Outcome::Success,
            Some("ShardRetry"),
        )));
        effects.push(Effect::Event {
            warning: false,
            reason: "Started".into(),
            action: "CreatePod",
            note: format!(
                "shard {}: attempt {}: created pod {name}",
                shard.index, shard.attempts
            ),
        });
    }
    Ok(None)
}

/// The run's phase, `shards`, reason and message from its shards'.
fn summarise(status: &mut ConnectorRunStatus, count: i32, now: Timestamp) {
    let shards = &status.shard_statuses;
    let succeeded = shards
        .iter()
        .filter(|s| s.phase == Some(RunPhase::Succeeded))
        .count();
    status.shards = Some(format!("{succeeded}/{count}"));
    let retrying = shards.iter().find(|s| s.next_attempt_time.is_some());
    status.reason = retrying.and_then(|s| s.reason.clone());
    status.message = retrying.and_then(|s| s.message.clone());
    if shards
        .iter()
        .any(|s| matches!(s.phase, Some(RunPhase::Running) | Some(RunPhase::Succeeded)))
    {
        status.phase = Some(RunPhase::Running);
        if status.start_time.is_none() {
            status.start_time = Some(Time(now));
        }
    }
}
