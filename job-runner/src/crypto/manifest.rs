//! The run manifest: every object a run left at the destination, with sizes and
//! SHA-256 digests of plaintext and ciphertext, authenticated by HMAC-SHA256
//! under a key derived from the KEK.
//!
//! The MAC covers a canonical binary encoding (below), not the JSON text, so it
//! does not depend on how the JSON is formatted; the order of `objects` is part
//! of what is authenticated.
//!
//! ```text
//! mac_input = "ferry-manifest/v1" || 0x00 || str(run) || str(connector) || str(created)
//!             || str(kek_id) || u64(count) || entry*
//! entry     = str(key) || u64(size) || str(sha256) || u64(encrypted_size)
//!             || str(encrypted_sha256) || opt(source_modified) || opt(source_etag)
//! str(s)    = u64(len(s)) || s            u64 = 8 bytes big endian
//! opt(None) = 0x00            opt(Some(s)) = 0x01 || str(s)
//! mac       = hex(HMAC-SHA256(HKDF-SHA256(KEK, info = "ferry/manifest-mac/v1"), mac_input))
//! ```

use std::collections::{BTreeMap, BTreeSet};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::keys::{Kek, KeyError, KeyRing};

/// The format tag of manifests this code writes.
pub const FORMAT: &str = "ferry-manifest/v1";

/// One object of a manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestEntry {
    /// Key relative to the destination prefix (and the source prefix).
    pub key: String,
    /// Plaintext size.
    pub size: u64,
    /// Hex SHA-256 of the plaintext.
    pub sha256: String,
    /// Size of the stored (encrypted) object.
    pub encrypted_size: u64,
    /// Hex SHA-256 of the stored (encrypted) object.
    pub encrypted_sha256: String,
    /// Last-modified time of the source object when it was read (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_modified: Option<String>,
    /// ETag or other version tag of the source object when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_etag: Option<String>,
}

/// A run manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The run that wrote it.
    pub run: String,
    /// `namespace/name` of the Connector.
    pub connector: String,
    /// When it was written (RFC 3339).
    pub created: String,
    /// Id of the KEK whose derived key made the MAC.
    pub kek_id: String,
    /// Every object of the destination that this Connector's runs wrote, in order.
    pub objects: Vec<ManifestEntry>,
    /// Hex HMAC-SHA256 over the canonical encoding.
    pub mac: String,
}

/// What verification of a manifest found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest format {0:?} is not supported (this build reads {FORMAT})")]
    Format(String),
    #[error(
        "manifest MAC does not verify: the manifest was altered, reordered or made with another key"
    )]
    Mac,
    #[error("manifest lists object {0:?} twice")]
    Duplicate(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

impl Manifest {
    /// A signed manifest of `objects`.
    pub fn sign(
        kek: &Kek,
        run: &str,
        connector: &str,
        created: &str,
        objects: Vec<ManifestEntry>,
    ) -> Self {
        let mut m = Self {
            format: FORMAT.to_string(),
            run: run.to_string(),
            connector: connector.to_string(),
            created: created.to_string(),
            kek_id: kek.id().to_string(),
            objects,
            mac: String::new(),
        };
        m.mac = hex::encode(m.mac_with(kek).finalize().into_bytes());
        m
    }

    fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.objects.len() * 200);
        out.extend_from_slice(FORMAT.as_bytes());
        out.push(0);
        put_str(&mut out, &self.run);
        put_str(&mut out, &self.connector);
        put_str(&mut out, &self.created);
        put_str(&mut out, &self.kek_id);
        put_u64(&mut out, self.objects.len() as u64);
        for e in &self.objects {
            put_str(&mut out, &e.key);
            put_u64(&mut out, e.size);
            put_str(&mut out, &e.sha256);
            put_u64(&mut out, e.encrypted_size);
            put_str(&mut out, &e.encrypted_sha256);
            put_opt(&mut out, e.source_modified.as_deref());
            put_opt(&mut out, e.source_etag.as_deref());
        }
        out
    }

    fn mac_with(&self, kek: &Kek) -> Hmac<Sha256> {
        let key = kek.manifest_mac_key();
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(&self.canonical());
        mac
    }

    /// Checks the format, the MAC (in constant time) and that no key repeats.
    pub fn verify(&self, keys: &KeyRing) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(ManifestError::Format(self.format.clone()));
        }
        let kek = keys.get(&self.kek_id)?;
        let tag = hex::decode(&self.mac).map_err(|_| ManifestError::Mac)?;
        self.mac_with(kek)
            .verify_slice(&tag)
            .map_err(|_| ManifestError::Mac)?;
        let mut seen = BTreeSet::new();
        for e in &self.objects {
            if !seen.insert(e.key.as_str()) {
                return Err(ManifestError::Duplicate(e.key.clone()));
            }
        }
        Ok(())
    }

    /// The entries by key.
    pub fn by_key(&self) -> BTreeMap<&str, &ManifestEntry> {
        self.objects.iter().map(|e| (e.key.as_str(), e)).collect()
    }
}

/// One problem found when comparing a manifest with a destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finding {
    /// Listed in the manifest, absent from the destination.
    Missing(String),
    /// In the destination, not listed in the manifest.
    Extra(String),
    /// Present, but its stored bytes differ from what the manifest says.
    Changed { key: String, what: &'static str },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Missing(k) => write!(f, "object {k:?}: listed in the manifest but missing"),
            Finding::Extra(k) => write!(f, "object {k:?}: present but not in the manifest"),
            Finding::Changed { key, what } => {
                write!(f, "object {key:?}: {what} does not match the manifest")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, n: u64) -> ManifestEntry {
        ManifestEntry {
            key: key.into(),
            size: n,
            sha256: "aa".repeat(32),
            encrypted_size: n + 100,
            encrypted_sha256: "bb".repeat(32),
            source_modified: None,
            source_etag: Some(format!("e{n}")),
        }
    }

    #[test]
    fn detects_changes_reorders_and_foreign_keys() {
        let kek = Kek::from_bytes([9; 32]);
        let ring = KeyRing::new(vec![Kek::from_bytes([9; 32])]);
        let m = Manifest::sign(
            &kek,
            "r1",
            "ns/c",
            "2026-01-01T00:00:00Z",
            vec![entry("a", 1), entry("b", 2)],
        );
        m.verify(&ring).unwrap();
        let json = serde_json::to_string_pretty(&m).unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        back.verify(&ring).unwrap();

        let mut reordered = m.clone();
        reordered.objects.swap(0, 1);
        assert_eq!(reordered.verify(&ring), Err(ManifestError::Mac));
        let mut changed = m.clone();
        changed.objects[1].size = 3;
        assert_eq!(changed.verify(&ring), Err(ManifestError::Mac));
        let mut dropped = m.clone();
        dropped.objects.pop();
        assert_eq!(dropped.verify(&ring), Err(ManifestError::Mac));
        let other = KeyRing::new(vec![Kek::from_bytes([8; 32])]);
        assert!(matches!(
            m.verify(&other),
            Err(ManifestError::Key(KeyError::UnknownKek(_)))
        ));
        let dup = Manifest::sign(&kek, "r", "c", "t", vec![entry("a", 1), entry("a", 1)]);
        assert_eq!(dup.verify(&ring), Err(ManifestError::Duplicate("a".into())));
    }
}
