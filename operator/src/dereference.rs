//! Client required: everything a run's checks look at — its Connector, the
//! tenant's namespace, and which keys its Secrets hold (never their values).

use std::collections::BTreeSet;

use ferry_crds::{
    ALLOWED_SENSITIVITY_ANNOTATION, Connector, ConnectorSpec, REGION_LABEL, secret_names,
    secret_usable,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
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
