//! Client required: creation of a run's objects, and their deletion when the
//! run ends. A run's objects are never patched: the operator holds `create`
//! and `delete` on them, not `patch` (docs/security.md, "The operator"). An
//! object that already exists is kept when it is the one this run would
//! create, and deleted and created again when it has drifted.

use ferry_crds::{ConnectorRun, ConnectorRunStatus};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Resource;
use kube::api::{Api, DeleteParams, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::FIELD_MANAGER;
use crate::context::Context;
use crate::error::{Error, Step, is_already_exists, is_not_found};
use crate::run::build::{ObjectKind, RunObjects};

/// The parts of a run's object that must be exactly as built for an existing
/// object to stand for it: everything but `metadata` and `status` (a Pod's spec
/// is filled with the server's defaults, so only its owner is compared).
fn compared_fields<K: Resource<DynamicType = ()>>() -> &'static [&'static str] {
    match K::kind(&()).as_ref() {
        "Role" => &["rules"],
        "RoleBinding" => &["roleRef", "subjects"],
        "ServiceAccount" => &["automountServiceAccountToken"],
        "NetworkPolicy" => &["spec"],
        _ => &[],
    }
}

/// Whether `existing` is the object `desired` describes: owned by the same run
/// (controller reference with its UID), carrying its labels, and equal in the
/// fields that say what it grants.
pub fn stands_for<K>(desired: &K, existing: &K) -> bool
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let owner = |k: &K| {
        k.meta()
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone())
    };
    if owner(desired).is_none() || owner(desired) != owner(existing) {
        return false;
    }
    let labels = existing.meta().labels.clone().unwrap_or_default();
    let labelled = desired
        .meta()
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let (Ok(want), Ok(have)) = (
        serde_json::to_value(desired),
        serde_json::to_value(existing),
    ) else {
        return false;
    };
    labelled
        && compared_fields::<K>()
            .iter()
            .all(|f| served(want.get(*f)) == served(have.get(*f)))
}

/// A field as the API server serves it back: Kubernetes' types omit empty
/// lists and maps and unset values (`omitempty`), so `ingress: []` as built
/// comes back as no `ingress` at all.
fn served(value: Option<&serde_json::Value>) -> Option<serde_json::Value> {
    use serde_json::Value;
    match value? {
        Value::Null => None,
        Value::Array(items) if items.is_empty() => None,
        Value::Object(map) if map.is_empty() => None,
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .map(|v| served(Some(v)).unwrap_or(Value::Null))
                .collect(),
        )),
        Value::Object(map) => {
            let kept: serde_json::Map<String, Value> = map
                .iter()
                .filter_map(|(k, v)| served(Some(v)).map(|v| (k.clone(), v)))
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        other => Some(other.clone()),
    }
}

/// The controller owner's UID of `obj`, if any.
fn owner_uid<K: Resource<DynamicType = ()>>(obj: &K) -> Option<String> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// The ServiceAccount a pod runs as.
fn service_account<K: Serialize>(obj: &K) -> Option<String> {
    let v = serde_json::to_value(obj).ok()?;
    v.pointer("/spec/serviceAccountName")?
        .as_str()
        .map(str::to_string)
}

/// Creates `obj`, or keeps the object of its name that stands for it; the
/// UID of the object that now stands for it. An existing pod is kept only
/// when it carries Ferry's labels and runs as the run's ServiceAccount, which
/// the chart's run-identity policy leaves to the operator alone (a create of
/// this process or of an earlier one whose status write did not get
/// through). A pod someone else made under the name, claiming the run as its
/// owner (the run's UID is readable), is deleted and reported as
/// [`Error::ForeignPod`], never taken for the run's.
async fn create_one<K>(ctx: &Context, namespace: &str, obj: &K) -> Result<Option<String>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let kind = crate::error::static_kind::<K>();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    };
    // Two tries: the second follows the deletion of a drifted object.
    for _ in 0..2 {
        match api.create(&params, obj).await {
            Ok(made) => return Ok(made.meta().uid.clone()),
            Err(e) if is_already_exists(&e) => {}
            Err(e) => return Err(Error::kube(Step::Act, "create", kind, &name, e)),
        }
        let existing = api
            .get_opt(&name)
            .await
            .map_err(|e| Error::kube(Step::Act, "get", kind, &name, e))?;
        match existing {
            // A pod: the operator made it (a reconcile whose status write did
            // not get through), or it is not the run's.
            Some(existing) if kind == "Pod" => {
                if stands_for(obj, &existing)
                    && service_account(&existing).is_some()
                    && service_account(&existing) == service_account(obj)
                {
                    return Ok(existing.meta().uid.clone());
                }
                if owner_uid(&existing).is_some() && owner_uid(&existing) == owner_uid(obj) {
                    // It claims to be the run's: someone else made it.
                    tracing::warn!(
                        namespace,
                        name,
                        "deleting a pod that claims to be the run's but was not made by the operator"
                    );
                    delete_one::<K>(ctx, namespace, &name).await?;
                    return Err(Error::ForeignPod { name });
                }
                // Another run's pod, or a pod that is not a run's: never
                // taken over, never deleted.
                return Err(Error::Foreign { kind, name });
            }
            // Created by an earlier reconcile of this run (one whose status
            // write did not get through).
            Some(existing) if stands_for(obj, &existing) => return Ok(existing.meta().uid.clone()),
            Some(_) => {
                tracing::warn!(
                    namespace,
                    kind,
                    name,
                    "deleting a drifted object to create it again"
                );
                delete_one::<K>(ctx, namespace, &name).await?;
            }
            None => {}
        }
    }
    Err(Error::Foreign { kind, name })
}

/// Creates every object of an attempt, in [`ObjectKind::ALL`]'s order: the
/// identity first, the pod last, so the pod never starts without its
/// ServiceAccount, Role and NetworkPolicy; the UID of the attempt's pod.
pub async fn apply(ctx: &Context, namespace: &str, objects: &RunObjects) -> Result<String, Error> {
    let mut pod_uid = None;
    for kind in ObjectKind::ALL {
        match kind {
            ObjectKind::ServiceAccount => {
                create_one(ctx, namespace, &objects.service_account).await
            }
            ObjectKind::Role => create_one(ctx, namespace, &objects.role).await,
            ObjectKind::RoleBinding => create_one(ctx, namespace, &objects.role_binding).await,
            ObjectKind::NetworkPolicy => create_one(ctx, namespace, &objects.network_policy).await,
            ObjectKind::Pod => {
                pod_uid = create_one(ctx, namespace, &objects.pod).await?;
                Ok(None)
            }
        }?;
    }
    pod_uid.ok_or(Error::MissingMetadata {
        kind: "Pod",
        field: "metadata.uid",
    })
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
        Err(e) => Err(Error::kube(
            Step::Act,
            "delete",
            crate::error::static_kind::<K>(),
            name,
            e,
        )),
    }
}

/// Deletes the pod of one attempt.
pub async fn delete_pod(ctx: &Context, namespace: &str, pod: &str) -> Result<(), Error> {
    delete_one::<Pod>(ctx, namespace, pod).await
}

/// Deletes one of the run's objects.
async fn delete_kind(
    ctx: &Context,
    namespace: &str,
    kind: ObjectKind,
    name: &str,
) -> Result<(), Error> {
    match kind {
        ObjectKind::ServiceAccount => delete_one::<ServiceAccount>(ctx, namespace, name).await,
        ObjectKind::Role => delete_one::<Role>(ctx, namespace, name).await,
        ObjectKind::RoleBinding => delete_one::<RoleBinding>(ctx, namespace, name).await,
        ObjectKind::NetworkPolicy => delete_one::<NetworkPolicy>(ctx, namespace, name).await,
        ObjectKind::Pod => delete_one::<Pod>(ctx, namespace, name).await,
    }
}

/// Deletes the run's pods and identity, every object [`apply`] may have made
/// (from the same list, in the reverse order): done once the run has ended.
/// The ConnectorRun itself stays, as history.
pub async fn cleanup(
    ctx: &Context,
    namespace: &str,
    run: &str,
    attempts: i32,
    shard_attempts: &[i32],
) -> Result<(), Error> {
    for kind in ObjectKind::ALL.into_iter().rev() {
        for name in kind.names(run, attempts, shard_attempts) {
            delete_kind(ctx, namespace, kind, &name).await?;
        }
    }
    Ok(())
}

/// Writes the operator's part of a run's status ([`crate::status`]).
pub async fn write_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &ConnectorRunStatus,
) -> Result<(), Error> {
    crate::status::write::<ConnectorRun, _>(ctx, namespace, name, status, crate::status::RUN_FIELDS)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "ferry-run-r", "labels": {"ferry.dev/run": "r"},
                         "ownerReferences": [{"apiVersion": "ferry.dev/v1alpha1", "kind": "ConnectorRun",
                                              "name": "r", "uid": "u-1", "controller": true}]},
            "spec": spec,
        }))
        .expect("a NetworkPolicy")
    }

    #[test]
    fn an_object_as_the_api_server_serves_it_back_stands_for_the_one_built() {
        let egress = json!([{"ports": [{"port": 53, "protocol": "UDP"}], "to": []}]);
        let built = policy(
            json!({"podSelector": {"matchLabels": {"ferry.dev/run": "r"}},
                                  "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": egress}),
        );
        // What the API server answers: empty lists left out.
        let served = policy(
            json!({"podSelector": {"matchLabels": {"ferry.dev/run": "r"}},
                                   "policyTypes": ["Ingress", "Egress"],
                                   "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
        );
        assert!(stands_for(&built, &served));
        // A policy that lets more out has drifted.
        let wider = policy(
            json!({"podSelector": {"matchLabels": {"ferry.dev/run": "r"}},
                                  "policyTypes": ["Ingress", "Egress"], "egress": [{}]}),
        );
        assert!(!stands_for(&built, &wider));
    }
}
