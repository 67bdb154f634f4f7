//! A local folder as an object store (demos, tests, and the local mode).
//!
//! Writes go to a hidden temporary file in the target folder, are flushed to
//! disk, then renamed over the key: a reader never sees a partial object.
//! Symbolic links are never followed, so nothing outside the folder is read.

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{ByteStream, Listing, ObjectMeta, ObjectStore, StorageError, check_key};

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

/// Objects per page of a streamed listing.
const PAGE: usize = 1000;

/// A folder's entries to walk, sorted so the keys come out in bytewise
/// order: a folder sorts as its name followed by `/` (`a-b` before `a/x`).
/// Symbolic links, special files, names that are not UTF-8 and temporary
/// files are left out.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if ty.is_dir() {
            out.push((format!("{name}/"), true));
        } else if ty.is_file() && !name.contains(TEMP_MARKER) {
            out.push((name.to_string(), false));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Walks the folder `start` (the key prefix `under` of `root`) in key order,
/// handing each file to `page` a page at a time; stops when `page` returns
/// false. Holds one sorted folder per level, never the whole tree.
fn walk_ordered(
    root: &Path,
    under: &str,
    mut page: impl FnMut(Vec<ObjectMeta>) -> bool,
) -> std::io::Result<()> {
    let mut stack = vec![(
        under.to_string(),
        sorted_entries(&root.join(under))?.into_iter(),
    )];
    let mut out = Vec::with_capacity(PAGE);
    while let Some((prefix, entries)) = stack.last_mut() {
        let Some((name, is_dir)) = entries.next() else {
            stack.pop();
            continue;
        };
        let key = format!("{prefix}{name}");
        let path = root.join(&key);
        if is_dir {
            match sorted_entries(&path) {
                Ok(inner) => stack.push((key, inner.into_iter())),
                // Removed while it was walked.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| jiff::Timestamp::try_from(t).ok());
        out.push(ObjectMeta {
            key,
            size: meta.len(),
            modified: modified.map(|t| t.to_string()),
            etag: None,
        });
        if out.len() == PAGE && !page(std::mem::replace(&mut out, Vec::with_capacity(PAGE))) {
            return Ok(());
        }
    }
    if !out.is_empty() {
        page(out);
    }
    Ok(())
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>, StorageError> {
        self.list_from("").try_collect().await
    }

    fn list_from<'a>(&'a self, under: &'a str) -> Listing<'a> {
        // Only whole folders are walked; a prefix inside a name is filtered.
        let folder = under.rfind('/').map_or("", |i| &under[..=i]).to_string();
        if !folder.is_empty()
            && let Err(e) = check_key(&self.describe(), folder.trim_end_matches('/'))
        {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<ObjectMeta>>>(2);
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let walked = walk_ordered(&root, &folder, |page| tx.blocking_send(Ok(page)).is_ok());
            match walked {
                // A missing folder inside an existing root is an empty listing.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && !folder.is_empty()
                        && root.is_dir() => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                }
                Ok(()) => {}
            }
        });
        let pages = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|page| (page, rx))
        });
        pages
            .map(move |page| {
                let objects: Vec<Result<ObjectMeta, StorageError>> = match page {
                    Ok(objects) => objects.into_iter().map(Ok).collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        vec![Err(StorageError::NoSuchContainer {
                            endpoint: self.describe(),
                            what: "the folder".to_string(),
                        })]
                    }
                    Err(e) => vec![Err(self.io("list", None, e))],
                };
                futures::stream::iter(objects)
            })
            .flatten()
            .filter(move |o| {
                futures::future::ready(o.as_ref().map_or(true, |o| o.key.starts_with(under)))
            })
            .boxed()
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
