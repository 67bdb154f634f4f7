//! Local mode inputs: a Connector from a YAML file and Secrets from a folder laid
//! out as Kubernetes mounts them (a folder per Secret, a file per key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_crds::contract::{env, paths};
use ferry_crds::{Connector, Endpoint, EndpointKind, Reason, ResidencyBreach, residency_breaches};
use zeroize::Zeroizing;

use crate::crypto::{Kek, KeyError};
use crate::storage::azure::{AzureAuth, AzureConfig, AzureStore};
use crate::storage::local::LocalStore;
use crate::storage::s3::{ReadTuning, S3Auth, S3Config, S3Store};
use crate::storage::sftp::{HostKeyCheck, SftpAuth, SftpConfig, SftpStore};
use crate::storage::{ObjectStore, StorageError};

/// Why the inputs of a run are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid Connector: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{0}: exactly one of s3, azureBlob, sftp or local must be set")]
    Endpoint(&'static str),
    #[error("secret {secret:?} has no key {key:?} (looked in {location})")]
    MissingSecretKey {
        secret: String,
        key: String,
        location: String,
    },
    #[error("secret {secret:?} key {key:?}: {source}")]
    BadKey {
        secret: String,
        key: String,
        source: KeyError,
    },
    #[error("{0}")]
    Residency(String),
    #[error("{side}: {source}")]
    Store {
        side: &'static str,
        source: StorageError,
    },
    #[error(
        "secret {secret:?} key \"knownHosts\" holds no public key in known_hosts or .pub format"
    )]
    BadHostKey { secret: String },
}

impl ConfigError {
    /// A stable, machine-readable reason.
    pub fn reason(&self) -> Reason {
        match self {
            ConfigError::Read { .. } | ConfigError::Parse { .. } | ConfigError::Endpoint(_) => {
                Reason::InvalidSpec
            }
            ConfigError::MissingSecretKey { .. } => Reason::SecretKeyMissing,
            ConfigError::BadKey { .. } => Reason::InvalidEncryptionKey,
            ConfigError::Residency(_) => Reason::ResidencyViolation,
            ConfigError::Store { source, .. } => source.reason(),
            ConfigError::BadHostKey { .. } => Reason::InvalidHostKey,
        }
    }
}

/// Reads a Connector manifest. Unknown fields are refused, as strict field
/// validation on the API server would.
pub fn load_connector(path: &Path) -> Result<Connector, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let value: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            reason: e.to_string(),
        })?;
    if value.get("kind").and_then(|k| k.as_str()) != Some("Connector") {
        return Err(ConfigError::Parse {
            path: path.into(),
            reason: "kind must be Connector".into(),
        });
    }
    let connector: Connector =
        serde_json::from_value(value.clone()).map_err(|e| ConfigError::Parse {
            path: path.into(),
            reason: e.to_string(),
        })?;
    let read_back = serde_json::to_value(&connector).map_err(|e| ConfigError::Parse {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let mut unknown = Vec::new();
    unknown_fields(&value, &read_back, "", &mut unknown);
    if !unknown.is_empty() {
        return Err(ConfigError::Parse {
            path: path.into(),
            reason: format!("unknown field(s): {}", unknown.join(", ")),
        });
    }
    Ok(connector)
}

/// Fields of `written` that the types dropped: present with a non-empty value
/// in the file, absent once read. (Empty values may be dropped when serialized
/// back, so they are not reported.)
fn unknown_fields(
    written: &serde_json::Value,
    read: &serde_json::Value,
    at: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    };
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => {
            for (k, v) in w {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match r.get(k) {
                    Some(rv) => unknown_fields(v, rv, &path, out),
                    None if at == "metadata" || path.starts_with("metadata.") => {}
                    None if !empty(v) => out.push(path),
                    None => {}
                }
            }
        }
        (Value::Array(w), Value::Array(r)) => {
            for (i, (a, b)) in w.iter().zip(r).enumerate() {
                unknown_fields(a, b, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The Secrets a run reads: folders as Kubernetes mounts them (local mode), or
/// fetched through the API (cluster mode). Values are zeroized on drop; errors
/// and Debug name Secrets and keys, never contents.
#[derive(Clone)]
pub struct SecretsDir {
    source: SecretSource,
}

#[derive(Clone)]
enum SecretSource {
    Dir(PathBuf),
    Fetched(BTreeMap<String, BTreeMap<String, Zeroizing<Vec<u8>>>>),
}

impl std::fmt::Debug for SecretsDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            SecretSource::Dir(root) => f.debug_tuple("SecretsDir").field(root).finish(),
            SecretSource::Fetched(map) => f
                .debug_struct("Secrets")
                .field("names", &map.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
        }
    }
}

impl PartialEq for SecretsDir {
    fn eq(&self, other: &Self) -> bool {
        match (&self.source, &other.source) {
            (SecretSource::Dir(a), SecretSource::Dir(b)) => a == b,
            (SecretSource::Fetched(a), SecretSource::Fetched(b)) => a == b,
            _ => false,
        }
    }
}

impl SecretsDir {
    /// Secrets under `root`: `root/<secret>/<key>`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            source: SecretSource::Dir(root.into()),
        }
    }

    /// Secrets already fetched: name -> key -> value.
    pub fn fetched(secrets: BTreeMap<String, BTreeMap<String, Zeroizing<Vec<u8>>>>) -> Self {
        Self {
            source: SecretSource::Fetched(secrets),
        }
    }

    /// Every key of every Secret the Connector reads, read now into memory, so
    /// that the run uses one consistent set and a later read can tell whether
    /// they changed. Files whose names start with `..` (the plumbing of a
    /// Kubernetes Secret volume) are skipped; a Secret that is missing stays
    /// missing, and reading from it names it.
    pub fn snapshot(&self, spec: &ferry_crds::ConnectorSpec) -> Self {
        let SecretSource::Dir(root) = &self.source else {
            return self.clone();
        };
        let mut out = BTreeMap::new();
        for name in ferry_crds::secret_names(spec) {
            let Ok(entries) = std::fs::read_dir(root.join(&name)) else {
                continue;
            };
            let mut keys = BTreeMap::new();
            for entry in entries.flatten() {
                let key = entry.file_name().to_string_lossy().to_string();
                if key.starts_with("..") {
                    continue;
                }
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    keys.insert(key, Zeroizing::new(bytes));
                }
            }
            out.insert(name, keys);
        }
        Self {
            source: SecretSource::Fetched(out),
        }
    }

    /// Where a Secret is looked for, for messages.
    fn location(&self, secret: &str) -> String {
        match &self.source {
            SecretSource::Dir(root) => root.join(secret).display().to_string(),
            SecretSource::Fetched(_) => format!("Secret {secret}"),
        }
    }

    /// The bytes of one key of one Secret, zeroized on drop. Errors name the
    /// Secret and key, never the content.
    pub fn read(&self, secret: &str, key: &str) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
        let missing = || ConfigError::MissingSecretKey {
            secret: secret.into(),
            key: key.into(),
            location: self.location(secret),
        };
        match &self.source {
            SecretSource::Dir(root) => std::fs::read(root.join(secret).join(key))
                .map(Zeroizing::new)
                .map_err(|_| missing()),
            SecretSource::Fetched(map) => map
                .get(secret)
                .and_then(|keys| keys.get(key))
                .cloned()
                .ok_or_else(missing),
        }
    }

    /// One key of one Secret as text, surrounding white space removed.
    pub fn string(&self, secret: &str, key: &str) -> Result<Zeroizing<String>, ConfigError> {
        let bytes = self.read(secret, key)?;
        Ok(Zeroizing::new(
            String::from_utf8_lossy(&bytes).trim().to_string(),
        ))
    }

    /// Like [`SecretsDir::string`], for an optional key.
    pub fn optional_string(&self, secret: &str, key: &str) -> Option<Zeroizing<String>> {
        self.string(secret, key).ok().filter(|s| !s.is_empty())
    }

    /// The Connector's KEK.
    pub fn kek(&self, connector: &Connector) -> Result<Kek, ConfigError> {
        let r = &connector.spec.encryption.key_ref;
        let bytes = self.read(&r.secret_ref.name, &r.key)?;
        Kek::parse(&bytes).map_err(|source| ConfigError::BadKey {
            secret: r.secret_ref.name.clone(),
            key: r.key.clone(),
            source,
        })
    }
}

/// What the platform team sets for every run and a Connector cannot: in
/// cluster mode the operator puts it in the pod's environment, in local mode it
/// comes from the command line.
#[derive(Debug, Clone, Default)]
pub struct Platform {
    /// The STS endpoint that AWS web identity tokens are sent to. Unset: the
    /// official regional endpoint (`sts.<region>.amazonaws.com`). Never the
    /// Connector's S3 `endpoint`, which the tenant chooses.
    pub sts_endpoint: Option<String>,
    /// Networks no connection of the run may go to.
    pub network: crate::net::NetworkGuard,
}

/// Opens the store of one end. Relative local paths are taken from `base`.
pub fn open_store(
    side: &'static str,
    endpoint: &Endpoint,
    base: &Path,
    secrets: &SecretsDir,
    platform: &Platform,
) -> Result<Arc<dyn ObjectStore>, ConfigError> {
    let store: Arc<dyn ObjectStore> = match endpoint.kind().ok_or(ConfigError::Endpoint(side))? {
        EndpointKind::Local(l) => Arc::new(LocalStore::new(base.join(&l.path))),
        EndpointKind::S3(e) => {
            let auth = match (&e.credentials.secret_ref, &e.credentials.web_identity) {
                (Some(r), None) => S3Auth::Static {
                    access_key_id: secrets.string(&r.name, "accessKeyId")?,
                    secret_access_key: secrets.string(&r.name, "secretAccessKey")?,
                    session_token: secrets.optional_string(&r.name, "sessionToken"),
                },
                (None, Some(w)) => S3Auth::WebIdentity {
                    role_arn: w.role_arn.clone(),
                    token_file: token_file(env::AWS_WEB_IDENTITY_TOKEN_FILE, paths::AWS_TOKEN_FILE),
                    session_name: format!("ferry-{side}"),
                    sts_endpoint: platform.sts_endpoint.clone(),
                },
                _ => return Err(ConfigError::Endpoint(side)),
            };
            Arc::new(
                S3Store::new(S3Config {
                    bucket: e.bucket.clone(),
                    prefix: e.prefix.clone(),
                    region: e.region.clone(),
                    endpoint: e.endpoint.clone(),
                    force_path_style: e.force_path_style,
                    insecure_plain_http_on_loopback: e.insecure_plain_http_on_loopback,
                    network: platform.network.clone(),
                    auth,
                    reads: ReadTuning::default(),
                })
                .map_err(|source| ConfigError::Store { side, source })?,
            )
        }
        EndpointKind::AzureBlob(e) => {
            let auth = match (&e.credentials.secret_ref, &e.credentials.workload_identity) {
                (Some(r), None) => azure_secret_auth(secrets, &r.name)?,
                (None, Some(w)) => AzureAuth::WorkloadIdentity {
                    tenant_id: w.tenant_id.clone(),
                    client_id: w.client_id.clone(),
                    token_file: token_file(
                        env::AZURE_FEDERATED_TOKEN_FILE,
                        paths::AZURE_TOKEN_FILE,
                    ),
                },
                _ => return Err(ConfigError::Endpoint(side)),
            };
            Arc::new(
                AzureStore::new(AzureConfig {
                    account: e.account.clone(),
                    container: e.container.clone(),
                    prefix: e.prefix.clone(),
                    endpoint: e.endpoint.clone(),
                    insecure_plain_http_on_loopback: e.insecure_plain_http_on_loopback,
                    network: platform.network.clone(),
                    auth,
                })
                .map_err(|source| ConfigError::Store { side, source })?,
            )
        }
        EndpointKind::Sftp(e) => {
            let secret = &e.credentials.secret_ref.name;
            let auth = match secrets.optional_string(secret, "privateKey") {
                Some(private_key) => SftpAuth::Key {
                    private_key,
                    passphrase: secrets.optional_string(secret, "passphrase"),
                },
                None if e.allow_password_auth => {
                    tracing::warn!(
                        side,
                        "SFTP password authentication is in use (allowPasswordAuth: true)"
                    );
                    SftpAuth::Password(secrets.string(secret, "password")?)
                }
                None => {
                    return Err(ConfigError::MissingSecretKey {
                        secret: secret.clone(),
                        key: "privateKey (password authentication needs allowPasswordAuth: true)"
                            .into(),
                        location: secrets.location(secret),
                    });
                }
            };
            let host_key = match (&e.host_key.fingerprint, &e.host_key.secret_ref) {
                (Some(fp), None) => HostKeyCheck::Fingerprint(fp.clone()),
                (None, Some(r)) => {
                    let text = secrets.string(&r.name, "knownHosts")?;
                    HostKeyCheck::from_known_hosts(&text).ok_or_else(|| {
                        ConfigError::BadHostKey {
                            secret: r.name.clone(),
                        }
                    })?
                }
                _ => return Err(ConfigError::Endpoint(side)),
            };
            Arc::new(SftpStore::new(SftpConfig {
                host: e.host.clone(),
                port: u16::try_from(e.port).map_err(|_| ConfigError::Endpoint(side))?,
                path: e.path.clone(),
                username: secrets.string(secret, "username")?.to_string(),
                auth,
                host_key,
                network: platform.network.clone(),
            }))
        }
    };
    Ok(store)
}

/// The projected token: the path in `env_var` when set, else where the operator
/// mounts it (`mounted`, from the operator↔runner contract).
fn token_file(env_var: &str, mounted: &str) -> PathBuf {
    std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(mounted))
}

/// An Azure Secret holds `accountKey`, or `sasToken`, or `tenantId`, `clientId`
/// and `clientSecret`.
fn azure_secret_auth(secrets: &SecretsDir, name: &str) -> Result<AzureAuth, ConfigError> {
    if let Some(key) = secrets.optional_string(name, "accountKey") {
        return Ok(AzureAuth::AccountKey(key));
    }
    if let Some(sas) = secrets.optional_string(name, "sasToken") {
        return Ok(AzureAuth::Sas(sas));
    }
    if let Some(secret) = secrets.optional_string(name, "clientSecret") {
        return Ok(AzureAuth::ClientSecret {
            tenant_id: secrets.string(name, "tenantId")?.to_string(),
            client_id: secrets.string(name, "clientId")?.to_string(),
            client_secret: secret,
        });
    }
    Err(ConfigError::MissingSecretKey {
        secret: name.to_string(),
        key: "accountKey, sasToken or clientSecret".to_string(),
        location: secrets.location(name),
    })
}

/// The residency rule on declared regions: with `in-region-only`, both ends must
/// declare the tenant's region.
pub fn check_residency(
    connector: &Connector,
    tenant_region: Option<&str>,
) -> Result<(), ConfigError> {
    match residency_breaches(&connector.spec, tenant_region).into_iter().next() {
        None => Ok(()),
        Some(ResidencyBreach::TenantRegionUnknown) => Err(ConfigError::Residency(
            "dataResidency is in-region-only but the tenant's region is unknown: pass --tenant-region, or set compliance.dataResidency: any".into(),
        )),
        Some(breach) => Err(ConfigError::Residency(breach.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runner once looked for its web identity token at a path the
    /// operator never mounted anything at; both now take the path from the
    /// contract.
    #[test]
    fn without_the_variable_tokens_are_read_where_the_operator_mounts_them() {
        let unset = "FERRY_TEST_VARIABLE_NEVER_SET";
        assert!(std::env::var_os(unset).is_none());
        assert_eq!(
            token_file(unset, paths::AWS_TOKEN_FILE),
            Path::new(paths::AWS_TOKEN_DIR).join(paths::TOKEN_FILE_NAME)
        );
        assert_eq!(
            token_file(unset, paths::AZURE_TOKEN_FILE),
            Path::new(paths::AZURE_TOKEN_DIR).join(paths::TOKEN_FILE_NAME)
        );
    }
}
