//! `ConnectorRun`: one execution of a Connector, and the run history.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::conditions_schema;

/// Desired state of a ConnectorRun. The whole spec is fixed at creation: to run
/// again, create another ConnectorRun.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "ConnectorRun",
    derive = "Default",
    derive = "PartialEq",
    doc = "A ConnectorRun is one execution of a Connector: created by the schedule or by hand, it runs in a pod of its own and records what it moved.",
    plural = "connectorruns",
    namespaced,
    status = "ConnectorRunStatus",
    shortname = "frun",
    category = "ferry",
    printcolumn = r#"{"name":"Connector","type":"string","jsonPath":".spec.connectorRef.name"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode","priority":1}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Bytes","type":"integer","jsonPath":".status.progress.bytes"}"#,
    printcolumn = r#"{"name":"Objects","type":"integer","jsonPath":".status.progress.objects","priority":1}"#,
    printcolumn = r#"{"name":"Listed","type":"integer","jsonPath":".status.progress.listed","priority":1}"#,
    printcolumn = r#"{"name":"Shards","type":"string","jsonPath":".status.shards","priority":1}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self == oldSelf",
        "message": "the spec of a ConnectorRun is immutable: create a new ConnectorRun instead"
    },
    {
        "rule": "self.mode == 'erase' ? (has(self.erase) && size(self.erase.keys) > 0) : !has(self.erase)",
        "message": "erase (with at least one key) is required when mode is erase, and only allowed then"
    }
]))]
pub struct ConnectorRunSpec {
    /// The Connector, in this namespace, to run.
    pub connector_ref: ConnectorRef,

    /// `sync` moves data; `plan` lists what would move and moves nothing;
    /// `erase` carries out a right-to-erasure request.
    #[serde(default)]
    pub mode: RunMode,

    /// The erasure request, for `mode: erase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase: Option<EraseSpec>,
}

/// Reference to the Connector of a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self == oldSelf",
    "message": "connectorRef is immutable"
}]))]
pub struct ConnectorRef {
    /// Name of the Connector.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// What a run does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// Copy the data.
    #[default]
    Sync,
    /// List what would be copied; copy nothing.
    Plan,
    /// Erase what came from the listed source keys.
    Erase,
}

/// A right-to-erasure request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EraseSpec {
    /// Source keys (relative to the source prefix) whose copies are erased from
    /// the destination.
    #[schemars(length(min = 1, max = 1000), inner(length(min = 1, max = 1024)))]
    pub keys: Vec<String>,
    /// Also delete the source objects, where the source allows it.
    #[serde(default)]
    pub from_source: bool,
}

/// Where a run is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RunPhase {
    /// Accepted, not started yet.
    Pending,
    /// Its pod is running.
    Running,
    /// Finished and all data moved.
    Succeeded,
    /// Finished with an error after all retries.
    Failed,
    /// Refused by policy before anything started.
    Rejected,
}

impl RunPhase {
    /// The phase as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Pending => "Pending",
            RunPhase::Running => "Running",
            RunPhase::Succeeded => "Succeeded",
            RunPhase::Failed => "Failed",
            RunPhase::Rejected => "Rejected",
        }
    }

    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Rejected
        )
    }
}

/// Observed state of a ConnectorRun. Written by the operator, and for `progress`
/// and `result` by the run's own runner.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorRunStatus {
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Phase of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,

    /// Standard conditions: `Complete`, `Failed`, `PolicyViolation`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Generation of the Connector this run was pinned to at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_generation: Option<i64>,

    /// SHA-256 of the Connector spec pinned at creation; the run uses that spec
    /// even if the Connector is edited meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 71))]
    pub connector_spec_hash: Option<String>,

    /// The Connector's spec as it was when the operator first saw this run. The
    /// run (checks, pod and runner) uses this copy, so editing the Connector never
    /// changes a run in flight. It holds references to Secrets, never their values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_spec: Option<crate::ConnectorSpec>,

    /// The manifest the destination's record must reach, `SEQUENCE:LINK`: the
    /// Connector's cursor when the run was pinned. The run refuses a newest
    /// manifest that is not this one or built on it (a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,19}:[0-9a-f]{64}$"), length(max = 84))]
    pub manifest_anchor: Option<String>,

    /// After a failed attempt, when the next one may start (exponential backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,

    /// When the run's pod started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// How long the run took, e.g. `2m13s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub duration: Option<String>,

    /// How many pods have been started for this run (1 + retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,

    /// Name of the current or last pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,

    /// UID of the current or last pod, as the operator created it. A pod of
    /// that name with another UID is not the run's: it is deleted, never
    /// believed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub pod_uid: Option<String>,

    /// Live progress, reported by the runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RunProgress>,

    /// Outcome, reported by the runner at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,

    /// Machine-readable reason of the phase, e.g. `InvalidCredentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub reason: Option<String>,

    /// Human-readable explanation. Never holds a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,

    /// Who asked for the run, as the API server authenticated them, recorded
    /// by the operator when it pinned the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,

    /// A run spread over several pods: how many of its shards have succeeded,
    /// as `SUCCEEDED/SHARDS`. The run's own `attempts` and `podName` are then
    /// those of its last step, which writes the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub shards: Option<String>,

    /// Each shard of a run spread over several pods, as the operator saw it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub shard_statuses: Vec<ShardStatus>,

    /// What each shard's runner reports (its progress and the result of its
    /// last attempt), by shard index. Each shard writes its own key with a
    /// field manager of its own.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub shard_reports: std::collections::BTreeMap<String, ShardReport>,
}

/// One shard of a run, as the operator saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// The shard's index, from 0.
    #[schemars(range(min = 0, max = 31))]
    pub index: i32,
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// Attempts of this shard so far.
    pub attempts: i32,
    /// The pod of its current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// UID of that pod, as the operator created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub pod_uid: Option<String>,
    /// Why its last attempt failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub reason: Option<String>,
    /// What its last attempt came to, when it failed or waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// When its next attempt starts, while it backs off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,
}

/// What one shard's runner reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RunProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
}

/// Annotation of a ConnectorRun: the user the API server authenticated for
/// the request that created it (`request.userInfo.username`). Set by the
/// chart's mutating admission policy and checked by its validating policy
/// (present only as that user on create, never changed after), so a value
/// written by hand that is not the writer's own name is refused.
pub const CREATED_BY_ANNOTATION: &str = "ferry.dev/created-by";
/// Finalizer the operator puts on every run it admits: the run's deletion
/// waits until the operator has written an audit line about it.
pub const RUN_FINALIZER: &str = "ferry.dev/audit-trail";

/// Annotation of a Connector: the user who last changed its spec (on create,
/// and on every update that changes `spec`), kept the same way.
pub const SPEC_CHANGED_BY_ANNOTATION: &str = "ferry.dev/spec-changed-by";

/// Who asked for a run: identities the API server authenticated, as the
/// chart's admission policies recorded them. Absent fields are unknown
/// (attribution off, or objects created before it was on), never guessed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attribution {
    /// Who created the run (`ferry.dev/created-by`): a person, a GitOps
    /// controller's ServiceAccount, or, for scheduled runs, the operator's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub requested_by: Option<String>,
    /// Who last changed the spec of the Connector the run was pinned to
    /// (`ferry.dev/spec-changed-by` of the Connector at that moment): for a
    /// scheduled run, the person behind what it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub connector_changed_by: Option<String>,
}

impl Attribution {
    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.requested_by.is_none() && self.connector_changed_by.is_none()
    }
}

/// Counters of a run in progress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunProgress {
    /// Objects of the source listed so far: a run lists as it copies, a page
    /// at a time, so this moves from its start (a listing of millions of
    /// objects takes minutes).
    #[serde(default)]
    pub listed: i64,
    /// Objects finished so far.
    pub objects: i64,
    /// Bytes written so far.
    pub bytes: i64,
}

/// Outcome of a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// Objects copied.
    pub objects_copied: i64,
    /// Objects left alone (unchanged since the last successful run).
    pub objects_skipped: i64,
    /// Objects refused by policy or that failed.
    #[serde(default)]
    pub objects_failed: i64,
    /// Requested keys now erased (erase mode), including those a previous
    /// erasure already removed.
    #[serde(default)]
    pub objects_erased: i64,
    /// Erase mode: what was erased, per requested key (the first keys, up to
    /// 64 KiB of them; every key is in the audit trail).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub erased: Vec<ErasedObject>,
    /// Erase mode: what of the erasure the destination did not let the run
    /// carry out, said plainly (earlier versions an object lock or legal hold
    /// keeps, or that the store cannot list); absent when nothing was left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub erase_incomplete: Option<String>,
    /// Whether `erased` was cut short.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased_truncated: bool,
    /// Plaintext bytes read from the source.
    pub bytes_read: i64,
    /// Encrypted bytes written to the destination.
    pub bytes_written: i64,
    /// Key of the run's manifest under the destination prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub manifest: Option<String>,
    /// That manifest's place in the destination's chain, `SEQUENCE:LINK`: the
    /// next run's anchor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,19}:[0-9a-f]{64}$"), length(max = 84))]
    pub manifest_anchor: Option<String>,
    /// When that manifest was created (RFC 3339, as written into it): with
    /// the run's name, its Connector and the anchor the run was pinned to, the
    /// operator recomputes the anchor's link and refuses one that does not
    /// match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub manifest_created: Option<String>,
    /// The attempt (pod) that reported this result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// Why the attempt failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
}

/// One key of an erasure request, and what the run deleted for it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasedObject {
    /// The source key, relative to the source prefix.
    #[schemars(length(max = 1024))]
    pub key: String,
    /// This run deleted its copy at the destination.
    #[serde(default)]
    pub from_destination: bool,
    /// This run deleted the source object.
    #[serde(default)]
    pub from_source: bool,
}

/// A failure reported by the runner. Never holds a secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunError {
    /// Stable reason, e.g. `InvalidCredentials`, `HostKeyMismatch`, `Unreachable`.
    #[schemars(length(max = 128))]
    pub reason: String,
    /// What failed, naming the endpoint and object.
    #[schemars(length(max = 4096))]
    pub message: String,
    /// Whether another attempt may succeed. Authentication and policy failures
    /// are not retried.
    pub retryable: bool,
}

/// Folder, under the destination prefix, holding Ferry's manifests; a run's
/// manifest is named `<UTC timestamp>Z-<run>.json` in it.
pub const MANIFEST_DIR: &str = ".ferry/manifests/";
/// Folder, under the destination prefix, holding the encrypted copies of the
/// runs' audit lines, `<UTC timestamp>Z-<run>.jsonl`, each listed in the
/// manifest of its run.
pub const AUDIT_DIR: &str = ".ferry/audit/";

/// Annotation of a ConnectorRun holding the operator's record of it, the JSON of
/// a [`RunRecord`]. A run's own ServiceAccount may patch the run's status but
/// not its metadata (a status write ignores everything but `status`), so the
/// record is what the operator trusts: the pinned spec, phase, attempts and
/// conditions, and the result it accepted. `status` shows the same, and is
/// rewritten from the record when anything else changed it.
pub const RUN_RECORD_ANNOTATION: &str = "ferry.dev/run-record";

/// The operator's record of a run (see [`RUN_RECORD_ANNOTATION`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// The operator's fields of the status as it last decided them (no
    /// `progress`), and the `result` it accepted when the run succeeded.
    pub status: ConnectorRunStatus,
    /// Digest of the operator's fields as they were before the last decision,
    /// so that a status write that did not get through is told apart from a
    /// status someone else wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

impl RunRecord {
    /// The record of `run`: `Ok(None)` when it has none yet, `Err` when the
    /// annotation is not a record.
    pub fn of(run: &ConnectorRun) -> Result<Option<Self>, serde_json::Error> {
        run.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RUN_RECORD_ANNOTATION))
            .map(|text| serde_json::from_str(text))
            .transpose()
    }

    /// The pinned spec, when its hash is the one recorded with it.
    pub fn verified_spec(&self) -> Option<&crate::ConnectorSpec> {
        let spec = self.status.connector_spec.as_ref()?;
        (self.status.connector_spec_hash.as_deref() == Some(spec_hash(spec).as_str()))
            .then_some(spec)
    }
}

/// SHA-256 of a Connector spec, as pinned in a run's record.
pub fn spec_hash(spec: &crate::ConnectorSpec) -> String {
    digest(&serde_json::to_vec(spec).unwrap_or_default())
}

/// `sha256:` and the hex SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
