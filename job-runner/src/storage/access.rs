//! What a backend needs to open its store, and why it may not: the credentials
//! its endpoint names ([`Secrets`], which the run's Secrets provide), the
//! platform's settings ([`Platform`]) and where projected tokens are. Each
//! backend opens itself from its endpoint with these (`s3::open`,
//! `azure::open`, `sftp::open`); nothing here knows a backend.

use std::path::PathBuf;

use ferry_crds::Reason;
use zeroize::Zeroizing;

use super::StorageError;

/// What the platform team sets for every run and a Connector cannot: in
/// cluster mode the operator puts it in the pod's environment, in local mode it
/// comes from the command line.
#[derive(Debug, Clone, Default)]
pub struct Platform {
    /// The STS endpoint that AWS web identity tokens are sent to. Unset: the
    /// official regional endpoint (`sts.<region>.amazonaws.com`). Never the
    /// Connector's S3 `endpoint`, which the tenant chooses.
    pub sts_endpoint: Option<String>,
    /// The endpoint of AWS Secrets Manager and KMS. Unset: the official
    /// regional endpoints.
    pub aws_endpoint: Option<String>,
    /// Networks no connection of the run may go to.
    pub network: crate::net::NetworkGuard,
    /// The platform's Vault, for credentials a Connector keeps there.
    pub vault: Option<crate::vault::VaultSettings>,
    /// The run's projected token for AWS; unset, [`token_file`] of the AWS
    /// SDKs' variable or the operator's mount.
    pub aws_token_file: Option<PathBuf>,
    /// When the run must end (its pod's deadline), if it has one: the cloud
    /// sessions it gets end soon after.
    pub run_ends: Option<std::time::Instant>,
}

impl Platform {
    /// The run's projected token for AWS web identity.
    pub fn aws_token_file(&self) -> PathBuf {
        self.aws_token_file.clone().unwrap_or_else(|| {
            token_file(
                ferry_crds::contract::env::AWS_WEB_IDENTITY_TOKEN_FILE,
                ferry_crds::contract::paths::AWS_TOKEN_FILE,
            )
        })
    }
}

/// A key a Secret does not hold. Names the Secret, the key and where it was
/// looked for, never a value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("secret {secret:?} has no key {key:?} (looked in {location})")]
pub struct SecretKeyMissing {
    pub secret: String,
    pub key: String,
    pub location: String,
}

/// The Secrets a store's credentials come from.
pub trait Secrets {
    /// One key of one Secret as text, surrounding white space removed.
    fn string(&self, secret: &str, key: &str) -> Result<Zeroizing<String>, SecretKeyMissing>;

    /// Where a Secret is looked for, for messages.
    fn location(&self, secret: &str) -> String;

    /// Like [`Secrets::string`], for an optional key: `None` when missing
    /// or empty.
    fn optional_string(&self, secret: &str, key: &str) -> Option<Zeroizing<String>> {
        self.string(secret, key).ok().filter(|s| !s.is_empty())
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}: exactly one of s3, azureBlob, sftp or local must be set")]
    Endpoint(&'static str),
    #[error(transparent)]
    MissingSecretKey(#[from] SecretKeyMissing),
    #[error(
        "secret {secret:?} key \"knownHosts\" holds no public key in known_hosts or .pub format"
    )]
    BadHostKey { secret: String },
    #[error("{side}: {source}")]
    Store {
        side: &'static str,
        source: StorageError,
    },
}

impl OpenError {
    /// A stable, machine-readable reason.
    pub fn reason(&self) -> Reason {
        match self {
            OpenError::Endpoint(_) => Reason::InvalidSpec,
            OpenError::MissingSecretKey(_) => Reason::SecretKeyMissing,
            OpenError::BadHostKey { .. } => Reason::InvalidHostKey,
            OpenError::Store { source, .. } => source.reason(),
        }
    }
}

/// The projected token: the path in `env_var` when set, else where the operator
/// mounts it (`mounted`, from the operator↔runner contract).
pub fn token_file(env_var: &str, mounted: &str) -> PathBuf {
    std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(mounted))
}
