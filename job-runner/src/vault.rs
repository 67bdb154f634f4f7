//! Credentials from the platform's Vault (or OpenBao): KV version 2 secrets
//! named by a Connector's `credentials.vault`, read at run time by the run
//! itself. The run logs in with its own projected, expiring ServiceAccount
//! token through the JWT auth method, as the role the platform team set for
//! its namespace: no static Vault token exists anywhere, and the operator
//! never reads these secrets. Vault's audit device records every read under
//! the run's identity; Ferry's audit line names the store, the path and the
//! version read (never a value), so the two trails join.
//!
//! The client is `vaultrs` (KV v2 and JWT login; the same reqwest as the
//! runner's other HTTPS clients). Values are kept zeroized, under the name
//! `vault:<mount>/<path>` beside the Secrets ([`VaultSecret::secret_name`]),
//! each field under its own name and, where the Connector maps them, under
//! Ferry's key too.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ferry_crds::{ConnectorSpec, Reason, VaultSecret};
use vaultrs::api::kv2::requests::ReadSecretRequest;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

/// Where the platform's Vault is and how a run logs in to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultSettings {
    /// Its address, e.g. `https://vault.platform.svc:8200`.
    pub addr: String,
    /// Mount of the JWT auth method (`jwt` by default).
    pub auth_mount: String,
    /// The role the run logs in as (the operator sets one per namespace).
    pub role: String,
    /// The run's projected ServiceAccount token for Vault's audience.
    pub token_file: PathBuf,
}

/// Why Vault did not give a run its credentials. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the Connector reads {0} from Vault, but no Vault is configured for runs")]
    NotConfigured(String),
    #[error("Vault at {addr} could not be reached: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("failed to read the run's Vault token {path}: {reason}")]
    Token { path: String, reason: String },
    #[error(
        "Vault refused the run's login as role {role:?} (auth/{mount}): {reason}; the role must exist and accept this run's ServiceAccount token"
    )]
    LoginDenied {
        role: String,
        mount: String,
        reason: String,
    },
    #[error("Vault refused to let role {role:?} read {secret}: its policy does not allow it")]
    ReadDenied { role: String, secret: String },
    #[error("Vault has no secret {0} (a wrong path, or a deleted version)")]
    NotFound(String),
    #[error(
        "Vault answered the read of {secret} with something that is not a KV version 2 secret of strings: {reason}"
    )]
    Malformed { secret: String, reason: String },
}

impl VaultError {
    /// The stable reason: an unreachable store is retried, a refusal is not.
    pub fn reason(&self) -> Reason {
        match self {
            VaultError::NotConfigured(_) => Reason::InvalidSpec,
            VaultError::Unreachable { .. } => Reason::SecretStoreUnreachable,
            VaultError::Token { .. }
            | VaultError::LoginDenied { .. }
            | VaultError::ReadDenied { .. } => Reason::SecretStoreDenied,
            VaultError::NotFound(_) | VaultError::Malformed { .. } => Reason::SecretKeyMissing,
        }
    }
}

/// One secret read: its name beside the Secrets and the version read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// `vault:<mount>/<path>`.
    pub name: String,
    /// The KV version read.
    pub version: u64,
}

/// What a run read from Vault.
#[derive(Default)]
pub struct Fetched {
    /// Values by name (`vault:<mount>/<path>`), then key.
    pub secrets: BTreeMap<String, BTreeMap<String, Zeroizing<Vec<u8>>>>,
    /// Each secret read, for the audit trail.
    pub reads: Vec<Read>,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("reads", &self.reads)
            .finish_non_exhaustive()
    }
}

pub use ferry_crds::vault_secrets as references;

/// Logs in once and reads every Vault secret the Connector names; nothing
/// when it names none (no login either).
pub async fn fetch(
    settings: Option<&VaultSettings>,
    spec: &ConnectorSpec,
) -> Result<Fetched, VaultError> {
    let wanted = references(spec);
    let Some(first) = wanted.first() else {
        return Ok(Fetched::default());
    };
    let settings = settings.ok_or_else(|| VaultError::NotConfigured(first.secret_name()))?;
    let client = login(settings).await?;
    let mut fetched = Fetched::default();
    for secret in wanted {
        let (values, version) = read(&client, settings, secret).await?;
        fetched.reads.push(Read {
            name: secret.secret_name(),
            version,
        });
        fetched.secrets.insert(secret.secret_name(), values);
    }
    Ok(fetched)
}

fn unreachable(settings: &VaultSettings, e: impl std::fmt::Display) -> VaultError {
    VaultError::Unreachable {
        addr: settings.addr.clone(),
        reason: e.to_string(),
    }
}

/// A client logged in as the run: its token kept by the client only.
async fn login(settings: &VaultSettings) -> Result<VaultClient, VaultError> {
    let jwt = Zeroizing::new(
        std::fs::read_to_string(&settings.token_file)
            .map_err(|e| VaultError::Token {
                path: settings.token_file.display().to_string(),
                reason: e.to_string(),
            })?
            .trim()
            .to_string(),
    );
    let client_settings = VaultClientSettingsBuilder::default()
        .address(&settings.addr)
        .build()
        .map_err(|e| unreachable(settings, e))?;
    let mut client = VaultClient::new(client_settings).map_err(|e| unreachable(settings, e))?;
    let auth = vaultrs::auth::oidc::login(
        &client,
        &settings.auth_mount,
        &jwt,
        Some(settings.role.clone()),
    )
    .await
    .map_err(|e| match api_status(&e) {
        Some(code) if code < 500 => VaultError::LoginDenied {
            role: settings.role.clone(),
            mount: settings.auth_mount.clone(),
            reason: api_errors(&e),
        },
        _ => unreachable(settings, describe(&e)),
    })?;
    client.set_token(&auth.client_token);
    Ok(client)
}

/// Reads one secret: every field, and Ferry's keys where they are mapped.
async fn read(
    client: &VaultClient,
    settings: &VaultSettings,
    secret: &VaultSecret,
) -> Result<(BTreeMap<String, Zeroizing<Vec<u8>>>, u64), VaultError> {
    let name = secret.secret_name();
    let endpoint = ReadSecretRequest::builder()
        .mount(&secret.mount)
        .path(&secret.path)
        .build()
        .map_err(|e| VaultError::Malformed {
            secret: name.clone(),
            reason: e.to_string(),
        })?;
    let response = vaultrs::api::exec_with_result(client, endpoint)
        .await
        .map_err(|e| match api_status(&e) {
            Some(404) => VaultError::NotFound(name.clone()),
            Some(403) => VaultError::ReadDenied {
                role: settings.role.clone(),
                secret: name.clone(),
            },
            Some(code) if code < 500 => VaultError::Malformed {
                secret: name.clone(),
                reason: api_errors(&e),
            },
            _ => unreachable(settings, describe(&e)),
        })?;
    let malformed = |reason: &str| VaultError::Malformed {
        secret: name.clone(),
        reason: reason.to_string(),
    };
    let serde_json::Value::Object(fields) = response.data else {
        return Err(malformed("its data is not an object"));
    };
    let mut values = BTreeMap::new();
    for (field, value) in fields {
        let serde_json::Value::String(v) = value else {
            return Err(malformed(&format!("field {field:?} is not a string")));
        };
        values.insert(field, Zeroizing::new(v.into_bytes()));
    }
    for (key, field) in &secret.fields {
        if let Some(v) = values.get(field).cloned() {
            values.insert(key.clone(), v);
        }
    }
    Ok((values, response.metadata.version))
}

/// The HTTP status of an answer Vault gave, if it gave one.
fn api_status(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::APIError { code, .. } => Some(*code),
        _ => None,
    }
}

/// Vault's own error messages (they name paths and roles, never values).
fn api_errors(e: &ClientError) -> String {
    match e {
        ClientError::APIError { code, errors } if !errors.is_empty() => {
            format!("{} (HTTP {code})", errors.join("; "))
        }
        ClientError::APIError { code, .. } => format!("HTTP {code}"),
        other => describe(other),
    }
}

/// A client error with its causes.
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
