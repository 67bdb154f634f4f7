//! Credentials from AWS Secrets Manager and KEKs in AWS KMS, used by the run
//! with its own identity: it assumes the role its Connector names with its
//! projected, expiring ServiceAccount token (the same web identity as S3's),
//! so no AWS key exists anywhere. The operator never reads these secrets.
//!
//! A Secrets Manager secret holds a JSON object of strings, the keys the
//! Secret it replaces would hold (`fields` maps Ferry's keys where they
//! differ); its values are filed, zeroized, under
//! `aws-secretsmanager:<region>/<id>` beside the Secrets ([`fetch`]). Each
//! read is audited with the version id read, never a value.
//!
//! An AWS KMS key ([`AwsKms`]) is used like a Transit key: one
//! `GenerateDataKey` per run gives its run key, one `Decrypt` per run key read
//! back; the wrapped form is `aws-kms:<region>/<key id>:<base64 of the
//! ciphertext blob>`.

use std::collections::BTreeMap;

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ferry_crds::{AwsKmsKey, AwsSecret, ConnectorSpec, Reason, WebIdentity};
use zeroize::Zeroizing;

use crate::audit::{AuditLog, Outcome};
use crate::crypto::keys::{DataKey, Kms, KmsError, KmsFuture};
use crate::storage::access::Platform;
use crate::storage::check_endpoint_url;
use crate::storage::s3::{CredentialsFailure, credentials_failure, web_identity_provider};
use crate::vault::{Fetched, Read, store_values};

/// Why AWS did not give a run its credentials or its key. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error(
        "{what}: AWS refused the run ({code}); the role {role} must trust this run's token and allow the call"
    )]
    Denied {
        what: String,
        role: String,
        code: String,
    },
    #[error("{0}: no such secret, version stage or key (a wrong id, region or stage)")]
    NotFound(String),
    #[error("{what}: AWS could not be reached: {reason}")]
    Unreachable { what: String, reason: String },
    #[error("{what}: {reason}")]
    Malformed { what: String, reason: String },
}

impl AwsError {
    /// The stable reason: an unreachable service is retried, a refusal is not.
    pub fn reason(&self) -> Reason {
        match self {
            AwsError::Denied { .. } => Reason::SecretStoreDenied,
            AwsError::NotFound(_) | AwsError::Malformed { .. } => Reason::SecretKeyMissing,
            AwsError::Unreachable { .. } => Reason::SecretStoreUnreachable,
        }
    }
}

/// The run's credentials for `role`: its projected token exchanged with STS.
fn credentials(
    what: &str,
    role: &WebIdentity,
    region: &str,
    platform: &Platform,
) -> Result<SharedCredentialsProvider, AwsError> {
    web_identity_provider(
        &role.role_arn,
        platform.aws_token_file(),
        "ferry-secrets",
        region,
        platform.sts_endpoint.as_deref(),
        &platform.network,
        platform.run_ends,
    )
    .map_err(|e| AwsError::Malformed {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// The endpoint the platform team set for Secrets Manager and KMS, checked
/// like any endpoint (https, or plain http on loopback).
fn endpoint(what: &str, platform: &Platform) -> Result<Option<String>, AwsError> {
    let Some(url) = &platform.aws_endpoint else {
        return Ok(None);
    };
    check_endpoint_url(what, url, true).map_err(|e| AwsError::Malformed {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Some(url.trim_end_matches('/').to_string()))
}

/// An SDK error as an [`AwsError`] about `what`, done as `role`.
fn classify<E, R>(what: &str, role: &str, err: &SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match credentials_failure(err) {
        Some(CredentialsFailure::StsUnreachable(reason)) => {
            return AwsError::Unreachable {
                what: what.to_string(),
                reason,
            };
        }
        Some(CredentialsFailure::Refused) => {
            return AwsError::Denied {
                what: what.to_string(),
                role: role.to_string(),
                code: "STS refused the run's token".into(),
            };
        }
        None => {}
    }
    if matches!(
        err,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
    ) {
        return AwsError::Unreachable {
            what: what.to_string(),
            reason: aws_smithy_types::error::display::DisplayErrorContext(err).to_string(),
        };
    }
    let code = err.code().unwrap_or("unknown error").to_string();
    match code.as_str() {
        "ResourceNotFoundException" | "NotFoundException" => AwsError::NotFound(what.to_string()),
        // AWS busy or failing on its side: worth another attempt.
        "ThrottlingException"
        | "RequestLimitExceeded"
        | "InternalServiceError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "KMSInternalException"
        | "DependencyTimeoutException" => AwsError::Unreachable {
            what: what.to_string(),
            reason: code,
        },
        _ => AwsError::Denied {
            what: what.to_string(),
            role: role.to_string(),
            code,
        },
    }
}

/// Reads every Secrets Manager secret the Connector names, each with the role
/// it names; nothing when it names none (no STS call either).
pub async fn fetch(spec: &ConnectorSpec, platform: &Platform) -> Result<Fetched, AwsError> {
    let mut fetched = Fetched::default();
    for secret in ferry_crds::aws_secrets(spec) {
        let (values, version) = read(secret, platform).await?;
        fetched.reads.push(Read {
            name: secret.secret_name(),
            version,
        });
        fetched.secrets.insert(secret.secret_name(), values);
    }
    Ok(fetched)
}

async fn read(
    secret: &AwsSecret,
    platform: &Platform,
) -> Result<(BTreeMap<String, Zeroizing<Vec<u8>>>, String), AwsError> {
    let what = secret.secret_name();
    let role = &secret.web_identity.role_arn;
    let mut config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(crate::net::aws_http_client(&platform.network))
        .region(aws_sdk_secretsmanager::config::Region::new(
            secret.region.clone(),
        ))
        .credentials_provider(credentials(
            &what,
            &secret.web_identity,
            &secret.region,
            platform,
        )?);
    if let Some(url) = endpoint(&what, platform)? {
        config = config.endpoint_url(url);
    }
    let client = aws_sdk_secretsmanager::Client::from_conf(config.build());
    let out = client
        .get_secret_value()
        .secret_id(&secret.secret_id)
        .version_stage(&secret.version_stage)
        .send()
        .await
        .map_err(|e| classify(&what, role, &e))?;
    let malformed = |reason: &str| AwsError::Malformed {
        what: what.clone(),
        reason: reason.to_string(),
    };
    let text = Zeroizing::new(
        out.secret_string()
            .ok_or_else(|| malformed("the secret is binary; Ferry reads a JSON object of strings"))?
            .to_string(),
    );
    // serde_json's errors name a line and column, never the text.
    let fields: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| malformed(&format!("the secret is not a JSON object of strings ({e})")))?;
    let values = store_values(fields, &secret.fields).map_err(|e| malformed(&e))?;
    let version = out.version_id().unwrap_or("unknown").to_string();
    Ok((values, version))
}

/// A symmetric AWS KMS key: the run's (with its web identity, each call
/// audited) or a reader's (with the credentials of its environment).
pub struct AwsKms {
    client: aws_sdk_kms::Client,
    key_id: String,
    role: String,
    name: String,
    audit: Option<AuditLog>,
}

impl AwsKms {
    /// The Connector's KMS key, used as the run: each call is audited
    /// (`kms.datakey`, `kms.decrypt`) with the key's name, never a key.
    pub fn for_run(
        key: &AwsKmsKey,
        platform: &Platform,
        audit: AuditLog,
    ) -> Result<Self, AwsError> {
        let what = key.name();
        let credentials = credentials(&what, &key.web_identity, &key.region, platform)?;
        Self::new(
            key,
            credentials,
            platform,
            Some(audit),
            &key.web_identity.role_arn,
        )
    }

    /// The KMS key `name` (`aws-kms:<region>/<key id>`) for a reader, with
    /// the AWS keys of its environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); decrypt rights suffice.
    pub fn for_reader(name: &str, platform: &Platform) -> Result<Self, AwsError> {
        let bad = |reason: &str| AwsError::Malformed {
            what: name.to_string(),
            reason: reason.to_string(),
        };
        let path = name
            .strip_prefix("aws-kms:")
            .ok_or_else(|| bad("an AWS KMS key is named aws-kms:<region>/<key id>"))?;
        let (region, key_id) = path
            .split_once('/')
            .ok_or_else(|| bad("an AWS KMS key is named aws-kms:<region>/<key id>"))?;
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(bad(
                "reading with an AWS KMS key needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        };
        let id = Zeroizing::new(id);
        let secret = Zeroizing::new(secret);
        let session = var("AWS_SESSION_TOKEN").map(Zeroizing::new);
        let credentials = SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            id.as_str(),
            secret.as_str(),
            session.as_ref().map(|s| s.to_string()),
            None,
            "ferry-reader",
        ));
        let key = AwsKmsKey {
            key_id: key_id.to_string(),
            region: region.to_string(),
            web_identity: WebIdentity::default(),
        };
        Self::new(&key, credentials, platform, None, "the reader's")
    }

    fn new(
        key: &AwsKmsKey,
        credentials: SharedCredentialsProvider,
        platform: &Platform,
        audit: Option<AuditLog>,
        role: &str,
    ) -> Result<Self, AwsError> {
        let name = key.name();
        let mut config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(crate::net::aws_http_client(&platform.network))
            .region(aws_sdk_kms::config::Region::new(key.region.clone()))
            .credentials_provider(credentials);
        if let Some(url) = endpoint(&name, platform)? {
            config = config.endpoint_url(url);
        }
        Ok(Self {
            client: aws_sdk_kms::Client::from_conf(config.build()),
            key_id: key.key_id.clone(),
            role: role.to_string(),
            name,
            audit,
        })
    }

    fn kms_error(&self, e: AwsError) -> KmsError {
        KmsError {
            key: self.name.clone(),
            unreachable: matches!(e, AwsError::Unreachable { .. }),
            message: e.to_string(),
        }
    }

    fn audit(&self, action: &str, outcome: Outcome) {
        if let Some(audit) = &self.audit {
            let reason =
                (outcome != Outcome::Success).then_some(Reason::SecretStoreDenied.as_str());
            audit.record(action, outcome, reason, Some(&self.name));
        }
    }

    fn data_key_bytes(&self, plaintext: Option<&Blob>) -> Result<DataKey, KmsError> {
        let bytes = plaintext.map(Blob::as_ref).unwrap_or_default();
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return Err(KmsError {
                key: self.name.clone(),
                message: "AWS KMS answered with a data key that is not 32 bytes".into(),
                unreachable: false,
            });
        }
        key.copy_from_slice(bytes);
        Ok(key)
    }
}

impl Kms for AwsKms {
    fn name(&self) -> &str {
        &self.name
    }

    fn data_key(&self) -> KmsFuture<'_, (DataKey, String)> {
        Box::pin(async move {
            let out = self
                .client
                .generate_data_key()
                .key_id(&self.key_id)
                .key_spec(DataKeySpec::Aes256)
                .send()
                .await
                .map_err(|e| {
                    self.audit("kms.datakey", Outcome::Failure);
                    self.kms_error(classify(&self.name, &self.role, &e))
                })?;
            let key = self.data_key_bytes(out.plaintext())?;
            let wrapped = out.ciphertext_blob().map(Blob::as_ref).unwrap_or_default();
            self.audit("kms.datakey", Outcome::Success);
            Ok((key, format!("{}:{}", self.name, BASE64.encode(wrapped))))
        })
    }

    fn unwrap<'a>(&'a self, wrapped: &'a str) -> KmsFuture<'a, DataKey> {
        Box::pin(async move {
            let blob = wrapped
                .strip_prefix(self.name.as_str())
                .and_then(|c| c.strip_prefix(':'))
                .and_then(|c| BASE64.decode(c).ok())
                .ok_or_else(|| KmsError {
                    key: self.name.clone(),
                    message: "not a key wrapped by this AWS KMS key".into(),
                    unreachable: false,
                })?;
            let out = self
                .client
                .decrypt()
                .key_id(&self.key_id)
                .ciphertext_blob(Blob::new(blob))
                .send()
                .await
                .map_err(|e| {
                    self.audit("kms.decrypt", Outcome::Failure);
                    self.kms_error(classify(&self.name, &self.role, &e))
                })?;
            let key = self.data_key_bytes(out.plaintext())?;
            self.audit("kms.decrypt", Outcome::Success);
            Ok(key)
        })
    }
}
