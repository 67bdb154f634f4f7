//! Client required: server-side apply of a run's objects, and their deletion
//! when the run ends.

use ferry_crds::{ConnectorRun, ConnectorRunStatus};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::FIELD_MANAGER;
use crate::context::Context;
use crate::error::{Error, is_not_found};
use crate::names;
use crate::run::build::RunObjects;

async fn apply_one<K>(ctx: &Context, namespace: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let mut value = serde_json::to_value(obj).map_err(|source| Error::Encode {
        name: name.clone(),
        source,
    })?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await
    .map_err(|e| Error::kube("apply", static_kind::<K>(), &name, e))?;
    Ok(())
}

fn static_kind<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Pod" => "Pod",
        "ServiceAccount" => "ServiceAccount",
        "Role" => "Role",
        "RoleBinding" => "RoleBinding",
        "NetworkPolicy" => "NetworkPolicy",
        _ => "object",
    }
}

/// Applies every object of an attempt. The identity comes first, the pod last,
/// so the pod never starts without its ServiceAccount, Role and NetworkPolicy.
pub async fn apply(ctx: &Context, namespace: &str, objects: &RunObjects) -> Result<(), Error> {
    let RunObjects {
        service_account,
        role,
        role_binding,
        network_policy,
        pod,
    } = objects;
    apply_one(ctx, namespace, service_account).await?;
    apply_one(ctx, namespace, role).await?;
    apply_one(ctx, namespace, role_binding).await?;
    apply_one(ctx, namespace, network_policy).await?;
    apply_one(ctx, namespace, pod).await?;
    Ok(())
}

async fn delete_one<K>(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube("delete", static_kind::<K>(), name, e)),
    }
}

/// Deletes the pod of one attempt.
pub async fn delete_pod(ctx: &Context, namespace: &str, pod: &str) -> Result<(), Error> {
    delete_one::<Pod>(ctx, namespace, pod).await
}

/// Deletes the run's pods and identity: done once the run has ended. The
/// ConnectorRun itself stays, as history.
pub async fn cleanup(
    ctx: &Context,
    namespace: &str,
    run: &str,
    attempts: i32,
) -> Result<(), Error> {
    for attempt in 1..=attempts {
        delete_pod(ctx, namespace, &names::pod(run, attempt)).await?;
    }
    let id = names::run_identity(run);
    delete_one::<NetworkPolicy>(ctx, namespace, &id).await?;
    delete_one::<RoleBinding>(ctx, namespace, &id).await?;
    delete_one::<Role>(ctx, namespace, &id).await?;
    delete_one::<ServiceAccount>(ctx, namespace, &id).await?;
    Ok(())
}

/// The operator's fields of a run's status; the runner owns `progress` and
/// `result`.
const RUN_STATUS_FIELDS: &[&str] = &[
    "observedGeneration",
    "phase",
    "conditions",
    "connectorGeneration",
    "connectorSpecHash",
    "connectorSpec",
    "nextAttemptTime",
    "startTime",
    "completionTime",
    "duration",
    "attempts",
    "podName",
    "reason",
    "message",
];

/// A merge patch of `status` that sets every field in `fields`: the ones that
/// are unset become `null`, so a value that no longer applies (a retry time, an
/// old reason) is removed. Fields outside `fields` are left alone.
pub fn status_patch<T: serde::Serialize>(
    status: &T,
    fields: &[&str],
    name: &str,
) -> Result<serde_json::Value, Error> {
    let value = serde_json::to_value(status).map_err(|source| Error::Encode {
        name: name.to_string(),
        source,
    })?;
    let mut out = serde_json::Map::new();
    for field in fields {
        let v = value
            .get(*field)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        out.insert((*field).to_string(), v);
    }
    Ok(serde_json::json!({ "status": out }))
}

/// Writes the operator's part of a run's status (a merge patch on the status
/// subresource, field manager `ferry-operator`). The runner's fields
/// (`progress`, `result`) are not in the patch, so each side writes only its own
/// fields and neither overwrites the other.
pub async fn write_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &ConnectorRunStatus,
) -> Result<(), Error> {
    let patch = status_patch(status, RUN_STATUS_FIELDS, name)?;
    let api: Api<ConnectorRun> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch_status(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube("update the status of", "ConnectorRun", name, e))?;
    Ok(())
}
