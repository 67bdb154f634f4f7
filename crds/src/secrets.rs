//! Which Secrets, and which keys in them, a Connector needs. Used by the operator
//! to check a run before it starts (and to name the Secrets in the run's Role),
//! and by the runner to read them.

use std::collections::BTreeMap;

use crate::{ConnectorSpec, Endpoint, EndpointKind};

/// The label a Secret must carry, with the value [`SECRET_OPT_IN_VALUE`], for
/// Ferry to read it: set by whoever creates the Secret, so that naming a Secret
/// in a Connector is not enough to have a run read it (and send its values to
/// a host the Connector names).
pub const SECRET_OPT_IN_LABEL: &str = "ferry.dev/usable";
/// The value of [`SECRET_OPT_IN_LABEL`].
pub const SECRET_OPT_IN_VALUE: &str = "true";
/// Types of Secret Ferry never reads, label or not: Kubernetes' own credentials
/// (ServiceAccount and bootstrap tokens), registry credentials and TLS keys.
pub const REFUSED_SECRET_TYPES: [&str; 5] = [
    "kubernetes.io/service-account-token",
    "bootstrap.kubernetes.io/token",
    "kubernetes.io/dockercfg",
    "kubernetes.io/dockerconfigjson",
    "kubernetes.io/tls",
];

/// Why a Secret may not be read by a run. The operator rejects the run with it
/// before any pod exists; the runner refuses the same way should the Secret
/// have changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRefusal {
    /// The Secret lacks the opt-in label.
    NotOptedIn,
    /// The Secret is of a type Ferry never reads.
    TypeRefused(String),
}

impl SecretRefusal {
    /// Stable reason: a condition and Event reason and a metric label.
    pub fn reason(&self) -> crate::Reason {
        match self {
            SecretRefusal::NotOptedIn => crate::Reason::SecretNotOptedIn,
            SecretRefusal::TypeRefused(_) => crate::Reason::SecretTypeRefused,
        }
    }

    /// What is wrong and how to fix it, for the Secret `name`.
    pub fn message(&self, name: &str, purpose: &str) -> String {
        match self {
            SecretRefusal::NotOptedIn => format!(
                "Secret {name:?} ({purpose}) is not labelled {SECRET_OPT_IN_LABEL}={SECRET_OPT_IN_VALUE}: \
                 label it to let Ferry's runs read it"
            ),
            SecretRefusal::TypeRefused(t) => {
                format!("Secret {name:?} ({purpose}) is of type {t}, which Ferry never reads")
            }
        }
    }
}

/// Whether a Secret with these labels and this type may be read by a run.
pub fn secret_usable(
    labels: Option<&BTreeMap<String, String>>,
    type_: Option<&str>,
) -> Result<(), SecretRefusal> {
    if let Some(t) = type_.filter(|t| REFUSED_SECRET_TYPES.contains(t)) {
        return Err(SecretRefusal::TypeRefused(t.to_string()));
    }
    let opted_in = labels
        .and_then(|l| l.get(SECRET_OPT_IN_LABEL))
        .is_some_and(|v| v == SECRET_OPT_IN_VALUE);
    if opted_in {
        Ok(())
    } else {
        Err(SecretRefusal::NotOptedIn)
    }
}

/// One Secret a run reads, and the keys it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretNeed {
    /// Name of the Secret, in the Connector's namespace.
    pub name: String,
    /// What uses it, for messages: `source credentials`, `encryption key`, ...
    pub purpose: String,
    /// The Secret is usable when it holds every key of at least one of these sets.
    pub any_of: Vec<Vec<String>>,
}

impl SecretNeed {
    fn new(name: &str, purpose: String, any_of: &[&[&str]]) -> Self {
        Self {
            name: name.to_string(),
            purpose,
            any_of: any_of
                .iter()
                .map(|set| set.iter().map(|k| k.to_string()).collect())
                .collect(),
        }
    }

    /// Whether a Secret holding these keys (names only) satisfies the need.
    pub fn satisfied_by<'a>(&self, keys: impl IntoIterator<Item = &'a str> + Clone) -> bool {
        self.any_of.iter().any(|set| {
            set.iter()
                .all(|wanted| keys.clone().into_iter().any(|k| k == wanted))
        })
    }

    /// The expected keys, for a message: `accessKeyId+secretAccessKey`, or
    /// alternatives separated by ` | `.
    pub fn describe_keys(&self) -> String {
        self.any_of
            .iter()
            .map(|set| set.join("+"))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// Every Secret the Connector's runs read, in a stable order, one entry per
/// (Secret, purpose). The same Secret may appear more than once.
pub fn secret_needs(spec: &ConnectorSpec) -> Vec<SecretNeed> {
    let mut needs = Vec::new();
    endpoint_needs("source", &spec.source, &mut needs);
    endpoint_needs("destination", &spec.destination, &mut needs);
    if let Some(key) = &spec.encryption.key_ref {
        needs.push(SecretNeed::new(
            &key.secret_ref.name,
            "encryption key".to_string(),
            &[&[key.key.as_str()]],
        ));
    }
    if let Some(signing) = &spec.encryption.signing_key_ref {
        needs.push(SecretNeed::new(
            &signing.secret_ref.name,
            "manifest signing key".to_string(),
            &[&[signing.key.as_str()]],
        ));
    }
    needs
}

/// The secrets in the platform's Vault the Connector's ends name, each once,
/// sorted by name. The operator never reads them; the run does.
pub fn vault_secrets(spec: &ConnectorSpec) -> Vec<&crate::VaultSecret> {
    let mut out: Vec<&crate::VaultSecret> = [&spec.source, &spec.destination]
        .into_iter()
        .filter_map(|e| match e.kind()? {
            EndpointKind::S3(s3) => s3.credentials.vault.as_ref(),
            EndpointKind::AzureBlob(az) => az.credentials.vault.as_ref(),
            EndpointKind::Sftp(sftp) => sftp.credentials.vault.as_ref(),
            EndpointKind::Local(_) => None,
        })
        .collect();
    out.sort_by_key(|v| v.secret_name());
    out.dedup_by_key(|v| v.secret_name());
    out
}

/// Whether the Connector's runs use the platform's Vault: secrets in its KV
/// store, or a KEK in its Transit engine.
pub fn uses_vault(spec: &ConnectorSpec) -> bool {
    !vault_secrets(spec).is_empty()
        || spec
            .encryption
            .kms
            .as_ref()
            .is_some_and(|k| k.vault_transit.is_some())
}

/// The secrets in AWS Secrets Manager the Connector's ends name, each once,
/// sorted by name. The operator never reads them; the run does.
pub fn aws_secrets(spec: &ConnectorSpec) -> Vec<&crate::AwsSecret> {
    let mut out: Vec<&crate::AwsSecret> = [&spec.source, &spec.destination]
        .into_iter()
        .filter_map(|e| match e.kind()? {
            EndpointKind::S3(s3) => s3.credentials.aws_secrets_manager.as_ref(),
            EndpointKind::AzureBlob(az) => az.credentials.aws_secrets_manager.as_ref(),
            EndpointKind::Sftp(sftp) => sftp.credentials.aws_secrets_manager.as_ref(),
            EndpointKind::Local(_) => None,
        })
        .collect();
    out.sort_by_key(|v| v.secret_name());
    out.dedup_by_key(|v| v.secret_name());
    out
}

/// Every AWS role the Connector's runs assume with their projected token, and
/// what for: S3 web identity, Secrets Manager reads, the AWS KMS key. All of
/// them share the run's one AWS token.
pub fn aws_web_identities(spec: &ConnectorSpec) -> Vec<(String, &crate::WebIdentity)> {
    let mut out = Vec::new();
    for (side, e) in [("source", &spec.source), ("destination", &spec.destination)] {
        if let Some(EndpointKind::S3(s3)) = e.kind()
            && let Some(w) = &s3.credentials.web_identity
        {
            out.push((format!("{side} S3 web identity"), w));
        }
    }
    for secret in aws_secrets(spec) {
        out.push((secret.secret_name(), &secret.web_identity));
    }
    if let Some(k) = spec
        .encryption
        .kms
        .as_ref()
        .and_then(|k| k.aws_kms.as_ref())
    {
        out.push((k.name(), &k.web_identity));
    }
    out
}

/// Whether the runs call AWS APIs besides S3 and STS (Secrets Manager, KMS).
pub fn uses_aws_apis(spec: &ConnectorSpec) -> bool {
    !aws_secrets(spec).is_empty()
        || spec
            .encryption
            .kms
            .as_ref()
            .is_some_and(|k| k.aws_kms.is_some())
}

/// The distinct names of the Secrets a run reads, sorted.
pub fn secret_names(spec: &ConnectorSpec) -> Vec<String> {
    let mut names: Vec<String> = secret_needs(spec).into_iter().map(|n| n.name).collect();
    names.sort();
    names.dedup();
    names
}

fn endpoint_needs(side: &str, endpoint: &Endpoint, needs: &mut Vec<SecretNeed>) {
    let purpose = format!("{side} credentials");
    match endpoint.kind() {
        Some(EndpointKind::S3(s3)) => {
            if let Some(r) = &s3.credentials.secret_ref {
                needs.push(SecretNeed::new(
                    &r.name,
                    purpose,
                    &[&["accessKeyId", "secretAccessKey"]],
                ));
            }
        }
        Some(EndpointKind::AzureBlob(az)) => {
            if let Some(r) = &az.credentials.secret_ref {
                needs.push(SecretNeed::new(
                    &r.name,
                    purpose,
                    &[
                        &["accountKey"],
                        &["sasToken"],
                        &["tenantId", "clientId", "clientSecret"],
                    ],
                ));
            }
        }
        Some(EndpointKind::Sftp(sftp)) => {
            let sets: &[&[&str]] = if sftp.allow_password_auth {
                &[&["username", "privateKey"], &["username", "password"]]
            } else {
                &[&["username", "privateKey"]]
            };
            if let Some(r) = &sftp.credentials.secret_ref {
                needs.push(SecretNeed::new(&r.name, purpose, sets));
            }
            if let Some(r) = &sftp.host_key.secret_ref {
                needs.push(SecretNeed::new(
                    &r.name,
                    format!("{side} SFTP host key"),
                    &[&["knownHosts"]],
                ));
            }
        }
        Some(EndpointKind::Local(_)) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ConnectorSpec {
        serde_saphyr::from_str(yaml).expect("fixture parses")
    }

    #[test]
    fn lists_every_secret_with_its_keys() {
        let s = spec(
            r#"
source: {s3: {bucket: b, region: eu-west-1, credentials: {secretRef: {name: s3-reader}}}}
destination:
  sftp:
    host: h
    path: /in
    region: eu-west-1
    credentials: {secretRef: {name: sftp-writer}}
    hostKey: {secretRef: {name: sftp-host}}
encryption: {keyRef: {secretRef: {name: kek}, key: k1}}
"#,
        );
        let needs = secret_needs(&s);
        let names: Vec<_> = needs.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["s3-reader", "sftp-writer", "sftp-host", "kek"]);
        assert_eq!(needs[0].describe_keys(), "accessKeyId+secretAccessKey");
        assert_eq!(needs[1].describe_keys(), "username+privateKey");
        assert_eq!(needs[3].any_of, vec![vec!["k1".to_string()]]);
        assert_eq!(
            secret_names(&s),
            ["kek", "s3-reader", "sftp-host", "sftp-writer"]
        );
    }

    /// The signing key is read like the KEK: named in the run's Role, checked
    /// before the pod exists.
    #[test]
    fn a_signing_key_is_a_need_of_its_own() {
        let s = spec(
            r#"
source: {local: {path: /x}}
destination: {local: {path: /y}}
encryption: {keyRef: {secretRef: {name: kek}}, signingKeyRef: {secretRef: {name: records}}}
"#,
        );
        let needs = secret_needs(&s);
        let last = needs.last().unwrap();
        assert_eq!(last.name, "records");
        assert_eq!(last.purpose, "manifest signing key");
        assert_eq!(last.any_of, vec![vec!["signing-key".to_string()]]);
        assert_eq!(secret_names(&s), ["kek", "records"]);
    }

    #[test]
    fn workload_identity_needs_no_secret_and_alternatives_are_honoured() {
        let s = spec(
            r#"
source: {s3: {bucket: b, region: r, credentials: {webIdentity: {roleArn: "arn:aws:iam::1:role/x"}}}}
destination: {azureBlob: {account: a, container: c, region: r, credentials: {secretRef: {name: az}}}}
encryption: {keyRef: {secretRef: {name: kek}}}
"#,
        );
        let needs = secret_needs(&s);
        assert_eq!(needs.len(), 2);
        let az = &needs[0];
        assert!(az.satisfied_by(["sasToken"]));
        assert!(az.satisfied_by(["tenantId", "clientId", "clientSecret", "x"]));
        assert!(!az.satisfied_by(["tenantId", "clientId"]));
        assert!(!az.satisfied_by([]));
    }

    #[test]
    fn a_secret_is_usable_only_when_labelled_and_of_an_ordinary_type() {
        let labelled = BTreeMap::from([(
            SECRET_OPT_IN_LABEL.to_string(),
            SECRET_OPT_IN_VALUE.to_string(),
        )]);
        assert_eq!(secret_usable(Some(&labelled), Some("Opaque")), Ok(()));
        assert_eq!(secret_usable(Some(&labelled), None), Ok(()));
        assert_eq!(
            secret_usable(None, Some("Opaque")),
            Err(SecretRefusal::NotOptedIn)
        );
        let wrong = BTreeMap::from([(SECRET_OPT_IN_LABEL.to_string(), "yes".to_string())]);
        assert_eq!(
            secret_usable(Some(&wrong), None),
            Err(SecretRefusal::NotOptedIn)
        );
        for t in REFUSED_SECRET_TYPES {
            let refused = secret_usable(Some(&labelled), Some(t)).unwrap_err();
            assert_eq!(refused.reason(), "SecretTypeRefused");
            assert!(refused.message("x", "source credentials").contains(t));
        }
    }

    #[test]
    fn password_only_counts_when_allowed() {
        let base = r#"
source: {local: {path: /x}}
destination:
  sftp: {host: h, path: /p, region: r, credentials: {secretRef: {name: s}}, hostKey: {fingerprint: "SHA256:abc"}ALLOW}
encryption: {keyRef: {secretRef: {name: kek}}}
"#;
        let denied = spec(&base.replace("ALLOW", ""));
        assert!(!secret_needs(&denied)[0].satisfied_by(["username", "password"]));
        let allowed = spec(&base.replace("ALLOW", ", allowPasswordAuth: true"));
        assert!(secret_needs(&allowed)[0].satisfied_by(["username", "password"]));
    }
}
