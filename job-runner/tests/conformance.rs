//! The storage conformance suite: what every backend must do, run against each
//! one. Backends for remote stores join here, against the real servers that
//! `tests/bootstrap.sh` starts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::sync::Arc;

use bytes::Bytes;
use ferry_runner::storage::local::LocalStore;
use ferry_runner::storage::{ByteStream, ObjectStore, StorageError};
use futures::StreamExt;

fn body(data: Vec<u8>, chunk: usize) -> ByteStream {
    let chunks: Vec<Result<Bytes, StorageError>> =
        data.chunks(chunk.max(1)).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    futures::stream::iter(chunks).boxed()
}

async fn read(store: &dyn ObjectStore, key: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut s = store.get(key, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

/// Runs the whole suite against an empty store.
async fn conformance(store: Arc<dyn ObjectStore>) {
    let s = store.as_ref();

    // Nested keys, unicode and spaces, an empty object, a multi-part object.
    let big: Vec<u8> = (0..(20 << 20) + 12345).map(|i: usize| (i % 241) as u8).collect();
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"alpha".to_vec()),
        ("empty", vec![]),
        ("dir/sub dir/ünï cödé.csv", b"x,y\n".to_vec()),
        ("dir/big.bin", big.clone()),
    ];
    for (k, v) in &objects {
        let n = s.put(k, body(v.clone(), 65536)).await.unwrap();
        assert_eq!(n, v.len() as u64, "{k}");
    }
    for (k, v) in &objects {
        assert_eq!(&read(s, k, None).await, v, "{k}");
    }

    // Listing: sorted, relative keys, sizes.
    let listed = s.list().await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["a.txt", "dir/big.bin", "dir/sub dir/ünï cödé.csv", "empty"]);
    assert_eq!(listed[1].size, big.len() as u64);
    assert!(listed.iter().all(|o| o.modified.is_some()), "last-modified is reported");

    // Ranged reads.
    assert_eq!(read(s, "dir/big.bin", Some(10..20)).await, big[10..20]);
    assert_eq!(read(s, "dir/big.bin", Some((8 << 20) - 5..(8 << 20) + 5)).await, big[(8 << 20) - 5..(8 << 20) + 5]);
    assert_eq!(read(s, "a.txt", Some(3..100)).await, b"ha");

    // Overwrite replaces the whole object.
    s.put("a.txt", body(b"A".to_vec(), 1)).await.unwrap();
    assert_eq!(read(s, "a.txt", None).await, b"A");

    // Atomicity: a write whose source fails midway leaves nothing visible, and
    // does not disturb the object it would have replaced.
    for key in ["never.bin", "a.txt"] {
        let failing = futures::stream::iter(vec![
            Ok(Bytes::from(vec![1u8; 3 << 20])),
            Err(StorageError::Source { endpoint: "test".into(), key: key.into(), reason: "cut".into() }),
        ])
        .boxed();
        assert!(s.put(key, failing).await.is_err());
    }
    let keys: Vec<String> = s.list().await.unwrap().into_iter().map(|o| o.key).collect();
    assert!(!keys.contains(&"never.bin".to_string()), "a failed write is visible: {keys:?}");
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert_eq!(read(s, "a.txt", None).await, b"A");

    // Errors: a missing object, invalid keys.
    let missing = s.get("nope/missing", None).await.err().expect("missing object read");
    assert!(matches!(missing, StorageError::NotFound { .. }), "{missing}");
    assert!(missing.to_string().contains("nope/missing"));
    for bad in ["", "../escape", "a//b", "/abs"] {
        assert!(matches!(s.put(bad, body(vec![1], 1)).await, Err(StorageError::InvalidKey { .. })), "{bad:?}");
    }

    // Delete, idempotent.
    s.delete("dir/big.bin").await.unwrap();
    s.delete("dir/big.bin").await.unwrap();
    assert!(s.get("dir/big.bin", None).await.is_err());

    // Pagination: more objects than one page of any store (S3 lists 1000).
    for i in 0..1100 {
        s.put(&format!("many/{i:05}"), body(vec![i as u8], 1)).await.unwrap();
    }
    let many = s.list().await.unwrap().into_iter().filter(|o| o.key.starts_with("many/")).count();
    assert_eq!(many, 1100);
}

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(LocalStore::new(dir.path().join("root")))).await;
    // Nothing but the objects is left behind.
    let mut tmp = 0;
    for e in walk(dir.path()) {
        if e.contains(".ferry-tmp-") {
            tmp += 1;
        }
    }
    assert_eq!(tmp, 0, "temporary files left");
}

#[tokio::test]
async fn local_store_reports_a_missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("absent"));
    let err = store.list().await.unwrap_err();
    assert!(matches!(err, StorageError::NoSuchContainer { .. }), "{err}");
    assert!(err.to_string().contains("absent"), "{err}");
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.to_string_lossy().into_owned());
        }
    }
    out
}
