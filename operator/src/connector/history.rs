//! The runs of each Connector, read from the API on each reconcile, and what
//! the operator recorded of each.
//!
//! (They are listed, not read from the run controller's cache: kube-runtime
//! wakes only the last task waiting for a cache to be filled, and the run
//! controller waits on its own, so a second waiter can hold that controller
//! back; a shared watch needs an API kube marks unstable.)

use ferry_crds::{ConnectorRun, ConnectorRunStatus, RunPhase, RunRecord};
use jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::{Resource, ResourceExt};

use crate::context::Context;
use crate::error::{Error, Step};

/// The readable runs of the Connector `connector` in `namespace` (scheduled or
/// created by hand), newest first. A run that cannot be read (written by a
/// newer version, or hand-edited) is left out: the run controller reports it.
pub async fn runs_of(
    ctx: &Context,
    namespace: &str,
    connector: &str,
) -> Result<Vec<ConnectorRun>, Error> {
    let api: Api<DeserializeGuard<ConnectorRun>> = Api::namespaced(ctx.client.clone(), namespace);
    let mut runs: Vec<ConnectorRun> = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube(Step::Read, "list", "ConnectorRun", namespace, e))?
        .items
        .into_iter()
        .filter_map(|r| r.0.ok())
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
