//! Azure Blob Storage, with `object_store`'s Azure backend.
//!
//! Objects up to one block are a single Put Blob; larger ones are uploaded as
//! blocks, several at once, and committed with one Put Block List at the end:
//! until then nothing is visible, and an aborted upload leaves only uncommitted
//! blocks that Azure discards. The prefix is a folder (`sales/` or `sales`).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, MultipartUpload as _, ObjectStore as _, ObjectStoreExt as _, PutPayload,
};
use zeroize::Zeroizing;

use super::access::{OpenError, Platform, SecretKeyMissing, Secrets, token_file};
use super::multipart::{self, Sizes, Uploader};
use super::{
    ByteStream, Listing, ObjectMeta, ObjectStore, StorageError, Versions, check_connector_url,
    check_key,
};
use ferry_crds::AzureBlobEndpoint;
use ferry_crds::contract::{env, paths};

/// Size of a block (and the largest object sent as one Put Blob).
pub const BLOCK_SIZE: usize = 8 << 20;
/// Blocks uploaded at once per object.
const BLOCKS_IN_FLIGHT: usize = 4;

/// Azure's block sizes: BLOCK_SIZE for the first 5,000 blocks (objects up to
/// 39 GiB), then doubling every 5,000 blocks, up to 2 GiB. Azure allows 50,000
/// blocks of at most 4,000 MiB: fixed 8 MiB blocks would stop at 390 GiB,
/// these reach 29 TiB. Memory grows only with objects above 39 GiB: blocks in
/// flight times their size.
const BLOCKS: Sizes = Sizes {
    first: BLOCK_SIZE,
    per_size: 5000,
    max_doublings: 8,
};

/// How the runner authenticates to Azure. `Debug` never shows a secret.
#[derive(Clone)]
pub enum AzureAuth {
    AccountKey(Zeroizing<String>),
    /// A SAS token (`sv=...&sig=...`, with or without a leading `?`).
    Sas(Zeroizing<String>),
    ClientSecret {
        tenant_id: String,
        client_id: String,
        client_secret: Zeroizing<String>,
    },
    /// Federated credential: the run pod's projected token in `token_file`.
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
    },
}

impl std::fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AzureAuth::AccountKey(_) => "AzureAuth::AccountKey(..)",
            AzureAuth::Sas(_) => "AzureAuth::Sas(..)",
            AzureAuth::ClientSecret { .. } => "AzureAuth::ClientSecret { .. }",
            AzureAuth::WorkloadIdentity { .. } => "AzureAuth::WorkloadIdentity { .. }",
        })
    }
}

/// Where and how to reach a container.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    pub account: String,
    pub container: String,
    pub prefix: String,
    /// Blob service URL (emulator, sovereign cloud), without a trailing slash.
    pub endpoint: Option<String>,
    pub insecure_plain_http_on_loopback: bool,
    /// Where the client may connect.
    pub network: crate::net::NetworkGuard,
    pub auth: AzureAuth,
}

/// A container folder as an object store.
#[derive(Clone)]
pub struct AzureStore {
    inner: Arc<MicrosoftAzure>,
    prefix: String,
    name: String,
}

/// Only the name: the client holds the credential.
impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStore")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The error and the causes it does not already say (the cause of "error
/// sending request" is where TLS and connection failures are named).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cur = c.source();
    }
    text
}

/// Removes query strings (which may hold a SAS signature) from an error text.
fn redact(text: &str) -> String {
    text.split_whitespace()
        .map(|w| match w.find('?') {
            Some(i) if w[..i].contains("://") => format!("{}?<redacted>", &w[..i]),
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Azurite returns non-ASCII blob names percent-encoded in listings where Azure
/// returns them as they are; decode so both give the name that was written.
/// (A name that really contains `%XX` sequences is the one this cannot tell apart.)
fn decode_listed(key: &str) -> String {
    if !key.contains('%') {
        return key.to_string();
    }
    match Path::from_url_path(key) {
        Ok(p) if p.as_ref() != key => p.as_ref().to_string(),
        _ => key.to_string(),
    }
}

impl AzureStore {
    /// A store for `config`.
    pub fn new(config: AzureConfig) -> Result<Self, StorageError> {
        let prefix = config.prefix.trim_matches('/').to_string();
        let name = format!("azure://{}/{}/{}", config.account, config.container, prefix);
        let mut b = MicrosoftAzureBuilder::new()
            .with_account(&config.account)
            .with_container_name(&config.container);
        let mut options =
            object_store::ClientOptions::new().with_dns_resolver(Arc::new(config.network.clone()));
        if let Some(url) = &config.endpoint {
            check_connector_url(
                &name,
                url,
                config.insecure_plain_http_on_loopback,
                &config.network,
            )?;
            b = b.with_endpoint(url.trim_end_matches('/').to_string());
            options = options.with_allow_http(url.starts_with("http://"));
        }
        b = b.with_client_options(options);
        b = match &config.auth {
            AzureAuth::AccountKey(k) => b.with_access_key(k.as_str()),
            AzureAuth::Sas(token) => {
                let pairs: Vec<(String, String)> = token
                    .trim_start_matches('?')
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                b.with_sas_authorization(pairs)
            }
            AzureAuth::ClientSecret {
                tenant_id,
                client_id,
                client_secret,
            } => b.with_client_secret_authorization(client_id, client_secret.as_str(), tenant_id),
            AzureAuth::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => b
                .with_client_id(client_id)
                .with_tenant_id(tenant_id)
                .with_federated_token_file(token_file.to_string_lossy()),
        };
        let inner = b.build().map_err(|e| StorageError::Io {
            endpoint: name.clone(),
            action: "configure the Azure client",
            key: None,
            source: std::io::Error::other(redact(&e.to_string())),
        })?;
        Ok(Self {
            inner: Arc::new(inner),
            prefix,
            name,
        })
    }

    fn path(&self, key: &str) -> Result<Path, StorageError> {
        check_key(&self.name, key)?;
        Ok(if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        })
    }

    fn error(&self, e: object_store::Error, key: Option<&str>) -> StorageError {
        let endpoint = self.name.clone();
        let text = redact(&with_causes(&e));
        match e {
            object_store::Error::NotFound { .. } if key.is_some() => StorageError::NotFound {
                endpoint,
                key: key.unwrap_or_default().to_string(),
            },
            object_store::Error::PermissionDenied { .. } => StorageError::AccessDenied {
                endpoint,
                key: key.map(str::to_string),
            },
            object_store::Error::Unauthenticated { .. } => {
                StorageError::InvalidCredentials { endpoint }
            }
            _ if text.contains("ContainerNotFound")
                || text.contains("The specified container does not exist") =>
            {
                StorageError::NoSuchContainer {
                    endpoint,
                    what: "the container".into(),
                }
            }
            _ if text.contains("AuthenticationFailed")
                || text.contains("Server failed to authenticate") =>
            {
                StorageError::InvalidCredentials { endpoint }
            }
            _ if text.contains("AuthorizationFailure")
                || text.contains("AuthorizationPermissionMismatch") =>
            {
                StorageError::AccessDenied {
                    endpoint,
                    key: key.map(str::to_string),
                }
            }
            _ if text.contains("error sending request")
                || text.contains("Connection refused")
                || text.contains("timed out")
                || text.contains("Server returned non-2xx status code: 5") =>
            {
                StorageError::Unreachable {
                    endpoint,
                    reason: text,
                }
            }
            _ => StorageError::Io {
                endpoint,
                action: "call Azure Blob Storage",
                key: key.map(str::to_string),
                source: std::io::Error::other(text),
            },
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for AzureStore {
    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>, StorageError> {
        self.list_from("").try_collect().await
    }

    /// Blob Storage lists names in order, a page at a time.
    fn list_from<'a>(&'a self, under: &'a str) -> Listing<'a> {
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        // object_store lists whole path segments: the folder of `under`,
        // then filtered to `under`.
        let folder = format!("{strip}{}", under.rfind('/').map_or("", |i| &under[..i]));
        let folder = folder.trim_end_matches('/');
        let prefix = (!folder.is_empty()).then(|| Path::from(folder));
        let listing = self
            .inner
            .list(prefix.as_ref())
            .filter_map(move |meta| {
                let item = match meta {
                    Err(e) => Some(Err(self.error(e, None))),
                    Ok(meta) => meta
                        .location
                        .as_ref()
                        .strip_prefix(strip.as_str())
                        .map(decode_listed)
                        .filter(|key| key.starts_with(under))
                        .map(|key| {
                            Ok(ObjectMeta {
                                key,
                                size: meta.size,
                                modified: Some(
                                    meta.last_modified
                                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                                ),
                                etag: meta.e_tag,
                            })
                        }),
                };
                futures::future::ready(item)
            })
            .boxed();
        super::in_order(self.name.clone(), listing)
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StorageError> {
        let path = self.path(key)?;
        if let Some(r) = &range
            && r.start >= r.end
        {
            return Ok(futures::stream::empty().boxed());
        }
        let options = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = match self.inner.get_opts(&path, options).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StorageError::NotFound {
                    endpoint: self.name.clone(),
                    key: key.to_string(),
                });
            }
            // A range starting past the end is empty, as for the other stores.
            Err(e) if range.is_some() && e.to_string().contains("range") => {
                let size = self
                    .inner
                    .head(&path)
                    .await
                    .map_err(|e| self.error(e, Some(key)))?
                    .size;
                if range.as_ref().is_some_and(|r| r.start >= size) {
                    return Ok(futures::stream::empty().boxed());
                }
                return Err(self.error(e, Some(key)));
            }
            Err(e) => return Err(self.error(e, Some(key))),
        };
        let this = self.clone();
        let key = key.to_string();
        Ok(result
            .into_stream()
            .map(move |r| r.map_err(|e| this.error(e, Some(&key))))
            .boxed())
    }

    async fn put(&self, key: &str, data: ByteStream) -> Result<u64, StorageError> {
        let upload = Upload {
            store: self,
            key,
            path: self.path(key)?,
        };
        multipart::upload(&upload, data, BLOCKS, BLOCKS_IN_FLIGHT).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(e, Some(key))),
        }
    }

    async fn delete_versions(&self, _key: &str) -> Result<Versions, StorageError> {
        // object_store lists no blob versions: with versioning or soft
        // delete on the account, earlier versions may remain.
        Ok(Versions::Unknown)
    }

    async fn region(&self) -> Result<Option<String>, StorageError> {
        // The Blob API does not report an account's location (only ARM does).
        Ok(None)
    }
}

/// One blob's upload, as the multipart writer drives it: Put Blob when it
/// fits in one block, else Put Block and Put Block List.
struct Upload<'a> {
    store: &'a AzureStore,
    key: &'a str,
    path: Path,
}

#[async_trait::async_trait]
impl Uploader for Upload<'_> {
    type Upload = Box<dyn object_store::MultipartUpload>;
    type Part = ();

    fn endpoint(&self) -> &str {
        &self.store.name
    }

    fn key(&self) -> &str {
        self.key
    }

    async fn put_whole(&self, body: Bytes) -> Result<(), StorageError> {
        self.store
            .inner
            .put(&self.path, PutPayload::from(body))
            .await
            .map_err(|e| self.store.error(e, Some(self.key)))?;
        Ok(())
    }

    async fn start(&self) -> Result<Self::Upload, StorageError> {
        self.store
            .inner
            .put_multipart(&self.path)
            .await
            .map_err(|e| self.store.error(e, Some(self.key)))
    }

    fn put_part(
        &self,
        upload: &mut Self::Upload,
        _number: usize,
        body: Bytes,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        // The block's id is taken now, in call order: the block list follows it.
        let part = upload.put_part(PutPayload::from(body));
        let (store, key) = (self.store.clone(), self.key.to_string());
        Box::pin(async move { part.await.map_err(|e| store.error(e, Some(&key))) })
    }

    async fn complete(&self, upload: &mut Self::Upload, _: Vec<()>) -> Result<(), StorageError> {
        upload
            .complete()
            .await
            .map_err(|e| self.store.error(e, Some(self.key)))?;
        Ok(())
    }

    async fn abort(&self, upload: &mut Self::Upload) {
        // Uncommitted blocks are never visible and expire on their own.
        if let Err(e) = upload.abort().await {
            let error = self.store.error(e, Some(self.key));
            tracing::debug!(endpoint = %self.store.name, key = self.key, %error, "failed to abort a block upload");
        }
    }
}

/// Opens the Azure Blob container of one end (`side`) from its endpoint, its Secrets and
/// the platform's settings.
pub fn open(
    side: &'static str,
    e: &AzureBlobEndpoint,
    secrets: &dyn Secrets,
    platform: &Platform,
) -> Result<AzureStore, OpenError> {
    let c = &e.credentials;
    // A Secret, or a Vault or Secrets Manager secret read by the run (its
    // values filed under its name beside the Secrets).
    let secret_name = ferry_crds::credential_secret_name(
        c.secret_ref.as_ref(),
        c.vault.as_ref(),
        c.aws_secrets_manager.as_ref(),
    )
    .map_err(|_| OpenError::Endpoint(side))?;
    let auth = match (secret_name, &c.workload_identity) {
        (Some(name), None) => secret_auth(secrets, &name)?,
        (None, Some(w)) => AzureAuth::WorkloadIdentity {
            tenant_id: w.tenant_id.clone(),
            client_id: w.client_id.clone(),
            token_file: token_file(env::AZURE_FEDERATED_TOKEN_FILE, paths::AZURE_TOKEN_FILE),
        },
        _ => return Err(OpenError::Endpoint(side)),
    };
    AzureStore::new(AzureConfig {
        account: e.account.clone(),
        container: e.container.clone(),
        prefix: e.prefix.clone(),
        endpoint: e.endpoint.clone(),
        insecure_plain_http_on_loopback: e.insecure_plain_http_on_loopback,
        network: platform.network.clone(),
        auth,
    })
    .map_err(|source| OpenError::Store { side, source })
}

/// An Azure Secret holds `accountKey`, or `sasToken`, or `tenantId`, `clientId`
/// and `clientSecret`.
fn secret_auth(secrets: &dyn Secrets, name: &str) -> Result<AzureAuth, OpenError> {
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
    Err(OpenError::MissingSecretKey(SecretKeyMissing {
        secret: name.to_string(),
        key: "accountKey, sasToken or clientSecret".to_string(),
        location: secrets.location(name),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_stay_within_azures_limits_and_go_far_past_390_gib() {
        const MAX_BLOCKS: usize = 50_000;
        const MAX_BLOCK: usize = 4000 << 20;
        // Objects up to 39 GiB keep BLOCK_SIZE blocks (the memory bound).
        assert!((1..=5000).all(|n| BLOCKS.part(n) == BLOCK_SIZE));
        assert_eq!(BLOCKS.part(5001), 2 * BLOCK_SIZE);
        let sizes: Vec<usize> = (1..=MAX_BLOCKS).map(|n| BLOCKS.part(n)).collect();
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]));
        assert!(sizes.iter().all(|s| *s <= MAX_BLOCK));
        let total: u64 = sizes.iter().map(|s| *s as u64).sum();
        assert!(total >= 25 << 40, "50,000 blocks hold only {total} bytes");
    }
}
