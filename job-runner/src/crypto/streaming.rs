//! Google Tink's AES-GCM-HKDF streaming AEAD, byte for byte: AES-256,
//! HKDF-SHA256, 1 MiB ciphertext segments (Tink's `AES256_GCM_HKDF_1MB`).
//!
//! ```text
//! ciphertext = header || segment_0 || segment_1 || ... || segment_n
//! header     = header_len (1 byte, = 40) || salt (32 bytes) || nonce_prefix (7 bytes)
//! key        = HKDF-SHA256(ikm = data key, salt = salt, info = associated data, 32 bytes)
//! segment_i  = AES-256-GCM(key, nonce_i, plaintext_i, aad = empty) (ciphertext || 16-byte tag)
//! nonce_i    = nonce_prefix || i as u32 big endian || 0x01 if last segment else 0x00
//! ```
//!
//! The first segment is shorter by the header, so that header and first segment
//! together fill one ciphertext segment. Every segment but the last is full; the
//! last holds 0 to a full segment of plaintext.
//!
//! Both directions are push-based state machines with no I/O: the caller feeds
//! chunks of any size and receives output; at most one segment is buffered.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::aead::{Aes256Gcm, KEY_LEN, NONCE_LEN, TAG_LEN, random_bytes};

/// Size of a ciphertext segment.
pub const SEGMENT_SIZE: usize = 1 << 20;
/// Length of the salt, equal to the derived key length.
pub const SALT_LEN: usize = KEY_LEN;
/// Length of the nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 7;
/// Length of the header.
pub const HEADER_LEN: usize = 1 + SALT_LEN + NONCE_PREFIX_LEN;
/// Plaintext bytes in a full segment other than the first.
pub const PLAINTEXT_SEGMENT: usize = SEGMENT_SIZE - TAG_LEN;
/// Plaintext bytes in a full first segment.
pub const FIRST_PLAINTEXT_SEGMENT: usize = SEGMENT_SIZE - HEADER_LEN - TAG_LEN;

/// Why a stream did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("ciphertext is shorter than its header")]
    TruncatedHeader,
    #[error("ciphertext header is invalid (length byte {0}, expected {HEADER_LEN})")]
    BadHeader(u8),
    #[error(
        "segment {0} failed authentication (altered, truncated, reordered, wrong key or wrong associated data)"
    )]
    Authentication(u32),
    #[error("ciphertext is truncated inside segment {0}")]
    TruncatedSegment(u32),
    #[error("ciphertext has more segments than the format allows")]
    TooManySegments,
    #[error("failed to initialise AES-256-GCM or the random generator")]
    Primitive,
}

fn derive_key(dek: &[u8; KEY_LEN], salt: &[u8], aad: &[u8]) -> Result<Aes256Gcm, StreamError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    Hkdf::<Sha256>::new(Some(salt), dek)
        .expand(aad, key.as_mut())
        .map_err(|_| StreamError::Primitive)?;
    Aes256Gcm::new(&key).map_err(|_| StreamError::Primitive)
}

fn nonce(prefix: &[u8; NONCE_PREFIX_LEN], segment: u32, last: bool) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    n[NONCE_PREFIX_LEN..NONCE_PREFIX_LEN + 4].copy_from_slice(&segment.to_be_bytes());
    n[NONCE_LEN - 1] = u8::from(last);
    n
}

/// Encrypts a stream. Feed plaintext with [`Encrypter::push`], end with
/// [`Encrypter::finish`]; the header is the start of the first output.
pub struct Encrypter {
    key: Aes256Gcm,
    prefix: [u8; NONCE_PREFIX_LEN],
    segment: u32,
    /// Plaintext of the current segment, never more than one segment.
    buf: Vec<u8>,
    header: Option<[u8; HEADER_LEN]>,
}

impl Encrypter {
    /// An encrypter with a random salt and nonce prefix.
    pub fn new(dek: &[u8; KEY_LEN], aad: &[u8]) -> Result<Self, StreamError> {
        let mut salt = [0u8; SALT_LEN];
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        random_bytes(&mut salt).map_err(|_| StreamError::Primitive)?;
        random_bytes(&mut prefix).map_err(|_| StreamError::Primitive)?;
        Self::with_salt_and_prefix(dek, aad, salt, prefix)
    }

    /// An encrypter with a given salt and nonce prefix (test vectors only: reusing
    /// them with the same key and associated data breaks confidentiality).
    pub fn with_salt_and_prefix(
        dek: &[u8; KEY_LEN],
        aad: &[u8],
        salt: [u8; SALT_LEN],
        prefix: [u8; NONCE_PREFIX_LEN],
    ) -> Result<Self, StreamError> {
        let mut header = [0u8; HEADER_LEN];
        header[0] = HEADER_LEN as u8;
        header[1..1 + SALT_LEN].copy_from_slice(&salt);
        header[1 + SALT_LEN..].copy_from_slice(&prefix);
        Ok(Self {
            key: derive_key(dek, &salt, aad)?,
            prefix,
            segment: 0,
            // Grows to a segment as data comes: a small object holds little.
            buf: Vec::new(),
            header: Some(header),
        })
    }

    fn capacity(&self) -> usize {
        if self.segment == 0 {
            FIRST_PLAINTEXT_SEGMENT
        } else {
            PLAINTEXT_SEGMENT
        }
    }

    fn emit_header(&mut self, out: &mut Vec<u8>) {
        if let Some(h) = self.header.take() {
            out.extend_from_slice(&h);
        }
    }

    /// Seals the buffered segment in place and hands it to `out`: moved when
    /// `out` is empty (no copy), appended otherwise.
    fn seal_segment(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let n = nonce(&self.prefix, self.segment, last);
        let tag = self
            .key
            .seal_in_place(&n, &[], &mut self.buf)
            .map_err(|_| StreamError::Primitive)?;
        self.buf.extend_from_slice(&tag);
        if out.is_empty() {
            std::mem::swap(out, &mut self.buf);
            self.buf.clear();
            self.buf.reserve(SEGMENT_SIZE);
        } else {
            out.extend_from_slice(&self.buf);
            self.buf.clear();
        }
        self.segment = self
            .segment
            .checked_add(1)
            .ok_or(StreamError::TooManySegments)?;
        Ok(())
    }

    /// Encrypts what `data` completes, appending ciphertext to `out`. A full
    /// segment is only sealed once more plaintext follows it, as Tink does.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.emit_header(out);
        while !data.is_empty() {
            if self.buf.len() == self.capacity() {
                self.seal_segment(false, out)?;
            }
            let take = (self.capacity() - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    /// Seals the last segment.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.emit_header(out);
        self.seal_segment(true, out)
    }
}

/// Decrypts a stream. Feed ciphertext with [`Decrypter::push`], end with
/// [`Decrypter::finish`]. Plaintext is only released after its segment
/// authenticated.
pub struct Decrypter {
    dek: Zeroizing<[u8; KEY_LEN]>,
    aad: Vec<u8>,
    state: Option<(Aes256Gcm, [u8; NONCE_PREFIX_LEN])>,
    segment: u32,
    /// Ciphertext not decrypted yet: at most one segment plus one chunk.
    buf: Vec<u8>,
}

impl Decrypter {
    /// A decrypter for data encrypted under `dek` with associated data `aad`.
    pub fn new(dek: &[u8; KEY_LEN], aad: &[u8]) -> Self {
        Self {
            dek: Zeroizing::new(*dek),
            aad: aad.to_vec(),
            state: None,
            segment: 0,
            // Grows to a segment as data comes: a small object holds little.
            buf: Vec::new(),
        }
    }

    fn segment_len(&self) -> usize {
        if self.segment == 0 {
            SEGMENT_SIZE - HEADER_LEN
        } else {
            SEGMENT_SIZE
        }
    }

    fn read_header(&mut self) -> Result<bool, StreamError> {
        if self.state.is_some() {
            return Ok(true);
        }
        if let Some(&len) = self.buf.first()
            && usize::from(len) != HEADER_LEN
        {
            return Err(StreamError::BadHeader(len));
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(false);
        }
        let salt = &self.buf[1..1 + SALT_LEN];
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        prefix.copy_from_slice(&self.buf[1 + SALT_LEN..HEADER_LEN]);
        let key = derive_key(&self.dek, salt, &self.aad)?;
        self.state = Some((key, prefix));
        self.buf.drain(..HEADER_LEN);
        Ok(true)
    }

    fn open_segment(
        &mut self,
        len: usize,
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        let Some((key, prefix)) = &self.state else {
            return Err(StreamError::TruncatedHeader);
        };
        if len < TAG_LEN {
            return Err(StreamError::TruncatedSegment(self.segment));
        }
        let n = nonce(prefix, self.segment, last);
        // Split the segment off the buffer (copying only the look-ahead behind
        // it), open it in place, and hand the plaintext over. An empty `out`
        // lends its allocation to the next segment, so buffers are reused.
        let mut rest = if out.is_empty() {
            std::mem::take(out)
        } else {
            Vec::new()
        };
        rest.reserve(SEGMENT_SIZE + self.buf.len() - len);
        rest.extend_from_slice(&self.buf[len..]);
        self.buf.truncate(len);
        let mut segment = std::mem::replace(&mut self.buf, rest);
        let plain = key
            .open_in_place(&n, &[], &mut segment)
            .map_err(|_| StreamError::Authentication(self.segment))?;
        segment.truncate(plain);
        if out.is_empty() {
            *out = segment;
        } else {
            out.extend_from_slice(&segment);
        }
        self.segment = self
            .segment
            .checked_add(1)
            .ok_or(StreamError::TooManySegments)?;
        Ok(())
    }

    /// Decrypts every segment that `data` completes and that is known not to be
    /// the last (more ciphertext follows it), appending plaintext to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.buf.extend_from_slice(data);
        if !self.read_header()? {
            return Ok(());
        }
        while self.buf.len() > self.segment_len() {
            self.open_segment(self.segment_len(), false, out)?;
        }
        Ok(())
    }

    /// Decrypts the last segment: the stream must end exactly here.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if !self.read_header()? {
            return Err(StreamError::TruncatedHeader);
        }
        let len = self.buf.len();
        self.open_segment(len, true, out)
    }
}

/// Length of the ciphertext of `plaintext_len` bytes.
pub fn ciphertext_len(plaintext_len: u64) -> u64 {
    let first = FIRST_PLAINTEXT_SEGMENT as u64;
    let full = PLAINTEXT_SEGMENT as u64;
    let segments = if plaintext_len <= first {
        1
    } else {
        1 + (plaintext_len - first).div_ceil(full)
    };
    HEADER_LEN as u64 + plaintext_len + segments * TAG_LEN as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt(dek: &[u8; 32], aad: &[u8], data: &[u8], chunk: usize) -> Vec<u8> {
        let mut e = Encrypter::new(dek, aad).unwrap();
        let mut out = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            e.push(c, &mut out).unwrap();
        }
        e.finish(&mut out).unwrap();
        out
    }

    fn decrypt(
        dek: &[u8; 32],
        aad: &[u8],
        ct: &[u8],
        chunk: usize,
    ) -> Result<Vec<u8>, StreamError> {
        let mut d = Decrypter::new(dek, aad);
        let mut out = Vec::new();
        for c in ct.chunks(chunk.max(1)) {
            d.push(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_at_segment_boundaries() {
        let dek = [7u8; 32];
        for len in [
            0,
            1,
            FIRST_PLAINTEXT_SEGMENT - 1,
            FIRST_PLAINTEXT_SEGMENT,
            FIRST_PLAINTEXT_SEGMENT + 1,
            FIRST_PLAINTEXT_SEGMENT + PLAINTEXT_SEGMENT,
            FIRST_PLAINTEXT_SEGMENT + PLAINTEXT_SEGMENT + 1,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let ct = encrypt(&dek, b"key", &data, 65536);
            assert_eq!(ct.len() as u64, ciphertext_len(len as u64), "len {len}");
            assert_eq!(
                decrypt(&dek, b"key", &ct, 100_000).unwrap(),
                data,
                "len {len}"
            );
        }
    }

    #[test]
    fn wrong_aad_and_key_fail_cleanly() {
        let ct = encrypt(&[1u8; 32], b"a.csv", b"hello", 3);
        assert_eq!(
            decrypt(&[1u8; 32], b"b.csv", &ct, 7),
            Err(StreamError::Authentication(0))
        );
        assert_eq!(
            decrypt(&[2u8; 32], b"a.csv", &ct, 7),
            Err(StreamError::Authentication(0))
        );
        assert_eq!(
            decrypt(&[1u8; 32], b"a.csv", &ct[..10], 7),
            Err(StreamError::TruncatedHeader)
        );
        let mut bad = ct.clone();
        bad[0] = 16;
        assert_eq!(
            decrypt(&[1u8; 32], b"a.csv", &bad, 7),
            Err(StreamError::BadHeader(16))
        );
    }
}

/// The ciphertext of the streaming test vector of `docs/encryption.md`.
#[cfg(test)]
pub(crate) const VECTOR_CIPHERTEXT_HEX: &str = vector::CIPHERTEXT_HEX;

/// The test vector of `docs/encryption.md`.
#[cfg(test)]
mod vector {
    use super::*;

    pub const DEK: [u8; 32] = [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        25, 26, 27, 28, 29, 30, 31,
    ];
    pub const AAD: &[u8] = b"customers/2026-11-01.csv";
    pub const PLAINTEXT: &[u8] = b"id,country\n1,FR\n2,DE\n";

    pub fn salt() -> [u8; SALT_LEN] {
        std::array::from_fn(|i| 0x20 + i as u8)
    }

    pub fn prefix() -> [u8; NONCE_PREFIX_LEN] {
        std::array::from_fn(|i| 0x40 + i as u8)
    }

    pub const CIPHERTEXT_HEX: &str = "28202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40414243444546562962279931205c5dcfcad157603ba9a5548dccd4eeefaddbe71270acd70d31bac0655f37";

    #[test]
    fn documented_vector() {
        let mut e = Encrypter::with_salt_and_prefix(&DEK, AAD, salt(), prefix()).unwrap();
        let mut out = Vec::new();
        e.push(PLAINTEXT, &mut out).unwrap();
        e.finish(&mut out).unwrap();
        assert_eq!(hex::encode(&out), CIPHERTEXT_HEX);
        let mut d = Decrypter::new(&DEK, AAD);
        let mut plain = Vec::new();
        d.push(&hex::decode(CIPHERTEXT_HEX).unwrap(), &mut plain)
            .unwrap();
        d.finish(&mut plain).unwrap();
        assert_eq!(plain, PLAINTEXT);
    }
}
