//! Client required: everything a run's checks look at — its Connector, the
//! tenant's namespace, and which keys its Secrets hold (never their values).

use std::collections::BTreeSet;

use ferry_crds::{
    ALLOWED_SENSITIVITY_ANNOTATION, Connector, ConnectorSpec, REGION_LABEL, secret_names,
    secret_usable,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;

use crate::context::Context;
use crate::error::{Error, Step};
use crate::policy::{SecretFacts, SecretKeys, Tenant};

/// The Connector, or `None` when it does not exist.
pub async fn connector(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<Connector>, Error> {
    let api: Api<Connector> = Api::namespaced(ctx.client.clone(), namespace);
    api.get_opt(name)
        .await
        .map_err(|e| Error::kube(Step::Read, "get", "Connector", name, e))
}

/// Where runs reach the API server: the platform's CIDRs when set, else the
/// addresses of the `kubernetes` Service's EndpointSlices (namespace
/// `default`, kept by the API servers themselves), each as a single-address
/// network, sorted. None found is an error: a run's NetworkPolicy never opens
/// the API server's ports to anywhere.
pub async fn api_server_cidrs(ctx: &Context) -> Result<Vec<String>, Error> {
    let configured = &ctx.config.network.api_server_cidrs;
    if !configured.is_empty() {
        return Ok(configured.clone());
    }
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), "default");
    let slices = api
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await
        .map_err(|e| Error::kube(Step::Read, "list", "EndpointSlice", "kubernetes", e))?;
    let cidrs = api_server_addresses(&slices.items);
    if cidrs.is_empty() {
        return Err(Error::ApiServerUnknown);
    }
    Ok(cidrs)
}

/// The addresses of the API server's endpoints in `slices` (those not marked
/// unready), as single-address CIDRs, sorted and without repeats.
pub fn api_server_addresses(slices: &[EndpointSlice]) -> Vec<String> {
    let mut cidrs: Vec<String> = slices
        .iter()
        .filter(|s| matches!(s.address_type.as_str(), "IPv4" | "IPv6"))
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| ferry_crds::network::parse_network(&ip.to_string()))
        .filter_map(Result::ok)
        .map(|n| n.to_string())
        .collect();
    cidrs.sort();
    cidrs.dedup();
    cidrs
}

/// The tenant rules set on the namespace, from the operator's watched index of
/// namespaces (filled before any reconcile starts). A namespace missing from it
/// has no rules: no region and nothing sensitive.
pub fn tenant(ctx: &Context, namespace: &str) -> Tenant {
    let ns = ctx.namespaces.get(&ObjectRef::<Namespace>::new(namespace));
    let meta = ns.map(|n| n.metadata.clone()).unwrap_or_default();
    Tenant {
        namespace: namespace.to_string(),
        region: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(REGION_LABEL))
            .cloned(),
        sensitivity_cap: Tenant::parse_cap(
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(ALLOWED_SENSITIVITY_ANNOTATION))
                .map(String::as_str),
        ),
    }
}

/// For each Secret the spec references, the names of its keys and whether its
/// label and type let Ferry read it, or `None` when it does not exist. The
/// values are dropped at once and never leave this function.
pub async fn secret_keys(
    ctx: &Context,
    namespace: &str,
    spec: &ConnectorSpec,
) -> Result<SecretKeys, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut out = SecretKeys::new();
    for name in secret_names(spec) {
        let secret = api
            .get_opt(&name)
            .await
            .map_err(|e| Error::kube(Step::Read, "get", "Secret", &name, e))?;
        let facts = secret.map(|s| {
            let usable = secret_usable(s.metadata.labels.as_ref(), s.type_.as_deref());
            let mut keys: BTreeSet<String> = s.data.unwrap_or_default().into_keys().collect();
            keys.extend(s.string_data.unwrap_or_default().into_keys());
            SecretFacts { keys, usable }
        });
        out.insert(name, facts);
    }
    Ok(out)
}

#[cfg(test)]
mod api_server_tests {
    use super::*;

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_api_servers_ready_addresses_are_read_from_its_slices() {
        let slices = [
            slice(serde_json::json!({
                "metadata": {"name": "kubernetes"}, "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["192.0.2.11"]},
                    {"addresses": ["192.0.2.10"], "conditions": {"ready": true}},
                    {"addresses": ["192.0.2.12"], "conditions": {"ready": false}},
                    {"addresses": ["192.0.2.10"]},
                ],
            })),
            slice(serde_json::json!({
                "metadata": {"name": "kubernetes-v6"}, "addressType": "IPv6",
                "endpoints": [{"addresses": ["2001:db8::10"]}],
            })),
            slice(serde_json::json!({
                "metadata": {"name": "odd"}, "addressType": "FQDN",
                "endpoints": [{"addresses": ["api.example.com"]}],
            })),
        ];
        assert_eq!(
            api_server_addresses(&slices),
            ["192.0.2.10/32", "192.0.2.11/32", "2001:db8::10/128"]
        );
        assert!(api_server_addresses(&[]).is_empty());
    }
}
