//! SFTP, with `russh` and `russh-sftp`.
//!
//! The host key is always verified (a pinned SHA-256 fingerprint or a known
//! public key). Keys authenticate by default; a password only when allowed.
//! Reads and writes are pipelined: [`REQUESTS_IN_FLIGHT`] requests are
//! outstanding at once (a write may add the rest of the chunk it is cutting)
//! instead of one round trip per chunk. A write goes to a
//! hidden temporary name in the target folder and is renamed over the key at
//! the end, so no partial object is ever visible.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::access::{OpenError, Platform, SecretKeyMissing, Secrets};
use super::local::TEMP_MARKER;
use super::{ByteStream, Listing, ObjectMeta, ObjectStore, StorageError, check_key};

/// Objects per page of a listing.
const LIST_PAGE: usize = 1000;
use ferry_crds::SftpEndpoint;

/// Bytes per read or write request (OpenSSH serves up to 255 KiB).
pub const REQUEST_SIZE: usize = 255 * 1024;
/// Requests outstanding at once per object.
pub const REQUESTS_IN_FLIGHT: usize = 64;

/// The server's expected host key.
#[derive(Debug, Clone)]
pub enum HostKeyCheck {
    /// `SHA256:...` as `ssh-keygen -lf` prints it.
    Fingerprint(String),
    /// A public key (known_hosts or `.pub` line).
    Key(PublicKey),
}

impl HostKeyCheck {
    /// Parses a known_hosts or `.pub` line (the first `type base64` pair in it).
    pub fn from_known_hosts(text: &str) -> Option<Self> {
        let words: Vec<&str> = text.split_whitespace().collect();
        words.windows(2).find_map(|w| {
            let algo = w[0];
            if algo.starts_with("ssh-") || algo.starts_with("ecdsa-") || algo.starts_with("sk-") {
                russh::keys::parse_public_key_base64(w[1])
                    .ok()
                    .map(HostKeyCheck::Key)
            } else {
                None
            }
        })
    }

    fn accepts(&self, key: &PublicKey) -> bool {
        match self {
            HostKeyCheck::Fingerprint(fp) => key.fingerprint(HashAlg::Sha256).to_string() == *fp,
            HostKeyCheck::Key(expected) => expected.key_data() == key.key_data(),
        }
    }
}

/// How the runner authenticates. `Debug` never shows a secret.
#[derive(Clone)]
pub enum SftpAuth {
    Key {
        private_key: Zeroizing<String>,
        passphrase: Option<Zeroizing<String>>,
    },
    Password(Zeroizing<String>),
}

impl std::fmt::Debug for SftpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SftpAuth::Key { .. } => "SftpAuth::Key { .. }",
            SftpAuth::Password(_) => "SftpAuth::Password(..)",
        })
    }
}

/// Where and how to reach the server.
#[derive(Debug, Clone)]
pub struct SftpConfig {
    pub host: String,
    pub port: u16,
    /// Folder on the server; nothing outside it is listed, read or written.
    pub path: String,
    pub username: String,
    pub auth: SftpAuth,
    pub host_key: HostKeyCheck,
    /// Where the client may connect.
    pub network: crate::net::NetworkGuard,
}

struct Verifier {
    expected: HostKeyCheck,
    /// The fingerprint the server presented, if it was refused.
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => return Ok(false),
        };
        let ok = self.expected.accepts(key);
        if !ok && let Ok(mut r) = self.refused.lock() {
            *r = Some(key.fingerprint(HashAlg::Sha256).to_string());
        }
        Ok(ok)
    }
}

struct Connection {
    sftp: RawSftpSession,
    session: client::Handle<Verifier>,
}

/// A folder on an SFTP server as an object store.
#[derive(Clone)]
pub struct SftpStore {
    config: Arc<SftpConfig>,
    root: String,
    name: String,
    conn: Arc<Mutex<Option<Arc<Connection>>>>,
}

impl std::fmt::Debug for SftpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpStore")
            .field("endpoint", &self.name)
            .finish_non_exhaustive()
    }
}

fn sftp_io(e: SftpError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn status_of(e: &SftpError) -> Option<StatusCode> {
    match e {
        SftpError::Status(s) => Some(s.status_code),
        _ => None,
    }
}

impl SftpStore {
    /// A store for `config`; connects on first use.
    pub fn new(config: SftpConfig) -> Self {
        let root = config.path.trim_end_matches('/').to_string();
        let root = if root.is_empty() {
            ".".to_string()
        } else {
            root
        };
        let name = format!(
            "sftp://{}@{}:{}/{}",
            config.username,
            config.host,
            config.port,
            root.trim_start_matches('/')
        );
        Self {
            config: Arc::new(config),
            root,
            name,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    fn remote(&self, key: &str) -> Result<String, StorageError> {
        check_key(&self.name, key)?;
        Ok(format!("{}/{key}", self.root))
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> StorageError {
        StorageError::Unreachable {
            endpoint: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    fn error(&self, action: &'static str, key: Option<&str>, e: SftpError) -> StorageError {
        let endpoint = self.name.clone();
        match (status_of(&e), key) {
            (Some(StatusCode::NoSuchFile), Some(k)) => StorageError::NotFound {
                endpoint,
                key: k.to_string(),
            },
            (Some(StatusCode::NoSuchFile), None) => StorageError::NoSuchContainer {
                endpoint,
                what: format!("folder {:?}", self.root),
            },
            (Some(StatusCode::PermissionDenied), k) => StorageError::AccessDenied {
                endpoint,
                key: k.map(str::to_string),
            },
            (None, _) if matches!(e, SftpError::Timeout) => {
                self.unreachable(format!("{action}: timed out"))
            }
            _ => StorageError::Io {
                endpoint,
                action,
                key: key.map(str::to_string),
                source: sftp_io(e),
            },
        }
    }

    async fn connect(&self) -> Result<Arc<Connection>, StorageError> {
        let mut guard = self.conn.lock().await;
        // Reuse the connection unless the server or the network closed it, so a
        // retry after a dropped connection reconnects.
        if let Some(c) = guard.as_ref()
            && !c.session.is_closed()
        {
            return Ok(c.clone());
        }
        let config = ssh_config();
        let refused = Arc::new(std::sync::Mutex::new(None));
        let verifier = Verifier {
            expected: self.config.host_key.clone(),
            refused: refused.clone(),
        };
        // Resolved and checked here, connected to as checked.
        let addrs = self
            .config
            .network
            .resolve(&self.config.host, self.config.port)
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut session = match tokio::time::timeout(
            std::time::Duration::from_secs(30),
            client::connect(config, &addrs[..], verifier),
        )
        .await
        {
            Err(_) => return Err(self.unreachable("connection timed out")),
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if let Some(fp) = refused.lock().ok().and_then(|r| r.clone()) {
                    return Err(StorageError::HostKeyMismatch {
                        endpoint: self.name.clone(),
                        presented: fp,
                    });
                }
                return Err(self.unreachable(e));
            }
        };
        self.authenticate(&mut session).await?;
        let channel = session
            .channel_open_session()
            .await
            .map_err(|e| self.unreachable(e))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| self.unreachable(e))?;
        let sftp = RawSftpSession::new(channel.into_stream());
        sftp.set_timeout(60);
        sftp.init()
            .await
            .map_err(|e| self.unreachable(format!("SFTP handshake: {e}")))?;
        let conn = Arc::new(Connection { sftp, session });
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Logs in with the key or the password; a refusal is invalid credentials.
    async fn authenticate(
        &self,
        session: &mut client::Handle<Verifier>,
    ) -> Result<(), StorageError> {
        let user = self.config.username.clone();
        let auth = match &self.config.auth {
            SftpAuth::Key {
                private_key,
                passphrase,
            } => {
                let key: PrivateKey = russh::keys::decode_secret_key(
                    private_key,
                    passphrase.as_deref().map(|p| p.as_str()),
                )
                .map_err(|_| StorageError::InvalidCredentials {
                    endpoint: self.name.clone(),
                })?;
                let hash = session
                    .best_supported_rsa_hash()
                    .await
                    .ok()
                    .flatten()
                    .flatten();
                session
                    .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                    .await
            }
            SftpAuth::Password(p) => session.authenticate_password(user, p.as_str()).await,
        }
        .map_err(|e| self.unreachable(e))?;
        if !auth.success() {
            return Err(StorageError::InvalidCredentials {
                endpoint: self.name.clone(),
            });
        }
        Ok(())
    }

    /// The entries of the folder `dir` worth listing (files and folders,
    /// not temporary files, links or special files), sorted so keys come out
    /// in bytewise order: a folder sorts as its name followed by `/`.
    async fn folder(
        &self,
        sftp: &RawSftpSession,
        dir: &str,
    ) -> Result<Vec<(String, FileAttributes)>, StorageError> {
        let handle = match sftp.opendir(dir).await {
            Ok(h) => h.handle,
            Err(e) => return Err(self.error("list", None, e)),
        };
        let mut entries = Vec::new();
        loop {
            match sftp.readdir(handle.as_str()).await {
                Ok(name) => entries.extend(name.files.into_iter().filter_map(|f| {
                    let keep = f.filename != "."
                        && f.filename != ".."
                        && !f.filename.contains(TEMP_MARKER)
                        && (f.attrs.is_dir() || f.attrs.is_regular());
                    let name = if f.attrs.is_dir() {
                        format!("{}/", f.filename)
                    } else {
                        f.filename
                    };
                    keep.then_some((name, f.attrs))
                })),
                Err(e) if status_of(&e) == Some(StatusCode::Eof) => break,
                Err(e) => {
                    let _ = sftp.close(handle.as_str()).await;
                    return Err(self.error("list", None, e));
                }
            }
        }
        let _ = sftp.close(handle.as_str()).await;
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// The next page of an ordered walk: `stack` holds, per folder level, its
    /// key prefix and its entries still to visit.
    async fn next_page(
        &self,
        sftp: &RawSftpSession,
        stack: &mut Vec<(String, std::vec::IntoIter<(String, FileAttributes)>)>,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut page = Vec::new();
        while page.len() < LIST_PAGE {
            let Some((prefix, entries)) = stack.last_mut() else {
                break;
            };
            let Some((name, attrs)) = entries.next() else {
                stack.pop();
                continue;
            };
            let key = format!("{prefix}{name}");
            if attrs.is_dir() {
                let dir = format!("{}/{}", self.root, key.trim_end_matches('/'));
                let inner = self.folder(sftp, &dir).await?;
                stack.push((key, inner.into_iter()));
                continue;
            }
            page.push(ObjectMeta {
                key,
                size: attrs.size.unwrap_or(0),
                modified: attrs
                    .mtime
                    .and_then(|t| jiff::Timestamp::from_second(i64::from(t)).ok())
                    .map(|t| t.to_string()),
                etag: None,
            });
        }
        Ok(page)
    }

    async fn mkdirs(&self, sftp: &RawSftpSession, remote_dir: &str) -> Result<(), StorageError> {
        let mut path = String::new();
        for (i, part) in remote_dir.split('/').enumerate() {
            if i > 0 {
                path.push('/');
            }
            path.push_str(part);
            if part.is_empty() || part == "." {
                continue;
            }
            if sftp.stat(path.as_str()).await.is_ok() {
                continue;
            }
            if let Err(e) = sftp.mkdir(path.as_str(), FileAttributes::default()).await
                && sftp.stat(path.as_str()).await.is_err()
            {
                return Err(self.error("create folder", None, e));
            }
        }
        Ok(())
    }

    /// Renames `from` over `to`, replacing it (posix-rename where the server has
    /// it; otherwise remove-then-rename).
    async fn replace(
        &self,
        sftp: &RawSftpSession,
        from: &str,
        to: &str,
        key: &str,
    ) -> Result<(), StorageError> {
        let mut data = Vec::new();
        for s in [from, to] {
            data.extend_from_slice(&(s.len() as u32).to_be_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        match sftp.extended("posix-rename@openssh.com", data).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = sftp.remove(to).await;
                sftp.rename(from, to)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.error("rename into place", Some(key), e))
            }
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for SftpStore {
    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>, StorageError> {
        self.list_from("").try_collect().await
    }

    /// The folder walked in key order, one folder's entries per level held
    /// at a time, a page of objects at a time.
    fn list_from<'a>(&'a self, under: &'a str) -> Listing<'a> {
        let folder = under.rfind('/').map_or("", |i| &under[..=i]);
        let start = async move {
            let conn = self.connect().await?;
            let dir = if folder.is_empty() {
                self.root.clone()
            } else {
                format!("{}/{}", self.root, folder.trim_end_matches('/'))
            };
            let top = match self.folder(&conn.sftp, &dir).await {
                Ok(top) => top,
                // A missing folder inside the endpoint's folder: nothing there.
                Err(StorageError::NotFound { .. } | StorageError::NoSuchContainer { .. })
                    if !folder.is_empty() =>
                {
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            Ok((conn, vec![(folder.to_string(), top.into_iter())]))
        };
        let pages = futures::stream::once(start)
            .map_ok(move |state| {
                futures::stream::try_unfold(state, move |(conn, mut stack)| async move {
                    if stack.is_empty() {
                        return Ok(None);
                    }
                    let page = self.next_page(&conn.sftp, &mut stack).await?;
                    Ok(Some((page, (conn, stack))))
                })
            })
            .try_flatten();
        let objects = pages
            .map_ok(|page| futures::stream::iter(page.into_iter().map(Ok)))
            .try_flatten()
            .try_filter(move |o| futures::future::ready(o.key.starts_with(under)))
            .boxed();
        super::in_order(self.name.clone(), objects)
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StorageError> {
        let path = self.remote(key)?;
        let conn = self.connect().await?;
        let handle = conn
            .sftp
            .open(path.as_str(), OpenFlags::READ, FileAttributes::default())
            .await
            .map_err(|e| self.error("open", Some(key), e))?
            .handle;
        let size = conn
            .sftp
            .fstat(handle.as_str())
            .await
            .map_err(|e| self.error("stat", Some(key), e))?
            .attrs
            .size
            .unwrap_or(0);
        let range = range.unwrap_or(0..size);
        let (start, end) = (range.start.min(size), range.end.min(size));
        let offsets: Vec<(u64, u32)> = (start..end)
            .step_by(REQUEST_SIZE)
            .map(|o| {
                (
                    o,
                    u32::try_from((end - o).min(REQUEST_SIZE as u64))
                        .unwrap_or(REQUEST_SIZE as u32),
                )
            })
            .collect();
        let this = self.clone();
        let key = key.to_string();
        let reads = {
            let (conn, handle, this, key) =
                (conn.clone(), handle.clone(), this.clone(), key.clone());
            futures::stream::iter(offsets)
                .map(move |(offset, len)| {
                    let (conn, handle, this, key) =
                        (conn.clone(), handle.clone(), this.clone(), key.clone());
                    async move {
                        let mut data = Vec::with_capacity(len as usize);
                        // A server may answer with fewer bytes than asked: ask again for the rest.
                        while data.len() < len as usize {
                            let want = len - data.len() as u32;
                            match conn
                                .sftp
                                .read(handle.as_str(), offset + data.len() as u64, want)
                                .await
                            {
                                Ok(d) if d.data.is_empty() => break,
                                Ok(d) => data.extend_from_slice(&d.data),
                                Err(e) if status_of(&e) == Some(StatusCode::Eof) => break,
                                Err(e) => return Err(this.error("read", Some(&key), e)),
                            }
                        }
                        if data.len() < len as usize {
                            return Err(StorageError::ChangedDuringRead {
                                endpoint: this.name.clone(),
                                key,
                            });
                        }
                        Ok(Bytes::from(data))
                    }
                })
                .buffered(REQUESTS_IN_FLIGHT)
        };
        let closing = futures::stream::once(async move {
            let _ = conn.sftp.close(handle.as_str()).await;
            Ok::<Option<Bytes>, StorageError>(None)
        });
        Ok(reads
            .map_ok(Some)
            .chain(closing)
            .try_filter_map(|b| async move { Ok(b) })
            .boxed())
    }

    async fn put(&self, key: &str, mut data: ByteStream) -> Result<u64, StorageError> {
        let path = self.remote(key)?;
        let conn = self.connect().await?;
        let (dir, name) = path.rsplit_once('/').unwrap_or((".", path.as_str()));
        self.mkdirs(&conn.sftp, dir).await?;
        let mut suffix = [0u8; 8];
        crate::crypto::aead::random_bytes(&mut suffix)
            .map_err(|_| self.unreachable("random generator failed"))?;
        let tmp = format!("{dir}/.{name}{TEMP_MARKER}{}", hex::encode(suffix));
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let handle = conn
            .sftp
            .open(tmp.as_str(), flags, FileAttributes::default())
            .await
            .map_err(|e| self.error("create", Some(key), e))?
            .handle;
        let written: Result<u64, StorageError> = async {
            let mut offset = 0u64;
            let mut in_flight = FuturesUnordered::new();
            // Requests are sent when polled: the ones in flight are polled
            // while the next chunk is awaited, not only when the window is full.
            loop {
                tokio::select! {
                    Some(r) = in_flight.next(), if !in_flight.is_empty() => r?,
                    chunk = data.next(), if in_flight.len() < REQUESTS_IN_FLIGHT => {
                        let Some(chunk) = chunk else { break };
                        let chunk = chunk?;
                        for piece in chunk.chunks(REQUEST_SIZE) {
                            let (sftp, handle, at, bytes) =
                                (&conn.sftp, handle.as_str(), offset, piece.to_vec());
                            in_flight.push(async move {
                                sftp.write(handle, at, bytes)
                                    .await
                                    .map(|_| ())
                                    .map_err(|e| self.error("write", Some(key), e))
                            });
                            offset += piece.len() as u64;
                        }
                    }
                }
            }
            while let Some(r) = in_flight.next().await {
                r?;
            }
            Ok(offset)
        }
        .await;
        let closed = conn.sftp.close(handle.as_str()).await;
        let result = match (written, closed) {
            (Ok(n), Ok(_)) => self.replace(&conn.sftp, &tmp, &path, key).await.map(|()| n),
            (Ok(_), Err(e)) => Err(self.error("close", Some(key), e)),
            (Err(e), _) => Err(e),
        };
        if result.is_err() {
            let _ = conn.sftp.remove(tmp.as_str()).await;
        }
        result
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.remote(key)?;
        let conn = self.connect().await?;
        match conn.sftp.remove(path.as_str()).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(StatusCode::NoSuchFile) => Ok(()),
            Err(e) => Err(self.error("delete", Some(key), e)),
        }
    }

    async fn region(&self) -> Result<Option<String>, StorageError> {
        // SFTP cannot tell: the declared region is all there is.
        Ok(None)
    }
}

/// The SSH client settings: AES-256-GCM first (the fastest cipher OpenSSH
/// offers on AES-NI machines), large windows and packets for throughput.
fn ssh_config() -> Arc<client::Config> {
    let preferred = russh::Preferred {
        cipher: Cow::Borrowed(&[
            russh::cipher::AES_256_GCM,
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_256_CTR,
        ]),
        ..russh::Preferred::default()
    };
    Arc::new(client::Config {
        window_size: 16 << 20,
        maximum_packet_size: 256 * 1024,
        preferred,
        inactivity_timeout: Some(std::time::Duration::from_secs(300)),
        nodelay: true,
        ..client::Config::default()
    })
}

/// Opens the SFTP server of one end (`side`) from its endpoint, its Secrets
/// and the platform's settings.
pub fn open(
    side: &'static str,
    e: &SftpEndpoint,
    secrets: &dyn Secrets,
    platform: &Platform,
) -> Result<SftpStore, OpenError> {
    // A Secret, or a Vault or Secrets Manager secret read by the run (its
    // values filed under its name beside the Secrets).
    let c = &e.credentials;
    let secret = &ferry_crds::credential_secret_name(
        c.secret_ref.as_ref(),
        c.vault.as_ref(),
        c.aws_secrets_manager.as_ref(),
    )
    .ok()
    .flatten()
    .ok_or(OpenError::Endpoint(side))?;
    let auth = match secrets.optional_string(secret, "privateKey") {
        Some(private_key) => SftpAuth::Key {
            private_key,
            passphrase: secrets.optional_string(secret, "passphrase"),
        },
        None if e.allow_password_auth => {
            tracing::warn!(
                side,
                "SFTP password authentication is in use (allowPasswordAuth: true)"
            );
            SftpAuth::Password(secrets.string(secret, "password")?)
        }
        None => {
            return Err(OpenError::MissingSecretKey(SecretKeyMissing {
                secret: secret.clone(),
                key: "privateKey (password authentication needs allowPasswordAuth: true)".into(),
                location: secrets.location(secret),
            }));
        }
    };
    let host_key = match (&e.host_key.fingerprint, &e.host_key.secret_ref) {
        (Some(fp), None) => HostKeyCheck::Fingerprint(fp.clone()),
        (None, Some(r)) => {
            let text = secrets.string(&r.name, "knownHosts")?;
            HostKeyCheck::from_known_hosts(&text).ok_or_else(|| OpenError::BadHostKey {
                secret: r.name.clone(),
            })?
        }
        _ => return Err(OpenError::Endpoint(side)),
    };
    Ok(SftpStore::new(SftpConfig {
        host: e.host.clone(),
        port: u16::try_from(e.port).map_err(|_| OpenError::Endpoint(side))?,
        path: e.path.clone(),
        username: secrets.string(secret, "username")?.to_string(),
        auth,
        host_key,
        network: platform.network.clone(),
    }))
}
