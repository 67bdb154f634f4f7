//! The checks a run must pass before any pod exists (DESIGN.md, "A run, step by
//! step", 1). Pure: the caller has already fetched the namespace and the names of
//! the keys each Secret holds (never their values).

use std::collections::{BTreeMap, BTreeSet};

use ferry_crds::{ConnectorSpec, DataResidency, Endpoint, EndpointKind, Sensitivity, secret_needs};

/// What the platform team set on the tenant's namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tenant {
    /// The namespace.
    pub namespace: String,
    /// Label `ferry.dev/region`.
    pub region: Option<String>,
    /// Annotation `ferry.dev/allowed-sensitivity`: the most any Connector of the
    /// namespace may allow. No annotation: nothing sensitive.
    pub sensitivity_cap: BTreeSet<Sensitivity>,
}

impl Tenant {
    /// Parses the annotation `pii, phi`; unknown words are ignored (and so grant
    /// nothing).
    pub fn parse_cap(annotation: Option<&str>) -> BTreeSet<Sensitivity> {
        annotation
            .unwrap_or_default()
            .split(',')
            .filter_map(|w| match w.trim().to_ascii_lowercase().as_str() {
                "pii" => Some(Sensitivity::Pii),
                "pci" => Some(Sensitivity::Pci),
                "phi" => Some(Sensitivity::Phi),
                _ => None,
            })
            .collect()
    }
}

/// The keys each referenced Secret holds; `None` when the Secret does not exist.
pub type SecretKeys = BTreeMap<String, Option<BTreeSet<String>>>;

/// Operator-wide settings that change what is allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// Accept `local` endpoints (a folder of the runner pod: demos and tests only).
    pub allow_local_endpoints: bool,
}

/// One reason a run may not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Stable reason: an Event reason, a condition reason and a metric label.
    pub reason: &'static str,
    /// What is wrong and how to fix it. Never holds a secret value.
    pub message: String,
}

impl Violation {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Something allowed but worth a Warning Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub reason: &'static str,
    pub message: String,
}

/// Every check, in a fixed order. An empty list of violations means the run may
/// start.
pub fn check(
    spec: &ConnectorSpec,
    tenant: &Tenant,
    secrets: &SecretKeys,
    settings: Settings,
) -> (Vec<Violation>, Vec<Warning>) {
    let mut violations = Vec::new();
    let mut warnings = Vec::new();
    for (side, endpoint) in [("source", &spec.source), ("destination", &spec.destination)] {
        check_endpoint(side, endpoint, settings, &mut violations, &mut warnings);
    }
    check_sensitivity(spec, tenant, &mut violations);
    check_residency(spec, tenant, &mut violations);
    check_secrets(spec, secrets, &mut violations);
    (violations, warnings)
}

fn check_endpoint(
    side: &str,
    endpoint: &Endpoint,
    settings: Settings,
    violations: &mut Vec<Violation>,
    warnings: &mut Vec<Warning>,
) {
    let (url, insecure_ok) = match endpoint.kind() {
        None => {
            violations.push(Violation::new(
                "InvalidSpec",
                format!("{side}: exactly one of s3, azureBlob, sftp or local must be set"),
            ));
            return;
        }
        Some(EndpointKind::Local(l)) => {
            if !settings.allow_local_endpoints {
                violations.push(Violation::new(
                    "LocalEndpointNotAllowed",
                    format!(
                        "{side}: local folder {:?} is for demos and tests; this operator does not allow local endpoints",
                        l.path
                    ),
                ));
            }
            return;
        }
        Some(EndpointKind::Sftp(s)) => {
            if s.allow_password_auth {
                warnings.push(Warning {
                    reason: "PasswordAuthentication",
                    message: format!(
                        "{side}: SFTP server {} may be reached with a password (allowPasswordAuth: true); prefer a key",
                        s.host
                    ),
                });
            }
            return;
        }
        Some(EndpointKind::S3(s)) => (s.endpoint.as_deref(), s.insecure_plain_http_on_loopback),
        Some(EndpointKind::AzureBlob(a)) => {
            (a.endpoint.as_deref(), a.insecure_plain_http_on_loopback)
        }
    };
    let Some(url) = url else { return };
    if url.starts_with("https://") {
        return;
    }
    let plain_loopback = url
        .strip_prefix("http://")
        .map(host_of)
        .is_some_and(is_loopback);
    if !(plain_loopback && insecure_ok) {
        violations.push(Violation::new(
            "InsecureEndpoint",
            format!(
                "{side}: endpoint {url} does not use https://; plain http:// is only accepted for a loopback address with insecurePlainHttpOnLoopback: true"
            ),
        ));
    }
}

/// The host of `host[:port][/path]`, without brackets for IPv6.
fn host_of(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    authority.split(':').next().unwrap_or_default()
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn tags(set: &BTreeSet<Sensitivity>) -> String {
    if set.is_empty() {
        return "none".into();
    }
    set.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

fn check_sensitivity(spec: &ConnectorSpec, tenant: &Tenant, violations: &mut Vec<Violation>) {
    let allowed: BTreeSet<Sensitivity> = spec
        .compliance
        .allowed_sensitivity
        .iter()
        .copied()
        .collect();
    let beyond_cap: BTreeSet<Sensitivity> = allowed
        .difference(&tenant.sensitivity_cap)
        .copied()
        .collect();
    if !beyond_cap.is_empty() {
        violations.push(Violation::new(
            "SensitivityNotPermittedInNamespace",
            format!(
                "compliance.allowedSensitivity lists {} but namespace {} permits only {} (annotation {})",
                tags(&beyond_cap),
                tenant.namespace,
                tags(&tenant.sensitivity_cap),
                ferry_crds::ALLOWED_SENSITIVITY_ANNOTATION
            ),
        ));
    }
    let effective: BTreeSet<Sensitivity> = allowed
        .intersection(&tenant.sensitivity_cap)
        .copied()
        .collect();
    for stream in &spec.streams {
        let refused: BTreeSet<Sensitivity> = stream
            .sensitivity
            .iter()
            .filter(|t| !effective.contains(t))
            .copied()
            .collect();
        if !refused.is_empty() {
            violations.push(Violation::new(
                "SensitivityNotAllowed",
                format!(
                    "stream {:?} is tagged {} which this Connector may not move (allowed: {})",
                    stream.name,
                    tags(&refused),
                    tags(&effective)
                ),
            ));
        }
    }
}

/// The region an endpoint declares.
pub fn declared_region(endpoint: &Endpoint) -> Option<&str> {
    match endpoint.kind()? {
        EndpointKind::S3(s) => Some(&s.region),
        EndpointKind::AzureBlob(a) => Some(&a.region),
        EndpointKind::Sftp(s) => Some(&s.region),
        EndpointKind::Local(l) => l.region.as_deref(),
    }
}

fn check_residency(spec: &ConnectorSpec, tenant: &Tenant, violations: &mut Vec<Violation>) {
    if spec.compliance.data_residency == DataResidency::Any {
        return;
    }
    let Some(region) = tenant.region.as_deref() else {
        violations.push(Violation::new(
            "ResidencyViolation",
            format!(
                "dataResidency is in-region-only but namespace {} has no {} label; ask the platform team to set it, or use dataResidency: any",
                tenant.namespace,
                ferry_crds::REGION_LABEL
            ),
        ));
        return;
    };
    for (side, endpoint) in [("source", &spec.source), ("destination", &spec.destination)] {
        match declared_region(endpoint) {
            Some(r) if r == region => {}
            Some(r) => violations.push(Violation::new(
                "ResidencyViolation",
                format!("{side} is in region {r:?}, outside the tenant's region {region:?} (dataResidency: in-region-only)"),
            )),
            None => violations.push(Violation::new(
                "ResidencyViolation",
                format!("{side} declares no region; dataResidency: in-region-only needs one equal to {region:?}"),
            )),
        }
    }
}

fn check_secrets(spec: &ConnectorSpec, secrets: &SecretKeys, violations: &mut Vec<Violation>) {
    for need in secret_needs(spec) {
        match secrets.get(&need.name) {
            None | Some(None) => violations.push(Violation::new(
                "SecretNotFound",
                format!(
                    "Secret {:?} ({}) does not exist in this namespace",
                    need.name, need.purpose
                ),
            )),
            Some(Some(keys)) => {
                if !need.satisfied_by(keys.iter().map(String::as_str)) {
                    violations.push(Violation::new(
                        "SecretKeyMissing",
                        format!(
                            "Secret {:?} ({}) must hold the keys {}",
                            need.name,
                            need.purpose,
                            need.describe_keys()
                        ),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ConnectorSpec {
        serde_saphyr::from_str(yaml).expect("fixture parses")
    }

    const BASE: &str = r#"
source: {s3: {bucket: b, region: eu-west-1, credentials: {secretRef: {name: s3}}}}
destination: {azureBlob: {account: a, container: c, region: eu-west-1, credentials: {secretRef: {name: az}}}}
encryption: {keyRef: {secretRef: {name: kek}}}
"#;

    fn tenant(region: Option<&str>, cap: Option<&str>) -> Tenant {
        Tenant {
            namespace: "acme".into(),
            region: region.map(Into::into),
            sensitivity_cap: Tenant::parse_cap(cap),
        }
    }

    fn all_secrets() -> SecretKeys {
        let mut m = SecretKeys::new();
        let keys = |ks: &[&str]| Some(ks.iter().map(|k| k.to_string()).collect());
        m.insert("s3".into(), keys(&["accessKeyId", "secretAccessKey"]));
        m.insert("az".into(), keys(&["accountKey"]));
        m.insert("kek".into(), keys(&["kek"]));
        m
    }

    fn reasons(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|v| v.reason).collect()
    }

    #[test]
    fn a_valid_connector_passes() {
        let (v, w) = check(
            &spec(BASE),
            &tenant(Some("eu-west-1"), None),
            &all_secrets(),
            Settings::default(),
        );
        assert!(v.is_empty(), "{v:?}");
        assert!(w.is_empty());
    }

    #[test]
    fn sensitivity_must_be_allowed_by_the_connector_and_the_namespace() {
        let s = spec(&format!(
            "{BASE}streams: [{{name: cards, match: 'cards/**', sensitivity: [pci]}}]\n"
        ));
        let (v, _) = check(
            &s,
            &tenant(Some("eu-west-1"), Some("pii,pci")),
            &all_secrets(),
            Settings::default(),
        );
        assert_eq!(reasons(&v), ["SensitivityNotAllowed"]);
        assert!(
            v[0].message.contains("\"cards\"") && v[0].message.contains("pci"),
            "{}",
            v[0].message
        );

        let s = spec(&format!(
            "{BASE}streams: [{{name: cards, match: 'cards/**', sensitivity: [pci]}}]\ncompliance: {{allowedSensitivity: [pci]}}\n"
        ));
        let (v, _) = check(
            &s,
            &tenant(Some("eu-west-1"), Some("pii")),
            &all_secrets(),
            Settings::default(),
        );
        assert_eq!(
            reasons(&v),
            [
                "SensitivityNotPermittedInNamespace",
                "SensitivityNotAllowed"
            ]
        );
        let (v, _) = check(
            &s,
            &tenant(Some("eu-west-1"), Some(" PCI , phi")),
            &all_secrets(),
            Settings::default(),
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn residency_needs_both_ends_in_the_tenant_region() {
        let s = spec(&BASE.replace(
            "container: c, region: eu-west-1",
            "container: c, region: eastus",
        ));
        let (v, _) = check(
            &s,
            &tenant(Some("eu-west-1"), None),
            &all_secrets(),
            Settings::default(),
        );
        assert_eq!(reasons(&v), ["ResidencyViolation"]);
        assert!(
            v[0].message
                .starts_with("destination is in region \"eastus\""),
            "{}",
            v[0].message
        );

        let (v, _) = check(
            &spec(BASE),
            &tenant(None, None),
            &all_secrets(),
            Settings::default(),
        );
        assert_eq!(reasons(&v), ["ResidencyViolation"]);

        let any = spec(&format!(
            "{}compliance: {{dataResidency: any}}\n",
            BASE.replace(
                "region: eu-west-1, credentials: {secretRef: {name: az}}",
                "region: eastus, credentials: {secretRef: {name: az}}"
            )
        ));
        let (v, _) = check(
            &any,
            &tenant(None, None),
            &all_secrets(),
            Settings::default(),
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn missing_secrets_and_keys_are_named_without_values() {
        let mut secrets = all_secrets();
        secrets.insert("s3".into(), None);
        secrets.insert("az".into(), Some(["tenantId".to_string()].into()));
        let (v, _) = check(
            &spec(BASE),
            &tenant(Some("eu-west-1"), None),
            &secrets,
            Settings::default(),
        );
        assert_eq!(reasons(&v), ["SecretNotFound", "SecretKeyMissing"]);
        assert_eq!(
            v[0].message,
            "Secret \"s3\" (source credentials) does not exist in this namespace"
        );
        assert_eq!(
            v[1].message,
            "Secret \"az\" (destination credentials) must hold the keys accountKey | sasToken | tenantId+clientId+clientSecret"
        );
    }

    #[test]
    fn plain_http_only_for_loopback_with_the_opt_out() {
        let with = |url: &str, opt: bool| {
            spec(&BASE.replace(
                "bucket: b,",
                &format!("bucket: b, endpoint: '{url}', insecurePlainHttpOnLoopback: {opt},"),
            ))
        };
        let t = tenant(Some("eu-west-1"), None);
        let run = |s: &ConnectorSpec| reasons(&check(s, &t, &all_secrets(), Settings::default()).0);
        assert!(run(&with("https://s3.example.com", false)).is_empty());
        assert!(run(&with("http://127.0.0.1:9000", true)).is_empty());
        assert!(run(&with("http://[::1]:9000/x", true)).is_empty());
        assert!(run(&with("http://localhost:9000", true)).is_empty());
        assert_eq!(
            run(&with("http://127.0.0.1:9000", false)),
            ["InsecureEndpoint"]
        );
        assert_eq!(
            run(&with("http://10.0.0.1:9000", true)),
            ["InsecureEndpoint"]
        );
        assert_eq!(
            run(&with("http://127.0.0.1.evil.com", true)),
            ["InsecureEndpoint"]
        );
        assert_eq!(
            run(&with("http://user@127.0.0.2@evil.com", true)),
            ["InsecureEndpoint"]
        );
    }

    #[test]
    fn local_endpoints_and_password_auth() {
        let s = spec(
            r#"
source: {local: {path: /data, region: eu-west-1}}
destination:
  sftp: {host: h, path: /p, region: eu-west-1, credentials: {secretRef: {name: sftp}}, hostKey: {fingerprint: "SHA256:x"}, allowPasswordAuth: true}
encryption: {keyRef: {secretRef: {name: kek}}}
"#,
        );
        let mut secrets = all_secrets();
        secrets.insert(
            "sftp".into(),
            Some(["username".to_string(), "password".to_string()].into()),
        );
        let t = tenant(Some("eu-west-1"), None);
        let (v, w) = check(&s, &t, &secrets, Settings::default());
        assert_eq!(reasons(&v), ["LocalEndpointNotAllowed"]);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].reason, "PasswordAuthentication");
        let (v, _) = check(
            &s,
            &t,
            &secrets,
            Settings {
                allow_local_endpoints: true,
            },
        );
        assert!(v.is_empty(), "{v:?}");
    }
}
