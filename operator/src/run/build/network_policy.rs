//! The run's NetworkPolicy: no ingress at all; egress only to the cluster's
//! DNS, the API server at its own addresses, and the endpoints' ports
//! anywhere but the denied and (unless allowed) private networks.

use std::collections::BTreeMap;

use ferry_crds::{ConnectorSpec, EndpointKind};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ValidatedRun;
use crate::config::RunNetwork;
use crate::names;

/// TCP port of an endpoint URL (already checked by the policy), or the
/// scheme's default, as the clients' parser reads it.
pub(super) fn url_port(url: &str) -> i32 {
    ferry_crds::check_endpoint_url(url, true).map_or(443, |u| i32::from(u.port()))
}

/// Whether either end assumes an AWS role with the run's token.
pub(super) fn uses_web_identity(spec: &ConnectorSpec) -> bool {
    !ferry_crds::aws_web_identities(spec).is_empty()
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

/// Every TCP port the runner connects to outside the cluster: the endpoints,
/// the lineage sink, the platform's STS, Secrets Manager, KMS and Vault.
fn egress_ports(run: &ValidatedRun<'_>) -> Vec<i32> {
    let config = run.input.config;
    let mut tcp: Vec<i32> = endpoint_ports(run.input.spec);
    if let Some(url) = &config.lineage_url {
        tcp.push(url_port(url));
    }
    if uses_web_identity(run.input.spec) {
        tcp.push(config.sts_endpoint.as_deref().map_or(443, url_port));
    }
    if ferry_crds::uses_aws_apis(run.input.spec) {
        tcp.push(config.aws_endpoint.as_deref().map_or(443, url_port));
    }
    if let Some(vault) = &config.vault
        && ferry_crds::uses_vault(run.input.spec)
        && vault.in_cluster.is_none()
    {
        tcp.push(url_port(&vault.addr));
    }
    tcp.sort_unstable();
    tcp.dedup();
    tcp
}

fn port(protocol: &str, port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.to_string()),
        port: Some(IntOrString::Int(port)),
        end_port: None,
    }
}

/// No ingress at all; egress only to DNS, the API server and the endpoints'
/// ports.
pub fn network_policy(run: &ValidatedRun<'_>) -> NetworkPolicy {
    let config = run.input.config;
    let mut api_ports = config.api_server_ports.clone();
    api_ports.sort_unstable();
    api_ports.dedup();
    NetworkPolicy {
        metadata: run.meta(run.identity_name()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    names::LABEL_RUN.to_string(),
                    names::label_value(run.name),
                )])),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![]),
            egress: Some(
                [
                    // DNS, to the cluster's DNS pods only.
                    Some(NetworkPolicyEgressRule {
                        ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
                        to: Some(vec![dns_peer(&config.network)]),
                    }),
                    // The API server (the runner reads its run and Secrets
                    // there), at its own addresses only: none known, none.
                    ip_blocks(&config.network.api_server_cidrs).map(|to| NetworkPolicyEgressRule {
                        ports: Some(api_ports.into_iter().map(|p| port("TCP", p)).collect()),
                        to: Some(to),
                    }),
                    // The endpoints: anywhere a run may reach.
                    Some(NetworkPolicyEgressRule {
                        ports: Some(
                            egress_ports(run)
                                .into_iter()
                                .map(|p| port("TCP", p))
                                .collect(),
                        ),
                        to: Some(outside_denied(&config.network)),
                    }),
                ]
                .into_iter()
                .flatten()
                .chain(vault_in_cluster(run))
                .collect(),
            ),
        }),
    }
}

/// Vault inside the cluster, when the run uses it: its pods only, on its port.
fn vault_in_cluster(run: &ValidatedRun<'_>) -> Option<NetworkPolicyEgressRule> {
    let vault = run.input.config.vault.as_ref()?;
    let pods = vault.in_cluster.as_ref()?;
    if !ferry_crds::uses_vault(run.input.spec) {
        return None;
    }
    Some(NetworkPolicyEgressRule {
        ports: Some(vec![port("TCP", url_port(&vault.addr))]),
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    pods.namespace.clone(),
                )])),
                match_expressions: None,
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(pods.pod_labels.clone()),
                match_expressions: None,
            }),
            ip_block: None,
        }]),
    })
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

/// Peers for exactly these CIDRs; `None` when there are none (an egress rule
/// with no peers would let a run anywhere).
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

/// Every address a run may reach ([`ferry_crds::network::Reach::blocks`]):
/// everywhere but link-local, the cloud metadata addresses, the private ranges
/// and the denied networks; then each allowed private range but the denied
/// networks inside it. Settings that do not parse were refused when the
/// operator started ([`RunNetwork::reach`]).
fn outside_denied(network: &RunNetwork) -> Vec<NetworkPolicyPeer> {
    network
        .reach()
        .unwrap_or_default()
        .blocks()
        .into_iter()
        .map(|b| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: b.cidr,
                except: (!b.except.is_empty()).then_some(b.except),
            }),
            ..Default::default()
        })
        .collect()
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
