//! The runs of each Connector, read from the controller's cache of them, and
//! what the operator recorded of each.

use ferry_crds::{ConnectorRun, ConnectorRunStatus, RunPhase, RunRecord};
use jiff::Timestamp;
use kube::{Resource, ResourceExt};

use crate::context::Context;
use crate::error::Error;

/// The readable runs of the Connector `connector` in `namespace` (scheduled or
/// created by hand), newest first, as the cache holds them: a reconcile woken
/// by a run's change sees that change. A run that cannot be read (written by a
/// newer version, or hand-edited) is left out: the run controller reports it.
pub async fn runs_of(
    ctx: &Context,
    namespace: &str,
    connector: &str,
) -> Result<Vec<ConnectorRun>, Error> {
    let mut runs: Vec<ConnectorRun> = ctx
        .runs
        .runs_in(namespace)
        .await?
        .into_iter()
        .filter(|r| r.spec.connector_ref.name == connector)
        .collect();
    runs.sort_by_key(|r| std::cmp::Reverse(sort_key(r)));
    Ok(runs)
}

fn sort_key(run: &ConnectorRun) -> (Timestamp, String) {
    let t = run
        .meta()
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    (t, run.name_any())
}

/// The operator's record of a run's status; a run from before records counts
/// by its status. Never the status alone: the run's own identity may write it.
pub fn recorded(run: &ConnectorRun) -> Option<ConnectorRunStatus> {
    match RunRecord::of(run) {
        Ok(Some(r)) => Some(r.status),
        Ok(None) => run.status.clone(),
        Err(_) => None,
    }
}

/// A run's phase as the operator recorded it.
pub fn phase(run: &ConnectorRun) -> Option<RunPhase> {
    recorded(run).and_then(|s| s.phase)
}

/// Whether a run has not ended and is not being deleted.
pub fn is_active(run: &ConnectorRun) -> bool {
    !phase(run).is_some_and(RunPhase::is_terminal) && run.meta().deletion_timestamp.is_none()
}

/// A run of the Connector `sales` in `acme`, with the phase its status shows.
#[cfg(test)]
pub(crate) fn test_run(name: &str, phase: Option<RunPhase>) -> ConnectorRun {
    let mut r: ConnectorRun = serde_json::from_value(serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "ConnectorRun",
        "metadata": {"name": name, "namespace": "acme"},
        "spec": {"connectorRef": {"name": "sales"}},
    }))
    .expect("run");
    r.status = Some(ConnectorRunStatus {
        phase,
        ..Default::default()
    });
    r
}
