//! The run manifest: every object a run left at the destination, with sizes and
//! SHA-256 digests of plaintext and ciphertext, authenticated by HMAC-SHA256
//! under a key derived from the KEK.
//!
//! The MAC covers a canonical binary encoding (below), not the JSON text, so it
//! does not depend on how the JSON is formatted; the order of `objects` is part
//! of what is authenticated. Version 2 adds, per entry, the source size and the
//! columns kept by data minimisation, and the erasure tombstones; version 1
//! manifests still verify.
//!
//! ```text
//! mac_input = format || 0x00 || str(run) || str(connector) || str(created)
//!             || str(kek_id) || u64(count) || entry* || [v2: u64(erased) || tombstone*]
//! entry     = str(key) || u64(size) || str(sha256) || u64(encrypted_size)
//!             || str(encrypted_sha256) || opt(source_modified) || opt(source_etag)
//!             || [v2: optu64(source_size) || u64(fields) || str(field)*]
//! tombstone = str(key) || str(run) || str(erased)
//! str(s)    = u64(len(s)) || s            u64 = 8 bytes big endian
//! opt(None) = 0x00            opt(Some(s)) = 0x01 || str(s)
//! optu64(None) = 0x00         optu64(Some(n)) = 0x01 || u64(n)
//! mac       = hex(HMAC-SHA256(HKDF-SHA256(KEK, info = "ferry/manifest-mac/v1"), mac_input))
//! ```

use std::collections::{BTreeMap, BTreeSet};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::keys::{Kek, KeyError, KeyRing};

/// The format tag of manifests this code writes.
pub const FORMAT: &str = "ferry-manifest/v2";
/// The first format, still read: no source sizes, fields or tombstones.
pub const FORMAT_V1: &str = "ferry-manifest/v1";

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
    /// Size of the source object when it differs from `size` (a minimised copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_size: Option<u64>,
    /// The columns data minimisation kept; empty when the object was copied whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// A source key whose copy an erasure run removed: later runs do not copy it
/// again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Tombstone {
    /// Key relative to the source (and destination) prefix.
    pub key: String,
    /// The erasure run.
    pub run: String,
    /// When it was erased (RFC 3339).
    pub erased: String,
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
    /// Source keys erased on request, in order; never copied again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erased: Vec<Tombstone>,
    /// Hex HMAC-SHA256 over the canonical encoding.
    pub mac: String,
}

/// What verification of a manifest found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest format {0:?} is not supported (this build reads {FORMAT_V1} and {FORMAT})")]
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
        Self::sign_with_tombstones(kek, run, connector, created, objects, Vec::new())
    }

    /// A signed manifest of `objects` and erasure tombstones.
    pub fn sign_with_tombstones(
        kek: &Kek,
        run: &str,
        connector: &str,
        created: &str,
        objects: Vec<ManifestEntry>,
        erased: Vec<Tombstone>,
    ) -> Self {
        let mut m = Self {
            format: FORMAT.to_string(),
            run: run.to_string(),
            connector: connector.to_string(),
            created: created.to_string(),
            kek_id: kek.id().to_string(),
            objects,
            erased,
            mac: String::new(),
        };
        m.mac = hex::encode(m.mac_with(kek).finalize().into_bytes());
        m
    }

    /// Signs this manifest again (after entries were removed) with `kek`.
    pub fn resign(&mut self, kek: &Kek) {
        self.format = FORMAT.to_string();
        self.kek_id = kek.id().to_string();
        self.mac = hex::encode(self.mac_with(kek).finalize().into_bytes());
    }

    fn canonical(&self) -> Vec<u8> {
        let v2 = self.format != FORMAT_V1;
        let mut out = Vec::with_capacity(128 + self.objects.len() * 200);
        out.extend_from_slice(self.format.as_bytes());
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
            if v2 {
                match e.source_size {
                    None => out.push(0),
                    Some(n) => {
                        out.push(1);
                        put_u64(&mut out, n);
                    }
                }
                put_u64(&mut out, e.fields.len() as u64);
                for f in &e.fields {
                    put_str(&mut out, f);
                }
            }
        }
        if v2 {
            put_u64(&mut out, self.erased.len() as u64);
            for t in &self.erased {
                put_str(&mut out, &t.key);
                put_str(&mut out, &t.run);
                put_str(&mut out, &t.erased);
            }
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
        let v1 = self.format == FORMAT_V1;
        if !v1 && self.format != FORMAT {
            return Err(ManifestError::Format(self.format.clone()));
        }
        // Version 1 authenticates none of the newer fields: they must be absent.
        if v1
            && (!self.erased.is_empty()
                || self
                    .objects
                    .iter()
                    .any(|e| e.source_size.is_some() || !e.fields.is_empty()))
        {
            return Err(ManifestError::Mac);
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
            source_size: None,
            fields: vec![],
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

    #[test]
    fn version_2_authenticates_fields_source_sizes_and_tombstones() {
        let kek = Kek::from_bytes([9; 32]);
        let ring = KeyRing::new(vec![Kek::from_bytes([9; 32])]);
        let mut projected = entry("a.csv", 10);
        projected.source_size = Some(30);
        projected.fields = vec!["id".into(), "country".into()];
        let tomb = Tombstone {
            key: "gone.csv".into(),
            run: "erase-1".into(),
            erased: "2026-01-02T00:00:00Z".into(),
        };
        let m = Manifest::sign_with_tombstones(&kek, "r", "c", "t", vec![projected], vec![tomb]);
        assert_eq!(m.format, FORMAT);
        m.verify(&ring).unwrap();
        let mut t = m.clone();
        t.objects[0].fields.pop();
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
        let mut t = m.clone();
        t.objects[0].source_size = Some(31);
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
        let mut t = m.clone();
        t.erased.clear();
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
        let mut t = m.clone();
        t.erased[0].key = "other.csv".into();
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
        // Passing a v2 manifest off as v1 fails, with or without the new fields.
        let mut t = m.clone();
        t.format = FORMAT_V1.into();
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
        let mut plain = Manifest::sign(&kek, "r", "c", "t", vec![entry("a", 1)]);
        plain.format = FORMAT_V1.into();
        assert_eq!(plain.verify(&ring), Err(ManifestError::Mac));
        plain.resign(&kek);
        plain.verify(&ring).unwrap();
    }

    #[test]
    fn version_1_manifests_still_verify() {
        // Written by the first release: the v1 encoding, without the newer fields.
        let kek = Kek::from_bytes([9; 32]);
        let ring = KeyRing::new(vec![Kek::from_bytes([9; 32])]);
        let mut m = Manifest::sign(&kek, "r1", "ns/c", "t", vec![entry("a", 1)]);
        m.format = FORMAT_V1.into();
        m.mac = hex::encode(m.mac_with(&kek).finalize().into_bytes());
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("erased") && !json.contains("fields"));
        let back: Manifest = serde_json::from_str(&json).unwrap();
        back.verify(&ring).unwrap();
        let mut changed = back.clone();
        changed.objects[0].size = 2;
        assert_eq!(changed.verify(&ring), Err(ManifestError::Mac));
    }
}
