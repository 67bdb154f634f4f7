//! No client required: what a Connector's `run` may ask of its pod, within
//! bounds the platform team sets (docs/operator.md, "Pod settings"). A tenant
//! annotation can switch on a sidecar injector or an unconfined AppArmor
//! profile, a tenant label can make other NetworkPolicies select the run, a
//! toleration can place the run on control-plane nodes, and resources are
//! unbounded: so each key is allow-listed, and resources are capped.

use std::collections::BTreeMap;

use ferry_crds::RunTemplate;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The platform team's bounds on the pod settings of a Connector.
#[derive(Debug, Clone, PartialEq)]
pub struct PodBounds {
    /// Annotation keys a Connector may set on its pods. An entry ending in `*`
    /// allows every key that starts with the rest of it.
    pub annotation_keys: Vec<String>,
    /// Label keys a Connector may set on its pods (same form).
    pub label_keys: Vec<String>,
    /// Node label keys a Connector may select nodes by (nodeSelector and node
    /// affinity terms).
    pub node_label_keys: Vec<String>,
    /// Taint keys a Connector may tolerate. A toleration without a key
    /// (tolerating every taint) needs `*` here.
    pub toleration_keys: Vec<String>,
    /// The most a Connector may request or limit, per resource (`cpu`,
    /// `memory`, `ephemeral-storage`); a resource not named here may not be
    /// asked for at all.
    pub max_resources: BTreeMap<String, Quantity>,
    /// The most pods a Connector may spread one run over (`parallelism`):
    /// its resources are asked for once per shard.
    pub max_parallelism: i32,
}

impl Default for PodBounds {
    fn default() -> Self {
        let q = |s: &str| Quantity(s.to_string());
        Self {
            annotation_keys: Vec::new(),
            label_keys: Vec::new(),
            node_label_keys: [
                "kubernetes.io/arch",
                "kubernetes.io/os",
                "topology.kubernetes.io/region",
                "topology.kubernetes.io/zone",
                "node.kubernetes.io/instance-type",
            ]
            .map(String::from)
            .to_vec(),
            toleration_keys: Vec::new(),
            max_resources: BTreeMap::from([
                ("cpu".to_string(), q("4")),
                ("memory".to_string(), q("8Gi")),
                ("ephemeral-storage".to_string(), q("1Gi")),
            ]),
            max_parallelism: 8,
        }
    }
}

/// Whether `key` is allowed by `patterns` (exact, or a prefix ending in `*`).
pub fn key_allowed(patterns: &[String], key: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => p == key,
    })
}

/// The value of a Kubernetes quantity in base units (cores, bytes), or `None`
/// when it is not one.
pub fn quantity_value(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

/// Every way `run` goes beyond `bounds`, as messages.
pub fn breaches(run: &RunTemplate, bounds: &PodBounds) -> Vec<String> {
    let mut out = Vec::new();
    let keyed = [
        (
            "pod annotation",
            run.pod_annotations.keys(),
            &bounds.annotation_keys,
        ),
        ("pod label", run.pod_labels.keys(), &bounds.label_keys),
        (
            "nodeSelector key",
            run.node_selector.keys(),
            &bounds.node_label_keys,
        ),
    ];
    for (what, keys, allowed) in keyed {
        for key in keys.filter(|k| !key_allowed(allowed, k)) {
            out.push(format!("{what} {key:?} is not one this operator allows"));
        }
    }
    toleration_breaches(run, bounds, &mut out);
    node_affinity_breaches(run, bounds, &mut out);
    resource_breaches(run, bounds, &mut out);
    if run.parallelism > bounds.max_parallelism {
        out.push(format!(
            "parallelism {} is above this operator's cap of {}",
            run.parallelism, bounds.max_parallelism
        ));
    }
    out
}

fn toleration_breaches(run: &RunTemplate, bounds: &PodBounds, out: &mut Vec<String>) {
    for t in &run.tolerations {
        let key = t.key.as_deref().unwrap_or("");
        let allowed = if key.is_empty() {
            bounds.toleration_keys.iter().any(|k| k == "*")
        } else {
            key_allowed(&bounds.toleration_keys, key)
        };
        if !allowed {
            let shown = if key.is_empty() { "every taint" } else { key };
            out.push(format!(
                "a toleration of {shown:?} is not one this operator allows"
            ));
        }
    }
}

fn node_affinity_breaches(run: &RunTemplate, bounds: &PodBounds, out: &mut Vec<String>) {
    let Some(na) = run.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()) else {
        return;
    };
    let required = na
        .required_during_scheduling_ignored_during_execution
        .iter()
        .flat_map(|r| r.node_selector_terms.iter());
    let preferred = na
        .preferred_during_scheduling_ignored_during_execution
        .iter()
        .flatten()
        .map(|p| &p.preference);
    for term in required.chain(preferred) {
        for e in term.match_expressions.iter().flatten() {
            if !key_allowed(&bounds.node_label_keys, &e.key) {
                out.push(format!(
                    "node affinity on {:?} is not one this operator allows",
                    e.key
                ));
            }
        }
        if term.match_fields.as_ref().is_some_and(|f| !f.is_empty()) {
            out.push("node affinity by field (a node's name) is not allowed".to_string());
        }
    }
}

fn resource_breaches(run: &RunTemplate, bounds: &PodBounds, out: &mut Vec<String>) {
    let Some(resources) = &run.resources else {
        return;
    };
    let asked = [
        ("request", &resources.requests),
        ("limit", &resources.limits),
    ];
    for (what, map) in asked {
        for (name, q) in map.iter().flatten() {
            let cap = bounds.max_resources.get(name);
            match (quantity_value(&q.0), cap.and_then(|c| quantity_value(&c.0))) {
                (Some(v), Some(max)) if v <= max => {}
                (None, _) => out.push(format!("{name} {what} {:?} is not a quantity", q.0)),
                (_, None) => out.push(format!("{name} may not be asked for")),
                (Some(_), Some(_)) => out.push(format!(
                    "{name} {what} {} is above this operator's cap of {}",
                    q.0,
                    cap.map(|c| c.0.as_str()).unwrap_or_default()
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> RunTemplate {
        serde_saphyr::from_str(yaml).expect("fixture parses")
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_value("250m"), Some(0.25));
        assert_eq!(quantity_value("2"), Some(2.0));
        assert_eq!(quantity_value("512Mi"), Some(512.0 * 1024.0 * 1024.0));
        assert_eq!(quantity_value("1G"), Some(1e9));
        assert_eq!(quantity_value("1e3"), Some(1000.0));
        assert_eq!(quantity_value("lots"), None);
        assert_eq!(quantity_value("1Xi"), None);
    }

    #[test]
    fn nothing_asked_is_within_bounds() {
        assert!(breaches(&RunTemplate::default(), &PodBounds::default()).is_empty());
        let ok = run(
            "{nodeSelector: {kubernetes.io/arch: arm64}, resources: {requests: {cpu: 500m, memory: 1Gi}, limits: {memory: 2Gi}}}",
        );
        assert!(breaches(&ok, &PodBounds::default()).is_empty());
    }

    /// Attack: a tenant uses the pod settings to turn a sidecar injector on,
    /// unconfine AppArmor, be selected by another NetworkPolicy, land on a
    /// control-plane node, or take a node's whole memory.
    #[test]
    fn a_tenant_steering_the_pod_through_its_settings_is_refused() {
        let bounds = PodBounds::default();
        for (yaml, words) in [
            (
                "{podAnnotations: {sidecar.istio.io/inject: 'true'}}",
                "sidecar.istio.io/inject",
            ),
            (
                "{podAnnotations: {container.apparmor.security.beta.kubernetes.io/runner: unconfined}}",
                "apparmor",
            ),
            ("{podLabels: {role: db-client}}", "pod label \"role\""),
            (
                "{tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]}",
                "control-plane",
            ),
            ("{tolerations: [{operator: Exists}]}", "every taint"),
            (
                "{nodeSelector: {node-role.kubernetes.io/control-plane: ''}}",
                "nodeSelector key",
            ),
            (
                "{affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: Exists}]}]}}}}",
                "node affinity",
            ),
            (
                "{affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchFields: [{key: metadata.name, operator: In, values: [cp-1]}]}]}}}}",
                "by field",
            ),
            (
                "{resources: {limits: {memory: 64Gi}}}",
                "above this operator's cap of 8Gi",
            ),
            (
                "{resources: {requests: {nvidia.com/gpu: '1'}}}",
                "may not be asked for",
            ),
            // Each shard asks for the run's resources again.
            (
                "{parallelism: 32}",
                "parallelism 32 is above this operator's cap of 8",
            ),
        ] {
            let found = breaches(&run(yaml), &bounds);
            assert!(found.iter().any(|b| b.contains(words)), "{yaml}: {found:?}");
        }
    }

    #[test]
    fn the_platform_team_can_widen_the_bounds() {
        let bounds = PodBounds {
            annotation_keys: vec!["example.com/*".into()],
            label_keys: vec!["team".into()],
            toleration_keys: vec!["dedicated".into()],
            max_parallelism: 16,
            ..PodBounds::default()
        };
        let ok = run(
            "{podAnnotations: {example.com/cost-centre: '42'}, podLabels: {team: data}, tolerations: [{key: dedicated, operator: Equal, value: ferry, effect: NoSchedule}], parallelism: 16}",
        );
        assert!(breaches(&ok, &bounds).is_empty());
    }
}
