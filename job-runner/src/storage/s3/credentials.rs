//! S3 credentials: static keys read from a Secret, or web identity (a projected
//! service-account token exchanged with STS for short-lived keys).

use std::path::PathBuf;
use std::time::Instant;

use aws_credential_types::Credentials;
use aws_credential_types::provider::{
    ProvideCredentials, SharedCredentialsProvider, error::CredentialsError, future,
};
use zeroize::Zeroizing;

/// How the runner authenticates to S3. `Debug` never shows a secret.
#[derive(Clone)]
pub enum S3Auth {
    /// Keys from a Secret.
    Static {
        access_key_id: Zeroizing<String>,
        secret_access_key: Zeroizing<String>,
        session_token: Option<Zeroizing<String>>,
    },
    /// AssumeRoleWithWebIdentity with the token in `token_file`, read afresh at
    /// every refresh (the kubelet rotates it).
    WebIdentity {
        role_arn: String,
        token_file: PathBuf,
        session_name: String,
        /// STS endpoint override (S3-compatible stores, tests); AWS's regional STS otherwise.
        sts_endpoint: Option<String>,
        /// When the run must end (its pod's deadline): the sessions STS grants
        /// end soon after ([`session_seconds`]).
        run_ends: Option<Instant>,
    },
}

/// How long to ask STS for a session that ends with the run: the time left
/// until `run_ends` and a minute, within STS's bounds (15 minutes at least;
/// an hour at most, which every role accepts and the SDK renews). `None`
/// (STS's default, an hour) when the run has no deadline (local runs).
pub fn session_seconds(run_ends: Option<Instant>) -> Option<i32> {
    let left = run_ends?
        .saturating_duration_since(Instant::now())
        .as_secs();
    Some(i32::try_from(left.saturating_add(60).clamp(900, 3600)).unwrap_or(3600))
}

impl std::fmt::Debug for S3Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Auth::Static { .. } => f.write_str("S3Auth::Static { .. }"),
            S3Auth::WebIdentity { role_arn, .. } => f
                .debug_struct("S3Auth::WebIdentity")
                .field("role_arn", role_arn)
                .finish_non_exhaustive(),
        }
    }
}

/// STS could not be reached: the cause of a credentials error that is worth
/// retrying, unlike STS refusing the token.
#[derive(Debug, thiserror::Error)]
#[error("STS could not be reached: {0}")]
pub struct StsUnreachable(pub String);

/// Why an AWS call failed before it was sent, if its credentials did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsFailure {
    /// STS could not be reached: worth retrying.
    StsUnreachable(String),
    /// No token, or STS refused it: an authentication failure.
    Refused,
}

/// Whether `err` (an SDK error) failed for its credentials, and how: the
/// whole chain of causes is searched, since the SDK wraps the provider's error.
pub fn credentials_failure(err: &(dyn std::error::Error + 'static)) -> Option<CredentialsFailure> {
    let mut found = None;
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(sts) = e.downcast_ref::<StsUnreachable>() {
            return Some(CredentialsFailure::StsUnreachable(sts.to_string()));
        }
        if e.downcast_ref::<CredentialsError>().is_some() {
            found = Some(CredentialsFailure::Refused);
        }
        source = e.source();
    }
    found
}

/// Credentials for `role_arn` from the projected token in `token_file`,
/// exchanged with STS (`sts_endpoint`, else the regional one) when needed and
/// again before they expire; every connection checked against `network`.
/// Plain http is accepted for a loopback STS endpoint only.
pub fn web_identity_provider(
    role_arn: &str,
    token_file: PathBuf,
    session_name: &str,
    region: &str,
    sts_endpoint: Option<&str>,
    network: &crate::net::NetworkGuard,
    run_ends: Option<Instant>,
) -> Result<SharedCredentialsProvider, crate::storage::StorageError> {
    let mut sts = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .http_client(crate::net::aws_http_client(network))
        .region(aws_sdk_sts::config::Region::new(region.to_string()));
    if let Some(url) = sts_endpoint {
        crate::storage::check_connector_url("STS", url, true, network)?;
        sts = sts.endpoint_url(url);
    }
    Ok(SharedCredentialsProvider::new(WebIdentityProvider {
        role_arn: role_arn.to_string(),
        token_file,
        session_name: session_name.to_string(),
        sts: aws_sdk_sts::Client::from_conf(sts.build()),
        run_ends,
    }))
}

/// A credentials provider for web identity.
#[derive(Debug)]
struct WebIdentityProvider {
    pub role_arn: String,
    pub token_file: PathBuf,
    pub session_name: String,
    pub sts: aws_sdk_sts::Client,
    pub run_ends: Option<Instant>,
}

impl WebIdentityProvider {
    async fn load(&self) -> Result<Credentials, CredentialsError> {
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| {
                CredentialsError::not_loaded(format!(
                    "failed to read the web identity token {}: {e}",
                    self.token_file.display()
                ))
            })?;
        let token = Zeroizing::new(token);
        let resp = self
            .sts
            .assume_role_with_web_identity()
            .role_arn(&self.role_arn)
            .role_session_name(&self.session_name)
            .set_duration_seconds(session_seconds(self.run_ends))
            .web_identity_token(token.trim())
            .send()
            .await
            .map_err(|e| {
                use aws_sdk_sts::error::SdkError;
                if matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)) {
                    return CredentialsError::provider_error(StsUnreachable(
                        aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
                    ));
                }
                let code = aws_sdk_sts::error::ProvideErrorMetadata::code(&e)
                    .unwrap_or("")
                    .to_string();
                CredentialsError::provider_error(format!(
                    "STS refused the web identity token for role {}: {code}",
                    self.role_arn
                ))
            })?;
        let c = resp
            .credentials()
            .ok_or_else(|| CredentialsError::unhandled("STS returned no credentials"))?;
        let expiry = std::time::SystemTime::try_from(*c.expiration()).ok();
        Ok(Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            expiry,
            "ferry-web-identity",
        ))
    }
}

impl ProvideCredentials for WebIdentityProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.load())
    }
}
