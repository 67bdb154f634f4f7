//! `Connector`: what to move, from where to where, and under which rules.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    Compliance, EncryptionSpec, Endpoint, StreamSpec, conditions_schema, glob_list_schema,
    string_map_schema,
};

/// Desired state of a Connector: a source, a destination, what to take from the
/// source, and the security rules every run of it must follow.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Connector",
    derive = "Default",
    derive = "PartialEq",
    doc = "A Connector moves files from a source store to a destination store, encrypted at rest, under the tenant's sensitivity and residency rules.",
    plural = "connectors",
    namespaced,
    status = "ConnectorStatus",
    shortname = "fconn",
    category = "ferry",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend","priority":1}"#,
    printcolumn = r#"{"name":"Last Run","type":"string","jsonPath":".status.lastRun.name","priority":1}"#,
    printcolumn = r#"{"name":"Last Success","type":"date","jsonPath":".status.lastSuccessfulTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.schedule) || size(self.schedule) > 0",
        "message": "schedule must not be empty: omit it for manual runs only"
    },
    {
        "rule": "!has(self.timeZone) || has(self.schedule)",
        "message": "timeZone needs a schedule"
    }
]))]
pub struct ConnectorSpec {
    /// Where the data is read from. Exactly one of s3, azureBlob, sftp or local.
    pub source: Endpoint,

    /// Where the data is written to, encrypted. Exactly one of s3, azureBlob, sftp or local.
    pub destination: Endpoint,

    /// Glob patterns, relative to the source prefix, of the objects to copy
    /// (`**` crosses folders). Empty means every object under the prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "glob_list_schema")]
    pub include: Vec<String>,

    /// Glob patterns, relative to the source prefix, of objects never to copy.
    /// An exclude wins over an include.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "glob_list_schema")]
    pub exclude: Vec<String>,

    /// Named subsets of the source objects with their sensitivity tags and the
    /// columns to keep. An object matched by no stream is not sensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub streams: Vec<StreamSpec>,

    /// Sensitivity and data-residency rules every run must satisfy before a byte moves.
    #[serde(default)]
    pub compliance: Compliance,

    /// Encryption at rest of everything written to the destination.
    pub encryption: EncryptionSpec,

    /// `incremental` copies only objects new or changed since the last successful
    /// run; `full` copies every matching object each time.
    #[serde(default)]
    pub sync_mode: SyncMode,

    /// Cron schedule (five fields, e.g. `0 2 * * *`) on which runs are created.
    /// Without a schedule the Connector only runs when a ConnectorRun is created by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub schedule: Option<String>,

    /// IANA time zone the schedule is read in (e.g. `Europe/Paris`); UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,

    /// How late a scheduled run may still start, in seconds. A schedule missed by
    /// more than this is counted as missed and skipped. Unset: no limit, but at most
    /// one missed run is started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub starting_deadline_seconds: Option<i64>,

    /// Stops scheduling new runs; runs already started go on.
    #[serde(default)]
    pub suspend: bool,

    /// What to do when a run is due while another one is still going:
    /// `Forbid` skips the new one, `Replace` cancels the old one, `Allow` runs both.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// How many finished successful ConnectorRuns to keep.
    #[serde(default = "default_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_runs_history_limit: i32,

    /// How many finished failed or rejected ConnectorRuns to keep.
    #[serde(default = "default_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_runs_history_limit: i32,

    /// Settings of the pod each run executes in.
    #[serde(default)]
    pub run: RunTemplate,
}

fn default_history() -> i32 {
    3
}

/// Which objects a run copies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Only objects new or changed since the last successful run.
    #[default]
    Incremental,
    /// Every matching object, every run.
    Full,
}

/// What happens when a run is due while an earlier one is still going.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Skip the new run.
    #[default]
    Forbid,
    /// Cancel the running one and start the new one.
    Replace,
    /// Run both.
    Allow,
}

/// Pod-level settings of each run. The image and command are not among them:
/// they come from the operator's own configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunTemplate {
    /// Seconds a run may take before its pod is stopped and the run fails with
    /// reason `DeadlineExceeded`.
    #[serde(default = "default_deadline")]
    #[schemars(range(min = 1, max = 604800))]
    pub active_deadline_seconds: i64,

    /// How many times a failed run is retried, with exponential backoff, before
    /// it is marked Failed. Authentication failures are never retried.
    #[serde(default = "default_backoff")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: i32,

    /// How many pods a sync run is spread over. Each shard copies the keys a
    /// hash of the key gives it, in a pod of its own with the run's identity;
    /// a failed shard is retried alone (up to `backoffLimit` times), and when
    /// every shard has succeeded one more pod writes the run's manifest.
    /// Plan and erase runs use one pod.
    #[serde(default = "default_parallelism", skip_serializing_if = "is_one")]
    #[schemars(range(min = 1, max = 32))]
    pub parallelism: i32,

    /// CPU and memory requests and limits of the runner container, within the
    /// caps of the operator's configuration; what is not given comes from the
    /// operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the run's pod must be scheduled on (keys the operator's
    /// configuration allows).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "string_map_schema")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the run's pod (taint keys the operator's configuration
    /// allows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// Affinity rules of the run's pod (node affinity on the node label keys
    /// the operator's configuration allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Extra annotations of the run's pod, with keys the operator's
    /// configuration allows. Ferry's own annotations win on a clash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "string_map_schema")]
    pub pod_annotations: BTreeMap<String, String>,

    /// Extra labels of the run's pod, with keys the operator's configuration
    /// allows. Ferry's own labels win on a clash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "string_map_schema")]
    pub pod_labels: BTreeMap<String, String>,
}

fn default_deadline() -> i64 {
    3600
}

fn default_backoff() -> i32 {
    2
}

fn default_parallelism() -> i32 {
    1
}

/// Whether `n` is 1: `parallelism` left out when it is, so a spec pinned
/// before the field existed keeps its hash.
fn is_one(n: &i32) -> bool {
    *n == 1
}

impl Default for RunTemplate {
    fn default() -> Self {
        Self {
            active_deadline_seconds: default_deadline(),
            backoff_limit: default_backoff(),
            parallelism: default_parallelism(),
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            pod_annotations: BTreeMap::new(),
            pod_labels: BTreeMap::new(),
        }
    }
}

/// Observed state of a Connector, owned by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorStatus {
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions: `Ready` (the Connector is valid and can run),
    /// `Suspended`, `PolicyViolation`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// The most recent run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,

    /// When the last successful run completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,

    /// When the schedule last created a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// When the schedule will next create a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,

    /// Incremental-sync state. Advanced only by a successful run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<SyncCursor>,
}

/// A short summary of one run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    /// Name of the ConnectorRun.
    pub name: String,
    /// Its phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::RunPhase>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// Where incremental sync resumes. The full list of what was copied lives in the
/// authenticated manifest at the destination; the status only points at it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncCursor {
    /// Key, under the destination prefix, of the manifest of the last successful run.
    #[schemars(length(max = 1024))]
    pub manifest: String,
    /// Name of the run that wrote it.
    #[schemars(length(max = 253))]
    pub run: String,
    /// How many objects that manifest lists.
    #[serde(default)]
    pub objects: i64,
    /// That manifest's place in the destination's chain, `SEQUENCE:LINK`
    /// (docs/encryption.md): handed to the next run, which refuses a record
    /// rolled back from it. Written by the operator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,19}:[0-9a-f]{64}$"), length(max = 84))]
    pub anchor: Option<String>,
}
