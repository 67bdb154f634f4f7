//! Key-encryption keys (KEKs): parsing, ids, wrapping of data keys, and the
//! keys derived from them. Key bytes are zeroized on drop and never printed.
//!
//! A KEK is either the tenant's own 32 bytes (a Secret) or, when the KEK lives
//! in a KMS ([`Kms`]), a run key: one data key the KMS generated for the run,
//! carried with everything the run writes in its KMS-wrapped form, so a reader
//! with decrypt rights on the KMS key gets it back with one KMS call per run
//! (not per object).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::aead::{Aes256Gcm, KEY_LEN, NONCE_LEN, TAG_LEN, random_bytes};

/// A wrapped data key: the DEK encrypted under a KEK.
pub const WRAPPED_LEN: usize = KEY_LEN + TAG_LEN;

/// Why a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "a key-encryption key must be 32 bytes, raw, base64 or hex encoded (got {0} bytes that are none of these)"
    )]
    BadLength(usize),
    #[error("no key-encryption key with id {0} was supplied")]
    UnknownKek(String),
    #[error(
        "the data key does not unwrap under key {kek_id} for object {object:?}: wrong key, or the object was moved or swapped"
    )]
    Unwrap { kek_id: String, object: String },
    #[error("no key-encryption key was supplied")]
    NoKey,
    #[error("failed to initialise AES-256-GCM or the random generator")]
    Primitive,
    #[error(
        "not an Ed25519 signing key: give a PKCS#8 PEM private key (openssl genpkey -algorithm ed25519) or the base64 of a 32-byte seed"
    )]
    BadSigningKey,
    #[error(
        "not an Ed25519 public key: give a PEM public key (openssl pkey -pubout) or the base64 of its 32 bytes"
    )]
    BadPublicKey,
    #[error("{0}")]
    Kms(KmsError),
    #[error(
        "the key is wrapped by {wrapped_by}, which is not the KMS key trusted here ({trusted})"
    )]
    ForeignKms { wrapped_by: String, trusted: String },
    #[error("the key is wrapped by a KMS ({0}), and no KMS was given to unwrap it")]
    NoKms(String),
    #[error("the KMS unwrapped a key whose id is not {kek_id}: the wrapped key was swapped")]
    KmsMismatch { kek_id: String },
}

/// Why a KMS did not give or unwrap a key. Never holds key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KmsError {
    /// The KMS key, e.g. `vault-transit:transit/acme`.
    pub key: String,
    /// What went wrong, as the KMS said it (names paths and roles, never keys).
    pub message: String,
    /// Whether the KMS could not be reached (a later attempt may succeed),
    /// rather than refused.
    pub unreachable: bool,
}

/// A boxed future of a KMS call.
pub type KmsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KmsError>> + Send + 'a>>;

/// A key-encryption key held by a KMS (Vault Transit, AWS KMS): the KEK never
/// leaves it. Wrapped keys are text, `<name>:<ciphertext>`, so that they name
/// the KMS key that can unwrap them.
pub trait Kms: Send + Sync {
    /// The KMS key: `vault-transit:<mount>/<key>` or `aws-kms:<region>/<key>`.
    fn name(&self) -> &str;
    /// A fresh 32-byte data key and its wrapped form: one KMS call.
    fn data_key(&self) -> KmsFuture<'_, (DataKey, String)>;
    /// The data key of a wrapped form this KMS key made: one KMS call.
    fn unwrap<'a>(&'a self, wrapped: &'a str) -> KmsFuture<'a, DataKey>;
}

/// The KMS key a wrapped form names: its first two `:`-separated parts, the
/// provider and the key's path, which holds no colon
/// (`vault-transit:transit/acme:vault:v3:...` names `vault-transit:transit/acme`).
pub fn wrapped_by(wrapped: &str) -> &str {
    // The name is `<provider>:<path>`; the path holds no colon.
    let mut parts = wrapped.splitn(3, ':');
    let provider = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    &wrapped[..(provider.len() + 1 + path.len()).min(wrapped.len())]
}

/// A 256-bit data key, zeroized on drop.
pub type DataKey = Zeroizing<[u8; KEY_LEN]>;

/// A key-encryption key with its id and, for a run key of a KMS, its wrapped
/// form.
pub struct Kek {
    key: Zeroizing<[u8; KEY_LEN]>,
    id: String,
    wrapped: Option<String>,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("wrapped_by", &self.wrapped.as_deref().map(wrapped_by))
            .finish_non_exhaustive()
    }
}

impl Kek {
    /// A KEK from 32 raw bytes.
    pub fn from_bytes(key: [u8; KEY_LEN]) -> Self {
        let key = Zeroizing::new(key);
        let id = key_id(&key);
        Self {
            key,
            id,
            wrapped: None,
        }
    }

    /// A run key a KMS made, with its wrapped form (`<kms key>:<ciphertext>`).
    pub fn from_kms(key: &DataKey, wrapped: String) -> Self {
        Self {
            wrapped: Some(wrapped),
            ..Self::from_bytes(**key)
        }
    }

    /// The KMS-wrapped form of a run key; `None` for a KEK of the tenant's own.
    pub fn wrapped(&self) -> Option<&str> {
        self.wrapped.as_deref()
    }

    /// A KEK from the content of a Secret key or file: 32 raw bytes, or the
    /// base64 or hex encoding of 32 bytes (surrounding white space ignored).
    pub fn parse(content: &[u8]) -> Result<Self, KeyError> {
        if content.len() == KEY_LEN {
            let mut k = [0u8; KEY_LEN];
            k.copy_from_slice(content);
            return Ok(Self::from_bytes(k));
        }
        let text = Zeroizing::new(String::from_utf8_lossy(content).trim().to_string());
        let decoded = Zeroizing::new(if text.len() == 2 * KEY_LEN {
            hex::decode(text.as_bytes()).ok()
        } else {
            BASE64.decode(text.as_bytes()).ok()
        });
        match decoded.as_deref() {
            Some(bytes) if bytes.len() == KEY_LEN => {
                let mut k = [0u8; KEY_LEN];
                k.copy_from_slice(bytes);
                Ok(Self::from_bytes(k))
            }
            _ => Err(KeyError::BadLength(content.len())),
        }
    }

    /// A fresh random KEK.
    pub fn generate() -> Result<Self, KeyError> {
        let mut k = [0u8; KEY_LEN];
        random_bytes(&mut k).map_err(|_| KeyError::Primitive)?;
        Ok(Self::from_bytes(k))
    }

    /// The KEK encoded as base64, for writing it into a Secret or a file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.key.as_ref()))
    }

    /// The key id: 16 hex digits of HMAC-SHA256(KEK, "ferry/kek-id/v1"). It names
    /// the key without revealing anything about it, and changes when it rotates.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn wrap_aad(&self, object_key: &str) -> Vec<u8> {
        let mut aad = b"ferry/dek/v1\0".to_vec();
        aad.extend_from_slice(self.id.as_bytes());
        aad.push(0);
        aad.extend_from_slice(object_key.as_bytes());
        aad
    }

    /// Wraps `dek` for `object_key`: AES-256-GCM under the KEK with a random nonce,
    /// the associated data binding it to this KEK id and object key.
    pub fn wrap(
        &self,
        dek: &DataKey,
        object_key: &str,
    ) -> Result<([u8; NONCE_LEN], [u8; WRAPPED_LEN]), KeyError> {
        let cipher = Aes256Gcm::new(&self.key).map_err(|_| KeyError::Primitive)?;
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce).map_err(|_| KeyError::Primitive)?;
        let mut out = [0u8; WRAPPED_LEN];
        out[..KEY_LEN].copy_from_slice(dek.as_ref());
        let tag = cipher
            .seal_in_place(&nonce, &self.wrap_aad(object_key), &mut out[..KEY_LEN])
            .map_err(|_| KeyError::Primitive)?;
        out[KEY_LEN..].copy_from_slice(&tag);
        Ok((nonce, out))
    }

    /// Unwraps a data key wrapped for `object_key`.
    pub fn unwrap(
        &self,
        nonce: &[u8; NONCE_LEN],
        wrapped: &[u8; WRAPPED_LEN],
        object_key: &str,
    ) -> Result<DataKey, KeyError> {
        let cipher = Aes256Gcm::new(&self.key).map_err(|_| KeyError::Primitive)?;
        let mut buf = Zeroizing::new(*wrapped);
        let err = || KeyError::Unwrap {
            kek_id: self.id.clone(),
            object: object_key.to_string(),
        };
        let len = cipher
            .open_in_place(nonce, &self.wrap_aad(object_key), buf.as_mut())
            .map_err(|_| err())?;
        if len != KEY_LEN {
            return Err(err());
        }
        let mut dek = Zeroizing::new([0u8; KEY_LEN]);
        dek.copy_from_slice(&buf[..KEY_LEN]);
        Ok(dek)
    }

    /// The key that authenticates manifests: HKDF-SHA256(KEK, info =
    /// "ferry/manifest-mac/v1"), distinct from every other use of the KEK.
    pub fn manifest_mac_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = Hkdf::<Sha256>::new(None, self.key.as_ref())
            .expand(b"ferry/manifest-mac/v1", out.as_mut());
        out
    }
}

/// A fresh random data key.
pub fn generate_data_key() -> Result<DataKey, KeyError> {
    let mut dek = Zeroizing::new([0u8; KEY_LEN]);
    random_bytes(dek.as_mut()).map_err(|_| KeyError::Primitive)?;
    Ok(dek)
}

fn key_id(key: &[u8; KEY_LEN]) -> String {
    // HMAC accepts keys of any length: the error branch cannot be taken.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::from("invalid"),
    };
    mac.update(b"ferry/kek-id/v1");
    hex::encode(&mac.finalize().into_bytes()[..8])
}

/// The KEKs a run or a reader may need: the current one first and, after a
/// rotation, older ones; with a KMS, the run keys unwrapped so far (each once).
#[derive(Default)]
pub struct KeyRing {
    keys: RwLock<Vec<Arc<Kek>>>,
    kms: Option<Arc<dyn Kms>>,
    /// Held while a run key is unwrapped, so that objects read at once ask
    /// the KMS once for their run key, not once each.
    unwrapping: futures::lock::Mutex<()>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.keys())
            .field("kms", &self.kms.as_ref().map(|k| k.name().to_string()))
            .finish()
    }
}

impl KeyRing {
    /// A ring of the given keys.
    pub fn new(keys: Vec<Kek>) -> Self {
        Self {
            keys: RwLock::new(keys.into_iter().map(Arc::new).collect()),
            kms: None,
            unwrapping: futures::lock::Mutex::new(()),
        }
    }

    /// This ring, unwrapping the run keys that `kms` wrapped when they are
    /// first needed ([`KeyRing::resolve`]).
    pub fn with_kms(mut self, kms: Arc<dyn Kms>) -> Self {
        self.kms = Some(kms);
        self
    }

    /// The KMS key trusted to unwrap run keys.
    pub fn kms(&self) -> Option<&str> {
        self.kms.as_ref().map(|k| k.name())
    }

    /// The KEK with this id.
    pub fn get(&self, id: &str) -> Result<Arc<Kek>, KeyError> {
        self.keys()
            .into_iter()
            .find(|k| k.id() == id)
            .ok_or_else(|| KeyError::UnknownKek(id.to_string()))
    }

    /// The current key: the one new data is encrypted under.
    pub fn current(&self) -> Result<Arc<Kek>, KeyError> {
        self.keys().into_iter().next().ok_or(KeyError::NoKey)
    }

    /// Every key, current first.
    pub fn keys(&self) -> Vec<Arc<Kek>> {
        self.keys
            .read()
            .map_or_else(|e| e.into_inner().clone(), |k| k.clone())
    }

    /// The KEK with id `id`: one the ring holds or, when it was wrapped by the
    /// trusted KMS key (`wrapped`), unwrapped by the KMS (one call, then kept).
    /// A wrapped form naming another KMS key is refused without a call, and so
    /// is an unwrapped key whose id is not `id`.
    pub async fn resolve(&self, id: &str, wrapped: Option<&str>) -> Result<Arc<Kek>, KeyError> {
        if let Ok(k) = self.get(id) {
            return Ok(k);
        }
        let Some(wrapped) = wrapped else {
            return Err(KeyError::UnknownKek(id.to_string()));
        };
        let kms = self
            .kms
            .as_ref()
            .ok_or_else(|| KeyError::NoKms(wrapped_by(wrapped).to_string()))?;
        if wrapped_by(wrapped) != kms.name() {
            return Err(KeyError::ForeignKms {
                wrapped_by: wrapped_by(wrapped).to_string(),
                trusted: kms.name().to_string(),
            });
        }
        let _one_at_a_time = self.unwrapping.lock().await;
        if let Ok(k) = self.get(id) {
            return Ok(k);
        }
        let key = kms.unwrap(wrapped).await.map_err(KeyError::Kms)?;
        let kek = Arc::new(Kek::from_kms(&key, wrapped.to_string()));
        if kek.id() != id {
            return Err(KeyError::KmsMismatch {
                kek_id: id.to_string(),
            });
        }
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if !keys.iter().any(|k| k.id() == id) {
            keys.push(kek.clone());
        }
        Ok(kek)
    }
}

/// A new run key from `kms` (one call), as the current key of a ring that
/// unwraps the run keys of earlier runs with the same KMS key.
pub async fn run_key_ring(kms: Arc<dyn Kms>) -> Result<KeyRing, KeyError> {
    let (key, wrapped) = kms.data_key().await.map_err(KeyError::Kms)?;
    if wrapped_by(&wrapped) != kms.name() {
        return Err(KeyError::ForeignKms {
            wrapped_by: wrapped_by(&wrapped).to_string(),
            trusted: kms.name().to_string(),
        });
    }
    Ok(KeyRing::new(vec![Kek::from_kms(&key, wrapped)]).with_kms(kms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_raw_base64_and_hex_and_never_prints_the_key() {
        let raw = [42u8; 32];
        let a = Kek::parse(&raw).unwrap();
        let b = Kek::parse(format!("{}\n", BASE64.encode(raw)).as_bytes()).unwrap();
        let c = Kek::parse(hex::encode(raw).as_bytes()).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id(), c.id());
        assert_eq!(a.id().len(), 16);
        assert!(!format!("{a:?}").contains(&BASE64.encode(raw)));
        assert!(!format!("{a:?}").contains("42, 42"));
        assert_eq!(Kek::parse(b"short").unwrap_err(), KeyError::BadLength(5));
    }

    #[test]
    fn wrapped_keys_are_bound_to_kek_and_object() {
        let kek = Kek::from_bytes([1; 32]);
        let other = Kek::from_bytes([2; 32]);
        let dek = generate_data_key().unwrap();
        let (nonce, wrapped) = kek.wrap(&dek, "a.csv").unwrap();
        assert_eq!(*kek.unwrap(&nonce, &wrapped, "a.csv").unwrap(), *dek);
        assert!(matches!(
            kek.unwrap(&nonce, &wrapped, "b.csv"),
            Err(KeyError::Unwrap { .. })
        ));
        assert!(matches!(
            other.unwrap(&nonce, &wrapped, "a.csv"),
            Err(KeyError::Unwrap { .. })
        ));
    }
}
