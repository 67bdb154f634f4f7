//! Local mode inputs: a Connector from a YAML file and Secrets from a folder laid
//! out as Kubernetes mounts them (a folder per Secret, a file per key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_crds::{Connector, Endpoint, EndpointKind, Reason, ResidencyBreach, residency_breaches};
use zeroize::Zeroizing;

use crate::crypto::{Kek, KeyError, ManifestSigner};
use crate::storage::ObjectStore;
pub use crate::storage::access::{OpenError, Platform, SecretKeyMissing, Secrets};
use crate::storage::local::LocalStore;

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
    #[error(transparent)]
    MissingSecretKey(#[from] SecretKeyMissing),
    #[error("secret {secret:?} key {key:?}: {source}")]
    BadKey {
        secret: String,
        key: String,
        source: KeyError,
    },
    #[error("{0}")]
    Residency(String),
    #[error("the Connector's key-encryption key is in a KMS (encryption.kms), not a Secret")]
    KekInKms,
}

impl ConfigError {
    /// A stable, machine-readable reason.
    pub fn reason(&self) -> Reason {
        match self {
            ConfigError::Read { .. } | ConfigError::Parse { .. } | ConfigError::KekInKms => {
                Reason::InvalidSpec
            }
            ConfigError::MissingSecretKey(_) => Reason::SecretKeyMissing,
            ConfigError::BadKey { .. } => Reason::InvalidEncryptionKey,
            ConfigError::Residency(_) => Reason::ResidencyViolation,
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
    /// Values read from a secret store, by `vault:<mount>/<path>` or
    /// `aws-secretsmanager:<region>/<id>`.
    stores: BTreeMap<String, BTreeMap<String, Zeroizing<Vec<u8>>>>,
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
        self.stores == other.stores
            && match (&self.source, &other.source) {
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
            stores: BTreeMap::new(),
            source: SecretSource::Dir(root.into()),
        }
    }

    /// Secrets already fetched: name -> key -> value.
    pub fn fetched(secrets: BTreeMap<String, BTreeMap<String, Zeroizing<Vec<u8>>>>) -> Self {
        Self {
            stores: BTreeMap::new(),
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
            stores: self.stores.clone(),
            source: SecretSource::Fetched(out),
        }
    }

    /// These Secrets, and the values read from a secret store.
    pub fn with_store_secrets(
        mut self,
        stores: BTreeMap<String, BTreeMap<String, Zeroizing<Vec<u8>>>>,
    ) -> Self {
        self.stores.extend(stores);
        self
    }

    /// Where a Secret is looked for, for messages.
    pub fn location(&self, secret: &str) -> String {
        if secret.starts_with("vault:") || secret.starts_with("aws-secretsmanager:") {
            return secret.to_string();
        }
        match &self.source {
            SecretSource::Dir(root) => root.join(secret).display().to_string(),
            SecretSource::Fetched(_) => format!("Secret {secret}"),
        }
    }

    /// The bytes of one key of one Secret, zeroized on drop. Errors name the
    /// Secret and key, never the content.
    pub fn read(&self, secret: &str, key: &str) -> Result<Zeroizing<Vec<u8>>, SecretKeyMissing> {
        let missing = || SecretKeyMissing {
            secret: secret.into(),
            key: key.into(),
            location: self.location(secret),
        };
        if let Some(keys) = self.stores.get(secret) {
            return keys.get(key).cloned().ok_or_else(missing);
        }
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

    /// The Connector's KEK.
    pub fn kek(&self, connector: &Connector) -> Result<Kek, ConfigError> {
        let r = connector
            .spec
            .encryption
            .key_ref
            .as_ref()
            .ok_or(ConfigError::KekInKms)?;
        let bytes = self.read(&r.secret_ref.name, &r.key)?;
        Kek::parse(&bytes).map_err(|source| ConfigError::BadKey {
            secret: r.secret_ref.name.clone(),
            key: r.key.clone(),
            source,
        })
    }
}

impl SecretsDir {
    /// The Connector's manifest signing key, when it names one.
    pub fn signer(&self, connector: &Connector) -> Result<Option<ManifestSigner>, ConfigError> {
        let Some(r) = &connector.spec.encryption.signing_key_ref else {
            return Ok(None);
        };
        let bytes = self.read(&r.secret_ref.name, &r.key)?;
        ManifestSigner::parse(&bytes)
            .map(Some)
            .map_err(|source| ConfigError::BadKey {
                secret: r.secret_ref.name.clone(),
                key: r.key.clone(),
                source,
            })
    }
}

impl Secrets for SecretsDir {
    fn string(&self, secret: &str, key: &str) -> Result<Zeroizing<String>, SecretKeyMissing> {
        let bytes = self.read(secret, key)?;
        Ok(Zeroizing::new(
            String::from_utf8_lossy(&bytes).trim().to_string(),
        ))
    }

    fn location(&self, secret: &str) -> String {
        SecretsDir::location(self, secret)
    }
}

/// Opens the store of one end; each backend builds its own from its endpoint,
/// its Secrets and the platform's settings. Relative local paths are taken
/// from `base`.
pub fn open_store(
    side: &'static str,
    endpoint: &Endpoint,
    base: &Path,
    secrets: &SecretsDir,
    platform: &Platform,
) -> Result<Arc<dyn ObjectStore>, OpenError> {
    Ok(match endpoint.kind().ok_or(OpenError::Endpoint(side))? {
        EndpointKind::Local(l) => Arc::new(LocalStore::new(base.join(&l.path))),
        EndpointKind::S3(e) => Arc::new(crate::storage::s3::open(side, e, secrets, platform)?),
        EndpointKind::AzureBlob(e) => {
            Arc::new(crate::storage::azure::open(side, e, secrets, platform)?)
        }
        EndpointKind::Sftp(e) => Arc::new(crate::storage::sftp::open(side, e, secrets, platform)?),
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
    use crate::storage::access::token_file;
    use ferry_crds::contract::paths;

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
