//! The runner's resources: the operator's defaults and the Connector's own,
//! held under the operator's caps by the policy.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::pod_bounds::quantity_value;

/// The runner's resources: the operator's defaults, each request and limit the
/// Connector names replacing the default one (the policy holds them under the
/// operator's caps). A Connector that names only requests still gets the
/// default limits, raised to its requests where they are lower, so no run is
/// unbounded and no pod is invalid.
pub fn resources(
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
