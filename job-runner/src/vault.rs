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
//!
//! A Connector's KEK may also be a key of Vault's Transit engine
//! ([`VaultTransit`]): a run asks it for one data key (the run key), and a
//! reader unwraps each run key it meets with one decrypt call. The key itself
//! never leaves Vault; every call is audited with the key version it used.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ferry_crds::{ConnectorSpec, Reason, VaultSecret, VaultTransitKey};
use vaultrs::api::kv2::requests::ReadSecretRequest;
use vaultrs::api::transit::requests::DataKeyType;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use crate::audit::{AuditLog, Outcome};
use crate::crypto::keys::{DataKey, Kms, KmsError, KmsFuture};

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
    /// The run's login, made once when first needed and shared by the reads
    /// of secrets and the Transit calls.
    pub session: Session,
}

impl VaultSettings {
    /// Ends the run's login, if it made one: the token is revoked
    /// (`auth/token/revoke-self`, which Vault's default policy grants) when
    /// the run ends instead of living out its TTL. A failure is logged: the
    /// token still dies at its TTL. Whether a token was revoked.
    pub async fn log_out(&self) -> bool {
        let Some(client) = self.session.0.get() else {
            return false;
        };
        match vaultrs::token::revoke_self(client.as_ref()).await {
            Ok(()) => {
                tracing::info!(role = %self.role, "Vault token revoked at the end of the run");
                true
            }
            Err(e) => {
                tracing::warn!(role = %self.role, error = %describe(&e), "failed to revoke the run's Vault token; it lives until its TTL");
                false
            }
        }
    }

    /// Settings of a run that has not logged in yet.
    pub fn new(addr: String, auth_mount: String, role: String, token_file: PathBuf) -> Self {
        Self {
            addr,
            auth_mount,
            role,
            token_file,
            session: Session::default(),
        }
    }
}

/// A run's Vault login, shared by clones of its settings.
#[derive(Clone, Default)]
pub struct Session(Arc<tokio::sync::OnceCell<Arc<VaultClient>>>);

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.initialized() {
            "Session(logged in)"
        } else {
            "Session(not logged in)"
        })
    }
}

impl PartialEq for Session {
    /// Settings are compared for what they name, not whether they logged in.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Session {}

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
    /// `vault:<mount>/<path>` (or `aws-secretsmanager:<region>/<id>`).
    pub name: String,
    /// The version read: `v<KV version>` (or the Secrets Manager version id).
    pub version: String,
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
            version: format!("v{version}"),
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

/// The client logged in as the run: the first call logs in, later ones share
/// the login (one login per run, whatever it reads).
async fn login(settings: &VaultSettings) -> Result<Arc<VaultClient>, VaultError> {
    settings
        .session
        .0
        .get_or_try_init(|| async { new_login(settings).await.map(Arc::new) })
        .await
        .cloned()
}

/// A new login as the run: its token kept by the client only.
async fn new_login(settings: &VaultSettings) -> Result<VaultClient, VaultError> {
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
    let values = store_values(fields, &secret.fields).map_err(|e| malformed(&e))?;
    Ok((values, response.metadata.version))
}

/// The fields of a secret store's secret as values beside the Secrets: each
/// under its own name and, where `mapping` says (Ferry's key to the field),
/// under Ferry's key too. Every field must be a string; an error names the
/// field, never a value.
pub fn store_values(
    fields: impl IntoIterator<Item = (String, serde_json::Value)>,
    mapping: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, String> {
    let mut values = BTreeMap::new();
    for (field, value) in fields {
        let serde_json::Value::String(v) = value else {
            return Err(format!("field {field:?} is not a string"));
        };
        values.insert(field, Zeroizing::new(v.into_bytes()));
    }
    for (key, field) in mapping {
        if let Some(v) = values.get(field).cloned() {
            values.insert(key.clone(), v);
        }
    }
    Ok(values)
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

/// A KEK in Vault's Transit engine, used with a logged-in client: the run's
/// own login, or a reader's token (decrypt rights are enough to read).
pub struct VaultTransit {
    client: Arc<VaultClient>,
    addr: String,
    key: VaultTransitKey,
    name: String,
    audit: Option<AuditLog>,
}

impl VaultTransit {
    /// The Connector's Transit key, used as the run: it logs in with its own
    /// token; each call is audited (`kms.datakey`, `kms.decrypt`) with the
    /// key version, never a key.
    pub async fn login(
        settings: Option<&VaultSettings>,
        key: &VaultTransitKey,
        audit: AuditLog,
    ) -> Result<Self, VaultError> {
        let settings = settings.ok_or_else(|| VaultError::NotConfigured(key.name()))?;
        let client = login(settings).await?;
        Ok(Self {
            client,
            addr: settings.addr.clone(),
            key: key.clone(),
            name: key.name(),
            audit: Some(audit),
        })
    }

    /// The Transit key `name` (`vault-transit:<mount>/<key>`) at `addr`, used
    /// with a reader's Vault token.
    pub fn with_token(addr: &str, token: &str, name: &str) -> Result<Self, VaultError> {
        let bad = || VaultError::Malformed {
            secret: name.to_string(),
            reason: "a Transit key is named vault-transit:<mount>/<key>".into(),
        };
        let path = name.strip_prefix("vault-transit:").ok_or_else(bad)?;
        let (mount, key) = path.rsplit_once('/').ok_or_else(bad)?;
        if mount.is_empty() || key.is_empty() || path.contains(':') {
            return Err(bad());
        }
        let settings = VaultClientSettingsBuilder::default()
            .address(addr)
            .token(token)
            .build()
            .map_err(|e| VaultError::Unreachable {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let client = VaultClient::new(settings).map_err(|e| VaultError::Unreachable {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            client: Arc::new(client),
            addr: addr.to_string(),
            key: VaultTransitKey {
                mount: mount.to_string(),
                key: key.to_string(),
            },
            name: name.to_string(),
            audit: None,
        })
    }

    fn kms_error(&self, e: &ClientError) -> KmsError {
        let (message, unreachable) = match api_status(e) {
            Some(code) if code < 500 => (
                format!(
                    "Vault at {} refused: {}; the role needs update on {}/datakey/plaintext/{} (runs) and {}/decrypt/{}",
                    self.addr,
                    api_errors(e),
                    self.key.mount,
                    self.key.key,
                    self.key.mount,
                    self.key.key
                ),
                false,
            ),
            _ => (
                format!(
                    "Vault at {} could not be reached: {}",
                    self.addr,
                    describe(e)
                ),
                true,
            ),
        };
        KmsError {
            key: self.name.clone(),
            message,
            unreachable,
        }
    }

    fn malformed(&self, what: &str) -> KmsError {
        KmsError {
            key: self.name.clone(),
            message: format!("Vault answered with {what}"),
            unreachable: false,
        }
    }

    fn audit(&self, action: &str, outcome: Outcome, ciphertext: Option<&str>) {
        if let Some(audit) = &self.audit {
            let what = match ciphertext.and_then(key_version) {
                Some(v) => format!("{}@v{v}", self.name),
                None => self.name.clone(),
            };
            let reason =
                (outcome != Outcome::Success).then_some(Reason::SecretStoreDenied.as_str());
            audit.record(action, outcome, reason, Some(&what));
        }
    }

    fn data_key_bytes(&self, plaintext: &str) -> Result<DataKey, KmsError> {
        let bytes = Zeroizing::new(
            BASE64
                .decode(plaintext)
                .map_err(|_| self.malformed("a data key that is not base64"))?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return Err(self.malformed("a data key that is not 32 bytes"));
        }
        key.copy_from_slice(&bytes);
        Ok(key)
    }
}

/// The key version of a Transit ciphertext: `vault:v3:...` is 3.
pub fn key_version(ciphertext: &str) -> Option<u64> {
    let mut parts = ciphertext.split(':');
    let (_, v) = (parts.next()?, parts.next()?);
    v.strip_prefix('v')?.parse().ok()
}

impl Kms for VaultTransit {
    fn name(&self) -> &str {
        &self.name
    }

    fn data_key(&self) -> KmsFuture<'_, (DataKey, String)> {
        Box::pin(async move {
            let answer = vaultrs::transit::generate::data_key(
                self.client.as_ref(),
                &self.key.mount,
                &self.key.key,
                DataKeyType::Plaintext,
                None,
            )
            .await
            .map_err(|e| {
                self.audit("kms.datakey", Outcome::Failure, None);
                self.kms_error(&e)
            })?;
            let plaintext = Zeroizing::new(
                answer
                    .plaintext
                    .ok_or_else(|| self.malformed("no plaintext data key"))?,
            );
            let key = self.data_key_bytes(&plaintext)?;
            self.audit("kms.datakey", Outcome::Success, Some(&answer.ciphertext));
            Ok((key, format!("{}:{}", self.name, answer.ciphertext)))
        })
    }

    fn unwrap<'a>(&'a self, wrapped: &'a str) -> KmsFuture<'a, DataKey> {
        Box::pin(async move {
            let ciphertext = wrapped
                .strip_prefix(self.name.as_str())
                .and_then(|c| c.strip_prefix(':'))
                .ok_or_else(|| self.malformed("a key wrapped by another key"))?;
            let answer = vaultrs::transit::data::decrypt(
                self.client.as_ref(),
                &self.key.mount,
                &self.key.key,
                ciphertext,
                None,
            )
            .await
            .map_err(|e| {
                self.audit("kms.decrypt", Outcome::Failure, Some(ciphertext));
                self.kms_error(&e)
            })?;
            let plaintext = Zeroizing::new(answer.plaintext);
            let key = self.data_key_bytes(&plaintext)?;
            self.audit("kms.decrypt", Outcome::Success, Some(ciphertext));
            Ok(key)
        })
    }
}
