//! The one place that names an AES-256-GCM implementation.
//!
//! `ring` was chosen by the benchmark in `docs/benchmarks.md` (several times
//! faster than the pure-Rust `aes-gcm` on this hardware); swapping it only
//! touches this file.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Length of an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Length of a GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of a GCM tag.
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key ready to seal and open.
pub struct Aes256Gcm(LessSafeKey);

/// A failure of the AEAD primitive: authentication failed (wrong key, wrong
/// associated data or altered data), or the implementation refused the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AeadError;

impl Aes256Gcm {
    /// A cipher for `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Result<Self, AeadError> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| AeadError)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// Encrypts `in_out` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let nonce = Nonce::assume_unique_for_key(*nonce);
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, Aad::from(aad), in_out)
            .map_err(|_| AeadError)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `in_out` (ciphertext followed by the tag) in place and returns
    /// the length of the plaintext now at its start.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<usize, AeadError> {
        let nonce = Nonce::assume_unique_for_key(*nonce);
        self.0
            .open_in_place(nonce, Aad::from(aad), in_out)
            .map(|p| p.len())
            .map_err(|_| AeadError)
    }
}

/// Fills `buf` with cryptographically secure random bytes.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), AeadError> {
    use ring::rand::{SecureRandom, SystemRandom};
    SystemRandom::new().fill(buf).map_err(|_| AeadError)
}
