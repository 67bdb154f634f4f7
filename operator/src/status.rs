//! Writing the operator's part of a status. Both controllers write with a merge
//! patch on the status subresource, field manager `ferry-operator`, that names
//! every field the operator owns and nothing else: the runner's fields of a
//! run's status (`progress`, `result`) are never in the patch, so each side
//! writes only its own fields and neither overwrites the other.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::FIELD_MANAGER;
use crate::context::Context;
use crate::error::{Error, Step};

/// The operator's fields of a ConnectorRun's status; the runner owns
/// `progress` and `result`.
pub const RUN_FIELDS: &[&str] = &[
    "observedGeneration",
    "phase",
    "conditions",
    "connectorGeneration",
    "connectorSpecHash",
    "connectorSpec",
    "manifestAnchor",
    "nextAttemptTime",
    "startTime",
    "completionTime",
    "duration",
    "attempts",
    "podName",
    "podUid",
    "reason",
    "message",
    "attribution",
    "shards",
    "shardStatuses",
];

/// The operator's fields of a Connector's status: all of them.
pub const CONNECTOR_FIELDS: &[&str] = &[
    "observedGeneration",
    "conditions",
    "lastRun",
    "lastSuccessfulTime",
    "lastScheduleTime",
    "nextScheduleTime",
    "cursor",
];

/// A merge patch of `status` that sets every field in `fields`: the ones that
/// are unset become `null`, so a value that no longer applies (a retry time, an
/// old reason) is removed. Fields outside `fields` are left alone.
pub fn patch<T: Serialize>(
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

/// Writes `fields` of `status` onto the object `name` of kind `K`.
pub async fn write<K, S>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &S,
    fields: &[&str],
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
    S: Serialize,
{
    let patch = patch(status, fields, name)?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch_status(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            Error::kube(
                Step::Status,
                "update the status of",
                crate::error::static_kind::<K>(),
                name,
                e,
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_that_no_longer_applies_is_removed_and_others_are_left_alone() {
        let status = serde_json::json!({"phase": "Running", "progress": {"objects": 3}});
        let p = patch(&status, &["phase", "nextAttemptTime"], "r").unwrap();
        assert_eq!(
            p,
            serde_json::json!({"status": {"phase": "Running", "nextAttemptTime": null}})
        );
    }

    /// The field lists name every field of the status types, but the
    /// runner's: a field left out would never be written.
    #[test]
    fn every_status_field_is_written() {
        fn fields<T: schemars::JsonSchema>() -> Vec<String> {
            let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap();
            let mut out: Vec<String> = schema["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            out.sort();
            out
        }
        let sorted = |list: &[&str]| {
            let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        let mut run = fields::<ferry_crds::ConnectorRunStatus>();
        run.retain(|f| f != "progress" && f != "result" && f != "shardReports");
        assert_eq!(run, sorted(RUN_FIELDS));
        assert_eq!(
            fields::<ferry_crds::ConnectorStatus>(),
            sorted(CONNECTOR_FIELDS)
        );
    }
}
