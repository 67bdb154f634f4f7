//! The pure builders of a run's objects, over YAML fixtures: the pod meets every
//! rule of the Pod Security "restricted" level, the Role grants exactly what the
//! run needs, everything is owned by the run, the tenant's knobs are carried
//! over, and nothing secret is in any object.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ferry_crds::{ConnectorRun, ConnectorSpec};
use ferry_operator::config::Config;
use ferry_operator::run::build::{RunInput, RunObjects, build};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use support::*;

fn spec(yaml: &str) -> ConnectorSpec {
    connector(yaml).spec
}

fn run() -> ConnectorRun {
    let mut r = run_of("sales-29923860", "sales");
    r.metadata.uid = Some("0b6f7c2e-uid".into());
    r
}

fn objects(spec: &ConnectorSpec, attempt: i32) -> RunObjects {
    build(RunInput {
        manifest_anchor: None,
        run: &run(),
        spec,
        attempt,
        part: Default::default(),
        tenant_region: Some("eu-west-1"),
        config: &Config::default(),
    })
    .expect("builds")
}

/// The runner container's environment: name to value.
fn env_of(ps: &k8s_openapi::api::core::v1::PodSpec) -> std::collections::BTreeMap<&str, String> {
    ps.containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
        .collect()
}

/// The run's objects for `spec` under the operator's `config` (attempt 1, a
/// tenant in eu-west-1).
fn built(spec: &ConnectorSpec, config: &Config) -> RunObjects {
    build(RunInput {
        manifest_anchor: None,
        run: &run(),
        spec,
        attempt: 1,
        part: Default::default(),
        tenant_region: Some("eu-west-1"),
        config,
    })
    .expect("builds")
}

/// An operator configured with the platform's Vault (JWT auth at `jwt-k8s`),
/// inside the cluster when `in_cluster` says where its pods are.
fn vault_config(in_cluster: Option<ferry_operator::config::VaultPods>) -> Config {
    Config {
        vault: Some(ferry_operator::config::VaultConfig {
            addr: "https://vault.platform.example:8200".into(),
            auth_mount: "jwt-k8s".into(),
            audience: "vault".into(),
            role: "ferry-{namespace}".into(),
            in_cluster,
        }),
        ..Config::default()
    }
}

/// The service-account token projected in the pod's volume `name`.
fn projected_token<'a>(
    ps: &'a k8s_openapi::api::core::v1::PodSpec,
    name: &str,
) -> &'a k8s_openapi::api::core::v1::ServiceAccountTokenProjection {
    let volume = ps
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == name)
        .unwrap();
    volume.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap()
}

/// Each check of the Pod Security Standards "restricted" profile (v1.32), plus
/// the baseline checks it includes. Returns the rules broken.
fn restricted_violations(pod: &Pod) -> Vec<String> {
    let mut v = Vec::new();
    let spec = pod.spec.as_ref().unwrap();
    let psc = spec.security_context.clone().unwrap_or_default();
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        v.push("host namespaces".into());
    }
    for vol in spec.volumes.iter().flatten() {
        let allowed = vol.config_map.is_some()
            || vol.csi.is_some()
            || vol.downward_api.is_some()
            || vol.empty_dir.is_some()
            || vol.ephemeral.is_some()
            || vol.persistent_volume_claim.is_some()
            || vol.projected.is_some()
            || vol.secret.is_some();
        if !allowed {
            v.push(format!("volume type of {}", vol.name));
        }
    }
    if psc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        v.push("sysctls".into());
    }
    let pod_seccomp = psc.seccomp_profile.as_ref().map(|s| s.type_.as_str());
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in all {
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            v.push(format!("{}: privileged", c.name));
        }
        if c.ports
            .iter()
            .flatten()
            .any(|p| p.host_port.unwrap_or(0) != 0)
        {
            v.push(format!("{}: hostPort", c.name));
        }
        if sc.proc_mount.as_deref().is_some_and(|p| p != "Default") {
            v.push(format!("{}: procMount", c.name));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!(
                "{}: allowPrivilegeEscalation must be false",
                c.name
            ));
        }
        let non_root = sc.run_as_non_root.or(psc.run_as_non_root);
        if non_root != Some(true) {
            v.push(format!("{}: runAsNonRoot must be true", c.name));
        }
        if sc.run_as_user.or(psc.run_as_user) == Some(0) {
            v.push(format!("{}: runAsUser 0", c.name));
        }
        let seccomp = sc
            .seccomp_profile
            .as_ref()
            .map(|s| s.type_.as_str())
            .or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            v.push(format!("{}: seccompProfile", c.name));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            v.push(format!("{}: capabilities must drop ALL", c.name));
        }
        if caps.add.iter().flatten().any(|a| a != "NET_BIND_SERVICE") {
            v.push(format!("{}: capabilities added", c.name));
        }
    }
    v
}

#[test]
fn the_pod_meets_the_restricted_level_and_hardening_beyond_it() {
    let o = objects(&spec(CONNECTOR), 1);
    assert_eq!(restricted_violations(&o.pod), Vec::<String>::new());
    let ps = o.pod.spec.as_ref().unwrap();
    let c = &ps.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(ps.automount_service_account_token, Some(false));
    assert_eq!(ps.restart_policy.as_deref(), Some("Never"));
    assert_eq!(ps.active_deadline_seconds, Some(3600));
    assert_eq!(ps.enable_service_links, Some(false));
    assert_eq!(
        ps.service_account_name.as_deref(),
        Some("ferry-run-sales-29923860")
    );
    let scratch = ps
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "scratch")
        .unwrap();
    assert_eq!(
        scratch.empty_dir.as_ref().unwrap().medium.as_deref(),
        Some("Memory")
    );
    let api = ps
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "kube-api-access")
        .unwrap();
    let token = api.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(
        token.expiration_seconds,
        Some(3720),
        "expires shortly after the run's deadline"
    );
    assert_eq!(
        o.pod.metadata.annotations.as_ref().unwrap()["sidecar.istio.io/inject"],
        "false"
    );
}

#[test]
fn the_restricted_check_itself_catches_violations() {
    let mut pod = objects(&spec(CONNECTOR), 1).pod;
    let ps = pod.spec.as_mut().unwrap();
    ps.host_network = Some(true);
    let sc = ps.containers[0].security_context.as_mut().unwrap();
    sc.allow_privilege_escalation = None;
    sc.capabilities = None;
    sc.run_as_non_root = None;
    ps.security_context.as_mut().unwrap().run_as_non_root = None;
    assert_eq!(
        restricted_violations(&pod).len(),
        4,
        "{:?}",
        restricted_violations(&pod)
    );
}

#[test]
fn the_role_grants_exactly_what_the_run_needs() {
    let o = objects(&spec(CONNECTOR), 1);
    let rules = serde_json::to_value(o.role.rules.as_ref().unwrap()).unwrap();
    assert_eq!(
        rules,
        serde_json::json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["acme-kek", "bronze-writer", "s3-reader"]},
            {"apiGroups": ["ferry.dev"], "resources": ["connectorruns"], "verbs": ["get"], "resourceNames": ["sales-29923860"]},
            {"apiGroups": ["ferry.dev"], "resources": ["connectorruns/status"], "verbs": ["patch"], "resourceNames": ["sales-29923860"]},
            {"apiGroups": ["ferry.dev"], "resources": ["connectors"], "verbs": ["get"], "resourceNames": ["sales"]},
        ])
    );
    let text = serde_json::to_string(&o.role).unwrap();
    assert!(!text.contains('*'), "no wildcard anywhere");
    // A manifest signing key is one more Secret the run may read, by name.
    let signed = CONNECTOR.replace(
        "secretRef: {name: acme-kek}",
        "secretRef: {name: acme-kek}}, signingKeyRef: {secretRef: {name: acme-records}",
    );
    let o2 = objects(&spec(&signed), 1);
    let rules = serde_json::to_value(o2.role.rules.as_ref().unwrap()).unwrap();
    assert_eq!(
        rules[0]["resourceNames"],
        serde_json::json!(["acme-kek", "acme-records", "bronze-writer", "s3-reader"])
    );
    let rb = &o.role_binding;
    assert_eq!(rb.role_ref.kind, "Role");
    assert_eq!(rb.role_ref.name, "ferry-run-sales-29923860");
    let subject = &rb.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", "ferry-run-sales-29923860", Some(NS))
    );
}

#[test]
fn workload_identity_needs_no_secret_read_but_a_projected_cloud_token() {
    let s = spec(&CONNECTOR.replace(
        "credentials: {secretRef: {name: s3-reader}}",
        "credentials: {webIdentity: {roleArn: 'arn:aws:iam::123456789012:role/reader'}}",
    ));
    let o = objects(&s, 1);
    let secrets = &o.role.rules.as_ref().unwrap()[0];
    assert_eq!(
        secrets.resource_names.as_ref().unwrap(),
        &["acme-kek", "bronze-writer"]
    );
    let ps = o.pod.spec.as_ref().unwrap();
    let token = projected_token(ps, "aws-token");
    assert_eq!(token.audience.as_deref(), Some("sts.amazonaws.com"));
    let env = ps.containers[0].env.as_ref().unwrap();
    assert!(env.iter().any(|e| e.name == "AWS_WEB_IDENTITY_TOKEN_FILE"
        && e.value.as_deref() == Some("/var/run/secrets/ferry.dev/aws/token")));
    // The file the runner reads (without the variable too) is where the token
    // is projected.
    let mounted = ps.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "aws-token")
        .unwrap();
    assert_eq!(
        format!("{}/{}", mounted.mount_path, token.path),
        ferry_crds::contract::paths::AWS_TOKEN_FILE
    );
    assert!(
        env.iter()
            .any(|e| e.name == "FERRY_TENANT_REGION" && e.value.as_deref() == Some("eu-west-1"))
    );
}

/// The STS endpoint the runner sends its token to is the operator's, passed in
/// the pod's environment, and its port is the only extra one the run may reach.
#[test]
fn the_sts_endpoint_comes_from_the_operators_configuration() {
    let s = spec(&CONNECTOR.replace(
        "credentials: {secretRef: {name: s3-reader}}",
        "credentials: {webIdentity: {roleArn: 'arn:aws:iam::123456789012:role/reader'}}",
    ));
    let config = Config {
        sts_endpoint: Some("https://sts.internal.example.com:8443".into()),
        ..Config::default()
    };
    let o = build(RunInput {
        manifest_anchor: None,
        run: &run(),
        spec: &s,
        attempt: 1,
        part: Default::default(),
        tenant_region: None,
        config: &config,
    })
    .unwrap();
    let env = o.pod.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == ferry_crds::contract::env::STS_ENDPOINT
                && e.value.as_deref() == Some("https://sts.internal.example.com:8443"))
    );
    let ports = serde_json::to_string(&o.network_policy.spec).unwrap();
    assert!(ports.contains("8443"), "{ports}");
    // Without web identity the runner is told nothing about STS.
    let plain = build(RunInput {
        manifest_anchor: None,
        run: &run(),
        spec: &spec(CONNECTOR),
        attempt: 1,
        part: Default::default(),
        tenant_region: None,
        config: &config,
    })
    .unwrap();
    let env = plain.pod.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        !env.iter()
            .any(|e| e.name == ferry_crds::contract::env::STS_ENDPOINT)
    );
}

#[test]
fn every_object_is_owned_by_the_run_and_labelled() {
    let RunObjects {
        service_account,
        role,
        role_binding,
        network_policy,
        pod,
    } = objects(&spec(CONNECTOR), 2);
    let metas = [
        &service_account.metadata,
        &role.metadata,
        &role_binding.metadata,
        &network_policy.metadata,
        &pod.metadata,
    ];
    for m in metas {
        let owners = m.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "ConnectorRun");
        assert_eq!(owners[0].uid, "0b6f7c2e-uid");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(m.namespace.as_deref(), Some(NS));
        assert_eq!(
            m.labels.as_ref().unwrap()["ferry.dev/run"],
            "sales-29923860"
        );
    }
    assert_eq!(pod.metadata.name.as_deref(), Some("sales-29923860-2"));
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["ferry.dev/attempt"],
        "2"
    );
}

#[test]
fn a_run_without_uid_cannot_be_built() {
    let mut r = run();
    r.metadata.uid = None;
    let s = spec(CONNECTOR);
    assert!(
        build(RunInput {
            manifest_anchor: None,
            run: &r,
            spec: &s,
            attempt: 1,
            part: Default::default(),
            tenant_region: None,
            config: &Config::default()
        })
        .is_err()
    );
}

/// Attack (closed by default): with no network setting at all, a run's
/// policy once let the API server's ports through to every address (the
/// metadata service on 443 included: rules are ORed) and the endpoints'
/// ports to the cluster's pod and service ranges. Now private ranges are
/// excepted and, no API server address being known, its ports open nowhere.
#[test]
fn the_network_policy_denies_ingress_and_limits_egress() {
    let s = spec(&CONNECTOR.replace(
        "{azureBlob: {account: acmebronze,",
        "{azureBlob: {endpoint: 'https://blob.example.com:8443', account: acmebronze,",
    ));
    let np = objects(&s, 1).network_policy;
    let spec = np.spec.unwrap();
    assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
    assert_eq!(spec.ingress.unwrap().len(), 0);
    let egress = serde_json::to_value(spec.egress.unwrap()).unwrap();
    let outside = serde_json::json!([
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["0.0.0.0/8", "10.0.0.0/8", "100.100.100.200/32", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"]}},
        {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fd00:ec2::254/128", "fe80::/10"]}},
    ]);
    assert_eq!(
        egress,
        serde_json::json!([
            {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
             "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                     "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]},
            // No API server address known (none configured, none read): no
            // rule for its ports at all, never one to anywhere.
            {"ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 8443}], "to": outside},
        ])
    );
    assert_eq!(
        spec.pod_selector.unwrap().match_labels.unwrap()["ferry.dev/run"],
        "sales-29923860"
    );
}

/// Attack: a Connector points at the cloud metadata service or at a pod,
/// service or node of the cluster (SSRF). The run's NetworkPolicy lets it
/// reach the endpoints' ports outside link-local, metadata, private (but the
/// ranges the platform allows) and denied networks only, the API server only
/// where it is, DNS only at the cluster's DNS pods; the runner is told the
/// denied and allowed networks to check every address it connects to.
#[test]
fn the_network_policy_keeps_a_run_from_metadata_and_cluster_addresses() {
    let config = Config {
        network: ferry_operator::config::RunNetwork {
            denied_cidrs: vec!["203.0.113.0/24".into(), "fd10::/64".into()],
            allowed_cidrs: vec!["10.20.0.0/24".into()],
            api_server_cidrs: vec!["192.0.2.10/32".into()],
            ..Default::default()
        },
        ..Config::default()
    };
    let o = build(RunInput {
        manifest_anchor: None,
        run: &run(),
        spec: &spec(CONNECTOR),
        attempt: 1,
        part: Default::default(),
        tenant_region: None,
        config: &config,
    })
    .unwrap();
    let egress = serde_json::to_value(o.network_policy.spec.unwrap().egress.unwrap()).unwrap();
    assert_eq!(
        egress[1]["to"],
        serde_json::json!([{"ipBlock": {"cidr": "192.0.2.10/32"}}])
    );
    assert_eq!(
        egress[2]["to"],
        serde_json::json!([
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["0.0.0.0/8", "10.0.0.0/8", "100.100.100.200/32", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16", "203.0.113.0/24"]}},
            {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fd00:ec2::254/128", "fd10::/64", "fe80::/10"]}},
            // The private range the platform allows (an on-premises server).
            {"ipBlock": {"cidr": "10.20.0.0/24"}},
        ])
    );
    assert!(
        egress
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("to").is_some()),
        "with the API server's address configured, no rule lets a run anywhere"
    );
    let env = o.pod.spec.unwrap().containers[0].env.clone().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == ferry_crds::contract::env::DENIED_NETWORKS
                && e.value.as_deref() == Some("203.0.113.0/24,fd10::/64"))
    );
    assert!(
        env.iter()
            .any(|e| e.name == ferry_crds::contract::env::ALLOWED_NETWORKS
                && e.value.as_deref() == Some("10.20.0.0/24"))
    );
}

#[test]
fn a_lineage_sink_is_passed_to_the_runner_and_let_through_the_network_policy() {
    let s = spec(CONNECTOR);
    let config = Config {
        lineage_url: Some("https://lineage.example.com:5443/api/v1/lineage".into()),
        ..Config::default()
    };
    let o = built(&s, &config);
    let env = o.pod.spec.unwrap().containers[0].env.clone().unwrap();
    assert!(env.iter().any(|e| e.name == "FERRY_LINEAGE_URL"
        && e.value.as_deref() == Some("https://lineage.example.com:5443/api/v1/lineage")));
    let egress = serde_json::to_value(o.network_policy.spec.unwrap().egress.unwrap()).unwrap();
    let endpoints = egress
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0")
        .unwrap();
    assert!(
        endpoints["ports"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"protocol": "TCP", "port": 5443}))
    );
    // Without a sink, no variable.
    let env = objects(&s, 1).pod.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(!env.iter().any(|e| e.name == "FERRY_LINEAGE_URL"));
}

#[test]
fn the_tenants_knobs_are_carried_over_but_not_the_image() {
    let s = spec(&format!(
        "{CONNECTOR}  run:
    activeDeadlineSeconds: 120
    resources: {{limits: {{memory: 1Gi}}}}
    nodeSelector: {{pool: transfers}}
    tolerations: [{{key: dedicated, operator: Equal, value: ferry, effect: NoSchedule}}]
    affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: [{{matchExpressions: [{{key: zone, operator: In, values: [a]}}]}}]}}}}}}
    podAnnotations: {{team: data, sidecar.istio.io/inject: 'true'}}
    podLabels: {{team: data, ferry.dev/run: spoofed}}
"
    ));
    let pod = objects(&s, 1).pod;
    let ps = pod.spec.as_ref().unwrap();
    assert_eq!(ps.active_deadline_seconds, Some(120));
    assert_eq!(ps.node_selector.as_ref().unwrap()["pool"], "transfers");
    assert_eq!(
        ps.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    assert!(ps.affinity.is_some());
    let limits = ps.containers[0]
        .resources
        .as_ref()
        .unwrap()
        .limits
        .as_ref()
        .unwrap();
    assert_eq!(limits["memory"].0, "1Gi");
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "data");
    assert_eq!(
        labels["ferry.dev/run"], "sales-29923860",
        "Ferry's labels win"
    );
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["team"], "data");
    assert_eq!(
        annotations["sidecar.istio.io/inject"], "false",
        "Ferry's annotations win: a sidecar would break Pod Security restricted"
    );
    // The default requests stay where the Connector names only a limit.
    let requests = ps.containers[0]
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap();
    assert_eq!(requests["cpu"].0, "250m");
    assert_eq!(
        ps.containers[0].image.as_deref(),
        Some(Config::default().runner_image.as_str())
    );
    assert_eq!(ps.containers[0].args.as_ref().unwrap(), &["cluster"]);
}

#[test]
fn requests_above_the_default_limit_raise_it() {
    let s = spec(&format!(
        "{CONNECTOR}  run:\n    resources: {{requests: {{memory: 2Gi}}}}\n"
    ));
    let pod = objects(&s, 1).pod;
    let r = pod.spec.unwrap().containers[0].resources.clone().unwrap();
    assert_eq!(r.requests.unwrap()["memory"].0, "2Gi");
    assert_eq!(
        r.limits.unwrap()["memory"].0,
        "2Gi",
        "never a limit below the request"
    );
}

#[test]
fn nothing_secret_is_in_any_object() {
    let RunObjects {
        service_account,
        role,
        role_binding,
        network_policy,
        pod,
    } = objects(&spec(CONNECTOR), 1);
    let all = [
        serde_json::to_string(&service_account).unwrap(),
        serde_json::to_string(&role).unwrap(),
        serde_json::to_string(&role_binding).unwrap(),
        serde_json::to_string(&network_policy).unwrap(),
        serde_json::to_string(&pod).unwrap(),
    ]
    .join("\n");
    for canary in CANARIES {
        assert!(!all.contains(canary));
    }
    let ps = pod.spec.unwrap();
    let c = &ps.containers[0];
    assert!(
        c.env.iter().flatten().all(|e| e
            .value_from
            .as_ref()
            .is_none_or(|v| v.secret_key_ref.is_none())),
        "no Secret through env"
    );
    assert!(c.env_from.is_none());
    assert!(
        ps.volumes.iter().flatten().all(|v| v.secret.is_none()),
        "no Secret volume: the runner reads them through the API"
    );
}

/// Credentials in the platform's Vault: no Secret read at all, a projected
/// token for Vault's audience, the role of the run's namespace, and Vault's
/// port in the egress rules. The operator itself reads nothing from Vault.
#[test]
fn vault_credentials_need_no_secret_read_but_a_token_for_vault() {
    let s = spec(&CONNECTOR.replace(
        "credentials: {secretRef: {name: s3-reader}}",
        "credentials: {vault: {path: acme/s3-reader}}",
    ));
    let config = vault_config(None);
    let o = built(&s, &config);
    let secrets = &o.role.rules.as_ref().unwrap()[0];
    assert_eq!(
        secrets.resource_names.as_ref().unwrap(),
        &["acme-kek", "bronze-writer"],
        "the Vault secret is not a Secret the run may read"
    );
    let ps = o.pod.spec.as_ref().unwrap();
    let token = projected_token(ps, "vault-token");
    assert_eq!(token.audience.as_deref(), Some("vault"));
    assert!(token.expiration_seconds.unwrap() <= 3600 + 600);
    let env = env_of(ps);
    assert_eq!(
        env["FERRY_VAULT_ADDR"],
        "https://vault.platform.example:8200"
    );
    assert_eq!(env["FERRY_VAULT_AUTH_MOUNT"], "jwt-k8s");
    assert_eq!(env["FERRY_VAULT_ROLE"], format!("ferry-{NS}"));
    assert_eq!(
        env["FERRY_VAULT_TOKEN_FILE"],
        ferry_crds::contract::paths::VAULT_TOKEN_FILE
    );
    let egress = serde_json::to_string(&o.network_policy.spec.as_ref().unwrap().egress).unwrap();
    assert!(egress.contains("8200"), "{egress}");
    // No token for Vault when no end keeps its credentials there.
    let plain = built(&spec(CONNECTOR), &config);
    assert!(!serde_json::to_string(&plain.pod).unwrap().contains("vault"));
}

/// A KEK in Vault's Transit engine: the run reads no KEK Secret (its Role
/// names none), gets a token for Vault's audience, and may reach Vault.
#[test]
fn a_kek_in_transit_needs_no_kek_secret_but_a_token_for_vault() {
    let s = spec(&CONNECTOR.replace(
        "encryption: {keyRef: {secretRef: {name: acme-kek}}}",
        "encryption: {kms: {vaultTransit: {key: acme}}}",
    ));
    let config = vault_config(None);
    let o = built(&s, &config);
    let secrets = &o.role.rules.as_ref().unwrap()[0];
    assert_eq!(
        secrets.resource_names.as_ref().unwrap(),
        &["bronze-writer", "s3-reader"],
        "the ends' credentials, and no KEK Secret"
    );
    let ps = o.pod.spec.as_ref().unwrap();
    let token = projected_token(ps, "vault-token");
    assert_eq!(token.audience.as_deref(), Some("vault"));
    let egress = serde_json::to_string(&o.network_policy.spec.as_ref().unwrap().egress).unwrap();
    assert!(egress.contains("8200"), "{egress}");
}

/// Credentials in AWS Secrets Manager and the KEK in AWS KMS: no Secret read
/// for either, the run's AWS token projected (one, for both roles), STS and
/// the platform's AWS endpoint reachable and named in its environment.
#[test]
fn aws_secrets_manager_and_kms_need_no_secret_but_the_runs_aws_token() {
    let role = "webIdentity: {roleArn: 'arn:aws:iam::123456789012:role/ferry-acme'}";
    let s = spec(
        &CONNECTOR
            .replace(
                "credentials: {secretRef: {name: s3-reader}}",
                &format!("credentials: {{awsSecretsManager: {{secretId: acme/s3, region: eu-west-1, {role}}}}}"),
            )
            .replace(
                "encryption: {keyRef: {secretRef: {name: acme-kek}}}",
                &format!("encryption: {{kms: {{awsKms: {{keyId: alias/acme, region: eu-west-1, {role}}}}}}}"),
            ),
    );
    let config = Config {
        sts_endpoint: Some("https://sts.platform.example:8443".into()),
        aws_endpoint: Some("https://aws.platform.example:9443".into()),
        ..Config::default()
    };
    let o = built(&s, &config);
    let secrets = &o.role.rules.as_ref().unwrap()[0];
    assert_eq!(secrets.resource_names.as_ref().unwrap(), &["bronze-writer"]);
    let ps = o.pod.spec.as_ref().unwrap();
    let token = projected_token(ps, "aws-token");
    assert_eq!(
        token.audience.as_deref(),
        Some(ferry_crds::AWS_TOKEN_AUDIENCE)
    );
    let env = env_of(ps);
    assert_eq!(
        env["FERRY_AWS_ENDPOINT"],
        "https://aws.platform.example:9443"
    );
    assert_eq!(
        env["FERRY_STS_ENDPOINT"],
        "https://sts.platform.example:8443"
    );
    assert_eq!(
        env["AWS_WEB_IDENTITY_TOKEN_FILE"],
        ferry_crds::contract::paths::AWS_TOKEN_FILE
    );
    let egress = serde_json::to_string(&o.network_policy.spec.as_ref().unwrap().egress).unwrap();
    assert!(
        egress.contains("8443") && egress.contains("9443"),
        "{egress}"
    );
    // Neither variable for a Connector that calls no AWS API.
    let plain = built(&spec(CONNECTOR), &config);
    let pod = serde_json::to_string(&plain.pod).unwrap();
    assert!(
        !pod.contains("FERRY_AWS_ENDPOINT") && !pod.contains("aws-token"),
        "{pod}"
    );
}

/// Vault inside the cluster: its Service address is in the denied networks,
/// so the run's NetworkPolicy opens Vault's port to Vault's pods only (by
/// namespace and labels), and nowhere else: not to any pod of the cluster
/// that listens on that port, nor outside.
#[test]
fn an_in_cluster_vault_is_reached_at_its_pods_only() {
    let s = spec(&CONNECTOR.replace(
        "credentials: {secretRef: {name: s3-reader}}",
        "credentials: {vault: {path: acme/s3-reader}}",
    ));
    let config = vault_config(Some(ferry_operator::config::VaultPods {
        namespace: "vault".into(),
        pod_labels: [("app.kubernetes.io/name".to_string(), "vault".to_string())].into(),
    }));
    let o = built(&s, &config);
    let egress = o
        .network_policy
        .spec
        .as_ref()
        .unwrap()
        .egress
        .clone()
        .unwrap();
    let on_8200: Vec<_> = egress
        .iter()
        .filter(|r| {
            r.ports
                .iter()
                .flatten()
                .any(|p| p.port == Some(IntOrString::Int(8200)))
        })
        .collect();
    assert_eq!(on_8200.len(), 1, "{egress:?}");
    let rule = on_8200[0];
    assert_eq!(rule.ports.as_ref().unwrap().len(), 1, "Vault's port alone");
    let peers = rule.to.as_ref().unwrap();
    assert_eq!(peers.len(), 1);
    let ns = peers[0].namespace_selector.as_ref().unwrap();
    assert_eq!(
        ns.match_labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
        "vault"
    );
    assert_eq!(
        peers[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app.kubernetes.io/name"],
        "vault"
    );
    assert!(peers[0].ip_block.is_none());
    // A Connector that does not use Vault gets no such rule.
    let plain = built(&spec(CONNECTOR), &config);
    assert!(
        !serde_json::to_string(&plain.network_policy)
            .unwrap()
            .contains("8200")
    );
}
