//! The object format: a small versioned envelope carrying the wrapped data key,
//! followed by the Tink streaming ciphertext of the object.
//!
//! ```text
//! object   = envelope || tink_ciphertext
//! envelope = "FERRY" || version (1 byte, 1 or 2) || kek_id_len (1 byte) || kek_id (ASCII)
//!            || [version 2: kms_len (2 bytes, big endian) || kms_wrapped_run_key (UTF-8)]
//!            || wrap_nonce (12 bytes) || wrapped_dek (48 bytes: 32 + GCM tag)
//! tink_ciphertext = Tink AES256_GCM_HKDF_1MB streaming AEAD of the plaintext under
//!            the data key, associated data = the object key (UTF-8)
//! ```
//!
//! Version 2 is written when the KEK is a run key from a KMS: the envelope
//! carries the run key as the KMS wrapped it, so a reader with decrypt rights
//! on the KMS key unwraps it (once per run) and then the data key.
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
/// The envelope version of objects under a KEK of the tenant's own.
pub const VERSION: u8 = 1;
/// The envelope version of objects under a run key from a KMS.
pub const VERSION_KMS: u8 = 2;
const FIXED_LEN: usize = MAGIC.len() + 2;

/// Why an object did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not an object written by Ferry (no FERRY envelope)")]
    NotFerry,
    #[error(
        "envelope version {0} is not supported (this build reads versions {VERSION} and {VERSION_KMS})"
    )]
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
        let kms = kek.wrapped().map(str::as_bytes);
        let mut env = Vec::with_capacity(
            FIXED_LEN + id.len() + kms.map_or(0, |k| 2 + k.len()) + NONCE_LEN + WRAPPED_LEN,
        );
        env.extend_from_slice(MAGIC);
        env.push(if kms.is_some() { VERSION_KMS } else { VERSION });
        env.push(u8::try_from(id.len()).map_err(|_| EnvelopeError::Malformed)?);
        env.extend_from_slice(id);
        if let Some(kms) = kms {
            let len = u16::try_from(kms.len()).map_err(|_| EnvelopeError::Malformed)?;
            env.extend_from_slice(&len.to_be_bytes());
            env.extend_from_slice(kms);
        }
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
    /// Version 2: the run key as the KMS wrapped it.
    pub kms: Option<String>,
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
        let version = buf[MAGIC.len()];
        if version != VERSION && version != VERSION_KMS {
            return Err(EnvelopeError::Version(version));
        }
        let id_len = usize::from(buf[MAGIC.len() + 1]);
        let mut at = FIXED_LEN + id_len;
        let Some(id) = buf.get(FIXED_LEN..at) else {
            return Ok(None);
        };
        let kek_id = std::str::from_utf8(id)
            .map_err(|_| EnvelopeError::Malformed)?
            .to_string();
        let mut kms = None;
        if version == VERSION_KMS {
            let Some(len) = buf.get(at..at + 2) else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let Some(wrapped) = buf.get(at + 2..at + 2 + len) else {
                return Ok(None);
            };
            kms = Some(
                std::str::from_utf8(wrapped)
                    .map_err(|_| EnvelopeError::Malformed)?
                    .to_string(),
            );
            at += 2 + len;
        }
        let total = at + NONCE_LEN + WRAPPED_LEN;
        if buf.len() < total {
            return Ok(None);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[at..at + NONCE_LEN]);
        let mut wrapped = [0u8; WRAPPED_LEN];
        wrapped.copy_from_slice(&buf[at + NONCE_LEN..total]);
        Ok(Some((
            Self {
                kek_id,
                kms,
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

    /// Makes sure `keys` holds the KEK of this envelope, unwrapping a run key
    /// with the ring's KMS when it is the first object of its run.
    pub async fn resolve(&self, keys: &KeyRing) -> Result<(), KeyError> {
        keys.resolve(&self.kek_id, self.kms.as_deref())
            .await
            .map(|_| ())
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

    /// Whether the envelope was opened: [`ObjectDecrypter::push`] decrypts.
    pub fn is_open(&self) -> bool {
        self.inner.is_some()
    }

    /// Buffers `data` before the envelope is opened.
    pub fn buffer(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
    }

    /// Whether the buffered bytes hold the whole envelope and its KEK is in
    /// the ring, unwrapping a run key with the ring's KMS if this is the first
    /// object of its run read. Then `push` opens it (an empty slice will do).
    pub async fn resolve(&self) -> Result<bool, EnvelopeError> {
        match Envelope::parse(&self.pending)? {
            Some((env, _)) => {
                env.resolve(&self.keys).await?;
                Ok(true)
            }
            None => Ok(false),
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

/// A KMS for tests: keys it made, by index, with every call counted.
#[cfg(test)]
pub(crate) mod fake_kms {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::keys::{DataKey, Kms, KmsError, KmsFuture, generate_data_key};

    pub struct FakeKms {
        pub name: String,
        pub keys: Mutex<Vec<DataKey>>,
        pub calls: AtomicUsize,
    }

    impl FakeKms {
        pub fn new(name: &str) -> Self {
            Self {
                name: name.to_string(),
                keys: Mutex::new(Vec::new()),
                calls: AtomicUsize::new(0),
            }
        }

        pub fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Kms for FakeKms {
        fn name(&self) -> &str {
            &self.name
        }

        fn data_key(&self) -> KmsFuture<'_, (DataKey, String)> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let key = generate_data_key().unwrap();
            let mut keys = self.keys.lock().unwrap();
            keys.push(key.clone());
            let wrapped = format!("{}:fake:{}", self.name, keys.len() - 1);
            Box::pin(async move { Ok((key, wrapped)) })
        }

        fn unwrap<'a>(&'a self, wrapped: &'a str) -> KmsFuture<'a, DataKey> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let found = wrapped
                .rsplit(':')
                .next()
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| self.keys.lock().unwrap().get(i).cloned());
            let name = self.name.clone();
            Box::pin(async move {
                // A round trip: other reads go on meanwhile.
                tokio::task::yield_now().await;
                found.ok_or(KmsError {
                    key: name,
                    message: "permission denied".into(),
                    unreachable: false,
                })
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::fake_kms::FakeKms;
    use super::*;
    use crate::crypto::aead::Aes256Gcm;
    use crate::crypto::keys::run_key_ring;

    fn encrypt(kek: &Kek, key: &str, plain: &[u8]) -> Vec<u8> {
        let mut e = ObjectEncrypter::new(kek, key).unwrap();
        let mut out = Vec::new();
        e.push(plain, &mut out).unwrap();
        e.finish(&mut out).unwrap();
        out
    }

    async fn decrypt(
        keys: &Arc<KeyRing>,
        key: &str,
        object: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut d = ObjectDecrypter::new(keys.clone(), key);
        let mut out = Vec::new();
        // Byte by byte: the envelope arrives in pieces, as from a store.
        for b in object {
            if d.is_open() {
                d.push(std::slice::from_ref(b), &mut out)?;
            } else {
                d.buffer(std::slice::from_ref(b));
                if d.resolve().await? {
                    d.push(&[], &mut out)?;
                }
            }
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[tokio::test]
    async fn a_run_key_costs_one_kms_call_to_write_and_one_to_read_whatever_the_objects() {
        let kms = Arc::new(FakeKms::new("vault-transit:transit/acme"));
        let ring = run_key_ring(kms.clone()).await.unwrap();
        assert_eq!(kms.calls(), 1);
        let kek = ring.current().unwrap();
        let objects: Vec<(String, Vec<u8>)> = (0..100)
            .map(|i| {
                let key = format!("o/{i}.csv");
                let object = encrypt(&kek, &key, format!("row {i}\n").as_bytes());
                (key, object)
            })
            .collect();
        assert_eq!(kms.calls(), 1, "no KMS call per object");
        assert_eq!(objects[0].1[5], VERSION_KMS);
        // A reader trusting the same KMS key: one unwrap for the whole run.
        let reader = Arc::new(KeyRing::default().with_kms(kms.clone()));
        for (i, (key, object)) in objects.iter().enumerate() {
            let plain = decrypt(&reader, key, object).await.unwrap();
            assert_eq!(plain, format!("row {i}\n").as_bytes());
        }
        assert_eq!(kms.calls(), 2);
        // Nothing in the object but the wrapped form: without the KMS, no key.
        let no_kms = Arc::new(KeyRing::default());
        assert!(matches!(
            decrypt(&no_kms, &objects[0].0, &objects[0].1).await,
            Err(EnvelopeError::Key(KeyError::NoKms(k))) if k == "vault-transit:transit/acme"
        ));
    }

    #[tokio::test]
    async fn objects_of_one_run_read_at_once_ask_the_kms_once() {
        let kms = Arc::new(FakeKms::new("vault-transit:transit/acme"));
        let kek = run_key_ring(kms.clone()).await.unwrap().current().unwrap();
        let objects: Vec<(String, Vec<u8>)> = (0..20)
            .map(|i| (format!("{i}.csv"), encrypt(&kek, &format!("{i}.csv"), b"x")))
            .collect();
        let reader = Arc::new(KeyRing::default().with_kms(kms.clone()));
        let reads = objects.iter().map(|(k, o)| {
            let reader = reader.clone();
            async move { decrypt(&reader, k, o).await }
        });
        for plain in futures::future::join_all(reads).await {
            assert_eq!(plain.unwrap(), b"x");
        }
        assert_eq!(kms.calls(), 2, "one data key, one unwrap");
    }

    #[tokio::test]
    async fn an_object_wrapped_by_another_kms_key_is_refused_without_asking_the_kms() {
        let theirs = Arc::new(FakeKms::new("vault-transit:transit/attacker"));
        let kek = run_key_ring(theirs).await.unwrap().current().unwrap();
        let object = encrypt(&kek, "a.csv", b"planted");
        let kms = Arc::new(FakeKms::new("vault-transit:transit/acme"));
        let reader = Arc::new(KeyRing::default().with_kms(kms.clone()));
        let err = decrypt(&reader, "a.csv", &object).await.unwrap_err();
        assert!(
            matches!(&err, EnvelopeError::Key(KeyError::ForeignKms { wrapped_by, .. }) if wrapped_by == "vault-transit:transit/attacker"),
            "{err}"
        );
        assert_eq!(kms.calls(), 0);
    }

    #[tokio::test]
    async fn a_run_key_swapped_in_an_envelope_is_refused() {
        let kms = Arc::new(FakeKms::new("vault-transit:transit/acme"));
        let a = run_key_ring(kms.clone()).await.unwrap().current().unwrap();
        let b = run_key_ring(kms.clone()).await.unwrap().current().unwrap();
        let object = encrypt(&a, "a.csv", b"x");
        // Same length: the last character of the index differs (0 -> 1).
        let (wa, wb) = (a.wrapped().unwrap(), b.wrapped().unwrap());
        assert_eq!(wa.len(), wb.len());
        let at = object
            .windows(wa.len())
            .position(|w| w == wa.as_bytes())
            .unwrap();
        let mut swapped = object.clone();
        swapped[at..at + wb.len()].copy_from_slice(wb.as_bytes());
        let reader = Arc::new(KeyRing::default().with_kms(kms));
        assert!(matches!(
            decrypt(&reader, "a.csv", &swapped).await,
            Err(EnvelopeError::Key(KeyError::KmsMismatch { .. }))
        ));
        assert_eq!(decrypt(&reader, "a.csv", &object).await.unwrap(), b"x");
    }

    /// The documented version 2 envelope (docs/encryption.md): the run key
    /// 32 bytes of 0x05, its wrapped form as the KMS gave it (opaque here),
    /// the data key and stream of the streaming test vector.
    pub const V2_WRAPPED: &str = "vault-transit:transit/acme:vault:v1:dGVzdCB2ZWN0b3I=";
    pub const V2_ENVELOPE_HEX: &str = "464552525902103933663334383231333537306230393800347661756c742d7472616e7369743a7472616e7369742f61636d653a7661756c743a76313a6447567a644342325a574e306233493d606162636465666768696a6bcbe8c718b0b4bef884c5dcb7ec769b83a90cde3013b59ff01e19e6b3744556aa67b1e6af79447be74ccf4cff97fd6b19";

    #[tokio::test]
    async fn version_2_test_vector() {
        let run_key = [5u8; 32];
        let dek: [u8; 32] = std::array::from_fn(|i| i as u8);
        let object_key = "customers/2026-11-01.csv";
        let kek = Kek::from_bytes(run_key);
        // Built by hand from the documented layout, not by the encrypter.
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 0x60 + i as u8);
        let mut aad = b"ferry/dek/v1\0".to_vec();
        aad.extend_from_slice(kek.id().as_bytes());
        aad.push(0);
        aad.extend_from_slice(object_key.as_bytes());
        let mut wrapped = dek.to_vec();
        let tag = Aes256Gcm::new(&run_key)
            .unwrap()
            .seal_in_place(&nonce, &aad, &mut wrapped)
            .unwrap();
        wrapped.extend_from_slice(&tag);
        let mut env = b"FERRY\x02".to_vec();
        env.push(16);
        env.extend_from_slice(kek.id().as_bytes());
        env.extend_from_slice(&(V2_WRAPPED.len() as u16).to_be_bytes());
        env.extend_from_slice(V2_WRAPPED.as_bytes());
        env.extend_from_slice(&nonce);
        env.extend_from_slice(&wrapped);
        println!("kek id {}\nenvelope {}", kek.id(), hex::encode(&env));
        assert_eq!(hex::encode(&env), V2_ENVELOPE_HEX);
        let mut object = env;
        object.extend_from_slice(
            &hex::decode(crate::crypto::streaming::VECTOR_CIPHERTEXT_HEX).unwrap(),
        );
        // The KMS gives the run key back for its wrapped form.
        let kms = Arc::new(FakeKms::new("vault-transit:transit/acme"));
        kms.keys
            .lock()
            .unwrap()
            .push(zeroize::Zeroizing::new(run_key));
        struct Fixed(Arc<FakeKms>);
        impl crate::crypto::keys::Kms for Fixed {
            fn name(&self) -> &str {
                self.0.name()
            }
            fn data_key(&self) -> crate::crypto::keys::KmsFuture<'_, (DataKey, String)> {
                self.0.data_key()
            }
            fn unwrap<'a>(
                &'a self,
                wrapped: &'a str,
            ) -> crate::crypto::keys::KmsFuture<'a, DataKey> {
                assert_eq!(wrapped, V2_WRAPPED);
                self.0.unwrap("x:0")
            }
        }
        let reader = Arc::new(KeyRing::default().with_kms(Arc::new(Fixed(kms))));
        let plain = decrypt(&reader, object_key, &object).await.unwrap();
        assert_eq!(plain, b"id,country\n1,FR\n2,DE\n");
    }
}
