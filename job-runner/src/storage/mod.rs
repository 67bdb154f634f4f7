//! One trait at the storage boundary, one folder per backend.
//!
//! Keys are always relative to the endpoint's prefix (or folder) and use `/` as
//! separator; a backend never lists, reads or writes outside its prefix.

use std::ops::Range;

use bytes::Bytes;
use ferry_crds::Reason;
use futures::stream::BoxStream;

pub mod access;
pub mod azure;
pub mod local;
pub mod multipart;
pub mod s3;
pub mod sftp;

/// A stream of object bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// A listing, one object at a time in key order (bytewise), fetched a page at
/// a time: what it holds is bounded by a page, not by the number of objects.
pub type Listing<'a> = BoxStream<'a, Result<ObjectMeta, StorageError>>;

/// What a listing says of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, RFC 3339.
    pub modified: Option<String>,
    /// ETag or another version tag, where the store has one.
    pub etag: Option<String>,
}

/// Storage failures, each naming the endpoint (never a credential) and, where
/// there is one, the object.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{endpoint}: object {key:?} not found")]
    NotFound { endpoint: String, key: String },
    #[error("{endpoint}: {what} does not exist")]
    NoSuchContainer { endpoint: String, what: String },
    #[error("{endpoint}: access denied{}", key_suffix(.key))]
    AccessDenied {
        endpoint: String,
        key: Option<String>,
    },
    #[error("{endpoint}: invalid credentials")]
    InvalidCredentials { endpoint: String },
    #[error(
        "{endpoint}: host key mismatch: the server presented {presented}, which is not the expected key"
    )]
    HostKeyMismatch { endpoint: String, presented: String },
    #[error("{endpoint}: unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("{endpoint}: no space left while writing {key:?}")]
    NoSpace { endpoint: String, key: String },
    #[error("{endpoint}: object {key:?} changed while it was read")]
    ChangedDuringRead { endpoint: String, key: String },
    #[error("{endpoint}: invalid object key {key:?}: {reason}")]
    InvalidKey {
        endpoint: String,
        key: String,
        reason: &'static str,
    },
    #[error("{endpoint}: failed to {action}{}: {source}", key_suffix(.key))]
    Io {
        endpoint: String,
        action: &'static str,
        key: Option<String>,
        #[source]
        source: std::io::Error,
    },
    #[error("{endpoint}: the listing is not in key order: {key:?} came after {previous:?}")]
    Unordered {
        endpoint: String,
        key: String,
        previous: String,
    },
    #[error("{endpoint}: failed to produce the data for {key:?}: {reason}")]
    Source {
        endpoint: String,
        key: String,
        reason: String,
    },
}

fn key_suffix(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!(" on object {k:?}"))
        .unwrap_or_default()
}

impl StorageError {
    /// Whether retrying the same call may succeed (timeouts, throttling, resets).
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Unreachable { .. } => true,
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// A stable, machine-readable reason (for conditions, metrics and audit).
    pub fn reason(&self) -> Reason {
        match self {
            StorageError::NotFound { .. } => Reason::ObjectNotFound,
            StorageError::NoSuchContainer { .. } => Reason::ContainerNotFound,
            StorageError::AccessDenied { .. } => Reason::AccessDenied,
            StorageError::InvalidCredentials { .. } => Reason::InvalidCredentials,
            StorageError::HostKeyMismatch { .. } => Reason::HostKeyMismatch,
            StorageError::Unreachable { .. } => Reason::EndpointUnreachable,
            StorageError::NoSpace { .. } => Reason::NoSpace,
            StorageError::ChangedDuringRead { .. } => Reason::ObjectChanged,
            StorageError::InvalidKey { .. } => Reason::InvalidKey,
            StorageError::Io { .. } | StorageError::Unordered { .. } => Reason::StorageError,
            StorageError::Source { .. } => Reason::SourceError,
        }
    }
}

/// What [`ObjectStore::delete_versions`] found of a key's earlier versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// The store keeps no earlier versions (a folder, an SFTP server).
    NotKept,
    /// Earlier versions were listed: `deleted` of them deleted, `kept`
    /// refused (object lock, a legal hold, or no right to delete versions).
    Listed { deleted: u64, kept: u64 },
    /// The store may keep versions this client cannot list (Azure Blob with
    /// versioning or soft delete on, an S3 role without
    /// `s3:ListBucketVersions`): nothing is known of them.
    Unknown,
}

/// An object store confined to one prefix.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// A human-readable name of the endpoint for messages, e.g. `local:/data/in`
    /// or `s3://bucket/prefix`. Never holds a credential.
    fn describe(&self) -> String;

    /// Every object under the prefix, sorted by key.
    async fn list(&self) -> Result<Vec<ObjectMeta>, StorageError>;

    /// The objects whose key starts with `under` (`""`: all of them), in
    /// key order, a page at a time. The default lists everything at once;
    /// backends whose listing pages are in key order stream them.
    fn list_from<'a>(&'a self, under: &'a str) -> Listing<'a> {
        use futures::StreamExt;
        futures::stream::once(self.list())
            .map(move |listed| {
                let objects: Vec<Result<ObjectMeta, StorageError>> = match listed {
                    Ok(l) => l
                        .into_iter()
                        .filter(|o| o.key.starts_with(under))
                        .map(Ok)
                        .collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(objects)
            })
            .flatten()
            .boxed()
    }

    /// The object's bytes, or a byte range of them.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StorageError>;

    /// Writes an object from a stream, atomically: readers see the old object or
    /// the whole new one, never a part; on error nothing new is visible.
    /// Returns the number of bytes written.
    async fn put(&self, key: &str, data: ByteStream) -> Result<u64, StorageError>;

    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// Deletes the earlier versions of `key` that a versioned store keeps
    /// beside its current one (or beside the delete marker a deletion left):
    /// an erasure must not leave the erased bytes, nor the records as they
    /// were before, one request away. What became of them.
    async fn delete_versions(&self, key: &str) -> Result<Versions, StorageError> {
        let _ = key;
        Ok(Versions::NotKept)
    }

    /// The region the store reports for this endpoint, if it can tell
    /// (S3 bucket location, Azure account location); `None` otherwise.
    async fn region(&self) -> Result<Option<String>, StorageError>;
}

/// Checks a relative key: no empty segment, no `.` or `..`, no NUL, no leading `/`.
/// `listing`, with a key out of order (or repeated) turned into an error:
/// the merges that consume listings count on the order.
pub fn in_order<'a>(endpoint: String, listing: Listing<'a>) -> Listing<'a> {
    use futures::StreamExt;
    let mut previous: Option<String> = None;
    listing
        .map(move |item| {
            let obj = item?;
            if let Some(p) = &previous
                && obj.key.as_str() <= p.as_str()
            {
                return Err(StorageError::Unordered {
                    endpoint: endpoint.clone(),
                    key: obj.key,
                    previous: p.clone(),
                });
            }
            previous = Some(obj.key.clone());
            Ok(obj)
        })
        .boxed()
}

pub fn check_key(endpoint: &str, key: &str) -> Result<(), StorageError> {
    let bad = |reason| StorageError::InvalidKey {
        endpoint: endpoint.to_string(),
        key: key.to_string(),
        reason,
    };
    if key.is_empty() {
        return Err(bad("empty key"));
    }
    if key.contains('\0') {
        return Err(bad("NUL byte"));
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad("empty, '.' or '..' path segment"));
    }
    Ok(())
}

/// Accepts an `https://` URL, and an `http://` one only for a loopback host
/// (127.0.0.0/8, ::1, localhost) with the explicit opt-out; the rule the
/// operator applies too ([`ferry_crds::check_endpoint_url`]). Never echoes
/// anything after the host (a URL may carry a SAS token in its query).
pub fn check_endpoint_url(
    endpoint: &str,
    url: &str,
    allow_plain_loopback: bool,
) -> Result<(), StorageError> {
    ferry_crds::check_endpoint_url(url, allow_plain_loopback)
        .map(|_| ())
        .map_err(|refusal| StorageError::Unreachable {
            endpoint: endpoint.to_string(),
            reason: refusal.to_string(),
        })
}

/// [`check_endpoint_url`] for a Connector's endpoint, and its host, when an
/// IP literal, outside the networks runs may not reach (the resolver checks
/// names; the clients never ask it about literals).
pub fn check_connector_url(
    endpoint: &str,
    url: &str,
    allow_plain_loopback: bool,
    network: &crate::net::NetworkGuard,
) -> Result<(), StorageError> {
    check_endpoint_url(endpoint, url, allow_plain_loopback)?;
    network
        .check_url(url)
        .map_err(|refused| StorageError::Unreachable {
            endpoint: endpoint.to_string(),
            reason: refused.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        let ok = |u, allow| check_endpoint_url("e", u, allow).is_ok();
        assert!(ok("https://s3.eu-west-1.amazonaws.com", false));
        assert!(ok("http://127.0.0.1:9000", true));
        assert!(ok("http://[::1]:9000/x", true));
        assert!(ok("http://localhost:10000/devstoreaccount1", true));
        assert!(!ok("http://127.0.0.1:9000", false));
        assert!(!ok("http://10.0.0.1:9000", true));
        assert!(!ok("http://example.com@127.0.0.1.evil.com/", true));
        assert!(!ok("ftp://127.0.0.1", true));
        assert!(!ok("127.0.0.1:9000", true));
        assert!(!ok("http://10.0.0.5:8080\\@localhost:8080", true));
        let err = check_endpoint_url("e", "http://h.example/?sig=SECRET", false).unwrap_err();
        assert!(!err.to_string().contains("SECRET"));
    }

    #[test]
    fn keys() {
        assert!(check_key("e", "a/b c/ü.csv").is_ok());
        for bad in ["", "/a", "a/", "a//b", "./a", "a/../b", "a\0b"] {
            assert!(check_key("e", bad).is_err(), "{bad:?}");
        }
    }
}
