//! Ed25519 signatures on manifests. The MAC of a manifest proves it to anyone
//! holding the KEK, who could also have made it; a signature proves it to
//! anyone holding the public key, who could not. The platform team keeps the
//! private key in a Secret the runs read; auditors get the public key.
//!
//! Keys are read as PEM (PKCS#8 private keys, SubjectPublicKeyInfo public
//! keys: what `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`
//! write) or as the base64 of the 32 raw bytes (the seed, or the public key).
//! The private key is zeroized on drop and never printed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::aead::random_bytes;
use super::keys::KeyError;

/// The algorithm named in a manifest's signature.
pub const ALGORITHM: &str = "ed25519";

/// The id of a public key: 16 hex digits of SHA-256 of its 32 bytes.
fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// The content of a Secret key or a file as text, when it is PEM.
fn pem_text(content: &[u8]) -> Option<Zeroizing<String>> {
    let text = Zeroizing::new(String::from_utf8_lossy(content).trim().to_string());
    text.starts_with("-----BEGIN ").then_some(text)
}

/// 32 bytes, given raw or as base64 (surrounding white space ignored).
fn raw_32(content: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    if content.len() == 32 {
        out.copy_from_slice(content);
        return Some(out);
    }
    let text = Zeroizing::new(String::from_utf8_lossy(content).trim().to_string());
    let decoded = Zeroizing::new(BASE64.decode(text.as_bytes()).ok()?);
    (decoded.len() == 32).then(|| {
        out.copy_from_slice(&decoded);
        out
    })
}

/// The private key that signs manifests.
pub struct ManifestSigner {
    key: SigningKey,
    public: PublicKey,
}

impl std::fmt::Debug for ManifestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestSigner")
            .field("id", &self.public.id)
            .finish_non_exhaustive()
    }
}

impl ManifestSigner {
    fn new(key: SigningKey) -> Self {
        let verifying = key.verifying_key();
        Self {
            public: PublicKey {
                id: key_id(&verifying),
                key: verifying,
            },
            key,
        }
    }

    /// A signer from the content of a Secret key or a file: a PKCS#8 PEM
    /// private key, or the base64 of the 32-byte seed.
    pub fn parse(content: &[u8]) -> Result<Self, KeyError> {
        if let Some(pem) = pem_text(content) {
            return SigningKey::from_pkcs8_pem(&pem)
                .map(Self::new)
                .map_err(|_| KeyError::BadSigningKey);
        }
        raw_32(content)
            .map(|seed| Self::new(SigningKey::from_bytes(&seed)))
            .ok_or(KeyError::BadSigningKey)
    }

    /// A fresh random signing key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        random_bytes(seed.as_mut()).map_err(|_| KeyError::Primitive)?;
        Ok(Self::new(SigningKey::from_bytes(&seed)))
    }

    /// The private key as PKCS#8 PEM, for a Secret or a file.
    pub fn to_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| KeyError::Primitive)
    }

    /// Its public key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature {
            algorithm: ALGORITHM.to_string(),
            key_id: self.public.id.clone(),
            value: BASE64.encode(self.key.sign(message).to_bytes()),
        }
    }
}

/// A public key that checks manifest signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: String,
}

impl PublicKey {
    /// A public key from a file: SubjectPublicKeyInfo PEM, or the base64 of
    /// its 32 bytes.
    pub fn parse(content: &[u8]) -> Result<Self, KeyError> {
        let key = if let Some(pem) = pem_text(content) {
            VerifyingKey::from_public_key_pem(&pem).map_err(|_| KeyError::BadPublicKey)?
        } else {
            let raw = raw_32(content).ok_or(KeyError::BadPublicKey)?;
            VerifyingKey::from_bytes(&raw).map_err(|_| KeyError::BadPublicKey)?
        };
        Ok(Self {
            id: key_id(&key),
            key,
        })
    }

    /// Its id, as manifests name it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// SubjectPublicKeyInfo PEM, as `openssl pkey -pubout` writes it.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| KeyError::Primitive)
    }

    /// Whether `signature` is this key's signature of `message` (strict
    /// verification: no malleable or small-order encodings).
    pub fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        let Ok(bytes) = BASE64.decode(signature.value.as_bytes()) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&bytes) else {
            return false;
        };
        signature.algorithm == ALGORITHM
            && signature.key_id == self.id
            && self.key.verify_strict(message, &sig).is_ok()
    }
}

/// The public keys an auditor trusts: more than one across a rotation.
#[derive(Clone, Debug, Default)]
pub struct PublicKeys(Vec<PublicKey>);

impl PublicKeys {
    /// These keys.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self(keys)
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&PublicKey> {
        self.0.iter().find(|k| k.id == id)
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A signature as a manifest carries it.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Signature {
    /// Always [`ALGORITHM`].
    pub algorithm: String,
    /// The id of the public key that checks it.
    pub key_id: String,
    /// Base64 of the 64-byte signature.
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pem_and_base64() {
        let signer = ManifestSigner::generate().unwrap();
        let pem = signer.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = ManifestSigner::parse(pem.as_bytes()).unwrap();
        assert_eq!(back.public(), signer.public());
        let public_pem = signer.public().to_pem().unwrap();
        assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(
            &PublicKey::parse(public_pem.as_bytes()).unwrap(),
            signer.public()
        );
        let raw = BASE64.encode(signer.public().key.as_bytes());
        assert_eq!(&PublicKey::parse(raw.as_bytes()).unwrap(), signer.public());
        let seed = ManifestSigner::parse(BASE64.encode([7u8; 32]).as_bytes()).unwrap();
        assert_eq!(seed.public().id().len(), 16);
    }

    #[test]
    fn a_signature_fails_after_any_change_and_under_another_key() {
        let signer = ManifestSigner::parse(&[7u8; 32]).unwrap();
        let sig = signer.sign(b"message");
        let public = signer.public();
        assert!(public.verifies(b"message", &sig));
        assert!(!public.verifies(b"messagf", &sig));
        let mut bad = sig.clone();
        let mut bytes = BASE64.decode(&bad.value).unwrap();
        bytes[10] ^= 1;
        bad.value = BASE64.encode(bytes);
        assert!(!public.verifies(b"message", &bad));
        let other = ManifestSigner::parse(&[8u8; 32]).unwrap();
        assert!(!other.public().verifies(b"message", &sig));
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        for content in [
            &b"not a key"[..],
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            &[1u8; 31],
        ] {
            let e = ManifestSigner::parse(content).unwrap_err();
            assert_eq!(e, KeyError::BadSigningKey);
            assert!(!e.to_string().contains("AAAA"));
            assert_eq!(
                PublicKey::parse(content).unwrap_err(),
                KeyError::BadPublicKey
            );
        }
    }

    /// A key made by `openssl genpkey -algorithm ed25519` (the RFC 8410
    /// example key) is read as it is, and its public key matches
    /// `openssl pkey -pubout`'s.
    #[test]
    fn openssl_keys_are_read() {
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let signer = ManifestSigner::parse(private.as_bytes()).unwrap();
        assert_eq!(
            signer.public(),
            &PublicKey::parse(public.as_bytes()).unwrap()
        );
    }
}
