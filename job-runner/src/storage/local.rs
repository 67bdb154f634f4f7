//! A local folder as an object store (demos, tests, and the local mode).
//!
//! Writes go to a hidden temporary file in the target folder, are flushed to
//! disk, then renamed over the key: a reader never sees a partial object.
//! Symbolic links are never followed, so nothing outside the folder is read.

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{ByteStream, ObjectMeta, ObjectStore, StorageError, check_key};

/// Marks Ferry's temporary files; listings skip them.
pub const TEMP_MARKER: &str = ".ferry-tmp-";
const READ_CHUNK: usize = 256 * 1024;

/// A folder on the local file system.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write if missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(&self.describe(), key)?;
        Ok(self.root.join(key))
    }

    fn io(&self, action: &'static str, key: Option<&str>, source: std::io::Error) -> StorageError {
        let endpoint = self.describe();
        match (source.kind(), key) {
            (std::io::ErrorKind::NotFound, Some(k)) => StorageError::NotFound {
                endpoint,
                key: k.to_string(),
            },
            (std::io::ErrorKind::PermissionDenied, k) => StorageError::AccessDenied {
                endpoint,
                key: k.map(str::to_string),
            },
            // A full disk, a quota or a file size limit: the destination
            // cannot take the object, and retrying at once will not help.
            (
                std::io::ErrorKind::StorageFull
                | std::io::ErrorKind::QuotaExceeded
                | std::io::ErrorKind::FileTooLarge,
                Some(k),
            ) => StorageError::NoSpace {
                endpoint,
                key: k.to_string(),
            },
            _ => StorageError::Io {
                endpoint,
                action,
                key: key.map(str::to_string),
                source,
            },
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let path = entry.path();
        if ty.is_dir() {
            walk(root, &path, out)?;
        } else if ty.is_file() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.contains(TEMP_MARKER) {
                continue;
            }
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let Some(rel) = rel.to_str() else { continue };
            let meta = entry.metadata()?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| jiff::Timestamp::try_from(t).ok());
            out.push(ObjectMeta {
                key: rel.replace(std::path::MAIN_SEPARATOR, "/"),
                size: meta.len(),
                modified: modified.map(|t| t.to_string()),
                etag: None,
            });
        }
        // Symbolic links and special files are ignored.
    }
    Ok(())
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>, StorageError> {
        let root = self.root.clone();
        let listed = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &root, &mut out).map(|()| out)
        })
        .await
        .map_err(|e| self.io("list", None, std::io::Error::other(e)))?;
        match listed {
            Ok(mut objects) => {
                objects.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(objects)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::NoSuchContainer {
                    endpoint: self.describe(),
                    what: "the folder".to_string(),
                })
            }
            Err(e) => Err(self.io("list", None, e)),
        }
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StorageError> {
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.io("open", Some(key), e))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| self.io("stat", Some(key), e))?
            .len();
        let range = range.unwrap_or(0..size);
        let (start, end) = (range.start.min(size), range.end.min(size));
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| self.io("seek", Some(key), e))?;
        }
        let this = self.clone();
        let key = key.to_string();
        let remaining = end.saturating_sub(start);
        let stream = futures::stream::try_unfold(
            (file, remaining, this, key),
            |(mut file, remaining, this, key)| async move {
                if remaining == 0 {
                    return Ok(None);
                }
                let want = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(READ_CHUNK);
                let mut buf = BytesMut::zeroed(want);
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| this.io("read", Some(&key), e))?;
                if n == 0 {
                    // The file shrank under us.
                    return Err(StorageError::ChangedDuringRead {
                        endpoint: this.describe(),
                        key,
                    });
                }
                buf.truncate(n);
                Ok(Some((
                    buf.freeze(),
                    (file, remaining - n as u64, this, key),
                )))
            },
        );
        Ok(stream.boxed())
    }

    async fn put(&self, key: &str, mut data: ByteStream) -> Result<u64, StorageError> {
        let path = self.path(key)?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| self.io("create folder for", Some(key), e))?;
        let mut suffix = [0u8; 8];
        crate::crypto::aead::random_bytes(&mut suffix).map_err(|_| {
            self.io(
                "name a temporary file for",
                Some(key),
                std::io::Error::other("random generator failed"),
            )
        })?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object");
        let tmp = dir.join(format!(".{name}{TEMP_MARKER}{}", hex::encode(suffix)));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| self.io("create", Some(key), e))?;
            let mut written = 0u64;
            while let Some(chunk) = data.next().await {
                let chunk: Bytes = chunk?;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| self.io("write", Some(key), e))?;
                written += chunk.len() as u64;
            }
            file.flush()
                .await
                .map_err(|e| self.io("write", Some(key), e))?;
            file.sync_all()
                .await
                .map_err(|e| self.io("sync", Some(key), e))?;
            drop(file);
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(|e| self.io("rename into place", Some(key), e))?;
            Ok(written)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("delete", Some(key), e)),
        }
    }

    async fn region(&self) -> Result<Option<String>, StorageError> {
        Ok(None)
    }
}
