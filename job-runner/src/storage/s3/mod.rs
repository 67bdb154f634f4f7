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
use futures::StreamExt;
use futures::channel::mpsc;

pub use credentials::S3Auth;
use credentials::WebIdentityProvider;
pub use whole::ReadTuning;
use whole::{HANDOFF_SLICE, WholeRead};

use super::{ByteStream, ObjectMeta, ObjectStore, StorageError, check_endpoint_url, check_key};

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
            check_endpoint_url(&name, url, config.insecure_plain_http_on_loopback)?;
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
            } => {
                let mut sts = aws_sdk_sts::Config::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .http_client(crate::net::aws_http_client(&config.network))
                    .region(aws_sdk_sts::config::Region::new(config.region.clone()));
                if let Some(url) = sts_endpoint {
                    check_endpoint_url(&name, url, config.insecure_plain_http_on_loopback)?;
                    sts = sts.endpoint_url(url);
                }
                SharedCredentialsProvider::new(WebIdentityProvider {
                    role_arn: role_arn.clone(),
                    token_file: token_file.clone(),
                    session_name: session_name.clone(),
                    sts: aws_sdk_sts::Client::from_conf(sts.build()),
                })
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

    /// Maps an SDK error to a storage error naming the endpoint and object.
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
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = source {
            if e.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
                .is_some()
            {
                return StorageError::InvalidCredentials { endpoint };
            }
            source = e.source();
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

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, StorageError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(SdkBody::from(body))
            .send()
            .await
            .map_err(|e| self.error(e, Some(key)))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .build())
    }

    /// The outcome of a part upload task.
    fn joined(
        &self,
        done: Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>,
        key: &str,
    ) -> Result<CompletedPart, StorageError> {
        done.unwrap_or_else(|e| {
            Err(StorageError::Io {
                endpoint: self.name.clone(),
                action: "upload a part",
                key: Some(key.to_string()),
                source: std::io::Error::other(e.to_string()),
            })
        })
    }

    async fn multipart(
        &self,
        key: &str,
        first: Bytes,
        reader: &mut PartReader,
    ) -> Result<(), StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error(e, Some(key)))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StorageError::Io {
                endpoint: self.name.clone(),
                action: "start a multipart upload",
                key: Some(key.to_string()),
                source: std::io::Error::other("no upload id returned"),
            })?
            .to_string();
        let result = async {
            let mut parts = Vec::new();
            // Each part uploads in a task of its own, so the parts in flight
            // keep moving while the next one is read. Dropping the set (on an
            // error) cancels them.
            let mut in_flight = tokio::task::JoinSet::new();
            let mut next = Some(first);
            let mut number = 0;
            while let Some(body) = next.take() {
                number += 1;
                let (store, part_key, id) = (self.clone(), key.to_string(), upload_id.clone());
                in_flight
                    .spawn(async move { store.upload_part(&part_key, &id, number, body).await });
                while in_flight.len() >= PARTS_IN_FLIGHT {
                    if let Some(done) = in_flight.join_next().await {
                        parts.push(self.joined(done, key)?);
                    }
                }
                next = reader.next_part().await?;
            }
            while let Some(done) = in_flight.join_next().await {
                parts.push(self.joined(done, key)?);
            }
            parts.sort_by_key(|p| p.part_number());
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.error(e, Some(key)))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Never leave a half-done upload behind (it would also be billed).
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                tracing::warn!(endpoint = %self.name, key, error = %self.error(e, Some(key)), "failed to abort a multipart upload");
            }
        }
        result
    }
}

/// Parts of one size before the size doubles.
const PARTS_PER_SIZE: i32 = 1000;

/// The size of part `number` (from 1): PART_SIZE for the first thousand
/// parts (objects up to 7.8 GiB), then doubling every thousand parts, up to
/// 4 GiB. S3 allows 10,000 parts of at most 5 GiB: fixed 8 MiB parts would
/// stop at 78 GiB, these reach 7.8 TiB (S3's largest object is 5 TiB). Memory
/// grows only with objects above 7.8 GiB: parts in flight times their size.
fn part_size(number: i32) -> usize {
    let doublings = ((number.max(1) - 1) / PARTS_PER_SIZE).min(9);
    PART_SIZE << doublings
}

/// Cuts a byte stream into parts of [`part_size`] (the last may be shorter).
struct PartReader {
    input: ByteStream,
    /// Parts cut so far.
    parts: i32,
    /// What is left of the chunk that crossed the last part boundary.
    carry: Bytes,
    done: bool,
    total: u64,
}

impl PartReader {
    fn new(input: ByteStream) -> Self {
        Self {
            input,
            parts: 0,
            carry: Bytes::new(),
            done: false,
            total: 0,
        }
    }

    /// The next part: exactly [`part_size`] bytes (the last one fewer), in an
    /// allocation of its own, so a part in flight pins no more than itself.
    async fn next_part(&mut self) -> Result<Option<Bytes>, StorageError> {
        let size = part_size(self.parts + 1);
        let mut part = BytesMut::new();
        loop {
            if !self.carry.is_empty() {
                if part.capacity() == 0 {
                    part.reserve(size);
                }
                let take = self.carry.len().min(size - part.len());
                part.extend_from_slice(&self.carry.split_to(take));
            }
            if part.len() == size || self.done {
                break;
            }
            match self.input.next().await {
                Some(chunk) => {
                    self.carry = chunk?;
                    self.total += self.carry.len() as u64;
                }
                None => self.done = true,
            }
        }
        if part.is_empty() {
            return Ok(None);
        }
        self.parts += 1;
        Ok(Some(part.freeze()))
    }

    /// Whether the input is exhausted with nothing left over.
    fn finished(&self) -> bool {
        self.done && self.carry.is_empty()
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(e, None))?;
            for o in page.contents() {
                let Some(full) = o.key() else { continue };
                let Some(key) = full.strip_prefix(self.prefix.as_str()) else {
                    continue;
                };
                if key.is_empty() || key.ends_with('/') {
                    continue; // folder markers
                }
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    modified: o
                        .last_modified()
                        .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok()),
                    etag: o.e_tag().map(str::to_string),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
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
        let full = self.full_key(key)?;
        let mut reader = PartReader::new(data);
        let first = reader.next_part().await?.unwrap_or_default();
        if reader.finished() {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .body(SdkBody::from(first))
                .send()
                .await
                .map_err(|e| self.error(e, Some(key)))?;
        } else {
            self.multipart(&full, first, &mut reader).await?;
        }
        Ok(reader.total)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_reach_s3s_largest_object_within_its_limits() {
        const MAX_PARTS: i32 = 10_000;
        const MAX_PART: usize = 5 << 30;
        const MAX_OBJECT: u64 = 5 << 40;
        // Objects up to 7.8 GiB keep PART_SIZE parts (the memory bound).
        assert!((1..=PARTS_PER_SIZE).all(|n| part_size(n) == PART_SIZE));
        assert_eq!(part_size(PARTS_PER_SIZE + 1), 2 * PART_SIZE);
        let sizes: Vec<usize> = (1..=MAX_PARTS).map(part_size).collect();
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]));
        assert!(sizes.iter().all(|s| (5 << 20..=MAX_PART).contains(s)));
        let total: u64 = sizes.iter().map(|s| *s as u64).sum();
        assert!(total >= MAX_OBJECT, "10,000 parts hold only {total} bytes");
    }

    #[tokio::test]
    async fn parts_are_cut_exactly_whatever_the_chunks() {
        let len = 2 * PART_SIZE + 12_345;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        // Chunks of uneven sizes, one crossing each part boundary.
        let chunks: Vec<Result<Bytes, StorageError>> = data
            .chunks(999_983)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut reader = PartReader::new(futures::stream::iter(chunks).boxed());
        let mut parts = Vec::new();
        while let Some(part) = reader.next_part().await.expect("next part") {
            parts.push(part);
        }
        assert!(reader.finished());
        assert_eq!(reader.total, len as u64);
        let sizes: Vec<usize> = parts.iter().map(Bytes::len).collect();
        assert_eq!(sizes, vec![PART_SIZE, PART_SIZE, 12_345]);
        assert_eq!(parts.concat(), data);
    }
}
