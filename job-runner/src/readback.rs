//! Reading back what Ferry wrote: decrypt objects and verify a destination
//! against its manifest.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::crypto::{Anchor, Finding, KeyRing, Manifest, ManifestEntry, check_anchor, check_chain};
use crate::storage::{ByteStream, ObjectStore, StorageError};
use crate::transfer::{self, TransferError};

/// Why reading back failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadbackError {
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("object {key:?}: {reason}")]
    Decrypt { key: String, reason: String },
    #[error("no manifest found under {0}")]
    NoManifest(String),
    #[error("verification failed with {} finding(s):\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Findings(Vec<Finding>),
}

pub use crate::pipe::decrypt_stream;

/// The manifest at `key`, or the newest one.
pub async fn manifest(
    store: &dyn ObjectStore,
    keys: &KeyRing,
    key: Option<&str>,
) -> Result<(String, Manifest), ReadbackError> {
    match key {
        Some(k) => Ok((
            k.to_string(),
            transfer::read_manifest(store, k, keys).await?,
        )),
        None => transfer::latest_manifest(store, keys)
            .await?
            .ok_or_else(|| ReadbackError::NoManifest(store.describe())),
    }
}

async fn digest(store: &dyn ObjectStore, key: &str) -> Result<(u64, String), StorageError> {
    let mut s = store.get(key, None).await?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(c) = s.next().await {
        let c = c?;
        h.update(&c);
        n += c.len() as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

async fn plaintext_digest(
    store: &dyn ObjectStore,
    keys: Arc<KeyRing>,
    key: &str,
) -> Result<(u64, String), ReadbackError> {
    let mut s = decrypt_stream(store.get(key, None).await?, keys, key.to_string());
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(c) = s.next().await {
        let c = c.map_err(from_stream)?;
        h.update(&c);
        n += c.len() as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Decryption and digest failures travel through byte streams as
/// `StorageError::Source`; turn them back into a decryption error.
fn from_stream(e: StorageError) -> ReadbackError {
    match e {
        StorageError::Source { key, reason, .. } => ReadbackError::Decrypt { key, reason },
        other => ReadbackError::Storage(other),
    }
}

/// Reads and verifies every manifest of the destination and checks that they
/// form one chain (`anchor`: and reach the operator's record); the first
/// break is the error. How many manifests there are, and the newest one's place.
pub async fn verify_chain(
    store: &dyn ObjectStore,
    keys: &KeyRing,
    anchor: Option<&Anchor>,
) -> Result<(usize, Option<Anchor>), ReadbackError> {
    let mut names: Vec<String> = store
        .list()
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| transfer::is_manifest_key(k))
        .collect();
    names.sort_by(|a, b| transfer::sort_key(a).cmp(&transfer::sort_key(b)));
    let mut chain = Vec::with_capacity(names.len());
    for name in names {
        let m = transfer::read_manifest(store, &name, keys).await?;
        chain.push((name, m));
    }
    check_chain(&chain).map_err(TransferError::from)?;
    if let Some(anchor) = anchor {
        let from = chain
            .iter()
            .position(|(_, m)| m.sequence() == anchor.sequence)
            .unwrap_or(chain.len().saturating_sub(1));
        check_anchor(&chain[from..], anchor).map_err(TransferError::from)?;
    }
    let newest = chain.last().map(|(_, m)| Anchor {
        sequence: m.sequence(),
        link: m.link(),
    });
    Ok((chain.len(), newest))
}

/// Checks every object of the manifest against the store: present, same size
/// and ciphertext digest, and (with `deep`) decrypting to the recorded plaintext
/// digest; and that the store holds no object the manifest does not list.
pub async fn verify(
    store: &dyn ObjectStore,
    keys: Arc<KeyRing>,
    manifest_key: Option<&str>,
    deep: bool,
) -> Result<(String, Manifest), ReadbackError> {
    let (mkey, manifest) = manifest(store, &keys, manifest_key).await?;
    let present: BTreeSet<String> = store
        .list()
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !k.starts_with(".ferry/"))
        .collect();
    let mut findings = Vec::new();
    let listed: BTreeSet<&str> = manifest.objects.iter().map(|e| e.key.as_str()).collect();
    for e in &manifest.objects {
        if !present.contains(&e.key) {
            findings.push(Finding::Missing(e.key.clone()));
            continue;
        }
        findings.extend(check_entry(store, keys.clone(), e, deep).await?);
    }
    for k in &present {
        if !listed.contains(k.as_str()) {
            findings.push(Finding::Extra(k.clone()));
        }
    }
    if findings.is_empty() {
        Ok((mkey, manifest))
    } else {
        findings.sort();
        Err(ReadbackError::Findings(findings))
    }
}

async fn check_entry(
    store: &dyn ObjectStore,
    keys: Arc<KeyRing>,
    e: &ManifestEntry,
    deep: bool,
) -> Result<Option<Finding>, ReadbackError> {
    let (size, sha) = digest(store, &e.key).await?;
    if size != e.encrypted_size {
        return Ok(Some(Finding::Changed {
            key: e.key.clone(),
            what: "stored size",
        }));
    }
    if sha != e.encrypted_sha256 {
        return Ok(Some(Finding::Changed {
            key: e.key.clone(),
            what: "stored SHA-256",
        }));
    }
    if deep {
        match plaintext_digest(store, keys, &e.key).await {
            Ok((n, p)) if n == e.size && p == e.sha256 => {}
            Ok(_) => {
                return Ok(Some(Finding::Changed {
                    key: e.key.clone(),
                    what: "plaintext",
                }));
            }
            Err(ReadbackError::Decrypt { .. }) => {
                return Ok(Some(Finding::Changed {
                    key: e.key.clone(),
                    what: "decryption",
                }));
            }
            Err(other) => return Err(other),
        }
    }
    Ok(None)
}

/// Decrypts every object of a verified manifest into `out`, checking each
/// plaintext against its recorded size and digest.
pub async fn decrypt_all(
    store: &dyn ObjectStore,
    keys: Arc<KeyRing>,
    manifest_key: Option<&str>,
    out: &dyn ObjectStore,
) -> Result<(Manifest, u64), ReadbackError> {
    let (_, manifest) = verify(store, keys.clone(), manifest_key, false).await?;
    let mut bytes = 0;
    for e in &manifest.objects {
        let plain = checked(
            decrypt_stream(store.get(&e.key, None).await?, keys.clone(), e.key.clone()),
            e.clone(),
        );
        bytes += out.put(&e.key, plain).await.map_err(from_stream)?;
    }
    Ok((manifest, bytes))
}

/// Wraps a plaintext stream so it fails (and the writer discards the object) if
/// its size or SHA-256 differ from the manifest entry.
fn checked(input: ByteStream, entry: ManifestEntry) -> ByteStream {
    let state = (input, Sha256::new(), 0u64, entry, false);
    let s = futures::stream::unfold(state, |(mut input, mut h, mut n, entry, done)| async move {
        if done {
            return None;
        }
        match input.next().await {
            Some(Ok(c)) => {
                h.update(&c);
                n += c.len() as u64;
                Some((Ok(c), (input, h, n, entry, false)))
            }
            Some(Err(e)) => Some((Err(e), (input, h, n, entry, true))),
            None => {
                let sha = hex::encode(h.clone().finalize());
                if n == entry.size && sha == entry.sha256 {
                    None
                } else {
                    let e = StorageError::Source {
                        endpoint: "decrypt".into(),
                        key: entry.key.clone(),
                        reason: "plaintext does not match the manifest".into(),
                    };
                    Some((Err(e), (input, h, n, entry, true)))
                }
            }
        }
    });
    s.boxed()
}
