//! The operator's finalizer on every run it admits: deleting a run erases part
//! of the history (its status, result and record), so the deletion waits until
//! the operator has written an audit line about it. The chart's attribution
//! policy lets nobody but the operator remove the finalizer, so a run cannot
//! be deleted unseen by taking it off first.
//!
//! Both writes are merge patches that carry the resourceVersion they were
//! computed from: a list changed meanwhile (another finalizer added) makes the
//! write fail with a conflict and the reconcile is tried again, instead of
//! dropping someone else's finalizer.

use ferry_crds::{ConnectorRun, RUN_FINALIZER};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use crate::config::FIELD_MANAGER;
use crate::context::Context;
use crate::error::{Error, Step};

/// Whether `run` carries the operator's finalizer.
pub fn holds(run: &ConnectorRun) -> bool {
    run.finalizers().iter().any(|f| f == RUN_FINALIZER)
}

/// Adds the finalizer, unless it is there.
pub async fn ensure(ctx: &Context, run: &ConnectorRun) -> Result<(), Error> {
    if holds(run) {
        return Ok(());
    }
    let mut list = run.finalizers().to_vec();
    list.push(RUN_FINALIZER.to_string());
    write(ctx, run, list, "add finalizer").await
}

/// Removes the finalizer: the API server then completes the deletion.
pub async fn release(ctx: &Context, run: &ConnectorRun) -> Result<(), Error> {
    if !holds(run) {
        return Ok(());
    }
    let list: Vec<String> = run
        .finalizers()
        .iter()
        .filter(|f| *f != RUN_FINALIZER)
        .cloned()
        .collect();
    write(ctx, run, list, "release finalizer").await
}

async fn write(
    ctx: &Context,
    run: &ConnectorRun,
    list: Vec<String>,
    verb: &'static str,
) -> Result<(), Error> {
    let name = run.name_any();
    let api: Api<ConnectorRun> = Api::namespaced(
        ctx.client.clone(),
        run.meta().namespace.as_deref().unwrap_or_default(),
    );
    let patch = serde_json::json!({"metadata": {
        "finalizers": list,
        "resourceVersion": run.meta().resource_version,
    }});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch(&name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(Step::Record, verb, "ConnectorRun", &name, e))?;
    Ok(())
}
