//! Amazon S3 and S3-compatible stores, with `aws-sdk-s3`.
//!
//! Listing pages through ListObjectsV2; a whole object is read as one streamed
//! GET or as concurrent ranged GETs pinned to its ETag, whichever measures
//! faster (`whole`); writes of up to one part are a single PutObject, larger
//! ones a multipart upload with parts uploaded concurrently, completed at the
//! end or aborted on any error, so a partial object is never visible.

mod credentials;
mod whole;

use std::ops::Range;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream as SdkBody;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};

pub use credentials::S3Auth;
pub use credentials::{
    CredentialsFailure, StsUnreachable, credentials_failure, session_seconds, web_identity_provider,
};
pub use whole::ReadTuning;
use whole::{HANDOFF_SLICE, WholeRead};

use super::access::{OpenError, Platform, Secrets};
use super::multipart::{self, Sizes, Uploader};
use super::{
    ByteStream, Listing, ObjectMeta, ObjectStore, StorageError, Versions, check_connector_url,
    check_key,
};
use ferry_crds::S3Endpoint;

/// Attempts per listing page, for transient failures (on top of the SDK's own
/// retries of each request).
const LIST_ATTEMPTS: u32 = 5;
/// Folders of a listing's first level listed at once.
const FOLDERS_IN_FLIGHT: usize = 4;
/// First delay before a listing page is tried again; doubles each time.
const LIST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);
/// Size of a multipart part (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once per object.
const PARTS_IN_FLIGHT: usize = 3;
/// Where and how to reach a bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix; the store never lists, reads or writes outside it.
    pub prefix: String,
    pub region: String,
    /// Endpoint URL of an S3-compatible store.
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    /// Accept `http://` for a loopback endpoint.
    pub insecure_plain_http_on_loopback: bool,
    /// Where the client may connect (S3 and STS alike).
    pub network: crate::net::NetworkGuard,
    pub auth: S3Auth,
    /// How whole objects are read.
    pub reads: ReadTuning,
}

/// A bucket prefix as an object store.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    name: String,
    reads: ReadTuning,
}

/// Only the name: the SDK client's Debug shows its credentials provider,
/// access key id included.
impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// A store for `config`. Fails on an endpoint that is neither https nor an
    /// allowed loopback http.
    pub fn new(config: S3Config) -> Result<Self, StorageError> {
        let name = format!("s3://{}/{}", config.bucket, config.prefix);
        if let Some(url) = &config.endpoint {
            check_connector_url(
                &name,
                url,
                config.insecure_plain_http_on_loopback,
                &config.network,
            )?;
        }
        let credentials = match &config.auth {
            S3Auth::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => SharedCredentialsProvider::new(Credentials::new(
                access_key_id.as_str(),
                secret_access_key.as_str(),
                session_token.as_ref().map(|t| t.to_string()),
                None,
                "ferry-secret",
            )),
            S3Auth::WebIdentity {
                role_arn,
                token_file,
                session_name,
                sts_endpoint,
                run_ends,
            } => {
                if let Some(url) = sts_endpoint {
                    check_connector_url(
                        &name,
                        url,
                        config.insecure_plain_http_on_loopback,
                        &config.network,
                    )?;
                }
                web_identity_provider(
                    role_arn,
                    token_file.clone(),
                    session_name,
                    &config.region,
                    sts_endpoint.as_deref(),
                    &config.network,
                    *run_ends,
                )?
            }
        };
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(crate::net::aws_http_client(&config.network))
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(config.force_path_style);
        if let Some(url) = &config.endpoint {
            builder = builder.endpoint_url(url.trim_end_matches('/'));
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket,
            prefix: config.prefix,
            name,
            reads: config.reads,
        })
    }

    fn full_key(&self, key: &str) -> Result<String, StorageError> {
        check_key(&self.name, key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// A response body as a stream of chunks; a broken connection is an
    /// `Unreachable` naming the object.
    fn body_stream(&self, key: &str, body: SdkBody) -> ByteStream {
        let (name, key) = (self.name.clone(), key.to_string());
        futures::stream::unfold(Some(body), move |body| {
            let (name, key) = (name.clone(), key.clone());
            async move {
                let mut body = body?;
                match body.next().await {
                    None => None,
                    Some(Ok(b)) => Some((Ok(b), Some(body))),
                    Some(Err(e)) => Some((
                        Err(StorageError::Unreachable {
                            endpoint: name,
                            reason: format!("reading {key:?}: {e}"),
                        }),
                        None,
                    )),
                }
            }
        })
        .boxed()
    }

    /// A whole object, in order: see `whole` for how it is fetched.
    async fn get_whole(&self, key: &str) -> Result<ByteStream, StorageError> {
        let full = self.full_key(key)?;
        let first = self.get_from(&full, key, 0, None).await?.ok_or_else(|| {
            StorageError::ChangedDuringRead {
                endpoint: self.name.clone(),
                key: key.to_string(),
            }
        })?;
        let Some(total) = first.content_length().and_then(|l| u64::try_from(l).ok()) else {
            return Ok(self.body_stream(key, first.body));
        };
        let etag = first.e_tag().map(str::to_string);
        let read = WholeRead::new(self.clone(), full, key.to_string(), etag, total, first.body);
        Ok(futures::stream::unfold(read, |mut read| async move {
            let item = read.next_chunk().await?;
            Some((item, read))
        })
        .boxed())
    }

    /// A GET of the object from byte `start` to its end (the whole object from
    /// 0), pinned to `etag` when given. `None` when `start` is past the end.
    async fn get_from(
        &self,
        full: &str,
        key: &str,
        start: u64,
        etag: Option<&str>,
    ) -> Result<Option<GetObjectOutput>, StorageError> {
        let range = (start > 0).then(|| format!("bytes={start}-"));
        self.send_get(full, key, range, etag).await
    }

    /// A GET of `range` (clamped by the store to the object's end), pinned to
    /// `etag` when given, as `send_get`.
    async fn get_range(
        &self,
        full: &str,
        key: &str,
        range: Range<u64>,
        etag: Option<&str>,
    ) -> Result<Option<GetObjectOutput>, StorageError> {
        let range = format!("bytes={}-{}", range.start, range.end - 1);
        self.send_get(full, key, Some(range), etag).await
    }

    /// A GET with an optional `Range` header. `None` when the range starts
    /// past the end (HTTP 416); an ETag that no longer matches (HTTP 412) is
    /// `ChangedDuringRead`.
    async fn send_get(
        &self,
        full: &str,
        key: &str,
        range: Option<String>,
        etag: Option<&str>,
    ) -> Result<Option<GetObjectOutput>, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full)
            .set_range(range)
            .set_if_match(etag.map(str::to_string))
            .send()
            .await;
        match out {
            Ok(o) => Ok(Some(o)),
            Err(e) => match e.raw_response().map(|r| r.status().as_u16()) {
                Some(416) => Ok(None),
                Some(412) => Err(StorageError::ChangedDuringRead {
                    endpoint: self.name.clone(),
                    key: key.to_string(),
                }),
                _ => Err(self.error(e, Some(key))),
            },
        }
    }

    /// One range of a whole-object read, sent on in slices of
    /// `HANDOFF_SLICE` as they arrive. The slices are copied into one buffer
    /// of the range's exact size: keeping the chunks the connection delivered
    /// would cost more, as each pins a read buffer of hyper's (up to about
    /// 400 KiB) of which it may use a fraction. Stops early when the reader
    /// is gone.
    async fn fetch_range(
        &self,
        full: &str,
        key: &str,
        range: Range<u64>,
        etag: &str,
        out: &mpsc::UnboundedSender<Result<Bytes, StorageError>>,
    ) -> Result<(), StorageError> {
        // Nothing at this range any more, or more than it: the object changed.
        let changed = || StorageError::ChangedDuringRead {
            endpoint: self.name.clone(),
            key: key.to_string(),
        };
        let expected = usize::try_from(range.end - range.start).map_err(|_| changed())?;
        let got = self
            .get_range(full, key, range, Some(etag))
            .await?
            .ok_or_else(changed)?;
        let mut body = got.body;
        let mut buf = BytesMut::with_capacity(expected);
        let mut sent = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StorageError::Unreachable {
                endpoint: self.name.clone(),
                reason: format!("reading {key:?}: {e}"),
            })?;
            if sent + buf.len() + chunk.len() > expected {
                return Err(changed());
            }
            buf.extend_from_slice(&chunk);
            if buf.len() >= HANDOFF_SLICE || sent + buf.len() == expected {
                sent += buf.len();
                // The filled part; `buf` keeps the rest of the allocation.
                if out.unbounded_send(Ok(buf.split().freeze())).is_err() {
                    return Ok(());
                }
            }
        }
        if sent != expected {
            return Err(changed());
        }
        Ok(())
    }

    /// One page of the listing under the full `prefix`, from `token`: its
    /// objects and, listed with a `delimiter`, the folders (common prefixes,
    /// in full) it rolled up, and the token of the next page. A transient
    /// failure is retried here, so a long listing does not start over.
    async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
        delimiter: Option<&str>,
    ) -> Result<Page, StorageError> {
        let mut attempt = 0;
        let page = loop {
            let sent = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_delimiter(delimiter.map(str::to_string))
                .set_continuation_token(token.clone())
                .send()
                .await;
            match sent.map_err(|e| self.error(e, None)) {
                Ok(page) => break page,
                Err(e) if e.is_transient() && attempt + 1 < LIST_ATTEMPTS => {
                    tracing::warn!(endpoint = %self.name, error = %e, "listing page failed; retrying it");
                    tokio::time::sleep(LIST_BACKOFF * 2u32.pow(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let mut objects = Vec::with_capacity(page.contents().len());
        for o in page.contents() {
            let Some(full) = o.key() else { continue };
            let Some(key) = full.strip_prefix(self.prefix.as_str()) else {
                continue;
            };
            if key.is_empty() || key.ends_with('/') {
                continue; // folder markers
            }
            objects.push(ObjectMeta {
                key: key.to_string(),
                size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                modified: o
                    .last_modified()
                    .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok()),
                etag: o.e_tag().map(str::to_string),
            });
        }
        let folders = page
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix()?.strip_prefix(self.prefix.as_str()))
            .map(str::to_string)
            .collect();
        let next = if page.is_truncated() == Some(true) {
            page.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(Page {
            objects,
            folders,
            next,
        })
    }

    /// The objects under the full `prefix`, listed without a delimiter a
    /// page at a time from `first`, its first page, already asked for.
    fn flat_from(&self, prefix: String, first: Result<Page, StorageError>) -> Listing<'_> {
        let pages = futures::stream::unfold(Some((Some(first), None::<String>)), move |state| {
            let prefix = prefix.clone();
            async move {
                let (first, token) = state?;
                let page = match first {
                    Some(page) => page,
                    None => self.list_page(&prefix, token, None).await,
                };
                match page {
                    Ok(page) => {
                        let next = page.next.clone().map(|t| (None, Some(t)));
                        Some((Ok(page.objects), next))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        });
        pages
            .map(|page| {
                let items: Vec<Result<ObjectMeta, StorageError>> = match page {
                    Ok(objects) => objects.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(items)
            })
            .flatten()
            .boxed()
    }

    fn error<E>(
        &self,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        key: Option<&str>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let endpoint = self.name.clone();
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().unwrap_or_default().to_string();
        // A credentials provider that failed (no token, STS refused it) is an
        // authentication failure, not a network one: never retried as transient.
        // STS that could not be reached is, like S3, worth retrying.
        match credentials_failure(&err) {
            Some(CredentialsFailure::StsUnreachable(reason)) => {
                return StorageError::Unreachable { endpoint, reason };
            }
            Some(CredentialsFailure::Refused) => {
                return StorageError::InvalidCredentials { endpoint };
            }
            None => {}
        }
        match &err {
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => {
                return StorageError::Unreachable {
                    endpoint,
                    reason: aws_smithy_types::error::display::DisplayErrorContext(&err).to_string(),
                };
            }
            _ => {}
        }
        match (code.as_str(), status) {
            ("NoSuchBucket", _) => StorageError::NoSuchContainer {
                endpoint,
                what: format!("bucket {:?}", self.bucket),
            },
            ("NoSuchKey" | "NotFound", _) | (_, Some(404)) if key.is_some() => {
                StorageError::NotFound {
                    endpoint,
                    key: key.unwrap_or_default().to_string(),
                }
            }
            (
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired",
                _,
            ) => StorageError::InvalidCredentials { endpoint },
            ("AccessDenied" | "AllAccessDisabled", _) | (_, Some(401 | 403)) => {
                StorageError::AccessDenied {
                    endpoint,
                    key: key.map(str::to_string),
                }
            }
            (_, Some(s)) if s == 429 || s >= 500 => StorageError::Unreachable {
                endpoint,
                reason: format!("HTTP {s} {code}"),
            },
            _ => StorageError::Io {
                endpoint,
                action: "call S3",
                key: key.map(str::to_string),
                source: std::io::Error::other(format!("{code} (HTTP {})", status.unwrap_or(0))),
            },
        }
    }
}

/// S3's part sizes: PART_SIZE for the first thousand parts (objects up to
/// 7.8 GiB), then doubling every thousand parts, up to 4 GiB. S3 allows 10,000
/// parts of at most 5 GiB: fixed 8 MiB parts would stop at 78 GiB, these reach
/// 7.8 TiB (S3's largest object is 5 TiB). Memory grows only with objects above
/// 7.8 GiB: parts in flight times their size.
const PARTS: Sizes = Sizes {
    first: PART_SIZE,
    per_size: 1000,
    max_doublings: 9,
};

/// One object's upload, as the multipart writer drives it.
struct Upload<'a> {
    store: &'a S3Store,
    /// The object's key under the prefix (for errors) and in the bucket.
    key: &'a str,
    full: String,
}

#[async_trait::async_trait]
impl Uploader for Upload<'_> {
    type Upload = String;
    type Part = CompletedPart;

    fn endpoint(&self) -> &str {
        &self.store.name
    }

    fn key(&self) -> &str {
        self.key
    }

    async fn put_whole(&self, body: Bytes) -> Result<(), StorageError> {
        let s = self.store;
        s.client
            .put_object()
            .bucket(&s.bucket)
            .key(&self.full)
            .body(SdkBody::from(body))
            .send()
            .await
            .map_err(|e| s.error(e, Some(self.key)))?;
        Ok(())
    }

    async fn start(&self) -> Result<String, StorageError> {
        let s = self.store;
        let created = s
            .client
            .create_multipart_upload()
            .bucket(&s.bucket)
            .key(&self.full)
            .send()
            .await
            .map_err(|e| s.error(e, Some(self.key)))?;
        created
            .upload_id()
            .map(str::to_string)
            .ok_or_else(|| StorageError::Io {
                endpoint: s.name.clone(),
                action: "start a multipart upload",
                key: Some(self.key.to_string()),
                source: std::io::Error::other("no upload id returned"),
            })
    }

    fn put_part(
        &self,
        upload_id: &mut String,
        number: usize,
        body: Bytes,
    ) -> BoxFuture<'static, Result<CompletedPart, StorageError>> {
        let (s, key, full, id) = (
            self.store.clone(),
            self.key.to_string(),
            self.full.clone(),
            upload_id.clone(),
        );
        Box::pin(async move {
            // S3 allows 10,000 parts: the number always fits.
            let number = i32::try_from(number).unwrap_or(i32::MAX);
            let out = s
                .client
                .upload_part()
                .bucket(&s.bucket)
                .key(&full)
                .upload_id(&id)
                .part_number(number)
                .body(SdkBody::from(body))
                .send()
                .await
                .map_err(|e| s.error(e, Some(&key)))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
        })
    }

    async fn complete(
        &self,
        upload_id: &mut String,
        parts: Vec<CompletedPart>,
    ) -> Result<(), StorageError> {
        let s = self.store;
        s.client
            .complete_multipart_upload()
            .bucket(&s.bucket)
            .key(&self.full)
            .upload_id(upload_id.as_str())
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s.error(e, Some(self.key)))?;
        Ok(())
    }

    async fn abort(&self, upload_id: &mut String) {
        let s = self.store;
        let aborted = s
            .client
            .abort_multipart_upload()
            .bucket(&s.bucket)
            .key(&self.full)
            .upload_id(upload_id.as_str())
            .send()
            .await;
        if let Err(e) = aborted {
            tracing::warn!(endpoint = %s.name, key = self.key, error = %s.error(e, Some(self.key)), "failed to abort a multipart upload");
        }
    }
}

/// One page of a listing.
struct Page {
    objects: Vec<ObjectMeta>,
    /// Listed with a delimiter: the folders rolled up (prefixes, relative to
    /// the store's, like object keys).
    folders: Vec<String>,
    next: Option<String>,
}

/// An entry of a listing's first level.
enum Entry {
    Object(ObjectMeta),
    /// A folder (its prefix relative to the store's).
    Folder(String),
}

impl Page {
    /// Its objects and folders in one key order (S3 sends them apart).
    fn entries(self) -> Vec<Entry> {
        let mut objects = self.objects.into_iter().peekable();
        let mut folders = self.folders.into_iter().peekable();
        let mut out = Vec::new();
        loop {
            let next_folder = match (objects.peek(), folders.peek()) {
                (None, None) => return out,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(o), Some(f)) => f.as_str() < o.key.as_str(),
            };
            if next_folder {
                out.extend(folders.next().map(Entry::Folder));
            } else {
                out.extend(objects.next().map(Entry::Object));
            }
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>, StorageError> {
        self.list_from("").try_collect().await
    }

    /// S3 lists keys in UTF-8 binary order, a page of up to 1000 at a time.
    /// The first level is listed with the delimiter `/`: its objects, and
    /// its folders, each then listed without one, [`FOLDERS_IN_FLIGHT`] at a
    /// time (the next folders' first pages are asked for while the objects
    /// before them are used). A folder sorts where its name followed by `/`
    /// does, which is where its keys sort: the order is the flat listing's,
    /// with at most one request more per folder of the first level.
    fn list_from<'a>(&'a self, under: &'a str) -> Listing<'a> {
        let root = format!("{}{under}", self.prefix);
        let top = futures::stream::unfold(Some(None::<String>), move |token| {
            let root = root.clone();
            async move {
                let token = token?;
                match self.list_page(&root, token, Some("/")).await {
                    Ok(page) => {
                        let next = page.next.clone().map(Some);
                        Some((Ok(page), next))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        });
        let objects = top
            .map(move |page| match page {
                Ok(page) => futures::stream::iter(page.entries())
                    .map(move |entry| async move {
                        match entry {
                            Entry::Object(o) => futures::stream::once(async { Ok(o) }).boxed(),
                            Entry::Folder(folder) => {
                                let prefix = format!("{}{folder}", self.prefix);
                                let first = self.list_page(&prefix, None, None).await;
                                self.flat_from(prefix, first)
                            }
                        }
                    })
                    .buffered(FOLDERS_IN_FLIGHT)
                    .flatten()
                    .boxed(),
                Err(e) => futures::stream::once(async { Err(e) }).boxed(),
            })
            .flatten()
            .boxed();
        super::in_order(self.name.clone(), objects)
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StorageError> {
        let Some(range) = range else {
            return self.get_whole(key).await;
        };
        let full = self.full_key(key)?;
        if range.start >= range.end {
            return Ok(futures::stream::empty().boxed());
        }
        // A range past the end of the object is empty, as for the other stores.
        Ok(match self.get_range(&full, key, range, None).await? {
            Some(out) => self.body_stream(key, out.body),
            None => futures::stream::empty().boxed(),
        })
    }

    async fn put(&self, key: &str, data: ByteStream) -> Result<u64, StorageError> {
        let upload = Upload {
            store: self,
            key,
            full: self.full_key(key)?,
        };
        multipart::upload(&upload, data, PARTS, PARTS_IN_FLIGHT).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.error(e, Some(key)))?;
        Ok(())
    }

    async fn delete_versions(&self, key: &str) -> Result<Versions, StorageError> {
        let full = self.full_key(key)?;
        let (mut deleted, mut kept) = (0, 0);
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let page = match self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.error(e, Some(key)))
            {
                Ok(page) => page,
                // A role without s3:ListBucketVersions: the erasure goes on,
                // and says it could not look.
                Err(StorageError::AccessDenied { .. }) => return Ok(Versions::Unknown),
                Err(e) => return Err(e),
            };
            // Every version but the current one (for an erased key, its
            // delete marker), and every earlier delete marker.
            let earlier = page
                .versions()
                .iter()
                .filter(|v| v.key() == Some(full.as_str()) && v.is_latest() != Some(true))
                .filter_map(|v| v.version_id())
                .chain(
                    page.delete_markers()
                        .iter()
                        .filter(|m| m.key() == Some(full.as_str()) && m.is_latest() != Some(true))
                        .filter_map(|m| m.version_id()),
                )
                .filter(|id| *id != "null")
                .map(str::to_string)
                .collect::<Vec<_>>();
            for id in earlier {
                match self
                    .client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .version_id(&id)
                    .send()
                    .await
                {
                    Ok(_) => deleted += 1,
                    Err(e) => match self.error(e, Some(key)) {
                        // Object lock, a legal hold, or no right to delete
                        // versions: kept, and said.
                        StorageError::AccessDenied { .. } => kept += 1,
                        e => return Err(e),
                    },
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() && version_marker.is_none() {
                break;
            }
        }
        Ok(Versions::Listed { deleted, kept })
    }

    async fn region(&self) -> Result<Option<String>, StorageError> {
        let out = self
            .client
            .get_bucket_location()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.error(e, None))?;
        // An empty constraint is us-east-1; the legacy "EU" is eu-west-1.
        let region = match out.location_constraint().map(|c| c.as_str()) {
            None | Some("") => "us-east-1",
            Some("EU") => "eu-west-1",
            Some(r) => r,
        };
        Ok(Some(region.to_string()))
    }
}

/// Opens the S3 bucket of one end (`side`) from its endpoint, its Secrets and
/// the platform's settings.
pub fn open(
    side: &'static str,
    e: &S3Endpoint,
    secrets: &dyn Secrets,
    platform: &Platform,
) -> Result<S3Store, OpenError> {
    let c = &e.credentials;
    // A Secret, or a Vault or Secrets Manager secret read by the run (its
    // values filed under its name beside the Secrets).
    let secret_name = ferry_crds::credential_secret_name(
        c.secret_ref.as_ref(),
        c.vault.as_ref(),
        c.aws_secrets_manager.as_ref(),
    )
    .map_err(|_| OpenError::Endpoint(side))?;
    let auth = match (secret_name, &c.web_identity) {
        (Some(name), None) => S3Auth::Static {
            access_key_id: secrets.string(&name, "accessKeyId")?,
            secret_access_key: secrets.string(&name, "secretAccessKey")?,
            session_token: secrets.optional_string(&name, "sessionToken"),
        },
        (None, Some(w)) => S3Auth::WebIdentity {
            role_arn: w.role_arn.clone(),
            token_file: platform.aws_token_file(),
            session_name: format!("ferry-{side}"),
            sts_endpoint: platform.sts_endpoint.clone(),
            run_ends: platform.run_ends,
        },
        _ => return Err(OpenError::Endpoint(side)),
    };
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
    .map_err(|source| OpenError::Store { side, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_level_page_interleaves_objects_and_folders_in_key_order() {
        let object = |k: &str| ObjectMeta {
            key: k.into(),
            size: 0,
            modified: None,
            etag: None,
        };
        let page = Page {
            objects: vec![object("a-b"), object("a0"), object("b")],
            folders: vec!["a/".into(), "c/".into()],
            next: None,
        };
        let order: Vec<String> = page
            .entries()
            .into_iter()
            .map(|e| match e {
                Entry::Object(o) => o.key,
                Entry::Folder(f) => f,
            })
            .collect();
        // '-' < '/' < '0': a key under a/ sorts after a-b and before a0.
        assert_eq!(order, ["a-b", "a/", "a0", "b", "c/"]);
    }

    #[test]
    fn part_sizes_reach_s3s_largest_object_within_its_limits() {
        const MAX_PARTS: usize = 10_000;
        const MAX_PART: usize = 5 << 30;
        const MAX_OBJECT: u64 = 5 << 40;
        // Objects up to 7.8 GiB keep PART_SIZE parts (the memory bound).
        assert!((1..=1000).all(|n| PARTS.part(n) == PART_SIZE));
        assert_eq!(PARTS.part(1001), 2 * PART_SIZE);
        let sizes: Vec<usize> = (1..=MAX_PARTS).map(|n| PARTS.part(n)).collect();
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]));
        assert!(sizes.iter().all(|s| (5 << 20..=MAX_PART).contains(s)));
        let total: u64 = sizes.iter().map(|s| *s as u64).sum();
        assert!(total >= MAX_OBJECT, "10,000 parts hold only {total} bytes");
    }
}
