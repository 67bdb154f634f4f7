//! Feeds arbitrary bytes, in arbitrary chunks, to the object and stream
//! decrypters: they must return an error or authenticated plaintext, never
//! panic, hang or grow without bound.
//!
//! cargo +nightly fuzz run decrypt        (from job-runner/)
#![no_main]

use std::sync::Arc;

use ferry_runner::crypto::streaming::Decrypter;
use ferry_runner::crypto::{KeyRing, Kek, ObjectDecrypter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let chunk = usize::from(split).max(1);
    let kek = Kek::from_bytes([0x42; 32]);
    let keys = Arc::new(KeyRing::new(vec![kek]));

    let mut object = ObjectDecrypter::new(keys, "fuzz/object");
    let mut out = Vec::new();
    let mut ok = true;
    for c in rest.chunks(chunk) {
        if object.push(c, &mut out).is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        let _ = object.finish(&mut out);
    }

    let mut stream = Decrypter::new(&[0x42; 32], b"fuzz/object");
    let mut out = Vec::new();
    for c in rest.chunks(chunk) {
        if stream.push(c, &mut out).is_err() {
            return;
        }
    }
    let _ = stream.finish(&mut out);
});
