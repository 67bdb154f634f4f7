//! Interoperability with the real Google Tink (PyPI `tink`, installed by
//! `tests/bootstrap.sh`): Ferry's ciphertext decrypts under Tink, Tink's under
//! Ferry, at every segment boundary. A missing Tink is a failure, not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::process::Command;

use ferry_runner::crypto::streaming::{
    Decrypter, Encrypter, FIRST_PLAINTEXT_SEGMENT as FIRST, PLAINTEXT_SEGMENT as SEG,
};

fn python() -> PathBuf {
    let py = std::env::var_os("FERRY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/ferry/venv/bin/python")
        });
    let ok = Command::new(&py)
        .args(["-c", "import tink"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "Google Tink is not importable by {}: run tests/bootstrap.sh (or `make test`)",
        py.display()
    );
    py
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/tink/tink_stream.py")
}

fn tink(mode: &str, key: &[u8; 32], aad: &[u8], input: &[u8]) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&src, input).unwrap();
    let out = Command::new(python())
        .arg(script())
        .args([mode, &hex::encode(key), &hex::encode(aad)])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(std::fs::read(dst).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn ferry_encrypt(key: &[u8; 32], aad: &[u8], data: &[u8], chunk: usize) -> Vec<u8> {
    let mut e = Encrypter::new(key, aad).unwrap();
    let mut out = Vec::new();
    for c in data.chunks(chunk) {
        e.push(c, &mut out).unwrap();
    }
    e.finish(&mut out).unwrap();
    out
}

fn ferry_decrypt(key: &[u8; 32], aad: &[u8], ct: &[u8], chunk: usize) -> Result<Vec<u8>, String> {
    let mut d = Decrypter::new(key, aad);
    let mut out = Vec::new();
    for c in ct.chunks(chunk) {
        d.push(c, &mut out).map_err(|e| e.to_string())?;
    }
    d.finish(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn sizes() -> Vec<usize> {
    vec![
        0,
        1,
        FIRST - 1,
        FIRST,
        FIRST + 1,
        FIRST + SEG - 1,
        FIRST + SEG,
        FIRST + SEG + 1,
        5 * (1 << 20) + 12345,
    ]
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn tink_decrypts_what_ferry_encrypts() {
    let key = [0x5au8; 32];
    for (i, len) in sizes().into_iter().enumerate() {
        let aad = format!("objects/part-{i}.csv");
        let plain = data(len, i as u8);
        let ct = ferry_encrypt(&key, aad.as_bytes(), &plain, 7919);
        let back = tink("decrypt", &key, aad.as_bytes(), &ct)
            .unwrap_or_else(|e| panic!("size {len}: {e}"));
        assert!(back == plain, "size {len}: Tink returned different bytes");
        // Tink enforces the associated data too.
        assert!(
            tink("decrypt", &key, b"another/key", &ct).is_err(),
            "size {len}: wrong aad accepted"
        );
    }
}

#[test]
fn ferry_decrypts_what_tink_encrypts() {
    let key = [0xa5u8; 32];
    for (i, len) in sizes().into_iter().enumerate() {
        let aad = format!("dir with space/ünïcode-{i}");
        let plain = data(len, 100 + i as u8);
        let ct = tink("encrypt", &key, aad.as_bytes(), &plain).unwrap();
        for chunk in [1usize << 20, 65536, 1000003] {
            let back = ferry_decrypt(&key, aad.as_bytes(), &ct, chunk)
                .unwrap_or_else(|e| panic!("size {len}: {e}"));
            assert!(back == plain, "size {len}, chunk {chunk}: different bytes");
        }
        assert!(ferry_decrypt(&key, b"wrong", &ct, 65536).is_err());
    }
}
