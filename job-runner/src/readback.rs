//! Reading back what Ferry wrote: decrypt objects and verify a destination
//! against its manifest.

use std::cmp::Ordering;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::crypto::manifest::RECORDS_DIR;
use crate::crypto::{
    Anchor, Finding, KeyRing, Manifest, ManifestEntry, PublicKeys, check_anchor, check_chain,
};
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
    #[error("{0} needs the key-encryption key (--kek)")]
    NeedsKek(&'static str),
}

/// What a reader checks manifests with: the KEKs (the MAC, and decryption),
/// the public keys of the signing keys (the signatures), or both. With public
/// keys, the manifest read is signed, and so is every manifest of the chain
/// from the first signed one on (older ones predate signing).
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// The KEKs.
    pub keys: Option<Arc<KeyRing>>,
    /// The public keys.
    pub public_keys: PublicKeys,
}

impl From<Arc<KeyRing>> for Trust {
    fn from(keys: Arc<KeyRing>) -> Self {
        Self {
            keys: Some(keys),
            public_keys: PublicKeys::default(),
        }
    }
}

/// How a manifest was found authentic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Checked {
    mac: bool,
    signature: bool,
}

impl Trust {
    fn keys(&self, what: &'static str) -> Result<Arc<KeyRing>, ReadbackError> {
        self.keys.clone().ok_or(ReadbackError::NeedsKek(what))
    }

    /// Checks `m`, stored at `key`, with what is trusted; an unsigned manifest
    /// passes the signature check only when `signed` is false.
    async fn check(&self, key: &str, m: &Manifest, signed: bool) -> Result<Checked, TransferError> {
        let integrity = |source| TransferError::Integrity {
            key: key.to_string(),
            source,
        };
        let mut checked = Checked::default();
        if let Some(keys) = &self.keys {
            transfer::records::resolve_key(keys, key, m).await?;
            m.verify_at(keys, key).map_err(integrity)?;
            checked.mac = true;
        }
        if !self.public_keys.is_empty() && (signed || m.signature.is_some()) {
            m.verify_signature_at(&self.public_keys, key)
                .map_err(integrity)?;
            checked.signature = true;
        }
        Ok(checked)
    }

    /// Reads the manifest at `key` and checks it; it must be signed when
    /// public keys are trusted.
    async fn read(&self, store: &dyn ObjectStore, key: &str) -> Result<Manifest, TransferError> {
        let m = transfer::read_manifest_unverified(store, key).await?;
        self.check(key, &m, true).await?;
        Ok(m)
    }
}

pub use crate::pipe::decrypt_stream;

/// The manifest at `key`, or the newest one, checked.
pub async fn manifest(
    store: &dyn ObjectStore,
    trust: &Trust,
    key: Option<&str>,
) -> Result<(String, Manifest), ReadbackError> {
    let Some(key) = key else {
        let listed = match store.list().await {
            Err(StorageError::NoSuchContainer { .. }) => Vec::new(),
            listed => listed?,
        };
        // Newest name first; a file there that is not one of the
        // Connector's manifests (anyone who can write the store can put one
        // under any name) is passed over, said on stderr.
        let mut names: Vec<&str> = listed
            .iter()
            .map(|o| o.key.as_str())
            .filter(|k| transfer::is_manifest_key(k))
            .collect();
        names.sort_by(|a, b| transfer::records::sort_key(b).cmp(&transfer::records::sort_key(a)));
        let mut passed_over = 0;
        for key in names {
            match trust.read(store, key).await {
                Ok(m) => {
                    transfer::records::not_in_the_future(key, &m)?;
                    return Ok((key.to_string(), m));
                }
                Err(e)
                    if transfer::records::not_a_manifest(&e)
                        && passed_over < transfer::records::MAX_FOREIGN_MANIFESTS =>
                {
                    passed_over += 1;
                    tracing::warn!(key, error = %e, "passing over a file that is not one of the Connector's manifests");
                }
                Err(e) => return Err(e.into()),
            }
        }
        return Err(ReadbackError::NoManifest(store.describe()));
    };
    Ok((key.to_string(), trust.read(store, key).await?))
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

/// What [`verify_chain`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// How many manifests form the chain.
    pub manifests: usize,
    /// How many of them carry a signature that verified.
    pub signed: usize,
    /// How many could not be checked: unsigned, from before the first signed
    /// one, with no KEK given.
    pub unchecked: usize,
    /// The newest one's place.
    pub newest: Option<Anchor>,
    /// Files under the manifests' folder that are not the Connector's
    /// manifests (not JSON, or not verifying with what is trusted), passed
    /// over: whoever can write the store can put one there.
    pub foreign: Vec<String>,
}

/// Reads and verifies every manifest of the destination and checks that they
/// form one chain (`anchor`: and reach the operator's record); the first
/// break is the error.
pub async fn verify_chain(
    store: &dyn ObjectStore,
    trust: impl Into<Trust>,
    anchor: Option<&Anchor>,
) -> Result<ChainReport, ReadbackError> {
    let trust = trust.into();
    let mut names: Vec<String> = store
        .list()
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| transfer::is_manifest_key(k))
        .collect();
    names.sort_by(|a, b| transfer::sort_key(a).cmp(&transfer::sort_key(b)));
    let mut chain = Vec::with_capacity(names.len());
    let mut report = ChainReport::default();
    let last = names.len().saturating_sub(1);
    for (i, name) in names.into_iter().enumerate() {
        let read = match transfer::read_manifest_unverified(store, &name).await {
            // From the first signed manifest on, and for the newest, a
            // signature is asked for: one dropped or made without the key is
            // found.
            Ok(m) => trust
                .check(&name, &m, report.signed > 0 || i == last)
                .await
                .map(|checked| (m, checked)),
            Err(e) => Err(e),
        };
        let (m, checked) = match read {
            Ok(read) => read,
            Err(e)
                if transfer::records::not_a_manifest(&e)
                    && report.foreign.len() < transfer::records::MAX_FOREIGN_MANIFESTS =>
            {
                tracing::warn!(key = name, error = %e, "passing over a file that is not one of the Connector's manifests");
                report.foreign.push(name);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        report.signed += usize::from(checked.signature);
        report.unchecked += usize::from(!checked.mac && !checked.signature);
        chain.push((name, m));
    }
    if !report.foreign.is_empty()
        && let Some((name, m)) = chain.last()
    {
        // The newest of the Connector's manifests must be signed, whatever
        // file was named after it.
        trust.check(name, m, true).await?;
    }
    check_chain(&chain).map_err(TransferError::from)?;
    if let Some(anchor) = anchor {
        let from = chain
            .iter()
            .position(|(_, m)| m.sequence() == anchor.sequence)
            .unwrap_or(chain.len().saturating_sub(1));
        check_anchor(&chain[from..], anchor).map_err(TransferError::from)?;
    }
    report.manifests = chain.len();
    report.newest = chain.last().map(|(_, m)| Anchor {
        sequence: m.sequence(),
        link: m.link(),
    });
    Ok(report)
}

/// A manifest that verified against its destination.
#[derive(Clone, Debug)]
pub struct Verified {
    /// Its key.
    pub key: String,
    /// The manifest (for version 6, without its entries).
    pub manifest: Manifest,
    /// How many objects it lists.
    pub objects: u64,
}

/// Checks every object of the manifest against the store: present, same size
/// and ciphertext digest, and (with `deep`) decrypting to the recorded plaintext
/// digest; and that the store holds no object the manifest does not list. The
/// manifest's entries and the store's listing are merged in key order as they
/// come, a segment and a page at a time.
pub async fn verify(
    store: &dyn ObjectStore,
    trust: impl Into<Trust>,
    manifest_key: Option<&str>,
    deep: bool,
) -> Result<Verified, ReadbackError> {
    let trust = trust.into();
    let keys = if deep {
        Some(trust.keys("--deep")?)
    } else {
        None
    };
    let (mkey, manifest) = manifest(store, &trust, manifest_key).await?;
    let mut findings = Vec::new();
    // Ferry's own records the manifest lists (the run's audit lines).
    for e in &manifest.records {
        match check_entry(store, keys.clone(), e).await {
            Err(ReadbackError::Storage(StorageError::NotFound { .. })) => {
                findings.push(Finding::Missing(e.key.clone()));
            }
            found => findings.extend(found?),
        }
    }
    // The objects, merged with the listing; Ferry's records are not objects.
    let mut listed = store
        .list_from("")
        .try_filter(|o| futures::future::ready(!o.key.starts_with(RECORDS_DIR)));
    let mut entries = transfer::entries(store, &manifest);
    let mut next_listed = listed.try_next().await?;
    let mut next_entry = entries.try_next().await?;
    let mut objects = 0;
    loop {
        let order = match (&next_listed, &next_entry) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(l), Some(e)) => l.key.cmp(&e.key),
        };
        if order != Ordering::Greater
            && let Some(l) = next_listed.take()
        {
            if order == Ordering::Less {
                findings.push(Finding::Extra(l.key));
            }
            next_listed = listed.try_next().await?;
        }
        if order != Ordering::Less
            && let Some(e) = next_entry.take()
        {
            objects += 1;
            if order == Ordering::Greater {
                findings.push(Finding::Missing(e.key));
            } else {
                findings.extend(check_entry(store, keys.clone(), &e).await?);
            }
            next_entry = entries.try_next().await?;
        }
    }
    if findings.is_empty() {
        Ok(Verified {
            key: mkey,
            manifest,
            objects,
        })
    } else {
        findings.sort();
        Err(ReadbackError::Findings(findings))
    }
}

/// Checks the stored object of `e`, and with `keys` (deep) its plaintext.
async fn check_entry(
    store: &dyn ObjectStore,
    keys: Option<Arc<KeyRing>>,
    e: &ManifestEntry,
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
    if let Some(keys) = keys {
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
    trust: impl Into<Trust>,
    manifest_key: Option<&str>,
    out: &dyn ObjectStore,
) -> Result<(Verified, u64), ReadbackError> {
    let trust = trust.into();
    let keys = trust.keys("decryption")?;
    let verified = verify(store, trust, manifest_key, false).await?;
    let manifest = &verified.manifest;
    let mut bytes = 0;
    // The run's audit lines come out too, under the same keys (the bytes
    // counted are the objects').
    for e in &manifest.records {
        let plain = checked(
            decrypt_stream(store.get(&e.key, None).await?, keys.clone(), e.key.clone()),
            e.clone(),
        );
        out.put(&e.key, plain).await.map_err(from_stream)?;
    }
    let mut entries = transfer::entries(store, manifest);
    while let Some(e) = entries.try_next().await? {
        let plain = checked(
            decrypt_stream(store.get(&e.key, None).await?, keys.clone(), e.key.clone()),
            e.clone(),
        );
        bytes += out.put(&e.key, plain).await.map_err(from_stream)?;
    }
    drop(entries);
    Ok((verified, bytes))
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
