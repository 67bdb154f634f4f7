//! Every way of altering a Ferry object is a clean error, never a panic, and
//! never released plaintext that did not authenticate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::sync::Arc;

use ferry_runner::crypto::envelope::EnvelopeError;
use ferry_runner::crypto::streaming::{
    FIRST_PLAINTEXT_SEGMENT, HEADER_LEN, PLAINTEXT_SEGMENT, SEGMENT_SIZE,
};
use ferry_runner::crypto::{Kek, KeyRing, ObjectDecrypter, ObjectEncrypter};
use proptest::prelude::*;

fn kek() -> Kek {
    Kek::from_bytes([0x11; 32])
}

fn ring() -> Arc<KeyRing> {
    Arc::new(KeyRing::new(vec![kek()]))
}

fn encrypt(key: &str, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut e = ObjectEncrypter::new(&kek(), key).unwrap();
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        e.push(c, &mut out).unwrap();
    }
    e.finish(&mut out).unwrap();
    out
}

fn decrypt_with(
    keys: Arc<KeyRing>,
    key: &str,
    ct: &[u8],
    chunk: usize,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut d = ObjectDecrypter::new(keys, key);
    let mut out = Vec::new();
    for c in ct.chunks(chunk.max(1)) {
        d.push(c, &mut out)?;
    }
    d.finish(&mut out)?;
    Ok(out)
}

fn decrypt(key: &str, ct: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    decrypt_with(ring(), key, ct, 64 * 1024)
}

/// Plaintext of three segments and a bit.
fn data() -> Vec<u8> {
    (0..FIRST_PLAINTEXT_SEGMENT + 2 * PLAINTEXT_SEGMENT + 1000)
        .map(|i| (i * 7 % 256) as u8)
        .collect()
}

/// Length of the FERRY envelope in front of the Tink ciphertext.
fn envelope_len(ct: &[u8]) -> usize {
    7 + usize::from(ct[6]) + 12 + 48
}

#[test]
fn bit_flips_anywhere_fail() {
    let plain = data();
    let ct = encrypt("a.csv", &plain, 100_000);
    assert_eq!(decrypt("a.csv", &ct).unwrap(), plain);
    let env = envelope_len(&ct);
    let positions = [
        0,                       // magic
        5,                       // version
        7,                       // kek id
        env - 50,                // wrap nonce / wrapped key
        env - 1,                 // wrapped key tag
        env,                     // Tink header length byte
        env + 5,                 // salt
        env + HEADER_LEN - 1,    // nonce prefix
        env + HEADER_LEN,        // first segment body
        env + SEGMENT_SIZE - 1,  // first segment tag
        env + SEGMENT_SIZE + 10, // second segment
        ct.len() - 1,            // last tag
    ];
    for pos in positions {
        let mut bad = ct.clone();
        bad[pos] ^= 0x01;
        let err = decrypt("a.csv", &bad).expect_err(&format!("flip at {pos} accepted"));
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn truncation_at_every_segment_boundary_fails() {
    let ct = encrypt("a.csv", &data(), 1 << 20);
    let env = envelope_len(&ct);
    let mut cuts = vec![
        0,
        3,
        env - 1,
        env,
        env + 1,
        env + HEADER_LEN,
        ct.len() - 1,
        ct.len() - 16,
    ];
    let mut boundary = env + SEGMENT_SIZE;
    while boundary < ct.len() {
        cuts.extend([boundary - 1, boundary, boundary + 1]);
        boundary += SEGMENT_SIZE;
    }
    for cut in cuts {
        assert!(
            decrypt("a.csv", &ct[..cut]).is_err(),
            "truncation to {cut} of {} accepted",
            ct.len()
        );
    }
}

#[test]
fn appended_bytes_fail() {
    let ct = encrypt("a.csv", &data(), 1 << 20);
    for extra in [1usize, 16, 1000, SEGMENT_SIZE] {
        let mut bad = ct.clone();
        bad.extend(std::iter::repeat_n(0u8, extra));
        assert!(
            decrypt("a.csv", &bad).is_err(),
            "{extra} appended bytes accepted"
        );
    }
    // Appending a copy of the last segment (a valid-looking segment) fails too.
    let mut bad = ct.clone();
    let tail = ct[ct.len() - 1016..].to_vec();
    bad.extend(tail);
    assert!(decrypt("a.csv", &bad).is_err());
}

#[test]
fn swapped_and_dropped_segments_fail() {
    let ct = encrypt("a.csv", &data(), 1 << 20);
    let env = envelope_len(&ct);
    let s1 = env + SEGMENT_SIZE; // start of segment 1
    let s2 = s1 + SEGMENT_SIZE; // start of segment 2
    let mut swapped = ct[..s1].to_vec();
    swapped.extend_from_slice(&ct[s2..s2 + SEGMENT_SIZE]);
    swapped.extend_from_slice(&ct[s1..s2]);
    swapped.extend_from_slice(&ct[s2 + SEGMENT_SIZE..]);
    assert_eq!(swapped.len(), ct.len());
    assert!(decrypt("a.csv", &swapped).is_err());
    let mut dropped = ct[..s1].to_vec();
    dropped.extend_from_slice(&ct[s2..]);
    assert!(decrypt("a.csv", &dropped).is_err());
}

#[test]
fn swapped_objects_and_wrong_keys_fail_with_the_object_named() {
    let a = encrypt("a.csv", b"alpha", 3);
    let b = encrypt("b.csv", b"bravo", 3);
    // b's bytes stored under a's key: the wrapped data key is bound to the key.
    let err = decrypt("a.csv", &b).unwrap_err();
    assert!(
        err.to_string().contains("b.csv") || err.to_string().contains("a.csv"),
        "{err}"
    );
    assert!(matches!(err, EnvelopeError::Key(_)));
    assert_eq!(decrypt("a.csv", &a).unwrap(), b"alpha");
    // Wrong KEK: not the same id.
    let other = Arc::new(KeyRing::new(vec![Kek::from_bytes([0x22; 32])]));
    let err = decrypt_with(other, "a.csv", &a, 7).unwrap_err();
    assert!(
        err.to_string().contains("no key-encryption key with id"),
        "{err}"
    );
    // A rotated-out key still reads old data when supplied.
    let rotated = Arc::new(KeyRing::new(vec![Kek::from_bytes([0x22; 32]), kek()]));
    assert_eq!(decrypt_with(rotated, "a.csv", &a, 7).unwrap(), b"alpha");
}

#[test]
fn non_ferry_and_empty_input_fail() {
    assert!(matches!(decrypt("a", b""), Err(EnvelopeError::NotFerry)));
    assert!(matches!(
        decrypt("a", b"PK\x03\x04 zip file"),
        Err(EnvelopeError::NotFerry)
    ));
    assert!(matches!(
        decrypt("a", b"FERRY"),
        Err(EnvelopeError::Truncated)
    ));
    assert!(matches!(
        decrypt("a", b"FERRY\x03\x00"),
        Err(EnvelopeError::Version(3))
    ));
    // A version 2 envelope cut inside the KMS-wrapped run key.
    assert!(matches!(
        decrypt("a", b"FERRY\x02\x00\x00\x10vault"),
        Err(EnvelopeError::Truncated)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any size, any chunking on either side: the round trip is exact.
    #[test]
    fn round_trip_any_size_and_chunking(
        len in prop_oneof![0usize..4096, (FIRST_PLAINTEXT_SEGMENT - 64)..(FIRST_PLAINTEXT_SEGMENT + 64), 0usize..3_000_000],
        enc_chunk in 1usize..200_000,
        dec_chunk in 1usize..200_000,
        seed in any::<u8>(),
    ) {
        let plain: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(seed)).collect();
        let ct = encrypt("k/ey", &plain, enc_chunk);
        prop_assert_eq!(decrypt_with(ring(), "k/ey", &ct, dec_chunk).unwrap(), plain);
    }

    /// Random corruption of random bytes never panics and never decrypts.
    #[test]
    fn random_corruption_is_rejected(len in 0usize..5000, pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let plain = vec![0xabu8; len];
        let mut ct = encrypt("x", &plain, 997);
        let i = pos.index(ct.len());
        ct[i] ^= flip;
        prop_assert!(decrypt("x", &ct).is_err());
    }

    /// Arbitrary bytes given to the decrypter give an error, not a panic.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), chunk in 1usize..64) {
        let mut input = b"FERRY\x01".to_vec();
        input.extend(bytes);
        prop_assert!(decrypt_with(ring(), "x", &input, chunk).is_err());
    }
}
