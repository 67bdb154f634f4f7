//! Encryption throughput on one core, and peak memory while encrypting a large
//! stream. Run through `docs/bench/run.sh`, which runs `openssl speed` beside it
//! and writes `docs/benchmarks.md`.
//!
//! `cargo bench -p ferry-job-runner --bench crypto -- [throughput|memory GIB]`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{KeyInit, Nonce};
use ferry_runner::crypto::aead::Aes256Gcm;
use ferry_runner::crypto::streaming::{Decrypter, Encrypter};
use ferry_runner::crypto::{Kek, ObjectEncrypter};
use sha2::{Digest, Sha256};

const BLOCK: usize = 16 * 1024;
const MIN_TIME: Duration = Duration::from_secs(3);

/// Runs `f` over `bytes_per_call` until MIN_TIME has passed; returns MB/s (10^6).
fn rate(bytes_per_call: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < MIN_TIME {
        f();
        calls += 1;
    }
    (calls as f64 * bytes_per_call as f64) / start.elapsed().as_secs_f64() / 1e6
}

fn throughput() {
    let key = [7u8; 32];
    let nonce = [1u8; 12];
    let mut block = vec![0x5au8; BLOCK];

    let ring = Aes256Gcm::new(&key).unwrap();
    let r = rate(BLOCK, || {
        black_box(
            ring.seal_in_place(&nonce, &[], black_box(&mut block))
                .unwrap(),
        );
    });
    println!("ring aes-256-gcm seal, 16 KiB blocks\t{r:.0}");

    let rc = aes_gcm::Aes256Gcm::new(&key.into());
    let r = rate(BLOCK, || {
        black_box(
            rc.encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], black_box(&mut block))
                .unwrap(),
        );
    });
    println!("RustCrypto aes-gcm seal, 16 KiB blocks\t{r:.0}");

    // The Tink streaming format as Ferry runs it: 64 KiB input chunks, 8 MiB per call
    // (a working set that stays in cache, as openssl speed's does).
    let data = vec![0xa5u8; 8 << 20];
    let mut out = Vec::with_capacity(data.len() + (1 << 20));
    let mut ct = Vec::new();
    let r = rate(data.len(), || {
        out.clear();
        let mut e = Encrypter::new(&key, b"bench/object").unwrap();
        for c in data.chunks(64 * 1024) {
            e.push(c, &mut out).unwrap();
            if out.len() >= (1 << 20) {
                black_box(&out);
                out.clear();
            }
        }
        e.finish(&mut out).unwrap();
    });
    println!("Ferry streaming encrypt (Tink format), 64 KiB writes\t{r:.0}");
    {
        let mut e = Encrypter::new(&key, b"bench/object").unwrap();
        e.push(&data, &mut ct).unwrap();
        e.finish(&mut ct).unwrap();
    }
    let mut plain = Vec::with_capacity(data.len());
    let r = rate(data.len(), || {
        plain.clear();
        let mut d = Decrypter::new(&key, b"bench/object");
        for c in ct.chunks(64 * 1024) {
            d.push(c, &mut plain).unwrap();
            if !plain.is_empty() {
                black_box(&plain);
                plain.clear();
            }
        }
        d.finish(&mut plain).unwrap();
    });
    println!("Ferry streaming decrypt (Tink format), 64 KiB reads\t{r:.0}");

    // What one object costs in the transfer path: envelope + encryption + SHA-256
    // of plaintext and ciphertext.
    let kek = Kek::from_bytes(key);
    let r = rate(data.len(), || {
        out.clear();
        let mut ph = Sha256::new();
        let mut ch = Sha256::new();
        let mut e = ObjectEncrypter::new(&kek, "bench/object").unwrap();
        for c in data.chunks(64 * 1024) {
            ph.update(c);
            e.push(c, &mut out).unwrap();
            if out.len() >= (1 << 20) {
                ch.update(&out);
                out.clear();
            }
        }
        e.finish(&mut out).unwrap();
        ch.update(&out);
        black_box((ph.finalize(), ch.finalize()));
    });
    println!("Ferry object path (encrypt + 2x SHA-256)\t{r:.0}");
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn memory(gib: u64) {
    let kek = Kek::from_bytes([9u8; 32]);
    let before = peak_rss_kib();
    let chunk = vec![0x33u8; 256 * 1024];
    let mut out = Vec::with_capacity(2 << 20);
    let mut e = ObjectEncrypter::new(&kek, "big/object").unwrap();
    let total = gib << 30;
    let mut done = 0u64;
    let mut written = 0u64;
    let start = Instant::now();
    while done < total {
        e.push(&chunk, &mut out).unwrap();
        done += chunk.len() as u64;
        if out.len() >= 1 << 20 {
            written += out.len() as u64;
            black_box(&out);
            out.clear();
        }
    }
    e.finish(&mut out).unwrap();
    written += out.len() as u64;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "encrypted {gib} GiB stream\t{written} bytes out\t{:.0} MB/s\tpeak RSS {} KiB (before: {} KiB)",
        done as f64 / secs / 1e6,
        peak_rss_kib(),
        before
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.first().map(String::as_str) {
        Some("memory") => memory(args.get(1).and_then(|g| g.parse().ok()).unwrap_or(4)),
        Some("throughput") | None => throughput(),
        Some(other) => eprintln!("unknown benchmark {other}: throughput | memory GIB"),
    }
}
