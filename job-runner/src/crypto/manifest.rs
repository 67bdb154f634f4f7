//! The run manifest: every object a run left at the destination, with sizes and
//! SHA-256 digests of plaintext and ciphertext, authenticated by HMAC-SHA256
//! under a key derived from the KEK.
//!
//! The MAC covers a canonical binary encoding (below), not the JSON text, so it
//! does not depend on how the JSON is formatted; the order of `objects` is part
//! of what is authenticated. Version 2 adds, per entry, the source size and the
//! columns kept by data minimisation, and the erasure tombstones. Version 3
//! makes the manifests of a destination a chain: each authenticates its own
//! name (so a copy under another name does not verify), its sequence number
//! and the link of the manifest it was built on (so one deleted, rolled back
//! or put out of order breaks the chain). Version 4 adds `records`: Ferry's
//! own records at the destination that the run wrote, the encrypted copy of
//! its audit lines, listed like objects. Version 5 adds `kms`: when the KEK
//! is a run key from a KMS, the run key as the KMS wrapped it, so a verifier
//! with decrypt rights on the KMS key unwraps it and derives the MAC key.
//! Older versions re-signed by an erasure under a run key carry `kms` too,
//! unauthenticated: it only says where the key is, and the key it unwraps to
//! must have the authenticated `kek_id`. Version 6 moves the entries out of
//! the manifest into content-addressed segments ([`super::segments`]): the
//! manifest is a root that lists and authenticates them, so a run rewrites
//! only the segments that changed.
//! Versions 1 to 5 still verify; the first chained manifest after versions 1
//! and 2 links to the newest of them.
//!
//! ```text
//! mac_input = format || 0x00 || str(run) || str(connector) || str(created)
//!             || str(kek_id) || body || [v2: u64(erased) || tombstone*]
//!             || [v3: str(name) || u64(sequence) || opt(previous)]
//!             || [v4: u64(records) || entry*] || [v5: opt(kms)]
//! entry     = str(key) || u64(size) || str(sha256) || u64(encrypted_size)
//!             || str(encrypted_sha256) || opt(source_modified) || opt(source_etag)
//!             || [v2: optu64(source_size) || u64(fields) || str(field)*]
//! body      = v1-v5: u64(count) || entry*
//!             v6:    u64(segments) || (str(sha256) || u64(size) || u64(count)
//!                    || str(first) || str(last))*
//! tombstone = str(key) || str(run) || str(erased)
//! str(s)    = u64(len(s)) || s            u64 = 8 bytes big endian
//! opt(None) = 0x00            opt(Some(s)) = 0x01 || str(s)
//! optu64(None) = 0x00         optu64(Some(n)) = 0x01 || u64(n)
//! mac       = hex(HMAC-SHA256(HKDF-SHA256(KEK, info = "ferry/manifest-mac/v1"), mac_input))
//!             (KEK: the run key, for a manifest with `kms`)
//! link      = hex(SHA-256("ferry-manifest-link" || 0x00 || str(name) || u64(sequence)
//!                 || opt(previous) || str(run) || str(connector) || str(created)))
//! ```
//!
//! The link covers what identifies a manifest in its chain and nothing an
//! erasure rewrites (entries, tombstones, the KEK that signed it again), so
//! erasing a key keeps every link. Versions 1 and 2 have sequence 0 and an
//! empty name in their link.
//!
//! A manifest may also carry an Ed25519 signature ([`super::signing`]) of
//! `"ferry-manifest-signature/v1" || 0x00 || mac_input`: the same bytes the
//! MAC covers, so it proves the same content to whoever holds the public key,
//! without the KEK. Neither covers the other, and a verifier with the public
//! key asks for the signature of every manifest from the first signed one on.

use std::collections::{BTreeMap, BTreeSet};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::keys::{Kek, KeyError, KeyRing};
use super::segments::{self, SegmentRef};
use super::signing::{ManifestSigner, PublicKeys, Signature};

/// What an Ed25519 signature of a manifest covers, before its canonical encoding.
const SIGNATURE_CONTEXT: &[u8] = b"ferry-manifest-signature/v1\0";

/// The format tag of manifests this code writes.
pub const FORMAT: &str = "ferry-manifest/v6";
/// Where Ferry's own records live under a destination prefix; objects never do.
pub const RECORDS_DIR: &str = ".ferry/";
/// The fifth format, still read: every entry in the manifest itself.
pub const FORMAT_V5: &str = "ferry-manifest/v5";
/// The fourth format, still read: no KMS-wrapped run key.
pub const FORMAT_V4: &str = "ferry-manifest/v4";
/// The third format, still read: no records.
pub const FORMAT_V3: &str = "ferry-manifest/v3";
/// The second format, still read: no name, sequence or link.
pub const FORMAT_V2: &str = "ferry-manifest/v2";
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
    /// Version 3: the manifest's own key under the destination prefix.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Version 3: its place in the destination's chain, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// Version 3: the link of the manifest it was built on; none for the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Every object of the destination that this Connector's runs wrote, in
    /// order. Version 6 stores them in `segments`, never here: in memory,
    /// they are the segments' entries once read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ManifestEntry>,
    /// Version 6: the segments holding the entries, in key order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentRef>,
    /// Source keys erased on request, in order; never copied again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erased: Vec<Tombstone>,
    /// Version 4: Ferry's own records that the run wrote under `.ferry/`
    /// (the encrypted copy of its audit lines), with sizes and digests like
    /// objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<ManifestEntry>,
    /// Version 5: when the KEK is a run key from a KMS, its KMS-wrapped form
    /// (`<kms key>:<ciphertext>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<String>,
    /// Hex HMAC-SHA256 over the canonical encoding.
    pub mac: String,
    /// An Ed25519 signature of the canonical encoding, when the Connector
    /// names a signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// What verification of a manifest found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest format {0:?} is not supported (this build reads {FORMAT_V1} to {FORMAT})")]
    Format(String),
    #[error(
        "manifest MAC does not verify: the manifest was altered, reordered or made with another key"
    )]
    Mac,
    #[error("manifest lists object {0:?} twice")]
    Duplicate(String),
    #[error("manifest entry {key:?} comes after {after:?}: entries must be in key order")]
    Unordered { key: String, after: String },
    #[error("manifest segment {segment:?} does not verify: {what}")]
    Segment { segment: String, what: &'static str },
    #[error("shard part lists {key:?}, which shard {shard} does not own")]
    NotOwned { key: String, shard: String },
    #[error(
        "shard part was planned against manifest link {found:?}, not {expected:?}: the destination changed during the run"
    )]
    OtherBase {
        found: Option<String>,
        expected: Option<String>,
    },
    #[error("manifest lists record {0:?}, which is not under {RECORDS_DIR}")]
    RecordOutside(String),
    #[error("manifest {key:?} was written as {name:?}: a copy or a rename of another manifest")]
    Misplaced { key: String, name: String },
    #[error("manifest is not signed, and signing was asked for")]
    Unsigned,
    #[error("manifest is signed by key {0}, which is not among the public keys given")]
    UnknownSigningKey(String),
    #[error(
        "manifest signature does not verify: the manifest was altered or reordered after it was signed"
    )]
    Signature,
    #[error(transparent)]
    Key(#[from] KeyError),
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// The segments a version 6 root (or a shard's part) lists, as its MAC
/// covers them.
pub(crate) fn put_segments(out: &mut Vec<u8>, segments: &[SegmentRef]) {
    put_u64(out, segments.len() as u64);
    for s in segments {
        put_str(out, &s.sha256);
        put_u64(out, s.size);
        put_u64(out, s.count);
        put_str(out, &s.first);
        put_str(out, &s.last);
    }
}

/// The HMAC-SHA256 of a record's canonical encoding under the manifest MAC
/// key `kek` derives.
pub(crate) fn record_mac(kek: &Kek, canonical: &[u8]) -> Hmac<Sha256> {
    let key = kek.manifest_mac_key();
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(canonical);
    mac
}

pub(crate) fn put_entry(out: &mut Vec<u8>, e: &ManifestEntry, v2: bool) {
    put_str(out, &e.key);
    put_u64(out, e.size);
    put_str(out, &e.sha256);
    put_u64(out, e.encrypted_size);
    put_str(out, &e.encrypted_sha256);
    put_opt(out, e.source_modified.as_deref());
    put_opt(out, e.source_etag.as_deref());
    if v2 {
        match e.source_size {
            None => out.push(0),
            Some(n) => {
                out.push(1);
                put_u64(out, n);
            }
        }
        put_u64(out, e.fields.len() as u64);
        for f in &e.fields {
            put_str(out, f);
        }
    }
}

/// Where a new manifest goes in its destination's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// Its key under the destination prefix.
    pub name: String,
    /// Its sequence number: one more than the manifest it builds on.
    pub sequence: u64,
    /// The link of the manifest it builds on.
    pub previous: Option<String>,
}

impl Place {
    /// The place after `previous` (none: the first manifest), at `name`.
    pub fn after(previous: Option<&Manifest>, name: &str) -> Self {
        Self {
            name: name.to_string(),
            sequence: previous.map_or(1, |m| m.sequence() + 1),
            previous: previous.map(Manifest::link),
        }
    }
}

/// What a manifest authenticates besides its place.
#[derive(Clone, Debug)]
pub struct Contents {
    /// The run that writes it.
    pub run: String,
    /// `namespace/name` of the Connector.
    pub connector: String,
    /// When (RFC 3339).
    pub created: String,
    /// The segments holding every object, in key order ([`segments`]).
    pub segments: Vec<SegmentRef>,
    /// Erasure tombstones, in order.
    pub erased: Vec<Tombstone>,
    /// Ferry's own records the run wrote (its audit lines), in order.
    pub records: Vec<ManifestEntry>,
}

impl Manifest {
    /// A signed manifest of `contents` at `place`.
    pub fn sign(kek: &Kek, place: Place, contents: Contents) -> Self {
        let mut m = Self {
            format: FORMAT.to_string(),
            run: contents.run,
            connector: contents.connector,
            created: contents.created,
            kek_id: kek.id().to_string(),
            name: place.name,
            sequence: Some(place.sequence),
            previous: place.previous,
            objects: Vec::new(),
            segments: contents.segments,
            erased: contents.erased,
            records: contents.records,
            kms: kek.wrapped().map(str::to_string),
            mac: String::new(),
            signature: None,
        };
        m.mac = hex::encode(m.mac_with(kek).finalize().into_bytes());
        m
    }

    /// Adds an Ed25519 signature of what the MAC covers.
    pub fn add_signature(&mut self, signer: &ManifestSigner) {
        self.signature = Some(signer.sign(&self.signed_bytes()));
    }

    /// Signs this manifest again (after entries were removed) with `kek`, and
    /// `signer` when there is one (the old signature no longer holds), keeping
    /// its place: a version 1 manifest becomes version 2, which authenticates
    /// what it holds.
    pub fn resign(&mut self, kek: &Kek, signer: Option<&ManifestSigner>) {
        if self.format == FORMAT_V1 {
            self.format = FORMAT_V2.to_string();
        }
        self.kek_id = kek.id().to_string();
        self.kms = kek.wrapped().map(str::to_string);
        self.mac = hex::encode(self.mac_with(kek).finalize().into_bytes());
        self.signature = None;
        if let Some(signer) = signer {
            self.add_signature(signer);
        }
    }

    /// Version 6, after `objects` (its entries, read from its segments) were
    /// edited: cuts them into segments again, for [`Manifest::resign`], and
    /// returns the segments, to store, leaving `objects` empty. Segments whose
    /// entries did not change keep their names.
    pub fn recut(&mut self) -> Result<Vec<segments::Segment>, ManifestError> {
        let cut = segments::cut_all(std::mem::take(&mut self.objects))?;
        self.segments = cut.iter().map(|s| s.reference.clone()).collect();
        Ok(cut)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = SIGNATURE_CONTEXT.to_vec();
        out.extend_from_slice(&self.canonical());
        out
    }

    /// Its sequence number: 0 before version 3.
    pub fn sequence(&self) -> u64 {
        self.sequence.unwrap_or(0)
    }

    /// Whether it has a place in a chain (version 3).
    pub fn is_chained(&self) -> bool {
        self.has_records() || self.format == FORMAT_V3
    }

    /// Whether it lists Ferry's own records (version 4).
    fn has_records(&self) -> bool {
        self.format == FORMAT || self.format == FORMAT_V5 || self.format == FORMAT_V4
    }

    /// Whether its entries are in segments (version 6).
    pub fn is_segmented(&self) -> bool {
        self.format == FORMAT
    }

    /// The link the next manifest names as its `previous`.
    pub fn link(&self) -> String {
        ferry_crds::chain::manifest_link(ferry_crds::chain::LinkInput {
            name: &self.name,
            sequence: self.sequence(),
            previous: self.previous.as_deref(),
            run: &self.run,
            connector: &self.connector,
            created: &self.created,
        })
    }

    fn canonical(&self) -> Vec<u8> {
        let v2 = self.format != FORMAT_V1;
        let v3 = self.is_chained();
        let v4 = self.has_records();
        let v5 = self.format == FORMAT || self.format == FORMAT_V5;
        let v6 = self.is_segmented();
        let mut out =
            Vec::with_capacity(128 + self.objects.len() * 200 + self.segments.len() * 200);
        out.extend_from_slice(self.format.as_bytes());
        out.push(0);
        put_str(&mut out, &self.run);
        put_str(&mut out, &self.connector);
        put_str(&mut out, &self.created);
        put_str(&mut out, &self.kek_id);
        if v6 {
            put_segments(&mut out, &self.segments);
        } else {
            put_u64(&mut out, self.objects.len() as u64);
            for e in &self.objects {
                put_entry(&mut out, e, v2);
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
        if v3 {
            put_str(&mut out, &self.name);
            put_u64(&mut out, self.sequence());
            put_opt(&mut out, self.previous.as_deref());
        }
        if v4 {
            put_u64(&mut out, self.records.len() as u64);
            for e in &self.records {
                put_entry(&mut out, e, true);
            }
        }
        if v5 {
            put_opt(&mut out, self.kms.as_deref());
        }
        out
    }

    fn mac_with(&self, kek: &Kek) -> Hmac<Sha256> {
        record_mac(kek, &self.canonical())
    }

    /// Checks the format, the MAC (in constant time) and that no key repeats.
    pub fn verify(&self, keys: &KeyRing) -> Result<(), ManifestError> {
        self.check_shape()?;
        let kek = keys.get(&self.kek_id)?;
        let tag = hex::decode(&self.mac).map_err(|_| ManifestError::Mac)?;
        self.mac_with(&kek)
            .verify_slice(&tag)
            .map_err(|_| ManifestError::Mac)?;
        self.check_unique()
    }

    /// Checks the format, the signature with one of `keys` (no KEK needed)
    /// and that no key repeats.
    pub fn verify_signature(&self, keys: &PublicKeys) -> Result<(), ManifestError> {
        self.check_shape()?;
        let signature = self.signature.as_ref().ok_or(ManifestError::Unsigned)?;
        let key = keys
            .get(&signature.key_id)
            .ok_or_else(|| ManifestError::UnknownSigningKey(signature.key_id.clone()))?;
        if !key.verifies(&self.signed_bytes(), signature) {
            return Err(ManifestError::Signature);
        }
        self.check_unique()
    }

    /// Whether the fields present are those its format authenticates.
    fn check_shape(&self) -> Result<(), ManifestError> {
        let v1 = self.format == FORMAT_V1;
        if !v1 && self.format != FORMAT_V2 && !self.is_chained() {
            return Err(ManifestError::Format(self.format.clone()));
        }
        // Older versions authenticate none of the newer fields: they must be absent.
        let unchained = self.name.is_empty() && self.sequence.is_none() && self.previous.is_none();
        if (v1
            && (!self.erased.is_empty()
                || self
                    .objects
                    .iter()
                    .any(|e| e.source_size.is_some() || !e.fields.is_empty())))
            || (!self.is_chained() && !unchained)
            || (self.is_chained() && self.sequence.is_none())
            || (!self.has_records() && !self.records.is_empty())
            || (!self.is_segmented() && !self.segments.is_empty())
            || (self.is_segmented() && !self.objects.is_empty())
        {
            return Err(ManifestError::Mac);
        }
        Ok(())
    }

    fn check_unique(&self) -> Result<(), ManifestError> {
        if self.is_segmented() {
            // Entries in segments: ordered, non-overlapping segments hold
            // each key once.
            segments::check_refs(&self.segments)?;
        }
        let mut seen = BTreeSet::new();
        for e in self.objects.iter().chain(&self.records) {
            if !seen.insert(e.key.as_str()) {
                return Err(ManifestError::Duplicate(e.key.clone()));
            }
        }
        if let Some(r) = self
            .records
            .iter()
            .find(|r| !r.key.starts_with(RECORDS_DIR))
        {
            return Err(ManifestError::RecordOutside(r.key.clone()));
        }
        Ok(())
    }

    /// [`Manifest::verify`], and that a chained manifest is stored under the
    /// name it was written with.
    pub fn verify_at(&self, keys: &KeyRing, key: &str) -> Result<(), ManifestError> {
        self.verify(keys)?;
        self.check_place(key)
    }

    /// [`Manifest::verify_signature`], and that a chained manifest is stored
    /// under the name it was written with.
    pub fn verify_signature_at(&self, keys: &PublicKeys, key: &str) -> Result<(), ManifestError> {
        self.verify_signature(keys)?;
        self.check_place(key)
    }

    fn check_place(&self, key: &str) -> Result<(), ManifestError> {
        if self.is_chained() && self.name != key {
            return Err(ManifestError::Misplaced {
                key: key.to_string(),
                name: self.name.clone(),
            });
        }
        Ok(())
    }

    /// The entries by key.
    pub fn by_key(&self) -> BTreeMap<&str, &ManifestEntry> {
        self.objects.iter().map(|e| (e.key.as_str(), e)).collect()
    }
}

/// The newest manifest a destination had when the operator last looked: the
/// sequence and link of the last successful run's manifest, kept where only the
/// operator writes and handed to the next run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Its sequence number.
    pub sequence: u64,
    /// Its link.
    pub link: String,
}

impl std::str::FromStr for Anchor {
    type Err = String;

    /// `SEQUENCE:LINK`, as the operator passes it (the rule the operator
    /// checks a reported place with: [`ferry_crds::chain::Place`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let place: ferry_crds::chain::Place = s.parse()?;
        Ok(Self {
            sequence: place.sequence,
            link: place.link,
        })
    }
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.sequence, self.link)
    }
}

/// Where a destination's chain of manifests breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error(
        "manifest {key:?} has sequence {found} where {expected} was expected: a manifest before it was deleted, or two runs built on the same one"
    )]
    Sequence {
        key: String,
        expected: u64,
        found: u64,
    },
    #[error("manifest {key:?} does not build on the manifest before it ({before:?})")]
    Link { key: String, before: Option<String> },
    #[error(
        "manifest {key:?} has no place in the chain but follows one that has: an older manifest put back under a later name"
    )]
    Unchained { key: String },
    #[error(
        "the newest manifest {key:?} has sequence {found}, but the operator recorded {anchor}: the destination was rolled back"
    )]
    Rollback {
        key: String,
        found: u64,
        anchor: u64,
    },
    #[error(
        "manifest {key:?} has the sequence the operator recorded ({sequence}) but another link: it is not the manifest the last run wrote"
    )]
    NotAnchor { key: String, sequence: u64 },
    #[error("manifest {key:?} was created at {created}, in the future")]
    Future { key: String, created: String },
}

/// Checks that `manifests` (each already verified, in key order, oldest
/// first) form one chain: unchained ones (versions 1 and 2) first, then each
/// chained one numbered one more than the one before and naming its link.
pub fn check_chain(manifests: &[(String, Manifest)]) -> Result<(), ChainBreak> {
    links(None, manifests)
}

/// Checks that `manifests` build one by one on `before`.
fn links<'a>(
    mut before: Option<&'a Manifest>,
    manifests: &'a [(String, Manifest)],
) -> Result<(), ChainBreak> {
    for (key, m) in manifests {
        if !m.is_chained() {
            if before.is_some_and(Manifest::is_chained) {
                return Err(ChainBreak::Unchained { key: key.clone() });
            }
        } else {
            let expected = Place::after(before, &m.name);
            if m.sequence() != expected.sequence {
                return Err(ChainBreak::Sequence {
                    key: key.clone(),
                    expected: expected.sequence,
                    found: m.sequence(),
                });
            }
            if m.previous != expected.previous {
                return Err(ChainBreak::Link {
                    key: key.clone(),
                    before: before.map(|b| b.name.clone()).filter(|n| !n.is_empty()),
                });
            }
        }
        before = Some(m);
    }
    Ok(())
}

/// Checks that the newest manifests of a destination (`tail`, in key order,
/// oldest first, newest last) reach back to `anchor`: the first of them is the
/// anchor's manifest, and the rest build on it one by one. A newest manifest
/// older than the anchor is a rollback.
pub fn check_anchor(tail: &[(String, Manifest)], anchor: &Anchor) -> Result<(), ChainBreak> {
    let (Some((first_key, first)), Some((newest_key, newest))) = (tail.first(), tail.last()) else {
        return Ok(());
    };
    if newest.sequence() < anchor.sequence {
        return Err(ChainBreak::Rollback {
            key: newest_key.clone(),
            found: newest.sequence(),
            anchor: anchor.sequence,
        });
    }
    if first.sequence() != anchor.sequence || first.link() != anchor.link {
        return Err(ChainBreak::NotAnchor {
            key: first_key.clone(),
            sequence: anchor.sequence,
        });
    }
    // The anchor's manifest may be a version 1 or 2 one: the chain starts on it.
    links(Some(first), &tail[1..])
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

    fn contents(
        run: &str,
        objects: Vec<ManifestEntry>,
        erased: Vec<Tombstone>,
    ) -> (Contents, Vec<ManifestEntry>) {
        let c = Contents {
            run: run.into(),
            connector: "ns/c".into(),
            created: "2026-01-01T00:00:00Z".into(),
            segments: vec![],
            erased,
            records: vec![],
        };
        (c, objects)
    }

    /// A version 5 manifest: its entries in the manifest itself.
    fn inline(kek: &Kek, place: Place, (c, objects): (Contents, Vec<ManifestEntry>)) -> Manifest {
        let mut m = Manifest::sign(kek, place, c);
        m.format = FORMAT_V5.into();
        m.objects = objects;
        m.mac = hex::encode(m.mac_with(kek).finalize().into_bytes());
        m
    }

    /// A manifest as an older release wrote it: `format`, no place.
    fn legacy(kek: &Kek, format: &str, objects: Vec<ManifestEntry>) -> Manifest {
        let mut m = inline(
            kek,
            Place::after(None, ""),
            contents("old", objects, vec![]),
        );
        m.format = format.into();
        m.name.clear();
        m.sequence = None;
        m.mac = hex::encode(m.mac_with(kek).finalize().into_bytes());
        m
    }

    fn keys() -> (Kek, KeyRing) {
        (
            Kek::from_bytes([9; 32]),
            KeyRing::new(vec![Kek::from_bytes([9; 32])]),
        )
    }

    #[test]
    fn detects_changes_reorders_and_foreign_keys() {
        let (kek, ring) = keys();
        let place = Place::after(None, "m1");
        let m = inline(
            &kek,
            place.clone(),
            contents("r1", vec![entry("a", 1), entry("b", 2)], vec![]),
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
        let dup = inline(
            &kek,
            place,
            contents("r", vec![entry("a", 1), entry("a", 1)], vec![]),
        );
        assert_eq!(dup.verify(&ring), Err(ManifestError::Duplicate("a".into())));
    }

    #[test]
    fn version_2_fields_source_sizes_and_tombstones_are_authenticated() {
        let (kek, ring) = keys();
        let mut projected = entry("a.csv", 10);
        projected.source_size = Some(30);
        projected.fields = vec!["id".into(), "country".into()];
        let tomb = Tombstone {
            key: "gone.csv".into(),
            run: "erase-1".into(),
            erased: "2026-01-02T00:00:00Z".into(),
        };
        let m = inline(
            &kek,
            Place::after(None, "m"),
            contents("r", vec![projected], vec![tomb]),
        );
        assert_eq!(m.format, FORMAT_V5);
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
        // Passing a newer manifest off as an older one fails, with or without
        // the newer fields.
        for older in [FORMAT_V1, FORMAT_V2] {
            let mut t = m.clone();
            t.format = older.into();
            assert_eq!(t.verify(&ring), Err(ManifestError::Mac), "{older}");
        }
        let mut plain = legacy(&kek, FORMAT_V1, vec![entry("a", 1)]);
        plain.verify(&ring).unwrap();
        plain.resign(&kek, None);
        assert_eq!(
            plain.format, FORMAT_V2,
            "signed again, it authenticates more"
        );
        plain.verify(&ring).unwrap();
    }

    #[test]
    fn versions_1_and_2_still_verify() {
        // Written by the first releases: their encodings, without the newer fields.
        let (kek, ring) = keys();
        for format in [FORMAT_V1, FORMAT_V2] {
            let m = legacy(&kek, format, vec![entry("a", 1)]);
            let json = serde_json::to_string(&m).unwrap();
            assert!(
                !json.contains("erased") && !json.contains("sequence") && !json.contains("name")
            );
            let back: Manifest = serde_json::from_str(&json).unwrap();
            back.verify(&ring).unwrap();
            back.verify_at(&ring, "any/key.json").unwrap();
            let mut changed = back.clone();
            changed.objects[0].size = 2;
            assert_eq!(changed.verify(&ring), Err(ManifestError::Mac));
        }
    }

    #[test]
    fn a_manifest_copied_under_another_name_does_not_verify() {
        let (kek, ring) = keys();
        let m = inline(
            &kek,
            Place::after(None, "m/1.json"),
            contents("r", vec![], vec![]),
        );
        m.verify_at(&ring, "m/1.json").unwrap();
        assert_eq!(
            m.verify_at(&ring, "m/9.json"),
            Err(ManifestError::Misplaced {
                key: "m/9.json".into(),
                name: "m/1.json".into()
            })
        );
        let mut renamed = m.clone();
        renamed.name = "m/9.json".into();
        assert_eq!(
            renamed.verify_at(&ring, "m/9.json"),
            Err(ManifestError::Mac)
        );
    }

    /// A chain of `n` manifests after an optional version 2 one.
    fn chain(kek: &Kek, after_legacy: bool, n: usize) -> Vec<(String, Manifest)> {
        let mut out: Vec<(String, Manifest)> = Vec::new();
        if after_legacy {
            out.push((
                "m/0.json".into(),
                legacy(kek, FORMAT_V2, vec![entry("a", 1)]),
            ));
        }
        for i in 1..=n {
            let name = format!("m/{i}.json");
            let place = Place::after(out.last().map(|(_, m)| m), &name);
            let m = inline(
                kek,
                place,
                contents(&format!("r{i}"), vec![entry("a", 1)], vec![]),
            );
            out.push((name, m));
        }
        out
    }

    #[test]
    fn a_chain_is_numbered_and_linked_from_the_last_unchained_manifest() {
        let (kek, _) = keys();
        let c = chain(&kek, true, 3);
        check_chain(&c).unwrap();
        assert_eq!(c[1].1.sequence(), 1);
        assert_eq!(
            c[1].1.previous,
            Some(c[0].1.link()),
            "the upgrade links to the v2 manifest"
        );
        assert_eq!(c[3].1.sequence(), 3);
        check_chain(&chain(&kek, false, 3)).unwrap();
    }

    #[test]
    fn a_chain_break_in_the_middle_is_found_and_named() {
        let (kek, _) = keys();
        let mut deleted = chain(&kek, false, 4);
        deleted.remove(1);
        assert_eq!(
            check_chain(&deleted),
            Err(ChainBreak::Sequence {
                key: "m/3.json".into(),
                expected: 2,
                found: 3
            })
        );
        let mut swapped = chain(&kek, false, 4);
        swapped.swap(1, 2);
        assert!(
            matches!(check_chain(&swapped), Err(ChainBreak::Sequence { key, .. }) if key == "m/3.json")
        );
        let mut legacy_back = chain(&kek, true, 2);
        let old = legacy_back[0].clone();
        legacy_back.push(("m/9.json".into(), old.1));
        assert_eq!(
            check_chain(&legacy_back),
            Err(ChainBreak::Unchained {
                key: "m/9.json".into()
            })
        );
    }

    #[test]
    fn erasure_signing_again_keeps_every_link() {
        let (kek, _) = keys();
        let mut c = chain(&kek, true, 2);
        let before: Vec<String> = c.iter().map(|(_, m)| m.link()).collect();
        for (_, m) in &mut c {
            m.objects.clear();
            m.resign(&Kek::from_bytes([7; 32]), None);
        }
        let after: Vec<String> = c.iter().map(|(_, m)| m.link()).collect();
        assert_eq!(before, after);
        check_chain(&c).unwrap();
    }

    #[test]
    fn the_anchor_must_be_the_newest_or_built_on() {
        let (kek, _) = keys();
        let c = chain(&kek, false, 3);
        let anchor = |i: usize| Anchor {
            sequence: c[i].1.sequence(),
            link: c[i].1.link(),
        };
        check_anchor(&c[2..], &anchor(2)).unwrap();
        check_anchor(&c[1..], &anchor(1)).unwrap();
        // Rolled back: the newest is older than the anchor.
        assert_eq!(
            check_anchor(&c[..2], &anchor(2)),
            Err(ChainBreak::Rollback {
                key: "m/2.json".into(),
                found: 2,
                anchor: 3
            })
        );
        // Same sequence, another manifest (a fork).
        let other = chain(&Kek::from_bytes([9; 32]), true, 3);
        assert!(matches!(
            check_anchor(&other[3..], &anchor(2)),
            Err(ChainBreak::NotAnchor { .. })
        ));
        let parsed: Anchor = anchor(1).to_string().parse().unwrap();
        assert_eq!(parsed, anchor(1));
        assert!("3:zz".parse::<Anchor>().is_err());
        assert!("x".parse::<Anchor>().is_err());
    }

    fn signing_key(seed: u8) -> (ManifestSigner, PublicKeys) {
        let s = ManifestSigner::parse(&[seed; 32]).unwrap();
        let keys = PublicKeys::new(vec![s.public().clone()]);
        (s, keys)
    }

    #[test]
    fn a_signed_manifest_verifies_with_the_public_key_alone_and_fails_after_one_byte_changes() {
        let (kek, _) = keys();
        let (signer, public) = signing_key(7);
        let mut m = inline(
            &kek,
            Place::after(None, "m/1.json"),
            contents("r", vec![entry("a", 1), entry("b", 2)], vec![]),
        );
        assert_eq!(m.verify_signature(&public), Err(ManifestError::Unsigned));
        m.add_signature(&signer);
        let json = serde_json::to_string_pretty(&m).unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        back.verify_signature_at(&public, "m/1.json").unwrap();
        // Every single-byte change of a digit or hex letter the signature
        // covers either breaks the JSON or the signature.
        let bytes = json.as_bytes();
        let mut tried = 0;
        for i in 0..bytes.len() {
            let replacement = match bytes[i] {
                b'0'..=b'8' | b'a'..=b'e' => bytes[i] + 1,
                _ => continue,
            };
            let mut changed = bytes.to_vec();
            changed[i] = replacement;
            let Ok(altered) = serde_json::from_slice::<Manifest>(&changed) else {
                continue;
            };
            if altered.signature != back.signature || altered.mac != back.mac {
                // The signature or the MAC itself changed: checked below.
                continue;
            }
            tried += 1;
            assert!(
                altered.verify_signature(&public).is_err(),
                "byte {i} changed and the signature still verifies"
            );
        }
        assert!(tried > 100, "{tried} changes tried");
        let mut forged = back.clone();
        let sig = forged.signature.as_mut().unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut raw = b64.decode(&sig.value).unwrap();
        raw[0] ^= 1;
        sig.value = b64.encode(raw);
        assert_eq!(
            forged.verify_signature(&public),
            Err(ManifestError::Signature)
        );
        let (_, other) = signing_key(8);
        assert!(matches!(
            back.verify_signature(&other),
            Err(ManifestError::UnknownSigningKey(_))
        ));
        assert!(matches!(
            back.verify_signature_at(&public, "m/2.json"),
            Err(ManifestError::Misplaced { .. })
        ));
    }

    #[test]
    fn signing_again_after_an_erasure_replaces_the_signature() {
        let (kek, ring) = keys();
        let (signer, public) = signing_key(7);
        let mut m = inline(
            &kek,
            Place::after(None, "m/1.json"),
            contents("r", vec![entry("a", 1), entry("b", 2)], vec![]),
        );
        m.add_signature(&signer);
        m.objects.pop();
        assert_eq!(m.verify_signature(&public), Err(ManifestError::Signature));
        let mut unsigned = m.clone();
        unsigned.resign(&kek, None);
        unsigned.verify(&ring).unwrap();
        assert_eq!(unsigned.signature, None, "a stale signature is not kept");
        m.resign(&kek, Some(&signer));
        m.verify(&ring).unwrap();
        m.verify_signature(&public).unwrap();
    }

    /// The documented test vector (docs/encryption.md): a version 3 manifest
    /// signed with the all-0x09 KEK.
    #[test]
    fn version_3_test_vector() {
        let (kek, ring) = keys();
        let mut m = inline(
            &kek,
            Place {
                name: ".ferry/manifests/20260101T000000000000Z-r2.json".into(),
                sequence: 2,
                previous: Some("11".repeat(32)),
            },
            contents("r2", vec![entry("a.csv", 1)], vec![]),
        );
        m.format = FORMAT_V3.into();
        m.resign(&kek, None);
        m.verify(&ring).unwrap();
        println!("{}", serde_json::to_string_pretty(&m).unwrap());
        assert_eq!(m.mac, VECTOR_MAC);
        assert_eq!(m.link(), VECTOR_LINK);
        // Ed25519 is deterministic: the same seed signs the same bytes alike.
        let (signer, public) = signing_key(7);
        let mut signed = m.clone();
        signed.add_signature(&signer);
        signed.verify_signature(&public).unwrap();
        let sig = signed.signature.unwrap();
        println!("{}\n{}", signer.public().to_pem().unwrap(), sig.value);
        assert_eq!(sig.key_id, VECTOR_SIGNING_KEY_ID);
        assert_eq!(sig.value, VECTOR_SIGNATURE);
    }

    /// The documented version 4 test vector: the version 3 one with the
    /// run's audit lines listed as a record.
    #[test]
    fn version_4_test_vector() {
        let (kek, ring) = keys();
        let mut c = contents("r2", vec![entry("a.csv", 1)], vec![]);
        c.0.records = vec![ManifestEntry {
            source_etag: None,
            ..entry(".ferry/audit/20260101T000000000000Z-r2.jsonl", 7)
        }];
        let mut m = inline(
            &kek,
            Place {
                name: ".ferry/manifests/20260101T000000000000Z-r2.json".into(),
                sequence: 2,
                previous: Some("11".repeat(32)),
            },
            c,
        );
        assert_eq!(m.format, FORMAT_V5);
        m.format = FORMAT_V4.into();
        m.resign(&kek, None);
        m.verify(&ring).unwrap();
        println!("{}", serde_json::to_string_pretty(&m).unwrap());
        assert_eq!(m.mac, VECTOR_4_MAC);
        assert_eq!(m.link(), VECTOR_LINK, "the link does not cover the records");
        // Records are authenticated, and only under .ferry/.
        let mut t = m.clone();
        t.records[0].size = 8;
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
        let mut t = m.clone();
        t.records.clear();
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
        let mut t = m.clone();
        t.format = FORMAT_V3.into();
        assert_eq!(
            t.verify(&ring),
            Err(ManifestError::Mac),
            "a v3 has no records"
        );
        let mut t = m.clone();
        t.records[0].key = "audit.jsonl".into();
        t.resign(&kek, None);
        assert_eq!(
            t.verify(&ring),
            Err(ManifestError::RecordOutside("audit.jsonl".into()))
        );
    }

    /// The documented version 5 test vector: the version 4 one under a run
    /// key from a KMS (here the all-0x09 key), which carries its wrapped form.
    #[test]
    fn version_5_test_vector() {
        let kek = Kek::from_kms(
            &zeroize::Zeroizing::new([9; 32]),
            "vault-transit:transit/acme:vault:v1:dGVzdCB2ZWN0b3I=".into(),
        );
        let ring = KeyRing::new(vec![Kek::from_bytes([9; 32])]);
        let mut c = contents("r2", vec![entry("a.csv", 1)], vec![]);
        c.0.records = vec![ManifestEntry {
            source_etag: None,
            ..entry(".ferry/audit/20260101T000000000000Z-r2.jsonl", 7)
        }];
        let m = inline(
            &kek,
            Place {
                name: ".ferry/manifests/20260101T000000000000Z-r2.json".into(),
                sequence: 2,
                previous: Some("11".repeat(32)),
            },
            c,
        );
        assert_eq!(m.format, FORMAT_V5);
        assert_eq!(m.kms.as_deref(), kek.wrapped());
        m.verify(&ring).unwrap();
        assert_eq!(m.mac, VECTOR_5_MAC);
        assert_eq!(m.link(), VECTOR_LINK);
        // The wrapped form is authenticated in version 5.
        let mut t = m.clone();
        t.kms = Some("vault-transit:transit/acme:vault:v2:other".into());
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
        let mut t = m.clone();
        t.kms = None;
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
    }

    /// A version 6 manifest over the segments of `objects`, and the segments.
    fn segmented(
        kek: &Kek,
        place: Place,
        (mut c, objects): (Contents, Vec<ManifestEntry>),
    ) -> (Manifest, Vec<segments::Segment>) {
        let cut = segments::cut_all(objects).unwrap();
        c.segments = cut.iter().map(|s| s.reference.clone()).collect();
        (Manifest::sign(kek, place, c), cut)
    }

    /// The documented version 6 test vector: the version 4 one, its entry in
    /// one segment, under the all-0x09 KEK.
    #[test]
    fn version_6_test_vector() {
        let (kek, ring) = keys();
        let mut c = contents("r2", vec![entry("a.csv", 1)], vec![]);
        c.0.records = vec![ManifestEntry {
            source_etag: None,
            ..entry(".ferry/audit/20260101T000000000000Z-r2.jsonl", 7)
        }];
        let (m, cut) = segmented(
            &kek,
            Place {
                name: ".ferry/manifests/20260101T000000000000Z-r2.json".into(),
                sequence: 2,
                previous: Some("11".repeat(32)),
            },
            c,
        );
        assert_eq!(m.format, FORMAT);
        m.verify(&ring).unwrap();
        assert_eq!(cut.len(), 1);
        assert_eq!(
            String::from_utf8(cut[0].bytes.clone()).unwrap(),
            VECTOR_6_SEGMENT
        );
        assert_eq!(m.segments[0].sha256, VECTOR_6_SEGMENT_SHA256);
        assert_eq!(m.mac, VECTOR_6_MAC);
        assert_eq!(m.link(), VECTOR_LINK);
        // What the root says of each segment is authenticated.
        for tamper in [
            |r: &mut SegmentRef| r.sha256 = "00".repeat(32),
            |r: &mut SegmentRef| r.size += 1,
            |r: &mut SegmentRef| r.count += 1,
            |r: &mut SegmentRef| r.first = "0".into(),
            |r: &mut SegmentRef| r.last = "b".into(),
        ] {
            let mut t = m.clone();
            tamper(&mut t.segments[0]);
            assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
        }
        let mut t = m.clone();
        t.segments.clear();
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
        // Entries written into the root itself are not authenticated there:
        // such a manifest is refused, not read.
        let mut t = m.clone();
        t.objects = vec![entry("planted", 1)];
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
        // Passing it off as version 5 (its entries inline) fails.
        let mut t = m.clone();
        t.format = FORMAT_V5.into();
        assert_eq!(t.verify(&ring), Err(ManifestError::Mac));
    }

    #[test]
    fn segments_listed_out_of_order_or_overlapping_are_refused_even_when_signed() {
        let (kek, ring) = keys();
        let objects: Vec<ManifestEntry> =
            (0..10_000).map(|i| entry(&format!("k{i:05}"), i)).collect();
        let (m, _) = segmented(
            &kek,
            Place::after(None, "m"),
            contents("r", objects, vec![]),
        );
        assert!(m.segments.len() > 1);
        m.verify(&ring).unwrap();
        let mut swapped = m.clone();
        swapped.segments.swap(0, 1);
        swapped.resign(&kek, None);
        assert!(matches!(
            swapped.verify(&ring),
            Err(ManifestError::Segment { .. })
        ));
        let mut twice = m.clone();
        twice.segments.insert(1, m.segments[0].clone());
        twice.resign(&kek, None);
        assert!(matches!(
            twice.verify(&ring),
            Err(ManifestError::Segment { .. })
        ));
    }

    #[test]
    fn editing_the_entries_of_a_segmented_manifest_recuts_only_what_changed() {
        let (kek, ring) = keys();
        let objects: Vec<ManifestEntry> =
            (0..20_000).map(|i| entry(&format!("k{i:05}"), i)).collect();
        let (mut m, before) = segmented(
            &kek,
            Place::after(None, "m"),
            contents("r", objects.clone(), vec![]),
        );
        m.objects = objects;
        m.objects.remove(12_345);
        let after = m.recut().unwrap();
        m.resign(&kek, None);
        m.verify(&ring).unwrap();
        assert!(m.objects.is_empty());
        let old: BTreeSet<&str> = before.iter().map(|s| s.reference.sha256.as_str()).collect();
        let new = after
            .iter()
            .filter(|s| !old.contains(s.reference.sha256.as_str()))
            .count();
        assert!((1..=2).contains(&new), "{new} segments changed");
        assert_eq!(m.segments.iter().map(|s| s.count).sum::<u64>(), 19_999);
    }

    const VECTOR_6_SEGMENT: &str = r#"{"format":"ferry-manifest-segment/v1","objects":[{"key":"a.csv","size":1,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","encryptedSize":101,"encryptedSha256":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","sourceEtag":"e1"}]}"#;
    const VECTOR_6_SEGMENT_SHA256: &str =
        "9a89d25a3532081f74654b3c1b954ba7945e4c704ad58a0303f0591494983d4a";
    const VECTOR_6_MAC: &str = "fb73a8862528b9f35388a21ee9f0263babd23563ec6fbe0a204077b04fce1890";

    const VECTOR_5_MAC: &str = "d306887f6e9914c9f6dba3efa7862c8ebf84d1bafa3e1e85dd2d31e59d2bf064";

    const VECTOR_4_MAC: &str = "d4f2e9ec9ed121cc97050abc12fc3414784287997857494c149286aa43e13f9a";

    const VECTOR_SIGNING_KEY_ID: &str = "fe812c12f3ab4ce6";
    const VECTOR_SIGNATURE: &str =
        "8cpQv7ZTiJ6kvXHW58INpJy/FIlIYdm5FWIgn2fTdJeAjLB977ifVWnF/H0h3oLybDNw4U2Vg8saTbrthS8JDg==";

    const VECTOR_MAC: &str = "170e17aefe1173754f32537e5e934413cbccfffbcd10dc6d70cfdb6cc6806421";
    const VECTOR_LINK: &str = "ec991c75e74e1277d63084f1691f0afcba3c4d7e21112f370bccd20d7cd79820";
}
