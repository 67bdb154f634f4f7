//! Encryption at rest, with no I/O of its own: Tink's streaming AEAD format
//! ([`streaming`]), the per-object envelope with the wrapped data key
//! ([`envelope`]), key-encryption keys ([`keys`]), run manifests
//! ([`manifest`]) and their Ed25519 signatures ([`signing`]). The format is written down in `docs/encryption.md`.

pub mod aead;
pub mod envelope;
pub mod keys;
pub mod manifest;
pub mod part;
pub mod segments;
pub mod signing;
pub mod streaming;

pub use envelope::{EnvelopeError, ObjectDecrypter, ObjectEncrypter};
pub use keys::{Kek, KeyError, KeyRing};
pub use manifest::{
    Anchor, ChainBreak, Contents, Finding, Manifest, ManifestEntry, ManifestError, Place,
    Tombstone, check_anchor, check_chain,
};
pub use signing::{ManifestSigner, PublicKey, PublicKeys, Signature};
