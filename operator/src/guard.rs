//! Objects that cannot be read. Both controllers watch through kube's
//! `DeserializeGuard`: a Connector or ConnectorRun written by a newer version of
//! Ferry, or with a hand-edited status, is reported and left alone, and never
//! stalls the watch (and with it every other object).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::error_boundary::InvalidObject;

use crate::context::Context;

/// Logs an object that cannot be read, puts a Warning Event on it and counts
/// the reconcile as failed with category `invalid`.
pub async fn report_invalid(
    ctx: &Context,
    controller: &'static str,
    kind: &str,
    invalid: &InvalidObject,
) {
    let timer = ctx.metrics.reconcile_started(controller);
    let meta = &invalid.metadata;
    let (namespace, name) = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    tracing::warn!(kind, namespace, name, error = %invalid.error, "skipping an object that cannot be read");
    let reference = ObjectReference {
        api_version: Some(format!("{}/{}", ferry_crds::GROUP, ferry_crds::VERSION)),
        kind: Some(kind.to_string()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        ..ObjectReference::default()
    };
    ctx.event(
        &reference,
        true,
        "InvalidObject",
        "Reconcile",
        format!(
            "Ferry cannot read this {kind}, and leaves it alone: {}",
            invalid.error
        ),
    )
    .await;
    timer.finish(Err("invalid"));
}
