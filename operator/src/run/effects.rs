//! What a reconcile does once the run's record is written: Events, audit
//! lines, metrics and cleanup. A decision's effects follow the record write
//! that made it, so a write that fails leaves nothing done twice: the next
//! reconcile decides again from the record, and does the effects then. A crash
//! between the record write and its effects loses those effects (an Event, a
//! count), never repeats them; cleanup is idempotent and repeated for every run
//! that has ended.

use ferry_crds::ConnectorRunStatus;
use ferry_crds::{ConnectorRun, RunPhase, RunResult};

use crate::audit::Record;
use crate::context::Context;
use crate::error::Error;
use crate::run::apply;

/// One thing to do after the write.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A Kubernetes Event on the run.
    Event {
        warning: bool,
        reason: String,
        action: &'static str,
        note: String,
    },
    /// An audit line.
    Audit(Record),
    /// `ferry_policy_denials_total{reason}`.
    Denial(String),
    /// `ferry_integrity_failures_total` of the run's Connector.
    IntegrityFailure,
    /// The end of a run: `ferry_runs_total`, duration, bytes and objects.
    Ended {
        phase: RunPhase,
        seconds: i64,
        result: Option<RunResult>,
    },
    /// Delete the pod of a failed attempt.
    DeletePod(String),
    /// `ferry_shard_attempts_total`: an attempt of a shard ended.
    ShardAttempt { succeeded: bool },
    /// Delete the run's pods and identity objects: the pods of `attempts`
    /// attempts, and of each shard, as many as its attempts.
    Cleanup {
        attempts: i32,
        shard_attempts: Vec<i32>,
    },
}

/// Does `effects`, in order. Events are best effort (the recorder logs its
/// failures); a deletion that fails is an error, retried by the next reconcile.
pub async fn perform(
    ctx: &Context,
    run: &ConnectorRun,
    namespace: &str,
    name: &str,
    effects: Vec<Effect>,
) -> Result<(), Error> {
    let connector = run.spec.connector_ref.name.as_str();
    let m = &ctx.metrics;
    for effect in effects {
        match effect {
            Effect::Event {
                warning,
                reason,
                action,
                note,
            } => {
                ctx.event(&super::reference(run), warning, &reason, action, note)
                    .await;
            }
            Effect::Audit(record) => ctx.audit(&record),
            Effect::Denial(reason) => {
                m.policy_denials_total.with_label_values(&[&reason]).inc();
            }
            Effect::IntegrityFailure => {
                m.integrity_failures_total
                    .with_label_values(&[namespace, connector])
                    .inc();
            }
            Effect::Ended {
                phase,
                seconds,
                result,
            } => {
                let label = match phase {
                    RunPhase::Succeeded => "succeeded",
                    RunPhase::Rejected => "rejected",
                    _ => "failed",
                };
                m.runs_total
                    .with_label_values(&[namespace, connector, label])
                    .inc();
                if phase != RunPhase::Rejected {
                    m.run_duration_seconds
                        .with_label_values(&[namespace, connector])
                        .observe(seconds.max(0) as f64);
                }
                if let Some(r) = result {
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
            }
            Effect::DeletePod(pod) => apply::delete_pod(ctx, namespace, &pod).await?,
            Effect::ShardAttempt { succeeded } => {
                let label = if succeeded { "succeeded" } else { "failed" };
                m.shard_attempts_total
                    .with_label_values(&[namespace, connector, label])
                    .inc();
            }
            Effect::Cleanup {
                attempts,
                shard_attempts,
            } => apply::cleanup(ctx, namespace, name, attempts, &shard_attempts).await?,
        }
    }
    Ok(())
}

impl Effect {
    /// The cleanup of a run whose status is `status`: every pod it may have.
    pub fn cleanup(status: &ConnectorRunStatus) -> Self {
        Effect::Cleanup {
            attempts: status.attempts.unwrap_or(0),
            shard_attempts: status.shard_statuses.iter().map(|s| s.attempts).collect(),
        }
    }
}
