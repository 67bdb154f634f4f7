//! No client required: the objects of one run attempt, as pure functions of the
//! validated run (DESIGN.md, "A run, step by step", 2). Everything here is owned
//! by the ConnectorRun, so deleting the run deletes them.

use std::collections::BTreeMap;

use ferry_crds::{ConnectorRun, ConnectorSpec, EndpointKind, secret_names};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, DownwardAPIProjection, DownwardAPIVolumeFile,
    EmptyDirVolumeSource, EnvVar, KeyToPath, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccount,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use crate::config::{ALWAYS_DENIED_V4, ALWAYS_DENIED_V6, Config, RunNetwork};
use crate::names;
use crate::pod_bounds::quantity_value;

/// Where the runner finds its Kubernetes API token, CA and namespace: the path
/// that Kubernetes clients read in a pod.
pub const API_ACCESS_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where the AWS web identity token is projected.
pub const AWS_TOKEN_DIR: &str = "/var/run/secrets/ferry.dev/aws";
/// Where the Azure federated token is projected.
pub const AZURE_TOKEN_DIR: &str = "/var/run/secrets/ferry.dev/azure";
pub use ferry_crds::AZURE_TOKEN_AUDIENCE;
/// UID and GID the runner runs as (distroless `nonroot`).
pub const RUNNER_UID: i64 = 65532;
/// Name of the runner container.
pub const RUNNER_CONTAINER: &str = "runner";
/// Projected tokens live at least this long (the API server's minimum is 600 s).
const MIN_TOKEN_SECONDS: i64 = 600;

/// What one attempt of a run is built from, all of it already validated.
#[derive(Debug, Clone, Copy)]
pub struct RunInput<'a> {
    /// The run.
    pub run: &'a ConnectorRun,
    /// Its pinned Connector spec.
    pub spec: &'a ConnectorSpec,
    /// Attempt number, from 1.
    pub attempt: i32,
    /// The tenant's region (namespace label), passed to the runner for its own
    /// residency checks.
    pub tenant_region: Option<&'a str>,
    /// The operator's configuration.
    pub config: &'a Config,
}

/// Why the objects of a run cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildError {
    #[error("failed to build the run's objects: the ConnectorRun has no {0} yet")]
    MissingMetadata(&'static str),
}

/// Every object of one attempt. Destructure it without `..` so that a new object
/// cannot be forgotten by the code that applies them.
#[derive(Debug, Clone, PartialEq)]
pub struct RunObjects {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub network_policy: NetworkPolicy,
    pub pod: Pod,
}

/// Builds every object of one attempt.
pub fn build(input: RunInput<'_>) -> Result<RunObjects, BuildError> {
    Ok(RunObjects {
        service_account: service_account(input)?,
        role: role(input)?,
        role_binding: role_binding(input)?,
        network_policy: network_policy(input)?,
        pod: pod(input)?,
    })
}

fn run_name(run: &ConnectorRun) -> Result<&str, BuildError> {
    run.metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingMetadata("name"))
}

/// Labels every object of the run carries.
pub fn run_labels(run: &ConnectorRun) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            names::LABEL_MANAGED_BY.to_string(),
            names::MANAGED_BY.to_string(),
        ),
        (names::LABEL_COMPONENT.to_string(), "run".to_string()),
        (
            names::LABEL_RUN.to_string(),
            names::label_value(run.metadata.name.as_deref().unwrap_or_default()),
        ),
        (
            names::LABEL_CONNECTOR.to_string(),
            names::label_value(&run.spec.connector_ref.name),
        ),
    ])
}

fn meta(input: RunInput<'_>, name: String) -> Result<ObjectMeta, BuildError> {
    let run = input.run;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(
            run.metadata
                .namespace
                .clone()
                .ok_or(BuildError::MissingMetadata("namespace"))?,
        ),
        labels: Some(run_labels(run)),
        owner_references: Some(vec![owner(run)?]),
        ..Default::default()
    })
}

/// The run as controller owner, so deleting it deletes its objects.
pub fn owner(run: &ConnectorRun) -> Result<OwnerReference, BuildError> {
    if run.metadata.uid.is_none() {
        return Err(BuildError::MissingMetadata("uid"));
    }
    run.controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("name"))
}

/// The run's own ServiceAccount. Its tokens are only ever projected into the
/// run's pod, and die with it.
pub fn service_account(input: RunInput<'_>) -> Result<ServiceAccount, BuildError> {
    let name = names::run_identity(run_name(input.run)?);
    Ok(ServiceAccount {
        metadata: meta(input, name)?,
        automount_service_account_token: Some(false),
        ..Default::default()
    })
}

/// The run's Role: `get` on exactly the Secrets it reads, on itself and on its
/// Connector, and `patch` on its own status. resourceNames everywhere.
pub fn role(input: RunInput<'_>) -> Result<Role, BuildError> {
    let run = run_name(input.run)?.to_string();
    let name = names::run_identity(&run);
    let mut rules = Vec::new();
    let secrets = secret_names(input.spec);
    if !secrets.is_empty() {
        rules.push(rule("", "secrets", "get", secrets));
    }
    rules.push(rule(
        ferry_crds::GROUP,
        "connectorruns",
        "get",
        vec![run.clone()],
    ));
    rules.push(rule(
        ferry_crds::GROUP,
        "connectorruns/status",
        "patch",
        vec![run],
    ));
    rules.push(rule(
        ferry_crds::GROUP,
        "connectors",
        "get",
        vec![input.run.spec.connector_ref.name.clone()],
    ));
    Ok(Role {
        metadata: meta(input, name)?,
        rules: Some(rules),
    })
}

fn rule(group: &str, resource: &str, verb: &str, names: Vec<String>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        verbs: vec![verb.to_string()],
        resource_names: Some(names),
        non_resource_urls: None,
    }
}

/// Binds the run's Role to the run's ServiceAccount.
pub fn role_binding(input: RunInput<'_>) -> Result<RoleBinding, BuildError> {
    let name = names::run_identity(run_name(input.run)?);
    let metadata = meta(input, name.clone())?;
    let namespace = metadata.namespace.clone();
    Ok(RoleBinding {
        metadata,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace,
            api_group: None,
        }]),
    })
}

/// TCP port of an endpoint URL (already checked by the policy), or the
/// scheme's default, as the clients' parser reads it.
fn url_port(url: &str) -> i32 {
    ferry_crds::check_endpoint_url(url, true).map_or(443, |u| i32::from(u.port()))
}

/// Whether either end assumes an AWS role with the run's token.
fn uses_web_identity(spec: &ConnectorSpec) -> bool {
    [&spec.source, &spec.destination].into_iter().any(|e| {
        e.s3.as_ref()
            .is_some_and(|s| s.credentials.web_identity.is_some())
    })
}

/// TCP ports the runner must reach for its two endpoints, sorted.
pub fn endpoint_ports(spec: &ConnectorSpec) -> Vec<i32> {
    let mut ports = Vec::new();
    for endpoint in [&spec.source, &spec.destination] {
        match endpoint.kind() {
            Some(EndpointKind::S3(s)) => {
                ports.push(s.endpoint.as_deref().map_or(443, url_port));
                if s.credentials.web_identity.is_some() {
                    ports.push(443); // STS
                }
            }
            Some(EndpointKind::AzureBlob(a)) => {
                ports.push(a.endpoint.as_deref().map_or(443, url_port));
                if a.credentials.secret_ref.is_none() {
                    ports.push(443); // Entra ID token endpoint
                }
            }
            Some(EndpointKind::Sftp(s)) => ports.push(s.port),
            Some(EndpointKind::Local(_)) | None => {}
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// No ingress at all; egress only to DNS, the API server and the endpoints'
/// ports.
pub fn network_policy(input: RunInput<'_>) -> Result<NetworkPolicy, BuildError> {
    let name = names::run_identity(run_name(input.run)?);
    let port = |protocol: &str, port: i32| NetworkPolicyPort {
        protocol: Some(protocol.to_string()),
        port: Some(IntOrString::Int(port)),
        end_port: None,
    };
    let mut api_ports = input.config.api_server_ports.clone();
    api_ports.sort_unstable();
    api_ports.dedup();
    let mut tcp: Vec<i32> = endpoint_ports(input.spec);
    if let Some(url) = &input.config.lineage_url {
        tcp.push(url_port(url));
    }
    if let Some(url) = &input.config.sts_endpoint
        && uses_web_identity(input.spec)
    {
        tcp.push(url_port(url));
    }
    tcp.sort_unstable();
    tcp.dedup();
    Ok(NetworkPolicy {
        metadata: meta(input, name)?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    names::LABEL_RUN.to_string(),
                    names::label_value(run_name(input.run)?),
                )])),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![]),
            egress: Some(vec![
                // DNS, to the cluster's DNS pods only.
                NetworkPolicyEgressRule {
                    ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
                    to: Some(vec![dns_peer(&input.config.network)]),
                },
                // The API server (the runner reads its run and Secrets there).
                NetworkPolicyEgressRule {
                    ports: Some(api_ports.into_iter().map(|p| port("TCP", p)).collect()),
                    to: ip_blocks(&input.config.network.api_server_cidrs),
                },
                // The endpoints: anywhere but the denied networks.
                NetworkPolicyEgressRule {
                    ports: Some(tcp.into_iter().map(|p| port("TCP", p)).collect()),
                    to: Some(outside_denied(&input.config.network)),
                },
            ]),
        }),
    })
}

/// The runner's resources: the operator's defaults, each request and limit the
/// Connector names replacing the default one (the policy holds them under the
/// operator's caps). A Connector that names only requests still gets the
/// default limits, raised to its requests where they are lower, so no run is
/// unbounded and no pod is invalid.
fn resources(
    asked: Option<&ResourceRequirements>,
    defaults: &ResourceRequirements,
) -> ResourceRequirements {
    let merge = |default: &Option<BTreeMap<String, Quantity>>,
                 asked: Option<&BTreeMap<String, Quantity>>| {
        let mut out = default.clone().unwrap_or_default();
        out.extend(asked.cloned().unwrap_or_default());
        (!out.is_empty()).then_some(out)
    };
    let requests = merge(&defaults.requests, asked.and_then(|a| a.requests.as_ref()));
    let mut limits = merge(&defaults.limits, asked.and_then(|a| a.limits.as_ref()));
    let explicit = asked.and_then(|a| a.limits.as_ref());
    for (name, request) in requests.iter().flatten() {
        let Some(limit) = limits.as_mut().and_then(|l| l.get_mut(name)) else {
            continue;
        };
        let below = quantity_value(&limit.0) < quantity_value(&request.0);
        if below && !explicit.is_some_and(|e| e.contains_key(name)) {
            *limit = request.clone();
        }
    }
    ResourceRequirements {
        requests,
        limits,
        ..Default::default()
    }
}

/// The cluster DNS pods, by namespace and labels.
fn dns_peer(network: &RunNetwork) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                network.dns_namespace.clone(),
            )])),
            match_expressions: None,
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(network.dns_pod_labels.clone()),
            match_expressions: None,
        }),
        ip_block: None,
    }
}

/// Peers for exactly these CIDRs; `None` (anywhere) when there are none.
fn ip_blocks(cidrs: &[String]) -> Option<Vec<NetworkPolicyPeer>> {
    (!cidrs.is_empty()).then(|| {
        cidrs
            .iter()
            .map(|c| NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: c.clone(),
                    except: None,
                }),
                ..Default::default()
            })
            .collect()
    })
}

/// Every IPv4 and IPv6 address but the denied networks (link-local, cloud
/// metadata, and the configured cluster ranges).
fn outside_denied(network: &RunNetwork) -> Vec<NetworkPolicyPeer> {
    let (v6, v4): (Vec<&String>, Vec<&String>) =
        network.denied_cidrs.iter().partition(|c| c.contains(':'));
    let block = |cidr: &str, always: &[&str], extra: Vec<&String>| {
        let mut except: Vec<String> = always.iter().map(|s| s.to_string()).collect();
        except.extend(extra.into_iter().cloned());
        except.sort();
        except.dedup();
        NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.to_string(),
                except: Some(except),
            }),
            ..Default::default()
        }
    };
    vec![
        block("0.0.0.0/0", &ALWAYS_DENIED_V4, v4),
        block("::/0", &ALWAYS_DENIED_V6, v6),
    ]
}

fn token_seconds(spec: &ConnectorSpec) -> i64 {
    // A little beyond the deadline: the pod cannot outlive it, and the
    // ServiceAccount (which invalidates its tokens) is deleted at the end.
    (spec.run.active_deadline_seconds + 120).max(MIN_TOKEN_SECONDS)
}

fn token_volume(name: &str, audience: Option<&str>, seconds: i64) -> Volume {
    Volume {
        name: name.to_string(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: audience.map(str::to_string),
                    expiration_seconds: Some(seconds),
                    path: "token".into(),
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// The pod of one attempt: Pod Security "restricted", no automounted token, a
/// projected token that expires with the run, memory scratch, the tenant's knobs
/// for scheduling and resources, and the operator's image and command only.
pub fn pod(input: RunInput<'_>) -> Result<Pod, BuildError> {
    let run = input.run;
    let run_name = run_name(run)?;
    let template = &input.spec.run;
    let seconds = token_seconds(input.spec);

    let mut metadata = meta(input, names::pod(run_name, input.attempt))?;
    let mut labels = template.pod_labels.clone();
    labels.extend(run_labels(run));
    labels.insert(names::LABEL_ATTEMPT.into(), input.attempt.to_string());
    metadata.labels = Some(labels);
    // The tenant's annotations (allow-listed by the policy) first, Ferry's over
    // them: Ferry's keys always win.
    let mut annotations = template.pod_annotations.clone();
    // A mesh sidecar would keep the pod running after the runner exits, and
    // would not meet Pod Security "restricted".
    annotations.insert("sidecar.istio.io/inject".to_string(), "false".to_string());
    metadata.annotations = Some(annotations);

    let mut env_vars = vec![
        env("FERRY_RUN_NAME", run_name),
        env("FERRY_RUN_ATTEMPT", input.attempt.to_string()),
        EnvVar {
            name: "FERRY_RUN_NAMESPACE".into(),
            value: None,
            value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: "metadata.namespace".into(),
                }),
                ..Default::default()
            }),
        },
        // The runner checks the spec it reads from the run's record against
        // this: the pod is immutable and only the operator creates it.
        env(ferry_crds::SPEC_HASH_ENV, ferry_crds::spec_hash(input.spec)),
        env("RUST_LOG", input.config.runner_log.clone()),
        env("FERRY_LOG_FORMAT", "json"),
    ];
    if let Some(region) = input.tenant_region {
        env_vars.push(env("FERRY_TENANT_REGION", region));
    }
    if let Some(url) = &input.config.lineage_url {
        env_vars.push(env("FERRY_LINEAGE_URL", url.clone()));
    }
    if let Some(url) = &input.config.sts_endpoint
        && uses_web_identity(input.spec)
    {
        env_vars.push(env(ferry_crds::STS_ENDPOINT_ENV, url.clone()));
    }
    if !input.config.network.denied_cidrs.is_empty() {
        env_vars.push(env(
            ferry_crds::DENIED_NETWORKS_ENV,
            input.config.network.denied_cidrs.join(","),
        ));
    }
    let mut volumes = vec![
        Volume {
            name: "kube-api-access".into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o440),
                sources: Some(vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: None,
                            expiration_seconds: Some(seconds),
                            path: "token".into(),
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".into(),
                            items: Some(vec![KeyToPath {
                                key: "ca.crt".into(),
                                path: "ca.crt".into(),
                                mode: None,
                            }]),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardAPIProjection {
                            items: Some(vec![DownwardAPIVolumeFile {
                                path: "namespace".into(),
                                field_ref: Some(ObjectFieldSelector {
                                    api_version: Some("v1".into()),
                                    field_path: "metadata.namespace".into(),
                                }),
                                ..Default::default()
                            }]),
                        }),
                        ..Default::default()
                    },
                ]),
            }),
            ..Default::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity(input.config.scratch_size.clone())),
            }),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        mount("kube-api-access", API_ACCESS_PATH, true),
        mount("scratch", "/tmp", false),
    ];
    let aws_audience = [&input.spec.source, &input.spec.destination]
        .into_iter()
        .find_map(|e| e.s3.as_ref()?.credentials.web_identity.as_ref())
        .map(|w| w.audience.clone());
    if let Some(audience) = aws_audience {
        volumes.push(token_volume("aws-token", Some(&audience), seconds));
        mounts.push(mount("aws-token", AWS_TOKEN_DIR, true));
        env_vars.push(env(
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            format!("{AWS_TOKEN_DIR}/token"),
        ));
    }
    let azure_wi = [&input.spec.source, &input.spec.destination]
        .into_iter()
        .any(|e| {
            e.azure_blob
                .as_ref()
                .is_some_and(|a| a.credentials.workload_identity.is_some())
        });
    if azure_wi {
        volumes.push(token_volume(
            "azure-token",
            Some(AZURE_TOKEN_AUDIENCE),
            seconds,
        ));
        mounts.push(mount("azure-token", AZURE_TOKEN_DIR, true));
        env_vars.push(env(
            "AZURE_FEDERATED_TOKEN_FILE",
            format!("{AZURE_TOKEN_DIR}/token"),
        ));
    }

    let container = Container {
        name: RUNNER_CONTAINER.into(),
        image: Some(input.config.runner_image.clone()),
        image_pull_policy: input.config.runner_image_pull_policy.clone(),
        command: Some(input.config.runner_command.clone()),
        args: Some(vec!["cluster".into()]),
        env: Some(env_vars),
        resources: Some(resources(
            template.resources.as_ref(),
            &input.config.runner_resources,
        )),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUNNER_UID),
            run_as_group: Some(RUNNER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };

    Ok(Pod {
        metadata,
        spec: Some(PodSpec {
            service_account_name: Some(names::run_identity(run_name)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(template.active_deadline_seconds),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUNNER_UID),
                run_as_group: Some(RUNNER_UID),
                fs_group: Some(RUNNER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            node_selector: (!template.node_selector.is_empty())
                .then(|| template.node_selector.clone()),
            tolerations: (!template.tolerations.is_empty()).then(|| template.tolerations.clone()),
            affinity: template.affinity.clone(),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_ports() {
        assert_eq!(url_port("https://s3.example.com"), 443);
        assert_eq!(url_port("https://s3.example.com:9000/x"), 9000);
        assert_eq!(url_port("http://127.0.0.1:10000/devstoreaccount1"), 10000);
        assert_eq!(url_port("http://[::1]/"), 80);
        assert_eq!(url_port("http://[::1]:8080/"), 8080);
    }
}
