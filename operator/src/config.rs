//! The operator's own configuration: what a tenant cannot choose (the runner's
//! image and command, network rules, limits). Set by the platform team through
//! the command line / Helm values; see docs/operator.md.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::pod_bounds::PodBounds;

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
    /// Accept plain `http://` endpoints on loopback where a Connector opts out
    /// of TLS (demos and tests; off in the chart).
    pub allow_plain_http_loopback: bool,
    /// `RUST_LOG` of the runner.
    pub runner_log: String,
    /// Where runners send OpenLineage events of runs touching sensitive streams
    /// (an https URL); none when unset.
    pub lineage_url: Option<String>,
    /// Audiences a run's projected cloud token may be minted for; a Connector
    /// that asks for another is rejected.
    pub token_audiences: Vec<String>,
    /// The STS endpoint runners send AWS web identity tokens to; unset, the
    /// official regional endpoint. Never the Connector's S3 endpoint.
    pub sts_endpoint: Option<String>,
    /// The endpoint of the AWS APIs runs call besides S3 and STS (Secrets
    /// Manager, KMS); unset, the official regional endpoints.
    pub aws_endpoint: Option<String>,
    /// What a Connector's pod settings may ask for.
    pub pod_bounds: PodBounds,
    /// Where a run's pod may connect (its NetworkPolicy and the runner's own
    /// check of every address it connects to).
    pub network: RunNetwork,
    /// Finished runs are kept at least this long, beyond the Connectors'
    /// history limits (the platform's retention policy); none: the limits alone.
    pub keep_finished_runs_for: Option<jiff::SignedDuration>,
    /// Record who asked for each run from the annotations the chart's
    /// attribution admission policies keep; off without those policies, where
    /// anyone could write the annotations.
    pub record_requesters: bool,
    /// The operator's own user name (`system:serviceaccount:NS:NAME`), which
    /// the runs the schedule creates carry as `ferry.dev/created-by`.
    pub user_name: Option<String>,
    /// The platform's Vault, for Connectors that keep credentials there;
    /// none: such Connectors are rejected.
    pub vault: Option<VaultConfig>,
}

/// How runs reach the platform's Vault (or OpenBao) and log in to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// Its address (https, or http on loopback for tests).
    pub addr: String,
    /// Mount of the JWT auth method that trusts the cluster's tokens.
    pub auth_mount: String,
    /// Audience of the run's projected token for it.
    pub audience: String,
    /// The role a run logs in as: `{namespace}` is replaced by the run's
    /// namespace (a role per tenant namespace).
    pub role: String,
    /// Where Vault runs when it is inside the cluster (its Service address
    /// is then in the denied networks): the runs' NetworkPolicy lets them
    /// reach exactly these pods on Vault's port, and Vault's port nowhere else.
    pub in_cluster: Option<VaultPods>,
}

/// Vault's pods inside the cluster: their namespace and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultPods {
    /// Their namespace.
    pub namespace: String,
    /// Labels every Vault pod carries (and no other pod should).
    pub pod_labels: BTreeMap<String, String>,
}

impl VaultConfig {
    /// The role of runs in `namespace`.
    pub fn role_for(&self, namespace: &str) -> String {
        self.role.replace("{namespace}", namespace)
    }
}

/// The network rules of every run, set by the platform team.
#[derive(Debug, Clone, PartialEq)]
pub struct RunNetwork {
    /// Networks no run may reach besides those always denied (link-local and
    /// the cloud metadata addresses) and the private ranges not allowed
    /// ([`ferry_crds::network`]).
    pub denied_cidrs: Vec<String>,
    /// Private networks runs may reach (an on-premises SFTP server or S3
    /// store); private ranges are denied otherwise.
    pub allowed_cidrs: Vec<String>,
    /// Where the API server is (CIDRs of its endpoints); empty: the addresses
    /// of the `kubernetes` Service's EndpointSlices, read when an attempt starts.
    pub api_server_cidrs: Vec<String>,
    /// Namespace of the cluster DNS pods.
    pub dns_namespace: String,
    /// Labels of the cluster DNS pods.
    pub dns_pod_labels: BTreeMap<String, String>,
}

impl RunNetwork {
    /// The networks runs may reach, as the runner judges them too; an error
    /// names a setting that is not a network.
    pub fn reach(&self) -> Result<ferry_crds::network::Reach, ferry_crds::network::BadNetwork> {
        for cidr in &self.api_server_cidrs {
            ferry_crds::network::parse_network(cidr)?;
        }
        ferry_crds::network::Reach::new(&self.denied_cidrs, &self.allowed_cidrs)
    }
}

impl Default for RunNetwork {
    fn default() -> Self {
        Self {
            denied_cidrs: Vec::new(),
            allowed_cidrs: Vec::new(),
            api_server_cidrs: Vec::new(),
            dns_namespace: "kube-system".into(),
            dns_pod_labels: BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
        }
    }
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
            allow_plain_http_loopback: false,
            runner_log: "info".into(),
            lineage_url: None,
            token_audiences: vec![
                ferry_crds::AWS_TOKEN_AUDIENCE.into(),
                ferry_crds::AZURE_TOKEN_AUDIENCE.into(),
            ],
            sts_endpoint: None,
            aws_endpoint: None,
            keep_finished_runs_for: None,
            record_requesters: false,
            user_name: None,
            vault: None,
            pod_bounds: PodBounds::default(),
            network: RunNetwork::default(),
        }
    }
}
