//! The operator's own configuration: what a tenant cannot choose (the runner's
//! image and command, network rules, limits). Set by the platform team through
//! the command line / Helm values; see docs/operator.md.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "ferry-operator";

/// Settings of the operator that shape every run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Image of the runner container, e.g. `ghcr.io/ferry-dev/job-runner:0.1.0`.
    pub runner_image: String,
    /// `imagePullPolicy` of the runner container (Kubernetes' default when unset).
    pub runner_image_pull_policy: Option<String>,
    /// Command of the runner container; `cluster` is passed as its argument.
    pub runner_command: Vec<String>,
    /// Resources of the runner when the Connector sets none.
    pub runner_resources: ResourceRequirements,
    /// Size of the memory-backed scratch volume mounted at /tmp.
    pub scratch_size: String,
    /// TCP ports of the Kubernetes API server the runner may reach.
    pub api_server_ports: Vec<i32>,
    /// Accept `local` endpoints (demos and tests).
    pub allow_local_endpoints: bool,
    /// `RUST_LOG` of the runner.
    pub runner_log: String,
    /// Where runners send OpenLineage events of runs touching sensitive streams
    /// (an https URL); none when unset.
    pub lineage_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        let q = |s: &str| Quantity(s.to_string());
        Self {
            runner_image: "ghcr.io/ferry-dev/job-runner:latest".into(),
            runner_image_pull_policy: None,
            runner_command: vec!["/job-runner".into()],
            runner_resources: ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), q("250m")),
                    ("memory".to_string(), q("128Mi")),
                ])),
                limits: Some(BTreeMap::from([("memory".to_string(), q("512Mi"))])),
                ..Default::default()
            },
            scratch_size: "64Mi".into(),
            api_server_ports: vec![443, 6443],
            allow_local_endpoints: false,
            runner_log: "info".into(),
            lineage_url: None,
        }
    }
}
