//! One multipart writer for the backends that upload an object in parts (S3
//! parts, Azure Blob blocks). It cuts the stream into parts of a growing size,
//! keeps a bounded number of parts in flight, completes the upload in part
//! order, and aborts it on any failure; a backend only says how to start an
//! upload, put one part, complete and abort ([`Uploader`]). An object that fits
//! in its first part is sent whole, in one request.
//!
//! Memory per object is bounded by the parts in flight plus the one being cut:
//! each part is one allocation of its own, so a part in flight pins no more
//! than itself.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;

use super::{ByteStream, StorageError};

/// Part sizes: `first` bytes for the first `per_size` parts, then doubling
/// every `per_size` parts, at most `max_doublings` times. Fixed parts would
/// cap an object at the service's part count times the part size; growing
/// ones reach its largest object while small objects keep small parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub first: usize,
    pub per_size: usize,
    pub max_doublings: u32,
}

impl Sizes {
    /// The size of part `number` (from 1).
    pub fn part(&self, number: usize) -> usize {
        let doublings = (number.max(1) - 1) / self.per_size.max(1);
        self.first << doublings.min(self.max_doublings as usize)
    }
}

/// How a backend uploads one object in parts. One value per object.
#[async_trait::async_trait]
pub trait Uploader: Send + Sync {
    /// The upload in progress (an upload id, a handle).
    type Upload: Send;
    /// What a part's upload returns and completion needs (an ETag).
    type Part: Send + 'static;

    /// The endpoint and object, for errors.
    fn endpoint(&self) -> &str;
    fn key(&self) -> &str;
    /// Sends an object that fits in one part, in one request.
    async fn put_whole(&self, body: Bytes) -> Result<(), StorageError>;
    /// Starts a multipart upload.
    async fn start(&self) -> Result<Self::Upload, StorageError>;
    /// Starts the upload of part `number` (from 1), called in part order; the
    /// returned future runs in a task of its own.
    fn put_part(
        &self,
        upload: &mut Self::Upload,
        number: usize,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Self::Part, StorageError>>;
    /// Commits the parts, in order.
    async fn complete(
        &self,
        upload: &mut Self::Upload,
        parts: Vec<Self::Part>,
    ) -> Result<(), StorageError>;
    /// Abandons the upload; a failure is only logged (uncommitted parts are
    /// never visible).
    async fn abort(&self, upload: &mut Self::Upload);
}

/// Uploads `data` through `uploader`, with at most `in_flight` parts at once.
/// Returns the bytes written.
pub async fn upload<U: Uploader>(
    uploader: &U,
    data: ByteStream,
    sizes: Sizes,
    in_flight: usize,
) -> Result<u64, StorageError> {
    let mut reader = PartReader::new(data, sizes);
    let first = reader.next_part().await?.unwrap_or_default();
    // An object of exactly one part ends only when the next read finds nothing.
    let second = if reader.finished() {
        None
    } else {
        reader.next_part().await?
    };
    let Some(second) = second else {
        uploader.put_whole(first).await?;
        return Ok(reader.total);
    };
    let mut upload = uploader.start().await?;
    // Dropping the set (on an error) cancels the parts in flight.
    let mut tasks = tokio::task::JoinSet::new();
    let parts: Result<Vec<U::Part>, StorageError> = async {
        let mut parts = Vec::new();
        let mut next = Some(first);
        let mut after = Some(second);
        let mut number = 0;
        while let Some(body) = next.take() {
            number += 1;
            let part = uploader.put_part(&mut upload, number, body);
            tasks.spawn(async move { part.await.map(|p| (number, p)) });
            while tasks.len() >= in_flight.max(1) {
                if let Some(done) = tasks.join_next().await {
                    parts.push(joined(uploader, done)?);
                }
            }
            next = match after.take() {
                Some(part) => Some(part),
                None => reader.next_part().await?,
            };
        }
        while let Some(done) = tasks.join_next().await {
            parts.push(joined(uploader, done)?);
        }
        parts.sort_by_key(|(n, _)| *n);
        Ok(parts.into_iter().map(|(_, p)| p).collect())
    }
    .await;
    let completed = match parts {
        Ok(parts) => uploader.complete(&mut upload, parts).await,
        Err(e) => Err(e),
    };
    if let Err(e) = completed {
        tasks.abort_all();
        // Never leave a half-done upload behind (S3 would also bill it).
        uploader.abort(&mut upload).await;
        return Err(e);
    }
    Ok(reader.total)
}

/// The outcome of a part's task.
fn joined<U: Uploader, P>(
    uploader: &U,
    done: Result<Result<(usize, P), StorageError>, tokio::task::JoinError>,
) -> Result<(usize, P), StorageError> {
    done.unwrap_or_else(|e| {
        Err(StorageError::Io {
            endpoint: uploader.endpoint().to_string(),
            action: "upload a part",
            key: Some(uploader.key().to_string()),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

/// Cuts a byte stream into parts of [`Sizes::part`] bytes (the last may be
/// shorter).
pub struct PartReader {
    input: ByteStream,
    sizes: Sizes,
    /// Parts cut so far.
    parts: usize,
    /// What is left of the chunk that crossed the last part boundary.
    carry: Bytes,
    done: bool,
    /// Bytes read from the input so far.
    pub total: u64,
}

impl PartReader {
    pub fn new(input: ByteStream, sizes: Sizes) -> Self {
        Self {
            input,
            sizes,
            parts: 0,
            carry: Bytes::new(),
            done: false,
            total: 0,
        }
    }

    /// The next part: exactly its size (the last one fewer), in an allocation
    /// of its own.
    pub async fn next_part(&mut self) -> Result<Option<Bytes>, StorageError> {
        let size = self.sizes.part(self.parts + 1);
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
    pub fn finished(&self) -> bool {
        self.done && self.carry.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SMALL: Sizes = Sizes {
        first: 1000,
        per_size: 3,
        max_doublings: 2,
    };

    fn chunks(data: &[u8], size: usize) -> ByteStream {
        let chunks: Vec<Result<Bytes, StorageError>> = data
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks).boxed()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Records what the writer asks of a backend; part `fail_at` fails.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        parts: Mutex<Vec<(usize, Vec<u8>)>>,
        flying: Arc<AtomicUsize>,
        most_flying: Arc<AtomicUsize>,
        fail_at: Option<usize>,
    }

    impl Recorder {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn call(&self, c: impl Into<String>) {
            self.calls.lock().unwrap().push(c.into());
        }
    }

    #[async_trait::async_trait]
    impl Uploader for Recorder {
        type Upload = u32;
        type Part = usize;
        fn endpoint(&self) -> &str {
            "test"
        }
        fn key(&self) -> &str {
            "k"
        }
        async fn put_whole(&self, body: Bytes) -> Result<(), StorageError> {
            self.call(format!("whole {}", body.len()));
            Ok(())
        }
        async fn start(&self) -> Result<u32, StorageError> {
            self.call("start");
            Ok(7)
        }
        fn put_part(
            &self,
            upload: &mut u32,
            number: usize,
            body: Bytes,
        ) -> BoxFuture<'static, Result<usize, StorageError>> {
            assert_eq!(*upload, 7);
            self.parts.lock().unwrap().push((number, body.to_vec()));
            let (flying, most) = (self.flying.clone(), self.most_flying.clone());
            let fail = self.fail_at == Some(number);
            Box::pin(async move {
                let now = flying.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Later parts finish first: completion must still be in order.
                tokio::time::sleep(std::time::Duration::from_millis(20 / number as u64)).await;
                flying.fetch_sub(1, Ordering::SeqCst);
                if fail {
                    return Err(StorageError::Unreachable {
                        endpoint: "test".into(),
                        reason: format!("part {number} refused"),
                    });
                }
                Ok(number)
            })
        }
        async fn complete(&self, _: &mut u32, parts: Vec<usize>) -> Result<(), StorageError> {
            self.call(format!("complete {parts:?}"));
            Ok(())
        }
        async fn abort(&self, _: &mut u32) {
            self.call("abort");
        }
    }

    #[test]
    fn sizes_grow_by_doubling_and_stop_at_the_cap() {
        let sizes: Vec<usize> = (1..=12).map(|n| SMALL.part(n)).collect();
        assert_eq!(
            sizes,
            [
                1000, 1000, 1000, 2000, 2000, 2000, 4000, 4000, 4000, 4000, 4000, 4000
            ]
        );
    }

    #[tokio::test]
    async fn parts_are_cut_exactly_whatever_the_chunks() {
        let d = data(3 * 1000 + 2000 + 123);
        let mut reader = PartReader::new(chunks(&d, 997), SMALL);
        let mut parts = Vec::new();
        while let Some(part) = reader.next_part().await.expect("next part") {
            parts.push(part);
        }
        assert!(reader.finished());
        assert_eq!(reader.total, d.len() as u64);
        let sizes: Vec<usize> = parts.iter().map(Bytes::len).collect();
        assert_eq!(sizes, vec![1000, 1000, 1000, 2000, 123]);
        assert_eq!(parts.concat(), d);
    }

    #[tokio::test]
    async fn an_object_within_one_part_is_sent_whole() {
        let r = Recorder::default();
        let n = upload(&r, chunks(&data(1000), 300), SMALL, 2)
            .await
            .unwrap();
        assert_eq!(n, 1000);
        assert_eq!(r.calls(), vec!["whole 1000"]);
        let n = upload(&r, chunks(&[], 300), SMALL, 2).await.unwrap();
        assert_eq!(n, 0);
        assert_eq!(r.calls().last().unwrap(), "whole 0");
    }

    #[tokio::test]
    async fn a_larger_object_is_uploaded_in_order_with_bounded_parts_in_flight() {
        let r = Recorder::default();
        let d = data(8 * 1000 + 17);
        let n = upload(&r, chunks(&d, 333), SMALL, 2).await.unwrap();
        assert_eq!(n, d.len() as u64);
        assert_eq!(r.calls(), vec!["start", "complete [1, 2, 3, 4, 5, 6]"]);
        let mut parts = r.parts.lock().unwrap().clone();
        parts.sort_by_key(|p| p.0);
        let joined: Vec<u8> = parts.into_iter().flat_map(|p| p.1).collect();
        assert_eq!(joined, d);
        assert_eq!(r.most_flying.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_part_aborts_the_upload_and_never_completes_it() {
        let r = Recorder {
            fail_at: Some(3),
            ..Recorder::default()
        };
        let err = upload(&r, chunks(&data(8000), 500), SMALL, 2)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("part 3 refused"), "{err}");
        assert_eq!(r.calls(), vec!["start", "abort"]);
    }

    #[tokio::test]
    async fn a_failed_read_aborts_the_upload() {
        let r = Recorder::default();
        let mut items: Vec<Result<Bytes, StorageError>> = vec![Ok(Bytes::from(data(2500)))];
        items.push(Err(StorageError::Source {
            endpoint: "src".into(),
            key: "k".into(),
            reason: "read failed".into(),
        }));
        let err = upload(&r, futures::stream::iter(items).boxed(), SMALL, 2)
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Source { .. }));
        assert_eq!(r.calls(), vec!["start", "abort"]);
    }
}
