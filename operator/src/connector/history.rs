//! The runs of each Connector, read from the shared cache of the runs (one
//! watch per scope, which also drives the run controller) rather than listed on
//! every reconcile. The Connector controller is woken by that same watch, after
//! the cache took in the change, so it never reads runs older than its trigger.
//!
//! The cache may still lag the API (a run this reconcile created is not in it
//! yet). Every decision taken from it is safe to take again: a scheduled run's
//! name is derived from its scheduled time, so creating it twice finds it
//! existing; deleting a run already gone finds it gone.

use std::sync::Arc;

use ferry_crds::{ConnectorRun, ConnectorRunStatus, RunPhase, RunRecord};
use jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};

/// Every ConnectorRun the operator watches, as its run controller caches them.
#[derive(Clone, Default)]
pub struct RunIndex {
    stores: Vec<Store<DeserializeGuard<ConnectorRun>>>,
}

impl RunIndex {
    /// The index over the run controllers' stores, one per watched scope.
    pub fn new(stores: Vec<Store<DeserializeGuard<ConnectorRun>>>) -> Self {
        Self { stores }
    }

    /// Every cached run, readable or not.
    pub fn all(&self) -> Vec<Arc<DeserializeGuard<ConnectorRun>>> {
        self.stores.iter().flat_map(|s| s.state()).collect()
    }

    /// The readable runs of the Connector `connector` in `namespace`
    /// (scheduled or created by hand), newest first. A run that cannot be read
    /// (written by a newer version, or hand-edited) is left out: the run
    /// controller reports it.
    pub fn of_connector(&self, namespace: &str, connector: &str) -> Vec<ConnectorRun> {
        let mut runs: Vec<ConnectorRun> = self
            .all()
            .iter()
            .filter_map(|r| r.0.as_ref().ok())
            .filter(|r| {
                r.namespace().as_deref() == Some(namespace)
                    && r.spec.connector_ref.name == connector
            })
            .cloned()
            .collect();
        runs.sort_by_key(|r| std::cmp::Reverse(sort_key(r)));
        runs
    }
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
