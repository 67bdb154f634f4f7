//! Types shared by the Ferry resources: storage endpoints, credentials references,
//! streams and compliance rules, and schema helpers.
//!
//! No field here takes a secret value: credentials are always a reference to a
//! Secret of the Connector's own namespace or to a secret in the platform's
//! Vault, or a workload identity.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// One end of a transfer. Exactly one of `s3`, `azureBlob`, `sftp` or `local` is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.s3) ? 1 : 0) + (has(self.azureBlob) ? 1 : 0) + (has(self.sftp) ? 1 : 0) + (has(self.local) ? 1 : 0) == 1",
    "message": "exactly one of s3, azureBlob, sftp or local must be set"
}]))]
pub struct Endpoint {
    /// An Amazon S3 bucket, or a bucket of an S3-compatible store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Endpoint>,
    /// An Azure Blob Storage container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_blob: Option<AzureBlobEndpoint>,
    /// A folder on an SFTP server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sftp: Option<SftpEndpoint>,
    /// A local folder of the runner (demos and tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalEndpoint>,
}

/// The backend of an endpoint, borrowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EndpointKind<'a> {
    S3(&'a S3Endpoint),
    AzureBlob(&'a AzureBlobEndpoint),
    Sftp(&'a SftpEndpoint),
    Local(&'a LocalEndpoint),
}

impl Endpoint {
    /// The one backend that is set, or `None` when zero or several are (which the
    /// schema forbids, but a hand-written file may still contain).
    pub fn kind(&self) -> Option<EndpointKind<'_>> {
        match (&self.s3, &self.azure_blob, &self.sftp, &self.local) {
            (Some(s), None, None, None) => Some(EndpointKind::S3(s)),
            (None, Some(a), None, None) => Some(EndpointKind::AzureBlob(a)),
            (None, None, Some(s), None) => Some(EndpointKind::Sftp(s)),
            (None, None, None, Some(l)) => Some(EndpointKind::Local(l)),
            _ => None,
        }
    }
}

/// An S3 bucket and the prefix inside it that a run is confined to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.endpoint) || self.endpoint.startsWith('https://') || (self.endpoint.startsWith('http://') && has(self.insecurePlainHttpOnLoopback) && self.insecurePlainHttpOnLoopback)",
    "message": "endpoint must use https://; plain http:// is only accepted for a loopback endpoint with insecurePlainHttpOnLoopback: true"
}]))]
pub struct S3Endpoint {
    /// Bucket name.
    #[schemars(
        length(min = 3, max = 63),
        regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    )]
    pub bucket: String,
    /// Key prefix (usually ending in `/`). A run never lists or reads outside it.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub prefix: String,
    /// Region of the bucket, e.g. `eu-west-1`. Checked against the tenant's region
    /// when the Connector requires in-region residency.
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Endpoint URL of an S3-compatible store; AWS's regional endpoint when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`
    /// (most S3-compatible stores need this).
    #[serde(default)]
    pub force_path_style: bool,
    /// Accept a plain `http://` endpoint. Only honoured for a loopback address
    /// (127.0.0.0/8, ::1, localhost): meant for tests, never for real data.
    #[serde(default)]
    pub insecure_plain_http_on_loopback: bool,
    /// How the runner authenticates to S3.
    pub credentials: S3Credentials,
}

/// S3 credentials: a Secret with static keys, a secret in the platform's
/// Vault, or web identity (no secret at all).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.secretRef) ? 1 : 0) + (has(self.webIdentity) ? 1 : 0) + (has(self.vault) ? 1 : 0) + (has(self.awsSecretsManager) ? 1 : 0) == 1",
    "message": "exactly one of secretRef, vault, awsSecretsManager or webIdentity must be set"
}]))]
pub struct S3Credentials {
    /// A Secret of this namespace with the keys `accessKeyId`, `secretAccessKey`
    /// and optionally `sessionToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Assume this IAM role with the run pod's projected service-account token
    /// (IRSA-style web identity). Preferred: no long-lived key exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity: Option<WebIdentity>,
    /// A secret in the platform's Vault (KV version 2) with the same keys as
    /// the Secret would hold, read by the run with its own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultSecret>,
    /// A secret in AWS Secrets Manager with the same keys as the Secret would
    /// hold (a JSON object), read by the run with its own web identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secrets_manager: Option<AwsSecret>,
}

/// A secret in the platform's Vault or OpenBao KV version 2 engine, read at
/// run time by the run itself: it logs in with its own projected, expiring
/// ServiceAccount token (the JWT auth method, a role per tenant namespace set
/// by the platform team). The operator never reads it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultSecret {
    /// Mount path of the KV version 2 engine.
    #[serde(default = "default_kv_mount")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
    )]
    pub mount: String,
    /// Path of the secret under the mount, e.g. `acme/s3-reader`: segments
    /// that do not start with a dot (no `.` or `..`).
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
    )]
    pub path: String,
    /// Where the secret's field names differ from Ferry's keys (those of the
    /// Secret it replaces): Ferry's key to the secret's field, e.g.
    /// `{secretAccessKey: aws_secret}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub fields: BTreeMap<String, String>,
}

fn default_kv_mount() -> String {
    "secret".to_string()
}

impl VaultSecret {
    /// The name the runner files its values under, beside the Secrets:
    /// `vault:<mount>/<path>` (never a Secret's name, which has no colon).
    pub fn secret_name(&self) -> String {
        format!("vault:{}/{}", self.mount, self.path)
    }

    /// The secret's field holding Ferry's key `key`.
    pub fn field<'a>(&'a self, key: &'a str) -> &'a str {
        self.fields.get(key).map_or(key, String::as_str)
    }
}

/// A secret in AWS Secrets Manager, read at run time by the run itself: it
/// assumes `webIdentity.roleArn` with its own projected, expiring token (the
/// role's trust policy names the run ServiceAccounts of its namespace). The
/// secret's value is a JSON object of strings. The operator never reads it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsSecret {
    /// The secret's name or ARN.
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^[A-Za-z0-9/_+=.@:-]+$")
    )]
    pub secret_id: String,
    /// Region of the secret.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9-]+$"))]
    pub region: String,
    /// The version stage read.
    #[serde(default = "default_version_stage")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[A-Za-z0-9_+=.@-]+$"))]
    pub version_stage: String,
    /// The role the run assumes to read it.
    pub web_identity: WebIdentity,
    /// Where the secret's field names differ from Ferry's keys: Ferry's key to
    /// the secret's field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub fields: BTreeMap<String, String>,
}

fn default_version_stage() -> String {
    "AWSCURRENT".to_string()
}

/// Where a credential's values are found beside the Secrets: the Secret's
/// name, `vault:<mount>/<path>` or `aws-secretsmanager:<region>/<id>`; `None`
/// when none is named (workload identity); an error when more than one is
/// (the schema refuses that).
pub fn credential_secret_name(
    secret_ref: Option<&SecretRef>,
    vault: Option<&VaultSecret>,
    aws: Option<&AwsSecret>,
) -> Result<Option<String>, MoreThanOneCredential> {
    match (secret_ref, vault, aws) {
        (Some(r), None, None) => Ok(Some(r.name.clone())),
        (None, Some(v), None) => Ok(Some(v.secret_name())),
        (None, None, Some(a)) => Ok(Some(a.secret_name())),
        (None, None, None) => Ok(None),
        _ => Err(MoreThanOneCredential),
    }
}

/// A credential naming more than one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoreThanOneCredential;

impl AwsSecret {
    /// The name the runner files its values under, beside the Secrets:
    /// `aws-secretsmanager:<region>/<secretId>`.
    pub fn secret_name(&self) -> String {
        format!("aws-secretsmanager:{}/{}", self.region, self.secret_id)
    }
}

/// An IAM role assumed with a projected service-account token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebIdentity {
    /// ARN of the role, e.g. `arn:aws:iam::123456789012:role/ferry-reader`.
    #[schemars(
        length(min = 20, max = 2048),
        regex(pattern = r"^arn:[a-z-]+:iam::[0-9]{12}:role/.+$")
    )]
    pub role_arn: String,
    /// Audience of the projected token: one of the audiences the operator
    /// allows (`sts.amazonaws.com` by default).
    #[serde(default = "default_sts_audience")]
    #[schemars(length(min = 1, max = 253))]
    pub audience: String,
}

fn default_sts_audience() -> String {
    crate::AWS_TOKEN_AUDIENCE.to_string()
}

/// An Azure Blob Storage container and the prefix inside it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.endpoint) || self.endpoint.startsWith('https://') || (self.endpoint.startsWith('http://') && has(self.insecurePlainHttpOnLoopback) && self.insecurePlainHttpOnLoopback)",
    "message": "endpoint must use https://; plain http:// is only accepted for a loopback endpoint with insecurePlainHttpOnLoopback: true"
}]))]
pub struct AzureBlobEndpoint {
    /// Storage account name.
    #[schemars(length(min = 3, max = 24), regex(pattern = r"^[a-z0-9]+$"))]
    pub account: String,
    /// Container name.
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9](-?[a-z0-9])*$"))]
    pub container: String,
    /// Blob name prefix (usually ending in `/`). A run never lists or reads outside it.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub prefix: String,
    /// Azure region of the storage account, e.g. `westeurope`.
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Blob service URL, for sovereign clouds or an emulator; the public cloud's
    /// `https://<account>.blob.core.windows.net` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,
    /// Accept a plain `http://` endpoint. Only honoured for a loopback address:
    /// meant for tests, never for real data.
    #[serde(default)]
    pub insecure_plain_http_on_loopback: bool,
    /// How the runner authenticates to Azure.
    pub credentials: AzureCredentials,
}

/// Azure credentials: a Secret, a secret in the platform's Vault, or
/// workload identity (no secret at all).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.secretRef) ? 1 : 0) + (has(self.workloadIdentity) ? 1 : 0) + (has(self.vault) ? 1 : 0) + (has(self.awsSecretsManager) ? 1 : 0) == 1",
    "message": "exactly one of secretRef, vault, awsSecretsManager or workloadIdentity must be set"
}]))]
pub struct AzureCredentials {
    /// A Secret of this namespace holding `accountKey`, or `sasToken`, or
    /// `tenantId`, `clientId` and `clientSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Federated credential of an Entra ID application, exchanged for the run
    /// pod's projected service-account token. Preferred: no long-lived key exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<AzureWorkloadIdentity>,
    /// A secret in the platform's Vault (KV version 2) with the same keys as
    /// the Secret would hold, read by the run with its own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultSecret>,
    /// A secret in AWS Secrets Manager with the same keys as the Secret would
    /// hold (a JSON object), read by the run with its own web identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secrets_manager: Option<AwsSecret>,
}

/// An Entra ID application with a federated credential for the run's identity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureWorkloadIdentity {
    /// Application (client) id.
    #[schemars(length(min = 1, max = 64))]
    pub client_id: String,
    /// Directory (tenant) id.
    #[schemars(length(min = 1, max = 64))]
    pub tenant_id: String,
}

/// A folder on an SFTP server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SftpEndpoint {
    /// Host name or IP address.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// SSH port.
    #[serde(default = "default_ssh_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Folder on the server; a run never lists or reads outside it.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub path: String,
    /// Declared region of the server (SFTP cannot report it).
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// A Secret of this namespace holding `username` and `privateKey`
    /// (and `passphrase` if the key has one), or `username` and `password`.
    pub credentials: SftpCredentials,
    /// The server's host key, always verified.
    pub host_key: HostKey,
    /// Allow password authentication. Off by default: keys are expected, and a run
    /// that uses a password raises a Warning Event.
    #[serde(default)]
    pub allow_password_auth: bool,
}

fn default_ssh_port() -> i32 {
    22
}

/// SFTP credentials: a Secret, or a secret in the platform's Vault or in AWS
/// Secrets Manager with the same keys.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.secretRef) ? 1 : 0) + (has(self.vault) ? 1 : 0) + (has(self.awsSecretsManager) ? 1 : 0) == 1",
    "message": "exactly one of secretRef, vault or awsSecretsManager must be set"
}]))]
pub struct SftpCredentials {
    /// The Secret with `username` and `privateKey` [+ `passphrase`] or `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// A secret in the platform's Vault (KV version 2) with the same keys,
    /// read by the run with its own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultSecret>,
    /// A secret in AWS Secrets Manager with the same keys (a JSON object),
    /// read by the run with its own web identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secrets_manager: Option<AwsSecret>,
}

/// How the SFTP server's host key is known. Exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.secretRef) != has(self.fingerprint)",
    "message": "exactly one of secretRef or fingerprint must be set"
}]))]
pub struct HostKey {
    /// A Secret whose key `knownHosts` holds the server's public key in
    /// `known_hosts` or `.pub` format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// The host key's SHA-256 fingerprint as OpenSSH prints it (`SHA256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 50, max = 64),
        regex(pattern = r"^SHA256:[A-Za-z0-9+/]{43}=?$")
    )]
    pub fingerprint: Option<String>,
}

/// A folder on the runner's own file system (demos and tests).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalEndpoint {
    /// Absolute or relative folder path.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// Declared region of this folder, for the residency rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
}

/// A Secret in the same namespace. Cross-namespace references do not exist.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret. It must carry the label `ferry.dev/usable: "true"`
    /// (set by whoever creates it) and not be a ServiceAccount token, bootstrap
    /// token, registry or TLS Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// One key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret.
    pub secret_ref: SecretRef,
    /// The key inside it.
    #[serde(default = "default_kek_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_kek_key() -> String {
    "kek".to_string()
}

/// Encryption at rest: every object gets a fresh data key, wrapped by the
/// key-encryption key (KEK): one of the tenant's own, in a Secret (`keyRef`),
/// or one that never leaves the platform's KMS (`kms`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.keyRef) != has(self.kms)",
    "message": "exactly one of keyRef or kms must be set"
}]))]
pub struct EncryptionSpec {
    /// The Secret key holding the 32-byte KEK (raw, or base64 of 32 bytes).
    /// `job-runner keygen` makes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ref: Option<SecretKeyRef>,
    /// A KEK held by the platform's KMS. Each run asks it for one data key
    /// (the run key), which wraps the run's per-object keys and travels with
    /// them in wrapped form: a run makes one KMS call whatever its number of
    /// objects, and reading needs only decrypt rights on the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<KmsKey>,
    /// An Ed25519 private key (PKCS#8 PEM, or base64 of the 32-byte seed) that
    /// signs every manifest the runs write, so that auditors can check the
    /// records with the public key alone (`job-runner verify --public-key`),
    /// without being able to make them. `job-runner keygen --signing` makes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_ref: Option<SigningKeyRef>,
}

/// A key-encryption key in a KMS.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.vaultTransit) != has(self.awsKms)",
    "message": "exactly one of vaultTransit or awsKms must be set"
}]))]
pub struct KmsKey {
    /// A key of Vault's (or OpenBao's) Transit engine, used by the run with
    /// its own Vault login (the role of its namespace): the role needs
    /// `update` on `<mount>/datakey/plaintext/<key>` and `<mount>/decrypt/<key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_transit: Option<VaultTransitKey>,
    /// A symmetric AWS KMS key, used by the run with its own web identity:
    /// the role needs `kms:GenerateDataKey` and `kms:Decrypt` on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_kms: Option<AwsKmsKey>,
}

impl KmsKey {
    /// How wrapped keys name the key: `vault-transit:<mount>/<key>` or
    /// `aws-kms:<region>/<keyId>`.
    pub fn name(&self) -> String {
        match (&self.vault_transit, &self.aws_kms) {
            (Some(t), _) => t.name(),
            (None, Some(k)) => k.name(),
            (None, None) => String::new(),
        }
    }
}

/// A symmetric key of AWS KMS.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsKmsKey {
    /// The key's id or alias (`alias/acme-ferry`); not an ARN: the key is in
    /// the role's account.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[A-Za-z0-9/_-]+$"))]
    pub key_id: String,
    /// Region of the key.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9-]+$"))]
    pub region: String,
    /// The role the run assumes to use it.
    pub web_identity: WebIdentity,
}

impl AwsKmsKey {
    /// How wrapped keys name it: `aws-kms:<region>/<keyId>`.
    pub fn name(&self) -> String {
        format!("aws-kms:{}/{}", self.region, self.key_id)
    }
}

/// A named key of a Transit engine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultTransitKey {
    /// Mount path of the Transit engine.
    #[serde(default = "default_transit_mount")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
    )]
    pub mount: String,
    /// Name of the key.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
    )]
    pub key: String,
}

fn default_transit_mount() -> String {
    "transit".to_string()
}

impl VaultTransitKey {
    /// How wrapped keys name it: `vault-transit:<mount>/<key>`.
    pub fn name(&self) -> String {
        format!("vault-transit:{}/{}", self.mount, self.key)
    }
}

/// The Secret key holding a manifest signing key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyRef {
    /// The Secret.
    pub secret_ref: SecretRef,
    /// The key inside it.
    #[serde(default = "default_signing_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_signing_key() -> String {
    "signing-key".to_string()
}

/// A sensitivity tag.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    /// Personally identifiable information.
    Pii,
    /// Payment card data.
    Pci,
    /// Protected health information.
    Phi,
}

impl Sensitivity {
    /// The tag as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Sensitivity::Pii => "pii",
            Sensitivity::Pci => "pci",
            Sensitivity::Phi => "phi",
        }
    }
}

/// A named subset of the source objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpec {
    /// Name of the stream, unique in the Connector.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Glob, relative to the source prefix, of the objects in this stream.
    #[serde(rename = "match")]
    #[schemars(length(min = 1, max = 512))]
    pub match_glob: String,
    /// Sensitivity tags of the data in this stream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub sensitivity: Vec<Sensitivity>,
    /// Data minimisation: keep only these columns (CSV with a header row, or NDJSON
    /// fields). Empty keeps every column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub fields: Vec<String>,
}

/// Data residency rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DataResidency {
    /// Both ends must be in the tenant's region (namespace label `ferry.dev/region`).
    #[default]
    InRegionOnly,
    /// No residency restriction.
    Any,
}

/// Compliance rules of a Connector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compliance {
    /// Sensitivity tags this Connector may move. A stream tagged with anything else
    /// is refused and audited. Capped by the namespace annotation
    /// `ferry.dev/allowed-sensitivity`, which only the platform team sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_sensitivity: Vec<Sensitivity>,
    /// `in-region-only` (the default) requires both ends to be in the tenant's
    /// region; `any` lifts the rule.
    #[serde(default)]
    pub data_residency: DataResidency,
}

/// Schema of `status.conditions`: standard Conditions, merged by `type` under
/// server-side apply.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut item =
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>();
    // Generated subschemas may be references; the CRD generator inlines them.
    item.remove("nullable");
    json_schema!({
        "type": "array",
        "maxItems": 16,
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

/// Schema of include / exclude glob lists.
pub fn glob_list_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 64,
        "items": {"type": "string", "minLength": 1, "maxLength": 512},
    })
}

/// Schema of a map of label or annotation strings.
pub fn string_map_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 4096},
    })
}

impl Endpoint {
    /// The system of an endpoint as audit records and messages name it:
    /// `s3://bucket/prefix`, `azure://account/container/prefix`,
    /// `sftp://host:port/path`, `local:path`. Never a credential.
    pub fn system(&self) -> String {
        match self.kind() {
            Some(EndpointKind::S3(s)) => format!("s3://{}/{}", s.bucket, s.prefix),
            Some(EndpointKind::AzureBlob(a)) => {
                format!("azure://{}/{}/{}", a.account, a.container, a.prefix)
            }
            Some(EndpointKind::Sftp(s)) => {
                format!(
                    "sftp://{}:{}/{}",
                    s.host,
                    s.port,
                    s.path.trim_start_matches('/')
                )
            }
            Some(EndpointKind::Local(l)) => format!("local:{}", l.path),
            None => "invalid".to_string(),
        }
    }
}
