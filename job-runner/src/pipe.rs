//! The two streams an object passes through between stores: one encrypts
//! (after minimisation, when the object is minimised) on its way to the
//! destination, the other decrypts on its way back. Each runs in its own task,
//! so reading and encrypting run on one core while the writes run on another,
//! and hands its output on through a small bounded channel.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Sender;

use crate::crypto::{EnvelopeError, KeyRing, ObjectDecrypter, ObjectEncrypter};
use crate::project::{ProjectionError, Projector};
use crate::storage::{ByteStream, StorageError};

/// Encrypted bytes gathered before they are handed to the destination.
pub const WRITE_CHUNK: usize = 1 << 20;
/// Chunks in flight between a stream's task and its reader.
const IN_FLIGHT: usize = 4;

/// What the encrypting stream measured of an object once it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Plaintext (after minimisation) bytes and SHA-256.
    pub plain_len: u64,
    pub plain_sha256: String,
    /// Encrypted bytes and SHA-256, as stored.
    pub cipher_len: u64,
    pub cipher_sha256: String,
}

/// Why the encrypting stream stopped early. The stream itself ends with an
/// error too, so a writer fed by it discards what it wrote.
#[derive(Debug)]
pub enum SealError {
    /// The object cannot be minimised.
    Projection(ProjectionError),
    /// Reading, encrypting or handing on failed.
    Other(String),
}

/// The object to encrypt: where it is read from (for messages), its key (the
/// associated data of its encryption), and its listed size, which the bytes
/// read must match (none: a stream of unknown length, such as audit lines).
#[derive(Debug, Clone)]
pub struct Origin {
    pub endpoint: String,
    pub key: String,
    pub size: Option<u64>,
}

/// Encrypts `input` with `enc`, minimising it first with `projector`. Returns
/// the encrypted stream, and a task that ends with what was measured.
pub fn encrypt_stream(
    input: ByteStream,
    enc: ObjectEncrypter,
    projector: Option<Projector>,
    origin: Origin,
) -> (
    ByteStream,
    tokio::task::JoinHandle<Result<Sealed, SealError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
    let task = tokio::spawn(seal(input, enc, projector, origin, tx));
    (channel_stream(rx), task)
}

/// The encrypting side's running state.
struct Sealing {
    tx: Sender<Result<Bytes, StorageError>>,
    origin: Origin,
    plain: Sha256,
    cipher: Sha256,
    plain_len: u64,
    cipher_len: u64,
}

impl Sealing {
    /// Hands `buf` on; false when the reader is gone.
    async fn send(&mut self, buf: Vec<u8>) -> bool {
        self.cipher.update(&buf);
        self.cipher_len += buf.len() as u64;
        self.tx.send(Ok(Bytes::from(buf))).await.is_ok()
    }

    /// Ends the stream with an error naming the object; `why` is returned.
    async fn abort(&self, why: SealError) -> SealError {
        let reason = match &why {
            SealError::Projection(e) => e.to_string(),
            SealError::Other(r) => r.clone(),
        };
        let _ = self.tx.send(Err(self.source_error(reason))).await;
        why
    }

    fn source_error(&self, reason: String) -> StorageError {
        StorageError::Source {
            endpoint: self.origin.endpoint.clone(),
            key: self.origin.key.clone(),
            reason,
        }
    }
}

async fn seal(
    mut input: ByteStream,
    mut enc: ObjectEncrypter,
    mut projector: Option<Projector>,
    origin: Origin,
    tx: Sender<Result<Bytes, StorageError>>,
) -> Result<Sealed, SealError> {
    let mut s = Sealing {
        tx,
        origin,
        plain: Sha256::new(),
        cipher: Sha256::new(),
        plain_len: 0,
        cipher_len: 0,
    };
    // Room for a write chunk, or for the whole of a smaller object.
    let room = s
        .origin
        .size
        .and_then(|n| usize::try_from(n).ok())
        .map_or(WRITE_CHUNK, |n| n.min(WRITE_CHUNK));
    let fresh = || Vec::with_capacity(room + (1 << 16));
    let (mut out, mut projected, mut read_len) = (fresh(), Vec::new(), 0u64);
    loop {
        let chunk = match input.next().await {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                let reason = e.to_string();
                let _ = s.tx.send(Err(e)).await;
                return Err(SealError::Other(reason));
            }
            None => None,
        };
        read_len += chunk.as_ref().map_or(0, |c| c.len() as u64);
        // What is encrypted: the chunk itself, or what minimisation made of it.
        let plain: &[u8] = match (&mut projector, &chunk) {
            (None, Some(c)) => c,
            (None, None) => break,
            (Some(p), c) => {
                projected.clear();
                let r = match c {
                    Some(c) => p.push(c, &mut projected),
                    None => p.finish(&mut projected),
                };
                if let Err(e) = r {
                    return Err(s.abort(SealError::Projection(e)).await);
                }
                &projected
            }
        };
        s.plain.update(plain);
        s.plain_len += plain.len() as u64;
        if let Err(e) = enc.push(plain, &mut out) {
            return Err(s.abort(SealError::Other(e.to_string())).await);
        }
        if out.len() >= WRITE_CHUNK && !s.send(std::mem::replace(&mut out, fresh())).await {
            return Err(SealError::Other("destination closed".into()));
        }
        if chunk.is_none() {
            break;
        }
    }
    if s.origin.size.is_some_and(|size| size != read_len) {
        let e = StorageError::ChangedDuringRead {
            endpoint: s.origin.endpoint.clone(),
            key: s.origin.key.clone(),
        };
        let reason = e.to_string();
        let _ = s.tx.send(Err(e)).await;
        return Err(SealError::Other(reason));
    }
    if let Err(e) = enc.finish(&mut out) {
        return Err(s.abort(SealError::Other(e.to_string())).await);
    }
    if !s.send(out).await {
        return Err(SealError::Other("destination closed".into()));
    }
    Ok(Sealed {
        plain_len: s.plain_len,
        plain_sha256: hex::encode(s.plain.finalize()),
        cipher_len: s.cipher_len,
        cipher_sha256: hex::encode(s.cipher.finalize()),
    })
}

/// Decrypts a stream of an object stored under `key`. Plaintext is released
/// segment by segment, each only after it authenticated; the stream ends with an
/// error naming the object if anything is wrong, so a writer fed by it discards
/// what it wrote.
pub fn decrypt_stream(input: ByteStream, keys: Arc<KeyRing>, key: String) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
    tokio::spawn(open(input, ObjectDecrypter::new(keys, &key), key, tx));
    channel_stream(rx)
}

async fn open(
    mut input: ByteStream,
    mut dec: ObjectDecrypter,
    key: String,
    tx: Sender<Result<Bytes, StorageError>>,
) {
    let err = |e: EnvelopeError| StorageError::Source {
        endpoint: "decrypt".into(),
        key: key.clone(),
        reason: e.to_string(),
    };
    let mut out = Vec::new();
    while let Some(chunk) = input.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let pushed = if dec.is_open() {
            dec.push(&chunk, &mut out)
        } else {
            // The envelope first: its KEK may be a run key only a KMS unwraps.
            dec.buffer(&chunk);
            match dec.resolve().await {
                Ok(true) => dec.push(&[], &mut out),
                other => other.map(|_| ()),
            }
        };
        if let Err(e) = pushed {
            let _ = tx.send(Err(err(e))).await;
            return;
        }
        if !out.is_empty()
            && tx
                .send(Ok(Bytes::from(std::mem::take(&mut out))))
                .await
                .is_err()
        {
            return;
        }
    }
    let last = dec.finish(&mut out).map(|()| Bytes::from(out)).map_err(err);
    let _ = tx.send(last).await;
}

/// The receiving end of a stream's channel, as a byte stream.
fn channel_stream(rx: tokio::sync::mpsc::Receiver<Result<Bytes, StorageError>>) -> ByteStream {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }).boxed()
}
