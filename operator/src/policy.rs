//! The checks a run must pass before any pod exists (DESIGN.md, "A run, step by
//! step", 1). Pure: the caller has already fetched the namespace and the names of
//! the keys each Secret holds (never their values).

use std::collections::{BTreeMap, BTreeSet};

use crate::pod_bounds::{self, PodBounds};
use ferry_crds::{
    ConnectorSpec, Endpoint, EndpointKind, Reason, ResidencyBreach, SecretRefusal, Sensitivity,
    residency_breaches, secret_needs,
};

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

/// What the operator may know of a referenced Secret: the names of its keys
/// (never their values) and whether Ferry may read it at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFacts {
    /// Names of the keys it holds.
    pub keys: BTreeSet<String>,
    /// Its opt-in label and type allow Ferry to read it.
    pub usable: Result<(), SecretRefusal>,
}

impl SecretFacts {
    /// A usable Secret holding these keys.
    pub fn usable<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            keys: keys.into_iter().map(str::to_string).collect(),
            usable: Ok(()),
        }
    }
}

/// Each referenced Secret; `None` when it does not exist.
pub type SecretKeys = BTreeMap<String, Option<SecretFacts>>;

/// Operator-wide settings that change what is allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings<'a> {
    /// Accept `local` endpoints (a folder of the runner pod: demos and tests only).
    pub allow_local_endpoints: bool,
    /// Audiences a run's projected cloud token may carry.
    pub token_audiences: &'a [String],
    /// Accept plain `http://` to a loopback address where a Connector opts out
    /// of TLS (demos and tests).
    pub allow_plain_http_loopback: bool,
    /// Bounds of the pod settings a Connector may ask for (the defaults when
    /// `None`).
    pub pod_bounds: Option<&'a PodBounds>,
    /// Whether runs can read credentials from the platform's Vault.
    pub vault: bool,
}

impl<'a> Settings<'a> {
    /// The settings of the operator's configuration.
    pub fn of(config: &'a crate::config::Config) -> Self {
        Self {
            allow_local_endpoints: config.allow_local_endpoints,
            token_audiences: &config.token_audiences,
            allow_plain_http_loopback: config.allow_plain_http_loopback,
            pod_bounds: Some(&config.pod_bounds),
            vault: config.vault.is_some(),
        }
    }
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
    settings: Settings<'_>,
) -> (Vec<Violation>, Vec<Warning>) {
    let mut violations = Vec::new();
    let mut warnings = Vec::new();
    for (side, endpoint) in [("source", &spec.source), ("destination", &spec.destination)] {
        check_endpoint(side, endpoint, settings, &mut violations, &mut warnings);
    }
    check_sensitivity(spec, tenant, &mut violations);
    check_residency(spec, tenant, &mut violations);
    check_secrets(spec, secrets, &mut violations);
    check_token_audiences(spec, settings, &mut violations);
    if !settings.vault {
        if let Some(v) = ferry_crds::vault_secrets(spec).first() {
            violations.push(Violation::new(
                "SecretStoreNotConfigured",
                format!(
                    "credentials.vault names {}, but this operator has no Vault configured for runs (chart value vault.address)",
                    v.secret_name()
                ),
            ));
        }
        if let Some(transit) = spec
            .encryption
            .kms
            .as_ref()
            .and_then(|k| k.vault_transit.as_ref())
        {
            violations.push(Violation::new(
                "SecretStoreNotConfigured",
                format!(
                    "encryption.kms names {}, but this operator has no Vault configured for runs (chart value vault.address)",
                    transit.name()
                ),
            ));
        }
    }
    let default_bounds;
    let bounds = match settings.pod_bounds {
        Some(b) => b,
        None => {
            default_bounds = PodBounds::default();
            &default_bounds
        }
    };
    for breach in pod_bounds::breaches(&spec.run, bounds) {
        violations.push(Violation::new(
            "PodSettingNotAllowed",
            format!("run: {breach}"),
        ));
    }
    (violations, warnings)
}

/// A tenant must not choose whom the run's cluster-signed token is for: an
/// audience the API server or another service accepts would let the token be
/// replayed there. Only the audiences the platform team allows are minted.
fn check_token_audiences(
    spec: &ConnectorSpec,
    settings: Settings<'_>,
    violations: &mut Vec<Violation>,
) {
    let mut wanted: Vec<(String, &str)> = ferry_crds::aws_web_identities(spec)
        .into_iter()
        .map(|(what, w)| (what, w.audience.as_str()))
        .collect();
    for (side, endpoint) in [("source", &spec.source), ("destination", &spec.destination)] {
        if let Some(EndpointKind::AzureBlob(a)) = endpoint.kind()
            && a.credentials.workload_identity.is_some()
        {
            wanted.push((side.to_string(), ferry_crds::AZURE_TOKEN_AUDIENCE));
        }
    }
    for (what, audience) in &wanted {
        if !settings.token_audiences.iter().any(|a| a == audience) {
            violations.push(Violation::new(
                "TokenAudienceNotAllowed",
                format!(
                    "{what}: a token for the audience {audience:?} may not be minted; this operator allows {}",
                    settings.token_audiences.join(", ")
                ),
            ));
        }
    }
    // The run has one AWS token: every AWS role it assumes must take it.
    let aws = ferry_crds::aws_web_identities(spec);
    if let Some((first, w)) = aws.first()
        && let Some((other, v)) = aws.iter().find(|(_, v)| v.audience != w.audience)
    {
        violations.push(Violation::new(
            "TokenAudienceNotAllowed",
            format!(
                "{first} and {other} ask for AWS tokens of different audiences ({:?}, {:?}); a run has one",
                w.audience, v.audience
            ),
        ));
    }
}

fn check_endpoint(
    side: &str,
    endpoint: &Endpoint,
    settings: Settings<'_>,
    violations: &mut Vec<Violation>,
    warnings: &mut Vec<Warning>,
) {
    let (url, insecure_ok) = match endpoint.kind() {
        None => {
            violations.push(Violation::new(
                Reason::InvalidSpec.as_str(),
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
    // Plain http needs both the tenant's opt-out and the operator's.
    let plain_ok = insecure_ok && settings.allow_plain_http_loopback;
    if let Err(refusal) = ferry_crds::check_endpoint_url(url, plain_ok) {
        violations.push(Violation::new(
            "InsecureEndpoint",
            format!(
                "{side}: {refusal}; https:// is required, plain http:// is accepted only for a loopback address with insecurePlainHttpOnLoopback: true where the operator allows it"
            ),
        ));
    }
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
                Reason::SensitivityNotAllowed.as_str(),
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

fn check_residency(spec: &ConnectorSpec, tenant: &Tenant, violations: &mut Vec<Violation>) {
    for breach in residency_breaches(spec, tenant.region.as_deref()) {
        let message = match breach {
            ResidencyBreach::TenantRegionUnknown => format!(
                "dataResidency is in-region-only but namespace {} has no {} label; ask the platform team to set it, or use dataResidency: any",
                tenant.namespace,
                ferry_crds::REGION_LABEL
            ),
            other => other.to_string(),
        };
        violations.push(Violation::new(Reason::ResidencyViolation.as_str(), message));
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
            Some(Some(SecretFacts {
                usable: Err(refusal),
                ..
            })) => violations.push(Violation::new(
                refusal.reason().as_str(),
                refusal.message(&need.name, &need.purpose),
            )),
            Some(Some(SecretFacts { keys, .. })) => {
                if !need.satisfied_by(keys.iter().map(String::as_str)) {
                    violations.push(Violation::new(
                        Reason::SecretKeyMissing.as_str(),
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
        let keys = |ks: &[&str]| Some(SecretFacts::usable(ks.iter().copied()));
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
        secrets.insert("az".into(), Some(SecretFacts::usable(["tenantId"])));
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

    /// Attack: a tenant names a Secret it was never meant to use (the
    /// namespace's ServiceAccount token, a registry credential, or any Secret
    /// nobody opted in) so that its run sends the values to a host it controls.
    #[test]
    fn a_connector_naming_a_secret_not_opted_in_or_a_token_is_rejected() {
        let mut secrets = all_secrets();
        secrets.insert(
            "s3".into(),
            Some(SecretFacts {
                usable: Err(SecretRefusal::NotOptedIn),
                ..SecretFacts::usable(["accessKeyId", "secretAccessKey"])
            }),
        );
        secrets.insert(
            "az".into(),
            Some(SecretFacts {
                usable: Err(SecretRefusal::TypeRefused(
                    "kubernetes.io/service-account-token".into(),
                )),
                ..SecretFacts::usable(["accountKey", "token"])
            }),
        );
        let (v, _) = check(
            &spec(BASE),
            &tenant(Some("eu-west-1"), None),
            &secrets,
            Settings::default(),
        );
        assert_eq!(reasons(&v), ["SecretNotOptedIn", "SecretTypeRefused"]);
        assert!(v[0].message.contains("ferry.dev/usable=true"), "{v:?}");
        assert!(v[1].message.contains("service-account-token"), "{v:?}");
    }

    /// Attack: a tenant asks for a token whose audience is the API server's (or
    /// any service's but the cloud's), to replay the cluster-signed token there.
    #[test]
    fn a_connector_asking_for_a_token_for_another_audience_is_rejected() {
        let config = crate::config::Config::default();
        let t = tenant(Some("eu-west-1"), None);
        let web = |audience: &str| {
            spec(&BASE.replace(
                "credentials: {secretRef: {name: s3}}",
                &format!("credentials: {{webIdentity: {{roleArn: 'arn:aws:iam::123456789012:role/r', audience: '{audience}'}}}}"),
            ))
        };
        let run = |s: &ConnectorSpec, settings| reasons(&check(s, &t, &all_secrets(), settings).0);
        assert!(run(&web("sts.amazonaws.com"), Settings::of(&config)).is_empty());
        for stolen in [
            "https://kubernetes.default.svc",
            "vault",
            "api://AzureADTokenExchange2",
        ] {
            let (v, _) = check(&web(stolen), &t, &all_secrets(), Settings::of(&config));
            assert_eq!(reasons(&v), ["TokenAudienceNotAllowed"], "{stolen}");
            assert!(v[0].message.contains(stolen), "{v:?}");
        }
        // Azure's fixed audience is minted only where the platform allows it.
        let azure = spec(&BASE.replace(
            "credentials: {secretRef: {name: az}}",
            "credentials: {workloadIdentity: {clientId: c, tenantId: t}}",
        ));
        assert!(run(&azure, Settings::of(&config)).is_empty());
        let aws_only = crate::config::Config {
            token_audiences: vec!["sts.amazonaws.com".into()],
            ..config.clone()
        };
        assert_eq!(
            run(&azure, Settings::of(&aws_only)),
            ["TokenAudienceNotAllowed"]
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
        let operator_allows = Settings {
            allow_plain_http_loopback: true,
            ..Settings::default()
        };
        let run = |s: &ConnectorSpec| reasons(&check(s, &t, &all_secrets(), operator_allows).0);
        // The tenant's opt-out alone is not enough: the operator must allow it.
        assert_eq!(
            reasons(
                &check(
                    &with("http://127.0.0.1:9000", true),
                    &t,
                    &all_secrets(),
                    Settings::default()
                )
                .0
            ),
            ["InsecureEndpoint"]
        );
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
        // Attack: read as loopback by a hand-written check, as 10.0.0.5 by the
        // client's parser.
        assert_eq!(
            run(&with("http://10.0.0.5:8080\\@localhost:8080", true)),
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
            Some(SecretFacts::usable(["username", "password"])),
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
                ..Settings::default()
            },
        );
        assert!(v.is_empty(), "{v:?}");
    }

    /// Attack: a tenant reads its Secrets Manager secret with a role whose
    /// token audience the platform does not allow (another service would
    /// accept the token), or asks for two AWS audiences so that one of its
    /// roles gets a token minted for the other.
    #[test]
    fn every_aws_role_of_a_run_takes_one_allowed_audience() {
        let t = tenant(Some("eu-west-1"), None);
        let audiences = [
            ferry_crds::AWS_TOKEN_AUDIENCE.to_string(),
            ferry_crds::AZURE_TOKEN_AUDIENCE.to_string(),
        ];
        let settings = Settings {
            token_audiences: &audiences,
            ..Settings::default()
        };
        let sm = |audience: &str| {
            spec(&BASE.replace(
                "credentials: {secretRef: {name: az}}",
                &format!(
                    "credentials: {{awsSecretsManager: {{secretId: acme/blob, region: eu-west-1, webIdentity: {{roleArn: 'arn:aws:iam::123456789012:role/r', audience: '{audience}'}}}}}}"
                ),
            ))
        };
        let run = |s: &ConnectorSpec| reasons(&check(s, &t, &all_secrets(), settings).0);
        assert!(run(&sm(ferry_crds::AWS_TOKEN_AUDIENCE)).is_empty());
        assert_eq!(
            run(&sm("https://kubernetes.default.svc")),
            ["TokenAudienceNotAllowed"]
        );
        let two = spec(
            &BASE
                .replace(
                    "credentials: {secretRef: {name: s3}}",
                    "credentials: {webIdentity: {roleArn: 'arn:aws:iam::123456789012:role/s3'}}",
                )
                .replace(
                    "encryption: {keyRef: {secretRef: {name: kek}}}",
                    "encryption: {kms: {awsKms: {keyId: k, region: eu-west-1, webIdentity: {roleArn: 'arn:aws:iam::123456789012:role/kms', audience: 'api://AzureADTokenExchange'}}}}",
                ),
        );
        let v = check(&two, &t, &all_secrets(), settings).0;
        assert_eq!(reasons(&v), ["TokenAudienceNotAllowed"], "{v:?}");
        assert!(
            v[0].message.contains("different audiences"),
            "{}",
            v[0].message
        );
    }
}
