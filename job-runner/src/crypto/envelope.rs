//! The object format: a small versioned envelope carrying the wrapped data key,
//! followed by the Tink streaming ciphertext of the object.
//!
//! ```text
//! object   = envelope || tink_ciphertext
//! envelope = "FERRY" || version (1 byte, = 1) || kek_id_len (1 byte) || kek_id (ASCII)
//!            || wrap_nonce (12 bytes) || wrapped_dek (48 bytes: 32 + GCM tag)
//! tink_ciphertext = Tink AES256_GCM_HKDF_1MB streaming AEAD of the plaintext under
//!            the data key, associated data = the object key (UTF-8)
//! ```
//!
//! The object key is the key relative to the destination prefix. The envelope is
//! in the object itself, not in store metadata, so that it survives every store
//! (SFTP has no metadata) and any copy.

use std::sync::Arc;

use super::aead::NONCE_LEN;
use super::keys::{DataKey, Kek, KeyError, KeyRing, WRAPPED_LEN, generate_data_key};
use super::streaming::{Decrypter, Encrypter, StreamError};

/// First bytes of every object Ferry writes.
pub const MAGIC: &[u8; 5] = b"FERRY";
/// The envelope version this code writes.
pub const VERSION: u8 = 1;
const FIXED_LEN: usize = MAGIC.len() + 2;

/// Why an object did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not an object written by Ferry (no FERRY envelope)")]
    NotFerry,
    #[error("envelope version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    #[error("the envelope is truncated")]
    Truncated,
    #[error("the envelope is malformed")]
    Malformed,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Encrypts one object: the envelope, then the streaming ciphertext.
pub struct ObjectEncrypter {
    envelope: Option<Vec<u8>>,
    inner: Encrypter,
}

impl ObjectEncrypter {
    /// An encrypter for `object_key` with a fresh data key wrapped by `kek`.
    pub fn new(kek: &Kek, object_key: &str) -> Result<Self, EnvelopeError> {
        let dek = generate_data_key()?;
        Self::with_data_key(kek, object_key, &dek)
    }

    fn with_data_key(kek: &Kek, object_key: &str, dek: &DataKey) -> Result<Self, EnvelopeError> {
        let (nonce, wrapped) = kek.wrap(dek, object_key)?;
        let id = kek.id().as_bytes();
        let mut env = Vec::with_capacity(FIXED_LEN + id.len() + NONCE_LEN + WRAPPED_LEN);
        env.extend_from_slice(MAGIC);
        env.push(VERSION);
        env.push(u8::try_from(id.len()).map_err(|_| EnvelopeError::Malformed)?);
        env.extend_from_slice(id);
        env.extend_from_slice(&nonce);
        env.extend_from_slice(&wrapped);
        Ok(Self {
            envelope: Some(env),
            inner: Encrypter::new(dek, object_key.as_bytes())?,
        })
    }

    /// Encrypts `data`, appending to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        if let Some(env) = self.envelope.take() {
            out.extend_from_slice(&env);
        }
        Ok(self.inner.push(data, out)?)
    }

    /// Ends the object.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        if let Some(env) = self.envelope.take() {
            out.extend_from_slice(&env);
        }
        Ok(self.inner.finish(out)?)
    }
}

/// The parsed envelope of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Id of the KEK that wrapped the data key.
    pub kek_id: String,
    nonce: [u8; NONCE_LEN],
    wrapped: [u8; WRAPPED_LEN],
}

impl Envelope {
    /// Parses an envelope at the start of `buf`: `Ok(None)` if more bytes are
    /// needed, else the envelope and its length.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, EnvelopeError> {
        let have = buf.len().min(MAGIC.len());
        if buf[..have] != MAGIC[..have] {
            return Err(EnvelopeError::NotFerry);
        }
        if buf.len() < FIXED_LEN {
            return Ok(None);
        }
        if buf[MAGIC.len()] != VERSION {
            return Err(EnvelopeError::Version(buf[MAGIC.len()]));
        }
        let id_len = usize::from(buf[MAGIC.len() + 1]);
        let total = FIXED_LEN + id_len + NONCE_LEN + WRAPPED_LEN;
        if buf.len() < total {
            return Ok(None);
        }
        let kek_id = std::str::from_utf8(&buf[FIXED_LEN..FIXED_LEN + id_len])
            .map_err(|_| EnvelopeError::Malformed)?
            .to_string();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[FIXED_LEN + id_len..FIXED_LEN + id_len + NONCE_LEN]);
        let mut wrapped = [0u8; WRAPPED_LEN];
        wrapped.copy_from_slice(&buf[FIXED_LEN + id_len + NONCE_LEN..total]);
        Ok(Some((
            Self {
                kek_id,
                nonce,
                wrapped,
            },
            total,
        )))
    }

    /// The data key, unwrapped with the matching KEK of `keys`.
    pub fn data_key(&self, keys: &KeyRing, object_key: &str) -> Result<DataKey, KeyError> {
        keys.get(&self.kek_id)?
            .unwrap(&self.nonce, &self.wrapped, object_key)
    }
}

/// Decrypts one object: parses the envelope, unwraps the data key, then
/// decrypts the stream.
pub struct ObjectDecrypter {
    keys: Arc<KeyRing>,
    object_key: String,
    pending: Vec<u8>,
    inner: Option<Decrypter>,
}

impl ObjectDecrypter {
    /// A decrypter for the object stored under `object_key`.
    pub fn new(keys: Arc<KeyRing>, object_key: &str) -> Self {
        Self {
            keys,
            object_key: object_key.to_string(),
            pending: Vec::new(),
            inner: None,
        }
    }

    /// Decrypts `data`, appending authenticated plaintext to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        if let Some(inner) = &mut self.inner {
            return Ok(inner.push(data, out)?);
        }
        self.pending.extend_from_slice(data);
        if let Some((env, len)) = Envelope::parse(&self.pending)? {
            let dek = env.data_key(&self.keys, &self.object_key)?;
            let mut inner = Decrypter::new(&dek, self.object_key.as_bytes());
            let rest = self.pending.split_off(len);
            self.pending = Vec::new();
            inner.push(&rest, out)?;
            self.inner = Some(inner);
        }
        Ok(())
    }

    /// Ends the object; fails if it was truncated.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        match self.inner {
            Some(inner) => Ok(inner.finish(out)?),
            None if self.pending.is_empty() => Err(EnvelopeError::NotFerry),
            None => Err(EnvelopeError::Truncated),
        }
    }
}
